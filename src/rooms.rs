//! The room registry: who is connected, who is in which room, each room's
//! `seq` and history. One mutex guards it all; under it we only assign
//! numbers and push shared, already-encoded events onto channels, never
//! touch a socket. Pushing under the lock is what gives every member of a
//! room the same order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::info;
use serde_json::json;

use crate::metrics::Metrics;
use crate::outbox::{Outbound, Outbox, Outgoing, Overflow, WriterStart};
use crate::protocol::{ChatMessageData, JoinedData, PresenceData, TypingData, UserInfo};

/// A connection's identity, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The request needs a room and the client is in none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotInRoom;

pub struct Registry {
    inner: Mutex<Inner>,
    /// Signalled whenever a client goes, for `wait_empty`.
    emptied: Condvar,
    history_limit: usize,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Inner {
    clients: HashMap<ClientId, Client>,
    rooms: BTreeMap<String, Room>,
}

struct Client {
    outbox: Outbox,
    /// The room this client is in, if any; its name there is in the room's member list.
    room: Option<String>,
}

#[derive(Default)]
struct Room {
    /// In join order.
    members: Vec<Member>,
    last_seq: u64,
    /// The last `history_limit` chat messages, oldest first.
    history: VecDeque<Arc<Outgoing>>,
}

/// What the pushes of one operation left to do once the lock is released.
#[derive(Default)]
struct Delivery {
    /// Slow consumers to take out of their rooms (still under the lock).
    evicted: Vec<ClientId>,
    /// Writer threads to start (after the lock).
    writers: Vec<WriterStart>,
}

impl Delivery {
    fn push(&mut self, id: ClientId, outbox: &Outbox, event: &Arc<Outgoing>) {
        match outbox.push(event) {
            Ok(None) => {}
            Ok(Some(writer)) => self.writers.push(writer),
            Err(Overflow) => self.evicted.push(id),
        }
    }
}

struct Member {
    id: ClientId,
    username: String,
    outbox: Outbox,
}

impl Room {
    fn position(&self, id: ClientId) -> usize {
        self.members
            .iter()
            .position(|m| m.id == id)
            .expect("a client's room lists it as a member")
    }

    /// Queues `event` for every member but `except`.
    fn send_all(&self, event: &Arc<Outgoing>, except: Option<ClientId>, d: &mut Delivery) {
        for member in &self.members {
            if Some(member.id) != except {
                d.push(member.id, &member.outbox, event);
            }
        }
    }
}

impl Registry {
    pub fn new(history_limit: usize, metrics: Arc<Metrics>) -> Registry {
        Registry {
            inner: Mutex::default(),
            emptied: Condvar::new(),
            history_limit,
            metrics,
        }
    }

