//! The `roomchat` binary as a user runs it: the startup line, flags and
//! their environment variables, shutdown on a signal, and threads that end
//! with their connections.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::Process;
use common::Client;

#[test]
fn prints_one_line_with_both_urls_and_nothing_else() {
    let mut p = Process::start(&["--http-port", "0", "--ws-port", "0"], &[]);
    assert!(p.line.starts_with("roomchat listening on "), "{}", p.line);
    assert!(p.line.contains(&format!("http://127.0.0.1:{}", p.http)));
    assert!(p.line.contains(&format!("ws://127.0.0.1:{}", p.ws)));
    assert_ne!(p.http, p.ws);
    let health = common::raw_http(
        format!("127.0.0.1:{}", p.http).parse().unwrap(),
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(health.body, "ok");
    p.signal("-INT");
    assert_eq!(p.wait_exit(Duration::from_secs(3)), Some(0));
    let mut rest = String::new();
    p.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert_eq!(rest, "", "nothing else on stdout");
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut p = Process::start(&["--http-port", "0", "--ws-port", "0"], &[]);
    let url = format!("ws://127.0.0.1:{}/ws", p.ws);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(&url)).collect();
    clients[0].join("ann", "r");
    let started = Instant::now();
    p.signal("-TERM");
    for c in clients.iter_mut() {
        assert_eq!(c.expect_close(), Some(1001));
    }
    assert_eq!(p.wait_exit(Duration::from_secs(3)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn environment_variables_set_flags_and_flags_win() {
    let p = Process::start(
        &["--ws-port", "0"],
        &[
            ("CHAT_HTTP_PORT", "0"),
            ("CHAT_WS_PORT", "1"),
            ("CHAT_RATE_LIMIT", "off"),
        ],
    );
    // CHAT_WS_PORT=1 would fail to bind; the flag's 0 won.
    let mut c = Client::connect_raw(&format!("ws://127.0.0.1:{}/ws", p.ws));
    assert_eq!(
        c.expect("connected")["limits"]["rateLimit"],
        serde_json::Value::Null
    );
}

#[test]
fn bad_flags_fail_with_a_message_and_help_lists_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_roomchat"))
        .args(["--rate-limit", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate-limit"));
    let help = Command::new(env!("CARGO_BIN_EXE_roomchat"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--host",
        "--http-port",
        "--ws-port",
        "--www",
        "--allowed-origin",
        "--max-connections",
        "--max-message-bytes",
        "--history",
        "--rate-limit",
        "--ping-interval",
        "--idle-timeout",
        "--handshake-timeout",
        "CHAT_HTTP_PORT",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_roomchat"))
        .args(["--http-port", &port, "--ws-port", "0"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot bind the HTTP listener"));
    assert!(out.stdout.is_empty());
}

#[test]
fn threads_end_with_their_connections() {
    let p = Process::start(
        &["--http-port", "0", "--ws-port", "0", "--rate-limit", "off"],
        &[],
    );
    let url = format!("ws://127.0.0.1:{}/ws", p.ws);
    let rooms_url: std::net::SocketAddr = format!("127.0.0.1:{}", p.http).parse().unwrap();
    // One answered request first, so that every thread the server starts
    // lazily is there before we count.
    common::raw_http(
        rooms_url,
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let fresh = p.status_field("Threads:");
    // 10,000 short connections, 50 at a time.
    for _ in 0..200 {
        let clients: Vec<Client> = (0..50)
            .map(|i| {
                let mut c = Client::connect(&url);
                c.send(serde_json::json!({"event": "joinRoom", "data": {"username": "u", "room": format!("r{}", i % 5)}}));
                c
            })
            .collect();
        drop(clients);
    }
    // The server notices each drop at once; each connection's thread (and
    // writer, if it had one) ends with it, and so do those of our polling
    // requests.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let rooms = common::raw_http(
            rooms_url,
            b"GET /api/rooms HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .body;
        let threads = p.status_field("Threads:");
        if threads <= fresh + 2 && rooms == r#"{"rooms":[]}"# {
            break;
        }
        let names = || {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", p.pid())).unwrap();
            let mut names: Vec<String> = tasks
                .map(|t| {
                    std::fs::read_to_string(t.unwrap().path().join("comm"))
                        .unwrap()
                        .trim()
                        .to_owned()
                })
                .collect();
            names.sort();
            names.join(",")
        };
        assert!(
            Instant::now() < deadline,
            "{threads} threads now, {fresh} when fresh; rooms {rooms}; threads: {}",
            names()
        );
        std::thread::sleep(Duration::from_millis(50)); // polling /proc; there is no event for thread exit
    }
}
