//! `fanout`: R rooms × N members, S of them sending, either within a window of
//! unconfirmed messages or at a fixed total rate. A message is confirmed by
//! roomchat's ack (`--flow ack`) or by the sender's own copy of the broadcast
//! (`--flow echo`, the only choice with the peers, which have no acks). Every
//! member checks each sender's order and, where the dialect has it, the room's
//! `seq`; latency is measured from the send time written into the text.
//!
//! Nothing waits forever: joins are retried, a window slot whose echo does not
//! come back within `--echo-timeout-ms` is given up as lost, and once every
//! sender has stopped the run ends when every member has everything or when
//! no frame arrived for `--drain` seconds (the rest is counted as lost).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::net::{Event, Handler, Net};
use crate::proto::{self, Codec, Flow, Msg};
use crate::{report, Ctx};

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
    /// Messages per sender (at most, with --duration).
    #[arg(long, default_value_t = 2000)]
    pub messages: u64,
    /// Window mode: stop sending this many seconds after the start (then
    /// drain), so that fast and slow servers get the same time.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Most unconfirmed chat messages per sender (window mode).
    #[arg(long, default_value_t = 8)]
    pub window: u64,
    /// Fixed total rate in messages/s over all senders (open loop, no window).
    #[arg(long)]
    pub rate: Option<f64>,
    /// What confirms a message: roomchat's ack, or the sender's own copy of
    /// the broadcast. Default: ack where the protocol has acks, else echo.
    #[arg(long, value_enum)]
    pub flow: Option<Flow>,
    /// Echo flow: a message whose echo has not come back after this long is
    /// given up as lost and frees its window slot.
    #[arg(long, default_value_t = 1000)]
    pub echo_timeout_ms: u64,
    /// After the last message was sent: give up waiting after this many
    /// seconds without a frame (what is missing then is lost).
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// A join not confirmed after this long is sent again (socketioxide drops
    /// events that arrive before its connect handler ran).
    #[arg(long, default_value_t = 1000)]
    pub join_retry_ms: u64,
    /// Event-loop threads; members are dealt round-robin.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pad every chat text to this many bytes (0: the bare
    /// `<sender>:<n>:<nanos>`, about 20 bytes).
    #[arg(long, default_value_t = 0)]
    pub text_bytes: usize,
    /// Most handshakes in flight per thread while connecting (a listen
    /// backlog of 128: more in flight and SYNs get dropped).
    #[arg(long, default_value_t = 100)]
    pub connect_burst: usize,
}

struct Shared {
    total: usize,
    threads: usize,
    joined: AtomicUsize,
    go: OnceLock<Instant>,
    /// Messages sent so far, per room: what every member of it should get.
    room_sent: Vec<AtomicU64>,
    /// Senders that may still send.
    sending: AtomicUsize,
    /// When the last sender stopped, and when any member last got a chat
    /// frame (bench-clock nanoseconds): the drain deadline runs from the later.
    stopped_at: AtomicU64,
    last_rx: AtomicU64,
    done_loops: AtomicUsize,
    abort: AtomicBool,
}

struct Sender {
    global: usize,
    sent: u64,
    /// Confirmed: acked (ack flow) or echoed (echo flow).
    confirmed: u64,
    /// Echo flow: messages in the window, oldest first, with their send time.
    inflight: VecDeque<(u64, Instant)>,
    /// Echo flow: window slots given up after --echo-timeout-ms.
    expired: u64,
    stopped: bool,
}

struct Member {
    room: usize,
    /// Index over all members: names it and picks its target.
    index: usize,
    name: String,
    conn: usize,
    sender: Option<Sender>,
    join_sent: Option<Instant>,
    joined: bool,
    last_seq: u64,
    received: u64,
    /// Per sender of the room: one past the highest `n` seen so far.
    next_n: Vec<u64>,
}

