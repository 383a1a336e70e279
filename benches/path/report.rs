//! Taking the figures, and the table and JSON made of them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::stats::{median, percentile};
use crate::{mtls, procs, target, Scenario, Settings};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;
/// A setup this slow has paid a delayed-ACK stall (Linux delays ACKs by up to 40 ms).
const STALL_MS: f64 = 35.0;

/// Everything measured on one scenario; lists hold one value per pass.
#[derive(Default)]
pub(crate) struct Figures {
    up: Vec<f64>,
    down: Vec<f64>,
    streams16: Vec<f64>,
    cpu: BTreeMap<&'static str, Vec<f64>>,
    setup_ms: Vec<f64>,
    rtt_us: Option<f64>,
    rss_idle: BTreeMap<&'static str, u64>,
    anon_idle: BTreeMap<&'static str, u64>,
    rss_held: BTreeMap<usize, BTreeMap<&'static str, u64>>,
}

/// The roles on every path, in the order the tables give them.
const ROLES: [&str; 3] = ["platform", "relay", "gateway"];

fn cpu_by_role(s: &Scenario) -> Vec<f64> {
    s.roles
        .iter()
        .map(|(_, pids)| procs::cpu_seconds(pids))
        .collect()
}

/// One pass of one-stream upload and download (with CPU per role) and 16-stream download.
pub(crate) fn throughput(s: &Scenario, settings: &Settings, f: &mut Figures) {
    let bytes = settings.mib * 1024 * 1024;
    let before = cpu_by_role(s);
    let up = target::upload(s.port, bytes).unwrap_or_else(|e| panic!("{}: upload: {e}", s.name));
    let down =
        target::download(s.port, bytes).unwrap_or_else(|e| panic!("{}: download: {e}", s.name));
    let after = cpu_by_role(s);
    let moved_gib = 2.0 * bytes as f64 / GIB;
    for ((role, _), (b, a)) in s.roles.iter().zip(before.iter().zip(&after)) {
        f.cpu.entry(role).or_default().push((a - b) / moved_gib);
    }
    f.up.push(bytes as f64 / MIB / up);
    f.down.push(bytes as f64 / MIB / down);
    let par = target::parallel_download(s.port, bytes, 16)
        .unwrap_or_else(|e| panic!("{}: 16 streams: {e}", s.name));
    f.streams16.push(bytes as f64 / MIB / par);
}

/// Sequential connection setups and one-byte round trips.
pub(crate) fn latency(s: &Scenario, settings: &Settings, f: &mut Figures) {
    for _ in 0..settings.setups {
        let t = target::setup_once(s.port).unwrap_or_else(|e| panic!("{}: setup: {e}", s.name));
        f.setup_ms.push(t * 1000.0);
    }
    let rtt = target::round_trip(s.port, settings.round_trips)
        .unwrap_or_else(|e| panic!("{}: round trip: {e}", s.name));
    f.rtt_us = Some(rtt * 1e6);
}

/// Setup times of a plain mutual-TLS connection to the target, in ms.
pub(crate) fn mtls_setup(pki: &mtls::Pki, port: u16, settings: &Settings) -> Vec<f64> {
    let config = pki.client_config();
    (0..settings.setups)
        .map(|_| mtls::setup_once(&config, port).expect("mTLS setup") * 1000.0)
        .collect()
}

/// `VmRSS` by role, and the private anonymous part by role, from one reading.
fn rss_by_role(s: &Scenario) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
    s.roles
        .iter()
        .map(|(role, pids)| {
            let (rss, anon) = procs::rss_kib(pids);
            ((*role, rss), (*role, anon))
        })
        .unzip()
}

/// Resident memory idle and with each count of held connections.
pub(crate) fn memory(s: &Scenario, settings: &Settings, f: &mut Figures) {
    (f.rss_idle, f.anon_idle) = rss_by_role(s);
    for &n in &settings.held {
        let held = target::hold(s.port, n).unwrap_or_else(|e| panic!("{}: hold {n}: {e}", s.name));
        std::thread::sleep(Duration::from_millis(500));
        f.rss_held.insert(n, rss_by_role(s).0);
        drop(held);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The summary of every scenario, with the targets judged.
pub(crate) struct Report {
    json: Value,
    lines: Vec<String>,
}

fn med(v: &[f64]) -> f64 {
    median(&mut v.to_vec())
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && a.is_finite() => format!("{:.2}×", a / b),
        _ => "-".into(),
    }
}

struct Summary {
    up: f64,
    down: f64,
    streams16: f64,
    cpu: BTreeMap<&'static str, f64>,
    cpu_total: f64,
    p50: f64,
    p99: f64,
    max: f64,
    stalls: usize,
    rtt_us: f64,
}

fn summarise(f: &Figures) -> Summary {
    let cpu: BTreeMap<_, _> = f.cpu.iter().map(|(r, v)| (*r, med(v))).collect();
    let mut setup = f.setup_ms.clone();
    Summary {
        up: med(&f.up),
        down: med(&f.down),
        streams16: med(&f.streams16),
        cpu_total: cpu.values().sum(),
        cpu,
        p50: percentile(&mut setup, 50.0),
        p99: percentile(&mut setup, 99.0),
        max: setup.iter().copied().fold(f64::NAN, f64::max),
        stalls: setup.iter().filter(|t| **t >= STALL_MS).count(),
        rtt_us: f.rtt_us.unwrap_or(f64::NAN),
    }
}

/// KiB of resident memory added per held connection, per role, at `n` held.
fn per_connection(f: &Figures, n: usize) -> BTreeMap<&'static str, f64> {
    f.rss_held.get(&n).map_or_else(BTreeMap::new, |held| {
        held.iter()
            .map(|(role, kib)| {
                let idle = f.rss_idle.get(role).copied().unwrap_or(0);
                (*role, (*kib as f64 - idle as f64) / n as f64)
            })
            .collect()
    })
}

