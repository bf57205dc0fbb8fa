//! What the controller tells operators: Warning Events when a pod's cgroup
//! does not appear and when the daemon refuses its limits, and its metrics
//! and health at --metrics-addr.

use std::thread;
use std::time::{Duration, Instant};

use super::{unique_ns, wait_for, SimNode, CONVERGE, EGRESS};
use crate::common::kube::ApiServer;
use crate::common::{http_get, unique_port};

/// How many events with `reason` the pod has.
fn count(api: &ApiServer, ns: &str, pod: &str, reason: &str) -> usize {
    api.events(ns, pod)
        .iter()
        .filter(|(t, r, _)| t == "Warning" && r == reason)
        .count()
}

#[test]
fn a_pod_whose_cgroup_does_not_appear_gets_a_warning_naming_the_path() {
    require_root!();
    let api = ApiServer::start();
    let ns = unique_ns("nocgroup");
    api.create_namespace(&ns);
    let n1 = SimNode::start_with(&api, "node-1", &["--cgroup-warning", "2"]);
    let uid = api.create_pod(&ns, "p", "node-1", &[(EGRESS, "10M")]);
    let created = Instant::now();
    // the daemon holds the limits; after 2 s the pod is warned, with both
    // drivers' paths for its QoS class (BestEffort: no resources)
    let cgroupfs = format!("kubepods/besteffort/pod{uid}");
    let systemd = SimNode::pod_cgroup_path(&uid);
    wait_for("a CgroupNotFound Warning", CONVERGE, Some(&n1), || {
        api.events(&ns, "p").iter().any(|(t, r, n)| {
            t == "Warning" && r == "CgroupNotFound" && n.contains(&cgroupfs) && n.contains(&systemd)
        })
    });
    let warned_after = created.elapsed();
    eprintln!("pod created -> CgroupNotFound in {warned_after:?}");
    assert!(warned_after >= Duration::from_secs(2), "{warned_after:?}");
    // once: the node is retried every 500 ms meanwhile
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&api, &ns, "p", "CgroupNotFound"),
        1,
        "{:?}",
        api.events(&ns, "p")
    );
    // the cgroup appears: the held limits come into force
    n1.make_pod_cgroup(&uid);
    wait_for(
        "p limited once its cgroup exists",
        CONVERGE,
        Some(&n1),
        || n1.limits(&uid) == Some((Some(10_000_000), None)),
    );
    wait_for(
        "BandwidthLimited after the wait",
        CONVERGE,
        Some(&n1),
        || {
            api.events(&ns, "p")
                .iter()
                .any(|(t, r, _)| t == "Normal" && r == "BandwidthLimited")
        },
    );
    assert_eq!(count(&api, &ns, "p", "CgroupNotFound"), 1);
}

#[test]
fn limits_the_daemon_refuses_get_a_warning_naming_why() {
    require_root!();
    let api = ApiServer::start();
    let ns = unique_ns("refused");
    api.create_namespace(&ns);
    let n1 = SimNode::start(&api, "node-1");
    let uid = api.create_pod(&ns, "p", "node-1", &[]);
    n1.make_pod_cgroup(&uid);
    // An operator limited one of the pod's containers by hand: a limit on
    // the pod's cgroup would count the same packets twice, and the daemon
    // refuses it (the controller cannot know that beforehand).
    let container = n1
        .root
        .make(&format!("{}/main", SimNode::pod_cgroup_path(&uid)));
    let container_path = container.path().display().to_string();
    n1.daemon
        .ok(&["attach", "--cgroup", &container_path, "--egress", "1M"]);
    api.annotate(&ns, "p", &[(EGRESS, Some("10M"))]);
    wait_for("a LimitRefused Warning", CONVERGE, Some(&n1), || {
        api.events(&ns, "p").iter().any(|(t, r, n)| {
            t == "Warning"
                && r == "LimitRefused"
                && n.contains("egress 10M")
                && n.contains("nested with")
                && n.contains(&container_path)
        })
    });
    // once per cause, though the node is retried every 500 ms
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&api, &ns, "p", "LimitRefused"),
        1,
        "{:?}",
        api.events(&ns, "p")
    );
    // the hand-made limit goes: the pod's own comes into force
    n1.daemon.ok(&["detach", "--cgroup", &container_path]);
    wait_for("p limited", CONVERGE, Some(&n1), || {
        n1.daemon.list().iter().any(|c| {
            c["pod_uid"].as_str() == Some(uid.as_str())
                && c["cgroup"].as_str().is_some_and(|p| !p.ends_with("/main"))
                && c["egress_bps"].as_u64() == Some(10_000_000)
        })
    });
}

