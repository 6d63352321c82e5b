//! Turns result files (one JSON line per run) into side-by-side Markdown tables
//! of medians (roomchat and its peers, each case measured in the same run),
//! with ratios against socketioxide-chat and roomchat's targets; and fanout
//! runs at rising load into an SVG of latency against load.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The markers of the default section (`--section results`).
const SECTION: &str = "results";

fn load(files: &[PathBuf]) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines().filter(|l| l.starts_with('{')) {
            let v: Value =
                serde_json::from_str(line).map_err(|e| format!("{}: {e}", f.display()))?;
            if v.get("scenario").is_some() {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Runs grouped by (scenario, label), in the order first seen.
fn groups<'a>(runs: &'a [Value], scenario: &str) -> Vec<(String, Vec<&'a Value>)> {
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r["scenario"] == scenario) {
        let label = r["label"].as_str().unwrap_or("").to_string();
        if !by.contains_key(&label) {
            order.push(label.clone());
        }
        by.entry(label).or_default().push(r);
    }
    order
        .into_iter()
        .map(|l| {
            let v = by.remove(&l).unwrap_or_default();
            (l, v)
        })
        .collect()
}

/// The median of a field given as a JSON pointer ("/latency_ms/p99").
fn median(runs: &[&Value], ptr: &str) -> Option<f64> {
    median_of(
        runs.iter()
            .filter_map(|r| r.pointer(ptr).and_then(Value::as_f64))
            .collect(),
    )
}

fn median_of(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1048576.0));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {mem} RAM, Linux {kernel}")
}

/// The servers in table order; socketioxide-chat is the baseline of the ratios.
const SERVERS: [(&str, &str); 7] = [
    ("roomchat-native", "roomchat native"),
    ("roomchat-hs256", "roomchat native, HS256 tokens"),
    ("roomchat-rs256", "roomchat native, RS256 tokens"),
    ("roomchat-socketio", "roomchat Socket.IO"),
    ("roomchat-cluster", "roomchat, 2 nodes + Redis"),
    ("seed-socketio", "seed-socketio (Node)"),
    ("socketioxide-chat", "socketioxide-chat"),
];
const BASELINE: &str = "socketioxide-chat";
const NODE: &str = "seed-socketio";

fn is_roomchat(server: &str) -> bool {
    server.starts_with("roomchat")
}

#[derive(Clone, Copy)]
enum Fmt {
    /// Milliseconds.
    Ms,
    /// A big count: 2,000,000.
    Big,
    /// Bytes shown as KiB.
    KiB,
    /// KiB shown as MiB.
    MiB,
    /// A plain ratio: 1.07.
    Times,
    /// Microseconds: 2.61.
    Micros,
    /// A percentage: 99.4 %.
    Pct,
}

