//! What both room engines share, below them: how they reach their clients
//! (the [`Mailbox`] trait, a client's outbound queue as the engines see it;
//! a [`Fanout`] that pushes one event to many mailboxes and collects what is
//! left to do once the engine's lock is released), the [`Roster`] of every
//! connected client that shutdown closes, what a request can be refused
//! with, the clock events are stamped with, and random tags (room epochs). No engine state here:
//! `rooms` and `cluster` build on it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::codec::Outgoing;

/// A connection's identity, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A member's queue is past its bounds: the member is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Why a room request was not carried out, by either engine (the local
/// registry, or the cluster's). Validation stays in `session`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The request needs a room and the client is in none.
    NotInRoom,
    /// Redis is unreachable (cluster only): nothing was done.
    Unavailable,
}

/// Shutdown has begun: no client may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing;

/// How an engine reaches a client: its outbound queue. The server's is
/// `outbox::Outbox`; tests and the fuzz target use a [`Recorder`].
pub trait Mailbox: Send + Sync {
    /// Queues `event`. Called under the engine's lock, so it must not
    /// block, log or do I/O. `Ok(true)` asks for [`Mailbox::wake`] once the
    /// lock is released; `Err(Overflow)` drops the event, and the engine
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

/// Where a wake stands in one thread's pass over the mailboxes one
/// operation woke (counts only). A mailbox may write on the waking thread
/// in a small round, and spread a big one over more threads (the outbox's
/// pool).
#[derive(Clone, Copy, Debug)]
pub struct Round {
    woken_before: usize,
    size: usize,
}

impl Round {
    /// A wake on its own: a round of one.
    pub fn first() -> Round {
        Round {
            woken_before: 0,
            size: 1,
        }
    }

    /// How many mailboxes this round woke before this one.
    pub fn woken_before(self) -> usize {
        self.woken_before
    }

    /// How many mailboxes this round wakes in all.
    pub fn size(self) -> usize {
        self.size
    }
}

/// Mailboxes to wake once no lock is held: what engine operations hand
/// back. The caller wakes them when it suits it (a reader, after the
/// message it is handling; so the writing happens at the top of its stack,
/// and what several requests queued for one client goes out together).
#[derive(Default)]
pub struct Wakes(Vec<Arc<dyn Mailbox>>);

impl Wakes {
    pub(crate) fn add(&mut self, mailbox: &Arc<dyn Mailbox>) {
        self.0.push(Arc::clone(mailbox));
    }

    /// Takes over the wakes `other` collected.
    pub(crate) fn append(&mut self, other: &mut Wakes) {
        self.0.append(&mut other.0);
    }

    /// Wakes every mailbox collected so far.
    pub fn wake_all(&mut self) {
        let size = self.0.len();
        for (woken_before, mailbox) in self.0.drain(..).enumerate() {
            mailbox.wake(&Round { woken_before, size });
        }
    }
}

/// The pushes of one engine operation, under the engine's lock: the
/// mailboxes to wake once it is released, and the slow consumers found,
/// which the engine takes out of their rooms.
pub(crate) struct Fanout<'w> {
    pub(crate) wakes: &'w mut Wakes,
    pub(crate) evicted: Vec<ClientId>,
}

impl Fanout<'_> {
    pub(crate) fn new(wakes: &mut Wakes) -> Fanout<'_> {
        Fanout {
            wakes,
            evicted: Vec::new(),
        }
    }

    /// Queues `event` for one client.
    pub(crate) fn push(&mut self, id: ClientId, mailbox: &Arc<dyn Mailbox>, event: &Arc<Outgoing>) {
        match mailbox.push(event) {
            Ok(false) => {}
            Ok(true) => self.wakes.add(mailbox),
            Err(Overflow) => {
                self.evicted.push(id);
                self.wakes.add(mailbox);
            }
        }
    }

    /// Queues `event` for every member but `except`.
    pub(crate) fn push_all<'m>(
        &mut self,
        members: impl IntoIterator<Item = (ClientId, &'m Arc<dyn Mailbox>)>,
        event: &Arc<Outgoing>,
        except: Option<ClientId>,
    ) {
        for (id, mailbox) in members {
            if Some(id) != except {
                self.push(id, mailbox, event);
            }
        }
    }
}

/// Every connected client's mailbox, whatever the engine: what shutdown
/// closes, and waits to see empty. Refuses new clients once closing began,
/// so none misses its Close.
#[derive(Default)]
pub(crate) struct Roster {
    inner: Mutex<RosterInner>,
    /// Signalled whenever a client goes, for `wait_empty`.
    emptied: Condvar,
}

