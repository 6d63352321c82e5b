//! Identity (v3) rules that involve rooms: the verified `user` in every
//! presence and chat event, private rooms, expiry, `/api/rooms`. Run on
//! every engine (`SETUP`, from the module that includes this file): on two
//! nodes, clients alternate nodes, so `user` is shown across nodes and an
//! expiry on one node is seen on the other.

use super::SETUP;
use crate::common::engine::Engine;
use crate::common::identity::{now, sign, token, with_secret};
use crate::common::Client;
use serde_json::json;

fn engine() -> Option<Engine> {
    Engine::with(SETUP, |c| {
        with_secret(c);
        c.auth_leeway = 0;
    })
}

/// A client of the engine's next node, authenticated with `token`.
fn verified(engine: &Engine, token: &str) -> Client {
    let mut c = engine.client();
    c.prove(token);
    c
}

#[test]
fn the_verified_user_is_in_every_presence_and_chat_event_and_in_history() {
    let Some(engine) = engine() else {
        return;
    };
    let mut ann = verified(&engine, &token("u-ann", json!({"name": "Ann"})));
    let joined = ann.join_verified("lobby");
    assert_eq!(joined["username"], "Ann");
    assert_eq!(
        joined["users"],
        json!([{"id": ann.id, "username": "Ann", "user": "u-ann"}])
    );
    let seq = ann.say("first");
    // Two people with one display name stay apart by `user`.
    let mut ann2 = verified(&engine, &token("u-other", json!({"name": "Ann"})));
    let joined = ann2.join_verified("lobby");
    assert_eq!(
        joined["users"],
        json!([
            {"id": ann.id, "username": "Ann", "user": "u-ann"},
            {"id": ann2.id, "username": "Ann", "user": "u-other"}
        ])
    );
    let history = joined["history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (&history[0]["seq"], &history[0]["user"]),
        (&json!(seq), &json!("u-ann"))
    );
    assert_eq!(
        ann.expect("userJoined"),
        json!({"room": "lobby", "id": ann2.id, "username": "Ann", "user": "u-other"})
    );
    ann2.ok("typing", json!({"typing": true}));
    let typing = ann.expect("typing");
    assert_eq!(
        (&typing["user"], &typing["typing"]),
        (&json!("u-other"), &json!(true))
    );
    ann2.say("hello");
    let chat = ann.expect("chatMessage");
    assert_eq!(
        (&chat["username"], &chat["user"], &chat["text"]),
        (&json!("Ann"), &json!("u-other"), &json!("hello"))
    );
    ann2.ok("leaveRoom", json!(null));
    assert_eq!(
        ann.expect("userLeft"),
        json!({"room": "lobby", "id": ann2.id, "username": "Ann", "user": "u-other"})
    );
}

#[test]
fn a_matching_username_is_accepted_and_another_is_forbidden() {
    let Some(engine) = engine() else {
        return;
    };
    let mut c = verified(&engine, &token("u1", json!({"name": "Bo"})));
    let joined = c.join(" Bo ", "lobby");
    assert_eq!(joined["username"], "Bo");
    let (_, reply) = c.request("joinRoom", json!({"username": "Alice", "room": "lobby"}));
    assert_eq!(
        (&reply["data"]["code"], &reply["data"]["field"]),
        (&json!("forbidden"), &json!("username"))
    );
    // Fields are validated first.
    let (_, reply) = c.request("joinRoom", json!({"username": "", "room": "$x"}));
    assert_eq!(
        (&reply["data"]["code"], &reply["data"]["field"]),
        (&json!("invalid_field"), &json!("username"))
    );
    c.assert_quiet();
}

