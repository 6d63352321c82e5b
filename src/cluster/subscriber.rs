//! The `redis-sub` thread: reads the node's channel, where the scripts
//! publish every event of every room the node has members in, and applies
//! each to the node's state in Redis's order. Pub/sub is at-most-once, so
//! every loss is caught by position and repaired from the room's log, or
//! the room's local members get 1012: never a silent gap.
//!
//! After any new connection it first SUBSCRIBEs (from then on nothing is
//! missed), then repairs every room, and only then lets the node serve.
//! An idle connection is probed with PING, since a half-open one would
//! otherwise deliver nothing with every light green.

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{error, info, warn};
use redis::RedisResult;

use super::event::Event;
use super::link::{Kept, IO_TIMEOUT};
use super::scripts::{self, Resync};
use super::state::{Applied, Effects};
use super::Node;

/// The subscriber's read timeout: how often it looks at shutdown and at
/// the repairs readers asked for, and how long a PING may take.
const READ_TICK: Duration = Duration::from_millis(250);

/// Runs until shutdown; tells `ready` how the first subscription went.
pub(super) fn run(node: &Node, ready: Sender<Result<(), String>>) {
    let mut ready = Some(ready);
    while !node.link.status.stopping() {
        let result = serve(node, &mut ready);
        node.link.set_subscribed(false, "subscriber disconnected");
        if node.link.status.stopping() {
            break;
        }
        if let Err(e) = result {
            if let Some(ready) = ready.take() {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
            warn!("redis subscriber: {e}; reconnecting");
        }
        std::thread::sleep(node.tick / 2);
    }
}

/// One subscriber connection, from SUBSCRIBE to its end.
fn serve(node: &Node, ready: &mut Option<Sender<Result<(), String>>>) -> RedisResult<()> {
    let target = node.link.target();
    let mut sub = target.connect(IO_TIMEOUT)?;
    // Repairs use their own connection: the other is in subscriber mode.
    let mut cmd = Kept::open(target)?;
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe(format!("{}:to:{}", node.prefix, node.tag))?;
    pubsub.set_read_timeout(Some(READ_TICK))?;
    // Subscribed: whatever is published from now on reaches us. What the
    // rooms missed before is in their logs.
    repair_all(node, &mut cmd)?;
    node.link.set_subscribed(true, "subscribed");
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    } else {
        info!("redis subscriber reconnected; every room repaired");
    }
    let mut heard = Instant::now();
    loop {
        if node.link.status.stopping() {
            return Ok(());
        }
        while let Ok(room) = node.resync_rx.try_recv() {
            repair(node, &mut cmd, &room, None)?;
        }
        match pubsub.get_message() {
            Ok(message) => {
                heard = Instant::now();
                deliver(node, &mut cmd, message.get_payload_bytes())?;
            }
            Err(e) if e.is_timeout() => {
                if heard.elapsed() >= node.tick {
                    // No answer within READ_TICK fails the connection.
                    let _: redis::Value = pubsub.ping()?;
                    heard = Instant::now();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies one message from the channel; repairs its room first if
/// events are missing before it.
fn deliver(node: &Node, cmd: &mut Kept, payload: &[u8]) -> RedisResult<()> {
    let Ok(text) = std::str::from_utf8(payload) else {
        error!("a message on the node's channel is not UTF-8; dropped");
        return Ok(());
    };
    let ev = match Event::parse(text) {
        Ok(ev) => ev,
        Err(e) => {
            error!("a message on the node's channel is not an event ({e:?}); dropped");
            return Ok(());
        }
    };
    let mut fx = Effects::default();
    let applied = {
        let mut state = node.lock();
        let applied = state.apply(&ev, &mut fx);
        node.metrics.set_rooms(state.room_count());
        applied
    };
    node.finish(fx);
    if applied == Applied::Gap {
        repair(node, cmd, ev.room, Some(&ev))?;
    }
    Ok(())
}

/// Every room the node follows, after a new subscription.
fn repair_all(node: &Node, cmd: &mut Kept) -> RedisResult<()> {
    let rooms = {
        let mut fx = Effects::default();
        let mut state = node.lock();
        state.fail_blind_joins(&mut fx);
        let rooms = state.positions();
        drop(state);
        node.finish(fx);
        rooms
    };
    for (room, _, _) in rooms {
        repair(node, cmd, &room, None)?;
    }
    Ok(())
}

/// Events a repair applies under one hold of the lock before it hands what
/// they queued to the members' writers: 64 chat messages of 2000 characters
/// of at most 4 bytes are 512 KiB, half a member's queue bound.
const REPAIR_CHUNK: usize = 64;

/// Brings one room up to date from its log: the events after the room's
/// position, in order (`live`, the event that revealed the gap, stands in
/// for its own log entry: only it carries a join's snapshot). If the log no
/// longer reaches back far enough, or the room is another incarnation or
/// gone, its local members get 1012. No lock is held during Redis I/O; only
/// this thread moves positions, so the position read before stays valid.
fn repair(node: &Node, cmd: &mut Kept, room: &str, live: Option<&Event<'_>>) -> RedisResult<()> {
    let Some((epoch, from)) = node.lock().position(room) else {
        return Ok(());
    };
    let fresh = super::random_tag(10);
    let con = cmd.get(node.link.target())?;
    let reply = scripts::resync(con, &node.prefix, room, &epoch, from, &fresh)?;
    let mut fx = Effects::default();
    let mut state = node.lock();
    match reply {
        Resync::Lost => {
            warn!("room {room:?} lost its state in redis; its members here must rejoin");
            state.lose(room, &mut fx);
        }
        Resync::Behind => {
            // Redis dropped every room and changed the generation: the
            // heartbeat resets this node's rooms too; this one cannot wait.
            warn!("room {room:?} is behind in redis: it went back in time; every room is reset");
            state.lose_all(&mut fx);
            fx.leaves.clear();
        }
        Resync::Ok(there, texts) => {
            if !texts.is_empty() {
                node.metrics.cluster_repair();
            }
            for (i, text) in texts.iter().enumerate() {
                if i > 0 && i % REPAIR_CHUNK == 0 {
                    // Let the writers drain what this repair queued so far:
                    // all of a long log at once could pass a member's queue
                    // bound and cut a healthy reader off as a slow consumer.
                    drop(state);
                    node.finish(std::mem::take(&mut fx));
                    state = node.lock();
                }
                let ev = match Event::parse(text) {
                    Ok(ev) => ev,
                    Err(e) => {
                        error!("unreadable log entry in room {room:?} ({e:?})");
                        state.lose(room, &mut fx);
                        break;
                    }
                };
                let ev = match live {
                    Some(live) if live.pos == ev.pos => live.clone(),
                    _ => ev,
                };
                if state.apply(&ev, &mut fx) == Applied::Gap {
                    warn!(
                        "room {room:?}: events lost beyond its log; its members here must rejoin"
                    );
                    state.lose(room, &mut fx);
                    break;
                }
            }
            if texts.is_empty() && live.is_some() {
                // The event is past what Redis holds: the room was dropped
                // and made again (its last leave is not logged).
                state.lose(room, &mut fx);
            } else if texts.len() < scripts::RESYNC_MAX as usize
                && state.position(room).is_some_and(|(_, here)| here != there)
            {
                // Every entry after our position was read, and still the
                // room does not stand where Redis says: its log lost events.
                warn!("room {room:?}: its log in redis does not reach its position; its members here must rejoin");
                state.lose(room, &mut fx);
            }
        }
    }
    node.metrics.set_rooms(state.room_count());
    drop(state);
    node.finish(fx);
    Ok(())
}
