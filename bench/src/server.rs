//! The server under test: one already running (`--url`, `--server-pid`), or
//! one the bench starts itself and kills when done.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// URL of a running server: ws://HOST:PORT/ws as roomchat prints it, or
    /// http://HOST:PORT as the peers do (the path follows --protocol).
    /// Repeatable: connections are dealt round-robin over the URLs (members of
    /// one room spread over several servers). Without it the bench starts
    /// --server-bin itself.
    #[arg(long)]
    pub url: Vec<String>,
    /// PID of that server, for RSS, threads and CPU from /proc/PID.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Server binary to start when no --url is given.
    #[arg(long, default_value = "target/release/roomchat")]
    pub server_bin: PathBuf,
    /// Extra argument for a started server (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

pub struct Server {
    pub urls: Vec<String>,
    pub pid: Option<u32>,
    child: Option<Child>,
}

impl Server {
    pub fn start(a: &ServerArgs) -> Result<Server, String> {
        if !a.url.is_empty() {
            return Ok(Server {
                urls: a.url.clone(),
                pid: a.server_pid,
                child: None,
            });
        }
        let mut cmd = Command::new(&a.server_bin);
        cmd.args(["--host", "127.0.0.1", "--http-port", "0", "--ws-port", "0"])
            .args(["--rate-limit", "off", "--max-connections", "20000"])
            .args(&a.server_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", a.server_bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {} // keep the pipe drained
        });
        let mut server = Server {
            urls: Vec::new(),
            pid: Some(child.id()),
            child: Some(child),
        };
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Ok(line))) => line,
            _ => return Err("the server printed no startup line within 10 s".into()),
        };
        server.urls = vec![ws_url(&line).ok_or_else(|| format!("no ws:// URL in {line:?}"))?];
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `ws://...` word of the startup line, path included when given.
pub fn ws_url(line: &str) -> Option<String> {
    let at = line.find("ws://")?;
    let url: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ')' | ',' | '"'))
        .collect();
    Some(url)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_url_in_the_startup_line() {
        let l = "roomchat listening on http://127.0.0.1:3000 (websocket ws://127.0.0.1:3001/ws)";
        assert_eq!(super::ws_url(l).unwrap(), "ws://127.0.0.1:3001/ws");
    }
}
