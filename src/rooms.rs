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
use std::sync::{Arc, Mutex, MutexGuard};

use crate::codec::Outgoing;
use crate::delivery::{random_tag, unix_millis, ClientId, Fanout, Mailbox, Refused, Wakes};
use crate::metrics::Metrics;
use crate::protocol::{
    resumed_history, AckData, ChatMessageData, Id, JoinedData, LeftData, PresenceData, ServerEvent,
    TypingData, UserInfo,
};

/// Characters of a room's epoch: 16 of `[0-9a-z]`, 82 bits, so two
/// creations of one room name do not draw the same one.
const EPOCH_CHARS: usize = 16;

/// The request needs a room and the client is in none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotInRoom;

impl From<NotInRoom> for Refused {
    fn from(NotInRoom: NotInRoom) -> Refused {
        Refused::NotInRoom
    }
}

pub struct Registry {
    inner: Mutex<Inner>,
    history_limit: usize,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Inner {
    clients: HashMap<ClientId, Registered>,
    rooms: BTreeMap<String, Room>,
}

/// A connected client as the registry knows it.
struct Registered {
    mailbox: Arc<dyn Mailbox>,
    /// The room this client is in, if any; its name there is in the room's member list.
    room: Option<String>,
}

struct Room {
    /// This creation of the room: drawn when it is created, so a client
    /// coming back can tell it from an earlier room of the same name.
    epoch: Arc<str>,
    /// In join order.
    members: Vec<Member>,
    last_seq: u64,
    /// The last `history_limit` chat messages, oldest first: those numbered
    /// `last_seq - history.len() + 1 ..= last_seq`.
    history: VecDeque<Arc<Outgoing>>,
}

struct Member {
    id: ClientId,
    /// Shared with the `joined` snapshots that list it.
    username: Arc<str>,
    /// v3: the verified user (the token's `sub`), on a server with a key.
    user: Option<Arc<str>>,
    mailbox: Arc<dyn Mailbox>,
}

/// What the pushes of one operation left to do.
struct Delivery<'w> {
    fanout: Fanout<'w>,
    /// The requester's `ack`, queued last: after every frame the request
    /// caused for it, the `userLeft` of members it pushed over the edge too.
    ack: Option<(ClientId, Arc<Outgoing>)>,
}

impl Delivery<'_> {
    fn new(wakes: &mut Wakes) -> Delivery<'_> {
        Delivery {
            fanout: Fanout::new(wakes),
            ack: None,
        }
    }
}

impl Room {
    fn new() -> Room {
        Room {
            epoch: random_tag(EPOCH_CHARS).into(),
            members: Vec::new(),
            last_seq: 0,
            history: VecDeque::new(),
        }
    }

    fn member_mut(&mut self, id: ClientId) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.id == id)
            .expect("a client's room lists it as a member")
    }

    fn member(&self, id: ClientId) -> &Member {
        let member = self.members.iter().find(|m| m.id == id);
        member.expect("a client's room lists it as a member")
    }

    /// Queues `event` for every member but `except`.
    fn send_all(&self, event: &Arc<Outgoing>, except: Option<ClientId>, d: &mut Delivery) {
        let members = self.members.iter().map(|m| (m.id, &m.mailbox));
        d.fanout.push_all(members, event, except);
    }

    /// The `joined` answer for `id`: everyone here, and the history (with
    /// `resume`, what came after `since`, if the room still has it all).
    /// Only a snapshot is taken under the lock (names and messages are
    /// shared, not copied); the JSON, which grows with the room, is written
    /// later by the joiner's writer.
    fn joined(
        &self,
        name: &str,
        id: ClientId,
        username: &str,
        resume: Option<(u64, &str)>,
    ) -> Arc<Outgoing> {
        let users: Vec<(ClientId, Arc<str>, Option<Arc<str>>)> = self
            .members
            .iter()
            .map(|m| (m.id, Arc::clone(&m.username), m.user.clone()))
            .collect();
        let (newest, resumed) =
            resumed_history(resume, &self.epoch, self.last_seq, self.history.len());
        let skip = self.history.len() - newest;
        let history: Vec<Arc<Outgoing>> = self.history.iter().skip(skip).cloned().collect();
        let epoch = Arc::clone(&self.epoch);
        let weight = users
            .iter()
            .map(|(_, name, user)| name.len() + user.as_ref().map_or(0, |u| u.len() + 10) + 32)
            .sum::<usize>()
            + history.iter().map(|m| m.weight()).sum::<usize>();
        let (room, username) = (name.to_owned(), username.to_owned());
        Outgoing::joined_later(weight, move || {
            let data = JoinedData {
                room: &room,
                username: &username,
                id: Id(&id),
                users: users
                    .iter()
                    .map(|(id, username, user)| UserInfo {
                        id: Id(id),
                        username,
                        user: user.as_deref(),
                    })
                    .collect(),
                history: history.iter().map(|m| m.raw()).collect(),
                epoch: &epoch,
                resumed,
            };
            ServerEvent::Joined(data).data()
        })
    }
}