#[test]
fn private_rooms_take_only_the_tokens_that_name_them() {
    let Some(engine) = engine() else {
        return;
    };
    let mut plain = verified(&engine, &token("u1", json!({})));
    let (_, reply) = plain.request("joinRoom", json!({"room": "$staff"}));
    assert_eq!(
        (&reply["data"]["code"], &reply["data"]["field"]),
        (&json!("forbidden"), &json!("room"))
    );
    plain.join_verified("lobby");
    let mut staff = verified(&engine, &token("u2", json!({"rooms": ["$staff"]})));
    staff.join_verified("$staff");
    let (_, reply) = staff.request("joinRoom", json!({"room": "lobby"}));
    assert_eq!(
        reply["data"]["code"], "forbidden",
        "a rooms claim is the whole list"
    );
    // A failed join leaves the client where it was.
    staff.say("still here");
}

#[test]
fn api_rooms_needs_a_token_and_lists_the_rooms_it_may_join() {
    let Some(engine) = engine() else {
        return;
    };
    let mut a = verified(&engine, &token("u1", json!({"rooms": ["$staff", "lobby"]})));
    a.join_verified("$staff");
    let mut b = verified(&engine, &token("u2", json!({})));
    b.join_verified("lobby");
    let mut c = verified(&engine, &token("u3", json!({})));
    c.join_verified("random");
    let node = engine.node();
    let missing = node.get("/api/rooms");
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let rooms = |token: &str| {
        node.http_request(&format!(
            "GET /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ))
    };
    let bad = rooms("not.a.token");
    assert_eq!(bad.status, 401);
    assert_eq!(
        bad.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    let names = |token: &str| -> Vec<String> {
        let answer = rooms(token);
        assert_eq!(answer.status, 200, "{answer:?}");
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        body["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&token("x", json!({}))), ["lobby", "random"]);
    assert_eq!(
        names(&token("x", json!({"rooms": ["$staff", "lobby"]}))),
        ["$staff", "lobby"]
    );
    // The rest stays open.
    assert_eq!(node.get("/healthz").status, 200);
    assert_eq!(node.get("/metrics").status, 200);
    assert_eq!(node.get("/config.json").status, 200);
    assert_eq!(node.get("/").status, 200);
}

#[test]
fn an_expired_token_leaves_the_room_for_everyone_and_closes_with_4001() {
    let Some(engine) = engine() else {
        return;
    };
    let mut stays = verified(&engine, &token("u-stays", json!({})));
    stays.join_verified("lobby");
    // Expires within two seconds (whole seconds, no leeway).
    let short = sign(&json!({"sub": "u-goes", "exp": now() + 2}));
    let mut goes = verified(&engine, &short);
    goes.join_verified("lobby");
    assert_eq!(stays.expect("userJoined")["user"], "u-goes");
    let error = goes.expect_error("token_expired");
    assert!(error.get("ack").is_none());
    assert_eq!(goes.expect_close(), Some(4001));
    let left = stays.expect("userLeft");
    assert_eq!(
        (&left["id"], &left["user"]),
        (&json!(goes.id), &json!("u-goes"))
    );
    stays.say("alone now");
}

#[test]
fn a_refresh_keeps_the_name_and_the_room_and_pushes_expiry_back() {
    let Some(engine) = engine() else {
        return;
    };
    let soon = sign(&json!({"sub": "u1", "name": "Cy", "exp": now() + 2}));
    let mut c = verified(&engine, &soon);
    c.join_verified("lobby");
    let later = token("u1", json!({"name": "Other name", "rooms": ["lobby"]}));
    let ack = c.prove(&later);
    assert_eq!(
        (&ack["user"], &ack["name"]),
        (&json!("u1"), &json!("Cy")),
        "the connection keeps its name"
    );
    assert!(ack["exp"].as_u64().unwrap() > now() + 3000);
    // Past the first token's expiry (time passing, not a sync point),
    // still in the room.
    std::thread::sleep(std::time::Duration::from_secs(3));
    c.say("still here");
    // The new token's rooms apply from now on.
    let (_, reply) = c.request("joinRoom", json!({"room": "elsewhere"}));
    assert_eq!(reply["data"]["code"], "forbidden");
    let (_, reply) = c.request("authenticate", json!({"token": token("u2", json!({}))}));
    assert_eq!(reply["data"]["code"], "forbidden", "another sub");
    c.say("and still the same user");
}
