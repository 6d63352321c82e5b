//! Bad input: every malformed or invalid frame gets the protocol's `error`
//! (with the request's `ack` when it had a readable one) and the connection
//! stays usable; violations of RFC 6455 itself close it with the RFC's code.

use super::SETUP;
use crate::common::engine::Engine;
use crate::common::Client;
use serde_json::json;
use tungstenite::Message;

#[test]
fn malformed_json_is_bad_json_and_the_connection_stays_usable() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.member("ann", "r");
    for text in [
        "{",
        "not json",
        "[1,2,3]",
        "\"str\"",
        "null",
        "{\"event\":\"chatMessage\",}",
    ] {
        c.send_text(text);
        let frame = c.expect_error("bad_json");
        assert!(frame.get("ack").is_none(), "{frame}");
        assert!(frame["data"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    c.say("still here");
}

#[test]
fn missing_event_is_bad_request_with_the_ack() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.client();
    c.send(json!({"data": {}, "ack": 9}));
    assert_eq!(c.expect_error("bad_request")["ack"], 9);
    c.send(json!({"event": 42}));
    assert!(c.expect_error("bad_request").get("ack").is_none());
}

#[test]
fn invalid_acks_are_bad_requests_without_an_ack() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.member("ann", "r");
    for ack in [
        json!(-1),
        json!(1.5),
        json!("7"),
        json!(9007199254740992u64),
        json!(null),
        json!([1]),
    ] {
        c.send(json!({"event": "typing", "data": {"typing": true}, "ack": ack}));
        let frame = c.expect_error("bad_request");
        assert!(frame.get("ack").is_none(), "ack {ack}: {frame}");
    }
    let max = 9007199254740991u64;
    c.send(json!({"event": "typing", "data": {"typing": true}, "ack": max}));
    assert_eq!(
        c.recv(),
        json!({"event": "ack", "ack": max, "data": {"ok": true}})
    );
    c.send(json!({"event": "typing", "data": {"typing": true}, "ack": 0}));
    assert_eq!(c.recv()["ack"], 0);
}

#[test]
fn unknown_events_are_named_and_carry_the_ack() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.client();
    let (_, reply) = c.request("dance", json!({}));
    assert_eq!(reply["event"], "error");
    assert_eq!(reply["data"]["code"], "unknown_event");
    assert!(reply["data"]["message"].as_str().unwrap().contains("dance"));
}

#[test]
fn room_events_outside_a_room_are_not_in_room() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.client();
    for (event, data) in [
        ("chatMessage", json!({"text": "hi"})),
        ("typing", json!({"typing": true})),
        ("leaveRoom", json!(null)),
        // not_in_room is checked before the fields.
        ("chatMessage", json!({"text": 5})),
        ("typing", json!("nope")),
    ] {
        let (_, reply) = c.request(event, data);
        assert_eq!(reply["data"]["code"], "not_in_room", "{event}");
    }
}

#[test]
fn field_errors_name_the_field() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.member("ann", "r");
    let cases = [
        ("joinRoom", json!(null), "data"),
        ("joinRoom", json!("ann"), "data"),
        ("joinRoom", json!({"room": "r"}), "username"),
        ("joinRoom", json!({"username": 7, "room": "r"}), "username"),
        ("joinRoom", json!({"username": "ann"}), "room"),
        (
            "joinRoom",
            json!({"username": "ann", "room": ["r"]}),
            "room",
        ),
        ("chatMessage", json!({}), "text"),
        ("chatMessage", json!([]), "data"),
        ("chatMessage", json!({"text": null}), "text"),
        ("typing", json!({"typing": 1}), "typing"),
        ("typing", json!({}), "typing"),
    ];
    for (event, data, field) in cases {
        let (frames, reply) = c.request(event, data.clone());
        assert!(frames.is_empty());
        assert_eq!(reply["event"], "error", "{event} {data}");
        assert_eq!(reply["data"]["code"], "invalid_field", "{event} {data}");
        assert_eq!(reply["data"]["field"], field, "{event} {data}");
    }
}

