//! Engine.IO long-polling on the HTTP port, request by request over raw
//! HTTP: the handshake, `\x1e` payloads, every Engine.IO error, held and
//! overlapping GETs, 413, the client's goodbye, heartbeats and the silent
//! client, capacity and the rate limit, and the upgrade to WebSocket with
//! not one frame lost or repeated.

mod common;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::polling::{engine_error, event, get, post, Polling};
use common::{raw_http, HttpResponse, TestServer, WAIT};
use roomchat::config::RateLimit;
use serde_json::{json, Value};
use tungstenite::Message;

#[test]
fn the_handshake_is_engine_ios_open_packet_with_an_unguessable_sid() {
    let server = TestServer::with(|c| {
        c.ping_interval = Duration::from_secs(5);
        c.idle_timeout = Duration::from_secs(12);
    });
    let answer = get(server.http, "/socket.io/?EIO=4&transport=polling");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    // Engine.IO's keys, in engine.io's order.
    let body = answer.body.strip_prefix('0').unwrap();
    let keys: Vec<usize> = [
        "sid",
        "upgrades",
        "pingInterval",
        "pingTimeout",
        "maxPayload",
    ]
    .iter()
    .map(|k| body.find(&format!("\"{k}\"")).unwrap())
    .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{body}");
    let open: Value = serde_json::from_str(body).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["pingInterval"], 5000);
    assert_eq!(open["pingTimeout"], 7000);
    assert_eq!(open["maxPayload"], 65536);
    let sids: std::collections::HashSet<String> =
        (0..50).map(|_| Polling::open(&server).0.sid).collect();
    assert_eq!(sids.len(), 50);
    for sid in &sids {
        // 160 random bits.
        assert!(
            sid.len() == 40 && sid.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sid}"
        );
    }
}