impl Report {
    pub(crate) fn new(
        settings: &Settings,
        figures: BTreeMap<String, Figures>,
        mtls_setup_ms: Vec<f64>,
        took: Duration,
    ) -> Self {
        let sums: BTreeMap<&str, Summary> = figures
            .iter()
            .map(|(n, f)| (n.as_str(), summarise(f)))
            .collect();
        let raw = sums.get("raw");
        let stock = sums.get("stock");
        let mut lines = vec![
            format!(
                "postern path benchmark: {} MiB per transfer, {} passes (medians), {} setups, \
                 {} round trips, held {:?}; took {:.0?}",
                settings.mib, settings.passes, settings.setups, settings.round_trips,
                settings.held, took
            ),
            String::new(),
            "| scenario | up MiB/s | down MiB/s | 16 streams MiB/s | up ×raw | up ×stock | down ×stock | CPU s/GiB (platform / relay / gateway = total) |".into(),
            "|---|---|---|---|---|---|---|---|".into(),
        ];
        for (name, s) in &sums {
            let cpu = if s.cpu.is_empty() {
                "-".to_owned()
            } else {
                // In the header's order (the map itself is alphabetical).
                format!(
                    "{} = {:.2}",
                    ROLES
                        .iter()
                        .map(|r| s.cpu.get(r).map_or("-".into(), |v| format!("{v:.2}")))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    s.cpu_total
                )
            };
            let stock_of = |n: &str| {
                let base = n.replace("postern", "stock");
                sums.get(base.as_str())
            };
            lines.push(format!(
                "| {name} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {cpu} |",
                s.up,
                s.down,
                s.streams16,
                ratio(s.up, raw.map(|r| r.up)),
                ratio(s.up, stock_of(name).map(|r| r.up)),
                ratio(s.down, stock_of(name).map(|r| r.down)),
            ));
        }
        let mut tls = mtls_setup_ms.clone();
        let (tls_p50, tls_p99) = (percentile(&mut tls, 50.0), percentile(&mut tls, 99.0));
        lines.extend([
            String::new(),
            "| scenario | setup p50 ms | setup p99 ms | max ms | p99/p50 | setups ≥ 35 ms | 1-byte RTT µs | RTT ×raw | RTT ×stock |".into(),
            "|---|---|---|---|---|---|---|---|---|".into(),
            format!(
                "| mTLS only | {tls_p50:.3} | {tls_p99:.3} | {:.3} | {:.1} | {} | - | - | - |",
                mtls_setup_ms.iter().copied().fold(f64::NAN, f64::max),
                tls_p99 / tls_p50,
                mtls_setup_ms.iter().filter(|t| **t >= STALL_MS).count()
            ),
        ]);
        for (name, s) in sums.iter().filter(|(_, s)| s.p50.is_finite()) {
            lines.push(format!(
                "| {name} | {:.3} | {:.3} | {:.3} | {:.1} | {} | {:.0} | {} | {} |",
                s.p50,
                s.p99,
                s.max,
                s.p99 / s.p50,
                s.stalls,
                s.rtt_us,
                ratio(s.rtt_us, raw.map(|r| r.rtt_us)),
                ratio(s.rtt_us, stock.map(|r| r.rtt_us)),
            ));
        }
        lines.extend([
            String::new(),
            "| scenario | role | idle KiB (anonymous) | held | KiB per held connection |".into(),
            "|---|---|---|---|---|".into(),
        ]);
        for (name, f) in figures.iter().filter(|(_, f)| !f.rss_idle.is_empty()) {
            for (role, idle) in &f.rss_idle {
                let held: Vec<String> = f
                    .rss_held
                    .keys()
                    .map(|n| format!("{n}: {:.1}", per_connection(f, *n)[role]))
                    .collect();
                let counts: Vec<String> = f.rss_held.keys().map(|n| n.to_string()).collect();
                let anon = f.anon_idle.get(role).copied().unwrap_or(0);
                lines.push(format!(
                    "| {name} | {role} | {idle} ({anon}) | {} | {} |",
                    counts.join(", "),
                    held.join(", ")
                ));
            }
        }
        let targets = judge(&figures, &sums, tls_p50);
        lines.push(String::new());
        for (what, met, detail) in &targets {
            lines.push(format!(
                "- [{}] {what}: {detail}",
                if *met { "met" } else { "NOT met" }
            ));
        }
        let json = json!({
            "settings": {
                "mib": settings.mib, "passes": settings.passes, "setups": settings.setups,
                "round_trips": settings.round_trips, "held": settings.held,
            },
            "mtls_only_setup_ms": mtls_setup_ms,
            "scenarios": figures.iter().map(|(n, f)| (n.clone(), to_json(f, &sums[n.as_str()])))
                .collect::<serde_json::Map<_, _>>(),
            "targets": targets.iter().map(|(w, m, d)| json!({"target": w, "met": m, "detail": d}))
                .collect::<Vec<_>>(),
        });
        Self { json, lines }
    }

