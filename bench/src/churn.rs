//! `churn`: K clients at a time connect, join one of R rooms, send M messages,
//! wait until they are confirmed (roomchat's acks, or the visitor's own copies
//! of the broadcast with `--flow echo`) and leave, again and again for T
//! seconds, while one listener per room checks that every confirmed message
//! arrived, in `seq` order where the dialect has it. Afterwards roomchat's
//! threads and RSS must be back where they started.

use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::net::{Closed, Event, Handler, Net};
use crate::proto::{self, Codec, Flow, Msg};
use crate::report::{self, Usage};
use crate::Ctx;

#[derive(Args, Clone, Debug)]
pub struct ChurnArgs {
    /// Seconds of churn.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Clients connected at a time.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Rooms, each with one listener that stays.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Messages per client visit.
    #[arg(long, default_value_t = 5)]
    pub messages: u64,
    /// Seconds to wait, after all clients left, for threads to return.
    #[arg(long, default_value_t = 15.0)]
    pub settle: f64,
    /// RSS after may exceed RSS a third into the churn by this many KiB.
    #[arg(long, default_value_t = 1024)]
    pub rss_slack_kib: u64,
    /// What confirms a message: roomchat's ack, or the visitor's own copy of
    /// the broadcast. Default: ack where the protocol has acks, else echo.
    #[arg(long, value_enum)]
    pub flow: Option<Flow>,
    /// A join not confirmed after this long is sent again.
    #[arg(long, default_value_t = 1000)]
    pub join_retry_ms: u64,
    /// A visit not done after this long (joined and every message
    /// confirmed) is ended anyway and counted as timed out.
    #[arg(long, default_value_t = 3000)]
    pub visit_timeout_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Listener(usize),
    Visitor(usize),
}

struct Listener {
    conn: usize,
    join_sent: Option<Instant>,
    joined: bool,
    last_seq: u64,
    received: u64,
}

struct Visitor {
    conn: usize,
    room: usize,
    join_sent: Option<Instant>,
    joined: bool,
    /// Acked or echoed in this visit.
    confirmed: u64,
    leaving: bool,
    visits: u64,
}

struct Churn<'a> {
    a: &'a ConnsLike,
    prefix: String,
    roles: Vec<Option<Role>>,
    listeners: Vec<Listener>,
    visitors: Vec<Visitor>,
    confirmed_per_room: Vec<u64>,
    listeners_joined: usize,
    churning: bool,
    visits: u64,
    messages: u64,
    failed: u64,
    timeouts: u64,
    join_retries: u64,
    errors: u64,
    seq_errors: u64,
    samples: Vec<String>,
    latency: Histogram<u64>,
    visit: Histogram<u64>,
    started: Vec<Instant>,
    buf: Vec<u8>,
    codec: Codec,
}

/// The few arguments the handler needs.
struct ConnsLike {
    rooms: usize,
    messages: u64,
    flow: Flow,
    join_retry: Duration,
    visit_timeout: Duration,
}

impl Churn<'_> {
    fn note(&mut self, s: String) {
        self.errors += 1;
        if self.samples.len() < 5 {
            self.samples.push(s);
        }
    }

    fn set_role(&mut self, id: usize, r: Role) {
        if self.roles.len() <= id {
            self.roles.resize(id + 1, None);
        }
        self.roles[id] = Some(r);
    }

    fn visit(&mut self, net: &mut Net, v: usize, now: Instant) {
        let id = net.connect(self.listeners.len() + v);
        self.set_role(id, Role::Visitor(v));
        let vis = &mut self.visitors[v];
        vis.conn = id;
        vis.room = (v + vis.visits as usize) % self.a.rooms;
        vis.join_sent = None;
        vis.joined = false;
        vis.confirmed = 0;
        vis.leaving = false;
        vis.visits += 1;
        self.started[v] = now;
    }

    fn join(&mut self, net: &mut Net, role: Role, now: Instant) {
        let (id, name, room) = match role {
            Role::Listener(l) => {
                self.listeners[l].join_sent = Some(now);
                (self.listeners[l].conn, format!("listener{l}"), l)
            }
            Role::Visitor(v) => {
                self.visitors[v].join_sent = Some(now);
                let vis = &self.visitors[v];
                (vis.conn, format!("visitor{v}"), vis.room)
            }
        };
        let room = format!("{}-{room}", self.prefix);
        self.codec.join(&mut self.buf, &name, &room);
        net.send_text(id, &self.buf);
    }

    fn confirm(&mut self, net: &mut Net, v: usize) {
        let vis = &mut self.visitors[v];
        vis.confirmed += 1;
        self.confirmed_per_room[vis.room] += 1;
        self.messages += 1;
        if vis.confirmed == self.a.messages && !vis.leaving {
            vis.leaving = true;
            net.close(vis.conn);
        }
    }

    /// Joins not confirmed in time are sent again; visits that take too long
    /// are ended.
    fn check_timers(&mut self, net: &mut Net, now: Instant) {
        let late = |t: Option<Instant>, d: Duration| t.is_some_and(|t| now.duration_since(t) >= d);
        for l in 0..self.listeners.len() {
            let li = &self.listeners[l];
            if !li.joined && late(li.join_sent, self.a.join_retry) {
                self.join_retries += 1;
                self.join(net, Role::Listener(l), now);
            }
        }
        for v in 0..self.visitors.len() {
            let vis = &self.visitors[v];
            if vis.leaving || vis.conn == usize::MAX {
                continue;
            }
            if late(Some(self.started[v]), self.a.visit_timeout) {
                self.timeouts += 1;
                let vis = &mut self.visitors[v];
                vis.leaving = true;
                net.close(vis.conn);
            } else if !vis.joined && late(vis.join_sent, self.a.join_retry) {
                self.join_retries += 1;
                self.join(net, Role::Visitor(v), now);
            }
        }
    }
}