#[test]
fn packets_are_batched_with_record_separators_both_ways() {
    let server = TestServer::start();
    let polling = Polling::connected(&server);
    let ok = polling.post(concat!(
        r#"42["joinRoom",{"username":"ann","room":"r"}]"#,
        "\u{1e}",
        r#"421["chatMessage","hi"]"#
    ));
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok"));
    assert_eq!(ok.header("content-type"), Some("text/html"));
    let packets = polling.until(|p| p.starts_with("431"));
    let names: Vec<String> = packets
        .iter()
        .filter(|p| p.starts_with("42"))
        .map(|p| event(p).0)
        .collect();
    assert_eq!(names, ["joined", "chatMessage"]);
    assert_eq!(packets.last().unwrap(), r#"431[{"ok":true,"seq":1}]"#);
}

#[test]
fn requests_engine_io_refuses_get_its_codes() {
    let server = TestServer::start();
    let unknown = get(server.http, "/socket.io/?EIO=4&transport=carrier-pigeon");
    assert_eq!(engine_error(&unknown), (400, 0));
    let no_session = get(
        server.http,
        "/socket.io/?EIO=4&transport=polling&sid=feedface",
    );
    assert_eq!(engine_error(&no_session), (400, 1));
    let post_handshake = post(server.http, "/socket.io/?EIO=4&transport=polling", "40");
    assert_eq!(engine_error(&post_handshake), (400, 2));
    let old = get(server.http, "/socket.io/?EIO=3&transport=polling");
    assert_eq!(engine_error(&old), (400, 5));
    let foreign = raw_http(
        server.http,
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nOrigin: http://evil.example\r\n\
          Connection: close\r\n\r\n",
    );
    assert_eq!(engine_error(&foreign), (403, 4));
    // The WebSocket port has no polling sessions at all.
    let on_ws_port = get(server.ws, "/socket.io/?EIO=4&transport=polling");
    assert_eq!(engine_error(&on_ws_port), (400, 0));
}

#[test]
fn an_allowed_origin_gets_credentials_and_a_preflight_allows_post() {
    let server = TestServer::start();
    let origin = format!("http://localhost:{}", server.http.port());
    let answer = raw_http(
        server.http,
        format!(
            "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nOrigin: {origin}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), Some(&*origin));
    assert_eq!(
        answer.header("access-control-allow-credentials"),
        Some("true")
    );
    let preflight = raw_http(
        server.http,
        format!(
            "OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(preflight.status, 204);
    let methods = preflight.header("access-control-allow-methods").unwrap();
    assert!(methods.contains("POST"), "{methods}");
    assert_eq!(
        preflight.header("access-control-allow-credentials"),
        Some("true")
    );
    // POST stays 405 everywhere else.
    let elsewhere = raw_http(
        server.http,
        b"POST /api/rooms HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(elsewhere.status, 405);
}

/// python-engineio refuses a payload of more than 16 packets (and drops
/// its session): an answer carries 16 at most, the rest wait for the next GET.
#[test]
fn an_answer_carries_sixteen_packets_at_most_and_the_rest_wait() {
    let server = TestServer::start();
    let polling = Polling::connected(&server);
    let pings: Vec<String> = (0..20).map(|i| format!("2ping{i}")).collect();
    assert_eq!(polling.post(&pings.join("\u{1e}")).body, "ok");
    let first = polling.packets();
    assert_eq!(first.len(), 16, "{first:?}");
    let second = polling.packets();
    assert_eq!(second.len(), 4, "{second:?}");
    let all: Vec<String> = first.into_iter().chain(second).collect();
    let want: Vec<String> = (0..20).map(|i| format!("3ping{i}")).collect();
    assert_eq!(all, want, "every answer once, in order");
}

#[test]
fn two_gets_at_once_end_the_session() {
    let server = TestServer::start();
    let polling = Polling::connected(&server);
    // Nothing is queued, so the first GET is held (for a ping interval,
    // 25 s) and the two overlap, whichever arrives first.
    let gets: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (polling.http, polling.url());
            thread::spawn(move || get(http, &url))
        })
        .collect();
    let mut answers: Vec<HttpResponse> = gets.into_iter().map(|g| g.join().unwrap()).collect();
    answers.sort_by_key(|a| a.status);
    assert_eq!((answers[0].status, answers[0].body.as_str()), (200, "1"));
    assert_eq!((answers[1].status, answers[1].body.as_str()), (400, ""));
    assert_eq!(engine_error(&polling.get()), (400, 1));
}

#[test]
fn a_post_over_the_limit_gets_413_and_ends_the_session() {
    let server = TestServer::with(|c| c.max_message_bytes = 1000);
    let polling = Polling::connected(&server);
    let big = format!(r#"42["chatMessage","{}"]"#, "x".repeat(1000));
    let answer = polling.post(&big);
    assert_eq!(answer.status, 413);
    assert_eq!(engine_error(&polling.get()), (400, 1));
    // At the limit exactly, a payload is taken.
    let polling = Polling::connected(&server);
    let prefix = r#"42["typing",{"typing":true}]"#;
    let at_limit = format!("{prefix}{}", " ".repeat(1000 - prefix.len()));
    assert_eq!(at_limit.len(), 1000);
    assert_eq!(polling.post(&at_limit).status, 200);
}

#[test]
fn the_clients_goodbye_releases_its_held_get_and_tells_the_room() {
    let server = TestServer::start();
    let mut native = server.member("nat", "r");
    for goodbye in ["1", "41"] {
        let polling = Polling::connected(&server);
        polling.post(r#"42["joinRoom",{"username":"poll","room":"r"}]"#);
        polling.until(|p| p.starts_with(r#"42["joined""#));
        assert_eq!(native.expect("userJoined")["username"], "poll");
        let (http, url) = (polling.http, polling.url());
        let held = thread::spawn(move || get(http, &url));
        // Nothing tells when the GET is parked; give it a moment so that
        // the goodbye usually finds it held. Both orders are checked below.
        thread::sleep(Duration::from_millis(100));
        assert_eq!(polling.post(goodbye).body, "ok");
        let released = held.join().unwrap();
        if released.status == 200 {
            assert_eq!(released.body, "6", "a held GET is told to stop polling");
        } else {
            assert_eq!(engine_error(&released), (400, 1), "the GET came after");
        }
        assert_eq!(native.expect("userLeft")["username"], "poll");
        assert_eq!(engine_error(&polling.get()), (400, 1));
    }
}

#[test]
fn polling_clients_are_pinged_and_a_silent_one_is_dropped() {
    let server = TestServer::with(|c| {
        c.ping_interval = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(2);
    });
    let polling = Polling::connected(&server);
    polling.post(r#"42["joinRoom",{"username":"poll","room":"r"}]"#);
    polling.until(|p| p.starts_with(r#"42["joined""#));
    // Three ping intervals, answering each ping: still there.
    for _ in 0..3 {
        let started = Instant::now();
        polling.until(|p| p == "2");
        assert!(started.elapsed() < Duration::from_millis(1800));
        assert_eq!(polling.post("3").body, "ok");
    }
    assert_eq!(
        server.get("/api/rooms").body,
        r#"{"rooms":[{"name":"r","users":1}]}"#
    );
    // Then silence: it is dropped (and its room with it) within the idle
    // timeout and a tick of the timer.
    let silent = Instant::now();
    while server.get("/api/rooms").body != r#"{"rooms":[]}"# {
        assert!(
            silent.elapsed() < Duration::from_millis(2800),
            "still there"
        );
        thread::sleep(Duration::from_millis(50)); // bounded wait: nothing tells of a silent client's drop
    }
    assert!(
        silent.elapsed() > Duration::from_millis(1500),
        "dropped too soon"
    );
    assert_eq!(server.metric("roomchat_connections"), 0);
    assert_eq!(engine_error(&polling.get()), (400, 1));
}

#[test]
fn polling_clients_count_toward_capacity_and_the_rate_limit() {
    let server = TestServer::with(|c| {
        c.max_connections = 1;
        c.rate_limit = RateLimit(Some(1));
    });
    let polling = Polling::connected(&server);
    let full = get(server.http, "/socket.io/?EIO=4&transport=polling");
    assert_eq!(full.status, 503);
    // A bucket of 2: the third frame at once is refused.
    let burst: Vec<String> = (0..3)
        .map(|i| format!(r#"42{i}["typing",{{"typing":true}}]"#))
        .collect();
    polling.post(&burst.join("\u{1e}"));
    let packets = polling.until(|p| p.contains("rate_limited"));
    assert!(packets
        .iter()
        .any(|p| p.starts_with("432[") && p.contains("rate_limited")));
}

#[test]
fn a_polling_client_that_stops_polling_is_cut_off_as_a_slow_consumer() {
    let server = TestServer::with(|c| c.rate_limit = RateLimit(None));
    let polling = Polling::connected(&server);
    polling.post(r#"42["joinRoom",{"username":"poll","room":"r"}]"#);
    polling.until(|p| p.starts_with(r#"42["joined""#));
    let mut sender = server.member("sender", "r");
    // Never polling again: 700 messages of 1.9 KB pass the 1 MiB bound,
    // and the message that does tells the sender, before its ack.
    let mut left = None;
    for i in 0..700 {
        let (frames, _) = sender.request("chatMessage", json!({"text": "x".repeat(1900)}));
        if frames
            .iter()
            .any(|f| f["event"] == "userLeft" && f["data"]["username"] == "poll")
        {
            left = Some(i);
            break;
        }
    }
    assert!(left.is_some_and(|i| i > 400), "cut off at {left:?}");
    assert_eq!(server.metric("roomchat_slow_consumer_disconnects_total"), 1);
}

#[test]
fn native_and_polling_clients_share_a_room_and_its_seq() {
    let server = TestServer::start();
    let mut native = server.member("nat", "lobby");
    let polling = Polling::connected(&server);
    polling.post(r#"42["joinRoom",{"username":"poll","room":"lobby"}]"#);
    let packets = polling.until(|p| p.starts_with(r#"42["joined""#));
    let joined = packets
        .iter()
        .find(|p| p.starts_with(r#"42["joined""#))
        .unwrap();
    assert_eq!(event(joined).1["users"].as_array().unwrap().len(), 2);
    native.expect("userJoined");
    let seq = native.say("from native");
    polling.post(r#"427["chatMessage",{"text":"from polling"}]"#);
    let packets = polling.until(|p| p.starts_with("437"));
    let seqs: Vec<u64> = packets
        .iter()
        .filter(|p| p.starts_with(r#"42["chatMessage""#))
        .map(|p| event(p).1["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [seq, seq + 1]);
    assert_eq!(native.expect("chatMessage")["text"], "from polling");
}

/// A WebSocket opened on the HTTP port to take session `sid` over.
fn probe(server: &TestServer, sid: &str) -> tungstenite::WebSocket<TcpStream> {
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        server.http
    );
    let stream = TcpStream::connect(server.http).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    tungstenite::client(url, stream).expect("upgrade").0
}

fn text(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
    loop {
        match ws.read().expect("a frame") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn the_upgrade_loses_and_repeats_no_frame() {
    let server = TestServer::with(|c| c.rate_limit = RateLimit(None));
    let polling = Polling::connected(&server);
    polling.post(r#"42["joinRoom",{"username":"poll","room":"r"}]"#);
    polling.until(|p| p.starts_with(r#"42["joined""#));
    // A native member sends a stream that spans the upgrade.
    let mut sender = server.member("sender", "r");
    let total = 300u64;
    let streaming = thread::spawn(move || {
        for i in 0..total {
            sender.say(&format!("m{i}"));
        }
    });
    let mut seqs = Vec::new();
    let collect = |seqs: &mut Vec<u64>, packet: &str| {
        if packet.starts_with(r#"42["chatMessage""#) {
            seqs.push(event(packet).1["seq"].as_u64().unwrap());
        }
    };
    for packet in polling.packets() {
        collect(&mut seqs, &packet);
    }
    let mut ws = probe(&server, &polling.sid);
    ws.send(Message::text("2probe")).unwrap();
    assert_eq!(text(&mut ws), "3probe");
    // While it probes, a GET gets a noop at once, and nothing of the queue.
    let started = Instant::now();
    assert_eq!(polling.get().body, "6");
    assert!(started.elapsed() < Duration::from_secs(1));
    ws.send(Message::text("5")).unwrap();
    while seqs.len() < total as usize {
        let packet = text(&mut ws);
        collect(&mut seqs, &packet);
    }
    streaming.join().unwrap();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    // The session lives on over the WebSocket; polling it is refused.
    assert_eq!(engine_error(&polling.get()), (400, 3));
    ws.send(Message::text(r#"421["chatMessage","after"]"#))
        .unwrap();
    loop {
        let packet = text(&mut ws);
        if packet.starts_with("431") {
            break;
        }
    }
}

#[test]
fn a_failed_probe_leaves_the_session_polling() {
    let server = TestServer::start();
    let polling = Polling::connected(&server);
    let mut ws = probe(&server, &polling.sid);
    ws.send(Message::text("not a probe")).unwrap();
    let _ = ws.read(); // the probe WebSocket is closed
    polling.post(r#"42["joinRoom",{"username":"poll","room":"r"}]"#);
    polling.until(|p| p.starts_with(r#"42["joined""#));
    // A WebSocket for a session that does not exist is refused before the upgrade.
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid=nope",
        server.http
    );
    let stream = TcpStream::connect(server.http).unwrap();
    assert!(tungstenite::client(url, stream).is_err());
}

#[test]
fn a_probe_has_the_handshake_deadline_and_a_session_one_probe_at_a_time() {
    let server = TestServer::with(|c| {
        c.handshake_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(30);
    });
    let polling = Polling::connected(&server);
    let mut first = probe(&server, &polling.sid);
    // While one WebSocket probes, another for the same session is refused.
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={}",
        server.http, polling.sid
    );
    match tungstenite::client(&url, TcpStream::connect(server.http).unwrap()) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(answer))) => {
            assert_eq!(answer.status(), 400);
            let body: Value = serde_json::from_slice(answer.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], 1);
        }
        other => panic!("a second probe was not refused: {other:?}"),
    }
    // Pings keep a connection alive, but not a probe past the handshake
    // deadline: it is closed long before the idle timeout.
    let started = Instant::now();
    first
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the probe lives on"
        );
        match first.read() {
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if first.send(Message::Ping("still here".into())).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // The session still polls, and takes a new probe.
    assert_eq!(polling.post("2").body, "ok");
    let mut second = probe(&server, &polling.sid);
    second.send(Message::text("2probe")).unwrap();
    assert_eq!(text(&mut second), "3probe");
}
