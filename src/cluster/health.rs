//! The `redis-health` thread: the node's heartbeat (which also tells
//! whether Redis lost its data, or took this node for dead), the reaper
//! that takes dead nodes' members out of their rooms, reconnecting while
//! Redis is down, and the janitor's leaves.

use std::time::{Duration, Instant};

use log::{info, warn};
use redis::Connection;

use super::link::Kept;
use super::scripts::{self, Beat};
use super::state::Effects;
use super::{random_tag, Node};
use crate::delivery::unix_millis;

/// Members one reaper call takes out; it is called again while it fills its batch.
const REAP_BATCH: u32 = 200;

/// How long a node's heartbeat counts: 8 ticks (8 s by default), so a
/// dead node's members leave within ~10 s (the contract says 15) and a
/// node must miss 8 beats in a row to be taken for dead.
pub(super) fn ttl(tick: Duration) -> Duration {
    tick * 8
}

/// Runs until shutdown, starting with the connection startup registered on.
pub(super) fn run(node: &Node, con: Connection, generation: String) {
    let mut health = Health {
        con: Some(Kept::new(con)),
        generation,
        clock: 0,
        healthy_since: Some(Instant::now()),
        ttl: ttl(node.tick),
    };
    let mut next_beat = Instant::now() + node.tick;
    loop {
        node.link.status.wait_bell(next_beat);
        if node.link.status.stopping() {
            return;
        }
        // Someone saw a failure: check now rather than at the next tick.
        if Instant::now() >= next_beat || !node.link.status.healthy() {
            health.beat(node);
            // Down: try again sooner, so that the node is back within a
            // second or so of Redis.
            let period = if health.con.is_some() {
                node.tick
            } else {
                node.tick / 2
            };
            next_beat = Instant::now() + period;
            if health.may_reap() {
                health.reap(node);
            }
        }
        if node.link.status.up() {
            health.janitor(node, next_beat);
        }
    }
}

struct Health {
    con: Option<Kept>,
    /// The generation of Redis's data set this node knows ('' until the
    /// node registers again, after it was reaped).
    generation: String,
    /// The highest heartbeat clock seen (see heartbeat.lua).
    clock: u64,
    /// Since when every heartbeat worked.
    healthy_since: Option<Instant>,
    ttl: Duration,
}

impl Health {
    fn beat(&mut self, node: &Node) {
        if self.con.is_none() {
            match Kept::open(node.link.target()) {
                Ok(kept) => self.con = Some(kept),
                Err(e) => return self.failed(node, &e.to_string()),
            }
        }
        let kept = self.con.as_mut().expect("connected above");
        let con = match kept.get(node.link.target()) {
            Ok(con) => con,
            Err(e) => return self.failed(node, &e.to_string()),
        };
        let sent = unix_millis() as i64;
        let ttl_ms = self.ttl.as_millis() as u64;
        let fresh = random_tag(10);
        let known = (self.generation.as_str(), self.clock);
        let heard = match scripts::heartbeat(con, &node.prefix, &node.tag, ttl_ms, known, &fresh) {
            Ok(heard) => heard,
            Err(e) => return self.failed(node, &e.to_string()),
        };
        let offset = heard.now - (sent + unix_millis() as i64) / 2;
        node.offset_ms
            .store(offset, std::sync::atomic::Ordering::Relaxed);
        match heard.beat {
            Beat::Ok => {
                self.clock = self.clock.max(heard.clock);
                self.generation = heard.generation;
                self.healthy_since.get_or_insert_with(Instant::now);
                node.link.set_health(true, "heartbeat");
            }
            Beat::Lost => {
                self.reset(node, &heard.beat);
                // Another data set: its clock is where this node starts.
                self.clock = heard.clock;
                self.generation = heard.generation;
                self.healthy_since.get_or_insert_with(Instant::now);
                node.link.set_health(true, "heartbeat");
            }
            Beat::Reaped => {
                // The others took this node for dead: its members here get
                // 1012, what is left of them in Redis is taken out, and the
                // node registers again at once, as at startup.
                self.reset(node, &heard.beat);
                if let Err(e) = self.reap_self(node) {
                    return self.failed(node, &e);
                }
                self.generation.clear();
                self.clock = heard.clock;
                node.link.set_health(false, "reaped; registering again");
            }
            Beat::Taken => self.failed(node, "another live node has this node's tag"),
        }
    }

    /// Takes every member Redis still attributes to this node out of its
    /// room, in bounded batches.
    fn reap_self(&mut self, node: &Node) -> Result<(), String> {
        let Some(kept) = self.con.as_mut() else {
            return Err("no connection".into());
        };
        let con = kept.get(node.link.target()).map_err(|e| e.to_string())?;
        loop {
            let deadline =
                scripts::deadline(node.offset_ms.load(std::sync::atomic::Ordering::Relaxed));
            let only = Some(node.tag.as_str());
            match scripts::reap(con, &node.prefix, &node.tag, REAP_BATCH, only, deadline) {
                Ok(Some(n)) if n == REAP_BATCH => continue,
                Ok(Some(_)) => return Ok(()),
                Ok(None) => return Err("reaping itself: past its deadline".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn failed(&mut self, node: &Node, why: &str) {
        self.con = None;
        self.healthy_since = None;
        node.link.set_health(false, &format!("heartbeat: {why}"));
    }

    /// Redis lost our data, or took this node for dead: every room this
    /// node followed is gone; its members get 1012 and rejoin. Clients in
    /// no room keep their connection and their id.
    fn reset(&mut self, node: &Node, beat: &Beat) {
        warn!(
            "redis {}: every room on this node is reset",
            if *beat == Beat::Lost {
                "lost its data"
            } else {
                "took this node for dead"
            }
        );
        let mut fx = Effects::default();
        {
            let mut state = node.lock();
            state.lose_all(&mut fx);
            node.metrics.set_rooms(state.room_count());
        }
        node.janitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        fx.leaves.clear();
        node.finish(fx);
    }

    /// Reaping only once this node's own heartbeat has worked for a whole
    /// TTL: after an outage every node's deadline has passed, and nobody
    /// may reap until every live node had the chance to beat again.
    fn may_reap(&self) -> bool {
        self.con.is_some() && self.healthy_since.is_some_and(|t| t.elapsed() >= self.ttl)
    }

    fn reap(&mut self, node: &Node) {
        let Some(kept) = self.con.as_mut() else {
            return;
        };
        let con = match kept.get(node.link.target()) {
            Ok(con) => con,
            Err(e) => return self.failed(node, &e.to_string()),
        };
        for _ in 0..10 {
            let deadline =
                scripts::deadline(node.offset_ms.load(std::sync::atomic::Ordering::Relaxed));
            match scripts::reap(con, &node.prefix, &node.tag, REAP_BATCH, None, deadline) {
                Ok(Some(n)) if n > 0 => {
                    info!("reaped {n} members of dead nodes");
                    if n < REAP_BATCH {
                        return;
                    }
                }
                Ok(_) => return,
                Err(e) => return self.failed(node, &e.to_string()),
            }
        }
    }

    /// Runs the leaves queued while Redis was unusable (or by the
    /// subscriber, which does no Redis I/O), until `until`.
    fn janitor(&mut self, node: &Node, until: Instant) {
        loop {
            let next = node.janitor.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(leave) = next else { return };
            if node.leave_now(&leave).is_err() {
                // Down again: keep it for later.
                node.janitor
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(leave);
                return;
            }
            if Instant::now() >= until {
                return;
            }
        }
    }
}
