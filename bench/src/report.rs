//! What every scenario shares: latency histograms, the server's RSS and thread
//! count from /proc, and the output (a readable table, then one JSON line).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A histogram of nanoseconds, 1 ns to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// p50/p90/p99/p99.9/max in milliseconds, as a JSON object.
pub fn percentiles_ms(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": null, "p90": null, "p99": null, "p999": null, "max": null});
    }
    let ms = |v: u64| (v as f64 / 1e6 * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// One line of a table: "p50 0.120  p90 ...".
pub fn pct_line(v: &Value) -> String {
    let f = |k: &str| match v[k].as_f64() {
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    };
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (ms, n={})",
        f("p50"),
        f("p90"),
        f("p99"),
        f("p999"),
        f("max"),
        v["count"]
    )
}

/// A server's resident memory and thread count, from /proc/PID/status.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub threads: u64,
}

impl Usage {
    pub fn read(pid: Option<u32>) -> Option<Usage> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        Some(Usage {
            rss_kib: field("VmRSS:")?,
            threads: field("Threads:")?,
        })
    }

    /// Usage once the server's threads are back to `before`'s count (then
    /// half a second more, for memory to follow), or at `settle_secs`.
    pub fn after_settling(
        pid: Option<u32>,
        before: Option<Usage>,
        settle_secs: f64,
    ) -> Option<Usage> {
        let settle_end =
            std::time::Instant::now() + std::time::Duration::from_secs_f64(settle_secs);
        let mut after = Usage::read(pid);
        if let Some(b) = before {
            while std::time::Instant::now() < settle_end {
                after = Usage::read(pid);
                if after.is_some_and(|u| u.threads <= b.threads) {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    return Usage::read(pid);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        after
    }

    /// The larger of each field.
    pub fn max(self, o: Usage) -> Usage {
        Usage {
            rss_kib: self.rss_kib.max(o.rss_kib),
            threads: self.threads.max(o.threads),
        }
    }
}

/// The CPUs a process may run on (`Cpus_allowed_list`, e.g. "0" or "0-1"):
/// shows in the results whether a run was pinned. `None` is this process.
pub fn cpus_allowed(pid: Option<u32>) -> Option<String> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// CPU seconds (user + system) a process has used so far; `None` is this
/// process. Assumes the usual 100 clock ticks per second.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the ")" that closes the command name: utime is the 12th.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU used by the server and by the bench between two readings.
#[derive(Clone, Copy)]
pub struct Cpu {
    server: Option<f64>,
    bench: Option<f64>,
}

impl Cpu {
    pub fn now(pid: Option<u32>) -> Cpu {
        Cpu {
            server: pid.and_then(|p| cpu_secs(Some(p))),
            bench: cpu_secs(None),
        }
    }

    /// `{"server": s, "bench": s}` used since `self`.
    pub fn since(self, pid: Option<u32>) -> Value {
        let now = Cpu::now(pid);
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => json!(((b - a) * 100.0).round() / 100.0),
            _ => Value::Null,
        };
        json!({"server": d(self.server, now.server), "bench": d(self.bench, now.bench)})
    }
}

/// Prints a two-column table under a title.
/// The table's last row: PASS, or FAIL with the failed checks and error samples.
pub fn verdict(
    pass: bool,
    failed: &impl std::fmt::Debug,
    samples: &impl std::fmt::Debug,
) -> String {
    if pass {
        "PASS".into()
    } else {
        format!("FAIL {failed:?} {samples:?}")
    }
}

pub fn table(title: &str, rows: &[(&str, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("== {title}");
    for (k, v) in rows {
        println!("  {k:<w$}  {v}");
    }
}

/// Prints the scenario's JSON line and appends it to `out` if given.
pub fn emit(line: &Value, out: Option<&Path>) -> std::io::Result<()> {
    let s = line.to_string();
    println!("{s}");
    if let Some(p) = out {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new().create(true).append(true).open(p)?;
        writeln!(f, "{s}")?;
    }
    Ok(())
}

/// "before → during → after" for resource rows.
pub fn usage_rows(
    before: Option<Usage>,
    during: Option<Usage>,
    after: Option<Usage>,
) -> [String; 2] {
    let f = |u: Option<Usage>, g: fn(Usage) -> String| u.map(g).unwrap_or_else(|| "-".into());
    let rss = |u: Usage| format!("{:.1} MiB", u.rss_kib as f64 / 1024.0);
    let thr = |u: Usage| u.threads.to_string();
    [
        format!(
            "{} → {} → {}",
            f(before, rss),
            f(during, rss),
            f(after, rss)
        ),
        format!(
            "{} → {} → {}",
            f(before, thr),
            f(during, thr),
            f(after, thr)
        ),
    ]
}

pub fn usage_json(u: Option<Usage>) -> Value {
    match u {
        Some(u) => json!({"rss_kib": u.rss_kib, "threads": u.threads}),
        None => Value::Null,
    }
}

/// The names of the checks that failed.
pub fn failed_checks(checks: &[(&str, bool)]) -> Vec<String> {
    checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name.to_string())
        .collect()
}
