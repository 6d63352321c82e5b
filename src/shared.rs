//! What every thread of the server shares: the settings, the rooms (the
//! local registry, or the cluster's), the metrics, the admission of clients
//! up to `--max-connections`, and the table of every socket the server holds.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocketConfig;

use crate::auth::Verifier;
use crate::cluster::Cluster;
use crate::config::{Config, Origins};
use crate::delivery::{ClientId, Closing, Mailbox, Refused, Roster, Wakes};
use crate::metrics::Metrics;
use crate::outbox::Pool;
use crate::rooms::Registry;

pub(crate) struct Shared {
    pub(crate) config: Config,
    /// `--max-connections`, lowered if the kernel's memory-map limit could
    /// not hold that many clients (see `server::capacity`).
    pub(crate) max_connections: usize,
    pub(crate) rooms: Rooms,
    /// v3: the keys tokens are checked with; none in the demo mode.
    pub(crate) verifier: Option<Verifier>,
    pub(crate) metrics: Arc<Metrics>,
    /// Origins allowed to open a WebSocket (see `Config::handshake_origins_for`).
    pub(crate) handshake_origins: Origins,
    pub(crate) ws_config: WebSocketConfig,
    /// Every socket accepted on either port and not yet closed.
    pub(crate) sockets: Arc<Sockets>,
    /// The delivery workers that help write big rounds (see `outbox`).
    pub(crate) pool: Arc<Pool>,
    /// Places taken under `--max-connections` (see `Admission`).
    admitted: Arc<AtomicUsize>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    /// Wakes the threads that wait on a timer (`pause`) when stopping.
    stopped: (Mutex<bool>, Condvar),
}

impl Shared {
    /// Shared state for a single node, or for a cluster node (`cluster`).
    pub(crate) fn new(
        config: Config,
        capacity: Capacity,
        metrics: Arc<Metrics>,
        handshake_origins: Origins,
        cluster: Option<Cluster>,
        verifier: Option<Verifier>,
    ) -> Shared {
        let max_connections = capacity.clients;
        let ws_config = WebSocketConfig::default()
            // Small reads: a connection's buffer is resident for its whole
            // life, and chat frames are small.
            .read_buffer_size(512)
            .write_buffer_size(0)
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let engine = match cluster {
            Some(cluster) => Engine::Cluster(cluster),
            None => {
                let registry = Registry::new(config.history, Arc::clone(&metrics));
                registry.reserve_clients(max_connections);
                Engine::Local(registry)
            }
        };
        let roster = Roster::default();
        roster.reserve(max_connections);
        let rooms = Rooms { engine, roster };
        Shared {
            config,
            max_connections,
            rooms,
            verifier,
            metrics,
            handshake_origins,
            ws_config,
            sockets: Arc::new(Sockets::new(capacity.sockets)),
            pool: Arc::new(Pool::new()),
            admitted: Arc::default(),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            stopped: (Mutex::new(false), Condvar::new()),
        }
    }

    pub(crate) fn next_client_id(&self) -> ClientId {
        ClientId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Marks the server as stopping; true for the first caller only.
    pub(crate) fn stop(&self) -> bool {
        let first = !self.stopping.swap(true, Ordering::SeqCst);
        self.pool.stop();
        let (stopped, wake) = &self.stopped;
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        first
    }

    /// Waits `period`, or less if the server stops meanwhile; false then.
    pub(crate) fn pause(&self, period: Duration) -> bool {
        let (stopped, wake) = &self.stopped;
        let guard = stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = wake
            .wait_timeout_while(guard, period, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        !*guard
    }

    /// How long writing one answer may take: a peer that does not read
    /// holds its own thread this long, and nobody else.
    pub(crate) fn answer_deadline(&self) -> Instant {
        Instant::now() + self.config.idle_timeout
    }

    /// A place for one more client, unless `max_connections` are taken.
    pub(crate) fn admit(&self) -> Option<Admission> {
        let max = self.max_connections;
        self.admitted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Admission(Arc::clone(&self.admitted)))
    }
}

/// The rooms, whichever engine holds them, and the roster of every
/// connected client that shutdown closes.
pub(crate) struct Rooms {
    engine: Engine,
    roster: Roster,
}

/// Where rooms live: in this process (the registry), or in Redis, shared by
/// every node of a cluster. The one seam between the two engines: each call
/// is a `match`, so the single-node path stays the registry's own code, with
/// no indirection added.
enum Engine {
    Local(Registry),
    Cluster(Cluster),
}

impl Rooms {
    /// A client's id on the wire: `42` on a single node, `<node tag>-42` in
    /// a cluster, so that ids stay unique across nodes and Redis restarts.
    pub(crate) fn wire_id(&self, id: ClientId) -> WireId<'_> {
        match &self.engine {
            Engine::Local(_) => WireId(None, id),
            Engine::Cluster(c) => WireId(Some(c.tag()), id),
        }
    }