impl Registry {
    pub fn new(history_limit: usize, metrics: Arc<Metrics>) -> Registry {
        Registry {
            inner: Mutex::default(),
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
    pub fn connect(&self, id: ClientId, mailbox: Arc<dyn Mailbox>) {
        let client = Registered {
            mailbox,
            room: None,
        };
        self.lock().clients.insert(id, client);
    }

    /// Forgets a client, telling its room `userLeft`. Safe to call twice.
    pub fn disconnect(&self, id: ClientId, wakes: &mut Wakes) {
        let mut inner = self.lock();
        let mut d = Delivery::new(wakes);
        inner.leave_room(id, &mut d);
        inner.clients.remove(&id);
        self.finish(inner, d);
    }

    pub fn in_room(&self, id: ClientId) -> bool {
        self.lock()
            .clients
            .get(&id)
            .is_some_and(|c| c.room.is_some())
    }

    /// `joinRoom`: leaves the current room (unless it is `room`), joins `room`
    /// as `username`, answers `joined` and, with an ack, `ack`. `resume`:
    /// the `since` and `epoch` the client came back with.
    pub fn join(
        &self,
        id: ClientId,
        username: &str,
        room: &str,
        resume: Option<(u64, &str)>,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) {
        self.join_as(id, username, None, room, resume, ack, wakes);
    }

    /// `joinRoom` as [`Registry::join`], for a member who is also the
    /// verified `user` (v3), which every presence and chat event carries.
    #[allow(clippy::too_many_arguments)]
    pub fn join_as(
        &self,
        id: ClientId,
        username: &str,
        user: Option<&str>,
        room: &str,
        resume: Option<(u64, &str)>,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) {
        let mut inner = self.lock();
        let mut d = Delivery::new(wakes);
        if inner.room_of(id).as_deref() == Some(room) {
            inner.rename(id, room, username, &mut d);
        } else if !inner.enter(id, room, username, user, &mut d) {
            // Not registered (cannot happen: a reader joins only between
            // its connect and disconnect); still deliver what leaving queued.
            return self.finish(inner, d);
        }
        let joined = inner.rooms[room].joined(room, id, username, resume);
        inner.send_to(id, &joined, &mut d);
        let data = AckData {
            room: Some(room),
            ..AckData::ok()
        };
        inner.send_ack(id, ack, data, &mut d);
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
        let left = ServerEvent::Left(LeftData { room: &room });
        inner.send_to(id, &Outgoing::event(&left, None), &mut d);
        inner.send_ack(id, ack, AckData::ok(), &mut d);
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
        let member = room.member(id);
        let data = ChatMessageData {
            room: &room_name,
            seq,
            id: Id(&id),
            username: &member.username,
            user: member.user.as_deref(),
            text,
            ts: unix_millis(),
        };
        let event = Outgoing::event(&ServerEvent::ChatMessage(data), None);
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
        inner.send_ack(id, ack, data, &mut d);
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
        let member = room.member(id);
        let data = TypingData {
            room: &room_name,
            id: Id(&id),
            username: &member.username,
            user: member.user.as_deref(),
            typing,
        };
        let event = Outgoing::event(&ServerEvent::Typing(data), None);
        room.send_all(&event, Some(id), &mut d);
        inner.send_ack(id, ack, AckData::ok(), &mut d);
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

    /// True when no client is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().clients.is_empty()
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
    /// Takes the slow consumers found so far out of their rooms; their
    /// `userLeft` may find more.
    fn evict(&mut self, d: &mut Delivery) {
        while let Some(id) = d.fanout.evicted.pop() {
            self.leave_room(id, d);
        }
    }

    fn room_of(&self, id: ClientId) -> Option<String> {
        self.clients.get(&id)?.room.clone()
    }

    fn send_to(&self, id: ClientId, event: &Arc<Outgoing>, d: &mut Delivery) {
        if let Some(client) = self.clients.get(&id) {
            d.fanout.push(id, &client.mailbox, event);
        }
    }

    /// Sets the requester's `ack` aside; `finish` queues it last.
    fn send_ack(&self, id: ClientId, ack: Option<u64>, data: AckData<'_>, d: &mut Delivery) {
        if let Some(ack) = ack {
            d.ack = Some((id, Outgoing::event(&ServerEvent::Ack(data), Some(ack))));
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
        let user = me.user.clone();
        r.send_all(
            &presence(ServerEvent::UserLeft, room, &id, &old, user.as_deref()),
            Some(id),
            d,
        );
        r.send_all(
            &presence(
                ServerEvent::UserJoined,
                room,
                &id,
                username,
                user.as_deref(),
            ),
            Some(id),
            d,
        );
    }

    /// Moves the client from its room (if any) into `room`, telling the
    /// members there `userJoined`. False if the client is not registered.
    fn enter(
        &mut self,
        id: ClientId,
        room: &str,
        username: &str,
        user: Option<&str>,
        d: &mut Delivery,
    ) -> bool {
        self.leave_room(id, d);
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        client.room = Some(room.to_owned());
        let mailbox = Arc::clone(&client.mailbox);
        let r = self.rooms.entry(room.to_owned()).or_insert_with(Room::new);
        r.send_all(
            &presence(ServerEvent::UserJoined, room, &id, username, user),
            None,
            d,
        );
        r.members.push(Member {
            id,
            username: username.into(),
            user: user.map(Arc::from),
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
            let user = member.user.as_deref();
            let left = presence(ServerEvent::UserLeft, &name, &id, &member.username, user);
            room.send_all(&left, None, d);
        }
        Some(name)
    }
}

/// A `userJoined` or `userLeft` event.
fn presence<'a>(
    event: fn(PresenceData<'a>) -> ServerEvent<'a>,
    room: &'a str,
    id: &'a ClientId,
    username: &'a str,
    user: Option<&'a str>,
) -> Arc<Outgoing> {
    let id = Id(id);
    let data = PresenceData {
        room,
        id,
        username,
        user,
    };
    Outgoing::event(&event(data), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Recorder;
    use crossbeam_channel::Receiver;

    /// A registry (history 2) and `n` recorded clients.
    fn setup(n: u64) -> (Registry, Vec<Receiver<Arc<Outgoing>>>) {
        let registry = Registry::new(2, Arc::new(Metrics::default()));
        let receivers = (0..n)
            .map(|i| {
                let (recorder, rx) = Recorder::new();
                registry.connect(ClientId(i), recorder);
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
        registry.join(ClientId(0), "a", "x", None, None, &mut Wakes::default());
        registry.join(ClientId(1), "b", "x", None, Some(1), &mut Wakes::default());
        registry.join(ClientId(2), "c", "y", None, None, &mut Wakes::default());
        registry.check_invariants();
        assert_eq!(events(&rx[1]), ["joined", "ack"]);
        assert_eq!(events(&rx[0]), ["joined", "userJoined"]);
        registry.join(ClientId(1), "b", "y", None, None, &mut Wakes::default());
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
        registry.join(ClientId(0), "a", "x", None, None, &mut Wakes::default());
        registry.join(ClientId(1), "b", "x", None, None, &mut Wakes::default());
        registry.join(ClientId(1), "b", "x", None, Some(5), &mut Wakes::default());
        registry.join(ClientId(1), "bee", "x", None, None, &mut Wakes::default());
        assert_eq!(
            events(&rx[0]),
            ["joined", "userJoined", "userLeft", "userJoined"]
        );
        assert_eq!(events(&rx[1]), ["joined", "joined", "ack", "joined"]);
        assert_eq!(registry.rooms(), [("x".to_owned(), 2)]);
    }

    #[test]
    fn a_verified_member_carries_its_user_in_every_event() {
        let (registry, rx) = setup(2);
        let mut w = Wakes::default();
        registry.join_as(ClientId(0), "Ann", Some("u-a"), "x", None, None, &mut w);
        registry.join(ClientId(1), "bo", "x", None, None, &mut w);
        registry.chat(ClientId(0), "hi", None, &mut w).unwrap();
        registry.typing(ClientId(0), true, None, &mut w).unwrap();
        registry.disconnect(ClientId(0), &mut w);
        let data: Vec<serde_json::Value> = rx[1]
            .try_iter()
            .map(|e| serde_json::from_str(e.data()).unwrap())
            .collect();
        assert_eq!(data[0]["users"][0]["user"], "u-a", "joined.users");
        assert!(
            data[0]["users"][1].get("user").is_none(),
            "bo is not verified"
        );
        for (i, what) in [(1, "chatMessage"), (2, "typing"), (3, "userLeft")] {
            assert_eq!(data[i]["user"], "u-a", "{what}");
        }
        let history = registry.lock().rooms["x"].history[0].data().to_owned();
        assert!(history.contains(r#""user":"u-a""#));
    }

    #[test]
    fn seq_rises_by_one_and_history_is_bounded() {
        let (registry, _rx) = setup(1);
        assert_eq!(
            registry.chat(ClientId(0), "hi", None, &mut Wakes::default()),
            Err(NotInRoom)
        );
        registry.join(ClientId(0), "a", "x", None, None, &mut Wakes::default());
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

    /// The `joined` data a join with `resume` gets, as JSON.
    fn rejoin(
        registry: &Registry,
        rx: &Receiver<Arc<Outgoing>>,
        resume: Option<(u64, &str)>,
    ) -> serde_json::Value {
        registry.join(ClientId(1), "b", "x", resume, None, &mut Wakes::default());
        let joined = rx.try_iter().find(|e| e.name == "joined").expect("joined");
        serde_json::from_str(joined.data()).unwrap()
    }

    #[test]
    fn a_resume_gets_what_came_after_since_and_a_new_room_a_new_epoch() {
        let (registry, rx) = setup(2);
        registry.join(ClientId(0), "a", "x", None, None, &mut Wakes::default());
        for _ in 0..4 {
            registry
                .chat(ClientId(0), "hi", None, &mut Wakes::default())
                .unwrap();
        }
        let plain = rejoin(&registry, &rx[1], None);
        let epoch = plain["epoch"].as_str().unwrap().to_owned();
        assert!(plain.get("resumed").is_none());
        assert_eq!(plain["history"].as_array().unwrap().len(), 2);
        let seqs = |v: &serde_json::Value| -> Vec<u64> {
            v["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect()
        };
        let again = rejoin(&registry, &rx[1], Some((3, &epoch)));
        assert_eq!((seqs(&again), &again["resumed"]), (vec![4], &true.into()));
        let edge = rejoin(&registry, &rx[1], Some((2, &epoch)));
        assert_eq!((seqs(&edge), &edge["resumed"]), (vec![3, 4], &true.into()));
        let gap = rejoin(&registry, &rx[1], Some((1, &epoch)));
        assert_eq!((seqs(&gap), &gap["resumed"]), (vec![3, 4], &false.into()));
        registry.disconnect(ClientId(0), &mut Wakes::default());
        registry.disconnect(ClientId(1), &mut Wakes::default());
        let (recorder, rx1) = Recorder::new();
        registry.connect(ClientId(1), recorder);
        let fresh = rejoin(&registry, &rx1, Some((4, &epoch)));
        assert_ne!(fresh["epoch"], epoch.as_str(), "a room created again");
        assert_eq!((seqs(&fresh), &fresh["resumed"]), (vec![], &false.into()));
    }
}
