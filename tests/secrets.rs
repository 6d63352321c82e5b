//! Identity (v3) and the process: secrets and tokens never reach the logs
//! (at `RUST_LOG=trace`), `--help`, or `/metrics`; a short secret stops the
//! start with status 2; `roomchat token` signs what the server accepts.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::identity::{now, sign, token, with_secret, SECRET};
use common::{banner_port, raw_http, upgrade_request, Client, RawSocket, TestServer, WAIT};
use serde_json::json;

fn roomchat() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roomchat"));
    for var in [
        "CHAT_HTTP_PORT",
        "CHAT_WS_PORT",
        "CHAT_HOST",
        "CHAT_AUTH_HMAC_SECRET",
        "CHAT_AUTH_ISSUER",
        "CHAT_AUTH_AUDIENCE",
    ] {
        command.env_remove(var);
    }
    command
}

#[test]
fn no_token_and_no_secret_in_the_trace_log_or_the_metrics() {
    let log = std::env::temp_dir().join(format!("roomchat-secrets-{}.log", std::process::id()));
    let mut child = roomchat()
        .args(["--http-port", "0", "--ws-port", "0"])
        .env("CHAT_AUTH_HMAC_SECRET", SECRET)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (http, ws) = (banner_port(&line, "http://"), banner_port(&line, "ws://"));
    let http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    let ws_addr = std::net::SocketAddr::from(([127, 0, 0, 1], ws));

    let good = token("u-trace", json!({"name": "Tracy"}));
    let expired = sign(&json!({"sub": "u-old", "exp": now() - 3600}));
    let forged = format!("{}x", &good[..good.len() - 1]);
    let tokens = [&good, &expired, &forged];

    // Every way in, with good and bad tokens.
    let (mut c, _) = Client::connect_bearer(&format!("ws://{ws_addr}/ws"), &good);
    c.join_verified("lobby");
    c.say("hello");
    let mut d = Client::connect(&format!("ws://{http_addr}/ws"));
    d.authenticate(&forged);
    d.authenticate(&expired);
    d.prove(&good);
    let refused = raw_http(
        ws_addr,
        upgrade_request("/ws", &format!("Authorization: Bearer {forged}\r\n")).as_bytes(),
    );
    assert_eq!(refused.status, 401);
    let mut sio = RawSocket::upgrade(ws_addr, "/socket.io/?EIO=4&transport=websocket");
    sio.read_frame().unwrap();
    // Refused twice (`44`), then accepted (`40`).
    for t in [&forged, &expired, &good] {
        sio.send(&RawSocket::frame(
            0x81,
            format!(r#"40{{"token":"{t}"}}"#).as_bytes(),
            true,
        ));
    }
    for prefix in ["44", "44", "40"] {
        let (_, packet) = sio.read_frame().unwrap();
        assert!(packet.starts_with(prefix.as_bytes()));
    }
    let rooms = raw_http(
        http_addr,
        format!("GET /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(rooms.status, 200);
    let metrics = raw_http(
        http_addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .body;
    assert!(metrics.contains(r#"code="invalid_token""#), "{metrics}");
    drop((c, d, sio));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "roomchat did not exit");
        std::thread::sleep(Duration::from_millis(20)); // polling a child's exit; no event to wait on
    }
    let output = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert!(
        output.contains("TRACE") || output.contains("DEBUG"),
        "the log is at trace level"
    );
    assert!(output.contains("authenticated as user \"u-trace\""));
    for text in [&metrics, &output] {
        assert!(!text.contains(SECRET), "the secret leaked");
        for t in tokens {
            // Any of its three parts would do: the signature is the secret's work.
            for part in t.split('.').filter(|p| p.len() > 8) {
                assert!(!text.contains(part), "a token leaked: {part}");
            }
        }
    }
}

#[test]
fn help_never_shows_the_secret_and_names_the_token_command() {
    let out = roomchat()
        .arg("--help")
        .env("CHAT_AUTH_HMAC_SECRET", SECRET)
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--auth-hmac-secret") && help.contains("roomchat token"));
    assert!(!help.contains(SECRET));
    let out = roomchat()
        .args(["token", "--help"])
        .env("CHAT_AUTH_HMAC_SECRET", SECRET)
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--sub") && help.contains("--ttl"));
    assert!(!help.contains(SECRET));
}

#[test]
fn a_short_secret_stops_the_start_with_status_2_without_printing_it() {
    let out = roomchat()
        .args(["--http-port", "0", "--ws-port", "0"])
        .env("CHAT_AUTH_HMAC_SECRET", "short-secret-31-bytes-long-xxxx")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("32 bytes"), "{stderr}");
    assert!(!stderr.contains("short-secret"));
    assert!(out.stdout.is_empty(), "no banner");
}

#[test]
fn roomchat_token_prints_a_token_the_server_accepts_and_the_page_link() {
    let out = roomchat()
        .args([
            "token",
            "--sub",
            "u-cli",
            "--name",
            "Cli",
            "--rooms",
            "$team,lobby",
            "--ttl",
            "10m",
        ])
        .args(["--http-port", "3456"])
        .env("CHAT_AUTH_HMAC_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let token = lines[0];
    assert_eq!(lines[1], format!("http://127.0.0.1:3456/#token={token}"));
    let server = TestServer::with(with_secret);
    let mut c = server.client();
    let ack = c.prove(token);
    assert_eq!(
        (&ack["user"], &ack["name"]),
        (&json!("u-cli"), &json!("Cli"))
    );
    let exp = ack["exp"].as_u64().unwrap();
    assert!(exp > now() + 500 && exp <= now() + 600);
    c.join_verified("$team");
    let missing = roomchat().args(["token", "--sub", "u"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn roomchat_token_takes_the_issuer_and_audience_the_server_checks() {
    // The flag for one, the server's own variable for the other, as an
    // operator who shares the server's environment would.
    let out = roomchat()
        .args(["token", "--sub", "u-iss", "--auth-issuer", "login.example"])
        .env("CHAT_AUTH_HMAC_SECRET", SECRET)
        .env("CHAT_AUTH_AUDIENCE", "chat.example")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let with_both = stdout.lines().next().unwrap().to_owned();
    let out = roomchat()
        .args(["token", "--sub", "u-iss"])
        .env("CHAT_AUTH_HMAC_SECRET", SECRET)
        .output()
        .unwrap();
    let without = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();

    let checking = |issuer: &str, audience: &str| {
        let (issuer, audience) = (issuer.to_owned(), audience.to_owned());
        TestServer::with(move |c| {
            with_secret(c);
            c.auth_issuer = Some(issuer.clone());
            c.auth_audience = Some(audience.clone());
        })
    };
    let server = checking("login.example", "chat.example");
    assert_eq!(server.client().prove(&with_both)["user"], "u-iss");
    let reply = server.client().authenticate(&without);
    assert_eq!(
        reply["data"]["code"], "invalid_token",
        "no iss, no aud: {reply}"
    );
    for other in [
        checking("other.example", "chat.example"),
        checking("login.example", "other.example"),
    ] {
        let reply = other.client().authenticate(&with_both);
        assert_eq!(reply["data"]["code"], "invalid_token", "{reply}");
    }
}
