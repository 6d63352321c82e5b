//! `churn`: K clients at a time connect, join one of R rooms, send M messages,
//! wait for their acks and leave, again and again for T seconds, while one
//! listener per room checks that every acked message arrived, in `seq` order.
//! Afterwards the server's threads and RSS must be back where they started.

use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::net::{Closed, Event, Handler, Net, Target};
use crate::proto::{self, Msg, Parser};
use crate::report::{self, Usage};

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
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Listener(usize),
    Visitor(usize),
}

struct Listener {
    conn: usize,
    joined: bool,
    last_seq: u64,
    received: u64,
}

struct Visitor {
    conn: usize,
    room: usize,
    acked: u64,
    visits: u64,
}

struct Churn<'a> {
    a: &'a ConnsLike,
    prefix: String,
    roles: Vec<Option<Role>>,
    listeners: Vec<Listener>,
    visitors: Vec<Visitor>,
    acked_per_room: Vec<u64>,
    listeners_joined: usize,
    churning: bool,
    visits: u64,
    messages: u64,
    failed: u64,
    errors: u64,
    seq_errors: u64,
    samples: Vec<String>,
    latency: Histogram<u64>,
    visit: Histogram<u64>,
    started: Vec<Instant>,
    buf: Vec<u8>,
    parser: Parser,
}

/// The few arguments the handler needs.
struct ConnsLike {
    rooms: usize,
    messages: u64,
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
        let id = net.connect();
        self.set_role(id, Role::Visitor(v));
        let vis = &mut self.visitors[v];
        vis.conn = id;
        vis.room = (v + vis.visits as usize) % self.a.rooms;
        vis.acked = 0;
        vis.visits += 1;
        self.started[v] = now;
    }

    fn join(&mut self, net: &mut Net, id: usize, name: &str, room: usize) {
        let room = format!("{}-{room}", self.prefix);
        proto::join(&mut self.buf, name, &room);
        net.send_text(id, &self.buf);
    }
}

impl Handler for Churn<'_> {
    fn event(&mut self, net: &mut Net, id: usize, ev: Event<'_>, now: Instant) {
        let Some(Some(role)) = self.roles.get(id).copied() else {
            return;
        };
        match (role, ev) {
            (Role::Listener(l), Event::Open(_)) => self.join(net, id, &format!("listener{l}"), l),
            (Role::Visitor(v), Event::Open(_)) => {
                let room = self.visitors[v].room;
                self.join(net, id, &format!("visitor{v}"), room);
            }
            (_, Event::Closed(why)) => {
                self.roles[id] = None;
                match role {
                    Role::Visitor(v) => {
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
            (role, Event::Text(p)) => match (role, self.parser.parse(p)) {
                (Role::Listener(l), Msg::Chat { seq, tag }) => {
                    let li = &mut self.listeners[l];
                    li.received += 1;
                    if seq != li.last_seq + 1 {
                        self.seq_errors += 1;
                    }
                    li.last_seq = seq;
                    if let Some(t) = tag {
                        let lat = proto::nanos(now).saturating_sub(t.ts);
                        self.latency.saturating_record(lat.max(1));
                    }
                }
                (Role::Listener(l), Msg::Ack { ack, .. }) if ack == proto::JOIN_ACK => {
                    self.listeners[l].joined = true;
                    self.listeners_joined += 1;
                }
                (Role::Visitor(v), Msg::Ack { ack, .. }) if ack == proto::JOIN_ACK => {
                    let ts = proto::nanos(Instant::now());
                    for n in 0..self.a.messages {
                        proto::chat(&mut self.buf, v, n, ts);
                        net.send_text(id, &self.buf);
                    }
                }
                (Role::Visitor(v), Msg::Ack { .. }) => {
                    let vis = &mut self.visitors[v];
                    vis.acked += 1;
                    self.acked_per_room[vis.room] += 1;
                    self.messages += 1;
                    if vis.acked == self.a.messages {
                        net.close(id);
                    }
                }
                (_, Msg::Error { code, ack }) => self.note(format!("error {code} (ack {ack:?})")),
                (_, Msg::Bad) => self.note("unreadable frame".into()),
                _ => {}
            },
        }
    }
}

pub fn run(
    a: &ChurnArgs,
    target: &Target,
    pid: Option<u32>,
    label: &str,
    timeout: Duration,
) -> (bool, serde_json::Value) {
    let start = Instant::now();
    let deadline = start + timeout;
    let rooms = a.rooms.max(1);
    crate::conns::warm_up(target);
    let before = Usage::read(pid);
    let mut peak = before;
    let cfg = ConnsLike {
        rooms,
        messages: a.messages.max(1),
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
                acked: 0,
                visits: 0,
            })
            .collect(),
        acked_per_room: vec![0; rooms],
        listeners_joined: 0,
        churning: false,
        visits: 0,
        messages: 0,
        failed: 0,
        errors: 0,
        seq_errors: 0,
        samples: Vec::new(),
        latency: report::histogram(),
        visit: report::histogram(),
        started: vec![start; a.clients],
        buf: Vec::with_capacity(256),
        parser: Parser::default(),
    };
    let mut net = match Net::new(target) {
        Ok(n) => n,
        Err(e) => {
            return (
                false,
                json!({"scenario": "churn", "label": label, "error": e.to_string()}),
            )
        }
    };
    for l in 0..rooms {
        let id = net.connect();
        s.set_role(id, Role::Listener(l));
        s.listeners.push(Listener {
            conn: id,
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
    let mut stage_end = deadline;
    let mut stage = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            s.note(format!("timed out in stage {stage}"));
            break;
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
            // Every acked message must reach its room's listener.
            3 if s
                .listeners
                .iter()
                .zip(&s.acked_per_room)
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

    let expected: u64 = s.acked_per_room.iter().sum();
    let received: u64 = s.listeners.iter().map(|l| l.received).sum();
    let lost: u64 = s
        .listeners
        .iter()
        .zip(&s.acked_per_room)
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
    let failed = report::failed_checks(&[
        ("server still running", alive),
        ("no failed connection", s.failed == 0),
        ("no error events", s.errors == 0),
        ("gap-free seq", s.seq_errors == 0),
        ("nothing lost", lost == 0),
        ("some visits", s.visits > 0),
        ("all closed", unclosed == 0),
        ("threads returned", threads_back != Some(false)),
        ("RSS returned", rss_back != Some(false)),
    ]);
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
                "messages acked",
                format!("{} ({msgs_per_sec:.0}/s)", s.messages),
            ),
            (
                "listener frames",
                format!("{received} of {expected}, lost {lost}"),
            ),
            ("seq gaps", s.seq_errors.to_string()),
            ("failed / errors", format!("{} / {}", s.failed, s.errors)),
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