    /// Sizes the client table for `clients` up front, so that it never
    /// rehashes under the lock while clients pour in. The table costs address
    /// space, not RSS, until it is used.
    pub fn reserve_clients(&self, clients: usize) {
        self.lock().clients.reserve(clients);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug in this file; the
        // data is still consistent enough to keep serving the other rooms.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a connected client, not yet in a room.
    pub fn connect(&self, id: ClientId, outbox: Outbox) {
        self.lock()
            .clients
            .insert(id, Client { outbox, room: None });
    }

    /// Forgets a client, telling its room `userLeft`. Safe to call twice.
    pub fn disconnect(&self, id: ClientId) {
        let mut inner = self.lock();
        let mut d = Delivery::default();
        inner.leave_room(id, &mut d);
        inner.clients.remove(&id);
        self.finish(inner, d);
        self.emptied.notify_all();
    }

    pub fn in_room(&self, id: ClientId) -> bool {
        self.lock()
            .clients
            .get(&id)
            .is_some_and(|c| c.room.is_some())
    }

    /// `joinRoom`: leaves the current room (unless it is `room`), joins `room`
    /// as `username`, answers `joined` and, with an ack, `ack`.
    pub fn join(&self, id: ClientId, username: &str, room: &str, ack: Option<u64>) {
        let mut inner = self.lock();
        let mut d = Delivery::default();
        let current = inner.clients.get(&id).and_then(|c| c.room.clone());
        if current.as_deref() == Some(room) {
            let members = &mut inner
                .rooms
                .get_mut(room)
                .expect("the client's room exists")
                .members;
            let me = members
                .iter_mut()
                .find(|m| m.id == id)
                .expect("member of its room");
            if me.username != username {
                let old = std::mem::replace(&mut me.username, username.to_owned());
                let r = &inner.rooms[room];
                let left = presence("userLeft", room, id, &old);
                r.send_all(&left, Some(id), &mut d);
                let joined = presence("userJoined", room, id, username);
                r.send_all(&joined, Some(id), &mut d);
            }
        } else {
            inner.leave_room(id, &mut d);
            let Some(client) = inner.clients.get_mut(&id) else {
                // Not registered (cannot happen: a reader joins only between
                // its connect and disconnect); still deliver what leaving queued.
                return self.finish(inner, d);
            };
            client.room = Some(room.to_owned());
            let outbox = client.outbox.clone();
            let r = inner.rooms.entry(room.to_owned()).or_default();
            let event = presence("userJoined", room, id, username);
            r.send_all(&event, None, &mut d);
            r.members.push(Member {
                id,
                username: username.to_owned(),
                outbox,
            });
            info!("client {id} joined {room:?} as {username:?}");
        }
        let r = &inner.rooms[room];
        let joined = JoinedData {
            room,
            username,
            id: &id.to_string(),
            users: r
                .members
                .iter()
                .map(|m| UserInfo {
                    id: m.id.to_string(),
                    username: m.username.clone(),
                })
                .collect(),
            history: r.history.iter().map(|m| &*m.data).collect(),
        };
        let joined = Outgoing::new("joined", &joined, None);
        inner.send_to(id, &joined, &mut d);
        if let Some(ack) = ack {
            inner.send_to(
                id,
                &Outgoing::new("ack", &json!({"ok": true, "room": room}), Some(ack)),
                &mut d,
            );
        }
        self.finish(inner, d);
    }

    /// `leaveRoom`: answers `left` and, with an ack, `ack`.
    pub fn leave(&self, id: ClientId, ack: Option<u64>) -> Result<(), NotInRoom> {
        let mut inner = self.lock();
        let mut d = Delivery::default();
        let room = inner.leave_room(id, &mut d).ok_or(NotInRoom)?;
        inner.send_to(
            id,
            &Outgoing::new("left", &json!({ "room": room }), None),
            &mut d,
        );
        inner.send_ack(id, ack, json!({"ok": true}), &mut d);
        self.finish(inner, d);
        Ok(())
    }

    /// `chatMessage`: numbers the message, sends it to the whole room, keeps it in history.
    pub fn chat(&self, id: ClientId, text: &str, ack: Option<u64>) -> Result<u64, NotInRoom> {
        let mut inner = self.lock();
        let mut d = Delivery::default();
        let room_name = inner.room_of(id).ok_or(NotInRoom)?;
        let limit = self.history_limit;
        let r = inner
            .rooms
            .get_mut(&room_name)
            .expect("the client's room exists");
        r.last_seq += 1;
        let seq = r.last_seq;
        let me = &r.members[r.position(id)];
        let data = ChatMessageData {
            room: &room_name,
            seq,
            id: &id.to_string(),
            username: &me.username,
            text,
            ts: unix_millis(),
        };
        let event = Outgoing::new("chatMessage", &data, None);
        r.send_all(&event, None, &mut d);
        if limit > 0 {
            if r.history.len() == limit {
                r.history.pop_front();
            }
            r.history.push_back(event);
        }
        inner.send_ack(id, ack, json!({"ok": true, "seq": seq}), &mut d);
        self.finish(inner, d);
        Ok(seq)
    }

    /// `typing`: tells the rest of the room.
    pub fn typing(&self, id: ClientId, typing: bool, ack: Option<u64>) -> Result<(), NotInRoom> {
        let inner = self.lock();
        let mut d = Delivery::default();
        let room_name = inner.room_of(id).ok_or(NotInRoom)?;
        let r = &inner.rooms[&room_name];
        let me = &r.members[r.position(id)];
        let data = TypingData {
            room: &room_name,
            id: &id.to_string(),
            username: &me.username,
            typing,
        };
        r.send_all(&Outgoing::new("typing", &data, None), Some(id), &mut d);
        inner.send_ack(id, ack, json!({"ok": true}), &mut d);
        self.finish(inner, d);
        Ok(())
    }

    /// Queues a personal event (an `error`, say) for one client.
    pub fn send(&self, id: ClientId, event: &Arc<Outgoing>) {
        let inner = self.lock();
        let mut d = Delivery::default();
        inner.send_to(id, event, &mut d);
        self.finish(inner, d);
    }

    /// Rooms and their member counts, sorted by name (code-point order).
    pub fn rooms(&self) -> Vec<(String, usize)> {
        self.lock()
            .rooms
            .iter()
            .map(|(name, r)| (name.clone(), r.members.len()))
            .collect()
    }

    /// Shutdown: queues a Close with `code` for every client. The queues are
    /// copied out first: queuing may start writer threads, not a thing to do
    /// under the lock.
    pub fn close_all(&self, code: u16, reason: &str) {
        let outboxes: Vec<Outbox> = self
            .lock()
            .clients
            .values()
            .map(|c| c.outbox.clone())
            .collect();
        for outbox in outboxes {
            outbox.control(Outbound::close(code, reason));
        }
    }

    /// Cuts every remaining connection at the socket.
    pub fn abort_all(&self) {
        for client in self.lock().clients.values() {
            client.outbox.abort();
        }
    }

    /// Waits until no client is registered, or until `timeout`. True if empty.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        while !inner.clients.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self
                .emptied
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Ends an operation: takes slow consumers out of their rooms (their
    /// `userLeft` may find more), refreshes the rooms gauge, unlocks, and
    /// only then starts the writer threads that the pushes found missing.
    fn finish(&self, mut inner: MutexGuard<'_, Inner>, mut d: Delivery) {
        while let Some(id) = d.evicted.pop() {
            inner.leave_room(id, &mut d);
        }
        self.metrics.set_rooms(inner.rooms.len());
        drop(inner);
        for writer in d.writers {
            writer.start();
        }
    }

    /// Panics unless every client is in at most one room, each room's member
    /// list matches its members' own state, and no room is empty. For the
    /// unit tests and the `registry` fuzz target.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let inner = self.lock();
        for (name, room) in &inner.rooms {
            assert!(!room.members.is_empty(), "empty room {name:?} survived");
            for m in &room.members {
                assert_eq!(inner.clients[&m.id].room.as_deref(), Some(name.as_str()));
            }
        }
        for (id, c) in &inner.clients {
            if let Some(room) = &c.room {
                assert_eq!(
                    inner.rooms[room]
                        .members
                        .iter()
                        .filter(|m| m.id == *id)
                        .count(),
                    1
                );
            }
        }
    }
}

impl Inner {
    fn room_of(&self, id: ClientId) -> Option<String> {
        self.clients.get(&id)?.room.clone()
    }

