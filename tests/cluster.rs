//! The cluster (`--redis`): two or more nodes sharing rooms through a real
//! redis-server that each test starts for itself (see `common::redis`).
//! Every rule of the protocol must hold across nodes, and Redis failing
//! must never leave a client with a silent gap. Skipped, with a message,
//! where redis-server is not installed.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::redis::{eventually, next_chat, NodeProcess, TestRedis};
use common::{Client, RawSocket, TestServer};
use serde_json::{json, Value};

fn rooms(node: &TestServer) -> (u16, String) {
    let r = node.get("/api/rooms");
    (r.status, r.body)
}

#[test]
fn one_room_across_nodes_chat_typing_presence_history_and_api_rooms() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (a, b) = (redis.node(), redis.node());
    let mut ann = a.client();
    let mut bob = b.client();
    assert_ne!(ann.id, bob.id);
    assert_ne!(
        ann.id.split('-').next(),
        bob.id.split('-').next(),
        "node tags differ"
    );

    let joined = ann.join("ann", "lobby");
    assert_eq!(joined["users"], json!([{"id": ann.id, "username": "ann"}]));
    let joined = bob.join("bob", "lobby");
    assert_eq!(
        joined["users"],
        json!([{"id": ann.id, "username": "ann"}, {"id": bob.id, "username": "bob"}]),
        "join order, joiner included"
    );
    assert_eq!(joined["id"], bob.id.as_str());
    assert_eq!(
        ann.expect("userJoined"),
        json!({"room": "lobby", "id": bob.id, "username": "bob"})
    );

    assert_eq!(bob.say("hi from b"), 1);
    let chat = ann.expect("chatMessage");
    assert_eq!(
        (chat["seq"].as_u64(), chat["id"].as_str()),
        (Some(1), Some(bob.id.as_str()))
    );
    assert_eq!(chat["text"], "hi from b");
    assert_eq!(ann.say("hi from a"), 2);
    assert_eq!(bob.expect("chatMessage")["seq"], 2);

    // typing reaches the others, not the sender
    assert_eq!(
        ann.ok("typing", json!({"typing": true})),
        json!({"ok": true})
    );
    assert_eq!(
        bob.expect("typing"),
        json!({"room": "lobby", "id": ann.id, "username": "ann", "typing": true})
    );
    ann.assert_quiet();

    // history spans both nodes' messages, in order
    let mut cy = a.client();
    let joined = cy.join("cy", "lobby");
    let texts: Vec<&str> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hi from b", "hi from a"]);
    assert_eq!(ann.expect("userJoined")["id"], cy.id.as_str());
    assert_eq!(bob.expect("userJoined")["id"], cy.id.as_str());

    // /api/rooms: the cluster's, the same on both nodes
    let expected = json!({"rooms": [{"name": "lobby", "users": 3}]}).to_string();
    assert_eq!(rooms(&a), (200, expected.clone()));
    assert_eq!(rooms(&b), (200, expected));
    // the gauges are the node's own
    assert_eq!(
        (a.metric("roomchat_connections"), a.metric("roomchat_rooms")),
        (2, 1)
    );
    assert_eq!(b.metric("roomchat_redis_up"), 1);

    // a rename in place: left (old name) then joined (new name), for the others
    let (frames, _) = cy.request("joinRoom", json!({"username": "cyd", "room": "lobby"}));
    assert_eq!(frames.len(), 1, "only joined: {frames:?}");
    for other in [&mut ann, &mut bob] {
        assert_eq!(other.expect("userLeft")["username"], "cy");
        assert_eq!(other.expect("userJoined")["username"], "cyd");
    }

    // leaveRoom: left + ack for the leaver, userLeft for everyone else
    let (frames, reply) = bob.request("leaveRoom", json!(null));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["data"], json!({"room": "lobby"}));
    assert_eq!(reply["data"], json!({"ok": true}));
    for other in [&mut ann, &mut cy] {
        assert_eq!(other.expect("userLeft")["id"], bob.id.as_str());
    }
    bob.send(json!({"event": "typing", "data": {"typing": false}}));
    bob.expect_error("not_in_room");
}

