//! Hostile clients against a real server on loopback: connections that never
//! finish a handshake (in bulk, and trickling), a client flooding `joinRoom`
//! with fresh room names, path traversal in every encoding, enormous request
//! heads, and HTTP requests that never finish. Every wait is bounded.
//!
//! (Frames cut off halfway, invalid UTF-8, unmasked frames, fragments around
//! a ping, a 1 GiB length header and slow consumers are in `limits.rs`.)

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{HttpResponse, TestServer};
use roomchat::config::RateLimit;
use serde_json::json;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How late past the handshake timeout a connection may still be open.
const SLACK: Duration = Duration::from_millis(1500);

/// Waits until `sock` is closed by the peer (EOF or reset), up to `deadline`.
/// Returns what was read, or None if it was still open at the deadline.
fn closed_by(sock: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(got), // reset: closed too
        }
    }
}

/// Sends one byte every `every` to each socket, on a thread, until `stop`
/// (or until its peer closes it). Returns the thread.
fn trickle(
    mut socks: Vec<TcpStream>,
    request: &'static [u8],
    every: Duration,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<TcpStream>> {
    thread::spawn(move || {
        let started = Instant::now();
        let mut at = 0;
        // Bounded: at most the request's length, and at most 10 s.
        while !stop.load(Ordering::Relaxed)
            && at < request.len()
            && started.elapsed() < Duration::from_secs(10)
        {
            for s in &mut socks {
                let _ = s.write_all(&request[at..at + 1]);
            }
            at += 1;
            thread::sleep(every); // the trickle's own pace, not a sync point
        }
        socks
    })
}

/// A real client's round: connect, join, chat, and check its own echo.
fn chat_round(server: &TestServer, room: &str) {
    let mut a = server.member("ann", room);
    let mut b = server.member("bob", room);
    a.expect("userJoined");
    let seq = a.say("still serving");
    assert_eq!(b.expect("chatMessage")["seq"], seq);
}

#[test]
fn silent_and_trickling_handshakes_are_dropped_while_real_clients_chat() {
    let server = TestServer::with(|c| c.handshake_timeout = HANDSHAKE_TIMEOUT);
    // A thousand connections that never send a byte, and twenty that send
    // an upgrade request one byte every 200 ms (finishing would take 40 s).
    // 1000 plus 1000 server-side descriptors fit well under the usual
    // RLIMIT_NOFILE of this machine's CI (20000); fewer if the limit is low.
    let silent_count = nofile_budget(1000);
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..silent_count)
        .map(|_| TcpStream::connect(server.ws).unwrap())
        .collect();
    let connected = Instant::now();
    let trickling: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(server.ws).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let upgrade: &'static [u8] = Box::leak(
        common::upgrade_request("/ws", "")
            .into_bytes()
            .into_boxed_slice(),
    );
    let trickler = trickle(
        trickling,
        upgrade,
        Duration::from_millis(200),
        Arc::clone(&stop),
    );

    // Meanwhile, real clients connect and chat, and are not kept waiting.
    let round = Instant::now();
    chat_round(&server, "busy");
    assert!(
        round.elapsed() < Duration::from_millis(900),
        "a chat round took {:?} among {silent_count} silent connections",
        round.elapsed()
    );
    // At most the round's two clients, still going away; none of the 1020.
    assert!(
        server.metric("roomchat_connections") <= 2,
        "unfinished handshakes are not counted as clients"
    );

    // Every silent connection is closed within the timeout (plus slack),
    // counted from its accept, which is no earlier than `started`.
    let deadline = connected + HANDSHAKE_TIMEOUT + SLACK;
    for (i, sock) in silent.iter_mut().enumerate() {
        let answer = closed_by(sock, deadline).unwrap_or_else(|| {
            panic!(
                "silent connection {i} still open {:?} after connecting",
                started.elapsed()
            )
        });
        // Nothing was sent, so nothing or a 408 may come back.
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // By now the trickling handshakes are past their deadline too.
    stop.store(true, Ordering::Relaxed);
    let mut trickling = trickler.join().unwrap();
    for sock in &mut trickling {
        let answer = closed_by(sock, Instant::now() + SLACK).expect("a trickling handshake closed");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    drop(silent);
    // And the server still takes new clients.
    chat_round(&server, "after");
}

#[test]
fn silent_and_trickling_http_requests_are_dropped_while_the_page_is_served() {
    let server = TestServer::with(|c| c.handshake_timeout = HANDSHAKE_TIMEOUT);
    let mut silent: Vec<TcpStream> = (0..nofile_budget(300))
        .map(|_| TcpStream::connect(server.http).unwrap())
        .collect();
    let connected = Instant::now();
    let trickling: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(server.http).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = trickle(
        trickling,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 0123456789012345678901234567890123456789\r\n\r\n",
        Duration::from_millis(200),
        Arc::clone(&stop),
    );
    for _ in 0..5 {
        let t = Instant::now();
        let page = server.get("/");
        assert_eq!(page.status, 200);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "the page took {:?}",
            t.elapsed()
        );
    }
    let deadline = connected + HANDSHAKE_TIMEOUT + SLACK;
    for (i, sock) in silent.iter_mut().enumerate() {
        let answer = closed_by(sock, deadline)
            .unwrap_or_else(|| panic!("silent HTTP connection {i} still open"));
        assert!(
            answer.is_empty(),
            "nothing sent, nothing answered: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // By now the trickling handshakes are past their deadline too.
    stop.store(true, Ordering::Relaxed);
    let mut trickling = trickler.join().unwrap();
    for sock in &mut trickling {
        let answer = closed_by(sock, Instant::now() + SLACK).expect("a trickling request closed");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    assert_eq!(server.get("/healthz").status, 200);
}

/// How many idle connections the open-file limit leaves room for (each
/// costs a descriptor on both ends), at most `wanted`.
fn nofile_budget(wanted: usize) -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    // Other tests of this binary run at the same time: leave them half.
    wanted.min(limit / 4)
}

#[test]
fn a_flood_of_fresh_room_names_leaves_one_room() {
    let server = TestServer::with(|c| c.rate_limit = RateLimit(None));
    let mut watcher = server.member("watcher", "lobby");
    let mut flood = server.member("flood", "lobby");
    watcher.expect("userJoined");
    const ROOMS: usize = 10_000;
    const BATCH: usize = 250;
    let mut most_rooms = 0;
    for batch in 0..ROOMS / BATCH {
        // A batch of joins, the last with an ack: reading up to it keeps
        // the flooder's own queue short (it must not become a slow consumer).
        for i in 0..BATCH {
            let n = batch * BATCH + i;
            let mut frame = json!({"event": "joinRoom", "data": {"username": "flood", "room": format!("room-{n}")}});
            if i == BATCH - 1 {
                frame["ack"] = json!(n);
            }
            flood.send(frame);
        }
        let last = batch * BATCH + BATCH - 1;
        loop {
            let frame = flood.recv();
            if frame["ack"] == last {
                assert_eq!(frame["data"]["room"], format!("room-{last}"));
                break;
            }
            assert_eq!(frame["event"], "joined", "{frame}");
        }
        let rooms: serde_json::Value =
            serde_json::from_str(&server.get("/api/rooms").body).unwrap();
        let rooms = rooms["rooms"].as_array().unwrap().clone();
        most_rooms = most_rooms.max(rooms.len());
        assert_eq!(
            rooms,
            [
                json!({"name": "lobby", "users": 1}),
                json!({"name": format!("room-{last}"), "users": 1})
            ],
            "each join left the previous room, which was dropped"
        );
    }
    assert_eq!(most_rooms, 2);
    assert_eq!(
        watcher.expect("userLeft")["username"],
        "flood",
        "the flood left the lobby once"
    );
    watcher.assert_quiet();
    flood.emit("leaveRoom", json!({}));
    flood.expect("left");
    watcher.leave_and_check(&server);
}

trait LeaveCheck {
    fn leave_and_check(&mut self, server: &TestServer);
}

impl LeaveCheck for common::Client {
    /// Leaves; then no room is left, in `/api/rooms` and in the gauge.
    fn leave_and_check(&mut self, server: &TestServer) {
        self.ok("leaveRoom", json!({}));
        assert_eq!(server.get("/api/rooms").body, r#"{"rooms":[]}"#);
        assert_eq!(server.metric("roomchat_rooms"), 0);
    }
}

#[test]
fn the_rooms_gauge_follows_the_flood() {
    let server = TestServer::with(|c| c.rate_limit = RateLimit(None));
    let mut flood = server.client();
    for n in 0..2000 {
        flood
            .send(json!({"event": "joinRoom", "data": {"username": "f", "room": format!("r{n}")}}));
        if n % 200 == 199 {
            // Reading up to this ack consumes the `joined` frames before it.
            flood.ok("typing", json!({"typing": true}));
        }
    }
    flood.ok("typing", json!({"typing": false}));
    assert_eq!(server.metric("roomchat_rooms"), 1);
}

// ---------------------------------------------------------------------------
// HTTP: traversal, enormous heads, requests that never finish.

const SECRET: &str = "TOP-SECRET-a8f3c1";

/// Request targets that try to leave the client's folder, in every encoding
/// we could think of. `{abs}` is replaced by the secret's absolute path.
const ESCAPES: &[&str] = &[
    "/../secret.txt",
    "/../../secret.txt",
    "/./../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/%2e%2E%2fsecret.txt",
    "/%2E%2E%2Fsecret.txt",
    "/..%2fsecret.txt",
    "/..%2Fsecret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/sub/..%2f..%2fsecret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/%252e%252e/secret.txt",
    "/%252e%252e%252fsecret.txt",
    "/%25252e%25252e/secret.txt",
    "/..\\secret.txt",
    "/..%5csecret.txt",
    "/..%5Csecret.txt",
    "/%5c..%5csecret.txt",
    "/sub\\..\\..\\secret.txt",
    "/%c0%ae%c0%ae/secret.txt",
    "/%c0%af../secret.txt",
    "/%e0%80%ae%e0%80%ae/secret.txt",
    "/%u002e%u002e/secret.txt",
    "/..%00/secret.txt",
    "/secret.txt%00.html",
    "/..;/secret.txt",
    "/....//secret.txt",
    "/.../secret.txt",
    "//secret.txt",
    "//etc/passwd",
    "///etc/passwd",
    "/%2fetc%2fpasswd",
    "/%2Fetc/passwd",
    "/etc/passwd",
    "/../../../../../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/{abs}",
    "/%2f{abs}",
    "/C:/Windows/win.ini",
    "/c:%5cwindows%5cwin.ini",
    "/link.txt",
    "/linkdir/secret.txt",
    "/sub/../../secret.txt?x=1",
    "/sub/%2e%2e/%2e%2e/secret.txt#frag",
];

/// Request targets that are not origin-form at all.
const ODD_TARGETS: &[&str] = &[
    "../secret.txt",
    "secret.txt",
    "http://x/../secret.txt",
    "file:///etc/passwd",
    "*",
    "{abs}",
];

fn check_escapes(server: &TestServer, abs: &str) {
    for template in ESCAPES {
        let path = template.replace("{abs}", abs.trim_start_matches('/'));
        for method in ["GET", "HEAD"] {
            let answer = server.http_request(&format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            ));
            assert_eq!(answer.status, 404, "{method} {path}: {}", answer.head);
            assert_no_secret(&answer, &path);
        }
    }
    for template in ODD_TARGETS {
        let target = template.replace("{abs}", abs);
        let answer = server.http_request(&format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
        assert!(
            matches!(answer.status, 400 | 404 | 0),
            "GET {target}: {}",
            answer.head
        );
        assert_no_secret(&answer, &target);
    }
}

fn assert_no_secret(answer: &HttpResponse, path: &str) {
    assert!(!answer.body.contains(SECRET), "{path} leaked the secret");
    assert!(!answer.body.contains("root:"), "{path} leaked /etc/passwd");
    assert!(!answer.body.contains("[fonts]"), "{path} leaked win.ini");
}

/// A folder holding `www/` (served) and, beside it, the secret, plus links
/// from inside `www/` to the outside.
struct Site {
    dir: std::path::PathBuf,
}

impl Site {
    fn new(tag: &str) -> Site {
        let dir =
            std::env::temp_dir().join(format!("roomchat-hostile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www/sub")).unwrap();
        std::fs::write(
            dir.join("www/index.html"),
            "<!doctype html><title>ok</title>",
        )
        .unwrap();
        std::fs::write(dir.join("www/sub/page.html"), "<!doctype html>sub").unwrap();
        std::fs::write(dir.join("secret.txt"), SECRET).unwrap();
        std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("www/link.txt")).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("www/linkdir")).unwrap();
        Site { dir }
    }

    fn secret(&self) -> String {
        self.dir.join("secret.txt").to_string_lossy().into_owned()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn traversal_in_every_encoding_is_404_from_a_www_dir() {
    let site = Site::new("www");
    let www = site.dir.join("www");
    let server = TestServer::with(|c| c.www = Some(www));
    assert_eq!(server.get("/").status, 200);
    assert_eq!(server.get("/sub/page.html").body, "<!doctype html>sub");
    check_escapes(&server, &site.secret());
    assert_eq!(server.get("/").status, 200, "still serving");
}

#[test]
fn traversal_in_every_encoding_is_404_from_the_embedded_client() {
    let site = Site::new("embedded");
    let server = TestServer::start();
    check_escapes(&server, &site.secret());
    assert_eq!(server.get("/").status, 200, "still serving");
}

/// Sends `head` (ignoring a write cut short by the server's close) and reads
/// the answer until the peer closes or `WAIT` passes.
fn send_tolerant(addr: SocketAddr, head: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_write_timeout(Some(common::WAIT)).unwrap();
    let _ = stream.write_all(head);
    let answer = closed_by(&mut stream, Instant::now() + common::WAIT)
        .expect("the server answers or closes an enormous head");
    common::parse_http(&answer)
}

#[test]
fn enormous_request_heads_get_431_or_a_close_on_both_ports() {
    let server = TestServer::start();
    for (port, addr) in [("http", server.http), ("ws", server.ws)] {
        for size in [20 * 1024, 1024 * 1024] {
            let one_line = format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(size)
            );
            let many_lines: String = (0..size / 1024)
                .map(|i| format!("X-{i}: {}\r\n", "b".repeat(1000)))
                .collect();
            let many_lines = format!("GET / HTTP/1.1\r\nHost: x\r\n{many_lines}\r\n");
            // A header line that never ends.
            let endless = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}", "c".repeat(size));
            for (what, head) in [
                ("one line", one_line),
                ("many lines", many_lines),
                ("endless", endless),
            ] {
                let t = Instant::now();
                let answer = send_tolerant(addr, head.as_bytes());
                assert!(
                    matches!(answer.status, 431 | 0),
                    "{port} {size} bytes {what}: {}",
                    answer.head
                );
                assert!(
                    t.elapsed() < Duration::from_secs(3),
                    "{port} {what}: {:?}",
                    t.elapsed()
                );
            }
        }
    }
    assert_eq!(server.get("/healthz").status, 200);
    server.client();
}

#[test]
fn requests_that_never_finish_do_not_stop_the_page() {
    // A long handshake timeout: the page must not wait for it.
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_secs(8));
    let heads: [&[u8]; 4] = [
        // A head that stops halfway.
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ",
        // A complete head whose body never comes (the handler does not read it).
        b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial",
        // A small body, which the server never reads (the connection closes after the answer).
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc",
        // A chunked body that never ends.
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ];
    let mut stalled = Vec::new();
    for head in heads {
        for _ in 0..3 {
            let mut s = TcpStream::connect(server.http).unwrap();
            s.write_all(head).unwrap();
            stalled.push(s);
        }
    }
    thread::sleep(Duration::from_millis(100)); // let the server take them in
    for path in ["/", "/healthz", "/api/rooms", "/config.json"] {
        let t = Instant::now();
        let answer = server.get(path);
        assert_eq!(answer.status, 200, "{path}");
        assert!(
            t.elapsed() < Duration::from_millis(700),
            "{path} waited {:?} behind unfinished requests",
            t.elapsed()
        );
    }
    drop(stalled);
}

