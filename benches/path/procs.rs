//! CPU time and resident memory of process trees, from /proc.

use std::collections::HashMap;
use std::fs;

fn ticks_per_second() -> f64 {
    // CLK_TCK is 100 on every Linux this runs on; getconf would need a process per reading.
    100.0
}

/// (parent, utime + stime in ticks) of every process, by pid.
fn table() -> HashMap<u32, (u32, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(ppid), Some(ut), Some(st)) = (f.get(1), f.get(11), f.get(12)) else {
            continue;
        };
        if let (Ok(ppid), Ok(ut), Ok(st)) = (ppid.parse(), ut.parse::<u64>(), st.parse::<u64>()) {
            out.insert(pid, (ppid, ut + st));
        }
    }
    out
}

/// `root` and all its descendants.
fn tree(root: u32, table: &HashMap<u32, (u32, u64)>) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        pids.extend(
            table
                .iter()
                .filter(|(_, (pp, _))| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    pids
}

/// CPU seconds (user + system) used so far by the trees under `roots`, children still running
/// included (children that already exited and were reaped count through their parent's
/// cumulative times only if the parent waited for them; the processes measured here keep theirs
/// alive for the whole measurement).
pub(crate) fn cpu_seconds(roots: &[u32]) -> f64 {
    let t = table();
    let ticks: u64 = roots
        .iter()
        .flat_map(|r| tree(*r, &t))
        .filter_map(|p| t.get(&p).map(|(_, ticks)| *ticks))
        .sum();
    ticks as f64 / ticks_per_second()
}

/// Resident memory in KiB of the trees under `roots`: (all of it, the private anonymous part).
/// The rest is file-backed: pages of the program image, shared with the page cache.
pub(crate) fn rss_kib(roots: &[u32]) -> (u64, u64) {
    let t = table();
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    roots
        .iter()
        .flat_map(|r| tree(*r, &t))
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
        .map(|s| (field(&s, "VmRSS:"), field(&s, "RssAnon:")))
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
}