#[derive(Default)]
struct RosterInner {
    mailboxes: HashMap<ClientId, Arc<dyn Mailbox>>,
    closing: bool,
}

impl Roster {
    fn lock(&self) -> MutexGuard<'_, RosterInner> {
        // Nothing under this lock can panic half-way through a change.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sizes the table for `clients` up front: it never rehashes while
    /// clients pour in. It costs address space, not RSS, until used.
    pub(crate) fn reserve(&self, clients: usize) {
        self.lock().mailboxes.reserve(clients);
    }

    pub(crate) fn connect(&self, id: ClientId, mailbox: Arc<dyn Mailbox>) -> Result<(), Closing> {
        let mut inner = self.lock();
        if inner.closing {
            return Err(Closing);
        }
        inner.mailboxes.insert(id, mailbox);
        Ok(())
    }

    pub(crate) fn disconnect(&self, id: ClientId) {
        self.lock().mailboxes.remove(&id);
        self.emptied.notify_all();
    }

    /// Shutdown: no more clients; queues a Close with `code` for each. The
    /// mailboxes are copied out first: closing may start a writer, not a
    /// thing to do under a lock.
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        let mailboxes: Vec<_> = {
            let mut inner = self.lock();
            inner.closing = true;
            inner.mailboxes.values().cloned().collect()
        };
        for mailbox in mailboxes {
            mailbox.close(code, reason);
        }
    }

    /// Cuts every remaining connection at the socket.
    pub(crate) fn abort_all(&self) {
        let mailboxes: Vec<_> = self.lock().mailboxes.values().cloned().collect();
        for mailbox in mailboxes {
            mailbox.abort();
        }
    }

    /// Waits until no client is connected, or until `timeout`. True if empty.
    pub(crate) fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        while !inner.mailboxes.is_empty() {
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
}

/// The wall clock in ms since 1970: a chat message's `ts`.
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `len` random characters from `[0-9a-z]`: room epochs (both engines),
/// and a cluster's node tags (10: 51 bits, so 10,000 node starts collide
/// with probability ~2e-8) and generations.
pub(crate) fn random_tag(len: usize) -> String {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = vec![0u8; len];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: the clock's nanoseconds, mixed, are still
        // unlikely to repeat between two nodes.
        let mut x = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        for b in &mut bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// A mailbox that only records what is pushed into it: an engine's view
/// of a client, with no socket. For the engines' unit tests and the fuzz
/// target.
#[doc(hidden)]
pub struct Recorder(crossbeam_channel::Sender<Arc<Outgoing>>);

impl Recorder {
    /// A recorder and the receiving end of what it records.
    pub fn new() -> (Arc<Recorder>, crossbeam_channel::Receiver<Arc<Outgoing>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Arc::new(Recorder(tx)), rx)
    }
}

impl Mailbox for Recorder {
    fn push(&self, event: &Arc<Outgoing>) -> Result<bool, Overflow> {
        // A dropped receiver stands for a client that stopped reading.
        self.0.send(Arc::clone(event)).map_err(|_| Overflow)?;
        Ok(false)
    }
    fn wake(&self, _: &Round) {}
    fn close(&self, _: u16, _: &str) {}
    fn abort(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{LeftData, ServerEvent};

    fn event() -> Arc<Outgoing> {
        Outgoing::event(&ServerEvent::Left(LeftData { room: "r" }), None)
    }

    #[test]
    fn a_fanout_skips_the_excepted_and_evicts_the_full() {
        let (a, ra) = Recorder::new();
        let (b, rb) = Recorder::new();
        drop(rb); // b stopped reading: its pushes overflow
        let (a, b): (Arc<dyn Mailbox>, Arc<dyn Mailbox>) = (a, b);
        let mut wakes = Wakes::default();
        let mut fanout = Fanout::new(&mut wakes);
        let members = [(ClientId(1), &a), (ClientId(2), &b)];
        fanout.push_all(members, &event(), None);
        fanout.push_all(members, &event(), Some(ClientId(1)));
        assert_eq!(fanout.evicted, [ClientId(2), ClientId(2)]);
        assert_eq!(ra.try_iter().count(), 1);
    }

    #[test]
    fn the_roster_refuses_clients_once_closing() {
        let roster = Roster::default();
        let (a, _ra) = Recorder::new();
        roster.connect(ClientId(1), a.clone()).unwrap();
        assert!(!roster.wait_empty(Duration::ZERO));
        roster.close_all(1001, "bye");
        assert_eq!(roster.connect(ClientId(2), a), Err(Closing));
        roster.disconnect(ClientId(1));
        assert!(roster.wait_empty(Duration::ZERO));
    }
}
