//! Resuming a room after a reconnect (protocol v3): `joined.epoch`,
//! `joinRoom`'s `since` and `epoch`, and `joined.resumed`. Run on every
//! engine (`SETUP`, from the module that includes this file); on a cluster
//! of two nodes the client comes back on the other node.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use roomchat::config::RateLimit;
use serde_json::{json, Value};

use super::SETUP;
use crate::common::engine::{Backend, Engine};
use crate::common::{self, Client, TestServer};

/// An engine whose rooms keep `history` messages.
fn engine(history: usize) -> Option<Engine> {
    Engine::with(SETUP, |c| c.history = history)
}

/// The node after `node`: on a cluster of two, the other one.
fn other(engine: &Engine, node: &TestServer) -> usize {
    let i = engine.nodes.iter().position(|n| n.ws == node.ws).unwrap();
    (i + 1) % engine.nodes.len()
}

/// Joins with `since` and `epoch`; returns the `joined` data.
fn resume(c: &mut Client, room: &str, since: u64, epoch: &str) -> Value {
    let data = json!({"username": "bob", "room": room, "since": since, "epoch": epoch});
    let (frames, reply) = c.request("joinRoom", data);
    assert_eq!(reply["event"], "ack", "join failed: {reply}");
    assert_eq!(frames.len(), 1, "only joined before the ack: {frames:?}");
    assert_eq!(frames[0]["event"], "joined");
    frames[0]["data"].clone()
}

