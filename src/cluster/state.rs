//! A cluster node's view of its own clients: who is connected here, which
//! room each is in as far as Redis said, and for every room with members on
//! this node its incarnation (`epoch`) and the position of the last event
//! applied. Events numbered by Redis come in through [`State::apply`], which
//! pushes them into the members' mailboxes exactly as the local registry
//! would, or says that one is missing. No I/O: what is left to do once the
//! lock is released is handed back in [`Effects`]. Unit-tested without Redis.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::event::{Event, Kind, Malformed, Pos};
use crate::codec::Outgoing;
use crate::delivery::{ClientId, Fanout, Mailbox, Refused, Wakes};
use crate::protocol::{
    AckData, ChatMessageData, Id, JoinedData, LeftData, PresenceData, ServerEvent, TypingData,
    UserInfo,
};

/// Close code for a client whose room this node can no longer follow: its
/// state was lost in Redis, or events were lost beyond repair. The client
/// reconnects and rejoins (RFC 6455: "Service Restart").
pub(crate) const CLOSE_LOST: u16 = 1012;
const CLOSE_LOST_REASON: &str = "room state lost; rejoin";

/// A client's room as Redis has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    pub(crate) room: String,
    pub(crate) epoch: String,
}

/// A membership to take out of Redis later, by the janitor: a slow consumer
/// cut off by the subscriber (which does no Redis I/O), a disconnect while
/// Redis was unreachable, a join answered after its client had gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leave {
    pub(crate) id: ClientId,
    pub(crate) room: String,
    pub(crate) epoch: String,
}

/// What a reader needs to run a request's script.
pub(crate) struct Request {
    /// The request's number; the subscriber releases the barrier with it.
    pub(crate) q: u64,
    /// The client's last request whose event is on its way (0: none).
    pub(crate) in_flight: u64,
    pub(crate) membership: Option<Membership>,
    pub(crate) barrier: Arc<Barrier>,
}

/// How applying an event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Done,
    /// Already applied (seen again after a repair): dropped.
    Repeat,
    /// Events are missing before this one: the room needs a repair first.
    Gap,
    /// Not a room this node follows.
    Ignored,
}

/// What applying left to do once the state's lock is released.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) wakes: Wakes,
    /// Clients to close with 1012.
    pub(crate) closes: Vec<Arc<dyn Mailbox>>,
    /// Readers to release: up to a request number, or (None) for good.
    pub(crate) releases: Vec<(Arc<Barrier>, Option<u64>)>,
    /// Memberships for the janitor to take out of Redis.
    pub(crate) leaves: Vec<Leave>,
    /// Rooms lost (their members closed with 1012), for the metrics.
    pub(crate) lost: usize,
}

impl Effects {
    /// Does it all: wakes mailboxes, closes, releases readers. No lock held.
    pub(crate) fn run(&mut self) {
        self.wakes.wake_all();
        for mailbox in self.closes.drain(..) {
            mailbox.close(CLOSE_LOST, CLOSE_LOST_REASON);
        }
        for (barrier, q) in self.releases.drain(..) {
            barrier.release(q);
        }
    }
}

/// Where a reader waits until the subscriber applied its request's event:
/// so a cluster node answers like one server, every frame a request causes
/// for its client (the ack last) is queued before the next frame is read.
#[derive(Default)]
pub(crate) struct Barrier {
    state: Mutex<(u64, bool)>,
    signal: Condvar,
}

/// How a wait at the barrier ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    Applied,
    /// The client was closed meanwhile (its room was lost).
    Broken,
    TimedOut,
}

impl Barrier {
    /// Releases waits up to request `q`, or (None) every wait for good.
    fn release(&self, q: Option<u64>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match q {
            Some(q) => state.0 = state.0.max(q),
            None => state.1 = true,
        }
        self.signal.notify_all();
    }

