//! postern's path benchmark: the full path (connect → relay → gateway → target) against raw
//! loopback TCP and the stock OpenSSH + stunnel copy, in one run on one machine.
//!
//! `cargo bench --bench path` (or `bash benches/run.sh`) runs the full benchmark and writes
//! `target/bench/path.json`; run without `--bench` (as `cargo test --all-targets` does) it is a
//! smoke run with small sizes that checks every scenario still works and asserts no figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::as_conversions)]

#[path = "../../tests/common/mod.rs"]
mod common;
mod delay;
mod mtls;
mod procs;
mod report;
mod stats;
mod stock;
mod target;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::e2e::Connect;
use common::gateway::TestGateway;
use common::platform::TestPlatform;
use common::relay::TestRelay;
use report::{Figures, Report};

/// How much work each figure gets.
pub(crate) struct Settings {
    pub(crate) full: bool,
    pub(crate) mib: u64,
    pub(crate) passes: usize,
    pub(crate) setups: usize,
    pub(crate) round_trips: usize,
    pub(crate) held: Vec<usize>,
    /// `POSTERN_BENCH_ONLY`: the scenarios to run besides raw (comma-separated names), for a
    /// quick look at one figure; such a partial run writes no JSON.
    pub(crate) only: Option<Vec<String>>,
}

impl Settings {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let full = args.iter().any(|a| a == "--bench");
        let num = |name: &str| -> Option<u64> {
            std::env::var(name).ok().map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}={v}: expected a whole number"))
            })
        };
        let (mib, passes, setups, round_trips, held) = if full {
            (1024, 3, 200, 1000, vec![100, 1000])
        } else {
            (4, 1, 10, 20, vec![10])
        };
        Self {
            full,
            mib: num("POSTERN_BENCH_MIB").unwrap_or(mib),
            passes: num("POSTERN_BENCH_PASSES").map_or(passes, |n| n as usize),
            setups,
            round_trips,
            held,
            only: std::env::var("POSTERN_BENCH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|n| n.trim().to_owned()).collect()),
        }
    }

    fn wanted(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == scenario))
    }
}

/// One way to reach the target: its entry port and the processes that carry it, by role.
pub(crate) struct Scenario {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) roles: Vec<(&'static str, Vec<u32>)>,
    /// Whether setup, round-trip and memory figures are taken (the delayed links only measure
    /// throughput).
    pub(crate) detailed: bool,
    /// What keeps the scenario running (its processes stop when it is dropped).
    keep: Box<dyn std::any::Any>,
}

impl Scenario {
    /// Panics if a stock copy lost its SSH leg during the run.
    fn check(&mut self) {
        if let Some(stock) = self.keep.downcast_mut::<stock::Stock>() {
            if let Err(e) = stock.check_forward() {
                panic!("{}: {e}; its figures are void", self.name);
            }
        }
    }
}

struct Postern {
    _p: TestPlatform,
    relay: TestRelay,
    gateway: TestGateway,
    connect: Connect,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A platform, an instance relay, a gateway and `connect` for 127.0.0.1:`target`; with `rtt`,
/// the gateway reaches the relay's SSH port through a delaying proxy.
fn postern(name: &str, target: u16, rtt: Option<Duration>) -> Scenario {
    let mut p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    let r0 = p.identity("relay", None, "r0", &[]);
    p.start(&[]);
    let relay = match rtt {
        None => TestRelay::start(&p, &r0),
        Some(rtt) => {
            let ssh = free_port();
            let via = delay::start(ssh, rtt);
            TestRelay::start_with(
                &p,
                &r0,
                &format!("127.0.0.1:{ssh}"),
                &["--ssh-advertise", &format!("127.0.0.1:{via}")],
            )
        }
    };
    let gateway = TestGateway::start(&p, &p.identity("gateway", Some("a"), "g1", &[]));
    let alice = p.identity("operator", Some("a"), "alice", &[]);
    let connect = Connect::start(&p, &alice, "g1", &format!("127.0.0.1:{target}"));
    let w = Postern {
        _p: p,
        relay,
        gateway,
        connect,
    };
    Scenario {
        name: name.into(),
        port: w.connect.port,
        roles: vec![
            ("platform", vec![w.connect.pid()]),
            ("relay", vec![w.relay.pid()]),
            ("gateway", vec![w.gateway.child.id()]),
        ],
        detailed: rtt.is_none(),
        keep: Box::new(w),
    }
}

fn stock_copy(name: &str, target: u16, pki: &mtls::Pki, rtt: Option<Duration>) -> Scenario {
    // Configurations and logs stay in target/bench/ for a look after the run.
    let dir = std::env::current_dir()
        .expect("working directory")
        .join("target/bench")
        .join(name.replace(' ', "-"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scenario directory");
    let s = stock::start(&dir, pki, target, |sshd| match rtt {
        None => sshd,
        Some(rtt) => delay::start(sshd, rtt),
    });
    Scenario {
        name: name.into(),
        port: s.port,
        roles: s.roles(),
        detailed: rtt.is_none(),
        keep: Box::new(s),
    }
}

fn main() {
    let settings = Settings::from_args();
    let started = Instant::now();
    let target = target::start();
    let pki = mtls::Pki::new();
    let mtls_port = mtls::start(&pki, target);

    let mut scenarios = vec![Scenario {
        name: "raw".into(),
        port: target,
        roles: Vec::new(),
        detailed: true,
        keep: Box::new(()),
    }];
    let stock_ok = stock::stunnel_path().is_some();
    if !stock_ok {
        eprintln!(
            "stunnel is not installed: the stock copy is left out (.ci/run installs stunnel4)"
        );
    }
    for rtt in [None, Some(20), Some(50)] {
        let suffix = rtt.map_or(String::new(), |ms| format!(" {ms} ms"));
        let rtt = rtt.map(Duration::from_millis);
        let name = format!("postern{suffix}");
        if settings.wanted(&name) {
            scenarios.push(postern(&name, target, rtt));
        }
        let name = format!("stock{suffix}");
        if stock_ok && settings.wanted(&name) {
            scenarios.push(stock_copy(&name, target, &pki, rtt));
        }
    }
    eprintln!(
        "path bench: {} scenarios up after {:.1?}",
        scenarios.len(),
        started.elapsed()
    );

    let mut figures: BTreeMap<String, Figures> = scenarios
        .iter()
        .map(|s| (s.name.clone(), Figures::default()))
        .collect();
    // Memory first, while every process is fresh: idle, then with connections held.
    for s in scenarios
        .iter()
        .filter(|s| s.detailed && !s.roles.is_empty())
    {
        report::memory(s, &settings, figures.get_mut(&s.name).expect("figures"));
    }
    for pass in 0..settings.passes {
        eprintln!(
            "pass {} of {} ({:.0?})",
            pass + 1,
            settings.passes,
            started.elapsed()
        );
        for s in &scenarios {
            report::throughput(s, &settings, figures.get_mut(&s.name).expect("figures"));
        }
    }
    for s in scenarios.iter().filter(|s| s.detailed) {
        report::latency(s, &settings, figures.get_mut(&s.name).expect("figures"));
    }
    scenarios.iter_mut().for_each(Scenario::check);
    let baseline = report::mtls_setup(&pki, mtls_port, &settings);
    let report = Report::new(&settings, figures, baseline, started.elapsed());
    report.print();
    if settings.full && settings.only.is_none() {
        report.write_json(std::path::Path::new("target/bench/path.json"));
    }
}