#[derive(Default)]
struct Out {
    received: u64,
    seq_errors: u64,
    /// Arrived after a later message of the same sender.
    out_of_order: u64,
    /// Arrived while an earlier message of the same sender had not (yet).
    gaps: u64,
    untagged: u64,
    errors: u64,
    closed: u64,
    sent: u64,
    confirmed: u64,
    expired: u64,
    late_echoes: u64,
    join_retries: u64,
    samples: Vec<String>,
    last_rx: Option<Instant>,
    close_secs: f64,
    unclosed: usize,
    hist: Option<Histogram<u64>>,
    connect: Option<Histogram<u64>>,
}

struct Fan<'a> {
    a: &'a FanoutArgs,
    flow: Flow,
    shared: &'a Shared,
    prefix: &'a str,
    members: Vec<Member>,
    /// Indexes of the members that send.
    senders: Vec<usize>,
    by_conn: Vec<usize>,
    next_connect: usize,
    handshaking: usize,
    started: bool,
    reported_done: bool,
    last_scan: Option<Instant>,
    buf: Vec<u8>,
    codec: Codec,
    out: Out,
    hist: Histogram<u64>,
    connect: Histogram<u64>,
}

impl Fan<'_> {
    fn note(&mut self, s: String) {
        self.out.errors += 1;
        if self.out.samples.len() < 5 {
            self.out.samples.push(s);
        }
    }

    fn join(&mut self, net: &mut Net, m: usize, now: Instant) {
        let mem = &mut self.members[m];
        let room = format!("{}-{}", self.prefix, mem.room);
        self.codec.join(&mut self.buf, &mem.name, &room);
        mem.join_sent = Some(now);
        net.send_text(mem.conn, &self.buf);
    }

    fn send(&mut self, net: &mut Net, m: usize, now: Instant) {
        let mem = &mut self.members[m];
        let Some(s) = &mut mem.sender else {
            return;
        };
        let ack = self.flow == Flow::Ack;
        self.codec
            .chat(&mut self.buf, s.global, s.sent, proto::nanos(now), ack);
        if !ack {
            s.inflight.push_back((s.sent, now));
        }
        s.sent += 1;
        self.out.sent += 1;
        self.shared.room_sent[mem.room].fetch_add(1, Ordering::AcqRel);
        net.send_text(mem.conn, &self.buf);
    }

    /// The sender stops for good (all sent, or time is up).
    fn stop(&mut self, m: usize, now: Instant) {
        if let Some(s) = &mut self.members[m].sender {
            if !s.stopped {
                s.stopped = true;
                if self.shared.sending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.shared
                        .stopped_at
                        .store(proto::nanos(now), Ordering::Release);
                }
            }
        }
    }

    fn out_of_time(&self, now: Instant) -> bool {
        match (self.a.duration, self.shared.go.get()) {
            (Some(d), Some(&go)) => now >= go + Duration::from_secs_f64(d),
            _ => false,
        }
    }

    /// Window mode: keep `window` messages unconfirmed.
    fn pump(&mut self, net: &mut Net, m: usize, now: Instant) {
        let timeout = Duration::from_millis(self.a.echo_timeout_ms);
        let out_of_time = self.out_of_time(now);
        loop {
            let Some(s) = &mut self.members[m].sender else {
                return;
            };
            if s.stopped {
                return;
            }
            while let Some(&(_, at)) = s.inflight.front() {
                if now.saturating_duration_since(at) < timeout {
                    break;
                }
                s.inflight.pop_front();
                s.expired += 1;
            }
            if s.sent >= self.a.messages || out_of_time {
                return self.stop(m, now);
            }
            let open = match self.flow {
                Flow::Ack => s.sent - s.confirmed,
                Flow::Echo => s.inflight.len() as u64,
            };
            if open >= self.a.window {
                return;
            }
            self.send(net, m, now);
        }
    }

    /// Rate mode: send what is due; returns when the next message is due.
    fn due(&mut self, net: &mut Net, now: Instant, go: Instant) -> Option<Instant> {
        let rate = self.a.rate?;
        let total = (self.a.rooms * self.a.senders) as f64;
        let mut next: Option<Instant> = None;
        for i in 0..self.senders.len() {
            let m = self.senders[i];
            loop {
                let mem = &self.members[m];
                let Some(s) = &mem.sender else {
                    break;
                };
                if s.stopped {
                    break;
                }
                if s.sent >= self.a.messages {
                    self.stop(m, now);
                    break;
                }
                let at =
                    go + Duration::from_secs_f64((s.sent as f64 * total + s.global as f64) / rate);
                if at > now {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    break;
                }
                self.send(net, m, now);
            }
        }
        next
    }

    fn tick(&mut self, net: &mut Net, now: Instant) -> Option<Instant> {
        if !self.started {
            while self.next_connect < self.members.len() && self.handshaking < self.a.connect_burst
            {
                let m = self.next_connect;
                let id = net.connect(self.members[m].index);
                if self.by_conn.len() <= id {
                    self.by_conn.resize(id + 1, usize::MAX);
                }
                self.by_conn[id] = m;
                self.members[m].conn = id;
                self.next_connect += 1;
                self.handshaking += 1;
            }
            self.retry_joins(net, now);
            if self.shared.joined.load(Ordering::Acquire) < self.shared.total {
                return None;
            }
            self.shared.go.get_or_init(|| now);
            self.started = true;
        }
        let go = *self.shared.go.get().expect("set when started");
        let next = if self.a.rate.is_some() {
            self.due(net, now, go)
        } else {
            // Echo timeouts and the end of --duration come with the clock.
            for i in 0..self.senders.len() {
                self.pump(net, self.senders[i], now);
            }
            None
        };
        if !self.reported_done && self.complete(now) {
            self.reported_done = true;
            self.shared.done_loops.fetch_add(1, Ordering::AcqRel);
        }
        next
    }

    /// Joins not confirmed in time are sent again (every 100 ms at most).
    fn retry_joins(&mut self, net: &mut Net, now: Instant) {
        if self
            .last_scan
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.last_scan = Some(now);
        let wait = Duration::from_millis(self.a.join_retry_ms);
        for m in 0..self.members.len() {
            let mem = &self.members[m];
            if !mem.joined
                && mem
                    .join_sent
                    .is_some_and(|t| now.saturating_duration_since(t) >= wait)
            {
                self.out.join_retries += 1;
                self.join(net, m, now);
            }
        }
    }

    /// Every sender stopped, this loop's senders are settled, and its members
    /// have every message of their room (checked every 5 ms at most).
    fn complete(&mut self, now: Instant) -> bool {
        if self.shared.sending.load(Ordering::Acquire) > 0 {
            return false;
        }
        if self
            .last_scan
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(5))
        {
            return false;
        }
        self.last_scan = Some(now);
        let settled = self.members.iter().all(|m| match &m.sender {
            Some(s) => match self.flow {
                Flow::Ack => s.confirmed >= s.sent,
                Flow::Echo => s.inflight.is_empty(),
            },
            None => true,
        });
        settled
            && self
                .members
                .iter()
                .all(|m| m.received >= self.shared.room_sent[m.room].load(Ordering::Acquire))
    }

    fn chat(&mut self, m: usize, seq: Option<u64>, tag: Option<proto::Tag>, now: Instant) {
        let senders = self.a.senders;
        let has_seq = self.codec.protocol.has_seq();
        let flow = self.flow;
        let mem = &mut self.members[m];
        mem.received += 1;
        self.out.received += 1;
        self.out.last_rx = Some(now);
        if has_seq {
            match seq {
                Some(s) if s == mem.last_seq + 1 => mem.last_seq = s,
                Some(s) => {
                    self.out.seq_errors += 1;
                    mem.last_seq = s;
                }
                None => self.out.seq_errors += 1,
            }
        }
        let Some(t) = tag.filter(|t| t.sender / senders == mem.room) else {
            self.out.untagged += 1;
            return;
        };
        let k = t.sender % senders;
        if t.n < mem.next_n[k] {
            self.out.out_of_order += 1;
        } else {
            if t.n > mem.next_n[k] {
                self.out.gaps += 1;
            }
            mem.next_n[k] = t.n + 1;
        }
        let lat = proto::nanos(now).saturating_sub(t.ts);
        self.hist.saturating_record(lat.max(1));
        // The sender's own copy confirms the message (echo flow).
        if flow == Flow::Echo {
            if let Some(s) = &mut mem.sender {
                if s.global == t.sender {
                    match s.inflight.iter().position(|&(n, _)| n == t.n) {
                        Some(i) => {
                            s.inflight.remove(i);
                            s.confirmed += 1;
                            self.out.confirmed += 1;
                        }
                        None => self.out.late_echoes += 1,
                    }
                }
            }
        }
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
                self.join(net, m, now);
            }
            Event::Closed(why) => {
                self.out.closed += 1;
                self.by_conn[id] = usize::MAX;
                self.note(format!("member {} closed: {why:?}", self.members[m].name));
                self.shared.abort.store(true, Ordering::Release);
            }
            Event::Text(p) => match self.codec.parse(p) {
                Msg::Chat { seq, tag } => {
                    self.chat(m, seq, tag, now);
                    if self.flow == Flow::Echo && self.a.rate.is_none() && self.started {
                        self.pump(net, m, now);
                    }
                }
                Msg::Joined => {
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
                    s.confirmed += 1;
                    self.out.confirmed += 1;
                    if self.a.rate.is_none() {
                        self.pump(net, m, now);
                    }
                }
                Msg::Error { code, ack } => {
                    self.note(format!("error {code} (ack {ack:?})"));
                    if !self.members[m].joined {
                        self.shared.abort.store(true, Ordering::Release);
                    }
                }
                Msg::Bad => self.note(format!("unreadable frame {}", String::from_utf8_lossy(p))),
                Msg::Connected | Msg::Other => {}
            },
        }
    }
}

