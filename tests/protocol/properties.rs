//! The room registry through a real server, on every engine (`SETUP`, from
//! the module that includes this file). A model predicts every frame each
//! client receives; acks are the sync points, `/api/rooms` is checked after
//! every step, and each client must be quiet at the end (nothing unpredicted).
//! On a cluster the clients take the nodes in turn, reconnects included.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use roomchat::config::RateLimit;
use serde_json::{json, Value};

use super::SETUP;
use crate::common::engine::{Backend, Engine};
use crate::common::{self, Client};

const CLIENTS: usize = 3;
// Names and texts carry what JSON must escape and what takes 2 to 4 UTF-8
// bytes: the cluster moves them through Redis and Lua.
const ROOMS: [&str; 3] = ["a", "b", "ü \"/\\ 😀"];
const NAMES: [&str; 2] = ["ann", "\"b\\o/b\" 中"];
const HISTORY: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Join { c: usize, name: usize, room: usize },
    Chat { c: usize },
    Typing { c: usize, typing: bool },
    Leave { c: usize },
    Reconnect { c: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS;
    prop_oneof![
        4 => (c.clone(), 0..NAMES.len(), 0..ROOMS.len()).prop_map(|(c, name, room)| Op::Join { c, name, room }),
        4 => c.clone().prop_map(|c| Op::Chat { c }),
        1 => (c.clone(), any::<bool>()).prop_map(|(c, typing)| Op::Typing { c, typing }),
        2 => c.clone().prop_map(|c| Op::Leave { c }),
        1 => c.prop_map(|c| Op::Reconnect { c }),
    ]
}

#[derive(Default)]
struct RoomModel {
    /// Client slots, in join order.
    members: Vec<usize>,
    last_seq: u64,
    /// The last `HISTORY` messages, as they were delivered.
    history: Vec<Value>,
    /// Learnt from the first `joined` of this creation of the room.
    epoch: Option<String>,
}

struct World {
    server: Engine,
    clients: Vec<Client>,
    /// Per slot: (room, username) while in a room.
    state: Vec<Option<(String, String)>>,
    rooms: BTreeMap<String, RoomModel>,
    /// Frames each slot must receive next, in order: (event, data; see `check_frame`).
    expected: Vec<Vec<(&'static str, Value)>>,
    said: u64,
    /// Every epoch seen so far, per room name: a room created again has a new one.
    epochs: BTreeMap<String, Vec<String>>,
}

impl World {
    fn new(server: Engine) -> World {
        let clients = (0..CLIENTS).map(|_| server.client()).collect();
        World {
            server,
            clients,
            state: vec![None; CLIENTS],
            rooms: BTreeMap::new(),
            expected: vec![Vec::new(); CLIENTS],
            said: 0,
            epochs: BTreeMap::new(),
        }
    }

    fn id(&self, slot: usize) -> String {
        self.clients[slot].id.clone()
    }

    fn tell_others(&mut self, room: &str, except: Option<usize>, event: &'static str, data: Value) {
        let members = self
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for m in members {
            if Some(m) != except {
                self.expected[m].push((event, data.clone()));
            }
        }
    }

    /// Model of leaving (as `leaveRoom`, a switch, or a disconnect).
    fn leave_model(&mut self, slot: usize) -> Option<String> {
        let (room, name) = self.state[slot].take()?;
        let r = self.rooms.get_mut(&room).unwrap();
        r.members.retain(|&m| m != slot);
        if r.members.is_empty() {
            self.rooms.remove(&room);
        } else {
            let data = json!({"room": room, "id": self.id(slot), "username": name});
            self.tell_others(&room, None, "userLeft", data);
        }
        Some(room)
    }

