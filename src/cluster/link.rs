//! The node's command connections to Redis and whether Redis is usable.
//! Readers borrow a lane (a connection behind a mutex) for one script call;
//! every socket has read and write timeouts, so no wait is longer than one
//! timeout, and a connection that failed once is dropped, never reused.
//! The node is Up while the health thread's heartbeat and the subscriber
//! both work; while it is not, requests are refused at once, with no Redis
//! call and no wait.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};
use redis::{Client, Connection, ConnectionInfo, IntoConnectionInfo, RedisResult};

use super::scripts;
use crate::metrics::Metrics;

/// Timeout for a connect and for every read and write on a command
/// connection. A chat script takes tens of µs of Redis time (docs/BENCHMARKS.md
/// measures each EVALSHA); a second is failure.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Command connections readers share. Four, so that one slow round trip
/// does not serialize every reader, and few, so that 10,000 clients do not
/// mean 10,000 connections. A reader that finds every lane busy waits for
/// one; each holder's wait is bounded by `IO_TIMEOUT`, after which the node
/// is Down and the waiters return at once.
const LANES: usize = 4;

/// Where Redis is, as given (`redis://HOST:PORT[/DB]`, `unix:///path`).
#[derive(Clone)]
pub(crate) struct Target {
    info: ConnectionInfo,
    /// The URL for messages, password masked.
    shown: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    pub(crate) fn parse(url: &str) -> RedisResult<Target> {
        let info = url.into_connection_info()?;
        // No CLIENT SETINFO at connect: with db 0 and no password the
        // handshake then sends nothing, so a stalled Redis costs one
        // timeout (1 s against SIGSTOP; with SETINFO it costs two).
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        Ok(Target {
            info: info.set_redis_settings(settings),
            shown: mask_password(url),
        })
    }

    /// Connects with `timeout` on the connect and on every later read and write.
    pub(crate) fn connect(&self, timeout: Duration) -> RedisResult<Connection> {
        let con = Client::open(self.info.clone())?.get_connection_with_timeout(timeout)?;
        // get_connection_with_timeout sets the timeouts for the handshake
        // only, and puts back "block forever" before it returns.
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        Ok(con)
    }
}

/// A connection kept between uses. Redis closes a client that stays idle
/// longer than its `timeout` setting, which counts whole seconds (at least
/// 1): a connection idle for `IDLE_CHECK` or more is checked with a PING
/// before use and replaced if Redis closed it. So a request goes out once,
/// on an open connection, and a closed idle connection is neither an
/// `unavailable` nor a reason to call Redis down.
pub(crate) struct Kept {
    con: Connection,
    used: Instant,
}

/// Half of Redis's shortest idle `timeout`.
const IDLE_CHECK: Duration = Duration::from_millis(500);

impl Kept {
    /// A new connection with every script loaded.
    pub(crate) fn open(target: &Target) -> RedisResult<Kept> {
        let mut con = target.connect(IO_TIMEOUT)?;
        scripts::load_all(&mut con)?;
        Ok(Kept::new(con))
    }

    /// A connection opened (and its scripts loaded) elsewhere.
    pub(crate) fn new(con: Connection) -> Kept {
        Kept {
            con,
            used: Instant::now(),
        }
    }

    /// The connection, checked first if it sat idle (and reopened if Redis
    /// had closed it). An error: Redis is unusable.
    pub(crate) fn get(&mut self, target: &Target) -> RedisResult<&mut Connection> {
        if self.used.elapsed() >= IDLE_CHECK {
            if let Err(e) = redis::cmd("PING").query::<()>(&mut self.con) {
                if !is_fatal(&e) {
                    return Err(e);
                }
                *self = Kept::open(target)?;
            }
        }
        self.used = Instant::now();
        Ok(&mut self.con)
    }
}