#[test]
fn a_number_past_f64s_range_is_json_a_read_field_refuses_and_an_unread_one_ignores() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.member("ann", "r");
    // Found by the frame fuzz target: valid JSON that serde_json's Value
    // cannot hold. Where the server reads it, a field error; elsewhere,
    // nothing (unknown fields are ignored); as the ack, bad_request.
    c.send_text(r#"{"event":"chatMessage","data":{"text":1e400},"ack":7}"#);
    let refused = c.expect_error("invalid_field");
    assert_eq!(
        (&refused["ack"], &refused["data"]["field"]),
        (&json!(7), &json!("text"))
    );
    c.send_text(r#"{"event":"chatMessage","data":{"text":"hi","x":1e400},"ack":8}"#);
    let chat = c.expect("chatMessage");
    assert_eq!(chat["text"], "hi");
    let ack = c.recv();
    assert_eq!(
        (&ack["event"], &ack["ack"]),
        (&json!("ack"), &json!(8)),
        "{ack}"
    );
    c.send_text(r#"{"event":"chatMessage","data":{"text":"yo"},"ack":1e400}"#);
    let bad = c.expect_error("bad_request");
    assert!(bad.get("ack").is_none(), "{bad}");
    c.say("still here");
}

#[test]
fn name_bounds_are_counted_in_characters_after_trimming() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.client();
    let field_error = |c: &mut Client, username: &str, room: &str| {
        let (_, reply) = c.request("joinRoom", json!({"username": username, "room": room}));
        (reply["event"] == "error").then(|| reply["data"]["field"].as_str().unwrap().to_owned())
    };
    assert_eq!(field_error(&mut c, &"ü".repeat(32), "r"), None);
    assert_eq!(
        field_error(&mut c, &"ü".repeat(33), "r").as_deref(),
        Some("username")
    );
    assert_eq!(
        field_error(&mut c, &format!("  {}  ", "a".repeat(32)), "r"),
        None
    );
    assert_eq!(field_error(&mut c, "a", &"🎉".repeat(64)), None);
    assert_eq!(
        field_error(&mut c, "a", &"🎉".repeat(65)).as_deref(),
        Some("room")
    );
    assert_eq!(field_error(&mut c, "", "r").as_deref(), Some("username"));
    assert_eq!(
        field_error(&mut c, " \t ", "r").as_deref(),
        Some("username")
    );
    assert_eq!(
        field_error(&mut c, "a", "\u{3000}").as_deref(),
        Some("room")
    );
    assert_eq!(
        field_error(&mut c, "a\nb", "r").as_deref(),
        Some("username")
    );
    assert_eq!(field_error(&mut c, "a", "r\u{0}").as_deref(), Some("room"));
    assert_eq!(
        field_error(&mut c, "a\u{7f}", "r").as_deref(),
        Some("username")
    );
}

#[test]
fn text_bounds_and_control_characters() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.member("ann", "r");
    let code = |c: &mut Client, text: &str| {
        let (_, reply) = c.request("chatMessage", json!({ "text": text }));
        reply["data"]["code"].as_str().map(str::to_owned)
    };
    assert_eq!(code(&mut c, &"é".repeat(2000)), None);
    assert_eq!(
        code(&mut c, &"é".repeat(2001)).as_deref(),
        Some("invalid_field")
    );
    assert_eq!(code(&mut c, "").as_deref(), Some("invalid_field"));
    assert_eq!(code(&mut c, " \n\t ").as_deref(), Some("invalid_field"));
    assert_eq!(code(&mut c, "tab\tnew\nline\r"), None);
    assert_eq!(
        code(&mut c, "esc\u{1b}[31m").as_deref(),
        Some("invalid_field")
    );
    assert_eq!(code(&mut c, "c1\u{85}x").as_deref(), Some("invalid_field"));
}

#[test]
fn a_failed_join_leaves_the_client_where_it_was() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    let mut bob = server.member("bob", "r");
    ann.expect("userJoined");
    let (_, reply) = bob.request("joinRoom", json!({"username": "bob", "room": ""}));
    assert_eq!(reply["data"]["field"], "room");
    ann.assert_quiet();
    assert_eq!(bob.say("still in r"), 1);
    assert_eq!(ann.expect("chatMessage")["username"], "bob");
}

#[test]
fn binary_frames_are_bad_requests() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.member("ann", "r");
    c.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    c.expect_error("bad_request");
    c.say("still usable");
}

#[test]
fn extra_fields_are_ignored() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.client();
    c.send(json!({"event": "joinRoom", "data": {"username": "a", "room": "r", "color": "red"}, "ack": 1, "x": 2}));
    assert_eq!(c.expect("joined")["room"], "r");
    assert_eq!(c.recv()["event"], "ack");
}

#[test]
fn errors_are_counted_by_code() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.client();
    c.send_text("nope");
    c.expect_error("bad_json");
    c.send_text("{}");
    c.expect_error("bad_request");
    // Summed over a cluster's nodes: each counts the errors it sent.
    let count = |code: &str| server.metric(&format!("roomchat_errors_total{{code=\"{code}\"}}"));
    assert_eq!((count("bad_json"), count("bad_request")), (1, 1));
    assert_eq!(server.metric("roomchat_errors_total"), 2);
}

#[test]
fn deeply_nested_json_is_refused_without_harm() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.member("ann", "r");
    // serde_json stops at 128 levels; the reader's stack has room for that
    // even in a debug build.
    for depth in [100, 127, 128, 5000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        c.send_text(&format!(
            r#"{{"event":"chatMessage","data":{{"text":{nested}}},"ack":1}}"#
        ));
        let reply = c.recv();
        assert_eq!(reply["event"], "error", "depth {depth}: {reply}");
        assert!(
            matches!(
                reply["data"]["code"].as_str(),
                Some("bad_json" | "invalid_field")
            ),
            "depth {depth}: {reply}"
        );
    }
    c.say("still here");
}
