//! Requests the daemon refuses (outside its cgroup root, malformed, a NUL
//! byte, a missing target, custom programs not allowed), the CLI's one-line
//! errors, `status` and `list` in JSON and YAML, and the daemon benchmark
//! over the API.

use super::{stderr_of, Cleanup};
use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};

#[test]
fn requests_outside_the_cgroup_root_or_malformed_are_refused() {
    require_root!();
    let root = TestRoot::new("confine");
    let inside = root.make("inside");
    let outside = TestRoot::new("outside");
    let daemon = TestDaemon::start(&root.path, &[]);
    let cases: [(String, &str); 6] = [
        (
            format!("{}/../{}", inside.path().display(), "x"),
            "contains '..'",
        ),
        (
            outside.path.display().to_string(),
            "outside the cgroup root",
        ),
        ("/".into(), "outside the cgroup root"),
        (format!("{}/nope", root.path.display()), "does not exist"),
        (
            format!("{}/cgroup.procs", inside.path().display()),
            "not a cgroup v2 directory",
        ),
        ("".into(), "empty"),
    ];
    for (path, expected) in cases {
        let out = daemon.cli(&["attach", "--cgroup", &path, "--egress", "10M"]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{path:?} was accepted: {err}");
        assert!(
            err.contains(expected),
            "{path:?}: expected {expected:?} in {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    for uid in ["../../etc", "not-a-uid", ""] {
        let out = daemon.cli(&["attach", "--pod-uid", uid, "--egress", "10M"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr_of(&out).contains("is not a UID"),
            "{}",
            stderr_of(&out)
        );
    }
    // nesting with a limited cgroup is refused both ways
    let child = root.make("inside/child");
    daemon.ok(&[
        "attach",
        "--cgroup",
        &inside.path().display().to_string(),
        "--egress",
        "10M",
    ]);
    let out = daemon.cli(&[
        "attach",
        "--cgroup",
        &child.path().display().to_string(),
        "--egress",
        "10M",
    ]);
    assert!(stderr_of(&out).contains("nested"), "{}", stderr_of(&out));
    assert!(
        daemon
            .cli(&["detach", "--cgroup", &outside.path.display().to_string()])
            .status
            .code()
            == Some(1)
    );
    assert!(daemon.list().len() == 1);
}

#[test]
fn the_cli_names_what_is_wrong_in_one_line() {
    require_root!();
    let root = TestRoot::new("cli");
    let daemon = TestDaemon::start(&root.path, &[]);
    let out = common::podshaper()
        .args(["list", "--daemon", "unix:///nonexistent/podshaper.sock"])
        .output()
        .expect("run");
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("cannot reach the podshaper daemon at unix:///nonexistent/podshaper.sock"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = common::podshaper()
        .args(["list", "--daemon", "tcp://x"])
        .output()
        .expect("run");
    assert!(
        stderr_of(&out).contains("invalid daemon address \"tcp://x\""),
        "{}",
        stderr_of(&out)
    );
    let app = root.make("app").path().display().to_string();
    let out = daemon.cli(&["attach", "--cgroup", &app, "--egress", "2P"]);
    assert!(stderr_of(&out).contains("\"2P\""), "{}", stderr_of(&out));
    let out = daemon.cli(&["detach", "--cgroup", &app]);
    assert!(
        stderr_of(&out).contains("has no limits attached"),
        "{}",
        stderr_of(&out)
    );
    // the socket is root-only
    let mode = std::fs::metadata(&daemon.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.ok().map(|m| m & 0o777), Some(0o600));
    // the table names the cgroup and the rate people read
    daemon.ok(&[
        "attach",
        "--cgroup",
        &app,
        "--egress",
        "250mbit",
        "--ingress",
        "1G",
    ]);
    let table = daemon.ok(&["list"]);
    assert!(
        table.contains(&app) && table.contains("250Mbit/s") && table.contains("1Gbit/s"),
        "{table}"
    );
}

#[test]
fn status_and_list_print_the_same_document_in_json_and_yaml() {
    require_root!();
    let root = TestRoot::new("yaml");
    let daemon = TestDaemon::start(&root.path, &[]);
    let app = root.make("app").path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &app, "--egress", "10M"]);
    let parse = |args: &[&str]| -> serde_json::Value {
        let out = daemon.ok(args);
        match args.last() {
            Some(&"yaml") => yaml_serde::from_str(&out)
                .unwrap_or_else(|e| panic!("podshaper {args:?} is no YAML ({e}): {out}")),
            _ => serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("podshaper {args:?} is no JSON ({e}): {out}")),
        }
    };
    let json = parse(&["list", "-o", "json"]);
    assert_eq!(parse(&["list", "-o", "yaml"]), json);
    let status = parse(&["status", "--cgroup", &app, "-o", "yaml"]);
    assert_eq!(status, parse(&["status", "--cgroup", &app, "-o", "json"]));
    assert_eq!(status, json, "one cgroup is limited");
    let entry = &status[0];
    assert_eq!(entry["cgroup"], app.as_str(), "{entry}");
    assert_eq!(entry["egress_bps"], 10_000_000, "{entry}");
    assert_eq!(entry["ingress_bps"], serde_json::Value::Null, "{entry}");
    assert_eq!(entry["pod_uid"], serde_json::Value::Null, "{entry}");
    assert!(
        entry["cgroup_id"].as_u64().is_some_and(|id| id > 0),
        "{entry}"
    );
    assert!(entry["counters"]["egress_bytes"].is_u64(), "{entry}");
}

#[test]
fn custom_programs_are_refused_unless_allowed_and_must_be_cgroup_programs() {
    require_root!();
    let root = TestRoot::new("custom");
    let app = root.make("app").path().display().to_string();
    let dir = std::env::temp_dir().join(format!("podshaper-test-custom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let _cleanup = Cleanup(dir.clone());
    let cgroup_obj = common::compile_bpf(
        &dir,
        "pass",
        "SEC(\"cgroup_skb/egress\") int pass(struct __sk_buff *s) { return 1; }",
    );
    let xdp_obj = common::compile_bpf(
        &dir,
        "xdp",
        "SEC(\"xdp\") int pass_xdp(struct xdp_md *x) { return 2; }",
    );

    let daemon = TestDaemon::start(&root.path, &[]);
    let out = daemon.cli(&["attach", "--cgroup", &app, "--program", &cgroup_obj]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("--allow-custom-programs"),
        "{}",
        stderr_of(&out)
    );
    drop(daemon);

    let daemon = TestDaemon::start(&root.path, &["--allow-custom-programs"]);
    let out = daemon.cli(&["attach", "--cgroup", &app, "--program", &xdp_obj]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("only cgroup_skb"),
        "{}",
        stderr_of(&out)
    );
    let custom_pins = || {
        daemon
            .bpffs
            .join("custom")
            .read_dir()
            .map(|d| d.count())
            .unwrap_or(0)
    };
    daemon.ok(&["attach", "--cgroup", &app, "--program", &cgroup_obj]);
    assert_eq!(custom_pins(), 1);
    daemon.ok(&["detach", "--cgroup", &app]);
    assert_eq!(custom_pins(), 0);
}

#[test]
fn a_nul_byte_or_a_missing_target_is_refused_over_the_api() {
    require_root!();
    use podshaper_api::pb;
    let root = TestRoot::new("nul");
    let app = root.make("app").path().display().to_string();
    let daemon = TestDaemon::start(&root.path, &[]);
    let address: podshaper_api::DaemonAddress = daemon.address().parse().expect("address");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut client = podshaper_api::connect(&address, None)
            .await
            .expect("connect");
        let limit = Some(pb::DirectionLimit {
            bits_per_second: 10_000_000,
            burst_bytes: 0,
        });
        let with_nul = pb::AttachRequest {
            target: Some(pb::Target {
                target: Some(pb::target::Target::Cgroup(format!("{app}\0/../../x"))),
            }),
            egress: limit,
            ..Default::default()
        };
        let err = client.attach(with_nul).await.expect_err("NUL accepted");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("NUL"), "{}", err.message());
        let no_target = pb::AttachRequest {
            egress: limit,
            ..Default::default()
        };
        let err = client
            .attach(no_target)
            .await
            .expect_err("no target accepted");
        assert!(err.message().contains("no target"), "{}", err.message());
        let too_fast = pb::AttachRequest {
            target: Some(pb::Target {
                target: Some(pb::target::Target::Cgroup(app.clone())),
            }),
            egress: Some(pb::DirectionLimit {
                bits_per_second: u64::MAX,
                burst_bytes: 1,
            }),
            ..Default::default()
        };
        let err = client
            .attach(too_fast)
            .await
            .expect_err("out of bounds accepted");
        assert!(
            err.message().contains("outside the accepted range"),
            "{}",
            err.message()
        );
    });
    assert!(daemon.list().is_empty());
}

#[test]
fn the_daemon_benchmark_runs_and_leaks_nothing() {
    require_root!();
    // its traffic phase measures a rate, and would disturb another's
    let mut command = common::podshaper();
    command.args([
        "bench",
        "daemon",
        "--cgroups",
        "50",
        "--clients",
        "20",
        "--traffic-cgroups",
        "5",
        "--traffic-seconds",
        "3",
        "--json",
    ]);
    let out = common::output_in_turn(&mut command);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["listed"], 50);
    assert_eq!(r["concurrent_errors"], 0);
    // 5 cgroups at 20M each; the kernel's statistics saw the shaper run.
    let t = &r["traffic"];
    let ratio = t["achieved_bps"].as_f64().unwrap_or(0.0) / 100e6;
    assert!((0.8..1.1).contains(&ratio), "{t}");
    assert!(
        t["programs"]["podshaper_egres"]["runs"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{t}"
    );
    assert!(r["attach_p99_ms"].as_f64().unwrap_or(1e9) < 1000.0, "{r}");
}
