//! The `roomchat` binary as a child process: started on free ports, its
//! startup line read, signalled by PID, and measured through
//! `/proc/<pid>` (threads, open descriptors, resident memory), which an
//! in-process `TestServer` cannot give (there `/proc/self` is the test).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::banner_port;

/// A `roomchat` child process, killed on drop if still running.
pub struct Process {
    pub child: Child,
    pub http: u16,
    pub ws: u16,
    pub line: String,
}

impl Process {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_roomchat"));
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("RUST_LOG", "warn");
        for var in [
            "CHAT_HOST",
            "CHAT_HTTP_PORT",
            "CHAT_WS_PORT",
            "CHAT_RATE_LIMIT",
            "CHAT_HISTORY",
            "CHAT_MAX_CONNECTIONS",
            "CHAT_IDLE_TIMEOUT",
            "CHAT_HANDSHAKE_TIMEOUT",
            "CHAT_PING_INTERVAL",
            "CHAT_MAX_MESSAGE_BYTES",
            "CHAT_ALLOWED_ORIGIN",
        ] {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let (http, ws) = (banner_port(&line, "http://"), banner_port(&line, "ws://"));
        Process {
            child,
            http,
            ws,
            line,
        }
    }

    /// Started on free ports with `args` added.
    pub fn with(args: &[&str]) -> Process {
        let mut all = vec!["--http-port", "0", "--ws-port", "0"];
        all.extend_from_slice(args);
        Process::start(&all, &[])
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http))
    }

    pub fn ws_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ws))
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, at most `limit`; returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20)); // polling a child's exit; no event to wait on
        }
        panic!("roomchat did not exit within {limit:?}");
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A number from `/proc/<pid>/status` (`Threads:`, `VmRSS:` in kB, ...).
    pub fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn threads(&self) -> u64 {
        self.status_field("Threads:")
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    /// Open file descriptors.
    pub fn fds(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count() as u64
    }

    /// The names of the process's threads, sorted, for failure messages.
    pub fn thread_names(&self) -> String {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return String::new();
        };
        let mut names: Vec<String> = tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect();
        names.sort();
        let mut counted: Vec<(String, usize)> = Vec::new();
        for name in names {
            match counted.last_mut() {
                Some((last, n)) if *last == name => *n += 1,
                _ => counted.push((name, 1)),
            }
        }
        counted
            .iter()
            .map(|(name, n)| format!("{name}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The value of an unlabelled series in `/metrics`, or the sum of a labelled one.
    pub fn metric(&self, name: &str) -> u64 {
        let body = super::raw_http(
            self.http_addr(),
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .body;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// Polls `/proc` until `measure` is at most `limit`, for at most
    /// `within`; returns the last value (the caller asserts on it).
    pub fn settles(&self, within: Duration, limit: u64, measure: impl Fn(&Process) -> u64) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let value = measure(self);
            if value <= limit || Instant::now() >= deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(25)); // polling /proc; there is no event for a thread's or a descriptor's end
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