    /// Registers a connected client, not yet in a room; refused once
    /// shutdown has begun (the client would miss its Close).
    pub(crate) fn connect(&self, id: ClientId, mailbox: Arc<dyn Mailbox>) -> Result<(), Closing> {
        self.roster.connect(id, Arc::clone(&mailbox))?;
        match &self.engine {
            Engine::Local(r) => r.connect(id, mailbox),
            Engine::Cluster(c) => c.connect(id, mailbox),
        }
        Ok(())
    }

    /// Forgets a client, telling its room `userLeft`. Safe to call twice.
    pub(crate) fn disconnect(&self, id: ClientId, wakes: &mut Wakes) {
        match &self.engine {
            Engine::Local(r) => r.disconnect(id, wakes),
            Engine::Cluster(c) => c.disconnect(id),
        }
        self.roster.disconnect(id);
    }

    pub(crate) fn in_room(&self, id: ClientId) -> bool {
        match &self.engine {
            Engine::Local(r) => r.in_room(id),
            Engine::Cluster(c) => c.in_room(id),
        }
    }

    /// `joinRoom`, as `username` (and, verified, as `user`). In a cluster,
    /// returns once every frame it caused for this client is queued, like
    /// the registry (see `cluster`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn join(
        &self,
        id: ClientId,
        username: &str,
        user: Option<&str>,
        room: &str,
        resume: Option<(u64, &str)>,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) -> Result<(), Refused> {
        match &self.engine {
            Engine::Local(r) => {
                r.join_as(id, username, user, room, resume, ack, wakes);
                Ok(())
            }
            Engine::Cluster(c) => c.join(id, username, user, room, resume, ack),
        }
    }

    pub(crate) fn chat(
        &self,
        id: ClientId,
        text: &str,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) -> Result<(), Refused> {
        match &self.engine {
            Engine::Local(r) => r
                .chat(id, text, ack, wakes)
                .map(drop)
                .map_err(Refused::from),
            Engine::Cluster(c) => c.chat(id, text, ack),
        }
    }

    pub(crate) fn typing(
        &self,
        id: ClientId,
        typing: bool,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) -> Result<(), Refused> {
        match &self.engine {
            Engine::Local(r) => r.typing(id, typing, ack, wakes).map_err(Refused::from),
            Engine::Cluster(c) => c.typing(id, typing, ack),
        }
    }

    pub(crate) fn leave(
        &self,
        id: ClientId,
        ack: Option<u64>,
        wakes: &mut Wakes,
    ) -> Result<(), Refused> {
        match &self.engine {
            Engine::Local(r) => r.leave(id, ack, wakes).map_err(Refused::from),
            Engine::Cluster(c) => c.leave(id, ack),
        }
    }

    /// Returns once every frame the client's requests caused for it is
    /// queued (a cluster node delivers them from its subscriber thread); the
    /// reader calls it before queuing an answer of its own.
    pub(crate) fn settle(&self, id: ClientId) {
        if let Engine::Cluster(c) = &self.engine {
            c.settle(id);
        }
    }

    /// `/api/rooms`: rooms and member counts sorted by name, the cluster's
    /// in a cluster; `Unavailable` while Redis is unreachable.
    pub(crate) fn list(&self) -> Result<Vec<(String, usize)>, Refused> {
        match &self.engine {
            Engine::Local(r) => Ok(r.rooms()),
            Engine::Cluster(c) => c.list(),
        }
    }

    /// `/healthz`: false while a cluster node's Redis is unusable.
    pub(crate) fn healthy(&self) -> bool {
        match &self.engine {
            Engine::Local(_) => true,
            Engine::Cluster(c) => c.healthy(),
        }
    }

    /// Shutdown: no more clients; queues a Close with `code` for each.
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        self.roster.close_all(code, reason);
    }

    /// Cuts every remaining client at the socket.
    pub(crate) fn abort_all(&self) {
        self.roster.abort_all();
    }

    /// Waits until no client is connected, or until `timeout`. True if empty.
    pub(crate) fn wait_empty(&self, timeout: Duration) -> bool {
        self.roster.wait_empty(timeout)
    }

    /// Shutdown, before clients are closed: a cluster node takes its
    /// members out of Redis at once and stops its threads.
    pub(crate) fn leave_cluster(&self) {
        if let Engine::Cluster(c) = &self.engine {
            c.shutdown();
        }
    }
}