/// The server binary as a child process on free ports, for a case that may
/// crash it (a crash then fails one test, not the whole test binary).
struct Child {
    child: std::process::Child,
    http: SocketAddr,
}

impl Child {
    fn start() -> Child {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomchat"))
            .args(["--http-port", "0", "--ws-port", "0"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no HTTP port in {line:?}"));
        Child {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// GET `path`; on failure, says whether the server is still alive.
    fn get(&mut self, path: &str) -> HttpResponse {
        let mut stream = TcpStream::connect(self.http).unwrap_or_else(|e| {
            panic!(
                "connect failed ({e}); server exit: {:?}",
                self.child.try_wait()
            )
        });
        stream.set_read_timeout(Some(common::WAIT)).unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        let read = stream.read_to_end(&mut bytes);
        if read.is_err() || bytes.is_empty() {
            thread::sleep(Duration::from_millis(100)); // give a crash time to show
            panic!(
                "no answer to GET {path} ({read:?}); server exit: {:?}",
                self.child.try_wait()
            );
        }
        common::parse_http(&bytes)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A body announced as enormous and never sent: the server must not size a
/// buffer by the announced length (tiny_http, when it still read requests,
/// aborted the process that way), nor let the connection waiting for the
/// bytes hold up anyone else's answer.
#[test]
fn an_enormous_announced_body_neither_crashes_nor_blocks_the_server() {
    let mut server = Child::start();
    let mut held = Vec::new();
    for length in [
        "1099511627776",
        "9223372036854775807",
        "18446744073709551615",
    ] {
        let mut s = TcpStream::connect(server.http).unwrap();
        s.write_all(
            format!("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\nxyz")
                .as_bytes(),
        )
        .unwrap();
        held.push(s);
        let t = Instant::now();
        let answer = server.get("/healthz");
        assert_eq!(answer.status, 200, "after Content-Length {length}");
        assert!(
            t.elapsed() < Duration::from_millis(700),
            "{:?}",
            t.elapsed()
        );
    }
}