    pub(crate) fn wait(&self, q: u64, timeout: Duration) -> Waited {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if state.0 >= q {
                return Waited::Applied;
            }
            if state.1 {
                return Waited::Broken;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Waited::TimedOut;
            }
            state = self
                .signal
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// A client connected to this node.
struct Local {
    mailbox: Arc<dyn Mailbox>,
    membership: Option<Membership>,
    barrier: Arc<Barrier>,
    /// The last request number handed out.
    q: u64,
    /// The last request Redis carried out: its event is on its way, or applied.
    sent: u64,
    /// The room a join in flight asks for.
    joining: Option<String>,
    /// Closed (1012) or cut off: its requests are refused, nothing more is pushed.
    closed: bool,
}

/// A room with members on this node.
struct Room {
    epoch: String,
    /// The last event applied.
    pos: Pos,
    /// The local members that receive the room's events, in join order.
    members: Vec<(ClientId, Arc<dyn Mailbox>)>,
    /// How many of the room's members Redis attributes to this node: events
    /// keep coming while it is above 0, even once `members` is empty (a
    /// disconnected client's leave still to come).
    ours: u64,
}

/// The node's view. `node` is the node's tag: ids on the wire are `<node>-<n>`.
pub(crate) struct State {
    node: String,
    clients: HashMap<ClientId, Local>,
    rooms: BTreeMap<String, Room>,
}

impl State {
    pub(crate) fn new(node: String) -> State {
        State {
            node,
            clients: HashMap::new(),
            rooms: BTreeMap::new(),
        }
    }

    /// The local client an id on the wire names, if it is one of ours.
    fn local_id(&self, wire: &str) -> Option<ClientId> {
        let n = wire.strip_prefix(self.node.as_str())?.strip_prefix('-')?;
        n.parse().ok().map(ClientId)
    }

    pub(crate) fn connect(&mut self, id: ClientId, mailbox: Arc<dyn Mailbox>) {
        self.clients.insert(
            id,
            Local {
                mailbox,
                membership: None,
                barrier: Arc::default(),
                q: 0,
                sent: 0,
                joining: None,
                closed: false,
            },
        );
    }

    /// Forgets a client; its membership, if any, is for the caller to leave.
    pub(crate) fn disconnect(&mut self, id: ClientId) -> Option<Membership> {
        let client = self.clients.remove(&id)?;
        let membership = client.membership?;
        if let Some(room) = self.rooms.get_mut(&membership.room) {
            room.members.retain(|(m, _)| *m != id);
        }
        Some(membership)
    }

    /// Whether the client is a member of `room`'s incarnation `epoch` here.
    pub(crate) fn is_member(&self, id: ClientId, room: &str, epoch: &str) -> bool {
        self.clients
            .get(&id)
            .and_then(|c| c.membership.as_ref())
            .is_some_and(|m| m.room == room && m.epoch == epoch)
    }

    pub(crate) fn in_room(&self, id: ClientId) -> bool {
        self.clients
            .get(&id)
            .is_some_and(|c| c.membership.is_some())
    }

    pub(crate) fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Starts a request: its number, the client's membership and barrier.
    /// `join` names the room a join asks for; other requests need a room.
    pub(crate) fn begin(&mut self, id: ClientId, join: Option<&str>) -> Result<Request, Refused> {
        let client = self.clients.get_mut(&id).ok_or(Refused::Unavailable)?;
        if join.is_none() && client.membership.is_none() {
            return Err(Refused::NotInRoom);
        }
        if client.closed {
            return Err(Refused::Unavailable);
        }
        client.q += 1;
        client.joining = join.map(str::to_owned);
        Ok(Request {
            q: client.q,
            in_flight: client.sent,
            membership: client.membership.clone(),
            barrier: Arc::clone(&client.barrier),
        })
    }

    /// Request `q` was carried out: its event will come.
    pub(crate) fn sent(&mut self, id: ClientId, q: u64) {
        if let Some(client) = self.clients.get_mut(&id) {
            client.sent = client.sent.max(q);
        }
    }

    /// The client's last request carried out, and the barrier to wait for it at.
    pub(crate) fn issued(&self, id: ClientId) -> Option<(u64, Arc<Barrier>)> {
        let client = self.clients.get(&id)?;
        (client.sent > 0).then(|| (client.sent, Arc::clone(&client.barrier)))
    }

    /// Ends a request, however it went.
    pub(crate) fn end(&mut self, id: ClientId) {
        if let Some(client) = self.clients.get_mut(&id) {
            client.joining = None;
        }
    }

    /// Closes one client with 1012. `forget`: its membership is gone from
    /// Redis too (otherwise its disconnect still leaves).
    pub(crate) fn close(&mut self, id: ClientId, forget: bool, fx: &mut Effects) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if !client.closed {
            client.closed = true;
            fx.closes.push(Arc::clone(&client.mailbox));
        }
        fx.releases.push((Arc::clone(&client.barrier), None));
        let membership = if forget {
            client.membership.take()
        } else {
            client.membership.clone()
        };
        if let Some(m) = membership {
            if let Some(room) = self.rooms.get_mut(&m.room) {
                room.members.retain(|(member, _)| *member != id);
            }
        }
    }

    /// Rooms this node follows, with the epoch and position to repair from.
    pub(crate) fn positions(&self) -> Vec<(String, String, Pos)> {
        self.rooms
            .iter()
            .map(|(name, r)| (name.clone(), r.epoch.clone(), r.pos))
            .collect()
    }

    /// Where room `name` stands, if this node follows it.
    pub(crate) fn position(&self, name: &str) -> Option<(String, Pos)> {
        self.rooms.get(name).map(|r| (r.epoch.clone(), r.pos))
    }

    /// After a new subscriber connection: joins in flight for a room this
    /// node had no state for may have lost their snapshot with the old
    /// connection, and nothing else would tell. Their clients get 1012.
    pub(crate) fn fail_blind_joins(&mut self, fx: &mut Effects) {
        let blind: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                c.joining
                    .as_ref()
                    .is_some_and(|r| !self.rooms.contains_key(r))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in blind {
            self.close(id, false, fx);
        }
    }

    /// A room's state was lost (recreated, deleted, or beyond repair): its
    /// local members get 1012 and the node forgets it. Their memberships go
    /// to the janitor: where the room still exists (events lost beyond its
    /// log) they are real and must leave; where it does not, the leave finds
    /// nothing and does nothing.
    pub(crate) fn lose(&mut self, name: &str, fx: &mut Effects) {
        let Some(room) = self.rooms.remove(name) else {
            return;
        };
        fx.lost += 1;
        for (id, client) in self.clients.iter_mut() {
            let here = client
                .membership
                .as_ref()
                .is_some_and(|m| m.room == name && m.epoch == room.epoch);
            if here || client.joining.as_deref() == Some(name) {
                if let Some(m) = client.membership.take() {
                    fx.leaves.push(Leave {
                        id: *id,
                        room: m.room,
                        epoch: m.epoch,
                    });
                }
                if !client.closed {
                    client.closed = true;
                    fx.closes.push(Arc::clone(&client.mailbox));
                }
                fx.releases.push((Arc::clone(&client.barrier), None));
            }
        }
    }

    /// Redis lost everything (or took this node for dead): every room goes.
    pub(crate) fn lose_all(&mut self, fx: &mut Effects) {
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            self.lose(&name, fx);
        }
        for client in self.clients.values_mut() {
            if client.membership.take().is_some() || client.joining.is_some() {
                if !client.closed {
                    client.closed = true;
                    fx.closes.push(Arc::clone(&client.mailbox));
                }
                fx.releases.push((Arc::clone(&client.barrier), None));
            }
        }
    }