    /// Sends a request from `slot`, reads its frames up to the reply and
    /// checks them against what the model expects of `slot`.
    fn request(
        &mut self,
        slot: usize,
        event: &str,
        data: Value,
    ) -> Result<(Vec<Value>, Value), TestCaseError> {
        let (frames, reply) = self.clients[slot].request(event, data);
        let expected = std::mem::take(&mut self.expected[slot]);
        prop_assert_eq!(
            frames.len(),
            expected.len(),
            "frames before the reply: {:?}",
            frames
        );
        for (frame, (event, fields)) in frames.iter().zip(&expected) {
            check_frame(frame, event, fields)?;
        }
        Ok((frames, reply))
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Join { c, name, room } => {
                let (name, room) = (NAMES[name], ROOMS[room]);
                let me = self.id(c);
                match self.state[c].clone() {
                    Some((current, old)) if current == room => {
                        if old != name {
                            let left = json!({"room": room, "id": me, "username": old});
                            self.tell_others(room, Some(c), "userLeft", left);
                            let joined = json!({"room": room, "id": me, "username": name});
                            self.tell_others(room, Some(c), "userJoined", joined);
                        }
                        self.state[c] = Some((room.into(), name.into()));
                    }
                    _ => {
                        self.leave_model(c);
                        let joined = json!({"room": room, "id": me, "username": name});
                        self.tell_others(room, None, "userJoined", joined);
                        self.rooms.entry(room.into()).or_default().members.push(c);
                        self.state[c] = Some((room.into(), name.into()));
                    }
                }
                let r = &self.rooms[room];
                let users: Vec<Value> = r
                    .members
                    .iter()
                    .map(|&m| json!({"id": self.id(m), "username": self.state[m].as_ref().unwrap().1}))
                    .collect();
                let history = r.history.clone();
                let joined = json!({"room": room, "username": name, "id": me, "users": users, "history": history});
                self.expected[c].push(("joined", joined));
                let (frames, reply) =
                    self.request(c, "joinRoom", json!({"username": name, "room": room}))?;
                check_frame(&reply, "ack", &json!({"ok": true, "room": room}))?;
                let epoch = frames.last().unwrap()["data"]["epoch"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let r = self.rooms.get_mut(room).unwrap();
                match &r.epoch {
                    Some(known) => prop_assert_eq!(known, &epoch, "one epoch per creation"),
                    None => {
                        let seen = self.epochs.entry(room.into()).or_default();
                        prop_assert!(!seen.contains(&epoch), "epoch {} again", epoch);
                        seen.push(epoch.clone());
                        r.epoch = Some(epoch);
                    }
                }
            }
            Op::Chat { c } => {
                self.said += 1;
                let text = format!("m{} \"/\\\u{2028}😀\t\r\n", self.said);
                let reply = match self.state[c].clone() {
                    None => None,
                    Some((room, name)) => {
                        let r = self.rooms.get_mut(&room).unwrap();
                        r.last_seq += 1;
                        let seq = r.last_seq;
                        let data = json!({"room": room, "seq": seq, "id": self.id(c), "username": name, "text": text});
                        self.tell_others(&room, None, "chatMessage", data);
                        Some((room, seq))
                    }
                };
                let (frames, got) = self.request(c, "chatMessage", json!({ "text": text }))?;
                match reply {
                    Some((room, seq)) => {
                        check_frame(&got, "ack", &json!({"ok": true, "seq": seq}))?;
                        // One message, one `ts`: the others get the sender's
                        // echo exactly, and so do later joiners in `history`.
                        let echo = frames[0]["data"].clone();
                        for expected in &mut self.expected {
                            for (event, data) in expected.iter_mut() {
                                if *event == "chatMessage" && data["seq"] == seq {
                                    *data = echo.clone();
                                }
                            }
                        }
                        let r = self.rooms.get_mut(&room).unwrap();
                        r.history.push(echo);
                        if r.history.len() > HISTORY {
                            r.history.remove(0);
                        }
                    }
                    None => check_frame(&got, "error", &json!({"code": "not_in_room"}))?,
                }
            }
            Op::Typing { c, typing } => {
                let inside = self.state[c].clone();
                if let Some((room, name)) = &inside {
                    let data =
                        json!({"room": room, "id": self.id(c), "username": name, "typing": typing});
                    self.tell_others(room, Some(c), "typing", data);
                }
                let (_, got) = self.request(c, "typing", json!({ "typing": typing }))?;
                let want = if inside.is_some() {
                    ("ack", json!({"ok": true}))
                } else {
                    ("error", json!({"code": "not_in_room"}))
                };
                check_frame(&got, want.0, &want.1)?;
            }
            Op::Leave { c } => {
                let left = self.leave_model(c);
                if let Some(room) = &left {
                    self.expected[c].push(("left", json!({ "room": room })));
                }
                let (_, got) = self.request(c, "leaveRoom", json!({}))?;
                let want = if left.is_some() {
                    ("ack", json!({"ok": true}))
                } else {
                    ("error", json!({"code": "not_in_room"}))
                };
                check_frame(&got, want.0, &want.1)?;
            }
            Op::Reconnect { c } => {
                // Whatever was still due to the old connection goes with it.
                self.expected[c].clear();
                self.leave_model(c);
                let fresh = self.server.client();
                drop(std::mem::replace(&mut self.clients[c], fresh));
                // The server notices the close on its own thread: wait for
                // `/api/rooms` to agree, so that later joins see the room's
                // true state (dropped, or one member fewer).
                let deadline = Instant::now() + common::WAIT;
                while self.api_rooms() != self.model_rooms() {
                    prop_assert!(
                        Instant::now() < deadline,
                        "the server never saw the disconnect"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        // Everyone else reads what the model says they were sent.
        for slot in 0..CLIENTS {
            for (event, fields) in std::mem::take(&mut self.expected[slot]) {
                let frame = self.clients[slot].recv();
                check_frame(&frame, event, &fields)?;
            }
        }
        prop_assert_eq!(self.api_rooms(), self.model_rooms());
        Ok(())
    }

    fn api_rooms(&self) -> Value {
        serde_json::from_str(&self.server.get("/api/rooms").body).unwrap()
    }

    fn model_rooms(&self) -> Value {
        let rooms: Vec<Value> = self
            .rooms
            .iter()
            .map(|(name, r)| json!({"name": name, "users": r.members.len()}))
            .collect();
        json!({ "rooms": rooms })
    }
}

/// `frame` is `event` and its data is `want`, field for field, on every
/// engine: no field missing, none extra. Two things the model cannot know
/// are left open: an `error`'s `message`, and a `ts` the model does not give
/// (a message not yet seen), which must be a whole number, and a `joined`'s
/// `epoch` (a string of 1 to 32 characters, checked by the join's step).
fn check_frame(frame: &Value, event: &str, want: &Value) -> Result<(), TestCaseError> {
    prop_assert_eq!(&frame["event"], event, "frame {}", frame);
    let open: &[&str] = match event {
        "error" => &["message"],
        "joined" => &["ts", "epoch"],
        _ => &["ts"],
    };
    prop_assert!(
        same(want, &frame["data"], open),
        "expected {} as the data of {}",
        want,
        frame
    );
    Ok(())
}

fn same(want: &Value, got: &Value, open: &[&str]) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            w.iter()
                .all(|(k, v)| g.get(k).is_some_and(|gv| same(v, gv, open)))
                && g.iter().all(|(k, v)| {
                    w.contains_key(k)
                        || open.contains(&k.as_str())
                            && match k.as_str() {
                                "ts" => v.is_u64(),
                                "epoch" => v
                                    .as_str()
                                    .is_some_and(|e| (1..=32).contains(&e.chars().count())),
                                _ => v.as_str().is_some_and(|m| !m.is_empty()),
                            }
                })
        }
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| same(a, b, open))
        }
        _ => want == got,
    }
}

#[test]
fn the_registry_keeps_its_invariants_under_any_op_sequence() {
    let Some(backend) = Backend::start(SETUP) else {
        return;
    };
    let config = ProptestConfig {
        // As many on a cluster as in memory: two nodes take ~20 s for the
        // 48, within what make cluster-test can spend.
        cases: 48,
        max_shrink_iters: 200,
        // What `proptest!` sets: failures are saved beside this file, and
        // every engine replays them.
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let ops = proptest::collection::vec(op(), 1..40);
    let result = runner.run(&ops, |ops| {
        // A fresh engine per case (on a cluster: its own key prefix).
        let mut world = World::new(backend.engine(|c| {
            c.rate_limit = RateLimit(None);
            c.history = HISTORY;
        }));
        for op in &ops {
            world.step(op)?;
        }
        for c in &mut world.clients {
            c.assert_quiet();
        }
        // Clients go before the server, so its shutdown need not wait for them.
        let World {
            server, clients, ..
        } = world;
        drop(clients);
        drop(server);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
}
