//! Identity (v3) on every way in: the native `Authorization` header and the
//! `authenticate` event, Socket.IO's CONNECT payload over WebSocket and
//! long-polling, on both ports; the order of the checks; the deadlines.
//! The rules that involve rooms are in `protocol/identity.rs`, which runs
//! here on the in-memory engine and on clusters in `cluster_suites`.

mod common;

use std::time::Duration;

use common::engine::Setup;
use common::identity::{key_path, now, sign, sign_with, token, with_secret, SECRET};
use common::polling::Polling;
use common::socketio::Peer;
use common::{raw_http, upgrade_request, Client, TestServer};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const SETUP: Setup = Setup::Memory;

#[path = "protocol/identity.rs"]
mod suite;

fn server() -> TestServer {
    TestServer::with(with_secret)
}

/// The native WebSocket URLs of both ports.
fn urls(server: &TestServer) -> [String; 2] {
    [
        format!("ws://{}/ws", server.ws),
        format!("ws://{}/ws", server.http),
    ]
}

#[test]
fn without_a_key_nothing_changes() {
    let server = TestServer::start();
    let mut c = Client::connect_raw(&format!("ws://{}/ws", server.ws));
    let connected = c.expect("connected");
    assert!(connected.get("auth").is_none(), "{connected}");
    let (_, reply) = c.request("authenticate", json!({"token": token("u", json!({}))}));
    assert_eq!(reply["data"]["code"], "unknown_event");
    let joined = c.join("ann", "$anything");
    assert!(joined["users"][0].get("user").is_none());
    // The header means nothing either.
    let (mut h, connected) = Client::connect_bearer(&format!("ws://{}/ws", server.ws), "garbage");
    assert!(connected.get("user").is_none());
    h.join("bo", "lobby");
    assert_eq!(server.get("/api/rooms").status, 200);
}

#[test]
fn a_client_is_unauthenticated_until_it_proves_who_it_is_on_both_ports() {
    let server = server();
    for url in urls(&server) {
        let mut c = Client::connect_raw(&url);
        let connected = c.expect("connected");
        assert_eq!(connected["auth"], "required");
        assert!(connected.get("user").is_none());
        for (event, data) in [
            ("joinRoom", json!({"username": "ann", "room": "r"})),
            ("chatMessage", json!({"text": "hi"})),
            ("typing", json!({"typing": true})),
            ("leaveRoom", json!(null)),
        ] {
            let (_, reply) = c.request(event, data);
            assert_eq!(reply["data"]["code"], "unauthenticated", "{event}");
        }
        // unknown_event comes first; invalid_field for authenticate's own data.
        let (_, reply) = c.request("dance", json!({}));
        assert_eq!(reply["data"]["code"], "unknown_event");
        let (_, reply) = c.request("authenticate", json!({"token": 5}));
        assert_eq!(
            (&reply["data"]["code"], &reply["data"]["field"]),
            (&json!("invalid_field"), &json!("token"))
        );
        // A bad token leaves the client unauthenticated.
        let reply = c.authenticate("a.b.c");
        assert_eq!(reply["data"]["code"], "invalid_token");
        assert!(!reply["data"]["message"].as_str().unwrap().contains("a.b.c"));
        let (_, reply) = c.request("chatMessage", json!({"text": "hi"}));
        assert_eq!(reply["data"]["code"], "unauthenticated");
        let exp = now() + 600;
        let good = sign(&json!({"sub": "u-1", "name": "Ann", "exp": exp}));
        assert_eq!(
            c.prove(&good),
            json!({"ok": true, "user": "u-1", "name": "Ann", "exp": exp})
        );
        let joined = c.join_verified("r");
        assert_eq!(joined["username"], "Ann");
    }
}

#[test]
fn each_token_refusal_has_its_code() {
    let server = server();
    let mut c = server.client();
    let expired = sign(&json!({"sub": "u", "exp": now() - 3600}));
    assert_eq!(c.authenticate(&expired)["data"]["code"], "token_expired");
    for bad in [
        sign(&json!({"sub": "u"})),
        sign(&json!({"exp": now() + 60})),
        sign(&json!({"sub": "u", "exp": now() + 60, "nbf": now() + 3600})),
        sign(&json!({"sub": "u", "exp": now() + 60, "rooms": "lobby"})),
        "x".repeat(9000),
        String::new(),
    ] {
        let reply = c.authenticate(&bad);
        assert_eq!(reply["data"]["code"], "invalid_token", "{reply}");
    }
    // A failed authenticate after a good one leaves the user as it was.
    c.prove(&token("u", json!({})));
    assert_eq!(c.authenticate(&expired)["data"]["code"], "token_expired");
    c.join_verified("still-me");
}