    /// Applies one event of a room: delivers it to the local members in
    /// the room's one order, the origin's ack right after what it caused.
    pub(crate) fn apply(&mut self, ev: &Event<'_>, fx: &mut Effects) -> Applied {
        let origin = self.local_id(ev.origin);
        if ev.own {
            if self.rooms.get(ev.room).is_some_and(|r| r.epoch != ev.epoch) {
                self.lose(ev.room, fx);
            }
        } else if let Some(room) = self.rooms.get(ev.room) {
            if room.epoch != ev.epoch {
                self.lose(ev.room, fx);
                return Applied::Done;
            }
        }
        // Our client's own join of a room this node holds nothing of: its
        // snapshot is where the room starts here; everything before it is
        // in the snapshot, everything after comes live.
        let fresh = ev.own && !self.rooms.contains_key(ev.room);
        if fresh {
            let room = Room {
                epoch: ev.epoch.to_owned(),
                pos: ev.pos,
                members: Vec::new(),
                ours: 0,
            };
            self.rooms.insert(ev.room.to_owned(), room);
        }
        let Some(room) = self.rooms.get_mut(ev.room) else {
            // A leave of our client from a room this node does not follow:
            // its membership here cannot be kept up, so it ends.
            if let Some(id) = origin.filter(|_| matches!(ev.kind, Kind::Leave | Kind::Gone)) {
                if self
                    .clients
                    .get(&id)
                    .is_some_and(|c| c.membership.as_ref().is_some_and(|m| m.room == ev.room))
                {
                    self.close(id, true, fx);
                }
            }
            return Applied::Ignored;
        };
        if !fresh {
            if ev.pos <= room.pos {
                return Applied::Repeat;
            }
            if ev.pos != room.pos.next(ev.kind) {
                return Applied::Gap;
            }
        }
        room.pos = ev.pos;
        let mut wakes = Wakes::default();
        let mut fanout = Fanout::new(&mut wakes);
        if let Err(Malformed(field)) = self.deliver(ev, origin, &mut fanout, fx) {
            log::error!(
                "unreadable {field} in an event of room {:?}; closing it here",
                ev.room
            );
            self.lose(ev.room, fx);
            return Applied::Done;
        }
        let evicted = std::mem::take(&mut fanout.evicted);
        fx.wakes.append(&mut wakes);
        self.finish(ev, origin, evicted, fx);
        if self.rooms.get(ev.room).is_some_and(|r| r.ours == 0) {
            // Our last member is out: no more events come for this room.
            self.rooms.remove(ev.room);
        }
        Applied::Done
    }

