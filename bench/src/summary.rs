//! Turns result files (one JSON line per run) into Markdown tables of medians,
//! and fanout runs at rising load into an SVG of latency against load.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

const BEGIN: &str = "<!-- results:begin -->";
const END: &str = "<!-- results:end -->";

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
    let mut v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.pointer(ptr).and_then(Value::as_f64))
        .collect();
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

fn sum(runs: &[&Value], ptr: &str) -> u64 {
    runs.iter()
        .filter_map(|r| r.pointer(ptr).and_then(Value::as_u64))
        .sum()
}

fn all_pass(runs: &[&Value]) -> String {
    let ok = runs.iter().filter(|r| r["pass"] == true).count();
    if ok == runs.len() {
        format!("yes ({ok}/{})", runs.len())
    } else {
        format!("**NO** ({ok}/{})", runs.len())
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| {
        if x < 10.0 {
            format!("{x:.3}")
        } else {
            format!("{x:.1}")
        }
    })
}

fn mib(v: Option<f64>) -> String {
    v.map_or("-".into(), |k| format!("{:.1}", k / 1024.0))
}

fn int(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.0}"))
}

/// Commas every three digits: 2,000,000.
fn big(v: Option<f64>) -> String {
    let Some(x) = v else { return "-".into() };
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
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

pub fn tables(runs: &[Value], measured: Option<&str>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {}.", machine());
    if let Some(m) = measured {
        let _ = writeln!(md, "Measured: {m}.");
    }
    md.push('\n');
    let fan = groups(runs, "fanout");
    if !fan.is_empty() {
        let _ = writeln!(
            md,
            "### fanout\n\n| run | rooms × members | senders/room | mode | runs | lost | seq/order errors | delivered frames/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | passed |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (label, r) in &fan {
            let f = r[0];
            let mut mode = match f["rate"].as_f64() {
                Some(rate) => format!("{rate} msg/s"),
                None => format!("window {}", f["window"]),
            };
            if f["threads"].as_u64().unwrap_or(1) > 1 {
                mode.push_str(&format!(", {} bench threads", f["threads"]));
            }
            let _ = writeln!(
                md,
                "| {label} | {} × {} | {} | {mode} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f["rooms"],
                f["members"],
                f["senders"],
                r.len(),
                sum(r, "/lost"),
                sum(r, "/seq_errors") + sum(r, "/order_errors"),
                big(median(r, "/frames_per_sec")),
                ms(median(r, "/latency_ms/p50")),
                ms(median(r, "/latency_ms/p90")),
                ms(median(r, "/latency_ms/p99")),
                ms(median(r, "/latency_ms/p999")),
                ms(median(r, "/latency_ms/max")),
                all_pass(r),
            );
        }
        md.push('\n');
    }
    let conns = groups(runs, "conns");
    if !conns.is_empty() {
        let _ = writeln!(
            md,
            "### conns\n\n| run | connections × rooms | runs | joined | failed or dropped | connect p50 / p99 ms | connect+join p99 ms | broadcast p99 ms | RSS before / during / after MiB | threads before / during / after | RSS per connection | passed |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (label, r) in &conns {
            let f = r[0];
            let bpc = median(r, "/bytes_per_conn")
                .map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0));
            let _ = writeln!(
                md,
                "| {label} | {} × {} | {} | {} | {} | {} / {} | {} | {} | {} / {} / {} | {} / {} / {} | {bpc} | {} |",
                f["conns"],
                f["rooms"],
                r.len(),
                int(median(r, "/joined")),
                sum(r, "/failed") + sum(r, "/dropped"),
                ms(median(r, "/connect_ms/p50")),
                ms(median(r, "/connect_ms/p99")),
                ms(median(r, "/join_ms/p99")),
                ms(median(r, "/broadcast_ms/p99")),
                mib(median(r, "/before/rss_kib")),
                mib(median(r, "/during/rss_kib")),
                mib(median(r, "/after/rss_kib")),
                int(median(r, "/before/threads")),
                int(median(r, "/during/threads")),
                int(median(r, "/after/threads")),
                all_pass(r),
            );
        }
        md.push('\n');
    }
    let churn = groups(runs, "churn");
    if !churn.is_empty() {
        let _ = writeln!(
            md,
            "### churn\n\n| run | clients at a time × rooms | runs | seconds | visits/s | messages/s | lost | failed | threads before / peak / after | RSS before / peak / after MiB | passed |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (label, r) in &churn {
            let f = r[0];
            let _ = writeln!(
                md,
                "| {label} | {} × {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} / {} / {} | {} |",
                f["clients"],
                f["rooms"],
                r.len(),
                ms(median(r, "/secs")),
                big(median(r, "/visits_per_sec")),
                big(median(r, "/messages_per_sec")),
                sum(r, "/lost"),
                sum(r, "/failed"),
                int(median(r, "/before/threads")),
                int(median(r, "/peak/threads")),
                int(median(r, "/after/threads")),
                mib(median(r, "/before/rss_kib")),
                mib(median(r, "/peak/rss_kib")),
                mib(median(r, "/after/rss_kib")),
                all_pass(r),
            );
        }
        md.push('\n');
    }
    md
}

pub fn summary(
    files: &[PathBuf],
    doc: Option<&Path>,
    measured: Option<&str>,
) -> Result<bool, String> {
    let runs = load(files)?;
    let md = tables(&runs, measured);
    print!("{md}");
    if let Some(doc) = doc {
        let text = std::fs::read_to_string(doc).map_err(|e| format!("{}: {e}", doc.display()))?;
        let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
            return Err(format!("{}: no {BEGIN} … {END} markers", doc.display()));
        };
        let new = format!("{}{BEGIN}\n{md}{}", &text[..b], &text[e..]);
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
