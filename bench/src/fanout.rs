//! `fanout`: R rooms × N members, S of them sending M messages each, either
//! within a window of un-acked messages or at a fixed total rate. Every member
//! checks `seq` and each sender's order, and measures latency from the send
//! time written into the text.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::net::{Event, Handler, Net, Target};
use crate::proto::{self, Msg, Parser};
use crate::report;

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Members per room, senders included.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Senders per room.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per sender.
    #[arg(long, default_value_t = 2000)]
    pub messages: u64,
    /// Most un-acked chat messages per sender (window mode).
    #[arg(long, default_value_t = 8)]
    pub window: u64,
    /// Fixed total rate in messages/s over all senders (open loop, no window).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Event-loop threads; members are dealt round-robin.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Most handshakes in flight per thread while connecting (the server's
    /// listen backlog is 128: more in flight and SYNs get dropped).
    #[arg(long, default_value_t = 100)]
    pub connect_burst: usize,
}

struct Shared {
    total: usize,
    threads: usize,
    joined: AtomicUsize,
    go: OnceLock<Instant>,
    done_loops: AtomicUsize,
    abort: AtomicBool,
}

struct Sender {
    global: usize,
    sent: u64,
    acked: u64,
}

struct Member {
    room: usize,
    name: String,
    conn: usize,
    sender: Option<Sender>,
    joined: bool,
    last_seq: u64,
    received: u64,
    /// Per sender of the room: the `n` expected next.
    next_n: Vec<u64>,
}

#[derive(Default)]
struct Out {
    received: u64,
    seq_errors: u64,
    order_errors: u64,
    untagged: u64,
    errors: u64,
    closed: u64,
    sent: u64,
    acked: u64,
    samples: Vec<String>,
    last_rx: Option<Instant>,
    close_secs: f64,
    unclosed: usize,
    hist: Option<Histogram<u64>>,
    connect: Option<Histogram<u64>>,
}

struct Fan<'a> {
    a: &'a FanoutArgs,
    shared: &'a Shared,
    prefix: &'a str,
    members: Vec<Member>,
    by_conn: Vec<usize>,
    next_connect: usize,
    handshaking: usize,
    started: bool,
    expected: u64,
    receivers_done: usize,
    senders_done: usize,
    senders: usize,
    reported_done: bool,
    buf: Vec<u8>,
    parser: Parser,
    out: Out,
    hist: Histogram<u64>,
    connect: Histogram<u64>,
}

impl Fan<'_> {
    fn room_name(&self, r: usize) -> String {
        format!("{}-{r}", self.prefix)
    }

    fn note(&mut self, s: String) {
        self.out.errors += 1;
        if self.out.samples.len() < 5 {
            self.out.samples.push(s);
        }
    }

    fn send(&mut self, net: &mut Net, m: usize) {
        let mem = &mut self.members[m];
        let Some(s) = &mut mem.sender else {
            return;
        };
        proto::chat(
            &mut self.buf,
            s.global,
            s.sent,
            proto::nanos(Instant::now()),
        );
        s.sent += 1;
        self.out.sent += 1;
        net.send_text(mem.conn, &self.buf);
    }

    /// Window mode: keep `window` messages in flight.
    fn pump(&mut self, net: &mut Net, m: usize) {
        while let Some(s) = &self.members[m].sender {
            if s.sent >= self.a.messages || s.sent - s.acked >= self.a.window {
                return;
            }
            self.send(net, m);
        }
    }

    /// Rate mode: send what is due; returns when the next message is due.
    fn due(&mut self, net: &mut Net, now: Instant, go: Instant) -> Option<Instant> {
        let rate = self.a.rate?;
        let total = (self.a.rooms * self.a.senders) as f64;
        let mut next: Option<Instant> = None;
        for m in 0..self.members.len() {
            loop {
                let mem = &self.members[m];
                let Some(s) = &mem.sender else {
                    break;
                };
                if s.sent >= self.a.messages || !mem.joined {
                    break;
                }
                let at =
                    go + Duration::from_secs_f64((s.sent as f64 * total + s.global as f64) / rate);
                if at > now {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    break;
                }
                self.send(net, m);
            }
        }
        next
    }

    fn tick(&mut self, net: &mut Net, now: Instant) -> Option<Instant> {
        if !self.started {
            while self.next_connect < self.members.len() && self.handshaking < self.a.connect_burst
            {
                let id = net.connect();
                if self.by_conn.len() <= id {
                    self.by_conn.resize(id + 1, usize::MAX);
                }
                self.by_conn[id] = self.next_connect;
                self.members[self.next_connect].conn = id;
                self.next_connect += 1;
                self.handshaking += 1;
            }
            if self.shared.joined.load(Ordering::Acquire) < self.shared.total {
                return None;
            }
            self.shared.go.get_or_init(|| now);
            self.started = true;
            if self.a.rate.is_none() {
                for m in 0..self.members.len() {
                    self.pump(net, m);
                }
            }
        }
        let go = *self.shared.go.get().expect("set when started");
        let next = self.due(net, now, go);
        if !self.reported_done
            && self.receivers_done == self.members.len()
            && self.senders_done == self.senders
        {
            self.reported_done = true;
            self.shared.done_loops.fetch_add(1, Ordering::AcqRel);
        }
        next
    }
}

