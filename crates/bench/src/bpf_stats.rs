//! The kernel's BPF run-time statistics for the shaper's programs: total run
//! time and run count per program, read from the programs' info while
//! statistics are enabled (BPF_ENABLE_STATS, held by an fd).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, SystemTime};

use crate::error::{BenchError, Result};

/// Statistics are collected while this is alive.
pub struct StatsOn(#[allow(dead_code)] OwnedFd);

pub fn enable() -> Result<StatsOn> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map(StatsOn)
        .map_err(|e| BenchError::Stats(e.to_string()))
}

/// (total run time, runs) of the shaper's programs and the empty baseline's
/// loaded since `since`, by program name (the kernel keeps 15 characters:
/// `podshaper_egres`, ...).
pub type Snapshot = BTreeMap<String, (Duration, u64)>;

pub fn snapshot(since: SystemTime) -> Snapshot {
    let mut out = Snapshot::new();
    for info in aya::programs::loaded_programs().flatten() {
        let name = info.name_as_str().unwrap_or_default().to_string();
        let ours = name.starts_with("podshaper_") || name.starts_with("empty_");
        if ours && info.loaded_at().is_some_and(|t| t >= since) {
            let e = out.entry(name).or_insert((Duration::ZERO, 0));
            e.0 += info.run_time();
            e.1 += info.run_count();
        }
    }
    out
}

/// Per program between two snapshots: (mean nanoseconds per run, runs).
pub fn per_run(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, (f64, u64)> {
    after
        .iter()
        .map(|(name, (time, count))| {
            let (t0, c0) = before.get(name).copied().unwrap_or_default();
            let runs = count.saturating_sub(c0);
            let ns = time.saturating_sub(t0).as_nanos() as f64 / runs.max(1) as f64;
            (name.clone(), (ns, runs))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_between_snapshots() {
        let before = Snapshot::from([("a".to_string(), (Duration::from_nanos(100), 2))]);
        let after = Snapshot::from([
            ("a".to_string(), (Duration::from_nanos(400), 5)),
            ("b".to_string(), (Duration::from_nanos(50), 1)),
        ]);
        let runs = per_run(&before, &after);
        assert_eq!(runs["a"], (100.0, 3));
        assert_eq!(runs["b"], (50.0, 1));
    }
}
