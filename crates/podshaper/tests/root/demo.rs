//! `podshaper demo` end to end. In a module of its own, whose test runs
//! beside no other module's (main.rs): its unlimited phase saturates the
//! CPUs, which would disturb the rate tests running beside it.

use crate::common;
use crate::common::podshaper;

#[test]
fn demo_shows_unlimited_limited_and_changed_rates_and_cleans_up() {
    require_root!();
    let before = netns_list();
    let mut command = podshaper();
    command.args([
        "demo",
        "--seconds",
        "3",
        "--first",
        "80mbit",
        "--second",
        "20mbit",
    ]);
    let out = common::output_in_turn(&mut command);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let per_second = stdout.lines().filter(|l| l.starts_with('[')).count();
    assert_eq!(
        per_second, 9,
        "one line a second for 3 phases of 3 s:\n{stdout}"
    );
    for (label, low, high) in [
        ("limit 80Mbit/s", 0.9, 1.05),
        ("changed live to 20Mbit/s", 0.9, 1.05),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label) && l.contains("of target"))
            .unwrap_or_else(|| panic!("no summary for {label}:\n{stdout}"));
        let ratio: f64 = line
            .split_whitespace()
            .rev()
            .nth(2)
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no ratio in {line:?}"));
        assert!(
            (low..=high).contains(&ratio),
            "{label}: {ratio} of target:\n{stdout}"
        );
    }
    assert_eq!(
        netns_list(),
        before,
        "the demo left network namespaces behind"
    );
}

fn netns_list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| n.starts_with("ps-demo-"));
    names.sort();
    names
}