/// A client's id as the wire shows it: the number, after the node's tag
/// in a cluster. Written where it is used, with no string of its own.
pub(crate) struct WireId<'a>(Option<&'a str>, ClientId);

impl std::fmt::Display for WireId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(tag) => write!(f, "{tag}-{}", self.1),
            None => write!(f, "{}", self.1),
        }
    }
}

/// A client's place under `--max-connections`, given back when dropped:
/// whatever way the client's thread ends, a panic included. It outlives the
/// client itself by as long as the client's writer runs (a writer is a
/// thread the place pays for).
#[derive(Debug)]
pub(crate) struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How much the server takes on: clients (WebSocket and long-polling), and
/// sockets in any state on either port (a client's, a page load's, a
/// handshake not yet finished). Each socket has a thread; each client may
/// have one more, its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub(crate) clients: usize,
    pub(crate) sockets: usize,
}

impl Capacity {
    /// Sockets beyond the clients' own, for page loads and handshakes in
    /// progress: a quarter more, and at least 64.
    pub(crate) fn for_clients(clients: usize) -> Capacity {
        Capacity {
            clients,
            sockets: clients + (clients / 4).max(64),
        }
    }

    /// Threads at most: one per socket, one writer per client.
    pub(crate) fn threads(&self) -> usize {
        self.sockets + self.clients
    }
}

/// The sockets the server holds, each counted from accept to close: past
/// `max` a new connection is refused at once, before it gets a thread.
/// Shutdown cuts whatever is still open.
pub(crate) struct Sockets {
    open: Mutex<HashMap<u64, Arc<TcpStream>>>,
    next: AtomicU64,
    max: usize,
}

impl Sockets {
    fn new(max: usize) -> Sockets {
        Sockets {
            open: Mutex::new(HashMap::with_capacity(max.min(1 << 16))),
            next: AtomicU64::new(0),
            max,
        }
    }

    /// A place for `socket`, unless `max` are open.
    pub(crate) fn take(self: &Arc<Self>, socket: &Arc<TcpStream>) -> Option<SocketSlot> {
        let mut open = self.lock();
        if open.len() >= self.max {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        open.insert(id, Arc::clone(socket));
        Some(SocketSlot {
            id,
            sockets: Arc::clone(self),
        })
    }

    /// Shutdown: ends every connection still open; their threads wake and end.
    pub(crate) fn abort_all(&self) {
        for socket in self.lock().values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<TcpStream>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A socket's place in [`Sockets`], given back when its thread drops it.
pub(crate) struct SocketSlot {
    id: u64,
    sockets: Arc<Sockets>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.sockets.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_stops_at_the_limit_and_places_come_back_on_drop() {
        let shared = Shared::new(
            Config::default(),
            Capacity::for_clients(2),
            Arc::default(),
            Origins::new(Vec::new()),
            None,
            None,
        );
        let (a, b) = (shared.admit(), shared.admit());
        assert!(a.is_some() && b.is_some());
        assert!(shared.admit().is_none());
        drop(a);
        assert!(shared.admit().is_some());
    }

    #[test]
    fn sockets_past_the_capacity_are_refused() {
        let sockets = Arc::new(Sockets::new(1));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let connect = || Arc::new(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
        let first = sockets.take(&connect());
        assert!(first.is_some() && sockets.take(&connect()).is_none());
        drop(first);
        assert!(sockets.take(&connect()).is_some());
    }
}
