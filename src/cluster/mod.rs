//! The cluster engine (`--redis URL`): rooms shared by every node given the
//! same Redis. Redis holds each room's state and numbers its events: every
//! request is one Lua script that checks, numbers, logs and publishes its
//! event, so Redis's single thread gives each room one order. Each node
//! subscribes once to its own channel, where the scripts publish every event
//! of every room it has members in; its subscriber thread applies them, in
//! that order, to the node's own clients (`state`), repairing from the
//! room's log what pub/sub lost, or closing with 1012 what it cannot repair.
//!
//! - `event`: the events' wire format (pure).
//! - `state`: this node's clients and rooms; applies events (pure).
//! - `scripts` and `lua/`: the room operations, one script each.
//! - `link`: connections, timeouts, the Up/Down state.
//! - `subscriber`: the `redis-sub` thread: delivery and repair.
//! - `health`: the `redis-health` thread: heartbeat, reaper, recovery, janitor.
//!
//! A reader runs its client's script itself. The frames the request causes
//! for its own client, the ack last, come back through the subscriber like
//! everyone else's; before the reader queues anything itself (an error for
//! a later frame), and after a join or a leave, it waits (bounded) at the
//! client's barrier until they are queued: a cluster node answers like one
//! server, without a round trip through the subscriber per message.

mod event;
mod health;
mod link;
mod scripts;
mod state;
mod subscriber;

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{info, warn};

use crate::config::{Config, Secret};
use crate::delivery::{random_tag, unix_millis, ClientId, Mailbox, Refused};
use crate::metrics::Metrics;
use event::{chat_body, member_field};
use link::{Down, Link, Target, IO_TIMEOUT};
use scripts::{Call, Outcome};
use state::{Barrier, Effects, Leave, Request, State, Waited};

/// How long startup keeps trying to reach Redis before giving up.
const STARTUP_WINDOW: Duration = Duration::from_secs(5);
/// How long a reader waits for its request's event to come back through
/// the subscriber. A backstop only: it passes when the subscriber can
/// neither receive nor repair, and the client then gets 1012 (its
/// request's outcome is unknown).
const BARRIER_WAIT: Duration = Duration::from_secs(5);
/// A client's requests whose events may be on their way at once (see
/// `Node::request`): enough to keep Redis busy, few enough that a client
/// cannot queue work without bound.
const MAX_IN_FLIGHT: u64 = 32;
/// Shutdown's budget for taking this node's members out of Redis.
const SELF_REAP_BUDGET: Duration = Duration::from_millis(500);

/// Why the cluster could not start.
#[derive(Debug)]
pub(crate) struct CannotStart(pub(crate) String);

impl fmt::Display for CannotStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A running cluster node: what readers call, and its two threads.
pub(crate) struct Cluster {
    node: Arc<Node>,
    /// One message per thread when it ends.
    ended: Receiver<()>,
    threads: usize,
}

/// What the node's threads and its readers share.
pub(crate) struct Node {
    link: Link,
    state: Mutex<State>,
    /// This node's tag: client ids on the wire are `<tag>-<n>`.
    tag: String,
    prefix: String,
    history: usize,
    /// Heartbeat period; the other periods derive from it.
    tick: Duration,
    metrics: Arc<Metrics>,
    /// Redis's clock minus ours, in ms (measured by each heartbeat).
    offset_ms: AtomicI64,
    /// Memberships for the health thread to take out of Redis (see `state::Leave`).
    janitor: Mutex<Vec<Leave>>,
    /// Rooms whose state a reader found gone: for the subscriber to check.
    resync_tx: Sender<String>,
    resync_rx: Receiver<String>,
}