/// A Redis URL for logs, its secrets masked in every form the redis crate
/// reads one: `redis://user:secret@host` → `redis://user:***@host`, and a
/// `pass=` or `password=` parameter (`unix:///run/r.sock?pass=secret`) →
/// `pass=***`. The userinfo is everything before the last `@` of the part
/// before the query, so a password holding `/` or `@` is masked whole.
pub(crate) fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let mut shown = format!("{scheme}://");
    match before_query.rfind('@') {
        Some(at) => {
            let userinfo = &before_query[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => shown.push_str(&format!("{user}:***")),
                // `redis://secret@host`: a lone userinfo is the password.
                None => shown.push_str("***"),
            }
            shown.push_str(&before_query[at..]);
        }
        None => shown.push_str(before_query),
    }
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _))
                    if key.eq_ignore_ascii_case("pass") || key.eq_ignore_ascii_case("password") =>
                {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// Whether the node may serve, and why not; and the health thread's bell.
#[derive(Default)]
pub(crate) struct Status {
    /// The last heartbeat worked, and nothing failed since.
    health: AtomicBool,
    /// The subscriber is subscribed and has repaired every room.
    subscribed: AtomicBool,
    stopping: AtomicBool,
    /// Rung when the health thread has something to do now: a failure to
    /// check (heartbeat at once), janitor work, shutdown.
    bell: Mutex<bool>,
    rung: Condvar,
}

impl Status {
    pub(crate) fn up(&self) -> bool {
        self.health.load(SeqCst) && self.subscribed.load(SeqCst) && !self.stopping.load(SeqCst)
    }

    /// Whether the last heartbeat worked and nothing failed since.
    pub(crate) fn healthy(&self) -> bool {
        self.health.load(SeqCst)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(SeqCst)
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, SeqCst);
        self.ring();
    }

    /// Wakes the health thread.
    pub(crate) fn ring(&self) {
        *self.bell.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.rung.notify_all();
    }

    /// The health thread's wait: until `deadline`, or until rung.
    pub(crate) fn wait_bell(&self, deadline: Instant) {
        let bell = self.bell.lock().unwrap_or_else(|p| p.into_inner());
        let left = deadline.saturating_duration_since(Instant::now());
        let (mut bell, _) = self
            .rung
            .wait_timeout_while(bell, left, |rung| !*rung)
            .unwrap_or_else(|p| p.into_inner());
        *bell = false;
    }
}

/// The lanes and the status they report to.
pub(crate) struct Link {
    target: Target,
    lanes: Vec<Mutex<Option<Kept>>>,
    next: AtomicUsize,
    pub(crate) status: Status,
    metrics: Arc<Metrics>,
}

/// Why a call did not run: Redis is unusable (now, or since before the call).
#[derive(Debug)]
pub(crate) struct Down;