#[test]
fn acks_come_after_everything_the_request_caused_even_across_nodes() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (a, b) = (redis.node(), redis.node());
    let mut ann = a.member("ann", "r");
    let mut bob = b.member("bob", "r");
    ann.expect("userJoined");
    // a chat then, at once, a bad one: echo, ack, then the error
    ann.send(json!({"event": "chatMessage", "data": {"text": "one"}, "ack": 100}));
    ann.send(json!({"event": "chatMessage", "data": {"text": 5}, "ack": 101}));
    assert_eq!(ann.expect("chatMessage")["text"], "one");
    let ack = ann.recv();
    assert_eq!(
        (ack["event"].as_str(), ack["ack"].as_u64()),
        (Some("ack"), Some(100))
    );
    assert_eq!(ack["data"], json!({"ok": true, "seq": 1}));
    assert_eq!(ann.expect_error("invalid_field")["ack"], 101);
    assert_eq!(bob.expect("chatMessage")["text"], "one");
    // a switch: userLeft in the old room, joined then ack in the new one
    let (frames, reply) = bob.request("joinRoom", json!({"username": "bob", "room": "s"}));
    assert_eq!(
        frames
            .iter()
            .map(|f| f["event"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["joined"]
    );
    assert_eq!(reply["data"], json!({"ok": true, "room": "s"}));
    assert_eq!(ann.expect("userLeft")["id"], bob.id.as_str());
    // a rejoin under the same name: joined and ack, nothing for the others
    let (frames, reply) = ann.request("joinRoom", json!({"username": "ann", "room": "r"}));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["data"]["users"][0]["username"], "ann");
    assert_eq!(reply["data"], json!({"ok": true, "room": "r"}));
    ann.assert_quiet();
    bob.assert_quiet();
}

#[test]
fn a_slow_consumer_on_one_node_leaves_the_room_for_every_node() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (a, b) = (redis.node(), redis.node());
    let mut sleeper = RawSocket::upgrade(a.ws, "/ws");
    sleeper.join("sleeper", "flood"); // and never reads again
    let mut talker = b.client();
    if talker.join("talker", "flood")["users"]
        .as_array()
        .unwrap()
        .len()
        < 2
    {
        assert_eq!(talker.expect("userJoined")["username"], "sleeper");
    }
    let text = "z".repeat(2000);
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(20), "never cut off");
        let (frames, _) = talker.request("chatMessage", json!({ "text": text }));
        if frames.iter().any(|f| f["event"] == "userLeft") {
            break;
        }
    }
    assert!(a.metric("roomchat_slow_consumer_disconnects_total") >= 1);
    eventually(Duration::from_secs(5), "one member left", || {
        serde_json::from_str::<Value>(&rooms(&b).1).unwrap()
            == json!({"rooms": [{"name": "flood", "users": 1}]})
    });
}

#[test]
fn one_order_and_gap_free_seq_with_concurrent_senders_on_every_node() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let nodes = [redis.node(), redis.node()];
    const SENDERS_PER_NODE: usize = 3;
    const EACH: usize = 150;
    const TOTAL: usize = 2 * SENDERS_PER_NODE * EACH;
    // a quiet member per node, and the senders
    let mut watchers: Vec<Client> = nodes.iter().map(|n| n.member("watch", "busy")).collect();
    let senders: Vec<Client> = (0..SENDERS_PER_NODE * 2)
        .map(|i| nodes[i % 2].member(&format!("s{i}"), "busy"))
        .collect();
    let mut handles = Vec::new();
    for (i, mut s) in senders.into_iter().enumerate() {
        handles.push(thread::spawn(move || {
            let mut seen = Vec::new();
            for n in 0..EACH {
                let (frames, reply) = s.request("chatMessage", json!({"text": format!("{i}:{n}")}));
                assert_eq!(reply["event"], "ack", "{reply}");
                seen.extend(
                    frames
                        .into_iter()
                        .filter(|f| f["event"] == "chatMessage")
                        .map(|f| f["data"].clone()),
                );
            }
            while seen.len() < TOTAL {
                seen.push(next_chat(&mut s));
            }
            seen
        }));
    }
    let mut runs: Vec<Vec<Value>> = watchers
        .iter_mut()
        .map(|w| (0..TOTAL).map(|_| next_chat(w)).collect())
        .collect();
    runs.extend(handles.into_iter().map(|h| h.join().unwrap()));
    let key = |m: &Value| {
        (
            m["seq"].as_u64().unwrap(),
            m["id"].to_string(),
            m["text"].to_string(),
        )
    };
    let first: Vec<_> = runs[0].iter().map(key).collect();
    let seqs: Vec<u64> = first.iter().map(|k| k.0).collect();
    assert_eq!(
        seqs,
        (1..=TOTAL as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    for run in &runs[1..] {
        assert_eq!(
            run.iter().map(key).collect::<Vec<_>>(),
            first,
            "one order for every member"
        );
    }
}

#[test]
fn a_join_while_another_node_sends_gets_history_and_live_contiguous_50_times() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (a, b) = (redis.node(), redis.node());
    let mut sender = b.member("sender", "race");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let sending = thread::spawn(move || {
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            n += 1;
            sender.say(&format!("m{n}"));
        }
        n
    });
    let mut joiner = a.client();
    for round in 0..50 {
        let joined = joiner.join("j", "race");
        let last = joined["history"]
            .as_array()
            .unwrap()
            .last()
            .map_or(0, |m| m["seq"].as_u64().unwrap());
        let live = next_chat(&mut joiner)["seq"].as_u64().unwrap();
        assert_eq!(
            live,
            last + 1,
            "round {round}: history ends at {last}, live starts at {live}"
        );
        joiner.ok("leaveRoom", json!(null));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(sending.join().unwrap() > 50);
}

