//! Arbitrary sequences of client events (join, chat, typing, leave,
//! disconnect, reconnect, from several clients) against the room registry.
//! After every step: the registry's own invariants (each connection in at
//! most one room, member lists match the members' state, no empty room),
//! `rooms()` matches a model, `seq` rises by one per message, and every
//! member sees a gap-free run of `seq` for as long as it stays.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use roomchat::fuzzing::{ClientId, Metrics, Recorder, Registry, Wakes};
use roomchat::Outgoing;
use serde_json::Value;

const SLOTS: usize = 4;
const NAMES: [&str; 2] = ["ann", "bob"];
const ROOMS: [&str; 4] = ["a", "b", "c", "é"];
const HISTORY: usize = 3;
/// Operations per input; each queues a few events per client, all recorded.
const MAX_OPS: usize = 1000;

#[derive(Arbitrary, Debug)]
enum Op {
    Join { c: u8, name: u8, room: u8 },
    Chat { c: u8 },
    Typing { c: u8, typing: bool },
    Leave { c: u8 },
    Disconnect { c: u8 },
    Reconnect { c: u8 },
}

struct Slot {
    id: ClientId,
    connected: bool,
    rx: Receiver<Arc<Outgoing>>,
    /// Model: (room, username) while in a room.
    member: Option<(String, String)>,
    /// From the frames this client received: its room and the next `seq` due.
    stay: Option<(String, u64)>,
}

struct World {
    registry: Registry,
    slots: Vec<Slot>,
    /// Model: room → (members in join order, last seq).
    rooms: BTreeMap<String, (Vec<usize>, u64)>,
    next_id: u64,
    next_ack: u64,
}

impl World {
    fn new() -> World {
        let registry = Registry::new(HISTORY, Arc::new(Metrics::default()));
        let mut world = World {
            registry,
            slots: Vec::new(),
            rooms: BTreeMap::new(),
            next_id: 1,
            next_ack: 1,
        };
        for _ in 0..SLOTS {
            let slot = world.connect();
            world.slots.push(slot);
        }
        world
    }

    fn connect(&mut self) -> Slot {
        let id = ClientId(self.next_id);
        self.next_id += 1;
        // A client with no socket: every event pushed into its mailbox is
        // recorded for the model to check.
        let (recorder, rx) = Recorder::new();
        self.registry.connect(id, recorder);
        Slot {
            id,
            connected: true,
            rx,
            member: None,
            stay: None,
        }
    }

