//! The Lua scripts that keep every room's state in Redis, one typed
//! function per script. Redis runs each script alone, so each numbers its
//! event, logs it and publishes it in one step: that is where a room's one
//! order comes from. The scripts' own comments (`lua/`) give their
//! arguments and replies; `common.lua` is prepended to each.

use std::sync::LazyLock;

use redis::{Connection, RedisResult, Script, Value};

use super::event::Pos;

/// Events each room's log keeps (`XADD MAXLEN ~`) for repairs: a lost
/// pub/sub message, or a subscriber reconnecting, is repaired from it when
/// it reaches back far enough, else the room's local members get 1012.
/// 1,000 is a tenth of a second of the benchmark's busiest room, and
/// minutes of a chatty one; ~300 KB of Redis memory per busy room.
pub(crate) const LOG_LEN: u32 = 1000;
/// Most log entries one repair reads.
pub(crate) const RESYNC_MAX: u32 = 10_000;

macro_rules! script {
    ($name:ident, $file:literal) => {
        static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(include_str!("lua/common.lua"), include_str!($file)))
        });
    };
}

script!(JOIN, "lua/join.lua");
script!(CHAT, "lua/chat.lua");
script!(TYPING, "lua/typing.lua");
script!(LEAVE, "lua/leave.lua");
script!(HEARTBEAT, "lua/heartbeat.lua");
script!(REAP, "lua/reap.lua");
script!(RESYNC, "lua/resync.lua");
script!(ROOMS, "lua/rooms.lua");

/// Loads every script (SCRIPT LOAD, idempotent): on each new connection,
/// since a restarted Redis has an empty script cache.
pub(crate) fn load_all(con: &mut Connection) -> RedisResult<()> {
    for script in [
        &JOIN, &CHAT, &TYPING, &LEAVE, &HEARTBEAT, &REAP, &RESYNC, &ROOMS,
    ] {
        script.prepare_invoke().load(con)?;
    }
    Ok(())
}

/// How a room request's script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done; for a chat message, its `seq`.
    Ok(u64),
    /// A join done, in the room's incarnation `epoch`.
    Joined(String),
    /// Past its deadline: Redis was too slow, nothing was done.
    Late,
    /// The room was lost or recreated: the client's membership is gone.
    Stale,
    /// The client is no longer a member (reaped, or already left).
    Gone,
    /// For a join: this node is not registered (Redis lost its data and
    /// the heartbeat has not re-registered the node yet).
    NoNode,
}

/// The common arguments of a request script.
pub(crate) struct Call<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) id: &'a str,
    pub(crate) q: u64,
    pub(crate) ack: Option<u64>,
    /// Redis's clock minus ours, in ms: the script's deadline is counted
    /// from when its arguments are built, on a connection already held.
    pub(crate) offset_ms: i64,
}

/// A request script does nothing once Redis's clock is this far past the
/// moment the node sent it, so that a request answered `unavailable`
/// (timed out after 1 s) cannot take effect later when a stalled Redis
/// wakes up.
const DEADLINE_MS: i64 = 500;

/// Milliseconds on Redis's clock after which a script sent now does
/// nothing, given Redis's clock minus ours.
pub(crate) fn deadline(offset_ms: i64) -> i64 {
    crate::delivery::unix_millis() as i64 + offset_ms + DEADLINE_MS
}

impl Call<'_> {
    fn deadline(&self) -> i64 {
        deadline(self.offset_ms)
    }

    fn ack(&self) -> String {
        self.ack.map_or_else(String::new, |a| a.to_string())
    }
}