    /// Builds the protocol's events from an event's fields, as the local
    /// registry would, and queues them for the local members: the
    /// origin's ack right after what its request caused.
    fn deliver(
        &mut self,
        ev: &Event<'_>,
        origin: Option<ClientId>,
        fanout: &mut Fanout,
        fx: &mut Effects,
    ) -> Result<(), Malformed> {
        let (username, user) = ev.member()?;
        let user = user.as_deref();
        let (room, id) = (ev.room, Id(&ev.origin));
        let presence = PresenceData {
            room,
            id,
            username: &username,
            user,
        };
        match ev.kind {
            Kind::Chat => {
                let chat = ev.chat()?;
                let (_, text) = chat.strings()?;
                let data = ChatMessageData {
                    room,
                    seq: chat.seq,
                    id,
                    username: &username,
                    user,
                    text: &text,
                    ts: chat.ts,
                };
                self.to_room(room, &ServerEvent::ChatMessage(data), None, fanout);
                let ack = AckData {
                    seq: Some(chat.seq),
                    ..AckData::ok()
                };
                self.ack(origin, ev, ack, fanout);
            }
            Kind::Typing => {
                let data = TypingData {
                    room,
                    id,
                    username: &username,
                    user,
                    typing: ev.typing()?,
                };
                self.to_room(room, &ServerEvent::Typing(data), origin, fanout);
                self.ack(origin, ev, AckData::ok(), fanout);
            }
            Kind::Join | Kind::Rename | Kind::Rejoin => {
                match ev.kind {
                    Kind::Join => {
                        let joined = ServerEvent::UserJoined(presence);
                        self.to_room(room, &joined, origin, fanout);
                    }
                    Kind::Rename => {
                        let old = ev.old_username()?;
                        let left = ServerEvent::UserLeft(PresenceData {
                            username: &old,
                            ..presence
                        });
                        self.to_room(room, &left, origin, fanout);
                        let joined = ServerEvent::UserJoined(presence);
                        self.to_room(room, &joined, origin, fanout);
                    }
                    _ => {}
                }
                if let Some(id) = origin {
                    self.joined(id, ev, &username, fanout, fx)?;
                }
            }
            Kind::Leave | Kind::Gone => {
                let r = self.rooms.get_mut(room).expect("checked by apply");
                r.members.retain(|(member, _)| Some(*member) != origin);
                self.to_room(room, &ServerEvent::UserLeft(presence), None, fanout);
                if let Some(id) = origin {
                    self.left(id, ev, fanout, fx);
                }
            }
        }
        Ok(())
    }

    /// Queues `event` for the room's local members but `except`.
    fn to_room(
        &self,
        room: &str,
        event: &ServerEvent<'_>,
        except: Option<ClientId>,
        fanout: &mut Fanout,
    ) {
        let members = &self.rooms[room].members;
        let event = Outgoing::event(event, None);
        fanout.push_all(members.iter().map(|(id, m)| (*id, m)), &event, except);
    }

    /// Queues `event` for one local client, unless it was closed.
    fn to_client(&self, id: ClientId, event: &Arc<Outgoing>, fanout: &mut Fanout) {
        if let Some(client) = self.clients.get(&id).filter(|c| !c.closed) {
            fanout.push(id, &client.mailbox, event);
        }
    }

    /// Queues the origin's ack, if the request had one.
    fn ack(&self, origin: Option<ClientId>, ev: &Event<'_>, data: AckData, fanout: &mut Fanout) {
        if let (Some(id), Some(ack)) = (origin, ev.ack) {
            let event = Outgoing::event(&ServerEvent::Ack(data), Some(ack));
            self.to_client(id, &event, fanout);
        }
    }

    /// Our client `id` is out of the room: it no longer counts here; a
    /// leaveRoom is answered `left` and its ack.
    fn left(&mut self, id: ClientId, ev: &Event<'_>, fanout: &mut Fanout, fx: &mut Effects) {
        let room = self.rooms.get_mut(ev.room).expect("checked by apply");
        room.ours = room.ours.saturating_sub(1);
        if let Some(client) = self.clients.get_mut(&id) {
            if client
                .membership
                .as_ref()
                .is_some_and(|m| m.room == ev.room)
            {
                // A silent leave this node did not ask for: not a switch to
                // another room, not a slow consumer cut off (closed), not a
                // disconnect (gone from `clients`). Someone else took the
                // client out (a reaper that took this node for dead): it
                // must not stay connected outside its room without knowing.
                let switching = client.joining.as_deref().is_some_and(|r| r != ev.room);
                let taken = ev.kind == Kind::Gone && !switching && !client.closed;
                client.membership = None;
                if taken {
                    self.close(id, true, fx);
                }
            }
        }
        if ev.kind == Kind::Leave {
            let left = ServerEvent::Left(LeftData { room: ev.room });
            self.to_client(id, &Outgoing::event(&left, None), fanout);
            self.ack(Some(id), ev, AckData::ok(), fanout);
        }
    }

