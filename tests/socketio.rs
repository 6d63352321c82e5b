//! The Socket.IO v4 endpoint frame by frame: Engine.IO open, heartbeat and
//! close packets; Socket.IO CONNECT, EVENT, ACK and the refusals.

mod common;

use common::socketio::Peer;
use common::{RawSocket, TestServer};
use serde_json::json;

#[test]
fn the_open_packet_comes_first_with_values_from_the_flags() {
    let server = TestServer::with(|c| {
        c.ping_interval = std::time::Duration::from_secs(20);
        c.idle_timeout = std::time::Duration::from_secs(50);
        c.max_message_bytes = 4096;
    });
    let (_, open) = Peer::open(&server);
    assert!(open["sid"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(open["pingInterval"], 20_000);
    assert_eq!(open["pingTimeout"], 30_000);
    assert_eq!(open["maxPayload"], 4096);
}

#[test]
fn connect_to_the_main_namespace_with_or_without_auth() {
    let server = TestServer::start();
    for connect in ["40", r#"40{"token":"abc"}"#] {
        let (mut peer, open) = Peer::open(&server);
        peer.send(connect);
        // Socket.IO's sid is the client's id; Engine.IO's is another,
        // unguessable one (it ties long-polling requests to a session).
        let answer = peer.recv();
        let sid: serde_json::Value = serde_json::from_str(&answer[2..]).unwrap();
        assert!(answer.starts_with("40"));
        assert_eq!(peer.event("connected")["id"], sid["sid"]);
        assert_ne!(open["sid"], sid["sid"]);
        assert!(open["sid"].as_str().unwrap().len() >= 32);
    }
}

#[test]
fn another_namespace_gets_connect_error() {
    let server = TestServer::start();
    let (mut peer, _) = Peer::open(&server);
    peer.send("40/admin,");
    assert_eq!(peer.recv(), r#"44/admin,{"message":"Invalid namespace"}"#);
}

#[test]
fn events_and_acks_map_onto_the_native_protocol() {
    let server = TestServer::start();
    let (mut peer, connected) = Peer::connected(&server);
    peer.send(r#"427["joinRoom",{"username":"sio","room":"r"}]"#);
    let joined = peer.event("joined");
    assert_eq!(joined["id"], connected["id"]);
    assert_eq!(peer.recv(), r#"437[{"ok":true,"room":"r"}]"#);
    peer.send(r#"428["chatMessage","bare string"]"#);
    let message = peer.event("chatMessage");
    assert_eq!(
        (message["text"].as_str(), message["seq"].as_u64()),
        (Some("bare string"), Some(1))
    );
    assert_eq!(peer.recv(), r#"438[{"ok":true,"seq":1}]"#);
    // An error for a request with an ack id is the ack's payload.
    peer.send(r#"429["chatMessage",{"text":""}]"#);
    let reply = peer.recv();
    assert!(
        reply.starts_with(r#"439[{"code":"invalid_field""#),
        "{reply}"
    );
    // Without an ack id it is an `error` event.
    peer.send(r#"42["nope"]"#);
    assert_eq!(peer.event("error")["code"], "unknown_event");
}

#[test]
fn native_and_socketio_clients_share_a_room() {
    let server = TestServer::start();
    let mut native = server.member("nat", "shared");
    let (mut peer, _) = Peer::connected(&server);
    peer.send(r#"42["joinRoom",{"username":"sio","room":"shared"}]"#);
    assert_eq!(peer.event("joined")["users"].as_array().unwrap().len(), 2);
    assert_eq!(native.expect("userJoined")["username"], "sio");
    assert_eq!(native.say("from native"), 1);
    assert_eq!(peer.event("chatMessage")["text"], "from native");
    peer.send(r#"42["chatMessage",{"text":"from socket.io"}]"#);
    assert_eq!(peer.event("chatMessage")["seq"], 2);
    let heard = native.expect("chatMessage");
    assert_eq!(
        (heard["seq"].as_u64(), heard["username"].as_str()),
        (Some(2), Some("sio"))
    );
}

#[test]
fn bad_packets_get_error_events() {
    let server = TestServer::start();
    let (mut peer, _) = Peer::connected(&server);
    peer.send("42[broken");
    assert_eq!(peer.event("error")["code"], "bad_json");
    peer.send("42[7]");
    assert_eq!(peer.event("error")["code"], "bad_request");
    peer.send(r#"451-["chatMessage",{"_placeholder":true,"num":0}]"#);
    assert_eq!(peer.event("error")["code"], "bad_request");
    peer.0.send(&RawSocket::frame(0x82, &[1, 2, 3], true));
    assert_eq!(peer.event("error")["code"], "bad_request");
    peer.send("x");
    assert_eq!(peer.event("error")["code"], "bad_request");
}

#[test]
fn events_before_connect_are_refused() {
    let server = TestServer::start();
    let (mut peer, _) = Peer::open(&server);
    peer.send(r#"42["joinRoom",{"username":"a","room":"r"}]"#);
    assert_eq!(peer.event("error")["code"], "bad_request");
}

#[test]
fn disconnect_and_close_packets_end_the_connection_and_tell_the_room() {
    let server = TestServer::start();
    let mut native = server.member("nat", "r");
    for goodbye in ["41", "1"] {
        let (mut peer, _) = Peer::connected(&server);
        peer.send(r#"42["joinRoom",{"username":"sio","room":"r"}]"#);
        peer.event("joined");
        assert_eq!(native.expect("userJoined")["username"], "sio");
        peer.send(goodbye);
        assert_eq!(native.expect("userLeft")["username"], "sio");
    }
}

#[test]
fn the_server_pings_with_packet_2_and_a_client_ping_gets_3() {
    let server = TestServer::with(|c| c.ping_interval = std::time::Duration::from_secs(1));
    let (mut peer, _) = Peer::connected(&server);
    peer.send("2");
    assert_eq!(peer.recv(), "3");
    peer.send("2probe");
    assert_eq!(peer.recv(), "3probe");
    assert_eq!(peer.recv(), "2", "the server's heartbeat");
    peer.send("3");
}

#[test]
fn handshake_errors_are_engine_io_json() {
    let server = TestServer::start();
    let get = |query: &str, upgrade: bool| {
        let request = if upgrade {
            common::upgrade_request(&format!("/socket.io/{query}"), "")
        } else {
            format!("GET /socket.io/{query} HTTP/1.1\r\nHost: x\r\n\r\n")
        };
        let answer = server.ws_request(&request);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        (answer.status, answer.body)
    };
    assert_eq!(
        get("?EIO=4&transport=polling", false),
        (400, r#"{"code":0,"message":"Transport unknown"}"#.into())
    );
    assert_eq!(
        get("?EIO=4&transport=polling", true),
        (400, r#"{"code":0,"message":"Transport unknown"}"#.into())
    );
    assert_eq!(
        get("?EIO=3&transport=websocket", true),
        (
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#.into()
        )
    );
    assert_eq!(get("?transport=websocket", true).0, 400);
    assert_eq!(
        get("?EIO=4&transport=websocket", false),
        (400, r#"{"code":3,"message":"Bad request"}"#.into())
    );
}

#[test]
fn the_rate_limit_holds_here_too() {
    let server = TestServer::with(|c| c.rate_limit = roomchat::config::RateLimit(Some(1)));
    let (mut peer, _) = Peer::connected(&server);
    for id in 1..=3 {
        peer.send(&format!(r#"42{id}["typing",{{"typing":true}}]"#));
    }
    assert!(peer.recv().starts_with(r#"431[{"code":"not_in_room""#));
    assert!(peer.recv().starts_with(r#"432[{"code":"not_in_room""#));
    assert!(
        peer.recv().starts_with(r#"433[{"code":"rate_limited""#),
        "a bucket of 2 x 1"
    );
}

#[test]
fn disconnect_is_answered_with_a_close_frame_and_other_namespaces_are_ignored() {
    let server = TestServer::start();
    let (mut peer, _) = Peer::connected(&server);
    peer.send("41/admin,");
    peer.send(r#"421["typing",{"typing":true}]"#);
    assert!(
        peer.recv().starts_with(r#"431[{"code":"not_in_room""#),
        "still connected"
    );
    peer.send("41");
    assert_eq!(peer.0.close_code(), Some(1000));
}