/// A join: (outcome, whether the current room still had the client).
/// `resume`: the `since` and `epoch` the client came back with.
#[allow(clippy::too_many_arguments)]
pub(crate) fn join(
    con: &mut Connection,
    c: &Call<'_>,
    node: &str,
    username_json: &str,
    room: &str,
    new_epoch: &str,
    current: Option<(&str, &str)>,
    resume: Option<(u64, &str)>,
) -> RedisResult<(Outcome, Option<String>, bool)> {
    let (cur_room, cur_epoch) = current.unwrap_or(("", ""));
    let (since, since_epoch) = resume.map_or((String::new(), ""), |(s, e)| (s.to_string(), e));
    let reply: Vec<Value> = JOIN
        .arg(c.prefix)
        .arg(node)
        .arg(c.id)
        .arg(username_json)
        .arg(room)
        .arg(new_epoch)
        .arg(LOG_LEN)
        .arg(c.q)
        .arg(c.ack())
        .arg(cur_room)
        .arg(cur_epoch)
        .arg(c.deadline())
        .arg(since)
        .arg(since_epoch)
        .invoke(con)?;
    let outcome = outcome(&reply)?;
    let epoch = reply.get(1).and_then(text);
    let kept = reply.get(2).and_then(text).is_none_or(|l| l != "0");
    Ok((outcome, epoch, kept))
}

/// A chat message, its `body` made by `event::chat_body`; Redis numbers it.
pub(crate) fn chat(
    con: &mut Connection,
    c: &Call<'_>,
    room: &str,
    epoch: &str,
    body: &str,
    history: usize,
) -> RedisResult<Outcome> {
    let reply: Vec<Value> = CHAT
        .arg(c.prefix)
        .arg(c.id)
        .arg(room)
        .arg(epoch)
        .arg(c.q)
        .arg(c.ack())
        .arg(body)
        .arg(history)
        .arg(LOG_LEN)
        .arg(c.deadline())
        .invoke(con)?;
    outcome(&reply)
}

pub(crate) fn typing(
    con: &mut Connection,
    c: &Call<'_>,
    room: &str,
    epoch: &str,
    typing: bool,
) -> RedisResult<Outcome> {
    let reply: Vec<Value> = TYPING
        .arg(c.prefix)
        .arg(c.id)
        .arg(room)
        .arg(epoch)
        .arg(c.q)
        .arg(c.ack())
        .arg(if typing { "true" } else { "false" })
        .arg(LOG_LEN)
        .arg(c.deadline())
        .invoke(con)?;
    outcome(&reply)
}

/// A leave: `answered` for leaveRoom (the node answers `left`), else silent.
pub(crate) fn leave(
    con: &mut Connection,
    c: &Call<'_>,
    node: &str,
    room: &str,
    epoch: &str,
    answered: bool,
) -> RedisResult<Outcome> {
    let reply: Vec<Value> = LEAVE
        .arg(c.prefix)
        .arg(node)
        .arg(c.id)
        .arg(room)
        .arg(epoch)
        .arg(if answered { "l" } else { "s" })
        .arg(if c.q > 0 {
            c.q.to_string()
        } else {
            String::new()
        })
        .arg(c.ack())
        .arg(LOG_LEN)
        .arg(c.deadline())
        .invoke(con)?;
    outcome(&reply)
}

/// What a heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Beat {
    Ok,
    /// Redis came back without our data, or with older data (the
    /// generation changed).
    Lost,
    /// The other nodes took this one for dead and removed its members.
    Reaped,
    /// At startup: a live node has this tag already.
    Taken,
}

/// What a heartbeat answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heard {
    pub(crate) beat: Beat,
    /// The data set's generation.
    pub(crate) generation: String,
    /// Redis's time, in ms.
    pub(crate) now: i64,
    /// The heartbeat clock after this beat (see heartbeat.lua).
    pub(crate) clock: u64,
}

/// A heartbeat. `known`: the generation this node knows ('' to register);
/// `clock`: the highest heartbeat clock it has seen (0: none yet).
pub(crate) fn heartbeat(
    con: &mut Connection,
    prefix: &str,
    node: &str,
    ttl_ms: u64,
    (known, clock): (&str, u64),
    fresh: &str,
) -> RedisResult<Heard> {
    let reply: Vec<Value> = HEARTBEAT
        .arg(prefix)
        .arg(node)
        .arg(ttl_ms)
        .arg(known)
        .arg(fresh)
        .arg(if clock == 0 {
            String::new()
        } else {
            clock.to_string()
        })
        .invoke(con)?;
    let beat = match reply.first().and_then(text).as_deref() {
        Some("ok") => Beat::Ok,
        Some("lost") => Beat::Lost,
        Some("reaped") => Beat::Reaped,
        Some("taken") => Beat::Taken,
        _ => return Err(unexpected("heartbeat")),
    };
    let generation = reply.get(1).and_then(text).unwrap_or_default();
    let number = |i: usize| reply.get(i).and_then(text).and_then(|t| t.parse().ok());
    let now = number(2).ok_or_else(|| unexpected("heartbeat time"))?;
    let clock = number(3).ok_or_else(|| unexpected("heartbeat clock"))?;
    Ok(Heard {
        beat,
        generation,
        now: now as i64,
        clock,
    })
}

