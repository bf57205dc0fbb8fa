//! `podshaper run` as a command: exit status, signals, cleanup, bad input.

use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{podshaper, ChildGuard};

/// The cgroup2 mount, read the way podshaper reads it.
fn cgroup2_mount() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split_whitespace().nth(4).map(str::to_string))?
        })
        .expect("a cgroup2 mount")
}

#[test]
fn passes_the_exit_status_through_and_removes_its_cgroup() {
    require_root!();
    let out = podshaper()
        .args([
            "run",
            "--egress",
            "10M",
            "--",
            "sh",
            "-c",
            "cat /proc/self/cgroup; exit 7",
        ])
        .output()
        .expect("run podshaper");
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cgroup = stdout
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {stdout:?}"));
    assert!(
        cgroup.starts_with("/podshaper-run-"),
        "command ran in {cgroup}"
    );
    let dir = format!("{}{cgroup}", cgroup2_mount());
    assert!(!Path::new(&dir).exists(), "{dir} was left behind");
}

#[test]
fn a_command_killed_by_a_signal_exits_128_plus_the_signal() {
    require_root!();
    let out = podshaper()
        .args(["run", "--ingress", "1M", "--", "sh", "-c", "kill -KILL $$"])
        .output()
        .expect("run podshaper");
    assert_eq!(out.status.code(), Some(128 + 9));
}

#[test]
fn sigterm_stops_the_command_and_cleans_up() {
    require_root!();
    let child = ChildGuard::spawn(
        podshaper()
            .args([
                "run",
                "--egress",
                "10M",
                "--",
                "sh",
                "-c",
                "cat /proc/self/cgroup; exec sleep 60",
            ])
            .stdout(Stdio::piped()),
    );
    let pid = child.0.as_ref().expect("child").id();
    // Wait until the command is running inside its cgroup.
    let dir = format!("{}/podshaper-run-{pid}", cgroup2_mount());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&format!("{dir}/cgroup.procs")).exists()
        || std::fs::read_to_string(format!("{dir}/cgroup.procs"))
            .unwrap_or_default()
            .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the command never started in {dir}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal podshaper");
    let out = child.wait_output();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        started.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "the command's SIGTERM death is reported"
    );
    assert!(!Path::new(&dir).exists(), "{dir} was left behind");
}

#[test]
fn malformed_rates_exit_nonzero_with_one_line_naming_the_value() {
    require_root!();
    for bad in [
        "10x", "-5M", "0", "2P", "1e99", "ten", "10 M", "10m", "", "1.2.3M", "10MM",
    ] {
        for flag in ["--egress", "--ingress"] {
            let out = podshaper()
                .args(["run", flag, bad, "--", "true"])
                .output()
                .expect("run podshaper");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{flag} {bad:?} was accepted");
            assert_eq!(out.status.code(), Some(1), "{flag} {bad:?}: {stderr}");
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "{flag} {bad:?}: not one line: {stderr}"
            );
            assert!(
                stderr.contains(&format!("{bad:?}")),
                "{flag} {bad:?}: value not named: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

/// Runs podshaper with `args`; asserts exit status 1 and `expected` in stderr.
fn assert_refused(args: &[&str], expected: &str) {
    let out = podshaper().args(args).output().expect("run podshaper");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr}"
    );
}

#[test]
fn malformed_bursts_and_missing_limits_are_refused() {
    require_root!();
    assert_refused(
        &[
            "run",
            "--egress",
            "10M",
            "--burst",
            "12 parsecs",
            "--",
            "true",
        ],
        "\"12 parsecs\"",
    );
    assert_refused(&["run", "--", "true"], "nothing to limit");
    assert_refused(
        &[
            "run",
            "--egress",
            "10M",
            "--",
            "/nonexistent/podshaper-test-command",
        ],
        "cannot start",
    );
}

/// `--log-format json` (and PODSHAPER_LOG_FORMAT) writes each log line as
/// one JSON object, for a log collector; a command's own error stays one
/// line of text.
#[test]
fn a_json_log_format_writes_one_object_a_line() {
    require_root!();
    let out = podshaper()
        .args([
            "--log-format",
            "json",
            "run",
            "--egress",
            "10M",
            "--",
            "true",
        ])
        .env("PODSHAPER_LOG", "debug")
        .output()
        .expect("run podshaper");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no log line at debug");
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object: {line:?}: {e}"));
        assert!(
            event["level"].is_string() && event["fields"].is_object(),
            "{line}"
        );
    }
    let refused = podshaper()
        .args(["run", "--egress", "fast", "--", "true"])
        .env("PODSHAPER_LOG_FORMAT", "json")
        .output()
        .expect("run podshaper");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).starts_with("podshaper: "),
        "{refused:?}"
    );
}
