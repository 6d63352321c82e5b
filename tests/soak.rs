//! The soak driver behind `make soak` (scripts/soak.sh): random clients
//! join, chat, switch rooms, type, leave and vanish (cleanly or not) for a
//! bounded time against a running server given by `SOAK_WS`, `SOAK_HTTP`
//! and `SOAK_PID`. At the end every client must have seen a gap-free run of
//! `seq` for each of its stays, the server must be back to no connections
//! and no rooms, and its thread count and RSS (from /proc/PID/status) near
//! where they started. Ignored in `make test`; the script runs it with
//! `--ignored`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, HttpResponse};
use serde_json::{json, Value};
use tungstenite::Message;

/// A small xorshift generator: the driver needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Tally {
    sessions: AtomicU64,
    requests: AtomicU64,
    messages_seen: AtomicU64,
    stays: AtomicU64,
    abrupt: AtomicU64,
}

/// One client's view of its stays: the room it is in and the last `seq` seen there.
#[derive(Default)]
struct Stays {
    current: Option<(String, u64)>,
}

impl Stays {
    /// Follows one frame; panics on a gap or a message from outside the stay.
    fn see(&mut self, frame: &Value, tally: &Tally) {
        let data = &frame["data"];
        match frame["event"].as_str().unwrap_or_default() {
            "joined" => {
                // History ends at the room's last message: the next seq follows it.
                let last = data["history"]
                    .as_array()
                    .and_then(|h| h.last())
                    .and_then(|m| m["seq"].as_u64())
                    .unwrap_or(0);
                self.current = Some((data["room"].as_str().unwrap().to_owned(), last));
                tally.stays.fetch_add(1, Relaxed);
            }
            "chatMessage" => {
                let (room, last) = self.current.as_mut().expect("a message outside any room");
                assert_eq!(data["room"].as_str(), Some(room.as_str()), "{frame}");
                let seq = data["seq"].as_u64().unwrap();
                assert_eq!(seq, *last + 1, "gap in {room}: {frame}");
                *last = seq;
                tally.messages_seen.fetch_add(1, Relaxed);
            }
            "left" => self.current = None,
            "error" => panic!("unexpected error: {frame}"),
            _ => {}
        }
    }
}

const ROOMS: u64 = 8;

fn session(ws: SocketAddr, rng: &mut Rng, tally: &Tally) {
    let mut c = Client::connect(&format!("ws://{ws}/ws"));
    tally.sessions.fetch_add(1, Relaxed);
    let mut stays = Stays::default();
    let ops = 5 + rng.below(50);
    for i in 0..ops {
        let (event, data) = match (rng.below(10), &stays.current) {
            (0..=2, _) | (_, None) => (
                "joinRoom",
                json!({"username": format!("u{}", rng.below(100)), "room": format!("soak-{}", rng.below(ROOMS))}),
            ),
            (3..=7, Some(_)) => ("chatMessage", json!({"text": format!("msg {i}")})),
            (8, Some(_)) => ("typing", json!({"typing": rng.below(2) == 0})),
            _ => ("leaveRoom", json!({})),
        };
        let (before, reply) = c.request(event, data);
        for frame in &before {
            stays.see(frame, tally);
        }
        assert_eq!(reply["event"], "ack", "{event}: {reply}");
        tally.requests.fetch_add(1, Relaxed);
        thread::sleep(Duration::from_millis(rng.below(30))); // think time
    }
    // Vanish: a clean close, a leave first, or the TCP connection just dropped.
    match rng.below(3) {
        1 if stays.current.is_none() => {
            let _ = c.ws.close(None);
            let _ = c.ws.flush();
        }
        0 => {
            let _ = c.ws.close(None);
            let _ = c.ws.flush();
        }
        1 => {
            let (before, _) = c.request("leaveRoom", json!({}));
            for frame in &before {
                stays.see(frame, tally);
            }
            let _ = c.ws.close(None);
            let _ = c.ws.flush();
        }
        _ => {
            tally.abrupt.fetch_add(1, Relaxed);
        }
    }
}

/// A client that stays in one room the whole run, reading everything.
fn long_reader(ws: SocketAddr, room: String, until: Instant, tally: Arc<Tally>) -> u64 {
    let mut c = Client::connect(&format!("ws://{ws}/ws"));
    let mut stays = Stays::default();
    let (before, _) = c.request("joinRoom", json!({"username": "reader", "room": room}));
    for frame in &before {
        stays.see(frame, &tally);
    }
    c.ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = 0;
    while Instant::now() < until {
        match c.ws.read() {
            Ok(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["event"] == "chatMessage" {
                    seen += 1;
                }
                stays.see(&frame, &tally);
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("the long reader in {room} lost its connection: {e}"),
        }
    }
    seen
}

/// (threads, VmRSS in KiB) of the server.
fn proc_status(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server alive");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Threads:"), field("VmRSS:"))
}