impl Handler for Fan<'_> {
    fn event(&mut self, net: &mut Net, id: usize, ev: Event<'_>, now: Instant) {
        let m = self.by_conn.get(id).copied().unwrap_or(usize::MAX);
        if m == usize::MAX {
            return;
        }
        match ev {
            Event::Open(took) => {
                let _ = self.connect.record(took.as_nanos().max(1) as u64);
                let room = self.room_name(self.members[m].room);
                proto::join(&mut self.buf, &self.members[m].name, &room);
                net.send_text(id, &self.buf);
            }
            Event::Closed(why) => {
                self.out.closed += 1;
                self.by_conn[id] = usize::MAX;
                self.note(format!("member {} closed: {why:?}", self.members[m].name));
                self.shared.abort.store(true, Ordering::Release);
            }
            Event::Text(p) => match self.parser.parse(p) {
                Msg::Chat { seq, tag } => {
                    let expected = self.expected;
                    let senders = self.a.senders;
                    let mem = &mut self.members[m];
                    mem.received += 1;
                    self.out.received += 1;
                    self.out.last_rx = Some(now);
                    if seq != mem.last_seq + 1 {
                        self.out.seq_errors += 1;
                    }
                    mem.last_seq = seq;
                    match tag {
                        Some(t) if t.sender / senders == mem.room => {
                            let k = t.sender % senders;
                            if mem.next_n[k] != t.n {
                                self.out.order_errors += 1;
                            }
                            mem.next_n[k] = t.n + 1;
                            let lat = proto::nanos(now).saturating_sub(t.ts);
                            self.hist.saturating_record(lat.max(1));
                        }
                        _ => self.out.untagged += 1,
                    }
                    if mem.received == expected {
                        self.receivers_done += 1;
                    }
                }
                Msg::Ack { ack, .. } if ack == proto::JOIN_ACK => {
                    if !self.members[m].joined {
                        self.members[m].joined = true;
                        self.handshaking -= 1;
                        self.shared.joined.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Msg::Ack { .. } => {
                    let Some(s) = &mut self.members[m].sender else {
                        return self.note("ack to a non-sender".into());
                    };
                    s.acked += 1;
                    self.out.acked += 1;
                    if s.acked == self.a.messages {
                        self.senders_done += 1;
                    }
                    if self.a.rate.is_none() {
                        self.pump(net, m);
                    }
                }
                Msg::Error { code, ack } => {
                    self.note(format!("error {code} (ack {ack:?})"));
                    if ack == Some(proto::JOIN_ACK) {
                        self.shared.abort.store(true, Ordering::Release);
                    }
                }
                Msg::Bad => self.note(format!("unreadable frame {}", String::from_utf8_lossy(p))),
                Msg::Joined | Msg::Connected | Msg::Other => {}
            },
        }
    }
}

fn run_loop(
    a: &FanoutArgs,
    target: &Target,
    shared: &Shared,
    prefix: &str,
    members: Vec<Member>,
    deadline: Instant,
) -> Out {
    let senders = members.iter().filter(|m| m.sender.is_some()).count();
    let mut fan = Fan {
        a,
        shared,
        prefix,
        members,
        by_conn: Vec::new(),
        next_connect: 0,
        handshaking: 0,
        started: false,
        expected: (a.senders as u64) * a.messages,
        receivers_done: 0,
        senders_done: 0,
        senders,
        reported_done: false,
        buf: Vec::with_capacity(256),
        parser: Parser::default(),
        out: Out::default(),
        hist: report::histogram(),
        connect: report::histogram(),
    };
    let mut net = match Net::new(target) {
        Ok(n) => n,
        Err(e) => {
            fan.note(format!("poll: {e}"));
            shared.abort.store(true, Ordering::Release);
            return fan.out;
        }
    };
    loop {
        let now = Instant::now();
        let next = fan.tick(&mut net, now);
        if shared.abort.load(Ordering::Acquire)
            || shared.done_loops.load(Ordering::Acquire) == shared.threads
            || now >= deadline
        {
            break;
        }
        let wait = match next {
            Some(t) => t
                .saturating_duration_since(now)
                .min(Duration::from_millis(5)),
            None if fan.started && !fan.reported_done => Duration::from_millis(5),
            None => Duration::from_millis(1),
        };
        if let Err(e) = net.turn(&mut fan, Some(wait)) {
            fan.note(format!("poll: {e}"));
            break;
        }
    }
    // Measured; now leave politely so the server sees clean closes. Closes
    // are not failures from here on.
    fan.by_conn.clear();
    let closing = Instant::now();
    net.close_all(&mut fan, Duration::from_secs(3));
    fan.out.close_secs = closing.elapsed().as_secs_f64();
    fan.out.unclosed = net.live();
    fan.out.hist = Some(fan.hist);
    fan.out.connect = Some(fan.connect);
    fan.out
}

/// Runs the scenario; returns whether it passed (nothing lost, no error).
pub fn run(
    a: &FanoutArgs,
    target: &Target,
    pid: Option<u32>,
    label: &str,
    timeout: Duration,
) -> (bool, serde_json::Value) {
    let threads = a.threads.max(1);
    let senders = a.senders.min(a.members);
    let a = &FanoutArgs {
        senders,
        threads,
        ..a.clone()
    };
    let prefix = format!("fan{}-{}", std::process::id(), proto::nanos(Instant::now()));
    let mut per_thread: Vec<Vec<Member>> = (0..threads).map(|_| Vec::new()).collect();
    for r in 0..a.rooms {
        for j in 0..a.members {
            let i = r * a.members + j;
            per_thread[i % threads].push(Member {
                room: r,
                name: format!("m{i}"),
                conn: usize::MAX,
                sender: (j < senders).then_some(Sender {
                    global: r * senders + j,
                    sent: 0,
                    acked: 0,
                }),
                joined: false,
                last_seq: 0,
                received: 0,
                next_n: vec![0; senders],
            });
        }
    }
    let shared = Shared {
        total: a.rooms * a.members,
        threads,
        joined: AtomicUsize::new(0),
        go: OnceLock::new(),
        done_loops: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
    };
    let cpu = report::Cpu::now(pid);
    let started = Instant::now();
    let deadline = started + timeout;
    let outs: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = per_thread
            .into_iter()
            .map(|members| {
                let (shared, prefix) = (&shared, prefix.as_str());
                s.spawn(move || run_loop(a, target, shared, prefix, members, deadline))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("event loop panicked"))
            .collect()
    });

    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu.since(pid);
    let mut t = Out::default();
    let mut hist = report::histogram();
    let mut connect = report::histogram();
    for o in outs {
        t.received += o.received;
        t.seq_errors += o.seq_errors;
        t.order_errors += o.order_errors;
        t.untagged += o.untagged;
        t.errors += o.errors;
        t.closed += o.closed;
        t.sent += o.sent;
        t.acked += o.acked;
        t.samples.extend(o.samples);
        t.last_rx = t.last_rx.max(o.last_rx);
        t.close_secs = t.close_secs.max(o.close_secs);
        t.unclosed += o.unclosed;
        if let Some(h) = &o.hist {
            let _ = hist.add(h);
        }
        if let Some(h) = &o.connect {
            let _ = connect.add(h);
        }
    }
    let expected = (a.rooms * a.members) as u64 * senders as u64 * a.messages;
    let joined = shared.joined.load(Ordering::Acquire);
    let go = shared.go.get().copied();
    let secs = match (go, t.last_rx) {
        (Some(g), Some(l)) => l.saturating_duration_since(g).as_secs_f64(),
        _ => 0.0,
    };
    let connect_secs = go.map_or(0.0, |g| g.saturating_duration_since(started).as_secs_f64());
    let fps = if secs > 0.0 {
        t.received as f64 / secs
    } else {
        0.0
    };
    let mps = if secs > 0.0 {
        t.acked as f64 / secs
    } else {
        0.0
    };
    let lost = expected.saturating_sub(t.received);
    let pass = joined == a.rooms * a.members
        && lost == 0
        && t.received == expected
        && t.seq_errors == 0
        && t.order_errors == 0
        && t.untagged == 0
        && t.errors == 0
        && t.closed == 0;
    let lat = report::percentiles_ms(&hist);
    let con = report::percentiles_ms(&connect);
    let mode = match a.rate {
        Some(r) => format!("fixed {r} msg/s total"),
        None => format!("window {}", a.window),
    };
    report::table(
        &format!("fanout {label}"),
        &[
            ("rooms × members", format!("{} × {}", a.rooms, a.members)),
            (
                "senders per room",
                format!("{senders}, {} messages each, {mode}", a.messages),
            ),
            ("joined", format!("{joined} of {}", a.rooms * a.members)),
            ("frames expected", expected.to_string()),
            ("frames received", t.received.to_string()),
            ("lost", lost.to_string()),
            (
                "seq gaps / order errors",
                format!("{} / {}", t.seq_errors, t.order_errors),
            ),
            ("errors / closed", format!("{} / {}", t.errors, t.closed)),
            ("duration", format!("{secs:.3} s")),
            (
                "phases",
                format!(
                    "connect+join {connect_secs:.2} s, close {:.2} s ({} unclosed)",
                    t.close_secs, t.unclosed
                ),
            ),
            ("delivered frames/s", format!("{fps:.0}")),
            ("messages/s (acked)", format!("{mps:.0}")),
            ("latency", report::pct_line(&lat)),
            ("connect", report::pct_line(&con)),
            (
                "CPU server / bench",
                format!("{} s / {} s in {wall:.2} s", cpu["server"], cpu["bench"]),
            ),
            (
                "result",
                if pass {
                    "PASS".into()
                } else {
                    format!("FAIL {:?}", t.samples)
                },
            ),
        ],
    );
    let line = json!({
        "scenario": "fanout",
        "label": label,
        "rooms": a.rooms,
        "members": a.members,
        "senders": senders,
        "messages": a.messages,
        "window": if a.rate.is_none() { json!(a.window) } else { json!(null) },
        "rate": a.rate,
        "threads": threads,
        "joined": joined,
        "expected": expected,
        "received": t.received,
        "lost": lost,
        "seq_errors": t.seq_errors,
        "order_errors": t.order_errors,
        "errors": t.errors,
        "closed": t.closed,
        "error_samples": t.samples,
        "sent": t.sent,
        "acked": t.acked,
        "secs": secs,
        "frames_per_sec": fps.round(),
        "messages_per_sec": mps.round(),
        "latency_ms": lat,
        "connect_ms": con,
        "cpu_secs": cpu,
        "connect_secs": connect_secs,
        "close_secs": t.close_secs,
        "wall_secs": wall,
        "pass": pass,
    });
    (pass, line)
}