    /// Our client `id` joined (or rejoined): its membership, and, from the
    /// snapshot its own copy of the event carries, `joined` and the ack.
    fn joined(
        &mut self,
        id: ClientId,
        ev: &Event<'_>,
        username: &str,
        fanout: &mut Fanout,
        fx: &mut Effects,
    ) -> Result<(), Malformed> {
        let room = self.rooms.get_mut(ev.room).expect("checked by apply");
        // A new member counts as ours; so does one rejoining a room this
        // node has just started to follow (the own copy made it fresh):
        // Redis counts it, and no earlier event counted it here.
        if ev.kind == Kind::Join || (ev.own && room.ours == 0) {
            room.ours += 1;
        }
        let epoch = room.epoch.clone();
        let Some(client) = self.clients.get_mut(&id) else {
            // Gone before its join came back: Redis still counts it.
            if ev.kind == Kind::Join {
                fx.leaves.push(Leave {
                    id,
                    room: ev.room.to_owned(),
                    epoch,
                });
            }
            return Ok(());
        };
        client.membership = Some(Membership {
            room: ev.room.to_owned(),
            epoch,
        });
        if !ev.own || client.closed {
            // Our own join, repaired from the log: the snapshot travelled
            // only in the own copy, which is lost. The membership is real
            // (its disconnect leaves), the client must rejoin.
            self.close(id, false, fx);
            return Ok(());
        }
        let mailbox = Arc::clone(&client.mailbox);
        let room = self.rooms.get_mut(ev.room).expect("checked by apply");
        if !room.members.iter().any(|(m, _)| *m == id) {
            room.members.push((id, mailbox));
        }
        let joined = match snapshot(ev, username) {
            Ok(joined) => joined,
            Err(e) => {
                self.close(id, false, fx);
                return Err(e);
            }
        };
        self.to_client(id, &joined, fanout);
        let ack = AckData {
            room: Some(ev.room),
            ..AckData::ok()
        };
        self.ack(Some(id), ev, ack, fanout);
        Ok(())
    }

    /// Hands the origin's reader its release, and cuts off slow consumers:
    /// out of the local room now, out of Redis by the janitor (whose leave
    /// tells every node `userLeft`).
    fn finish(
        &mut self,
        ev: &Event<'_>,
        origin: Option<ClientId>,
        evicted: Vec<ClientId>,
        fx: &mut Effects,
    ) {
        if let Some(client) = origin.and_then(|id| self.clients.get(&id)) {
            if ev.q > 0 {
                fx.releases.push((Arc::clone(&client.barrier), Some(ev.q)));
            }
        }
        for id in evicted {
            let Some(client) = self.clients.get_mut(&id) else {
                continue;
            };
            client.closed = true;
            if let Some(m) = client.membership.take() {
                if let Some(room) = self.rooms.get_mut(&m.room) {
                    room.members.retain(|(member, _)| *member != id);
                }
                fx.leaves.push(Leave {
                    id,
                    room: m.room,
                    epoch: m.epoch,
                });
            }
            fx.releases.push((Arc::clone(&client.barrier), None));
        }
    }

    /// Panics unless every member listed in a room is a client of that
    /// room, at most once. For the unit tests.
    #[cfg(test)]
    fn check_invariants(&self) {
        for (name, room) in &self.rooms {
            for (id, _) in &room.members {
                let m = self.clients[id]
                    .membership
                    .as_ref()
                    .expect("a member has a room");
                assert_eq!(&m.room, name);
                assert_eq!(room.members.iter().filter(|(x, _)| x == id).count(), 1);
            }
        }
    }
}