#[test]
fn authenticate_takes_a_rate_limit_token() {
    let server = TestServer::with(|c| {
        with_secret(c);
        c.rate_limit = roomchat::config::RateLimit(Some(1));
    });
    let mut c = server.client();
    let good = token("u", json!({}));
    c.authenticate("x.y.z");
    c.authenticate("x.y.z");
    assert_eq!(c.authenticate(&good)["data"]["code"], "rate_limited");
}

#[test]
fn a_bearer_header_authenticates_the_upgrade_on_both_ports() {
    let server = server();
    for url in urls(&server) {
        let good = token("u-h", json!({"name": "Hedy"}));
        let (mut c, connected) = Client::connect_bearer(&url, &good);
        assert_eq!(
            (&connected["auth"], &connected["user"], &connected["name"]),
            (&json!("required"), &json!("u-h"), &json!("Hedy"))
        );
        let joined = c.join_verified("lobby");
        assert_eq!(joined["users"][0]["user"], "u-h");
    }
}

#[test]
fn a_bad_bearer_header_gets_401_before_the_upgrade() {
    let server = server();
    let expired = sign(&json!({"sub": "u", "exp": now() - 3600}));
    for header in [
        "Authorization: Bearer nonsense".to_owned(),
        "Authorization: Basic dXNlcjpwYXNz".to_owned(),
        format!("Authorization: Bearer {expired}"),
    ] {
        for addr in [server.ws, server.http] {
            let answer = raw_http(
                addr,
                upgrade_request("/ws", &format!("{header}\r\n")).as_bytes(),
            );
            assert_eq!(answer.status, 401, "{header}: {answer:?}");
            assert_eq!(
                answer.header("www-authenticate"),
                Some(r#"Bearer error="invalid_token""#)
            );
            assert!(!answer.body.contains(&expired));
        }
    }
}

#[test]
fn rs256_and_es256_tokens_verify_with_the_public_key() {
    for (alg, public, private) in [
        (Algorithm::RS256, "rsa-public.pem", "rsa-private.pem"),
        (Algorithm::ES256, "ec-public.pem", "ec-private.pem"),
    ] {
        let server = TestServer::with(|c| {
            c.auth_public_key = Some(key_path(public));
            c.auth_issuer = Some("https://id.example".into());
            c.auth_audience = Some("roomchat".into());
        });
        let private = std::fs::read_to_string(key_path(private)).unwrap();
        let claims =
            json!({"sub": "u", "exp": now() + 60, "iss": "https://id.example", "aud": "roomchat"});
        let mut c = server.client();
        assert_eq!(c.prove(&sign_with(alg, &private, &claims))["user"], "u");
        // HS256 with the public key's text as the secret: refused.
        let pem = std::fs::read_to_string(key_path(public)).unwrap();
        let key = jsonwebtoken::EncodingKey::from_secret(pem.as_bytes());
        let forged =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
                .unwrap();
        assert_eq!(c.authenticate(&forged)["data"]["code"], "invalid_token");
        let wrong_aud =
            json!({"sub": "u", "exp": now() + 60, "iss": "https://id.example", "aud": "x"});
        assert_eq!(
            c.authenticate(&sign_with(alg, &private, &wrong_aud))["data"]["code"],
            "invalid_token"
        );
    }
}

#[test]
fn a_client_that_never_authenticates_is_closed_with_1008() {
    let server = TestServer::with(|c| {
        with_secret(c);
        c.handshake_timeout = Duration::from_secs(1);
    });
    for url in urls(&server) {
        let mut c = Client::connect_raw(&url);
        c.expect("connected");
        c.expect_error("unauthenticated");
        assert_eq!(c.expect_close(), Some(1008));
    }
    // One that authenticated in time stays.
    let mut c = server.client();
    c.prove(&token("u", json!({})));
    std::thread::sleep(Duration::from_millis(1500)); // past the deadline
    c.join_verified("lobby");
}

// ---------------------------------------------------------------------------
// Socket.IO: the CONNECT payload, over WebSocket (both ports) and polling.

/// `44{"message": …}`'s message.
fn connect_error(packet: &str) -> String {
    let body: Value = serde_json::from_str(
        packet
            .strip_prefix("44")
            .unwrap_or_else(|| panic!("{packet}")),
    )
    .unwrap();
    body["message"].as_str().unwrap().to_owned()
}

#[test]
fn socketio_connect_needs_a_token_and_a_refused_session_may_try_again() {
    let server = server();
    for addr in [server.ws, server.http] {
        let (mut p, _) = Peer::open_at(addr);
        p.send("40");
        assert!(connect_error(&p.recv()).starts_with("unauthenticated: "));
        p.send(r#"42["joinRoom",{"room":"r"}]"#);
        assert_eq!(p.event("error")["code"], "bad_request");
        p.send(r#"40{"token":"a.b.c"}"#);
        assert!(connect_error(&p.recv()).starts_with("invalid_token: "));
        let expired = sign(&json!({"sub": "u", "exp": now() - 3600}));
        p.send(&format!(r#"40{{"token":"{expired}"}}"#));
        assert!(connect_error(&p.recv()).starts_with("token_expired: "));
        let good = token("u-s", json!({"name": "Sio"}));
        p.send(&format!(r#"40{{"token":"{good}"}}"#));
        assert!(p.recv().starts_with(r#"40{"sid":"#));
        let connected = p.event("connected");
        assert_eq!(
            (&connected["user"], &connected["name"]),
            (&json!("u-s"), &json!("Sio"))
        );
        p.send(r#"421["joinRoom",{"room":"r"}]"#);
        let joined = p.event("joined");
        assert_eq!(joined["users"][0]["user"], "u-s");
    }
}

#[test]
fn socketio_expiry_sends_the_error_then_41_then_closes_with_4001() {
    let server = TestServer::with(|c| {
        with_secret(c);
        c.auth_leeway = 0;
    });
    let (mut p, _) = Peer::open(&server);
    let short = sign(&json!({"sub": "u", "exp": now() + 1}));
    p.send(&format!(r#"40{{"token":"{short}"}}"#));
    assert!(p.recv().starts_with("40{"));
    p.event("connected");
    assert_eq!(p.event("error")["code"], "token_expired");
    assert_eq!(p.recv(), "41");
    assert_eq!(p.0.close_code(), Some(4001));
}

#[test]
fn socketio_over_long_polling_authenticates_in_the_connect_packet() {
    let server = server();
    let polling = Polling::open(&server).0;
    assert_eq!(polling.post("40").body, "ok");
    assert!(connect_error(&polling.get().body).starts_with("unauthenticated: "));
    let good = token("u-p", json!({}));
    assert_eq!(
        polling.post(&format!(r#"40{{"token":"{good}"}}"#)).body,
        "ok"
    );
    let body = polling.get().body;
    let packets: Vec<&str> = body.split('\u{1e}').collect();
    assert!(packets[0].starts_with(r#"40{"sid":"#), "{packets:?}");
    assert!(packets[1].starts_with(r#"42["connected","#) && packets[1].contains(r#""user":"u-p""#));
    let _ = SECRET;
}

#[test]
fn socketio_over_long_polling_expires_with_the_error_then_41_and_the_session_ends() {
    let server = TestServer::with(|c| {
        with_secret(c);
        c.auth_leeway = 0;
    });
    let polling = Polling::open(&server).0;
    // A native member of the room sees the polling client leave.
    let mut watcher = server.client();
    watcher.prove(&token("w", json!({})));
    watcher.join_verified("lobby");
    let short = sign(&json!({"sub": "u-p", "exp": now() + 2}));
    assert_eq!(
        polling.post(&format!(r#"40{{"token":"{short}"}}"#)).body,
        "ok"
    );
    assert_eq!(
        polling.post(r#"421["joinRoom",{"room":"lobby"}]"#).body,
        "ok"
    );
    let joined = watcher.expect("userJoined");
    assert_eq!(joined["user"], "u-p");
    // Long-polls until the session ends: the packets come in this order, and
    // once `41` went out, the sid is unknown. Bounded: the token lives 2 s.
    let mut packets: Vec<String> = Vec::new();
    let mut ended = None;
    for _ in 0..20 {
        let answer = polling.get();
        if answer.status != 200 {
            ended = Some(answer.status);
            break;
        }
        packets.extend(answer.body.split('\u{1e}').map(str::to_owned));
    }
    let at = |prefix: &str| {
        packets
            .iter()
            .position(|p| p.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {packets:?}"))
    };
    let error = at(r#"42["error","#);
    assert!(
        packets[error].contains(r#""code":"token_expired""#),
        "{packets:?}"
    );
    assert!(error < at("41"), "{packets:?}");
    assert_eq!(ended, Some(400), "{packets:?}");
    let left = watcher.expect("userLeft");
    assert_eq!(left["user"], "u-p");
}
