//! A private redis-server per test, on a Unix socket in a temp folder, and
//! cluster nodes that use it. Each test starts its own Redis, so tests run
//! in parallel and may kill theirs; it is stopped by its PID, never by name,
//! and a system Redis is never touched.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{banner_port, Client, TestServer};

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// The cluster's heartbeat period in tests: a dead node is out after 8 of
/// them (0.8 s instead of 8 s), a down Redis is retried every 50 ms.
pub const TICK: Duration = Duration::from_millis(100);

pub struct TestRedis {
    child: Option<Child>,
    dir: PathBuf,
    pub url: String,
}

impl TestRedis {
    /// A fresh, empty Redis; None (with a message) when redis-server is not
    /// installed, so that the test can skip.
    pub fn start() -> Option<TestRedis> {
        if !std::path::Path::new(REDIS_SERVER).exists() {
            eprintln!("SKIPPED: {REDIS_SERVER} not found (apt-get install redis-server)");
            return None;
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "roomchat-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("unix://{}", dir.join("redis.sock").display());
        let mut redis = TestRedis {
            child: None,
            dir,
            url,
        };
        redis.launch();
        Some(redis)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Starts redis-server (no persistence but an explicit `SAVE`, which it
    /// loads at start) and waits for its PING.
    fn launch(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(REDIS_SERVER)
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.try_cmd(&["PING"]).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not answer PING within 5 s");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill it and start it again on the same socket: empty, or with the
    /// data of the last `SAVE` if one was made (an older snapshot).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Forgets the last `SAVE`: the next restart starts empty.
    pub fn forget_snapshot(&self) {
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(1))?;
        con.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con)
    }

    /// A command's reply (panics if Redis refuses).
    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        self.try_cmd(args).unwrap()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = redis::from_redis_value(self.cmd(&["KEYS", "*"])).unwrap();
        keys.sort();
        keys
    }

    /// A cluster node on this Redis, in this process.
    pub fn node(&self) -> TestServer {
        self.node_with(|_| {})
    }

    pub fn node_with(&self, adjust: impl FnOnce(&mut roomchat::Config)) -> TestServer {
        let url = self.url.clone();
        TestServer::with(move |c| {
            c.redis = Some(roomchat::config::Secret::new(url));
            c.redis_tick = TICK;
            c.rate_limit = roomchat::config::RateLimit(None);
            adjust(c);
        })
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // A stopped Redis does not die of SIGKILL until continued.
            if let Ok(None) = child.try_wait() {
                let _ = Command::new("kill")
                    .args(["-CONT", &child.id().to_string()])
                    .status();
            }
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `roomchat` binary as a cluster node, for what needs a process: a
/// SIGKILL, an exit status. Killed on drop if still running.
pub struct NodeProcess {
    pub child: Child,
    pub http: u16,
    pub ws: u16,
}

impl NodeProcess {
    /// A running node; its log goes nowhere (a pipe nobody reads could fill
    /// and stall it), or to the file `ROOMCHAT_NODE_LOG` names, for debugging.
    pub fn start(redis_url: &str, extra: &[&str]) -> NodeProcess {
        let log = match std::env::var_os("ROOMCHAT_NODE_LOG") {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let mut child = NodeProcess::spawn(redis_url, extra, log);
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        NodeProcess {
            http: banner_port(&line, "http://"),
            ws: banner_port(&line, "ws://"),
            child,
        }
    }

    /// The node's process as started, stdout piped (for its banner).
    pub fn spawn(redis_url: &str, extra: &[&str], stderr: Stdio) -> Child {
        let tick = TICK.as_millis().to_string();
        let mut command = Command::new(env!("CARGO_BIN_EXE_roomchat"));
        command
            .args(["--http-port", "0", "--ws-port", "0", "--rate-limit", "off"])
            .args(["--redis", redis_url]);
        if !extra.contains(&"--redis-tick-ms") {
            command.args(["--redis-tick-ms", &tick]);
        }
        command
            .args(extra)
            .env_remove("CHAT_REDIS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.ws)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process's thread count once it is steady: writer threads end
    /// 100 ms after their queue empties, so it is read until two readings
    /// 300 ms apart agree.
    pub fn threads_when_settled(&self) -> u64 {
        let read = || {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
            let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let mut last = read();
        for _ in 0..20 {
            thread::sleep(Duration::from_millis(300));
            let now = read();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }

    /// Waits up to `limit` for the process to exit; its status code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal by PID (`-STOP`, `-CONT`, `-TERM`).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // A stopped process does not die of SIGKILL until continued; one
        // already reaped is left alone (its PID may be another's by now).
        if let Ok(None) = self.child.try_wait() {
            self.signal("-CONT");
        }
        self.kill();
    }
}

/// Polls `check` every 20 ms until it holds; fails the test after `limit`.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Reads frames until a `chatMessage`; returns its data. Other frames are skipped.
pub fn next_chat(c: &mut Client) -> Value {
    loop {
        let frame = c.recv();
        if frame["event"] == "chatMessage" {
            return frame["data"].clone();
        }
    }
}
