//! Limits kept through kill -9 and a normal shutdown, adopted by the next
//! daemon, removed by detach; pins of cgroups that are gone cleaned up.

use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::{assert_ratio, measure_with, Flow, Limiter};

#[test]
fn limits_hold_through_kill_9_are_adopted_on_restart_and_detach_removes_them() {
    require_root!();
    let root = TestRoot::new("life");
    let app = root.make("app");
    let path = app.path().display().to_string();
    let mut daemon = TestDaemon::start(&root.path, &[]);

    daemon.ok(&["attach", "--cgroup", &path, "--egress", "100M"]);
    let rate = measure_with(&Limiter::Cgroup(&app), &Flow::tcp(true));
    assert_ratio("through the daemon", rate, 100e6, 0.90, 1.05);

    daemon.kill9();
    let rate = measure_with(&Limiter::Cgroup(&app), &Flow::tcp(true));
    assert_ratio("with the daemon killed", rate, 100e6, 0.90, 1.05);

    daemon.restart();
    // the same build: its own pinned maps are its layout
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    assert!(
        !log.contains("pinned state maps of another size or layout"),
        "{log}"
    );
    let listed = daemon.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["cgroup"], path.as_str());
    assert_eq!(listed[0]["egress_bps"], 100_000_000);
    assert!(
        listed[0]["counters"]["egress_bytes"].as_u64().unwrap_or(0) > 10_000_000,
        "{listed:?}"
    );

    // adopted: it can be changed live ...
    daemon.ok(&["attach", "--cgroup", &path, "--egress", "40M"]);
    let rate = measure_with(&Limiter::Cgroup(&app), &Flow::tcp(true));
    assert_ratio("changed after restart", rate, 40e6, 0.90, 1.05);

    // ... and detached
    daemon.ok(&["detach", "--cgroup", &path]);
    assert!(daemon.list().is_empty());
    let rate = measure_with(&Limiter::Cgroup(&app), &Flow::tcp(true));
    assert!(rate > 500e6, "still limited after detach: {rate:.0} bit/s");
}

#[test]
fn a_normal_shutdown_keeps_limits_and_gone_cgroups_are_cleaned_up() {
    require_root!();
    let root = TestRoot::new("stale");
    let a = root.make("a");
    let b = root.make("b");
    let mut daemon = TestDaemon::start(&root.path, &[]);
    daemon.ok(&[
        "attach",
        "--cgroup",
        &a.path().display().to_string(),
        "--ingress",
        "10M",
    ]);
    daemon.ok(&[
        "attach",
        "--cgroup",
        &b.path().display().to_string(),
        "--egress",
        "10M",
    ]);
    daemon.kill9();
    std::fs::remove_dir(b.path()).expect("remove cgroup b");
    daemon.restart();
    let listed = daemon.list();
    assert_eq!(listed.len(), 1, "the gone cgroup was adopted: {listed:?}");
    assert_eq!(listed[0]["cgroup"], a.path().display().to_string().as_str());
    let links = std::fs::read_dir(daemon.bpffs.join("links"))
        .expect("links dir")
        .count();
    assert_eq!(links, 1, "pins of the gone cgroup were left");

    // and while running: a cgroup removed under a limit is cleaned up
    std::fs::remove_dir(a.path()).expect("remove cgroup a");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !daemon.list().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a removed cgroup stayed listed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