fn run_loop(
    a: &FanoutArgs,
    flow: Flow,
    ctx: &Ctx,
    shared: &Shared,
    prefix: &str,
    members: Vec<Member>,
    deadline: Instant,
) -> Out {
    let senders = (0..members.len())
        .filter(|&m| members[m].sender.is_some())
        .collect();
    let mut fan = Fan {
        a,
        flow,
        shared,
        prefix,
        members,
        senders,
        by_conn: Vec::new(),
        next_connect: 0,
        handshaking: 0,
        started: false,
        reported_done: false,
        last_scan: None,
        buf: Vec::with_capacity(256),
        codec: Codec::new(ctx.protocol).text_bytes(a.text_bytes),
        out: Out::default(),
        hist: report::histogram(),
        connect: report::histogram(),
    };
    let mut net = match Net::new(ctx.targets) {
        Ok(n) => n,
        Err(e) => {
            fan.note(format!("poll: {e}"));
            shared.abort.store(true, Ordering::Release);
            return fan.out;
        }
    };
    let drain = (a.drain * 1e9) as u64;
    loop {
        let now = Instant::now();
        let next = fan.tick(&mut net, now);
        if let Some(t) = fan.out.last_rx {
            shared.last_rx.fetch_max(proto::nanos(t), Ordering::AcqRel);
        }
        if shared.abort.load(Ordering::Acquire)
            || shared.done_loops.load(Ordering::Acquire) == shared.threads
        {
            break;
        }
        if now >= deadline {
            fan.note("timed out".into());
            break;
        }
        if shared.sending.load(Ordering::Acquire) == 0 {
            let quiet_since = shared
                .stopped_at
                .load(Ordering::Acquire)
                .max(shared.last_rx.load(Ordering::Acquire));
            if proto::nanos(now).saturating_sub(quiet_since) > drain {
                break; // what has not come by now is lost
            }
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
    for m in &fan.members {
        if let Some(s) = &m.sender {
            fan.out.expired += s.expired;
        }
    }
    fan.out.hist = Some(fan.hist);
    fan.out.connect = Some(fan.connect);
    fan.out
}

/// Runs the scenario; returns whether it passed. roomchat (native or
/// Socket.IO) must lose nothing, keep every sender's order and every `seq`;
/// a peer passes when every member joined and stayed connected, and its
/// loss and reordering are reported, not failed.
pub fn run(a: &FanoutArgs, ctx: &Ctx) -> (bool, serde_json::Value) {
    let protocol = ctx.protocol;
    let flow = match a.flow {
        Some(Flow::Ack) if !protocol.has_acks() => {
            eprintln!(
                "roomchat-bench: the {} protocol has no acks; using --flow echo",
                protocol.name()
            );
            Flow::Echo
        }
        Some(f) => f,
        None if protocol.has_acks() => Flow::Ack,
        None => Flow::Echo,
    };
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
                index: i,
                name: format!("m{i}"),
                conn: usize::MAX,
                sender: (j < senders).then_some(Sender {
                    global: r * senders + j,
                    sent: 0,
                    confirmed: 0,
                    inflight: VecDeque::new(),
                    expired: 0,
                    stopped: false,
                }),
                join_sent: None,
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
        room_sent: (0..a.rooms).map(|_| AtomicU64::new(0)).collect(),
        sending: AtomicUsize::new(a.rooms * senders),
        stopped_at: AtomicU64::new(0),
        last_rx: AtomicU64::new(0),
        done_loops: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
    };
    let cpu = report::Cpu::now(ctx.pid);
    let started = Instant::now();
    let deadline = started + ctx.timeout;
    let outs: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = per_thread
            .into_iter()
            .map(|members| {
                let (shared, prefix) = (&shared, prefix.as_str());
                s.spawn(move || run_loop(a, flow, ctx, shared, prefix, members, deadline))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("event loop panicked"))
            .collect()
    });

    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu.since(ctx.pid);
    let mut t = Out::default();
    let mut hist = report::histogram();
    let mut connect = report::histogram();
    for o in outs {
        t.received += o.received;
        t.seq_errors += o.seq_errors;
        t.out_of_order += o.out_of_order;
        t.gaps += o.gaps;
        t.untagged += o.untagged;
        t.errors += o.errors;
        t.closed += o.closed;
        t.sent += o.sent;
        t.confirmed += o.confirmed;
        t.expired += o.expired;
        t.late_echoes += o.late_echoes;
        t.join_retries += o.join_retries;
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
    let expected: u64 = shared
        .room_sent
        .iter()
        .map(|n| n.load(Ordering::Acquire) * a.members as u64)
        .sum();
    let joined = shared.joined.load(Ordering::Acquire);
    let go = shared.go.get().copied();
    let secs = match (go, t.last_rx) {
        (Some(g), Some(l)) => l.saturating_duration_since(g).as_secs_f64(),
        _ => 0.0,
    };
    let connect_secs = go.map_or(0.0, |g| g.saturating_duration_since(started).as_secs_f64());
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let fps = per_sec(t.received);
    let mps = per_sec(t.sent);
    // Rate mode: what the senders offered, every message to every member of
    // its room; delivered ÷ offered under 100 % is a server falling behind
    // (its last frames arrive late, so the run's delivery time stretches).
    let offered = a.rate.map(|r| r * a.members as f64);
    let keep_up_pct = offered.filter(|o| *o > 0.0).map(|o| fps * 100.0 / o);
    let lost = expected.saturating_sub(t.received);
    let loss_pct = if expected > 0 {
        lost as f64 * 100.0 / expected as f64
    } else {
        0.0
    };
    let strict = protocol.has_seq();
    let mut checks = vec![
        ("every member joined", joined == a.rooms * a.members),
        ("no error event or timeout", t.errors == 0),
        ("no member dropped", t.closed == 0),
        ("something delivered", t.received > 0),
    ];
    if strict {
        checks.extend([
            ("nothing lost", lost == 0 && t.received == expected),
            ("gap-free seq", t.seq_errors == 0),
            ("every sender in order", t.out_of_order == 0 && t.gaps == 0),
            ("only our messages", t.untagged == 0),
        ]);
    }
    let failed = report::failed_checks(&checks);
    let pass = failed.is_empty();
    let lat = report::percentiles_ms(&hist);
    let con = report::percentiles_ms(&connect);
    let mode = match (a.rate, a.duration) {
        (Some(r), _) => format!("fixed {r} msg/s total"),
        (None, Some(d)) => format!("window {} for {d} s", a.window),
        (None, None) => format!("window {}", a.window),
    };
    report::table(
        &format!("fanout {}", ctx.label),
        &[
            ("rooms × members", format!("{} × {}", a.rooms, a.members)),
            (
                "senders per room",
                format!(
                    "{senders}, up to {} messages each, {mode}, {} flow",
                    a.messages,
                    flow.name()
                ),
            ),
            (
                "joined",
                format!(
                    "{joined} of {} ({} join retries)",
                    a.rooms * a.members,
                    t.join_retries
                ),
            ),
            ("messages sent", t.sent.to_string()),
            ("frames expected", expected.to_string()),
            ("frames received", t.received.to_string()),
            ("lost", format!("{lost} ({loss_pct:.3} %)")),
            (
                "seq gaps / out of order / sender gaps",
                format!("{} / {} / {}", t.seq_errors, t.out_of_order, t.gaps),
            ),
            (
                "window slots expired / late echoes",
                format!("{} / {}", t.expired, t.late_echoes),
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
            (
                "delivered frames/s",
                match (offered, keep_up_pct) {
                    (Some(o), Some(k)) => format!("{fps:.0} of {o:.0} offered ({k:.1} %)"),
                    _ => format!("{fps:.0}"),
                },
            ),
            ("messages/s (sent)", format!("{mps:.0}")),
            ("latency", report::pct_line(&lat)),
            ("connect", report::pct_line(&con)),
            (
                "CPU server / bench",
                format!("{} s / {} s in {wall:.2} s", cpu["server"], cpu["bench"]),
            ),
            ("result", report::verdict(pass, &failed, &t.samples)),
        ],
    );
    let line = json!({
        "scenario": "fanout",
        "label": ctx.label,
        "rooms": a.rooms,
        "members": a.members,
        "senders": senders,
        "messages": a.messages,
        "duration": a.duration,
        "window": if a.rate.is_none() { json!(a.window) } else { json!(null) },
        "rate": a.rate,
        "flow": flow.name(),
        "threads": threads,
        "joined": joined,
        "join_retries": t.join_retries,
        "expected": expected,
        "received": t.received,
        "lost": lost,
        "loss_pct": (loss_pct * 1000.0).round() / 1000.0,
        "seq_errors": t.seq_errors,
        "out_of_order": t.out_of_order,
        "gaps": t.gaps,
        "untagged": t.untagged,
        "window_expired": t.expired,
        "late_echoes": t.late_echoes,
        "errors": t.errors,
        "closed": t.closed,
        "error_samples": t.samples,
        "sent": t.sent,
        "confirmed": t.confirmed,
        "secs": secs,
        "frames_per_sec": fps.round(),
        "messages_per_sec": mps.round(),
        "latency_ms": lat,
        "connect_ms": con,
        "cpu_secs": cpu,
        "connect_secs": connect_secs,
        "close_secs": t.close_secs,
        "wall_secs": wall,
        "strict": strict,
        "failed_checks": failed,
        "pass": pass,
    });
    // Beside the rest (one json! of this size reaches the macro's recursion limit).
    let mut line = line;
    if let Some(o) = line.as_object_mut() {
        o.insert("offered_frames_per_sec".into(), json!(offered));
        o.insert(
            "keep_up_pct".into(),
            json!(keep_up_pct.map(|k| (k * 100.0).round() / 100.0)),
        );
        o.insert("text_bytes".into(), json!(a.text_bytes));
    }
    (pass, line)
}