impl Cluster {
    /// Connects to Redis, registers this node, subscribes to its channel and
    /// starts its threads; Redis must answer within 5 seconds.
    pub(crate) fn start(config: &Config, metrics: Arc<Metrics>) -> Result<Cluster, CannotStart> {
        let url = config.redis.as_ref().map_or("", Secret::expose_str);
        let target = Target::parse(url).map_err(|e| {
            CannotStart(format!(
                "invalid Redis URL {}: {e}",
                link::mask_password(url)
            ))
        })?;
        let tick = config.redis_tick;
        let deadline = Instant::now() + STARTUP_WINDOW;
        let (tag, generation, con, offset) =
            register(&target, &config.redis_prefix, tick, deadline)?;
        metrics.enable_cluster();
        let (resync_tx, resync_rx) = crossbeam_channel::unbounded();
        let node = Arc::new(Node {
            link: Link::new(target, Arc::clone(&metrics)),
            state: Mutex::new(State::new(tag.clone())),
            tag,
            prefix: config.redis_prefix.clone(),
            history: config.history,
            tick,
            metrics,
            offset_ms: AtomicI64::new(offset),
            janitor: Mutex::default(),
            resync_tx,
            resync_rx,
        });
        node.link.set_health(true, "registered");

        let (ended_tx, ended) = crossbeam_channel::unbounded();
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            let ended = ended_tx.clone();
            thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    body();
                    let _ = ended.send(());
                })
                .map_err(|e| CannotStart(format!("cannot start the {name} thread: {e}")))
        };
        let n = Arc::clone(&node);
        spawn("redis-sub", Box::new(move || subscriber::run(&n, ready_tx)))?;
        let mut cluster = Cluster {
            node: Arc::clone(&node),
            ended,
            threads: 1,
        };
        // Serve nothing before the node's channel is subscribed: a join's
        // events would go nowhere.
        let left = deadline.saturating_duration_since(Instant::now());
        match ready.recv_timeout(left.max(IO_TIMEOUT)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(cluster.fail(format!("cannot subscribe: {e}"))),
            Err(_) => return Err(cluster.fail("cannot subscribe in time".into())),
        }
        let n = Arc::clone(&node);
        spawn(
            "redis-health",
            Box::new(move || health::run(&n, con, generation)),
        )?;
        cluster.threads = 2;
        info!(
            "cluster node {} on redis at {} (prefix {:?})",
            node.tag,
            node.link.target(),
            node.prefix
        );
        Ok(cluster)
    }

    /// Startup failed after the threads began: stop them, say why.
    fn fail(self, why: String) -> CannotStart {
        let error = CannotStart(format!("redis at {}: {why}", self.node.link.target()));
        self.shutdown();
        error
    }

    /// This node's tag: its clients' ids on the wire are `<tag>-<n>`.
    pub(crate) fn tag(&self) -> &str {
        &self.node.tag
    }

    pub(crate) fn connect(&self, id: ClientId, mailbox: Arc<dyn Mailbox>) {
        self.node.lock().connect(id, mailbox);
    }

    /// Forgets a client; its room hears `userLeft` through Redis.
    pub(crate) fn disconnect(&self, id: ClientId) {
        let membership = self.node.lock().disconnect(id);
        if let Some(m) = membership {
            self.node.leave_later(
                Leave {
                    id,
                    room: m.room,
                    epoch: m.epoch,
                },
                true,
            );
        }
    }

    pub(crate) fn in_room(&self, id: ClientId) -> bool {
        self.node.lock().in_room(id)
    }

    pub(crate) fn join(
        &self,
        id: ClientId,
        username: &str,
        user: Option<&str>,
        room: &str,
        resume: Option<(u64, &str)>,
        ack: Option<u64>,
    ) -> Result<(), Refused> {
        self.node
            .request(id, Some(room), true, ack, |node, req, call| {
                let current = req
                    .membership
                    .as_ref()
                    .map(|m| (m.room.as_str(), m.epoch.as_str()));
                // The member as Redis keeps it: its name, and its verified
                // user, which every node then shows.
                let username = member_field(username, user);
                let epoch = random_tag(8);
                let (outcome, joined, kept) = node.link.call(|con| {
                    let (tag, user) = (&node.tag, &username);
                    scripts::join(con, call, tag, user, room, &epoch, current, resume)
                })?;
                if !kept {
                    // The client's previous room had lost it: that room's state
                    // here is stale.
                    if let Some((old, _)) = current {
                        let _ = node.resync_tx.send(old.to_owned());
                    }
                }
                Ok(match (outcome, joined) {
                    (Outcome::Ok(_), Some(epoch)) => Outcome::Joined(epoch),
                    (outcome, _) => outcome,
                })
            })
    }

    pub(crate) fn chat(&self, id: ClientId, text: &str, ack: Option<u64>) -> Result<(), Refused> {
        self.node.request(id, None, false, ack, |node, req, call| {
            let m = req.membership.as_ref().expect("begin checked the room");
            let body = chat_body(unix_millis(), text);
            node.link
                .call(|con| scripts::chat(con, call, &m.room, &m.epoch, &body, node.history))
        })
    }

    pub(crate) fn typing(
        &self,
        id: ClientId,
        typing: bool,
        ack: Option<u64>,
    ) -> Result<(), Refused> {
        self.node.request(id, None, false, ack, |node, req, call| {
            let m = req.membership.as_ref().expect("begin checked the room");
            node.link
                .call(|con| scripts::typing(con, call, &m.room, &m.epoch, typing))
        })
    }

    pub(crate) fn leave(&self, id: ClientId, ack: Option<u64>) -> Result<(), Refused> {
        self.node.request(id, None, true, ack, |node, req, call| {
            let m = req.membership.as_ref().expect("begin checked the room");
            node.link
                .call(|con| scripts::leave(con, call, &node.tag, &m.room, &m.epoch, true))
        })
    }

    /// Returns once every frame the client's requests so far caused for it
    /// is queued: the reader calls it before it queues an answer of its
    /// own, which must not overtake them.
    pub(crate) fn settle(&self, id: ClientId) {
        let issued = self.node.lock().issued(id);
        if let Some((q, barrier)) = issued {
            self.node.wait(id, &barrier, q);
        }
    }

    /// `/api/rooms`: the cluster's rooms, or `Unavailable`.
    pub(crate) fn list(&self) -> Result<Vec<(String, usize)>, Refused> {
        let prefix = &self.node.prefix;
        self.node
            .link
            .call(|con| scripts::rooms(con, prefix))
            .map_err(|Down| Refused::Unavailable)
    }

    /// `/healthz`: Redis answers and the node's channel is subscribed.
    pub(crate) fn healthy(&self) -> bool {
        self.node.link.status.up()
    }

    /// Shutdown, before the clients are closed: refuse requests, take this
    /// node's members out of Redis in one step (the other nodes hear their
    /// `userLeft` at once; the clients' own disconnects then do nothing),
    /// and stop the threads. Bounded: about a second at most.
    pub(crate) fn shutdown(&self) {
        let node = &self.node;
        if node.link.status.stopping() {
            return;
        }
        node.link.status.stop();
        let reaped = node
            .link
            .target()
            .connect(SELF_REAP_BUDGET)
            .and_then(|mut con| {
                let started = Instant::now();
                let only = Some(node.tag.as_str());
                while scripts::reap(
                    &mut con,
                    &node.prefix,
                    &node.tag,
                    500,
                    only,
                    scripts::deadline(node.offset_ms.load(Relaxed)),
                )? == Some(500)
                {
                    if started.elapsed() > SELF_REAP_BUDGET {
                        break;
                    }
                }
                Ok(())
            });
        if let Err(e) = reaped {
            warn!("cannot take this node's members out of redis: {e}; the others will reap them");
        }
        // The threads notice within a subscriber read timeout or a Redis
        // timeout; wait that long at most.
        let deadline = Instant::now() + IO_TIMEOUT;
        for _ in 0..self.threads {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.ended.recv_timeout(left).is_err() {
                break;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock would be a bug in `state`; what it holds
        // is still good enough to keep serving the other rooms.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one room request: `not_in_room` (for all but a join) and
    /// `unavailable` need no Redis; then the script, run by `script`. The
    /// script's verdicts map onto the answers.
    ///
    /// A join or a leave (`settled`) returns once its event is applied here:
    /// the client's next request needs its new membership. A chat message
    /// or typing returns once Redis answered, so one client's messages are
    /// numbered in the order sent and the next can go while this one's
    /// echo is on its way; whatever the reader later queues itself (an
    /// error) waits for them first (`settle`), so nothing overtakes an echo
    /// or an ack. At most `MAX_IN_FLIGHT` of a client's requests are on
    /// their way at once.
    fn request(
        &self,
        id: ClientId,
        join: Option<&str>,
        settled: bool,
        ack: Option<u64>,
        script: impl FnOnce(&Node, &Request, &Call<'_>) -> Result<Outcome, Down>,
    ) -> Result<(), Refused> {
        let req = self.lock().begin(id, join)?;
        if let Some(q) = req.in_flight.checked_sub(MAX_IN_FLIGHT) {
            self.wait(id, &req.barrier, q);
        }
        let result = self.run(id, join, &req, settled, ack, script);
        self.lock().end(id);
        result
    }

    fn run(
        &self,
        id: ClientId,
        join: Option<&str>,
        req: &Request,
        settled: bool,
        ack: Option<u64>,
        script: impl FnOnce(&Node, &Request, &Call<'_>) -> Result<Outcome, Down>,
    ) -> Result<(), Refused> {
        if !self.link.status.up() {
            return Err(Refused::Unavailable);
        }
        let wire = format!("{}-{id}", self.tag);
        let call = Call {
            prefix: &self.prefix,
            id: &wire,
            q: req.q,
            ack,
            offset_ms: self.offset_ms.load(Relaxed),
        };
        match script(self, req, &call).map_err(|Down| Refused::Unavailable)? {
            Outcome::Ok(_) => {
                self.lock().sent(id, req.q);
                if settled {
                    self.wait(id, &req.barrier, req.q);
                }
                Ok(())
            }
            Outcome::Joined(epoch) => {
                self.lock().sent(id, req.q);
                let room = join.expect("only a join joins");
                if !self.wait(id, &req.barrier, req.q) && !self.lock().is_member(id, room, &epoch) {
                    // Redis took the join, but its event never reached this
                    // node (the client is closed): the membership would stay
                    // in Redis for good unless it is taken out now.
                    self.leave_later(
                        Leave {
                            id,
                            room: room.to_owned(),
                            epoch,
                        },
                        true,
                    );
                }
                Ok(())
            }
            Outcome::Late | Outcome::NoNode => Err(Refused::Unavailable),
            Outcome::Stale | Outcome::Gone => {
                // Redis no longer has this client in its room: the room's
                // state was lost (or the node was taken for dead).
                info!("client {id}: its room's state is gone from redis; closing it");
                self.close(id, true);
                if let Some(m) = &req.membership {
                    let _ = self.resync_tx.send(m.room.clone());
                }
                Ok(())
            }
        }
    }

    /// Waits until the subscriber applied the client's request `q` (or
    /// closed the client). Past `BARRIER_WAIT` the request's fate is
    /// unknown: the client gets 1012. True if it was applied.
    fn wait(&self, id: ClientId, barrier: &Barrier, q: u64) -> bool {
        match barrier.wait(q, BARRIER_WAIT) {
            Waited::Applied => true,
            Waited::Broken => false,
            Waited::TimedOut => {
                warn!("client {id}: request {q} not delivered within {BARRIER_WAIT:?}; closing it");
                self.close(id, false);
                false
            }
        }
    }

    /// Closes one client with 1012.
    fn close(&self, id: ClientId, forget: bool) {
        let mut fx = Effects::default();
        self.lock().close(id, forget, &mut fx);
        fx.run();
    }

    /// Takes a membership out of Redis now if Redis is usable (`now`), else
    /// leaves it to the janitor, which runs once Redis is back. Nothing on
    /// shutdown: the node's members are taken out in one step then.
    fn leave_later(&self, leave: Leave, now: bool) {
        if self.link.status.stopping() {
            return;
        }
        if now && self.link.status.up() && self.leave_now(&leave).is_ok() {
            return;
        }
        self.janitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(leave);
        self.link.status.ring();
    }

    /// Runs a silent leave (userLeft for the others).
    fn leave_now(&self, leave: &Leave) -> Result<Outcome, Down> {
        let wire = format!("{}-{}", self.tag, leave.id);
        let call = Call {
            prefix: &self.prefix,
            id: &wire,
            q: 0,
            ack: None,
            offset_ms: self.offset_ms.load(Relaxed),
        };
        let outcome = self
            .link
            .call(|con| scripts::leave(con, &call, &self.tag, &leave.room, &leave.epoch, false))?;
        match outcome {
            Outcome::Late => Err(Down),
            other => Ok(other),
        }
    }

    /// Hands over what an apply left to do, no lock held.
    fn finish(&self, mut fx: Effects) {
        if fx.lost > 0 {
            self.metrics.cluster_rooms_lost(fx.lost as u64);
        }
        let leaves = std::mem::take(&mut fx.leaves);
        fx.run();
        for leave in leaves {
            self.leave_later(leave, false);
        }
    }
}

/// At startup: connect, load the scripts, heartbeat with a fresh tag (a
/// live node with the same tag makes us draw again), retrying until
/// `deadline`. Returns the tag, the generation, the connection and the
/// clock offset.
fn register(
    target: &Target,
    prefix: &str,
    tick: Duration,
    deadline: Instant,
) -> Result<(String, String, redis::Connection, i64), CannotStart> {
    let ttl = health::ttl(tick);
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let attempt = target.connect(IO_TIMEOUT).and_then(|mut con| {
            scripts::load_all(&mut con)?;
            loop {
                let tag = random_tag(10);
                let sent = unix_millis() as i64;
                let ttl_ms = ttl.as_millis() as u64;
                let heard =
                    scripts::heartbeat(&mut con, prefix, &tag, ttl_ms, ("", 0), &random_tag(10))?;
                if heard.beat != scripts::Beat::Taken {
                    let offset = heard.now - (sent + unix_millis() as i64) / 2;
                    return Ok((tag, heard.generation, con, offset));
                }
            }
        });
        match attempt {
            Ok(registered) => return Ok(registered),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(
            Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
    Err(CannotStart(format!(
        "cannot reach Redis at {target} within {}s: {last}",
        STARTUP_WINDOW.as_secs()
    )))
}