#[test]
fn ids_are_unique_across_nodes_and_across_a_redis_that_came_back_empty() {
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    let (a, b) = (redis.node(), redis.node());
    let mut old: Vec<Client> = (0..200)
        .map(|i| if i % 2 == 0 { a.client() } else { b.client() })
        .collect();
    let mut ids: HashSet<String> = old.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), 200);
    redis.restart();
    for node in [&a, &b] {
        eventually(Duration::from_secs(5), "node back", || {
            node.get("/healthz").status == 200
        });
    }
    for i in 0..200 {
        let c = if i % 2 == 0 { a.client() } else { b.client() };
        assert!(ids.insert(c.id.clone()), "id {} handed out twice", c.id);
    }
    // the clients from before are still connected, with their ids
    old[0].assert_quiet();
    assert_eq!(old[1].join("x", "after")["id"], old[1].id.as_str());
}

#[test]
fn a_room_empty_everywhere_is_dropped_with_its_keys_and_starts_again_at_1() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (a, b) = (redis.node(), redis.node());
    let mut ann = a.member("ann", "tmp");
    let mut bob = b.member("bob", "tmp");
    ann.say("1");
    bob.say("2");
    ann.ok("leaveRoom", json!(null));
    drop(bob); // a disconnect leaves too
    let empty = json!({"rooms": []}).to_string();
    for node in [&a, &b] {
        eventually(Duration::from_secs(5), "room dropped", || {
            rooms(node) == (200, empty.clone())
        });
    }
    eventually(Duration::from_secs(5), "keys gone", || {
        redis.keys().iter().all(|k| k.starts_with("roomchat:x:"))
    });
    assert_eq!(a.metric("roomchat_rooms") + b.metric("roomchat_rooms"), 0);
    let mut cy = b.member("cy", "tmp");
    assert!(cy.join("cy", "tmp")["history"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(cy.say("again"), 1);
}

#[test]
fn a_killed_nodes_members_leave_for_everyone_else() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let a = redis.node();
    let mut doomed = NodeProcess::start(&redis.url, &[]);
    let mut ann = a.member("ann", "r");
    let mut victim = Client::connect(&doomed.ws_url());
    victim.join("victim", "r");
    victim.say("last words");
    assert_eq!(ann.expect("userJoined")["id"], victim.id.as_str());
    assert_eq!(next_chat(&mut ann)["text"], "last words");
    let tag = victim.id.split('-').next().unwrap().to_owned();
    assert!(redis.keys().contains(&format!("roomchat:node:{tag}")));

    doomed.kill(); // SIGKILL: no goodbye
    let started = Instant::now();
    let left = ann.expect("userLeft");
    assert_eq!(left["id"], victim.id.as_str());
    // 8 missed heartbeats of 100 ms here; 8 s with the default 1 s, + 1 s to reap
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(5), "the dead node's keys gone", || {
        let keys = redis.keys();
        !keys.contains(&format!("roomchat:node:{tag}"))
    });
    assert_eq!(
        rooms(&a).1,
        json!({"rooms": [{"name": "r", "users": 1}]}).to_string()
    );
}

