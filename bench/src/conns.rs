//! `conns`: open C connections at a given rate, each joining one of R rooms;
//! hold them idle; send one message per room and check it reaches everyone;
//! leave; and watch the server's RSS and threads before, during and after.

use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::net::{Closed, Event, Handler, Net, Target};
use crate::proto::{self, Codec, Msg, Protocol};
use crate::report::{self, Usage};
use crate::Ctx;

#[derive(Args, Clone, Debug)]
pub struct ConnsArgs {
    /// Connections.
    #[arg(long, default_value_t = 2000)]
    pub conns: usize,
    /// Rooms; connection i joins room i mod R.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Most handshakes in flight at once (the server's listen backlog is
    /// 128: more in flight and SYNs get dropped, costing a 1 s retry).
    #[arg(long, default_value_t = 100)]
    pub connect_burst: usize,
    /// Seconds to hold every connection idle before measuring.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
    /// Seconds to wait, after all clients left, for threads to return.
    #[arg(long, default_value_t = 15.0)]
    pub settle: f64,
    /// RSS after may exceed RSS before by this share of the peak growth.
    #[arg(long, default_value_t = 0.10)]
    pub rss_slack: f64,
    /// A join not confirmed after this long is sent again (socketioxide drops
    /// events that arrive before its connect handler ran).
    #[arg(long, default_value_t = 1000)]
    pub join_retry_ms: u64,
    /// Protocol v3: connection i proves its identity with line i of this
    /// file (`roomchat-bench tokens`), in the upgrade's `Authorization`
    /// header or Socket.IO's CONNECT packet, and joins as "c<i>", the
    /// token's name. The warm-up client uses line 0.
    #[arg(long)]
    pub tokens: Option<std::path::PathBuf>,
}

struct Client {
    room: usize,
    conn: usize,
    started: Instant,
    join_sent: Option<Instant>,
    joined: bool,
    done: bool,
    got: u32,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    Connect,
    Hold,
    Message,
    Leave,
}

struct Conns {
    prefix: String,
    clients: Vec<Client>,
    by_conn: Vec<usize>,
    phase: Phase,
    next: usize,
    handshaking: usize,
    joined: usize,
    join_retries: u64,
    failed: usize,
    dropped: usize,
    left: usize,
    delivered: u64,
    extra: u64,
    sent_at: Option<Instant>,
    errors: u64,
    samples: Vec<String>,
    connect: Histogram<u64>,
    join: Histogram<u64>,
    deliver: Histogram<u64>,
    buf: Vec<u8>,
    codec: Codec,
}

impl Conns {
    fn note(&mut self, s: String) {
        self.errors += 1;
        if self.samples.len() < 5 {
            self.samples.push(s);
        }
    }

    fn join(&mut self, net: &mut Net, c: usize, now: Instant) {
        let cl = &mut self.clients[c];
        let room = format!("{}-{}", self.prefix, cl.room);
        self.codec.join(&mut self.buf, &format!("c{c}"), &room);
        cl.join_sent = Some(now);
        net.send_text(cl.conn, &self.buf);
    }
}

impl Handler for Conns {
    fn event(&mut self, net: &mut Net, id: usize, ev: Event<'_>, now: Instant) {
        let Some(&c) = self.by_conn.get(id) else {
            return;
        };
        if c == usize::MAX {
            return;
        }
        match ev {
            Event::Open(took) => {
                let _ = self.connect.record(took.as_nanos().max(1) as u64);
                self.join(net, c, now);
            }
            Event::Closed(why) => {
                self.by_conn[id] = usize::MAX;
                self.clients[c].done = true;
                if matches!(why, Closed::Local) {
                    self.left += 1;
                } else if !self.clients[c].joined {
                    self.failed += 1;
                    self.handshaking -= 1;
                    self.note(format!("connect {c}: {why:?}"));
                } else {
                    self.dropped += 1;
                    self.note(format!("client {c} dropped: {why:?}"));
                }
            }
            Event::Text(p) => match self.codec.parse(p) {
                Msg::Joined => {
                    let cl = &mut self.clients[c];
                    if !cl.joined {
                        cl.joined = true;
                        let took = now.saturating_duration_since(cl.started);
                        let _ = self.join.record(took.as_nanos().max(1) as u64);
                        self.joined += 1;
                        self.handshaking -= 1;
                    }
                }
                Msg::Chat { seq, .. } => {
                    let cl = &mut self.clients[c];
                    cl.got += 1;
                    if cl.got == 1 && seq.is_none_or(|s| s == 1) {
                        self.delivered += 1;
                        if let Some(t) = self.sent_at {
                            let lat = now.saturating_duration_since(t).as_nanos() as u64;
                            self.deliver.saturating_record(lat.max(1));
                        }
                    } else {
                        self.extra += 1;
                    }
                }
                Msg::Error { code, ack } => self.note(format!("error {code} (ack {ack:?})")),
                Msg::Bad => self.note("unreadable frame".into()),
                _ => {}
            },
        }
    }
}