/// The `joined` answer an own join's snapshot makes: built now, on the
/// subscriber thread, from the fields Redis read in the join's atomic step
/// (with a `since`, join.lua already chose the history and `resumed`).
fn snapshot(ev: &Event<'_>, username: &str) -> Result<Arc<Outgoing>, Malformed> {
    let users = ev.users()?;
    let mut history = Vec::new();
    for record in ev.history()? {
        let (username, text) = record.strings()?;
        let user = record.user()?;
        let data = ChatMessageData {
            room: ev.room,
            seq: record.seq,
            id: Id(&record.id),
            username: &username,
            user: user.as_deref(),
            text: &text,
            ts: record.ts,
        };
        history.push(ServerEvent::ChatMessage(data).data());
    }
    let data = JoinedData {
        room: ev.room,
        username,
        id: Id(&ev.origin),
        users: users
            .iter()
            .map(|(id, username, user)| UserInfo {
                id: Id(id),
                username,
                user: user.as_deref(),
            })
            .collect(),
        history: history.iter().map(|h| &**h).collect(),
        epoch: ev.epoch,
        resumed: ev.resumed,
    };
    Ok(Outgoing::event(&ServerEvent::Joined(data), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Recorder;
    use crossbeam_channel::Receiver;

    /// A node "a" with `n` clients, ids 1..=n.
    fn setup(n: u64) -> (State, Vec<Receiver<Arc<Outgoing>>>) {
        let mut state = State::new("a".into());
        let rx = (1..=n)
            .map(|i| {
                let (recorder, rx) = Recorder::new();
                state.connect(ClientId(i), recorder);
                rx
            })
            .collect();
        (state, rx)
    }

    fn names(rx: &Receiver<Arc<Outgoing>>) -> Vec<&'static str> {
        rx.try_iter().map(|e| e.name).collect()
    }

    /// The `name` and `body` fields of a presence event.
    fn pres(name: &str) -> String {
        format!("\"{name}\"\n")
    }

    /// The `name` and `body` fields of a chat message.
    fn chat(name: &str, text: &str) -> String {
        format!("\"{name}\"\n1\t\"{text}\"")
    }

    /// An event text of room r: kind, epoch, seq, k, origin, q (also the
    /// ack), then `name` and `body` (see `pres` and `chat`); no snapshot.
    fn ev(kind: &str, epoch: &str, seq: u64, k: u64, origin: &str, q: u64, fields: &str) -> String {
        format!("{kind}\nr\n{epoch}\n{seq}\n{k}\n{origin}\n{q}\n{q}\n{fields}\n\n\n")
    }

    fn apply(state: &mut State, text: &str) -> (Applied, Effects) {
        let mut fx = Effects::default();
        let applied = state.apply(&Event::parse(text).unwrap(), &mut fx);
        state.check_invariants();
        (applied, fx)
    }

    #[test]
    fn own_join_then_chat_from_elsewhere_then_leave_drops_the_room() {
        let (mut s, rx) = setup(2);
        s.begin(ClientId(1), Some("r")).unwrap();
        let (a, fx) = apply(&mut s, &ev("J", "e", 3, 7, "a-1", 1, &pres("ann")));
        assert_eq!(a, Applied::Done);
        assert_eq!(fx.releases.len(), 1);
        assert_eq!(names(&rx[0]), ["joined", "ack"]);
        assert!(s.in_room(ClientId(1)));
        let chat = &chat("bo", "hi");
        assert_eq!(
            apply(&mut s, &ev("m", "e", 4, 7, "b-1", 0, chat)).0,
            Applied::Done
        );
        assert_eq!(
            apply(&mut s, &ev("m", "e", 4, 7, "b-1", 0, chat)).0,
            Applied::Repeat
        );
        assert_eq!(
            apply(&mut s, &ev("m", "e", 6, 7, "b-1", 0, chat)).0,
            Applied::Gap
        );
        assert_eq!(names(&rx[0]), ["chatMessage"]);
        assert_eq!(names(&rx[1]), Vec::<&str>::new(), "not a member");
        assert_eq!(
            apply(&mut s, &ev("l", "e", 4, 8, "a-1", 2, &pres("ann"))).0,
            Applied::Done
        );
        assert_eq!(names(&rx[0]), ["left", "ack"]);
        assert_eq!(s.room_count(), 0);
        assert!(!s.in_room(ClientId(1)));
    }

    #[test]
    fn another_epoch_is_a_lost_room_and_closes_its_members() {
        let (mut s, _rx) = setup(1);
        apply(&mut s, &ev("J", "e", 0, 1, "a-1", 1, &pres("ann")));
        let (a, fx) = apply(&mut s, &ev("t", "f", 0, 2, "b-1", 0, "\"bo\"\ntrue"));
        assert_eq!((a, fx.closes.len(), fx.lost), (Applied::Done, 1, 1));
        assert_eq!(s.room_count(), 0);
        assert_eq!(s.begin(ClientId(1), None).err(), Some(Refused::NotInRoom));
        assert_eq!(
            s.begin(ClientId(1), Some("x")).err(),
            Some(Refused::Unavailable)
        );
    }

    #[test]
    fn our_join_without_its_snapshot_closes_the_joiner_but_keeps_its_membership() {
        let (mut s, rx) = setup(2);
        apply(&mut s, &ev("J", "e", 0, 1, "a-1", 1, &pres("ann")));
        names(&rx[0]);
        let (_, fx) = apply(&mut s, &ev("j", "e", 0, 2, "a-2", 1, &pres("cy")));
        assert_eq!(names(&rx[0]), ["userJoined"]);
        assert_eq!(fx.closes.len(), 1);
        assert!(names(&rx[1]).is_empty());
        assert_eq!(s.disconnect(ClientId(2)).map(|m| m.room), Some("r".into()));
    }

    #[test]
    fn typing_skips_the_sender_and_rename_is_left_then_joined() {
        let (mut s, rx) = setup(2);
        apply(&mut s, &ev("J", "e", 0, 1, "a-1", 1, &pres("ann")));
        apply(&mut s, &ev("J", "e", 0, 2, "a-2", 1, &pres("cy")));
        names(&rx[0]);
        names(&rx[1]);
        let typing = "\"ann\"\ntrue";
        apply(&mut s, &ev("t", "e", 0, 3, "a-1", 2, typing));
        assert_eq!(
            (names(&rx[0]), names(&rx[1])),
            (vec!["ack"], vec!["typing"])
        );
        let rename = "R\nr\ne\n0\n4\na-1\n3\n3\n\"anna\"\n\"ann\"\na-1\t\"anna\"\ta-2\t\"cy\"\n\n";
        apply(&mut s, rename);
        let got: Vec<_> = rx[0].try_iter().collect();
        assert_eq!(
            got.iter().map(|e| e.name).collect::<Vec<_>>(),
            ["joined", "ack"]
        );
        assert_eq!(
            got[0].data(),
            r#"{"room":"r","username":"anna","id":"a-1","users":[{"id":"a-1","username":"anna"},{"id":"a-2","username":"cy"}],"history":[],"epoch":"e"}"#
        );
        let got: Vec<_> = rx[1].try_iter().collect();
        assert_eq!(
            got.iter().map(|e| e.data()).collect::<Vec<_>>(),
            [
                r#"{"room":"r","id":"a-1","username":"ann"}"#,
                r#"{"room":"r","id":"a-1","username":"anna"}"#
            ]
        );
        assert_eq!((got[0].name, got[1].name), ("userLeft", "userJoined"));
    }

    #[test]
    fn a_silent_leave_nobody_here_asked_for_closes_our_member_but_a_switch_does_not() {
        let (mut s, rx) = setup(2);
        apply(&mut s, &ev("J", "e", 0, 1, "a-1", 1, &pres("ann")));
        apply(&mut s, &ev("J", "e", 0, 2, "a-2", 1, &pres("cy")));
        names(&rx[0]);
        // a-1 switches rooms: its old room hears it leave first
        s.begin(ClientId(1), Some("elsewhere")).unwrap();
        let (_, fx) = apply(&mut s, &ev("s", "e", 0, 3, "a-1", 0, &pres("ann")));
        assert!(fx.closes.is_empty(), "a switch is not a loss");
        s.end(ClientId(1));
        // a reaper takes a-2 out: it is told, with 1012
        let (_, fx) = apply(&mut s, &ev("s", "e", 0, 4, "a-2", 0, &pres("cy")));
        assert_eq!(fx.closes.len(), 1);
        assert!(!s.in_room(ClientId(2)));
        assert_eq!(s.disconnect(ClientId(2)), None, "nothing left to leave");
    }

    #[test]
    fn an_own_rejoin_of_a_room_not_followed_here_follows_it() {
        let (mut s, rx) = setup(1);
        let rejoin = "N\nr\ne\n0\n5\na-1\n1\n1\n\"ann\"\n\na-1\t\"ann\"\n\n";
        apply(&mut s, rejoin);
        assert_eq!(names(&rx[0]), ["joined", "ack"]);
        assert_eq!(s.room_count(), 1, "the room is followed");
        let (a, _) = apply(&mut s, &ev("t", "e", 0, 6, "b-1", 0, "\"bo\"\ntrue"));
        assert_eq!((a, names(&rx[0])), (Applied::Done, vec!["typing"]));
    }

    #[test]
    fn a_leave_of_our_member_from_a_room_not_followed_ends_its_membership() {
        let (mut s, _rx) = setup(1);
        apply(&mut s, &ev("J", "e", 0, 1, "a-1", 1, &pres("ann")));
        s.rooms.clear();
        let (a, fx) = apply(&mut s, &ev("s", "e", 0, 2, "a-1", 0, &pres("ann")));
        assert_eq!((a, fx.closes.len()), (Applied::Ignored, 1));
        assert!(!s.in_room(ClientId(1)));
    }

    #[test]
    fn a_disconnected_members_leave_still_counts_and_losing_everything_closes_members() {
        let (mut s, _rx) = setup(2);
        apply(&mut s, &ev("J", "e", 0, 1, "a-1", 1, &pres("ann")));
        apply(&mut s, &ev("J", "e", 0, 2, "a-2", 1, &pres("cy")));
        assert!(s.disconnect(ClientId(1)).is_some());
        apply(&mut s, &ev("s", "e", 0, 3, "a-1", 0, &pres("ann")));
        assert_eq!(s.room_count(), 1, "a-2 is still here");
        let mut fx = Effects::default();
        s.lose_all(&mut fx);
        assert_eq!((fx.closes.len(), s.room_count()), (1, 0));
        assert!(!s.in_room(ClientId(2)));
    }

    #[test]
    fn barriers_release_in_order_or_break() {
        let b = Barrier::default();
        b.release(Some(2));
        assert_eq!(b.wait(2, Duration::ZERO), Waited::Applied);
        assert_eq!(b.wait(3, Duration::from_millis(1)), Waited::TimedOut);
        b.release(None);
        assert_eq!(b.wait(3, Duration::ZERO), Waited::Broken);
    }

    /// Pub/sub loses and (after a repair) repeats events; whatever it does,
    /// a member's `seq` run is gap-free, or it is closed (1012) and gets
    /// nothing more. The repair here is the subscriber's: the log's events
    /// after the room's position, of which only the last `kept` are left.
    mod no_silent_gap {
        use super::*;
        use proptest::prelude::*;

        /// Event texts of one room after our member's own join at (0, 1):
        /// chats (`true`) and typings from node b.
        fn log(kinds: &[bool]) -> Vec<String> {
            let (mut seq, mut k) = (0, 1);
            let mut out = vec![ev("J", "e", 0, 1, "a-1", 1, &pres("ann"))];
            for (i, is_chat) in kinds.iter().enumerate() {
                if *is_chat {
                    seq += 1;
                    out.push(ev("m", "e", seq, k, "b-1", 0, &chat("b", &i.to_string())));
                } else {
                    k += 1;
                    out.push(ev("t", "e", seq, k, "b-1", 0, "\"b\"\ntrue"));
                }
            }
            out
        }

        proptest! {
            #[test]
            fn losses_and_repeats_never_make_a_silent_gap(
                kinds in proptest::collection::vec(any::<bool>(), 1..60),
                fate in proptest::collection::vec(0u8..10, 60),
                kept in 1usize..40,
            ) {
                let log = log(&kinds);
                let (mut s, rx) = setup(1);
                let closes = std::cell::Cell::new(0);
                let run = |s: &mut State, text: &str| {
                    let mut fx = Effects::default();
                    let applied = s.apply(&Event::parse(text).unwrap(), &mut fx);
                    closes.set(closes.get() + fx.closes.len());
                    applied
                };
                run(&mut s, &log[0]);
                for (i, text) in log.iter().enumerate().skip(1) {
                    // 0-2: lost; 3: delivered twice; else delivered once
                    let copies = match fate[i % fate.len()] { 0..=2 => 0, 3 => 2, _ => 1 };
                    for _ in 0..copies {
                        if run(&mut s, text) != Applied::Gap {
                            continue;
                        }
                        // repair: what the log still holds after our position
                        let Some((_, from)) = s.position("r") else { break };
                        let first_kept = log.len().saturating_sub(kept);
                        for entry in log.iter().skip(first_kept) {
                            if Event::parse(entry).unwrap().pos <= from { continue; }
                            if run(&mut s, entry) == Applied::Gap {
                                let mut fx = Effects::default();
                                s.lose("r", &mut fx);
                                closes.set(closes.get() + fx.closes.len());
                                break;
                            }
                        }
                    }
                }
                let seqs: Vec<u64> = rx[0]
                    .try_iter()
                    .filter(|e| e.name == "chatMessage")
                    .map(|e| serde_json::from_str::<serde_json::Value>(e.data()).unwrap()["seq"].as_u64().unwrap())
                    .collect();
                for pair in seqs.windows(2) {
                    prop_assert_eq!(pair[1], pair[0] + 1, "a silent gap in {:?}", seqs);
                }
                if closes.get() == 0 {
                    // not closed: it saw every chat up to where the room stands
                    let (_, pos) = s.position("r").expect("still followed");
                    prop_assert_eq!(seqs.last().copied().unwrap_or(0), pos.seq);
                    if let Some(first) = seqs.first() { prop_assert_eq!(*first, 1); }
                }
            }
        }
    }
}
