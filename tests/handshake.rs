//! The WebSocket port before the upgrade: paths, Origin, capacity, and
//! requests that are not upgrades.

mod common;

use common::{upgrade_request, Client, TestServer};

#[test]
fn root_and_ws_paths_upgrade_with_the_right_accept_key() {
    let server = TestServer::start();
    for path in ["/", "/ws", "/ws?token=abc"] {
        let answer = server.ws_request(&upgrade_request(path, ""));
        assert_eq!(answer.status, 101, "{path}");
        // RFC 6455's own example key and answer.
        assert_eq!(
            answer.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }
    Client::connect(&format!("ws://{}/", server.ws));
}

#[test]
fn other_paths_are_404_before_the_upgrade() {
    let server = TestServer::start();
    for path in ["/ws/", "/chat", "/wss", "/index.html"] {
        assert_eq!(
            server.ws_request(&upgrade_request(path, "")).status,
            404,
            "{path}"
        );
    }
}

#[test]
fn a_plain_request_is_426() {
    let server = TestServer::start();
    let answer = server.ws_request("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(answer.status, 426);
    assert_eq!(answer.header("upgrade"), Some("websocket"));
    assert_eq!(
        server
            .ws_request("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .status,
        426
    );
}

#[test]
fn origins_are_checked_and_a_missing_origin_is_allowed() {
    let server = TestServer::start();
    let port = server.http.port();
    let with_origin = |origin: &str| {
        server
            .ws_request(&upgrade_request("/ws", &format!("Origin: {origin}\r\n")))
            .status
    };
    assert_eq!(with_origin(&format!("http://localhost:{port}")), 101);
    assert_eq!(with_origin(&format!("http://127.0.0.1:{port}")), 101);
    assert_eq!(with_origin("http://evil.example"), 403);
    // What Python's websocket-client sends unasked: the WebSocket port's own origin.
    assert_eq!(
        with_origin(&format!("http://127.0.0.1:{}", server.ws.port())),
        101
    );
    assert_eq!(with_origin(&format!("http://localhost:{}", port + 1)), 403);
    assert_eq!(server.ws_request(&upgrade_request("/ws", "")).status, 101);
}

#[test]
fn a_bad_version_or_key_is_refused() {
    let server = TestServer::start();
    let bad_version = upgrade_request("/ws", "").replace("Version: 13", "Version: 8");
    let answer = server.ws_request(&bad_version);
    assert_eq!(answer.status, 426);
    assert_eq!(answer.header("sec-websocket-version"), Some("13"));
    let bad_key = upgrade_request("/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    assert_eq!(server.ws_request(&bad_key).status, 400);
}

#[test]
fn too_large_a_handshake_is_431() {
    let server = TestServer::start();
    let big = upgrade_request("/ws", &format!("X-Big: {}\r\n", "a".repeat(17 * 1024)));
    let answer = server.ws_request(&big);
    assert!(
        answer.status == 431 || answer.status == 0,
        "got {}",
        answer.status
    );
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(
        server.ws_request(&upgrade_request("/ws", &many)).status,
        431
    );
}

#[test]
fn frames_sent_right_after_the_handshake_are_not_lost() {
    let server = TestServer::start();
    let mut request = upgrade_request("/ws", "").into_bytes();
    let frame = br#"{"event":"joinRoom","data":{"username":"eager","room":"r"},"ack":1}"#;
    request.extend(common::RawSocket::frame(0x81, frame, true));
    let mut stream = std::net::TcpStream::connect(server.ws).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    std::io::Write::write_all(&mut stream, &request).unwrap();
    let mut raw = common::RawSocket { stream };
    // Skip the 101 head, then read the answers.
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut raw.stream, &mut byte).unwrap();
        head.push(byte[0]);
    }
    assert_eq!(raw.recv_json()["event"], "connected");
    assert_eq!(raw.recv_json()["event"], "joined");
    assert_eq!(raw.recv_json()["ack"], 1);
}

#[test]
fn allowed_origin_replaces_every_default_for_the_handshake_too() {
    let server = TestServer::with(|c| c.allowed_origins = vec!["https://chat.example".into()]);
    let with_origin = |origin: &str| {
        server
            .ws_request(&upgrade_request("/ws", &format!("Origin: {origin}\r\n")))
            .status
    };
    assert_eq!(with_origin("https://chat.example"), 101);
    assert_eq!(
        with_origin(&format!("http://127.0.0.1:{}", server.ws.port())),
        403
    );
    assert_eq!(
        with_origin(&format!("http://localhost:{}", server.http.port())),
        403
    );
}