impl Handler for Churn<'_> {
    fn event(&mut self, net: &mut Net, id: usize, ev: Event<'_>, now: Instant) {
        let Some(Some(role)) = self.roles.get(id).copied() else {
            return;
        };
        match (role, ev) {
            (_, Event::Open(_)) => self.join(net, role, now),
            (_, Event::Closed(why)) => {
                self.roles[id] = None;
                match role {
                    Role::Visitor(v) => {
                        self.visitors[v].conn = usize::MAX;
                        if matches!(why, Closed::Local) {
                            self.visits += 1;
                            let took = now.saturating_duration_since(self.started[v]);
                            let _ = self.visit.record(took.as_nanos().max(1) as u64);
                        } else {
                            self.failed += 1;
                            self.note(format!("visitor {v}: {why:?}"));
                        }
                        if self.churning {
                            self.visit(net, v, now);
                        }
                    }
                    Role::Listener(l) if !matches!(why, Closed::Local) => {
                        self.failed += 1;
                        self.note(format!("listener {l}: {why:?}"));
                    }
                    Role::Listener(_) => {}
                }
            }
            (role, Event::Text(p)) => match (role, self.codec.parse(p)) {
                (Role::Listener(l), Msg::Chat { seq, tag }) => {
                    let has_seq = self.codec.protocol.has_seq();
                    let li = &mut self.listeners[l];
                    li.received += 1;
                    if has_seq {
                        if seq != Some(li.last_seq + 1) {
                            self.seq_errors += 1;
                        }
                        li.last_seq = seq.unwrap_or(li.last_seq);
                    }
                    if let Some(t) = tag {
                        let lat = proto::nanos(now).saturating_sub(t.ts);
                        self.latency.saturating_record(lat.max(1));
                    }
                }
                (Role::Listener(l), Msg::Joined) if !self.listeners[l].joined => {
                    self.listeners[l].joined = true;
                    self.listeners_joined += 1;
                }
                (Role::Visitor(v), Msg::Joined) => {
                    if self.visitors[v].joined {
                        return;
                    }
                    self.visitors[v].joined = true;
                    let ts = proto::nanos(Instant::now());
                    let ack = self.a.flow == Flow::Ack;
                    for n in 0..self.a.messages {
                        self.codec.chat(&mut self.buf, v, n, ts, ack);
                        net.send_text(id, &self.buf);
                    }
                }
                (Role::Visitor(v), Msg::Ack { .. }) if self.a.flow == Flow::Ack => {
                    self.confirm(net, v)
                }
                (Role::Visitor(v), Msg::Chat { tag: Some(t), .. })
                    if self.a.flow == Flow::Echo && t.sender == v =>
                {
                    self.confirm(net, v)
                }
                (_, Msg::Error { code, ack }) => self.note(format!("error {code} (ack {ack:?})")),
                (_, Msg::Bad) => self.note("unreadable frame".into()),
                _ => {}
            },
        }
    }
}

