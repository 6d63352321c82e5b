//! The room registry: who is connected, who is in which room, each room's
//! `seq` and history. One mutex guards it all. Under it we only assign
//! numbers and queue shared, already-built events into members' mailboxes;
//! pushing under the lock is what gives every member of a room the same
//! order. Nothing under the lock blocks, logs or touches a socket: what a
//! push leaves to do (a write, a slow consumer to cut off) is done by
//! [`Mailbox::wake`] once the lock is released.
//!
//! The registry knows its members only as [`Mailbox`]es, so it is a plain
//! state machine: its tests and fuzz target drive it without sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::codec::{to_raw, Outgoing};
use crate::metrics::Metrics;
use crate::protocol::{
    AckData, ChatMessageData, Id, JoinedData, LeftData, PresenceData, TypingData, UserInfo,
};

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

/// Why a room request was not carried out, by either engine (the local
/// registry, or the cluster's). Validation stays in `session`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The request needs a room and the client is in none.
    NotInRoom,
    /// Redis is unreachable (cluster only): nothing was done.
    Unavailable,
}

impl From<NotInRoom> for Refused {
    fn from(NotInRoom: NotInRoom) -> Refused {
        Refused::NotInRoom
    }
}

/// Shutdown has begun: no client may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing;

/// A member's queue is past its bounds: the member is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// How the registry reaches a client: its outbound queue. The server's is
/// `outbox::Outbox`; tests and the fuzz target use a plain channel.
pub trait Mailbox: Send + Sync {
    /// Queues `event`. Called under the registry lock, so it must not
    /// block, log or do I/O. `Ok(true)` asks for [`Mailbox::wake`] once the
    /// lock is released; `Err(Overflow)` drops the event, and the registry
    /// takes the client out of its room (and wakes the mailbox too).
    fn push(&self, event: &Arc<Outgoing>) -> Result<bool, Overflow>;
    /// Does what the pushes left to do (write, or cut off a slow consumer).
    /// Called with no lock held, as part of `round` (see [`Round`]).
    fn wake(&self, round: &Round);
    /// Shutdown: queues a Close with `code` and `reason`.
    fn close(&self, code: u16, reason: &str);
    /// Shutdown: ends the connection now.
    fn abort(&self);
}

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
    /// Shutdown has closed every client: no more may connect.
    closing: bool,
}

struct Client {
    mailbox: Arc<dyn Mailbox>,
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

struct Member {
    id: ClientId,
    /// Shared with the `joined` snapshots that list it.
    username: Arc<str>,
    mailbox: Arc<dyn Mailbox>,
}

/// Where a wake stands in one thread's pass over the mailboxes one
/// operation woke. A mailbox may do its writing on the waking thread early
/// in the round (no other thread woken: the cheapest way to reach a reading
/// client), and leave it to a thread of its own late in a big one (a room of
/// a thousand: the waking thread has its own client to get back to, and
/// one thread cannot make every send of a big room's traffic).
#[derive(Clone, Copy, Debug, Default)]
pub struct Round {
    woken_before: usize,
}

impl Round {
    /// A wake on its own, or the first of a round.
    pub fn first() -> Round {
        Round::default()
    }

    /// How many mailboxes this round woke before this one.
    pub fn woken_before(self) -> usize {
        self.woken_before
    }
}

/// Mailboxes to wake once no lock is held: what registry operations hand
/// back. The caller wakes them when it suits it (a reader, after the
/// message it is handling; so the writing happens at the top of its stack,
/// and what several requests queued for one client goes out together).
#[derive(Default)]
pub struct Wakes(Vec<Arc<dyn Mailbox>>);

impl Wakes {
    pub(crate) fn add(&mut self, mailbox: &Arc<dyn Mailbox>) {
        self.0.push(Arc::clone(mailbox));
    }