/// The contract's numbers with the default periods (1 s heartbeat, 8 s
/// TTL): a dead node's members leave within 15 s, a lost Redis is noticed
/// within 5 s and a returned one serves again within 5 s. (The other tests
/// run 10 times faster.)
#[test]
fn with_default_periods_a_dead_node_leaves_within_15_s_and_redis_is_back_within_5_s() {
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    let a = redis.node_with(|c| c.redis_tick = Duration::from_secs(1));
    let mut doomed = NodeProcess::start(&redis.url, &["--redis-tick-ms", "1000"]);
    let mut ann = a.member("ann", "r");
    let mut victim = Client::connect(&doomed.ws_url());
    victim.join("victim", "r");
    assert_eq!(ann.expect("userJoined")["id"], victim.id.as_str());
    doomed.kill();
    let killed = Instant::now();
    ann.ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(16)))
        .unwrap();
    assert_eq!(ann.expect("userLeft")["id"], victim.id.as_str());
    let took = killed.elapsed();
    eprintln!("a dead node's member left after {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");

    // Redis gone while nobody asks anything: the heartbeat notices.
    redis.kill();
    let took = eventually(Duration::from_secs(5), "noticed", || {
        a.get("/healthz").status == 503
    });
    eprintln!("a lost Redis noticed after {took:?}");
    assert_eq!(a.metric("roomchat_redis_up"), 0);
    redis.restart();
    let took = eventually(Duration::from_secs(5), "back", || {
        a.get("/healthz").status == 200
    });
    eprintln!("serving again {took:?} after Redis came back");
    assert_eq!(
        ann.expect_close(),
        Some(1012),
        "its room was lost with Redis's data"
    );
}

#[test]
fn a_node_shut_down_takes_its_members_out_at_once() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let a = redis.node();
    let b = redis.node();
    let mut ann = a.member("ann", "r");
    let _bob = b.member("bob", "r");
    ann.expect("userJoined");
    let started = Instant::now();
    drop(b); // Server::shutdown: one reap of its own members
    assert_eq!(ann.expect("userLeft")["username"], "bob");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn redis_lost_then_back_empty_unavailable_503_then_1012_and_service_again() {
    let _ = env_logger::builder()
        .is_test(true)
        .filter_level(log::LevelFilter::Info)
        .try_init();
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    let (a, b) = (redis.node(), redis.node());
    let mut ann = a.member("ann", "r");
    let mut bob = b.member("bob", "r");
    ann.expect("userJoined");
    let mut carl = a.client(); // connected, in no room
    let carl_id = carl.id.clone();

    redis.kill();
    // noticed within 5 s (here at once, or by the next heartbeat)
    let (_, reply) = ann.request("chatMessage", json!({"text": "into the void"}));
    assert_eq!(reply["data"]["code"], "unavailable", "{reply}");
    assert!(reply["ack"].is_u64());
    for node in [&a, &b] {
        eventually(Duration::from_secs(5), "healthz 503", || {
            node.get("/healthz").status == 503
        });
        assert_eq!(node.get("/healthz").body, "unavailable");
        assert_eq!(rooms(node).0, 503);
        assert_eq!(node.metric("roomchat_redis_up"), 0);
    }
    for (on_b, event, data) in [
        (false, "joinRoom", json!({"username": "carl", "room": "r"})),
        (true, "typing", json!({"typing": true})),
        (true, "leaveRoom", json!(null)),
    ] {
        let client = if on_b { &mut bob } else { &mut carl };
        let started = Instant::now();
        let (frames, reply) = client.request(event, data);
        assert!(frames.is_empty(), "nothing delivered: {frames:?}");
        assert_eq!(reply["data"]["code"], "unavailable", "{event}: {reply}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "answered at once"
        );
    }
    // validation still answers first, and needs no Redis
    carl.send(json!({"event": "chatMessage", "data": {"text": "x"}, "ack": 9}));
    carl.expect_error("not_in_room");
    // on a: ann's chat and carl's join unavailable, carl's not_in_room
    assert_eq!(a.metric("roomchat_errors_total"), 3);

    redis.restart(); // back, empty
    for node in [&a, &b] {
        let took = eventually(Duration::from_secs(5), "healthz 200", || {
            node.get("/healthz").status == 200
        });
        assert!(took < Duration::from_secs(5));
        assert_eq!(node.metric("roomchat_redis_up"), 1);
    }
    // the room's state was lost: its members are told to rejoin
    assert_eq!(ann.expect_close(), Some(1012));
    assert_eq!(bob.expect_close(), Some(1012));
    // the others go on, with their ids; the room starts again
    let joined = carl.join("carl", "r");
    assert_eq!(joined["id"], carl_id.as_str());
    assert_eq!(joined["users"].as_array().unwrap().len(), 1);
    let mut dave = b.member("dave", "r");
    assert_ne!(dave.id, carl_id);
    assert_eq!(carl.say("fresh"), 1);
    assert_eq!(next_chat(&mut dave)["text"], "fresh");
}