fn get(http: SocketAddr, path: &str) -> HttpResponse {
    common::raw_http(
        http,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn metric(http: SocketAddr, name: &str) -> u64 {
    get(http, "/metrics")
        .body
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

#[test]
#[ignore = "minutes long: run by scripts/soak.sh (make soak)"]
fn soak() {
    let (Some(ws), Some(http), Some(pid)) = (
        env::<SocketAddr>("SOAK_WS"),
        env::<SocketAddr>("SOAK_HTTP"),
        env::<u32>("SOAK_PID"),
    ) else {
        panic!("set SOAK_WS, SOAK_HTTP and SOAK_PID (scripts/soak.sh does)");
    };
    let seconds = env::<u64>("SOAK_SECONDS").unwrap_or(180);
    let workers = env::<u64>("SOAK_CLIENTS").unwrap_or(32);
    let (threads0, rss0) = proc_status(pid);
    println!(
        "soak: {seconds}s, {workers} concurrent random clients, 4 long readers, {ROOMS} rooms"
    );
    println!("soak: start: server threads {threads0}, RSS {rss0} KiB");

    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tally = Arc::new(Tally::default());
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let tally = Arc::clone(&tally);
            thread::spawn(move || long_reader(ws, format!("soak-{r}"), until, tally))
        })
        .collect();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let tally = Arc::clone(&tally);
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w + 1) * 0x2545_F491));
                while Instant::now() < until {
                    session(ws, &mut rng, &tally);
                }
            })
        })
        .collect();
    // Sample the server while it works.
    let (mut peak_threads, mut peak_rss, mut peak_conns) = (threads0, rss0, 0);
    while Instant::now() < until {
        thread::sleep(Duration::from_secs(1));
        let (t, r) = proc_status(pid);
        peak_threads = peak_threads.max(t);
        peak_rss = peak_rss.max(r);
        peak_conns = peak_conns.max(metric(http, "roomchat_connections"));
    }
    for h in handles {
        h.join().expect("a random client failed");
    }
    let long_seen: u64 = readers
        .into_iter()
        .map(|r| r.join().expect("a long reader failed"))
        .sum();
    let run = started.elapsed();

    // Everyone is gone (a dropped connection takes the server a moment to notice).
    let settle = Instant::now();
    while metric(http, "roomchat_connections") > 0
        || get(http, "/api/rooms").body != r#"{"rooms":[]}"#
    {
        assert!(
            settle.elapsed() < Duration::from_secs(15),
            "connections or rooms left: {} / {}",
            metric(http, "roomchat_connections"),
            get(http, "/api/rooms").body
        );
        thread::sleep(Duration::from_millis(100));
    }
    let settled = settle.elapsed();
    // Writer threads linger a moment after their last frame.
    thread::sleep(Duration::from_secs(2));
    let (threads1, rss1) = proc_status(pid);
    let t = |a: &AtomicU64| a.load(Relaxed);
    println!(
        "soak: ran {:.0}s: {} sessions ({} dropped without a close), {} requests acked, {} stays, \
         {} chat messages checked gap-free ({} by the 4 long readers)",
        run.as_secs_f64(),
        t(&tally.sessions),
        t(&tally.abrupt),
        t(&tally.requests),
        t(&tally.stays),
        t(&tally.messages_seen),
        long_seen
    );
    println!(
        "soak: server: peak {peak_conns} connections, peak threads {peak_threads}, peak RSS {peak_rss} KiB; \
         messages received {}, frames sent {}, slow consumers {}, errors {}",
        metric(http, "roomchat_messages_received_total"),
        metric(http, "roomchat_frames_sent_total"),
        metric(http, "roomchat_slow_consumer_disconnects_total"),
        metric(http, "roomchat_errors_total"),
    );
    println!(
        "soak: end (settled {:.1}s after the run, measured 2 s later): server threads {threads1} (start {threads0}), RSS {rss1} KiB (start {rss0})",
        settled.as_secs_f64()
    );
    assert_eq!(metric(http, "roomchat_errors_total"), 0);
    assert_eq!(metric(http, "roomchat_slow_consumer_disconnects_total"), 0);
    assert!(long_seen > 0, "the long readers saw traffic");
    assert!(
        threads1 <= threads0 + 2,
        "threads {threads0} -> {threads1}: a thread per finished client leaked"
    );
    // glibc keeps freed memory in its per-thread arenas; what must not
    // happen is growth with the work done.
    assert!(
        rss1 <= rss0 + 64 * 1024,
        "RSS {rss0} -> {rss1} KiB after every client left"
    );
}