/// Runs the scenario. roomchat must lose nothing, keep `seq` gap-free and give
/// back its threads and memory; a peer passes when no connection failed and
/// visits went on, and its loss and timeouts are reported.
pub fn run(a: &ChurnArgs, ctx: &Ctx) -> (bool, serde_json::Value) {
    let (pid, label) = (ctx.pid, ctx.label);
    let start = Instant::now();
    let deadline = start + ctx.timeout;
    let rooms = a.rooms.max(1);
    crate::conns::warm_up(ctx.targets, ctx.protocol, None);
    let before = Usage::read(pid);
    let mut peak = before;
    let flow = match a.flow {
        Some(Flow::Ack) if ctx.protocol.has_acks() => Flow::Ack,
        None if ctx.protocol.has_acks() => Flow::Ack,
        _ => Flow::Echo,
    };
    let cfg = ConnsLike {
        rooms,
        messages: a.messages.max(1),
        flow,
        join_retry: Duration::from_millis(a.join_retry_ms),
        visit_timeout: Duration::from_millis(a.visit_timeout_ms),
    };
    let mut s = Churn {
        a: &cfg,
        prefix: format!("churn{}-{}", std::process::id(), proto::nanos(start)),
        roles: Vec::new(),
        listeners: Vec::new(),
        visitors: (0..a.clients)
            .map(|_| Visitor {
                conn: usize::MAX,
                room: 0,
                join_sent: None,
                joined: false,
                confirmed: 0,
                leaving: false,
                visits: 0,
            })
            .collect(),
        confirmed_per_room: vec![0; rooms],
        listeners_joined: 0,
        churning: false,
        visits: 0,
        messages: 0,
        failed: 0,
        timeouts: 0,
        join_retries: 0,
        errors: 0,
        seq_errors: 0,
        samples: Vec::new(),
        latency: report::histogram(),
        visit: report::histogram(),
        started: vec![start; a.clients],
        buf: Vec::with_capacity(256),
        codec: Codec::new(ctx.protocol),
    };
    let mut net = match Net::new(ctx.targets) {
        Ok(n) => n,
        Err(e) => {
            return (
                false,
                json!({"scenario": "churn", "label": label, "error": e.to_string()}),
            )
        }
    };
    for l in 0..rooms {
        let id = net.connect(l);
        s.set_role(id, Role::Listener(l));
        s.listeners.push(Listener {
            conn: id,
            join_sent: None,
            joined: false,
            last_seq: 0,
            received: 0,
        });
    }
    let mut churn_start = None;
    let mut churn_secs = 0.0;
    let mut during = None;
    let mut steady = None;
    let mut steady_visits = 0;
    let mut end_visits = 0;
    let mut last_sample = start;
    let mut last_timers = start;
    let mut stage_end = deadline;
    let mut stage = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            s.note(format!("timed out in stage {stage}"));
            break;
        }
        if now.duration_since(last_timers) >= Duration::from_millis(50) {
            last_timers = now;
            s.check_timers(&mut net, now);
        }
        if now.duration_since(last_sample) >= Duration::from_millis(200) {
            last_sample = now;
            if let Some(u) = Usage::read(pid) {
                peak = Some(peak.map_or(u, |p| p.max(u)));
            }
        }
        match stage {
            // Listeners join; then the visitors start.
            0 if s.listeners_joined == rooms => {
                s.churning = true;
                churn_start = Some(now);
                stage_end = now + Duration::from_secs_f64(a.duration);
                for v in 0..a.clients {
                    s.visit(&mut net, v, now);
                }
                stage = 1;
            }
            // A third of the way in the allocator has warmed up: the baseline
            // against which growth means a leak.
            1 if steady.is_none()
                && churn_start
                    .is_some_and(|t| now >= t + Duration::from_secs_f64(a.duration / 3.0)) =>
            {
                steady = Usage::read(pid);
                steady_visits = s.visits;
            }
            // Churn until the time is up, then let the last visits finish.
            1 if now >= stage_end => {
                s.churning = false;
                during = Usage::read(pid);
                end_visits = s.visits;
                stage_end = now + Duration::from_secs(10);
                stage = 2;
            }
            2 if net.live() == rooms || now >= stage_end => {
                churn_secs = churn_start.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
                stage_end = now + Duration::from_secs(5);
                stage = 3;
            }
            // Every confirmed message must reach its room's listener.
            3 if s
                .listeners
                .iter()
                .zip(&s.confirmed_per_room)
                .all(|(l, &n)| l.received >= n)
                || now >= stage_end =>
            {
                for l in &s.listeners {
                    net.close(l.conn);
                }
                stage_end = now + Duration::from_secs(10);
                stage = 4;
            }
            4 if net.live() == 0 || now >= stage_end => break,
            _ => {}
        }
        if let Err(e) = net.turn(&mut s, Some(Duration::from_millis(5))) {
            s.note(format!("poll: {e}"));
            break;
        }
    }
    let unclosed = net.live();
    drop(net);

    let after = Usage::after_settling(pid, before, a.settle);

    let expected: u64 = s.confirmed_per_room.iter().sum();
    let received: u64 = s.listeners.iter().map(|l| l.received).sum();
    let lost: u64 = s
        .listeners
        .iter()
        .zip(&s.confirmed_per_room)
        .map(|(l, &n)| n.saturating_sub(l.received))
        .sum();
    let threads_back = match (before, after) {
        (Some(b), Some(f)) => Some(f.threads <= b.threads),
        _ => None,
    };
    // Memory comes back to what it was while churning had warmed up, and does
    // not grow from there on while visits go on.
    let rss_back = match (steady, after) {
        (Some(st), Some(f)) => Some(f.rss_kib <= st.rss_kib + a.rss_slack_kib),
        _ => None,
    };
    let growth_per_1000 = match (steady, during) {
        (Some(st), Some(d)) if end_visits > steady_visits => Some(
            (d.rss_kib as f64 - st.rss_kib as f64) * 1000.0 / (end_visits - steady_visits) as f64,
        ),
        _ => None,
    };
    let visits_per_sec = if churn_secs > 0.0 {
        s.visits as f64 / churn_secs
    } else {
        0.0
    };
    let msgs_per_sec = if churn_secs > 0.0 {
        s.messages as f64 / churn_secs
    } else {
        0.0
    };
    let alive = pid.is_none() || Usage::read(pid).is_some();
    let mut checks = vec![
        ("server still running", alive),
        ("no failed connection", s.failed == 0),
        ("no error events", s.errors == 0),
        ("some visits", s.visits > 0),
        ("all closed", unclosed == 0),
    ];
    // What roomchat promises; a peer's loss, timeouts and memory are reported.
    let strict = ctx.protocol.has_seq();
    if strict {
        checks.extend([
            ("gap-free seq", s.seq_errors == 0),
            ("nothing lost", lost == 0),
            ("no visit timed out", s.timeouts == 0),
            ("threads returned", threads_back != Some(false)),
            ("RSS returned", rss_back != Some(false)),
        ]);
    }
    let failed = report::failed_checks(&checks);
    let pass = failed.is_empty();
    let lat = report::percentiles_ms(&s.latency);
    let vis = report::percentiles_ms(&s.visit);
    let [rss, thr] = report::usage_rows(before, peak, after);
    report::table(
        &format!("churn {label}"),
        &[
            (
                "clients × rooms",
                format!(
                    "{} at a time × {rooms}, {} messages per visit",
                    a.clients, cfg.messages
                ),
            ),
            ("churn time", format!("{churn_secs:.2} s")),
            ("visits", format!("{} ({visits_per_sec:.0}/s)", s.visits)),
            (
                "messages confirmed",
                format!("{} ({msgs_per_sec:.0}/s)", s.messages),
            ),
            (
                "listener frames",
                format!("{received} of {expected}, lost {lost}"),
            ),
            ("seq gaps", s.seq_errors.to_string()),
            (
                "failed / errors / timed out",
                format!("{} / {} / {}", s.failed, s.errors, s.timeouts),
            ),
            ("join retries", s.join_retries.to_string()),
            ("visit (connect→leave)", report::pct_line(&vis)),
            ("message latency", report::pct_line(&lat)),
            ("server RSS b → peak → a", rss),
            ("server threads b → peak → a", thr),
            (
                "RSS at 1/3 → end of churn",
                format!(
                    "{} → {} ({} KiB per 1000 visits)",
                    steady.map_or("-".into(), |u| format!(
                        "{:.1} MiB",
                        u.rss_kib as f64 / 1024.0
                    )),
                    during.map_or("-".into(), |u| format!(
                        "{:.1} MiB",
                        u.rss_kib as f64 / 1024.0
                    )),
                    growth_per_1000.map_or("-".into(), |g| format!("{g:.1}")),
                ),
            ),
            (
                "threads / RSS returned",
                format!("{threads_back:?} / {rss_back:?}"),
            ),
            ("result", report::verdict(pass, &failed, &s.samples)),
        ],
    );
    let line = json!({
        "scenario": "churn",
        "label": label,
        "clients": a.clients,
        "rooms": rooms,
        "messages_per_visit": cfg.messages,
        "secs": churn_secs,
        "visits": s.visits,
        "visits_per_sec": visits_per_sec.round(),
        "messages": s.messages,
        "messages_per_sec": msgs_per_sec.round(),
        "expected": expected,
        "received": received,
        "lost": lost,
        "seq_errors": s.seq_errors,
        "failed": s.failed,
        "timeouts": s.timeouts,
        "join_retries": s.join_retries,
        "flow": flow.name(),
        "strict": strict,
        "errors": s.errors,
        "error_samples": s.samples,
        "visit_ms": vis,
        "latency_ms": lat,
        "before": report::usage_json(before),
        "steady": report::usage_json(steady),
        "during": report::usage_json(during),
        "rss_growth_kib_per_1000_visits": growth_per_1000,
        "peak": report::usage_json(peak),
        "after": report::usage_json(after),
        "threads_returned": threads_back,
        "rss_returned": rss_back,
        "unclosed": unclosed,
        "failed_checks": failed,
        "pass": pass,
    });
    (pass, line)
}