    /// Wakes every mailbox collected so far.
    pub fn wake_all(&mut self) {
        for (woken_before, mailbox) in self.0.drain(..).enumerate() {
            mailbox.wake(&Round { woken_before });
        }
    }
}

/// What the pushes of one operation left to do.
struct Delivery<'w> {
    /// Slow consumers to take out of their rooms (still under the lock).
    evicted: Vec<ClientId>,
    /// The requester's `ack`, queued last: after every frame the request
    /// caused for it, the `userLeft` of members it pushed over the edge too.
    ack: Option<(ClientId, Arc<Outgoing>)>,
    /// Mailboxes to wake once the lock is released.
    wakes: &'w mut Wakes,
}

impl Delivery<'_> {
    fn new(wakes: &mut Wakes) -> Delivery<'_> {
        Delivery {
            evicted: Vec::new(),
            ack: None,
            wakes,
        }
    }

    fn push(&mut self, id: ClientId, mailbox: &Arc<dyn Mailbox>, event: &Arc<Outgoing>) {
        match mailbox.push(event) {
            Ok(false) => {}
            Ok(true) => self.wakes.add(mailbox),
            Err(Overflow) => {
                self.evicted.push(id);
                self.wakes.add(mailbox);
            }
        }
    }
}

impl Room {
    fn member_mut(&mut self, id: ClientId) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.id == id)
            .expect("a client's room lists it as a member")
    }

    fn username(&self, id: ClientId) -> &str {
        let member = self.members.iter().find(|m| m.id == id);
        &member
            .expect("a client's room lists it as a member")
            .username
    }

    /// Queues `event` for every member but `except`.
    fn send_all(&self, event: &Arc<Outgoing>, except: Option<ClientId>, d: &mut Delivery) {
        for member in &self.members {
            if Some(member.id) != except {
                d.push(member.id, &member.mailbox, event);
            }
        }
    }

    /// The `joined` answer for `id`: everyone here, and the history. Only
    /// a snapshot is taken under the lock (names and messages are shared,
    /// not copied); the JSON, which grows with the room, is written later
    /// by the joiner's writer.
    fn joined(&self, name: &str, id: ClientId, username: &str) -> Arc<Outgoing> {
        let users: Vec<(ClientId, Arc<str>)> = self
            .members
            .iter()
            .map(|m| (m.id, Arc::clone(&m.username)))
            .collect();
        let history: Vec<Arc<Outgoing>> = self.history.iter().cloned().collect();
        let weight = users.iter().map(|(_, u)| u.len() + 32).sum::<usize>()
            + history.iter().map(|m| m.weight()).sum::<usize>();
        let (room, username) = (name.to_owned(), username.to_owned());
        Outgoing::later("joined", weight, move || {
            let data = JoinedData {
                room: &room,
                username: &username,
                id: Id(&id),
                users: users
                    .iter()
                    .map(|(id, username)| UserInfo {
                        id: Id(id),
                        username,
                    })
                    .collect(),
                history: history.iter().map(|m| m.raw()).collect(),
            };
            to_raw(&data)
        })
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

    /// Registers a connected client, not yet in a room; refused once
    /// shutdown has begun (the client would miss its Close).
    pub fn connect(&self, id: ClientId, mailbox: Arc<dyn Mailbox>) -> Result<(), Closing> {
        let mut inner = self.lock();
        if inner.closing {
            return Err(Closing);
        }
        inner.clients.insert(
            id,
            Client {
                mailbox,
                room: None,
            },
        );
        Ok(())
    }

    /// Forgets a client, telling its room `userLeft`. Safe to call twice.
    pub fn disconnect(&self, id: ClientId, wakes: &mut Wakes) {
        let mut inner = self.lock();
        let mut d = Delivery::new(wakes);
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
    pub fn join(
        &self,
        id: ClientId,
        username: &str,
        room: &str,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) {
        let mut inner = self.lock();
        let mut d = Delivery::new(wakes);
        if inner.room_of(id).as_deref() == Some(room) {
            inner.rename(id, room, username, &mut d);
        } else if !inner.enter(id, room, username, &mut d) {
            // Not registered (cannot happen: a reader joins only between
            // its connect and disconnect); still deliver what leaving queued.
            return self.finish(inner, d);
        }
        let joined = inner.rooms[room].joined(room, id, username);
        inner.send_to(id, &joined, &mut d);
        let data = AckData {
            room: Some(room),
            ..AckData::ok()
        };
        inner.send_ack(id, ack, &data, &mut d);
        self.finish(inner, d);
    }

    /// `leaveRoom`: answers `left` and, with an ack, `ack`.
    pub fn leave(
        &self,
        id: ClientId,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) -> Result<(), NotInRoom> {
        let mut inner = self.lock();
        let mut d = Delivery::new(wakes);
        let room = inner.leave_room(id, &mut d).ok_or(NotInRoom)?;
        inner.send_to(
            id,
            &Outgoing::new("left", &LeftData { room: &room }, None),
            &mut d,
        );
        inner.send_ack(id, ack, &AckData::ok(), &mut d);
        self.finish(inner, d);
        Ok(())
    }

    /// `chatMessage`: numbers the message, sends it to the whole room, keeps it in history.
    pub fn chat(
        &self,
        id: ClientId,
        text: &str,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) -> Result<u64, NotInRoom> {
        let mut inner = self.lock();
        let mut d = Delivery::new(wakes);
        let room_name = inner.room_of(id).ok_or(NotInRoom)?;
        let limit = self.history_limit;
        let room = inner
            .rooms
            .get_mut(&room_name)
            .expect("the client's room exists");
        room.last_seq += 1;
        let seq = room.last_seq;
        let data = ChatMessageData {
            room: &room_name,
            seq,
            id: Id(&id),
            username: room.username(id),
            text,
            ts: unix_millis(),
        };
        let event = Outgoing::new("chatMessage", &data, None);
        room.send_all(&event, None, &mut d);
        if limit > 0 {
            if room.history.len() == limit {
                room.history.pop_front();
            }
            room.history.push_back(event);
        }
        let data = AckData {
            seq: Some(seq),
            ..AckData::ok()
        };
        inner.send_ack(id, ack, &data, &mut d);
        self.finish(inner, d);
        Ok(seq)
    }

    /// `typing`: tells the rest of the room.
    pub fn typing(
        &self,
        id: ClientId,
        typing: bool,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) -> Result<(), NotInRoom> {
        let inner = self.lock();
        let mut d = Delivery::new(wakes);
        let room_name = inner.room_of(id).ok_or(NotInRoom)?;
        let room = &inner.rooms[&room_name];
        let data = TypingData {
            room: &room_name,
            id: Id(&id),
            username: room.username(id),
            typing,
        };
        room.send_all(&Outgoing::new("typing", &data, None), Some(id), &mut d);
        inner.send_ack(id, ack, &AckData::ok(), &mut d);
        self.finish(inner, d);
        Ok(())
    }

    /// Rooms and their member counts, sorted by name (code-point order).
    pub fn rooms(&self) -> Vec<(String, usize)> {
        self.lock()
            .rooms
            .iter()
            .map(|(name, r)| (name.clone(), r.members.len()))
            .collect()
    }

    /// Shutdown: queues a Close with `code` for every client. The mailboxes
    /// are copied out first: closing may start a writer, not a thing to do
    /// under the lock.
    pub fn close_all(&self, code: u16, reason: &str) {
        let mailboxes = {
            let mut inner = self.lock();
            inner.closing = true;
            inner.mailboxes()
        };
        for mailbox in mailboxes {
            mailbox.close(code, reason);
        }
    }

    /// Cuts every remaining connection at the socket.
    pub fn abort_all(&self) {
        for mailbox in self.mailboxes() {
            mailbox.abort();
        }
    }

    fn mailboxes(&self) -> Vec<Arc<dyn Mailbox>> {
        let inner = self.lock();
        inner
            .clients
            .values()
            .map(|c| Arc::clone(&c.mailbox))
            .collect()
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
    /// `userLeft` may find more), queues the requester's ack, refreshes the
    /// rooms gauge and unlocks. The mailboxes to wake are in the caller's
    /// `Wakes`.
    fn finish(&self, mut inner: MutexGuard<'_, Inner>, mut d: Delivery<'_>) {
        inner.evict(&mut d);
        if let Some((id, ack)) = d.ack.take() {
            inner.send_to(id, &ack, &mut d);
            inner.evict(&mut d);
        }
        self.metrics.set_rooms(inner.rooms.len());
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
                let entries = inner.rooms[room].members.iter().filter(|m| m.id == *id);
                assert_eq!(entries.count(), 1);
            }
        }
    }
}