/// Removes up to `batch` members of dead nodes (or of `only`, whatever its
/// heartbeat); returns how many it removed, or None if Redis ran it past
/// `deadline` (ms on Redis's clock: nothing was done).
pub(crate) fn reap(
    con: &mut Connection,
    prefix: &str,
    node: &str,
    batch: u32,
    only: Option<&str>,
    deadline: i64,
) -> RedisResult<Option<u32>> {
    let done: i64 = REAP
        .arg(prefix)
        .arg(node)
        .arg(LOG_LEN)
        .arg(batch)
        .arg(only.unwrap_or(""))
        .arg(deadline)
        .invoke(con)?;
    Ok(u32::try_from(done).ok())
}

/// What a room's log holds after a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resync {
    /// The room is gone, or is another incarnation.
    Lost,
    /// The room stood before this node's position: Redis went back in
    /// time, and has dropped every room (see resync.lua).
    Behind,
    /// The room's position now, and the events after ours (event texts).
    Ok(Pos, Vec<String>),
}

pub(crate) fn resync(
    con: &mut Connection,
    prefix: &str,
    room: &str,
    epoch: &str,
    from: Pos,
    fresh: &str,
) -> RedisResult<Resync> {
    let reply: Vec<Value> = RESYNC
        .arg(prefix)
        .arg(room)
        .arg(epoch)
        .arg(from.seq)
        .arg(from.k)
        .arg(RESYNC_MAX)
        .arg(fresh)
        .invoke(con)?;
    match reply.first().and_then(text).as_deref() {
        Some("ok") => {}
        Some("behind") => return Ok(Resync::Behind),
        _ => return Ok(Resync::Lost),
    }
    let number = |i: usize| reply.get(i).and_then(text).and_then(|t| t.parse().ok());
    let (Some(seq), Some(k)) = (number(1), number(2)) else {
        return Err(unexpected("resync position"));
    };
    let mut events = Vec::new();
    if let Some(Value::Array(entries)) = reply.get(3) {
        // Each entry: [id, [field, value]], the value being the event.
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            if let Some(Value::Array(fields)) = parts.get(1) {
                if let Some(ev) = fields.get(1).and_then(text) {
                    events.push(ev);
                }
            }
        }
    }
    Ok(Resync::Ok(Pos { seq, k }, events))
}

/// Every room of the cluster and its member count, sorted by name.
pub(crate) fn rooms(con: &mut Connection, prefix: &str) -> RedisResult<Vec<(String, usize)>> {
    let flat: Vec<String> = ROOMS.arg(prefix).invoke(con)?;
    let mut rooms: Vec<(String, usize)> = flat
        .chunks_exact(2)
        .filter_map(|p| Some((p[0].clone(), p[1].parse().ok()?)))
        .filter(|(_, n)| *n > 0)
        .collect();
    rooms.sort();
    Ok(rooms)
}

/// A request script's first reply field.
fn outcome(reply: &[Value]) -> RedisResult<Outcome> {
    Ok(match reply.first().and_then(text).as_deref() {
        Some("ok") => Outcome::Ok(
            reply
                .get(1)
                .and_then(text)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ),
        Some("late") => Outcome::Late,
        Some("stale") => Outcome::Stale,
        Some("gone") => Outcome::Gone,
        Some("nonode") => Outcome::NoNode,
        _ => return Err(unexpected("script reply")),
    })
}

/// A reply value as text (Lua numbers come back as integers).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}
