//! Joining, leaving, chatting and typing: who receives what, in which order.
//! Run on every engine (`SETUP`, from the module that includes this file).

use super::SETUP;
use crate::common::engine::Engine;
use crate::common::Client;
use serde_json::json;

#[test]
fn connected_is_the_first_frame_and_carries_the_limits() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = Client::connect_raw(&format!("ws://{}/ws", server.node().ws));
    let frame = c.recv();
    assert_eq!(frame["event"], "connected");
    assert!(frame["data"]["id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(
        frame["data"]["limits"],
        json!({"maxMessageBytes": 65536, "maxTextChars": 2000, "rateLimit": 20})
    );
}

#[test]
fn ids_are_unique() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let ids: std::collections::HashSet<_> = (0..20).map(|_| server.client().id).collect();
    assert_eq!(ids.len(), 20);
}

#[test]
fn joined_lists_the_users_and_others_get_user_joined() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "lobby");
    let mut bob = server.client();
    let joined = bob.join(" bob ", "lobby");
    assert_eq!(joined["room"], "lobby");
    assert_eq!(joined["username"], "bob", "the trimmed name is used");
    assert_eq!(joined["id"], bob.id.as_str());
    assert_eq!(
        joined["users"],
        json!([{"id": ann.id, "username": "ann"}, {"id": bob.id, "username": "bob"}])
    );
    assert_eq!(joined["history"], json!([]));
    assert_eq!(
        ann.expect("userJoined"),
        json!({"room": "lobby", "id": bob.id, "username": "bob"})
    );
    bob.assert_quiet();
}

#[test]
fn join_ack_names_the_room_and_comes_after_joined() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut c = server.client();
    let (frames, reply) = c.request("joinRoom", json!({"username": "ann", "room": "r1"}));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["event"], "joined");
    assert_eq!(
        reply,
        json!({"event": "ack", "ack": 1, "data": {"ok": true, "room": "r1"}})
    );
}

#[test]
fn chat_reaches_the_whole_room_and_nobody_outside() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "lobby");
    let mut bob = server.member("bob", "lobby");
    let mut eve = server.member("eve", "elsewhere");
    ann.expect("userJoined");
    let (frames, reply) = ann.request("chatMessage", json!({"text": "hello <b>bob</b>"}));
    assert_eq!(reply["data"], json!({"ok": true, "seq": 1}));
    assert_eq!(
        frames.len(),
        1,
        "the sender gets its own message, then the ack"
    );
    let message = bob.expect("chatMessage");
    assert_eq!(message, frames[0]["data"]);
    assert_eq!(message["room"], "lobby");
    assert_eq!(message["seq"], 1);
    assert_eq!(message["id"], ann.id.as_str());
    assert_eq!(message["username"], "ann");
    assert_eq!(message["text"], "hello <b>bob</b>");
    let ts = message["ts"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(ts <= now && now - ts < 10_000, "ts is unix milliseconds");
    eve.assert_quiet();
}

#[test]
fn text_is_kept_exactly_as_sent() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    let text = "  two\r\nlines\tand \u{1F600} \"quotes\" \\ ";
    let (frames, _) = ann.request("chatMessage", json!({ "text": text }));
    assert_eq!(frames[0]["data"]["text"], text);
}

#[test]
fn typing_goes_to_the_others_only() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    let mut bob = server.member("bob", "r");
    ann.expect("userJoined");
    let (frames, reply) = ann.request("typing", json!({"typing": true}));
    assert!(frames.is_empty(), "not echoed to the sender: {frames:?}");
    assert_eq!(reply["data"], json!({"ok": true}));
    assert_eq!(
        bob.expect("typing"),
        json!({"room": "r", "id": ann.id, "username": "ann", "typing": true})
    );
}

#[test]
fn leave_answers_left_and_tells_the_room() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    let mut bob = server.member("bob", "r");
    ann.expect("userJoined");
    let (frames, reply) = bob.request("leaveRoom", json!(null));
    assert_eq!(
        frames,
        vec![json!({"event": "left", "data": {"room": "r"}})]
    );
    assert_eq!(reply["data"], json!({"ok": true}));
    assert_eq!(
        ann.expect("userLeft"),
        json!({"room": "r", "id": bob.id, "username": "bob"})
    );
    let (_, reply) = bob.request("leaveRoom", json!({}));
    assert_eq!(reply["data"]["code"], "not_in_room");
}