impl Inner {
    fn mailboxes(&self) -> Vec<Arc<dyn Mailbox>> {
        self.clients
            .values()
            .map(|c| Arc::clone(&c.mailbox))
            .collect()
    }

    /// Takes the slow consumers found so far out of their rooms; their
    /// `userLeft` may find more.
    fn evict(&mut self, d: &mut Delivery) {
        while let Some(id) = d.evicted.pop() {
            self.leave_room(id, d);
        }
    }

    fn room_of(&self, id: ClientId) -> Option<String> {
        self.clients.get(&id)?.room.clone()
    }

    fn send_to(&self, id: ClientId, event: &Arc<Outgoing>, d: &mut Delivery) {
        if let Some(client) = self.clients.get(&id) {
            d.push(id, &client.mailbox, event);
        }
    }

    /// Sets the requester's `ack` aside; `finish` queues it last.
    fn send_ack(&self, id: ClientId, ack: Option<u64>, data: &AckData<'_>, d: &mut Delivery) {
        if let Some(ack) = ack {
            d.ack = Some((id, Outgoing::new("ack", data, Some(ack))));
        }
    }

    /// A join of the room the client is already in: same membership; a new
    /// name is told to the others as `userLeft` (old) then `userJoined` (new).
    fn rename(&mut self, id: ClientId, room: &str, username: &str, d: &mut Delivery) {
        let r = self.rooms.get_mut(room).expect("the client's room exists");
        let me = r.member_mut(id);
        if &*me.username == username {
            return;
        }
        let old = std::mem::replace(&mut me.username, username.into());
        r.send_all(&presence("userLeft", room, id, &old), Some(id), d);
        r.send_all(&presence("userJoined", room, id, username), Some(id), d);
    }