/// One client joins a room and leaves, so that threads and buffers a server
/// creates on first use are there before the baseline is read. With a
/// token, it proves that identity and joins under its name.
pub fn warm_up(targets: &[Target], protocol: Protocol, token: Option<(&str, &str)>) {
    struct One(bool, Codec, String);
    impl Handler for One {
        fn event(&mut self, net: &mut Net, id: usize, ev: Event<'_>, _: Instant) {
            match ev {
                Event::Open(_) => {
                    let mut b = Vec::new();
                    self.1.join(&mut b, &self.2, "warm-up");
                    net.send_text(id, &b);
                }
                Event::Text(p) if self.1.parse(p) == Msg::Joined => net.close(id),
                Event::Text(_) => {}
                Event::Closed(_) => self.0 = true,
            }
        }
    }
    let Ok(mut net) = Net::new(targets) else {
        return;
    };
    let name = token.map_or("warm-up", |(name, _)| name);
    let mut one = One(false, Codec::new(protocol), name.to_string());
    for t in 0..targets.len() {
        one.0 = false;
        net.connect_with_token(t, token.map(|(_, token)| token));
        let end = Instant::now() + Duration::from_secs(3);
        while !one.0 && Instant::now() < end {
            if net.turn(&mut one, Some(Duration::from_millis(10))).is_err() {
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
}

fn sample(pid: Option<u32>, peak: &mut Option<Usage>) -> Option<Usage> {
    let u = Usage::read(pid);
    if let Some(u) = u {
        *peak = Some(peak.map_or(u, |p| p.max(u)));
    }
    u
}

/// Runs the scenario. roomchat must also give back its threads and memory; a
/// peer passes when every connection joined, stayed and got its message.
pub fn run(a: &ConnsArgs, ctx: &Ctx) -> (bool, serde_json::Value) {
    let (pid, label) = (ctx.pid, ctx.label);
    let start = Instant::now();
    let deadline = start + ctx.timeout;
    let mut peak = None;
    let tokens = match a.tokens.as_deref().map(crate::tokens::read_tokens) {
        None => Vec::new(),
        Some(Ok(t)) if t.len() >= a.conns => t,
        Some(Ok(t)) => {
            let e = format!("{} tokens for {} connections", t.len(), a.conns);
            return (
                false,
                json!({"scenario": "conns", "label": label, "error": e}),
            );
        }
        Some(Err(e)) => {
            return (
                false,
                json!({"scenario": "conns", "label": label, "error": e}),
            )
        }
    };
    warm_up(
        ctx.targets,
        ctx.protocol,
        tokens.first().map(|t| ("c0", t.as_str())),
    );
    let before = sample(pid, &mut peak);
    // The connect phase is timed from here, after the warm-up.
    let connect_start = Instant::now();
    let cpu_start = report::Cpu::now(pid);
    let mut connect_cpu = serde_json::Value::Null;
    let mut s = Conns {
        prefix: format!("conns{}-{}", std::process::id(), proto::nanos(start)),
        clients: Vec::with_capacity(a.conns),
        by_conn: Vec::new(),
        phase: Phase::Connect,
        next: 0,
        handshaking: 0,
        joined: 0,
        join_retries: 0,
        failed: 0,
        dropped: 0,
        left: 0,
        delivered: 0,
        extra: 0,
        sent_at: None,
        errors: 0,
        samples: Vec::new(),
        connect: report::histogram(),
        join: report::histogram(),
        deliver: report::histogram(),
        buf: Vec::with_capacity(256),
        codec: Codec::new(ctx.protocol),
    };
    let mut net = match Net::new(ctx.targets) {
        Ok(n) => n,
        Err(e) => {
            return (
                false,
                json!({"scenario": "conns", "label": label, "error": e.to_string()}),
            )
        }
    };
    let rooms = a.rooms.max(1);
    let mut during = None;
    let mut phase_end = deadline;
    let mut expected = 0u64;
    let mut last_sample = start;
    let mut last_retry = start;
    let retry_after = Duration::from_millis(a.join_retry_ms);
    let mut connect_secs = 0.0;
    let mut leave_secs = 0.0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            s.note(format!("timed out in phase {:?}", s.phase));
            break;
        }
        if now.duration_since(last_sample) >= Duration::from_millis(200) {
            last_sample = now;
            sample(pid, &mut peak);
        }
        match s.phase {
            Phase::Connect => {
                let due =
                    (now.duration_since(connect_start).as_secs_f64() * a.connect_rate) as usize + 1;
                while s.next < a.conns.min(due) && s.handshaking < a.connect_burst {
                    let id = net.connect_with_token(s.next, tokens.get(s.next).map(String::as_str));
                    if s.by_conn.len() <= id {
                        s.by_conn.resize(id + 1, usize::MAX);
                    }
                    s.by_conn[id] = s.next;
                    s.clients.push(Client {
                        room: s.next % rooms,
                        conn: id,
                        started: now,
                        join_sent: None,
                        joined: false,
                        done: false,
                        got: 0,
                    });
                    s.next += 1;
                    s.handshaking += 1;
                }
                if now.duration_since(last_retry) >= Duration::from_millis(100) {
                    last_retry = now;
                    for c in 0..s.clients.len() {
                        let cl = &s.clients[c];
                        if !cl.joined
                            && !cl.done
                            && cl
                                .join_sent
                                .is_some_and(|t| now.duration_since(t) >= retry_after)
                        {
                            s.join_retries += 1;
                            s.join(&mut net, c, now);
                        }
                    }
                }
                if s.joined + s.failed == a.conns {
                    connect_secs = now.duration_since(connect_start).as_secs_f64();
                    connect_cpu = cpu_start.since(pid);
                    s.phase = Phase::Hold;
                    phase_end = now + Duration::from_secs_f64(a.hold);
                }
            }
            Phase::Hold if now >= phase_end => {
                during = sample(pid, &mut peak);
                // One message per room, from its first member still there.
                let mut has_sender = vec![false; rooms];
                let mut members = vec![0u64; rooms];
                for cl in s.clients.iter().filter(|c| c.joined && !c.done) {
                    members[cl.room] += 1;
                }
                s.sent_at = Some(now);
                for cl in s.clients.iter().filter(|c| c.joined && !c.done) {
                    if !has_sender[cl.room] {
                        has_sender[cl.room] = true;
                        s.codec
                            .chat(&mut s.buf, cl.room, 0, proto::nanos(now), false);
                        net.send_text(cl.conn, &s.buf);
                        expected += members[cl.room];
                    }
                }
                s.phase = Phase::Message;
                phase_end = now + Duration::from_secs(10);
            }
            Phase::Message if s.delivered >= expected || now >= phase_end => {
                for cl in s.clients.iter().filter(|c| !c.done) {
                    net.close(cl.conn);
                }
                s.phase = Phase::Leave;
                phase_end = now + Duration::from_secs(15);
            }
            Phase::Leave if net.live() == 0 || now >= phase_end => {
                leave_secs = (now + Duration::from_secs(15) - phase_end).as_secs_f64();
                break;
            }
            _ => {}
        }
        let wait = if s.phase == Phase::Connect {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        if let Err(e) = net.turn(&mut s, Some(wait)) {
            s.note(format!("poll: {e}"));
            break;
        }
    }
    let unclosed = net.live();
    drop(net);

    // Wait for the server's threads to come back to where they started.
    let after = Usage::after_settling(pid, before, a.settle);

    let bytes_per_conn = match (before, during) {
        (Some(b), Some(d)) if s.joined > 0 => {
            Some((d.rss_kib.saturating_sub(b.rss_kib) * 1024) as f64 / s.joined as f64)
        }
        _ => None,
    };
    let threads_back = match (before, after) {
        (Some(b), Some(f)) => Some(f.threads <= b.threads),
        _ => None,
    };
    let rss_back = match (before, peak, after) {
        (Some(b), Some(p), Some(f)) => {
            let slack = ((p.rss_kib.saturating_sub(b.rss_kib)) as f64 * a.rss_slack) as u64 + 2048;
            Some(f.rss_kib <= b.rss_kib + slack)
        }
        _ => None,
    };
    let rss_after_ratio = match (before, after) {
        (Some(b), Some(f)) if b.rss_kib > 0 => Some(f.rss_kib as f64 / b.rss_kib as f64),
        _ => None,
    };
    let joined_per_sec = (connect_secs > 0.0).then(|| s.joined as f64 / connect_secs);
    // Server CPU per connection while connecting: the upgrade, the thread,
    // the join (and, with tokens, one verification each).
    let cpu_us_per_conn = connect_cpu["server"]
        .as_f64()
        .filter(|_| s.joined > 0)
        .map(|c| c * 1e6 / s.joined as f64);
    let alive = pid.is_none() || Usage::read(pid).is_some();
    let mut checks = vec![
        ("server still running", alive),
        (
            "every connection joined",
            s.failed == 0 && s.joined == a.conns,
        ),
        ("none dropped while idle", s.dropped == 0),
        ("no error events", s.errors == 0),
        ("no extra frames", s.extra == 0),
        ("every room got its message", expected == a.conns as u64),
        ("delivered everywhere", s.delivered == expected),
    ];
    // What roomchat promises about its resources; a peer's are only reported.
    let strict = ctx.protocol.has_seq();
    if strict {
        checks.extend([
            ("threads returned", threads_back != Some(false)),
            ("RSS returned", rss_back != Some(false)),
        ]);
    }
    let failed = report::failed_checks(&checks);
    let pass = failed.is_empty();
    let con = report::percentiles_ms(&s.connect);
    let join = report::percentiles_ms(&s.join);
    let del = report::percentiles_ms(&s.deliver);
    let [rss, thr] = report::usage_rows(before, during, after);
    let bpc = bytes_per_conn.map_or("-".into(), |b| format!("{b:.0} B ({:.1} KiB)", b / 1024.0));
    report::table(
        &format!("conns {label}"),
        &[
            ("connections × rooms", format!("{} × {}", a.conns, rooms)),
            (
                "connect rate",
                format!("{} /s, took {connect_secs:.2} s", a.connect_rate),
            ),
            (
                "joined per second",
                joined_per_sec.map_or("-".into(), |r| format!("{r:.0}")),
            ),
            (
                "server CPU per connection",
                cpu_us_per_conn.map_or("-".into(), |c| format!("{c:.0} µs")),
            ),
            (
                "joined / failed",
                format!(
                    "{} / {} ({} join retries)",
                    s.joined, s.failed, s.join_retries
                ),
            ),
            ("dropped while idle", s.dropped.to_string()),
            ("connect (to ready)", report::pct_line(&con)),
            ("connect + join", report::pct_line(&join)),
            (
                "message delivered",
                format!("{} of {expected}", s.delivered),
            ),
            ("broadcast latency", report::pct_line(&del)),
            ("server RSS b → d → a", rss),
            ("server threads b → d → a", thr),
            ("RSS per connection", bpc),
            (
                "RSS after / before",
                rss_after_ratio.map_or("-".into(), |r| format!("{r:.2}")),
            ),
            (
                "threads / RSS returned",
                format!("{threads_back:?} / {rss_back:?}"),
            ),
            (
                "left cleanly / unclosed",
                format!("{} / {unclosed}", s.left),
            ),
            ("result", report::verdict(pass, &failed, &s.samples)),
        ],
    );
    let line = json!({
        "scenario": "conns",
        "label": label,
        "conns": a.conns,
        "rooms": rooms,
        "connect_rate": a.connect_rate,
        "connect_secs": connect_secs,
        "joined_per_sec": joined_per_sec.map(f64::round),
        "connect_cpu_secs": connect_cpu,
        "connect_cpu_us_per_conn": cpu_us_per_conn.map(f64::round),
        "tokens": !tokens.is_empty(),
        "joined": s.joined,
        "join_retries": s.join_retries,
        "failed": s.failed,
        "dropped": s.dropped,
        "errors": s.errors,
        "error_samples": s.samples,
        "connect_ms": con,
        "join_ms": join,
        "expected": expected,
        "delivered": s.delivered,
        "broadcast_ms": del,
        "before": report::usage_json(before),
        "during": report::usage_json(during),
        "peak": report::usage_json(peak),
        "after": report::usage_json(after),
        "bytes_per_conn": bytes_per_conn.map(f64::round),
        "rss_after_ratio": rss_after_ratio.map(|r| (r * 1000.0).round() / 1000.0),
        "threads_returned": threads_back,
        "rss_returned": rss_back,
        "left": s.left,
        "leave_secs": leave_secs,
        "unclosed": unclosed,
        "strict": strict,
        "failed_checks": failed,
        "pass": pass,
    });
    (pass, line)
}