#[test]
fn a_stopped_redis_bounds_every_wait_and_members_stay_gap_free_or_get_1012() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    // Node a is a process, so that its threads can be counted.
    let a = NodeProcess::start(&redis.url, &[]);
    let b = redis.node();
    let get = |path: &str| {
        let http: std::net::SocketAddr = ([127, 0, 0, 1], a.http).into();
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        common::raw_http(http, head.as_bytes()).status
    };
    let mut ann = Client::connect(&a.ws_url());
    ann.join("ann", "r");
    let mut bob = b.member("bob", "r");
    ann.expect("userJoined");
    assert_eq!(ann.say("before"), 1);
    assert_eq!(next_chat(&mut bob)["seq"], 1);
    let threads_before = a.threads_when_settled();

    redis.signal("-STOP");
    let stopped = Instant::now();
    let mut unavailable = 0;
    while stopped.elapsed() < Duration::from_millis(2500) {
        let sent = Instant::now();
        let (_, reply) = ann.request("chatMessage", json!({"text": "during"}));
        let took = sent.elapsed();
        // one socket timeout (1 s) at most, for the request that finds out
        assert!(
            took < Duration::from_millis(1500),
            "a request waited {took:?}"
        );
        if reply["event"] == "error" {
            assert_eq!(reply["data"]["code"], "unavailable");
            unavailable += 1;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(unavailable > 0);
    let started = Instant::now();
    assert_eq!((get("/healthz"), get("/api/rooms")), (503, 503));
    assert_eq!(b.get("/healthz").status, 503);
    assert_eq!(rooms(&b).0, 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "answered without waiting for Redis"
    );
    redis.signal("-CONT");
    let back = eventually(Duration::from_secs(5), "serving again", || {
        let (_, reply) = ann.request("chatMessage", json!({"text": "after"}));
        reply["event"] == "ack"
    });
    assert!(back < Duration::from_secs(5));
    // bob: every seq after 1, gap-free, up to ann's last
    let last = ann.say("last");
    let mut expected = 2;
    loop {
        let frame = bob.recv();
        if frame["event"] != "chatMessage" {
            continue;
        }
        let seq = frame["data"]["seq"].as_u64().unwrap();
        assert_eq!(seq, expected, "gap in bob's run");
        if seq == last {
            break;
        }
        expected += 1;
    }
    // no thread of node a is left stuck on the stopped Redis
    assert_eq!(a.threads_when_settled(), threads_before);
}

#[test]
fn sigterm_takes_a_nodes_members_out_and_exits_0_within_2_s() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let a = redis.node();
    let mut b = NodeProcess::start(&redis.url, &[]);
    let mut ann = a.member("ann", "r");
    let mut bob = Client::connect(&b.ws_url());
    bob.join("bob", "r");
    ann.expect("userJoined");
    let started = Instant::now();
    b.signal("-TERM");
    assert_eq!(ann.expect("userLeft")["username"], "bob");
    assert_eq!(bob.expect_close(), Some(1001));
    let status = b.wait_exit(Duration::from_secs(3));
    assert_eq!(status, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_disconnect_while_redis_is_stopped_still_reaches_the_room_afterwards() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (a, b) = (redis.node(), redis.node());
    let mut ann = a.member("ann", "r");
    let bob = b.member("bob", "r");
    ann.expect("userJoined");
    redis.signal("-STOP");
    drop(bob); // its leave cannot run now: the janitor keeps it
    eventually(Duration::from_secs(5), "b noticed", || {
        b.get("/healthz").status == 503
    });
    redis.signal("-CONT");
    ann.ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(ann.expect("userLeft")["username"], "bob");
    assert_eq!(
        rooms(&a).1,
        json!({"rooms": [{"name": "r", "users": 1}]}).to_string()
    );
}

/// Sends a request and reads up to its reply; None if the server closed
/// the connection instead (a 1012 is a legitimate answer here).
fn try_request(c: &mut Client, event: &str, data: Value) -> Option<Value> {
    c.send(json!({"event": event, "data": data, "ack": 1}));
    loop {
        match c.ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["ack"] == 1 {
                    return Some(frame);
                }
            }
            Ok(tungstenite::Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1012));
                return None;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Traffic from node b into a room watched on another node (`watched`: its
/// WebSocket URL and its repairs counter) while `disturb` runs. Every
/// member's run of `seq` must be gap-free up to the last message sent, or
/// end in a 1012. Returns the watched node's repairs and the watchers closed.
fn watch_under(
    redis: &TestRedis,
    watched: (&str, &dyn Fn() -> u64),
    disturb: impl FnOnce() + Send,
) -> (u64, usize) {
    let b = redis.node();
    // The last seq sent, once the senders have stopped (0 before).
    let last = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watchers: Vec<_> = (0..3)
        .map(|i| {
            let mut w = Client::connect(watched.0);
            w.join(&format!("w{i}"), "big");
            w.ws.get_mut()
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let last = Arc::clone(&last);
            // Each reads all along, as a client does: a watcher that did
            // not would be cut off as a slow consumer.
            thread::spawn(move || {
                let mut seen = 0;
                let give_up = Instant::now() + Duration::from_secs(20);
                loop {
                    assert!(Instant::now() < give_up, "watcher stuck at seq {seen}");
                    match w.ws.read() {
                        Ok(tungstenite::Message::Text(text)) => {
                            let frame: Value = serde_json::from_str(&text).unwrap();
                            if frame["event"] != "chatMessage" {
                                continue;
                            }
                            let seq = frame["data"]["seq"].as_u64().unwrap();
                            assert!(
                                seen == 0 || seq == seen + 1,
                                "a silent gap: {seen} then {seq}"
                            );
                            seen = seq;
                        }
                        Ok(tungstenite::Message::Close(frame)) => {
                            assert_eq!(frame.map(|f| u16::from(f.code)), Some(1012));
                            return true;
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("watcher: {e}"),
                    }
                    let target = last.load(Ordering::SeqCst);
                    if target != 0 && seen >= target {
                        return false;
                    }
                }
            })
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..3 {
        let mut s = b.member(&format!("s{i}"), "big");
        let stop = Arc::clone(&stop);
        senders.push(thread::spawn(move || {
            let text = "x".repeat(1500);
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                match try_request(&mut s, "chatMessage", json!({ "text": text })) {
                    Some(reply) => last = last.max(reply["data"]["seq"].as_u64().unwrap_or(0)),
                    None => break, // this sender's room was lost here: 1012
                }
            }
            last
        }));
    }
    disturb();
    stop.store(true, Ordering::Relaxed);
    let sent = senders
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap();
    last.store(sent.max(1), Ordering::SeqCst);
    let repairs = watched.1();
    let closed = watchers
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|c| *c)
        .count();
    (repairs, closed)
}

#[test]
fn a_killed_subscriber_connection_is_repaired_or_closes_1012_never_a_silent_gap() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let a = redis.node();
    let url = format!("ws://{}/ws", a.ws);
    let repairs = || a.metric("roomchat_cluster_repairs_total");
    let (repairs, closed) = watch_under(&redis, (&url, &repairs), || {
        thread::sleep(Duration::from_millis(200));
        for _ in 0..10 {
            redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            thread::sleep(Duration::from_millis(100));
        }
    });
    eprintln!("repairs {repairs}, watchers closed {closed}");
    assert!(repairs > 0 || closed > 0, "the kills went unnoticed");
}

#[test]
fn a_subscriber_over_its_output_buffer_is_repaired_or_closes_1012() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    redis.cmd(&[
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 16kb 8kb 1",
    ]);
    // The watched node is a process, so that it can be paused: Redis then
    // cuts its subscriber as the room's traffic piles up past 16 KB.
    let node = NodeProcess::start(&redis.url, &[]);
    let url = node.ws_url();
    let http: std::net::SocketAddr = ([127, 0, 0, 1], node.http).into();
    let repairs = || {
        let body = common::raw_http(
            http,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .body;
        let line = body
            .lines()
            .find(|l| l.starts_with("roomchat_cluster_repairs_total "))
            .unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (repairs, closed) = watch_under(&redis, (&url, &repairs), || {
        for _ in 0..3 {
            thread::sleep(Duration::from_millis(150));
            node.signal("-STOP");
            thread::sleep(Duration::from_millis(300));
            node.signal("-CONT");
        }
    });
    eprintln!("repairs {repairs}, watchers closed {closed}");
    assert!(
        repairs > 0 || closed > 0,
        "the subscriber was never cut off"
    );
}

/// The next Engine.IO text packet, server pings skipped.
fn sio_recv(sio: &mut RawSocket) -> String {
    loop {
        let (first, payload) = sio.read_frame().expect("a packet");
        if first & 0x0f == 0x1 {
            let text = String::from_utf8(payload).unwrap();
            if text != "2" {
                return text;
            }
        }
    }
}

fn sio_send(sio: &mut RawSocket, packet: &str) {
    sio.send(&RawSocket::frame(0x81, packet.as_bytes(), true));
}

#[test]
fn socketio_and_native_clients_on_two_nodes_share_one_room() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (a, b) = (redis.node(), redis.node());
    let mut sio = RawSocket::upgrade(a.ws, "/socket.io/?EIO=4&transport=websocket");
    assert!(sio_recv(&mut sio).starts_with('0'));
    sio_send(&mut sio, "40");
    assert!(sio_recv(&mut sio).starts_with("40"));
    let connected = sio_recv(&mut sio);
    assert!(connected.starts_with("42[\"connected\""), "{connected}");
    let mut nat = b.member("nat", "mixed");
    sio_send(
        &mut sio,
        r#"421["joinRoom",{"username":"sio","room":"mixed"}]"#,
    );
    assert!(sio_recv(&mut sio).starts_with("42[\"joined\""));
    assert_eq!(sio_recv(&mut sio), r#"431[{"ok":true,"room":"mixed"}]"#);
    assert_eq!(nat.expect("userJoined")["username"], "sio");
    sio_send(&mut sio, r#"422["chatMessage","from socket.io"]"#);
    let echo = sio_recv(&mut sio);
    assert!(
        echo.starts_with("42[\"chatMessage\"") && echo.contains("\"seq\":1"),
        "{echo}"
    );
    assert_eq!(
        sio_recv(&mut sio),
        r#"432[{"ok":true,"seq":1}]"#,
        "the ack after the echo"
    );
    assert_eq!(nat.expect("chatMessage")["text"], "from socket.io");
    assert_eq!(nat.say("from native"), 2);
    let chat = sio_recv(&mut sio);
    assert!(
        chat.contains("\"seq\":2") && chat.contains("from native"),
        "{chat}"
    );
}

#[test]
fn startup_without_a_reachable_redis_exits_1_naming_the_url() {
    if !std::path::Path::new(common::redis::REDIS_SERVER).exists() {
        eprintln!("SKIPPED: redis-server not found");
    }
    let dir = std::env::temp_dir().join(format!("roomchat-noredis-{}", std::process::id()));
    let url = format!("unix://{}/nothing.sock", dir.display());
    let started = Instant::now();
    let output = NodeProcess::spawn(&url, &[], Stdio::piped())
        .wait_with_output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "no banner");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&url), "{stderr}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // a URL that is not one is refused at once
    let output = NodeProcess::spawn("http://nope", &[], Stdio::piped())
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("http://nope"));
}