    /// Moves the client from its room (if any) into `room`, telling the
    /// members there `userJoined`. False if the client is not registered.
    fn enter(&mut self, id: ClientId, room: &str, username: &str, d: &mut Delivery) -> bool {
        self.leave_room(id, d);
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        client.room = Some(room.to_owned());
        let mailbox = Arc::clone(&client.mailbox);
        let r = self.rooms.entry(room.to_owned()).or_default();
        r.send_all(&presence("userJoined", room, id, username), None, d);
        r.members.push(Member {
            id,
            username: username.into(),
            mailbox,
        });
        true
    }

    /// Takes the client out of its room, telling the others `userLeft`, and
    /// drops the room if it is now empty. Returns the room's name.
    fn leave_room(&mut self, id: ClientId, d: &mut Delivery) -> Option<String> {
        let name = self.clients.get_mut(&id)?.room.take()?;
        let room = self.rooms.get_mut(&name).expect("the client's room exists");
        let at = room.members.iter().position(|m| m.id == id);
        let member = room.members.remove(at.expect("a client's room lists it"));
        if room.members.is_empty() {
            self.rooms.remove(&name);
        } else {
            room.send_all(&presence("userLeft", &name, id, &member.username), None, d);
        }
        Some(name)
    }
}

/// A `userJoined` or `userLeft` event.
fn presence(event: &'static str, room: &str, id: ClientId, username: &str) -> Arc<Outgoing> {
    let data = PresenceData {
        room,
        id: Id(&id),
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
    use crossbeam_channel::{Receiver, Sender};

    /// A mailbox that only records: the registry's view of a client, with no socket.
    struct Recorder(Sender<Arc<Outgoing>>);

    impl Mailbox for Recorder {
        fn push(&self, event: &Arc<Outgoing>) -> Result<bool, Overflow> {
            self.0.send(Arc::clone(event)).map_err(|_| Overflow)?;
            Ok(false)
        }
        fn wake(&self, _: &Round) {}
        fn close(&self, _: u16, _: &str) {}
        fn abort(&self) {}
    }

    /// A registry (history 2) and `n` recorded clients.
    fn setup(n: u64) -> (Registry, Vec<Receiver<Arc<Outgoing>>>) {
        let registry = Registry::new(2, Arc::new(Metrics::default()));
        let receivers = (0..n)
            .map(|i| {
                let (tx, rx) = crossbeam_channel::unbounded();
                registry
                    .connect(ClientId(i), Arc::new(Recorder(tx)))
                    .unwrap();
                rx
            })
            .collect();
        (registry, receivers)
    }

    fn events(rx: &Receiver<Arc<Outgoing>>) -> Vec<&'static str> {
        rx.try_iter().map(|e| e.name).collect()
    }

    #[test]
    fn join_switch_leave_keep_the_invariants() {
        let (registry, rx) = setup(3);
        registry.join(ClientId(0), "a", "x", None, &mut Wakes::default());
        registry.join(ClientId(1), "b", "x", Some(1), &mut Wakes::default());
        registry.join(ClientId(2), "c", "y", None, &mut Wakes::default());
        registry.check_invariants();
        assert_eq!(events(&rx[1]), ["joined", "ack"]);
        assert_eq!(events(&rx[0]), ["joined", "userJoined"]);
        registry.join(ClientId(1), "b", "y", None, &mut Wakes::default());
        registry.check_invariants();
        assert_eq!(events(&rx[0]), ["userLeft"]);
        assert_eq!(
            registry.leave(ClientId(0), None, &mut Wakes::default()),
            Ok(())
        );
        assert_eq!(
            registry.leave(ClientId(0), None, &mut Wakes::default()),
            Err(NotInRoom)
        );
        registry.check_invariants();
        assert_eq!(registry.rooms(), [("y".to_owned(), 2)]);
        registry.disconnect(ClientId(1), &mut Wakes::default());
        registry.disconnect(ClientId(1), &mut Wakes::default());
        registry.check_invariants();
        assert_eq!(registry.rooms(), [("y".to_owned(), 1)]);
    }

    #[test]
    fn a_rename_in_place_is_told_as_left_then_joined() {
        let (registry, rx) = setup(2);
        registry.join(ClientId(0), "a", "x", None, &mut Wakes::default());
        registry.join(ClientId(1), "b", "x", None, &mut Wakes::default());
        registry.join(ClientId(1), "b", "x", Some(5), &mut Wakes::default());
        registry.join(ClientId(1), "bee", "x", None, &mut Wakes::default());
        assert_eq!(
            events(&rx[0]),
            ["joined", "userJoined", "userLeft", "userJoined"]
        );
        assert_eq!(events(&rx[1]), ["joined", "joined", "ack", "joined"]);
        assert_eq!(registry.rooms(), [("x".to_owned(), 2)]);
    }

    #[test]
    fn seq_rises_by_one_and_history_is_bounded() {
        let (registry, _rx) = setup(1);
        assert_eq!(
            registry.chat(ClientId(0), "hi", None, &mut Wakes::default()),
            Err(NotInRoom)
        );
        registry.join(ClientId(0), "a", "x", None, &mut Wakes::default());
        let seqs: Vec<_> = (0..4)
            .map(|_| {
                registry
                    .chat(ClientId(0), "hi", None, &mut Wakes::default())
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let inner = registry.lock();
        let history: Vec<_> = inner.rooms["x"]
            .history
            .iter()
            .map(|m| m.data().contains("\"seq\":3"))
            .collect();
        assert_eq!(history, [true, false]);
    }
}