/// The value of the sample `series` (name and labels as exposed).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_passes_changes_reachability_and_latency_and_readyz_waits_for_the_daemon() {
    require_root!();
    let api = ApiServer::start();
    let ns = unique_ns("metrics");
    api.create_namespace(&ns);
    let addr = format!("127.0.0.1:{}", unique_port());
    let mut n1 = SimNode::start_with(&api, "node-1", &["--metrics-addr", &addr]);
    let daemon_label = format!(
        "podshaper_controller_daemon_reachable{{node=\"node-1\",daemon=\"{}\"}}",
        n1.daemon.address()
    );
    wait_for("/readyz ready", CONVERGE, Some(&n1), || {
        std::net::TcpStream::connect(&addr).is_ok() && http_get(&addr, "/readyz").0 == 200
    });

    // A controller that starts while its daemon is down is live, not ready.
    n1.kill9_controller();
    n1.daemon.kill9();
    n1.start_controller();
    wait_for("/healthz answers", CONVERGE, Some(&n1), || {
        std::net::TcpStream::connect(&addr).is_ok() && http_get(&addr, "/healthz").0 == 200
    });
    wait_for("the daemon seen unreachable", CONVERGE, Some(&n1), || {
        sample(&http_get(&addr, "/metrics").1, &daemon_label) == Some(0.0)
    });
    let (status, answer) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "{answer}");
    // back, serving its own metrics through the same server
    let daemon_addr = format!("127.0.0.1:{}", unique_port());
    n1.daemon.restart_with(&["--metrics-addr", &daemon_addr]);
    wait_for(
        "/readyz ready once the daemon answers",
        CONVERGE,
        Some(&n1),
        || http_get(&addr, "/readyz").0 == 200,
    );

    // A pod limited, then its limit changed.
    let uid = api.create_pod(&ns, "p", "node-1", &[(EGRESS, "10M")]);
    n1.make_pod_cgroup(&uid);
    wait_for("p limited", CONVERGE, Some(&n1), || {
        n1.limits(&uid) == Some((Some(10_000_000), None))
    });
    api.annotate(&ns, "p", &[(EGRESS, Some("20M"))]);
    wait_for("p changed", CONVERGE, Some(&n1), || {
        n1.limits(&uid) == Some((Some(20_000_000), None))
    });
    let body = http_get(&addr, "/metrics").1;
    eprintln!("{body}");
    let at_least = |series: &str, min: f64| {
        let v = sample(&body, series).unwrap_or_else(|| panic!("{series} missing:\n{body}"));
        assert!(v >= min, "{series} = {v}, expected at least {min}");
        v
    };
    at_least("podshaper_controller_reconcile_passes_total", 1.0);
    at_least(
        "podshaper_controller_changes_applied_total{kind=\"attach\"}",
        1.0,
    );
    at_least(
        "podshaper_controller_changes_applied_total{kind=\"update\"}",
        1.0,
    );
    at_least(
        "podshaper_controller_errors_total{kind=\"daemon_unreachable\"}",
        1.0,
    );
    assert_eq!(sample(&body, &daemon_label), Some(1.0), "{body}");
    let observed = at_least(
        "podshaper_controller_pod_change_to_limit_seconds_count",
        1.0,
    );
    let sum = at_least("podshaper_controller_pod_change_to_limit_seconds_sum", 0.0);
    eprintln!(
        "pod change -> limit in force: {observed} observations, mean {:.1} ms",
        sum / observed * 1e3
    );
    assert!(sum / observed < 3.0, "mean {} s", sum / observed);
    assert!(body.contains("# TYPE podshaper_controller_pod_change_to_limit_seconds histogram"));
    // the daemon's, beside it
    let (status, daemon_body) = http_get(&daemon_addr, "/metrics");
    assert_eq!(status, 200, "{daemon_body}");
    assert!(
        daemon_body.contains(&format!(
            "podshaper_limit_bits_per_second{{namespace=\"{ns}\",pod=\"p\",direction=\"egress\"}} 20000000"
        )),
        "{daemon_body}"
    );
    assert_eq!(http_get(&daemon_addr, "/readyz").0, 200);
    assert_eq!(http_get(&daemon_addr, "/healthz").0, 200);
}