/// How a row's runs become one figure.
#[derive(Clone, Copy)]
enum Agg {
    /// The median of a field (a JSON pointer).
    Median(&'static str),
    /// The server's CPU-seconds per frame received, in µs: the median over
    /// the runs of `cpu_secs.server` ÷ `received` (no figure where the
    /// bench had no server PID, as for the cluster).
    CpuPerFrame,
    /// Frames lost over all runs, with their share of the frames expected.
    Lost,
    /// Frames that came after a later one of the same sender, over all runs,
    /// with their share of the frames received.
    OutOfOrder,
    /// Runs that passed their checks.
    Passed,
}

/// roomchat's target for a row, judged for each roomchat server.
#[derive(Clone, Copy)]
enum Goal {
    None,
    /// At most this many ms.
    AtMost(f64),
    /// At least this many times the baseline's figure.
    TimesBaseline(f64),
    /// At most the baseline's figure.
    AtMostBaseline,
    /// At least this percentage.
    AtLeastPct(f64),
    /// At most this plain ratio.
    AtMostTimes(f64),
    /// At most this many KiB, and at most this share of Node's figure.
    KiBAndNode(f64, f64),
    /// Nothing lost.
    Zero,
}

impl Goal {
    fn text(self) -> String {
        match self {
            Goal::None => String::new(),
            Goal::AtMost(x) => format!("≤ {x} ms"),
            Goal::TimesBaseline(k) => format!("≥ {k}× socketioxide"),
            Goal::AtMostBaseline => "≤ socketioxide".into(),
            Goal::AtLeastPct(x) => format!("≥ {x} %"),
            Goal::AtMostTimes(x) => format!("≤ {x}"),
            Goal::KiBAndNode(x, k) => format!("≤ {x} KiB and ≤ {k}× Node"),
            Goal::Zero => "0 (roomchat)".into(),
        }
    }
}

struct Row {
    name: &'static str,
    agg: Agg,
    fmt: Fmt,
    /// Show each server's figure ÷ the baseline's.
    ratio: bool,
    goal: Goal,
}

const fn row(name: &'static str, ptr: &'static str, fmt: Fmt, ratio: bool, goal: Goal) -> Row {
    Row {
        name,
        agg: Agg::Median(ptr),
        fmt,
        ratio,
        goal,
    }
}

const LOST: Row = Row {
    name: "frames lost (all runs)",
    agg: Agg::Lost,
    fmt: Fmt::Big,
    ratio: false,
    goal: Goal::Zero,
};
const ORDER: Row = Row {
    name: "frames out of sender order (all runs)",
    agg: Agg::OutOfOrder,
    fmt: Fmt::Big,
    ratio: false,
    goal: Goal::Zero,
};
const CPU: Row = Row {
    name: "server CPU µs per frame",
    agg: Agg::CpuPerFrame,
    fmt: Fmt::Micros,
    ratio: true,
    goal: Goal::AtMostBaseline,
};
/// Time to the upgrade's answer (over Socket.IO, to the accepted CONNECT):
/// the median of the runs' p99.
const CONNECT_P99: Row = row(
    "connect p99 ms",
    "/connect_ms/p99",
    Fmt::Ms,
    true,
    Goal::None,
);
const PASSED: Row = Row {
    name: "runs passed",
    agg: Agg::Passed,
    fmt: Fmt::Big,
    ratio: false,
    goal: Goal::None,
};

struct Case {
    /// The run label of the results (`--label`).
    label: &'static str,
    title: &'static str,
    rows: &'static [Row],
    /// The server the ratios in parentheses divide by.
    baseline: &'static str,
}

const LIGHT_ROWS: &[Row] = &[
    row(
        "p50 ms",
        "/latency_ms/p50",
        Fmt::Ms,
        true,
        Goal::AtMost(0.5),
    ),
    row(
        "p99 ms",
        "/latency_ms/p99",
        Fmt::Ms,
        true,
        Goal::AtMostBaseline,
    ),
    row("p99.9 ms", "/latency_ms/p999", Fmt::Ms, true, Goal::None),
    row(
        "delivered frames/s",
        "/frames_per_sec",
        Fmt::Big,
        false,
        Goal::None,
    ),
    Row {
        goal: Goal::None,
        ..CPU
    },
    LOST,
    ORDER,
    PASSED,
];
const FANOUT_ROWS: &[Row] = &[
    row(
        "delivered frames/s",
        "/frames_per_sec",
        Fmt::Big,
        true,
        Goal::TimesBaseline(1.2),
    ),
    CPU,
    row("p50 ms", "/latency_ms/p50", Fmt::Ms, true, Goal::None),
    row("p99 ms", "/latency_ms/p99", Fmt::Ms, true, Goal::None),
    row(
        "window slots given up (median)",
        "/window_expired",
        Fmt::Big,
        false,
        Goal::None,
    ),
    LOST,
    ORDER,
    PASSED,
];
const BIG_ROWS: &[Row] = &[
    row(
        "delivered ÷ offered",
        "/keep_up_pct",
        Fmt::Pct,
        false,
        Goal::AtLeastPct(98.0),
    ),
    row("p50 ms", "/latency_ms/p50", Fmt::Ms, true, Goal::None),
    row(
        "p99 ms",
        "/latency_ms/p99",
        Fmt::Ms,
        true,
        Goal::AtMostBaseline,
    ),
    row("p99.9 ms", "/latency_ms/p999", Fmt::Ms, true, Goal::None),
    row(
        "delivered frames/s",
        "/frames_per_sec",
        Fmt::Big,
        false,
        Goal::None,
    ),
    CPU,
    LOST,
    ORDER,
    PASSED,
];
const CONNS_ROWS: &[Row] = &[
    row(
        "RSS per idle connection KiB",
        "/bytes_per_conn",
        Fmt::KiB,
        true,
        Goal::KiBAndNode(16.0, 0.75),
    ),
    row(
        "RSS before MiB",
        "/before/rss_kib",
        Fmt::MiB,
        false,
        Goal::None,
    ),
    row(
        "RSS with all connected MiB",
        "/during/rss_kib",
        Fmt::MiB,
        false,
        Goal::None,
    ),
    row(
        "RSS after they left MiB",
        "/after/rss_kib",
        Fmt::MiB,
        false,
        Goal::None,
    ),
    row(
        "RSS after ÷ before",
        "/rss_after_ratio",
        Fmt::Times,
        false,
        Goal::AtMostTimes(1.2),
    ),
    CONNECT_P99,
    row(
        "broadcast to all p99 ms",
        "/broadcast_ms/p99",
        Fmt::Ms,
        true,
        Goal::None,
    ),
    row(
        "server threads connected",
        "/during/threads",
        Fmt::Big,
        false,
        Goal::None,
    ),
    PASSED,
];
/// Connecting with and without tokens (protocol v3), roomchat only: the
/// ratios are against roomchat without a key.
const AUTH_ROWS: &[Row] = &[
    row(
        "clients connected and joined per s",
        "/joined_per_sec",
        Fmt::Big,
        true,
        Goal::None,
    ),
    row(
        "server CPU per connection µs",
        "/connect_cpu_us_per_conn",
        Fmt::Big,
        true,
        Goal::None,
    ),
    row(
        "connect p50 ms",
        "/connect_ms/p50",
        Fmt::Ms,
        true,
        Goal::None,
    ),
    CONNECT_P99,
    row(
        "connect + join p99 ms",
        "/join_ms/p99",
        Fmt::Ms,
        true,
        Goal::None,
    ),
    PASSED,
];
const CHURN_ROWS: &[Row] = &[
    row(
        "visits/s",
        "/visits_per_sec",
        Fmt::Big,
        true,
        Goal::TimesBaseline(1.0),
    ),
    row(
        "messages/s",
        "/messages_per_sec",
        Fmt::Big,
        true,
        Goal::None,
    ),
    row(
        "listener p99 ms",
        "/latency_ms/p99",
        Fmt::Ms,
        true,
        Goal::None,
    ),
    row("visits timed out", "/timeouts", Fmt::Big, false, Goal::None),
    row(
        "RSS before MiB",
        "/before/rss_kib",
        Fmt::MiB,
        false,
        Goal::None,
    ),
    row("RSS peak MiB", "/peak/rss_kib", Fmt::MiB, false, Goal::None),
    row(
        "RSS after MiB",
        "/after/rss_kib",
        Fmt::MiB,
        false,
        Goal::None,
    ),
    PASSED,
];

const CASES: &[Case] = &[
    Case {
        label: "light-1x100-pinned",
        title: "Light load, pinned: 1 room × 100 members, 10 senders, 100 msg/s in all (10,000 frames/s); server on CPU 0, generator on CPU 1",
        rows: LIGHT_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "light-1x100-shared",
        title: "Light load, shared cores: the same, server and generator free on both cores",
        rows: LIGHT_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "fanout-1x100-shared",
        title: "Fan-out, shared cores: 1 room × 100 members, 10 senders, window 8",
        rows: FANOUT_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "fanout-1x100-pinned",
        title: "Fan-out, pinned: the same, server on CPU 0, generator on CPU 1",
        rows: FANOUT_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "fanout-10x100",
        title: "Fan-out, 10 rooms × 100 members, one sender per room, window 8 (shared cores)",
        rows: FANOUT_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "fanout-4x250",
        title: "Mid-size: 4 rooms × 250 members, 4 senders per room, 300-byte texts, window 8 (shared cores)",
        rows: FANOUT_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "fanout-1x1000-pinned",
        title: "1 room × 1000 members, one sender at 400 msg/s (400,000 frames/s offered), pinned",
        rows: BIG_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "fanout-1x1000-shared",
        title: "1 room × 1000 members at 400 msg/s, shared cores",
        rows: BIG_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "conns-",
        title: "Idle connections: server memory (shared cores)",
        rows: CONNS_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "churn",
        title: "Churn: 32 clients at a time join one of 10 rooms, send 5 messages, wait for their echoes and leave; one listener per room",
        rows: CHURN_ROWS,
        baseline: BASELINE,
    },
    Case {
        label: "auth-",
        title: "Verified identities (v3): clients connecting as fast as the server takes them, each with its own token in the upgrade's Authorization header, against the same server without a key (shared cores)",
        rows: AUTH_ROWS,
        baseline: "roomchat-native",
    },
];

fn ms(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

/// Commas every three digits: 2,000,000.
fn big(x: f64) -> String {
    let s = format!("{:.0}", x);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::from(sign);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn show(fmt: Fmt, x: f64) -> String {
    match fmt {
        Fmt::Ms => ms(x),
        Fmt::Big => big(x),
        Fmt::KiB => format!("{:.1}", x / 1024.0),
        Fmt::MiB => format!("{:.1}", x / 1024.0),
        Fmt::Times => format!("{x:.2}"),
        Fmt::Micros => format!("{x:.2}"),
        Fmt::Pct => format!("{x:.1} %"),
    }
}

fn total(runs: &[&Value], ptr: &str) -> f64 {
    runs.iter()
        .filter_map(|r| r.pointer(ptr).and_then(Value::as_f64))
        .sum()
}

/// One row's figure for one server: the number (for ratios and goals) and
/// the cell text.
fn figure(row: &Row, runs: &[&Value]) -> (Option<f64>, String) {
    if runs.is_empty() {
        return (None, "not run".into());
    }
    // A fan-out run that never started sending (a member dropped while
    // joining) has no figures: its zeros would drag the median down, so
    // medians are over the runs that delivered; passes and loss count all.
    let measured: Vec<&Value> = runs
        .iter()
        .copied()
        .filter(|r| r["scenario"] != "fanout" || r["received"].as_u64() != Some(0))
        .collect();
    match row.agg {
        Agg::Median(ptr) => {
            let v = median(&measured, ptr);
            (v, v.map_or("-".into(), |x| show(row.fmt, x)))
        }
        Agg::CpuPerFrame => {
            let v = median_of(
                measured
                    .iter()
                    .filter_map(|r| {
                        let cpu = r.pointer("/cpu_secs/server")?.as_f64()?;
                        let n = r["received"].as_f64().filter(|n| *n > 0.0)?;
                        Some(cpu * 1e6 / n)
                    })
                    .collect(),
            );
            (v, v.map_or("-".into(), |x| show(row.fmt, x)))
        }
        Agg::Lost | Agg::OutOfOrder => {
            let (num, den) = match row.agg {
                Agg::Lost => (total(runs, "/lost"), total(runs, "/expected")),
                _ => (total(runs, "/out_of_order"), total(runs, "/received")),
            };
            let text = if num == 0.0 || den == 0.0 {
                big(num)
            } else {
                format!("{} ({:.3} %)", big(num), num * 100.0 / den)
            };
            (Some(num), text)
        }
        Agg::Passed => {
            let ok = runs.iter().filter(|r| r["pass"] == true).count();
            let text = if ok == runs.len() {
                format!("{ok}/{}", runs.len())
            } else {
                format!("**{ok}/{}**", runs.len())
            };
            (Some(ok as f64), text)
        }
    }
}

/// Whether roomchat's figure `v` meets the goal, given every server's figure.
fn judge(goal: Goal, v: f64, all: &[(&str, Option<f64>)]) -> Option<(bool, String)> {
    let of = |name: &str| all.iter().find(|(s, _)| *s == name).and_then(|(_, v)| *v);
    Some(match goal {
        Goal::None => return None,
        Goal::AtMost(x) => (v <= x, String::new()),
        Goal::TimesBaseline(k) => {
            let b = of(BASELINE).filter(|b| *b > 0.0)?;
            (v >= k * b, format!(" ({:.2}×)", v / b))
        }
        Goal::AtMostBaseline => {
            let b = of(BASELINE)?;
            let note = if b > 0.0 {
                format!(" ({:.2}×)", v / b)
            } else {
                String::new()
            };
            (v <= b, note)
        }
        Goal::AtLeastPct(x) => (v >= x, format!(" ({v:.1} %)")),
        Goal::AtMostTimes(x) => (v <= x, format!(" ({v:.2})")),
        Goal::KiBAndNode(x, k) => {
            let kib = v / 1024.0;
            match of(NODE) {
                Some(n) if n > 0.0 => (kib <= x && v <= k * n, format!(" ({:.2}× Node)", v / n)),
                _ => (kib <= x, " (Node not measured)".into()),
            }
        }
        Goal::Zero => (v == 0.0, String::new()),
    })
}

fn verdict(goal: Goal, all: &[(&str, Option<f64>)]) -> String {
    let mut parts = Vec::new();
    for (server, v) in all.iter().filter(|(s, _)| is_roomchat(s)) {
        let who = server.strip_prefix("roomchat-").unwrap_or(server);
        let who = if who == "socketio" { "Socket.IO" } else { who };
        match v.and_then(|v| judge(goal, v, all)) {
            Some((true, note)) => parts.push(format!("{who} met{note}")),
            Some((false, note)) => parts.push(format!("{who} **missed**{note}")),
            None if matches!(goal, Goal::None) => {}
            None => parts.push(format!("{who}: no figure")),
        }
    }
    parts.join("; ")
}

/// The servers that have runs, in table order (unknown names last).
fn servers_in(runs: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = SERVERS
        .iter()
        .filter(|(s, _)| runs.iter().any(|r| r["server"] == *s))
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect();
    for r in runs {
        if let Some(s) = r["server"].as_str() {
            if !out.iter().any(|(n, _)| n == s) {
                out.push((s.to_string(), s.to_string()));
            }
        }
    }
    out
}

fn case_table(
    md: &mut String,
    case: &Case,
    label: &str,
    runs: &[&Value],
    servers: &[(String, String)],
) {
    // Only the servers this case ran.
    let servers: Vec<&(String, String)> = servers
        .iter()
        .filter(|(s, _)| runs.iter().any(|r| r["server"] == *s))
        .collect();
    let baseline = case.baseline;
    let by: Vec<Vec<&Value>> = servers
        .iter()
        .map(|(s, _)| runs.iter().copied().filter(|r| r["server"] == *s).collect())
        .collect();
    let _ = writeln!(md, "#### {}\n", case.title);
    let first = runs[0];
    let mut notes = vec![format!("`{label}`")];
    if let Some(cpus) = first.get("cpus") {
        if let (Some(s), Some(b)) = (cpus["server"].as_str(), cpus["bench"].as_str()) {
            notes.push(format!("server CPUs {s}, generator CPUs {b}"));
        }
    }
    if let Some(f) = first["flow"].as_str() {
        notes.push(format!("{f} flow"));
    }
    if let Some(d) = first["duration"].as_f64() {
        notes.push(format!("{d} s of sending"));
    }
    if let Some(c) = first["conns"].as_u64() {
        notes.push(format!("{c} connections in {} rooms", first["rooms"]));
    }
    if let Some(t) = first["threads"].as_u64() {
        notes.push(format!("generator threads {t} (`--threads {t}`)"));
    }
    if let Some(b) = first["text_bytes"].as_u64().filter(|b| *b > 0) {
        notes.push(format!("{b}-byte texts"));
    }
    if baseline != BASELINE {
        let title = servers
            .iter()
            .find(|(s, _)| s == baseline)
            .map_or(baseline, |(_, t)| t.as_str());
        notes.push(format!("in parentheses: the figure ÷ {title}'s"));
    }
    let _ = writeln!(md, "{}.\n", notes.join(", "));
    let mut head = String::from("| measure |");
    let mut rule = String::from("|---|");
    for (s, title) in &servers {
        let _ = write!(
            head,
            " {title}{} |",
            if s == baseline { " (baseline)" } else { "" }
        );
        rule.push_str("---|");
    }
    let _ = writeln!(md, "{head} roomchat target | verdict |\n{rule}---|---|");
    for row in case.rows {
        let figs: Vec<(Option<f64>, String)> = by.iter().map(|r| figure(row, r)).collect();
        let base = servers
            .iter()
            .position(|(s, _)| *s == baseline)
            .and_then(|i| figs[i].0)
            .filter(|b| *b > 0.0);
        let _ = write!(md, "| {} |", row.name);
        for ((s, _), (v, text)) in servers.iter().zip(&figs) {
            match (row.ratio, v, base) {
                (true, Some(v), Some(b)) if s != baseline => {
                    let _ = write!(md, " {text} ({:.2}×) |", v / b);
                }
                _ => {
                    let _ = write!(md, " {text} |");
                }
            }
        }
        let all: Vec<(&str, Option<f64>)> = servers
            .iter()
            .zip(&figs)
            .map(|((s, _), (v, _))| (s.as_str(), *v))
            .collect();
        let _ = writeln!(md, " {} | {} |", row.goal.text(), verdict(row.goal, &all));
    }
    md.push('\n');
}

pub fn tables(runs: &[Value], measured: Option<&str>, command: Option<&str>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {}.", machine());
    if let Some(m) = measured {
        let _ = writeln!(md, "Measured: {m}.");
    }
    if let Some(c) = command {
        let _ = writeln!(md, "Command: `{c}`.");
    }
    // `verify` runs have no server under test.
    let measured_runs: Vec<Value> = runs
        .iter()
        .filter(|r| r["scenario"] != "verify")
        .cloned()
        .collect();
    let servers = servers_in(&measured_runs);
    let names: Vec<&str> = servers.iter().map(|(_, t)| t.as_str()).collect();
    let ratios = if servers.iter().any(|(s, _)| s == BASELINE) {
        "In parentheses (unless a table says otherwise): the figure ÷ socketioxide-chat's. "
    } else {
        ""
    };
    let _ = writeln!(
        md,
        "\nEvery figure below was measured in this run, by the same load generator, \
         against {}. {ratios}Medians of the runs; loss, reordering and passes are totals.\n",
        names.join("; ")
    );
    let mut shown = Vec::new();
    for case in CASES {
        for (label, rs) in groups(runs, "fanout")
            .into_iter()
            .chain(groups(runs, "conns"))
            .chain(groups(runs, "churn"))
        {
            let hit = if case.label.ends_with('-') {
                label.starts_with(case.label)
            } else {
                label == case.label
            };
            if hit && !rs.is_empty() {
                case_table(&mut md, case, &label, &rs, &servers);
                shown.push(label);
            }
        }
    }
    // The token check alone (roomchat-bench verify): one row per algorithm.
    let verify: Vec<&Value> = runs.iter().filter(|r| r["scenario"] == "verify").collect();
    if !verify.is_empty() {
        let _ = writeln!(
            md,
            "#### One token check, alone: roomchat's `auth::Verifier::verify` in the generator's process, one thread\n\n\
             Median over {} run(s) of each run's median batch.\n\n\
             | alg | µs per verification | token bytes |\n|---|---|---|",
            verify.len()
        );
        for alg in ["hs256", "rs256", "es256"] {
            let us = median(&verify, &format!("/verify_us/{alg}"));
            let bytes = median(&verify, &format!("/verify_us/{alg}_bytes"));
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                alg.to_uppercase(),
                us.map_or("-".into(), |x| format!("{x:.2}")),
                bytes.map_or("-".into(), big),
            );
        }
        md.push('\n');
    }
    // Runs of other labels (ad hoc cases, the load sweep): one line each.
    let mut rest = Vec::new();
    for (label, rs) in groups(runs, "fanout") {
        if !shown.contains(&label) {
            rest.push((label, rs));
        }
    }
    if !rest.is_empty() {
        let _ = writeln!(
            md,
            "#### Other fan-out runs\n\n| run | server | runs | delivered frames/s | p50 ms | p99 ms | p99.9 ms | lost | passed |\n|---|---|---|---|---|---|---|---|---|"
        );
        for (label, rs) in rest {
            for (s, title) in &servers {
                let r: Vec<&Value> = rs.iter().copied().filter(|r| r["server"] == *s).collect();
                if r.is_empty() {
                    continue;
                }
                let m = |p: &str| median(&r, p);
                let _ = writeln!(
                    md,
                    "| {label} | {title} | {} | {} | {} | {} | {} | {} | {} |",
                    r.len(),
                    m("/frames_per_sec").map_or("-".into(), big),
                    m("/latency_ms/p50").map_or("-".into(), ms),
                    m("/latency_ms/p99").map_or("-".into(), ms),
                    m("/latency_ms/p999").map_or("-".into(), ms),
                    figure(&LOST, &r).1,
                    figure(&PASSED, &r).1,
                );
            }
        }
        md.push('\n');
    }
    md
}

/// Prints the tables of `files`; with `doc`, also writes them between the
/// markers `<!-- SECTION:begin -->` and `<!-- SECTION:end -->` of that file
/// (`section` defaults to `results`).
pub fn summary(
    files: &[PathBuf],
    doc: Option<&Path>,
    section: Option<&str>,
    measured: Option<&str>,
    command: Option<&str>,
) -> Result<bool, String> {
    let runs = load(files)?;
    let md = tables(&runs, measured, command);
    print!("{md}");
    if let Some(doc) = doc {
        let section = section.unwrap_or(SECTION);
        let (begin, end) = (
            format!("<!-- {section}:begin -->"),
            format!("<!-- {section}:end -->"),
        );
        let text = std::fs::read_to_string(doc).map_err(|e| format!("{}: {e}", doc.display()))?;
        let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
            return Err(format!("{}: no {begin} … {end} markers", doc.display()));
        };
        let new = format!("{}{begin}\n{md}{}", &text[..b], &text[e..]);
        std::fs::write(doc, new).map_err(|e| format!("{}: {e}", doc.display()))?;
    }
    Ok(true)
}

/// Log-log SVG: delivered frames/s → p50, p99, p99.9 latency (medians per label).
pub fn plot(files: &[PathBuf], prefix: &str, out: &Path) -> Result<bool, String> {
    let runs = load(files)?;
    let mut pts: Vec<(f64, [f64; 3], bool)> = groups(&runs, "fanout")
        .into_iter()
        .filter(|(l, _)| l.starts_with(prefix))
        .filter_map(|(_, r)| {
            let x = median(&r, "/frames_per_sec")?;
            let y = [
                median(&r, "/latency_ms/p50")?,
                median(&r, "/latency_ms/p99")?,
                median(&r, "/latency_ms/p999")?,
            ];
            let ok = r.iter().all(|v| v["pass"] == true);
            (x > 0.0).then_some((x, y, ok))
        })
        .collect();
    if pts.is_empty() {
        return Err(format!("no fanout runs labelled {prefix}*"));
    }
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (w, h, l, r, t, b) = (720.0, 440.0, 70.0, 150.0, 40.0, 50.0);
    let (x0, x1) = decades(pts.iter().map(|p| p.0));
    let (y0, y1) = decades(pts.iter().flat_map(|p| p.1).chain([1.0]));
    let sx = |x: f64| l + (x.log10() - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| h - b - (y.max(1e-3).log10() - y0) / (y1 - y0) * (h - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">roomchat: latency against load (fanout 1 room × 100, 10 senders, fixed rate)</text>"#,
        w / 2.0
    );
    for d in (x0 as i32)..=(x1 as i32) {
        let x = sx(10f64.powi(d));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            h - b,
            h - b + 16.0,
            si(10f64.powi(d))
        );
    }
    for d in (y0 as i32)..=(y1 as i32) {
        let y = sy(10f64.powi(d));
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - r,
            l - 6.0,
            y + 4.0,
            10f64.powi(d)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">delivered frames/s</text><text transform="translate(18,{}) rotate(-90)" text-anchor="middle">latency, ms</text>"#,
        (l + w - r) / 2.0,
        h - 10.0,
        (t + h - b) / 2.0
    );
    let y1ms = sy(1.0);
    let _ = writeln!(
        s,
        r##"<line x1="{l}" y1="{y1ms:.1}" x2="{}" y2="{y1ms:.1}" stroke="#999" stroke-dasharray="4 3"/>"##,
        w - r
    );
    let series = [("p50", "#1f77b4"), ("p99", "#d62728"), ("p99.9", "#9467bd")];
    for (i, (name, color)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1[i])))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for p in &pts {
            let fill = if p.2 { *color } else { "white" };
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{color}"/>"#,
                sx(p.0),
                sy(p.1[i])
            );
        }
        let ly = t + 20.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
            w - r + 12.0,
            w - r + 36.0,
            w - r + 42.0,
            ly + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="11">open dot: a run failed</text><text x="{}" y="{}" font-size="11">dashed: 1 ms</text>"#,
        w - r + 12.0,
        t + 90.0,
        w - r + 12.0,
        t + 106.0
    );
    s.push_str("</svg>\n");
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(out, s).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("wrote {} ({} points)", out.display(), pts.len());
    Ok(true)
}

