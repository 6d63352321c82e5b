//! Limits and timeouts: frame sizes, RFC 6455 violations, the rate limit,
//! slow consumers, the connection cap, idle and handshake timeouts, pings.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{RawSocket, TestServer};
use roomchat::config::RateLimit;
use serde_json::json;

#[test]
fn a_frame_over_the_limit_closes_with_1009() {
    let server = TestServer::with(|c| c.max_message_bytes = 1000);
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json(); // connected
    raw.send(&RawSocket::frame(0x81, &[b' '; 1001], true));
    assert_eq!(raw.close_code(), Some(1009));
}

#[test]
fn a_client_still_sending_an_oversized_message_reads_1009_not_a_reset() {
    let server = TestServer::start();
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    // The whole 300 KB frame is written although the server refuses it after
    // the header: it reads and drops the rest instead of resetting us.
    raw.send(&RawSocket::frame(0x81, &vec![b' '; 300_000], true));
    assert_eq!(raw.close_code(), Some(1009));
}

#[test]
fn a_message_at_the_limit_is_accepted() {
    let server = TestServer::with(|c| c.max_message_bytes = 1000);
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    let frame = json!({"event": "dance", "data": "x".repeat(1000 - 27)}).to_string();
    assert_eq!(frame.len(), 1000);
    raw.send(&RawSocket::frame(0x81, frame.as_bytes(), true));
    assert_eq!(raw.recv_json()["data"]["code"], "unknown_event");
}

#[test]
fn fragments_over_the_limit_close_with_1009() {
    let server = TestServer::with(|c| c.max_message_bytes = 1000);
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    raw.send(&RawSocket::frame(0x01, &[b' '; 600], true)); // text, not final
    raw.send(&RawSocket::frame(0x80, &[b' '; 600], true)); // continuation, final
    assert_eq!(raw.close_code(), Some(1009));
}

#[test]
fn a_huge_length_header_closes_at_once() {
    let server = TestServer::start();
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    // 1 GiB announced, nothing sent after the header.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.send(&header);
    assert_eq!(raw.close_code(), Some(1009));
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = TestServer::start();
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    raw.send(&RawSocket::frame(0x81, &[b'{', 0xff, 0xfe, b'}'], true));
    assert_eq!(raw.close_code(), Some(1007));
}

#[test]
fn an_unmasked_client_frame_closes_with_1002() {
    let server = TestServer::start();
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    raw.send(&RawSocket::frame(0x81, b"{}", false));
    assert_eq!(raw.close_code(), Some(1002));
}

#[test]
fn an_unknown_opcode_closes_with_1002() {
    let server = TestServer::start();
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    raw.send(&RawSocket::frame(0x83, b"{}", true));
    assert_eq!(raw.close_code(), Some(1002));
}

#[test]
fn fragments_with_a_ping_between_are_reassembled() {
    let server = TestServer::start();
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    let frame = br#"{"event":"joinRoom","data":{"username":"ann","room":"r"},"ack":5}"#;
    raw.send(&RawSocket::frame(0x01, &frame[..10], true));
    raw.send(&RawSocket::frame(0x89, b"hi", true)); // ping between fragments
    raw.send(&RawSocket::frame(0x00, &frame[10..30], true));
    raw.send(&RawSocket::frame(0x80, &frame[30..], true));
    let (first, payload) = raw.read_frame().unwrap();
    assert_eq!(
        (first, payload.as_slice()),
        (0x8A, &b"hi"[..]),
        "the ping is answered with its payload"
    );
    assert_eq!(raw.recv_json()["event"], "joined");
    assert_eq!(raw.recv_json()["ack"], 5);
}

#[test]
fn a_flood_is_rate_limited_and_the_connection_stays_open() {
    let server = TestServer::with(|c| c.rate_limit = RateLimit(Some(5)));
    let mut c = server.member("ann", "r"); // the join took one token
    for i in 0..12 {
        c.send(json!({"event": "typing", "data": {"typing": true}, "ack": 100 + i}));
    }
    let replies: Vec<_> = (0..12).map(|_| c.recv()).collect();
    let ok = replies.iter().filter(|r| r["event"] == "ack").count();
    assert_eq!(ok, 9, "a bucket of 2 x 5 tokens, one spent on the join");
    for r in &replies[9..] {
        assert_eq!(r["data"]["code"], "rate_limited");
        assert!(r["ack"].as_u64().is_some(), "the rejection carries the ack");
    }
    assert_eq!(server.metric("roomchat_errors_total"), 3);
    assert!(server
        .get("/metrics")
        .body
        .contains("roomchat_errors_total{code=\"rate_limited\"} 3"));
}

