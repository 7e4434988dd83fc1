//! Where the suite's time goes: every VM appends one line to `target/e2e/timings.jsonl` (its
//! boot, each scenario, the whole run, the time it waited for a slot), and `dmalab-timings`
//! prints the slowest at the end of `make e2e`.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One VM's run, in seconds of host time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmTiming {
    /// The run's name (its log directory; for most tests the test's name).
    pub name: String,
    /// Waiting for a VM slot ([`crate::slots`]) before it started.
    pub waited: f64,
    /// From QEMU's start to the agent's first report: firmware, kernel, initramfs.
    pub boot: Option<f64>,
    /// Each scenario, from the end of the one before it (or from the first report) to its own.
    pub scenarios: Vec<(String, f64)>,
    /// From QEMU's start to its exit.
    pub total: f64,
}

/// Appends `t` to the log at `path` (one line, written whole: VMs finish concurrently).
pub fn append(path: &Path, t: &VmTiming) {
    let line = serde_json::to_string(t).unwrap_or_default() + "\n";
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut f) = f {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Every VM's timing in the log at `path`.
pub fn read(path: &Path) -> Vec<VmTiming> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The report printed at the end of `make e2e`: totals, the `n` slowest VMs and the `n`
/// slowest scenarios.
pub fn summary(runs: &[VmTiming], n: usize) -> String {
    let mut out = String::new();
    let vm_time: f64 = runs.iter().map(|r| r.total).sum();
    let boots: Vec<f64> = runs.iter().filter_map(|r| r.boot).collect();
    let boot_time: f64 = boots.iter().sum();
    out += &format!(
        "{} VMs, {:.0} s of VM time ({:.0} s booting, {:.1} s a boot on average), {} VM(s) at once\n",
        runs.len(),
        vm_time,
        boot_time,
        boot_time / boots.len().max(1) as f64,
        crate::slots::count(),
    );
    let mut slow: Vec<&VmTiming> = runs.iter().collect();
    slow.sort_by(|a, b| b.total.total_cmp(&a.total));
    out += &format!("the {} slowest VMs:\n", n.min(slow.len()));
    for r in slow.iter().take(n) {
        out += &format!(
            "  {:>6.1} s  {}  (boot {})\n",
            r.total,
            r.name,
            r.boot.map_or("?".into(), |b| format!("{b:.1} s"))
        );
    }
    let mut scenarios: Vec<(&str, &str, f64)> = runs
        .iter()
        .flat_map(|r| {
            r.scenarios
                .iter()
                .map(|(s, t)| (r.name.as_str(), s.as_str(), *t))
        })
        .collect();
    scenarios.sort_by(|a, b| b.2.total_cmp(&a.2));
    out += &format!("the {} slowest scenarios:\n", n.min(scenarios.len()));
    for (vm, s, t) in scenarios.iter().take(n) {
        out += &format!("  {t:>6.1} s  {s}  (in {vm})\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_reads_back_and_the_summary_ranks_by_time() {
        let path = std::env::temp_dir().join(format!("dmalab-timings-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let vm = |name: &str, total, scenarios: Vec<(&str, f64)>| VmTiming {
            name: name.into(),
            waited: 0.0,
            boot: Some(3.0),
            scenarios: scenarios.into_iter().map(|(s, t)| (s.into(), t)).collect(),
            total,
        };
        append(&path, &vm("quick", 5.0, vec![("load", 1.0)]));
        append(
            &path,
            &vm("slow", 50.0, vec![("campaign", 40.0), ("load", 2.0)]),
        );
        let runs = read(&path);
        assert_eq!(runs.len(), 2);
        let s = summary(&runs, 1);
        assert!(s.starts_with("2 VMs, 55 s of VM time (6 s booting"), "{s}");
        assert!(s.contains("50.0 s  slow") && !s.contains("quick"), "{s}");
        assert!(s.contains("40.0 s  campaign  (in slow)"), "{s}");
        let _ = std::fs::remove_file(&path);
    }
}