#[test]
fn switching_rooms_leaves_the_old_one_without_left() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "a");
    let mut bob = server.member("bob", "a");
    let mut cat = server.member("cat", "b");
    ann.expect("userJoined");
    let (frames, _) = bob.request("joinRoom", json!({"username": "bob", "room": "b"}));
    let events: Vec<_> = frames
        .iter()
        .map(|f| f["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["joined"], "no `left` on a room change");
    assert_eq!(frames[0]["data"]["users"].as_array().unwrap().len(), 2);
    assert_eq!(ann.expect("userLeft")["username"], "bob");
    assert_eq!(cat.expect("userJoined")["username"], "bob");
    ann.say("only ann hears this");
    bob.assert_quiet();
}

#[test]
fn rejoining_the_same_room_keeps_the_membership() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    let mut bob = server.member("bob", "r");
    ann.expect("userJoined");
    ann.say("one");
    bob.expect("chatMessage");
    // Same name: joined again, nobody else hears a thing, seq goes on.
    let joined = bob.join("bob", "r");
    assert_eq!(joined["history"].as_array().unwrap().len(), 1);
    ann.assert_quiet();
    // New name: the others see the old name leave and the new one arrive.
    let joined = bob.join("robert", "r");
    assert_eq!(joined["username"], "robert");
    assert_eq!(
        ann.expect("userLeft"),
        json!({"room": "r", "id": bob.id, "username": "bob"})
    );
    assert_eq!(
        ann.expect("userJoined"),
        json!({"room": "r", "id": bob.id, "username": "robert"})
    );
    assert_eq!(ann.say("two"), 2, "the room was not dropped");
    assert_eq!(bob.expect("chatMessage")["username"], "ann");
}

#[test]
fn disconnect_sends_user_left_at_once() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    let bob = server.member("bob", "r");
    ann.expect("userJoined");
    let bob_id = bob.id.clone();
    drop(bob); // TCP closed without a Close frame
    assert_eq!(
        ann.expect("userLeft"),
        json!({"room": "r", "id": bob_id, "username": "bob"})
    );
}

#[test]
fn clean_close_sends_user_left_and_the_close_is_answered() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    let mut bob = server.member("bob", "r");
    ann.expect("userJoined");
    bob.ws.close(None).unwrap();
    assert_eq!(bob.expect_close(), Some(1005), "the Close is answered");
    assert_eq!(ann.expect("userLeft")["username"], "bob");
}

#[test]
fn history_is_sent_on_join_oldest_first_and_bounded() {
    let Some(server) = Engine::with(SETUP, |c| c.history = 3) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    for i in 1..=5 {
        ann.say(&format!("m{i}"));
    }
    let joined = server.client().join("bob", "r");
    let texts: Vec<_> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m3", "m4", "m5"]);
    assert_eq!(joined["history"][0]["seq"], 3);
    assert_eq!(joined["history"][0]["username"], "ann");
}

#[test]
fn an_empty_room_is_dropped_with_its_history_and_seq() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    ann.say("one");
    ann.say("two");
    ann.ok("leaveRoom", json!(null));
    assert_eq!(server.get("/api/rooms").body, r#"{"rooms":[]}"#);
    let joined = ann.join("ann", "r");
    assert_eq!(joined["history"], json!([]));
    assert_eq!(ann.say("again"), 1);
}

#[test]
fn seq_is_per_room_and_gap_free_for_every_member() {
    let Some(server) = Engine::with(SETUP, |c| c.rate_limit = roomchat::config::RateLimit(None))
    else {
        return;
    };
    let mut senders: Vec<_> = (0..3)
        .map(|i| server.member(&format!("s{i}"), "busy"))
        .collect();
    let mut reader = server.member("reader", "busy");
    let mut other = server.member("other", "quiet");
    for round in 0..20 {
        for s in senders.iter_mut() {
            s.emit("chatMessage", json!({"text": format!("r{round}")}));
        }
    }
    assert_eq!(other.say("solo"), 1, "another room counts on its own");
    let mut expected = 1;
    while expected <= 60 {
        let frame = reader.recv();
        if frame["event"] == "chatMessage" {
            assert_eq!(frame["data"]["seq"], expected);
            expected += 1;
        }
    }
}

#[test]
fn usernames_need_not_be_unique() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let a = server.member("sam", "r");
    let joined = server.client().join("sam", "r");
    let users = joined["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    assert_ne!(users[0]["id"], users[1]["id"]);
    assert_eq!(users[0]["id"], a.id.as_str());
}

#[test]
fn api_rooms_lists_rooms_sorted_by_code_point() {
    let Some(server) = Engine::start(SETUP) else {
        return;
    };
    let _c = server.member("a", "zeta");
    let _d = server.member("b", "Zeta");
    let _e = server.member("c", "zeta");
    let _f = server.member("d", "éclair");
    let rooms = server.get("/api/rooms");
    assert_eq!(rooms.header("content-type"), Some("application/json"));
    let rooms: serde_json::Value = serde_json::from_str(&rooms.body).unwrap();
    assert_eq!(
        rooms,
        json!({"rooms": [{"name": "Zeta", "users": 1}, {"name": "zeta", "users": 2}, {"name": "éclair", "users": 1}]})
    );
}