/// The whole decades around some positive values, as log10 bounds.
fn decades(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for x in v.filter(|x| *x > 0.0) {
        lo = lo.min(x.log10().floor());
        hi = hi.max(x.log10().ceil());
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    (lo, hi)
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{}k", x / 1e3)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn auth_run(server: &str, per_sec: f64) -> serde_json::Value {
        json!({"scenario": "conns", "label": "auth-10", "server": server, "conns": 10,
               "rooms": 1, "joined_per_sec": per_sec, "connect_ms": {"p99": 1.0},
               "pass": true})
    }

    #[test]
    fn the_auth_table_divides_by_roomchat_without_a_key_and_shows_only_its_servers() {
        let runs = vec![
            auth_run("roomchat-native", 4000.0),
            auth_run("roomchat-rs256", 1000.0),
            json!({"scenario": "fanout", "label": "fanout-10x100", "server": "socketioxide-chat",
                   "received": 0}),
            json!({"scenario": "verify", "label": "verify", "server": "roomchat",
                   "verify_us": {"hs256": 5.0, "rs256": 400.0}}),
        ];
        let md = super::tables(&runs, None, None);
        let auth = &md[md.find("#### Verified identities").unwrap()..];
        let auth = &auth[..auth.find("\n\n####").unwrap()];
        assert!(auth.contains("÷ roomchat native's"), "{auth}");
        assert!(auth.contains("| clients connected and joined per s | 4,000 | 1,000 (0.25×) |"));
        assert!(!auth.contains("socketioxide"), "{auth}");
        assert!(md.contains("| RS256 | 400.00 |"), "{md}");
        // A verify line names no server under test, and without socketioxide
        // no ratio is said to be against it.
        assert!(!md.contains("; roomchat."), "{md}");
        let md = super::tables(&[runs[0].clone(), runs[1].clone()], None, None);
        assert!(!md.contains("÷ socketioxide"), "{md}");
    }
}