/// The `seq`s of a `joined`'s history.
fn seqs(joined: &Value) -> Vec<u64> {
    let history = joined["history"].as_array().unwrap();
    history.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

fn epoch(joined: &Value) -> String {
    let epoch = joined["epoch"].as_str().expect("joined carries an epoch");
    assert!((1..=32).contains(&epoch.chars().count()), "{epoch:?}");
    epoch.to_owned()
}

/// `n` messages from `c`; returns the last `seq`.
fn say(c: &mut Client, n: usize) -> u64 {
    (0..n).map(|i| c.say(&format!("m{i}"))).last().unwrap_or(0)
}

/// A room where ann said `said` messages, and the epoch bob saw it in,
/// with bob gone; ann stays, on the first node.
fn room_bob_left(engine: &Engine, said: usize) -> (Client, String) {
    let mut ann = engine.nodes[0].member("ann", "r");
    let mut bob = engine.nodes[0].client();
    let epoch = epoch(&bob.join("bob", "r"));
    ann.expect("userJoined");
    say(&mut ann, said);
    drop(bob);
    ann.expect("userLeft");
    (ann, epoch)
}

#[test]
fn the_epoch_stays_while_the_room_lives_and_changes_when_it_is_created_again() {
    let Some(server) = engine(50) else {
        return;
    };
    let mut ann = server.client();
    let first = ann.join("ann", "r");
    let e1 = epoch(&first);
    assert!(first.get("resumed").is_none(), "no since, no resumed");
    let mut bob = server.client();
    assert_eq!(epoch(&bob.join("bob", "r")), e1);
    assert_eq!(ann.say("one"), 1);
    ann.ok("leaveRoom", json!({}));
    bob.ok("leaveRoom", json!({}));
    let again = ann.join("ann", "r");
    assert_ne!(epoch(&again), e1, "a room dropped and created again");
    assert_eq!(ann.say("one again"), 1, "and its seq starts at 1");
    assert_ne!(epoch(&bob.join("bob", "elsewhere")), epoch(&again));
}

#[test]
fn a_resume_on_the_other_node_gets_exactly_the_missed_messages_then_the_live_ones() {
    let Some(server) = engine(50) else {
        return;
    };
    let mut ann = server.nodes[0].member("ann", "r");
    let mut bob = server.nodes[0].client();
    let epoch = epoch(&bob.join("bob", "r"));
    ann.expect("userJoined");
    assert_eq!(ann.say("seen"), 1);
    assert_eq!(bob.expect("chatMessage")["seq"], 1);
    drop(bob);
    ann.expect("userLeft");
    for i in 0..3 {
        ann.say(&format!("missed {i}"));
    }
    let mut back = server.nodes[other(&server, &server.nodes[0])].client();
    let joined = resume(&mut back, "r", 1, &epoch);
    assert_eq!(joined["resumed"], true);
    assert_eq!(seqs(&joined), [2, 3, 4], "every message after since, once");
    assert_eq!(joined["history"][0]["text"], "missed 0");
    assert_eq!(joined["epoch"], epoch.as_str());
    assert_eq!(joined["users"].as_array().unwrap().len(), 2);
    ann.expect("userJoined");
    assert_eq!(ann.say("live"), 5);
    assert_eq!(back.expect("chatMessage")["seq"], 5);
    back.assert_quiet();
}

#[test]
fn a_client_that_missed_nothing_resumes_with_no_history() {
    let Some(server) = engine(50) else {
        return;
    };
    let (_ann, epoch) = room_bob_left(&server, 4);
    let mut back = server.nodes[other(&server, &server.nodes[0])].client();
    let joined = resume(&mut back, "r", 4, &epoch);
    assert_eq!((seqs(&joined), &joined["resumed"]), (vec![], &json!(true)));
}

#[test]
fn a_resume_in_the_room_one_is_already_in_answers_the_same() {
    let Some(server) = engine(50) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    let mut bob = server.client();
    let epoch = epoch(&bob.join("bob", "r"));
    ann.expect("userJoined");
    say(&mut ann, 3);
    for _ in 0..3 {
        bob.expect("chatMessage");
    }
    let joined = resume(&mut bob, "r", 1, &epoch);
    assert_eq!(
        (seqs(&joined), &joined["resumed"]),
        (vec![2, 3], &json!(true))
    );
    ann.assert_quiet();
}

#[test]
fn the_edges_of_a_full_history() {
    let Some(server) = engine(3) else {
        return;
    };
    let (_ann, epoch) = room_bob_left(&server, 7);
    let node = other(&server, &server.nodes[0]);
    let mut back = server.nodes[node].client();
    // History holds 5, 6, 7: since 4 is exactly at the edge.
    let edge = resume(&mut back, "r", 4, &epoch);
    assert_eq!(
        (seqs(&edge), &edge["resumed"]),
        (vec![5, 6, 7], &json!(true))
    );
    // Seq 4 is gone: not a resume, the usual history.
    let gap = resume(&mut back, "r", 3, &epoch);
    assert_eq!(
        (seqs(&gap), &gap["resumed"]),
        (vec![5, 6, 7], &json!(false))
    );
    let far = resume(&mut back, "r", 0, &epoch);
    assert_eq!(
        (seqs(&far), &far["resumed"]),
        (vec![5, 6, 7], &json!(false))
    );
    let near = resume(&mut back, "r", 6, &epoch);
    assert_eq!((seqs(&near), &near["resumed"]), (vec![7], &json!(true)));
}

#[test]
fn a_history_not_yet_full_resumes_from_zero() {
    let Some(server) = engine(3) else {
        return;
    };
    let (_ann, epoch) = room_bob_left(&server, 2);
    let mut back = server.nodes[other(&server, &server.nodes[0])].client();
    let joined = resume(&mut back, "r", 0, &epoch);
    assert_eq!(
        (seqs(&joined), &joined["resumed"]),
        (vec![1, 2], &json!(true))
    );
}

#[test]
fn with_no_history_only_a_client_that_missed_nothing_resumes() {
    let Some(server) = engine(0) else {
        return;
    };
    let (_ann, epoch) = room_bob_left(&server, 2);
    let mut back = server.nodes[other(&server, &server.nodes[0])].client();
    let all = resume(&mut back, "r", 2, &epoch);
    assert_eq!((seqs(&all), &all["resumed"]), (vec![], &json!(true)));
    let gap = resume(&mut back, "r", 1, &epoch);
    assert_eq!((seqs(&gap), &gap["resumed"]), (vec![], &json!(false)));
}

#[test]
fn a_since_beyond_the_last_seq_or_another_epoch_is_not_a_resume() {
    let Some(server) = engine(50) else {
        return;
    };
    let (_ann, epoch) = room_bob_left(&server, 3);
    let mut back = server.nodes[other(&server, &server.nodes[0])].client();
    let beyond = resume(&mut back, "r", 4, &epoch);
    assert_eq!(
        (seqs(&beyond), &beyond["resumed"]),
        (vec![1, 2, 3], &json!(false))
    );
    let wrong = resume(&mut back, "r", 1, "not-this-rooms");
    assert_eq!(
        (seqs(&wrong), &wrong["resumed"]),
        (vec![1, 2, 3], &json!(false))
    );
    let empty = resume(&mut back, "r", 3, "");
    assert_eq!(empty["resumed"], false);
}

#[test]
fn a_room_dropped_and_created_again_is_not_resumed() {
    let Some(server) = engine(50) else {
        return;
    };
    let mut ann = server.nodes[0].client();
    let old = epoch(&ann.join("ann", "r"));
    say(&mut ann, 2);
    ann.ok("leaveRoom", json!({}));
    let mut cy = server.nodes[other(&server, &server.nodes[0])].member("cy", "r");
    assert_eq!(cy.say("new room"), 1);
    let joined = resume(&mut ann, "r", 2, &old);
    assert_ne!(joined["epoch"], old.as_str());
    assert_eq!(
        (seqs(&joined), &joined["resumed"]),
        (vec![1], &json!(false))
    );
    // Even a since the new room has reached is not a resume in another epoch.
    let joined = resume(&mut ann, "r", 1, &old);
    assert_eq!(joined["resumed"], false);
}

#[test]
fn bad_since_or_epoch_is_invalid_field_and_changes_nothing() {
    let Some(server) = engine(50) else {
        return;
    };
    let mut ann = server.member("ann", "r");
    let mut bob = server.member("bob", "r");
    ann.expect("userJoined");
    let cases = [
        (json!({"since": 3}), "epoch"),
        (json!({"epoch": "e"}), "since"),
        (json!({"since": "3", "epoch": "e"}), "since"),
        (json!({"since": -1, "epoch": "e"}), "since"),
        (json!({"since": 1.5, "epoch": "e"}), "since"),
        (json!({"since": null, "epoch": "e"}), "since"),
        (json!({"since": 3, "epoch": 7}), "epoch"),
        (json!({"since": 3, "epoch": ["e"]}), "epoch"),
        (json!({"since": 3, "epoch": "x".repeat(33)}), "epoch"),
    ];
    for (extra, field) in cases {
        let mut data = json!({"username": "bob2", "room": "elsewhere"});
        data.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (frames, reply) = bob.request("joinRoom", data);
        assert!(frames.is_empty(), "{frames:?}");
        assert_eq!(reply["event"], "error", "{extra}: {reply}");
        assert_eq!(reply["data"]["code"], "invalid_field", "{extra}");
        assert_eq!(reply["data"]["field"], field, "{extra}");
    }
    // Still in r, still bob: the others heard nothing.
    assert_eq!(bob.say("still here"), 1);
    assert_eq!(ann.expect("chatMessage")["username"], "bob");
    ann.assert_quiet();
}

// ---------------------------------------------------------------------------
// The property: random interleavings of messages, drops and comebacks in one
// room. A model predicts every `joined` (epoch, history, resumed) exactly;
// each client keeps what a page would show, and that is every `seq` of the
// room's epoch once, in order, from where it last started afresh, which it
// does only when told (`resumed: false`).

const CLIENTS: usize = 3;
const HISTORY: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Say { c: usize },
    Drop { c: usize },
    Back { c: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS;
    prop_oneof![
        5 => c.clone().prop_map(|c| Op::Say { c }),
        2 => c.clone().prop_map(|c| Op::Drop { c }),
        3 => c.prop_map(|c| Op::Back { c }),
    ]
}

/// One client as a page keeps it.
#[derive(Default)]
struct Page {
    client: Option<Client>,
    /// The epoch and last `seq` it saw (what it resumes with).
    epoch: Option<String>,
    last: u64,
    /// The `seq`s shown since it last started afresh.
    shown: Vec<u64>,
    /// How many times it was told that it may have missed messages.
    told: usize,
}

struct World {
    server: Engine,
    pages: Vec<Page>,
    /// The room as the model has it: epoch, last seq, members.
    epoch: Option<String>,
    last_seq: u64,
    epochs: Vec<String>,
}

impl World {
    fn members(&self) -> usize {
        self.pages.iter().filter(|p| p.client.is_some()).count()
    }

    /// Every member but `except` reads its next chat message, which must be `seq`.
    fn deliver(&mut self, seq: u64, except: usize) -> Result<(), TestCaseError> {
        for (i, page) in self.pages.iter_mut().enumerate() {
            let Some(client) = page.client.as_mut().filter(|_| i != except) else {
                continue;
            };
            let frame = loop {
                let frame = client.recv();
                if !matches!(frame["event"].as_str(), Some("userJoined" | "userLeft")) {
                    break frame;
                }
            };
            prop_assert_eq!(&frame["event"], "chatMessage", "{}", frame);
            prop_assert_eq!(frame["data"]["seq"].as_u64(), Some(seq));
            page.shown.push(seq);
            page.last = seq;
        }
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Say { c } => {
                let Some(client) = self.pages[c].client.as_mut() else {
                    return Ok(());
                };
                let seq = client.say("hi");
                self.last_seq += 1;
                prop_assert_eq!(seq, self.last_seq);
                self.pages[c].shown.push(seq);
                self.pages[c].last = seq;
                self.deliver(seq, c)?;
            }
            Op::Drop { c } => {
                if self.pages[c].client.take().is_none() {
                    return Ok(());
                }
                if self.members() == 0 {
                    self.epoch = None;
                    self.last_seq = 0;
                }
                self.await_members()?;
            }
            Op::Back { c } => {
                if self.pages[c].client.is_some() {
                    self.step(&Op::Drop { c })?;
                }
                self.back(c)?;
            }
        }
        Ok(())
    }

    /// `c` comes back on the next node in turn, resuming if it saw the room.
    fn back(&mut self, c: usize) -> Result<(), TestCaseError> {
        let mut client = self.server.client();
        let page = &self.pages[c];
        let mut data = json!({"username": format!("c{c}"), "room": "r"});
        let since = page.epoch.clone().map(|e| (page.last, e));
        if let Some((last, epoch)) = &since {
            data["since"] = json!(last);
            data["epoch"] = json!(epoch);
        }
        let (frames, reply) = client.request("joinRoom", data);
        prop_assert_eq!(&reply["event"], "ack", "{}", reply);
        prop_assert_eq!(frames.len(), 1);
        let joined = &frames[0]["data"];
        let epoch = joined["epoch"].as_str().unwrap().to_owned();
        match &self.epoch {
            Some(known) => prop_assert_eq!(known, &epoch),
            None => {
                prop_assert!(!self.epochs.contains(&epoch), "a reused epoch");
                self.epochs.push(epoch.clone());
                self.epoch = Some(epoch.clone());
            }
        }
        // The model's verdict, then the history it implies.
        let last = self.last_seq;
        let resumed = since
            .as_ref()
            .map(|(s, e)| *e == epoch && *s <= last && last - s <= HISTORY as u64);
        let first = match resumed {
            Some(true) => since.as_ref().unwrap().0 + 1,
            _ => last.saturating_sub(HISTORY as u64) + 1,
        };
        let want: Vec<u64> = (first..=last).collect();
        let got: Vec<u64> = joined["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        prop_assert_eq!(&got, &want, "history of {}", joined);
        prop_assert_eq!(joined.get("resumed").and_then(Value::as_bool), resumed);
        let page = &mut self.pages[c];
        if resumed != Some(true) {
            // Not a resume: the page starts afresh, and says so if it had
            // been here before.
            page.shown.clear();
            page.told += usize::from(resumed == Some(false));
        }
        page.shown.extend(&got);
        page.last =
            got.last()
                .copied()
                .unwrap_or(if resumed == Some(true) { page.last } else { 0 });
        page.epoch = Some(epoch);
        page.client = Some(client);
        // The others hear `userJoined`; they read it with their next message.
        Ok(())
    }

    /// Waits until the server's member count is the model's (a drop is
    /// noticed on the server's own thread; on a cluster, through Redis).
    fn await_members(&self) -> Result<(), TestCaseError> {
        let want = self.members();
        let deadline = Instant::now() + common::WAIT;
        loop {
            let rooms: Value = serde_json::from_str(&self.server.get("/api/rooms").body).unwrap();
            let users = rooms["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == "r")
                .map_or(0, |r| r["users"].as_u64().unwrap() as usize);
            if users == want {
                return Ok(());
            }
            prop_assert!(Instant::now() < deadline, "the server never saw the drop");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// What every page shows is each `seq` once, in order, ending with the
    /// room's last for those still there.
    fn check(&self) -> Result<(), TestCaseError> {
        for page in &self.pages {
            for pair in page.shown.windows(2) {
                prop_assert_eq!(pair[1], pair[0] + 1, "shown: {:?}", page.shown);
            }
            if page.client.is_some() {
                prop_assert_eq!(page.shown.last().copied().unwrap_or(0), self.last_seq);
                prop_assert_eq!(page.last, self.last_seq);
            }
        }
        Ok(())
    }
}

#[test]
fn every_resumed_client_sees_every_seq_once_and_the_others_are_told() {
    let Some(backend) = Backend::start(SETUP) else {
        return;
    };
    let config = ProptestConfig {
        cases: 32,
        max_shrink_iters: 100,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let ops = proptest::collection::vec(op(), 1..40);
    let told = std::cell::Cell::new(0usize);
    let result = runner.run(&ops, |ops| {
        let server = backend.engine(|c| {
            c.rate_limit = RateLimit(None);
            c.history = HISTORY;
        });
        let mut world = World {
            server,
            pages: (0..CLIENTS).map(|_| Page::default()).collect(),
            epoch: None,
            last_seq: 0,
            epochs: Vec::new(),
        };
        for op in &ops {
            world.step(op)?;
            world.check()?;
        }
        told.set(told.get() + world.pages.iter().map(|p| p.told).sum::<usize>());
        let World { server, pages, .. } = world;
        drop(pages);
        drop(server);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
    assert!(
        told.get() > 0,
        "no case ever missed a message: the ops are too tame"
    );
}