    fn send_to(&self, id: ClientId, event: &Arc<Outgoing>, d: &mut Delivery) {
        if let Some(client) = self.clients.get(&id) {
            d.push(id, &client.outbox, event);
        }
    }

    fn send_ack(&self, id: ClientId, ack: Option<u64>, data: serde_json::Value, d: &mut Delivery) {
        if let Some(ack) = ack {
            self.send_to(id, &Outgoing::new("ack", &data, Some(ack)), d);
        }
    }

    /// Takes the client out of its room, telling the others `userLeft`, and
    /// drops the room if it is now empty. Returns the room's name.
    fn leave_room(&mut self, id: ClientId, d: &mut Delivery) -> Option<String> {
        let name = self.clients.get_mut(&id)?.room.take()?;
        let room = self.rooms.get_mut(&name).expect("the client's room exists");
        let member = room.members.remove(room.position(id));
        info!("client {id} left {name:?}");
        if room.members.is_empty() {
            self.rooms.remove(&name);
        } else {
            let event = presence("userLeft", &name, id, &member.username);
            room.send_all(&event, None, d);
        }
        Some(name)
    }
}

/// A `userJoined` or `userLeft` event.
fn presence(event: &'static str, room: &str, id: ClientId, username: &str) -> Arc<Outgoing> {
    let data = PresenceData {
        room,
        id: &id.to_string(),
        username,
    };
    Outgoing::new(event, &data, None)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A registry and `n` clients whose outboxes write to real (unread) sockets.
    fn setup(
        n: u64,
    ) -> (
        Registry,
        Vec<crossbeam_channel::Receiver<Outbound>>,
        Vec<TcpStream>,
    ) {
        let registry = Registry::new(2, Arc::new(Metrics::default()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut receivers, mut peers) = (Vec::new(), Vec::new());
        for i in 0..n {
            peers.push(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
            let socket = Arc::new(listener.accept().unwrap().0);
            let (outbox, rx) = Outbox::detached(socket, Arc::new(Metrics::default()));
            registry.connect(ClientId(i), outbox);
            receivers.push(rx);
        }
        (registry, receivers, peers)
    }

    fn events(rx: &crossbeam_channel::Receiver<Outbound>) -> Vec<&'static str> {
        rx.try_iter()
            .filter_map(|o| match o {
                Outbound::Event(e) => Some(e.name),
                _ => None,
            })
            .collect()
    }

    use std::net::TcpStream;

    #[test]
    fn join_switch_leave_keep_the_invariants() {
        let (registry, rx, _peers) = setup(3);
        registry.join(ClientId(0), "a", "x", None);
        registry.join(ClientId(1), "b", "x", Some(1));
        registry.join(ClientId(2), "c", "y", None);
        registry.check_invariants();
        assert_eq!(events(&rx[1]), ["joined", "ack"]);
        assert_eq!(events(&rx[0]), ["joined", "userJoined"]);
        registry.join(ClientId(1), "b", "y", None);
        registry.check_invariants();
        assert_eq!(events(&rx[0]), ["userLeft"]);
        assert_eq!(registry.leave(ClientId(0), None), Ok(()));
        assert_eq!(registry.leave(ClientId(0), None), Err(NotInRoom));
        registry.check_invariants();
        assert_eq!(registry.rooms(), [("y".to_owned(), 2)]);
        registry.disconnect(ClientId(1));
        registry.disconnect(ClientId(1));
        registry.check_invariants();
        assert_eq!(registry.rooms(), [("y".to_owned(), 1)]);
    }

    #[test]
    fn seq_rises_by_one_and_history_is_bounded() {
        let (registry, _rx, _peers) = setup(1);
        assert_eq!(registry.chat(ClientId(0), "hi", None), Err(NotInRoom));
        registry.join(ClientId(0), "a", "x", None);
        let seqs: Vec<_> = (0..4)
            .map(|_| registry.chat(ClientId(0), "hi", None).unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let inner = registry.lock();
        let history: Vec<_> = inner.rooms["x"]
            .history
            .iter()
            .map(|m| m.data.get().contains("\"seq\":3"))
            .collect();
        assert_eq!(history, [true, false]);
    }
}