    pub(crate) fn print(&self) {
        println!("{}", self.lines.join("\n"));
    }

    pub(crate) fn write_json(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the results directory");
        }
        let text = serde_json::to_string_pretty(&self.json).expect("results as JSON");
        std::fs::write(path, text).expect("write the results");
        println!("\nresults: {}", path.display());
    }
}

fn to_json(f: &Figures, s: &Summary) -> Value {
    json!({
        "up_mib_s": f.up, "down_mib_s": f.down, "streams16_mib_s": f.streams16,
        "up_mib_s_median": s.up, "down_mib_s_median": s.down, "streams16_mib_s_median": s.streams16,
        "cpu_s_per_gib": f.cpu, "cpu_s_per_gib_median": s.cpu, "cpu_s_per_gib_total": s.cpu_total,
        "setup_ms_p50": s.p50, "setup_ms_p99": s.p99, "setup_ms_max": s.max,
        "setups_stalled": s.stalls, "rtt_us": f.rtt_us,
        "rss_idle_kib": f.rss_idle, "rss_anon_idle_kib": f.anon_idle,
        "rss_held_kib": f.rss_held,
    })
}

/// Each target of the benchmark: (what, met, the figures behind it).
fn judge(
    figures: &BTreeMap<String, Figures>,
    sums: &BTreeMap<&str, Summary>,
    tls_p50: f64,
) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let (Some(p), Some(st)) = (sums.get("postern"), sums.get("stock")) else {
        out.push(("targets".into(), false, "the stock copy did not run".into()));
        return out;
    };
    let (up, down) = (p.up / st.up, p.down / st.down);
    out.push((
        "one stream ≥ 2.5× the stock copy".into(),
        up >= 2.5 && down >= 2.5,
        format!("up {up:.2}×, down {down:.2}×"),
    ));
    out.push((
        "total CPU ≤ 5 s/GiB across platform, relay and gateway".into(),
        p.cpu_total <= 5.0,
        format!("{:.2} s/GiB", p.cpu_total),
    ));
    out.push((
        "setup p50 within 1 ms of mTLS only".into(),
        p.p50 - tls_p50 <= 1.0,
        format!("{:.3} ms vs {tls_p50:.3} ms", p.p50),
    ));
    out.push((
        "setup p99/p50 < 5".into(),
        p.p99 / p.p50 < 5.0,
        format!("{:.2}", p.p99 / p.p50),
    ));
    out.push((
        "no setup pays a delayed-ACK stall".into(),
        p.stalls == 0,
        format!(
            "{} of {} setups ≥ {STALL_MS} ms, slowest {:.3} ms",
            p.stalls,
            figures["postern"].setup_ms.len(),
            p.max
        ),
    ));
    if let (Some(p50), Some(s50)) = (sums.get("postern 50 ms"), sums.get("stock 50 ms")) {
        let (up, down) = (p50.up / s50.up, p50.down / s50.down);
        out.push((
            "one stream over a 50 ms link ≥ 4× the stock copy".into(),
            up >= 4.0 && down >= 4.0,
            format!("up {up:.2}×, down {down:.2}×"),
        ));
    }
    let f = &figures["postern"];
    if let Some(&n) = f.rss_held.keys().max() {
        let per = per_connection(f, n);
        let worst = ["relay", "gateway"]
            .iter()
            .map(|r| per.get(r).copied().unwrap_or(f64::NAN));
        let worst = worst.fold(0.0f64, f64::max);
        out.push((
            format!("≤ 64 KiB per held connection in relay and gateway ({n} held)"),
            worst <= 64.0,
            format!(
                "relay {:.1} KiB, gateway {:.1} KiB",
                per["relay"], per["gateway"]
            ),
        ));
    }
    let idle = f.rss_idle.get("gateway").copied().unwrap_or(0);
    let anon = f.anon_idle.get("gateway").copied().unwrap_or(0);
    out.push((
        "idle gateway ≤ 4 MiB resident".into(),
        idle <= 4096,
        format!("{idle} KiB, of which {anon} KiB private anonymous memory and the rest pages of the program file"),
    ));
    out
}