    fn leave_model(&mut self, s: usize) {
        if let Some((room, _)) = self.slots[s].member.take() {
            let members = &mut self.rooms.get_mut(&room).unwrap().0;
            members.retain(|&m| m != s);
            if members.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    fn ack(&mut self) -> u64 {
        self.next_ack += 1;
        self.next_ack
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Join { c, name, room } => {
                let s = c as usize % SLOTS;
                let (name, room) = (NAMES[name as usize % 2], ROOMS[room as usize % 4]);
                let ack = self.ack();
                self.registry.join(self.slots[s].id, name, room, None, Some(ack), &mut Wakes::default());
                if self.slots[s].connected {
                    let same = self.slots[s]
                        .member
                        .as_ref()
                        .is_some_and(|(r, _)| r == room);
                    if !same {
                        self.leave_model(s);
                        self.rooms.entry(room.into()).or_default().0.push(s);
                    }
                    self.slots[s].member = Some((room.into(), name.into()));
                }
            }
            Op::Chat { c } => {
                let s = c as usize % SLOTS;
                let ack = self.ack();
                let got = self.registry.chat(self.slots[s].id, "hi", Some(ack), &mut Wakes::default());
                match (&self.slots[s].member, got) {
                    (Some((room, _)), Ok(seq)) => {
                        let last = &mut self.rooms.get_mut(room).unwrap().1;
                        assert_eq!(seq, *last + 1, "seq rises by exactly one");
                        *last = seq;
                    }
                    (None, Err(_)) => {}
                    (member, got) => panic!("chat by {s} in {member:?} gave {got:?}"),
                }
            }
            Op::Typing { c, typing } => {
                let s = c as usize % SLOTS;
                let ack = self.ack();
                let got = self.registry.typing(self.slots[s].id, typing, Some(ack), &mut Wakes::default());
                assert_eq!(got.is_ok(), self.slots[s].member.is_some());
            }
            Op::Leave { c } => {
                let s = c as usize % SLOTS;
                let ack = self.ack();
                let got = self.registry.leave(self.slots[s].id, Some(ack), &mut Wakes::default());
                assert_eq!(got.is_ok(), self.slots[s].member.is_some());
                self.leave_model(s);
            }
            Op::Disconnect { c } => {
                let s = c as usize % SLOTS;
                // Twice: a reader and a shutdown may both disconnect a client.
                self.registry.disconnect(self.slots[s].id, &mut Wakes::default());
                self.registry.disconnect(self.slots[s].id, &mut Wakes::default());
                self.leave_model(s);
                self.slots[s].connected = false;
                self.slots[s].stay = None;
            }
            Op::Reconnect { c } => {
                let s = c as usize % SLOTS;
                if !self.slots[s].connected {
                    self.slots[s] = self.connect();
                }
            }
        }
        self.check();
    }

    fn check(&mut self) {
        self.registry.check_invariants();
        let model: Vec<(String, usize)> = self
            .rooms
            .iter()
            .map(|(name, (members, _))| (name.clone(), members.len()))
            .collect();
        assert_eq!(self.registry.rooms(), model);
        for s in 0..SLOTS {
            let frames: Vec<_> = self.slots[s].rx.try_iter().collect();
            if !self.slots[s].connected {
                assert!(frames.is_empty(), "a disconnected client gets nothing");
                continue;
            }
            for event in frames {
                let data: Value = serde_json::from_str(event.data()).unwrap();
                self.see(s, event.name(), &data);
            }
            let member = self.slots[s].member.as_ref().map(|(r, _)| r);
            assert_eq!(self.slots[s].stay.as_ref().map(|(r, _)| r), member);
        }
    }

    /// One frame received by slot `s`: follows its stays and their `seq`.
    fn see(&mut self, s: usize, name: &str, data: &Value) {
        let room = data["room"].as_str().map(str::to_owned);
        match name {
            "joined" => {
                let room = room.unwrap();
                let last = self.rooms[&room].1;
                // History: the last min(HISTORY, last) messages, oldest first.
                let seqs: Vec<u64> = data["history"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["seq"].as_u64().unwrap())
                    .collect();
                let from = last.saturating_sub(HISTORY as u64) + 1;
                assert_eq!(seqs, (from..=last).collect::<Vec<_>>());
                let users = data["users"].as_array().unwrap();
                assert_eq!(users.len(), self.rooms[&room].0.len());
                self.slots[s].stay = Some((room, last + 1));
            }
            "chatMessage" => {
                let (stay_room, next) = self.slots[s]
                    .stay
                    .as_mut()
                    .expect("a message outside a stay");
                assert_eq!(Some(&*stay_room), room.as_ref());
                assert_eq!(data["seq"].as_u64(), Some(*next), "gap-free seq");
                *next += 1;
            }
            "left" => {
                assert_eq!(self.slots[s].stay.take().map(|(r, _)| r), room);
            }
            "userJoined" | "userLeft" | "typing" => {
                let stay = self.slots[s].stay.as_ref().map(|(r, _)| r);
                assert_eq!(stay, room.as_ref(), "presence only from one's own room");
            }
            "ack" => {}
            other => panic!("unexpected event {other}"),
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut world = World::new();
    for op in ops.iter().take(MAX_OPS) {
        world.step(op);
    }
    for s in 0..SLOTS {
        world.registry.disconnect(world.slots[s].id, &mut Wakes::default());
    }
    assert!(world.registry.rooms().is_empty());
    assert!(world.registry.is_empty());
});