impl Link {
    pub(crate) fn new(target: Target, metrics: Arc<Metrics>) -> Link {
        Link {
            target,
            lanes: (0..LANES).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            status: Status::default(),
            metrics,
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `call` on a lane. Refused at once while the node is not Up; an
    /// I/O error or timeout drops the connection and marks the node Down
    /// (the health thread brings it back). A Redis error reply (a bug in a
    /// script, out of memory) fails this call only.
    pub(crate) fn call<T>(
        &self,
        call: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, Down> {
        if !self.status.up() {
            return Err(Down);
        }
        let mut lane = self.lane();
        // The wait for the lane may have outlasted Redis.
        if !self.status.up() {
            return Err(Down);
        }
        if lane.is_none() {
            match Kept::open(&self.target) {
                Ok(kept) => *lane = Some(kept),
                Err(e) => {
                    self.set_health(false, &format!("connect: {e}"));
                    return Err(Down);
                }
            }
        }
        let kept = lane.as_mut().expect("connected above");
        let con = match kept.get(&self.target) {
            Ok(con) => con,
            Err(e) => {
                *lane = None;
                self.set_health(false, &format!("connect: {e}"));
                return Err(Down);
            }
        };
        match call(con) {
            Ok(value) => Ok(value),
            Err(e) if is_fatal(&e) => {
                *lane = None;
                self.set_health(false, &e.to_string());
                Err(Down)
            }
            Err(e) => {
                warn!("redis refused a request: {e}");
                Err(Down)
            }
        }
    }

    /// A free lane if there is one, else the next in turn (waiting for it).
    fn lane(&self) -> MutexGuard<'_, Option<Kept>> {
        let start = self.next.fetch_add(1, Relaxed);
        for i in 0..self.lanes.len() {
            if let Ok(lane) = self.lanes[(start + i) % self.lanes.len()].try_lock() {
                return lane;
            }
        }
        self.lanes[start % self.lanes.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether Redis works: true only from the health thread, after a
    /// heartbeat; false from anyone who saw a failure, which rings the
    /// health thread to check at once. A change is logged and shown in
    /// `roomchat_redis_up`.
    pub(crate) fn set_health(&self, ok: bool, why: &str) {
        let was = self.status.up();
        if self.status.health.swap(ok, SeqCst) != ok {
            // Connections opened before a failure may be dead (Redis
            // restarted): none is reused after one.
            for lane in &self.lanes {
                if let Ok(mut lane) = lane.try_lock() {
                    *lane = None;
                }
            }
        }
        if !ok {
            self.status.ring();
        }
        self.report(was, why);
    }

    /// The subscriber's state: subscribed and repaired, or not. Losing the
    /// subscription is a failure like any other: the node serves again
    /// only after a new heartbeat (which also tells whether Redis came
    /// back without our data) and a new subscription.
    pub(crate) fn set_subscribed(&self, ok: bool, why: &str) {
        let was = self.status.up();
        self.status.subscribed.store(ok, SeqCst);
        if !ok {
            self.status.health.store(false, SeqCst);
            self.status.ring();
        }
        self.report(was, why);
    }

    fn report(&self, was: bool, why: &str) {
        let now = self.status.up();
        self.metrics.set_redis_up(now);
        if was && !now && !self.status.stopping() {
            warn!(
                "redis at {} unusable ({why}); refusing room requests",
                self.target
            );
        } else if !was && now {
            info!("redis at {} usable; serving rooms", self.target);
        }
    }
}

/// An error after which the connection cannot be trusted: I/O, timeout,
/// a dropped connection. Anything else is Redis answering with an error.
pub(crate) fn is_fatal(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::ConnectionAddr;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            mask_password("redis://:pw@h:6379/2"),
            "redis://:***@h:6379/2"
        );
        assert_eq!(mask_password("redis://u:pw@h"), "redis://u:***@h");
        assert_eq!(mask_password("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(mask_password("unix:///tmp/r.sock"), "unix:///tmp/r.sock");
        assert_eq!(
            mask_password("unix:///tmp/r.sock?db=2&pass=pw"),
            "unix:///tmp/r.sock?db=2&pass=***"
        );
        assert_eq!(
            mask_password("redis+unix:///r.sock?PASSWORD=pw&user=u"),
            "redis+unix:///r.sock?PASSWORD=***&user=u"
        );
        assert_eq!(mask_password("redis://:p/w@d@h/0"), "redis://:***@h/0");
        assert_eq!(mask_password("rediss://pw@h"), "rediss://***@h");
        assert_eq!(
            mask_password("redis://u:pw@h/0?password=pw"),
            "redis://u:***@h/0?password=***"
        );
    }

    #[test]
    fn urls_of_both_kinds_parse() {
        let unix = Target::parse("unix:///tmp/x.sock").unwrap();
        assert!(matches!(unix.info.addr(), ConnectionAddr::Unix(_)));
        let tcp = Target::parse("redis://127.0.0.1:6379/2").unwrap();
        assert!(matches!(tcp.info.addr(), ConnectionAddr::Tcp(..)));
        assert!(Target::parse("http://nope").is_err());
    }
}