#[test]
fn rate_limit_off_lets_a_burst_through() {
    let server = TestServer::with(|c| c.rate_limit = RateLimit(None));
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    assert_eq!(raw.recv_json()["data"]["limits"]["rateLimit"], json!(null));
    let mut c = server.member("ann", "r");
    for i in 0..200 {
        c.send(json!({"event": "typing", "data": {"typing": true}, "ack": i}));
    }
    for i in 0..200 {
        assert_eq!(
            c.recv(),
            json!({"event": "ack", "ack": i, "data": {"ok": true}})
        );
    }
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_the_others_lose_nothing() {
    let server = TestServer::with(|c| c.rate_limit = RateLimit(None));
    // The slow client joins, then never reads again.
    let mut slow = RawSocket::upgrade(server.ws, "/ws");
    slow.join("slow", "busy");
    // The reader reads everything on a thread of its own, as a real client would.
    let mut reader = server.client();
    reader.join("reader", "busy");
    let total = 4000u64; // 7.6 MB: past 1 MiB queued plus any kernel buffers
    let reading = std::thread::spawn(move || {
        let (mut next, mut slow_left) = (1, false);
        while next <= total {
            let frame = reader.recv();
            match frame["event"].as_str().unwrap() {
                "chatMessage" => {
                    assert_eq!(frame["data"]["seq"], next, "gap-free seq");
                    next += 1;
                }
                "userLeft" => slow_left |= frame["data"]["username"] == "slow",
                _ => {}
            }
        }
        slow_left
    });
    // The sender reads nothing it needs; a thread drains its socket.
    let mut sender = RawSocket::upgrade(server.ws, "/ws");
    sender.join("sender", "busy");
    let _drain = sender.drain();
    let frame = RawSocket::frame(
        0x81,
        json!({"event": "chatMessage", "data": {"text": "x".repeat(1900)}})
            .to_string()
            .as_bytes(),
        true,
    );
    for _ in 0..total {
        sender.send(&frame);
    }
    assert!(
        reading.join().unwrap(),
        "the reader saw the slow client leave"
    );
    assert_eq!(server.metric("roomchat_slow_consumer_disconnects_total"), 1);
    // The slow client, reading at last, finds Close 1013 after what was written.
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(slow.close_code(), Some(1013));
}

#[test]
fn the_connection_cap_answers_503() {
    let server = TestServer::with(|c| c.max_connections = 2);
    let _a = server.client();
    let b = server.client();
    assert_eq!(
        server
            .ws_request(&common::upgrade_request("/ws", ""))
            .status,
        503
    );
    drop(b);
    // Once b is gone (its place frees when its connection has wound down),
    // a new client fits.
    let deadline = Instant::now() + common::WAIT;
    while server
        .ws_request(&common::upgrade_request("/ws", ""))
        .status
        != 101
    {
        assert!(Instant::now() < deadline, "b's place never came back");
        std::thread::yield_now();
    }
}

#[test]
fn an_idle_client_is_dropped_and_its_room_told() {
    let server = TestServer::with(|c| {
        c.idle_timeout = Duration::from_secs(2);
        c.ping_interval = Duration::from_secs(1);
    });
    let mut watcher = server.member("watcher", "r");
    // A peer that sends nothing at all, not even Pongs: raw socket, never read.
    let mut silent = RawSocket::upgrade(server.ws, "/ws");
    silent.send(&RawSocket::frame(
        0x81,
        br#"{"event":"joinRoom","data":{"username":"ghost","room":"r"}}"#,
        true,
    ));
    assert_eq!(watcher.expect("userJoined")["username"], "ghost");
    let started = Instant::now();
    // The watcher answers pings (tungstenite does that on read), so it stays.
    assert_eq!(watcher.expect("userLeft")["username"], "ghost");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(2900),
        "dropped after {waited:?}"
    );
    assert_eq!(silent.close_code(), Some(1001));
    watcher.say("still here");
}

#[test]
fn the_server_pings_every_interval() {
    let server = TestServer::with(|c| c.ping_interval = Duration::from_secs(1));
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    let started = Instant::now();
    let (first, _) = raw.read_frame().unwrap();
    assert_eq!(first, 0x89, "a Ping");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn a_half_sent_frame_does_not_hold_the_connection_past_the_idle_timeout() {
    let server = TestServer::with(|c| {
        c.idle_timeout = Duration::from_secs(1);
        c.ping_interval = Duration::from_secs(1);
    });
    let mut raw = RawSocket::upgrade(server.ws, "/ws");
    raw.recv_json();
    let frame = RawSocket::frame(0x81, br#"{"event":"dance"}"#, true);
    raw.send(&frame[..5]);
    let started = Instant::now();
    assert_eq!(raw.close_code(), Some(1001));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(server.metric("roomchat_connections"), 0);
}

#[test]
fn an_unfinished_handshake_is_closed_after_the_handshake_timeout() {
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_secs(1));
    let mut stream = TcpStream::connect(server.ws).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let started = Instant::now();
    // Trickle: a byte every 200 ms never finishes the head.
    let mut answer = Vec::new();
    for byte in b"GET /ws HTTP/1.1\r\nHost: x\r\n".iter() {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200)); // the trickle itself, not a sync point
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let _ = stream.read_to_end(&mut answer);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(2500),
        "closed after {elapsed:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // Meanwhile real clients connect fine.
    server.client();
}
