//! The controller, its daemons and the API server restarted or killed, in
//! turn and in the middle of a stream of changes: every pod converges to
//! its last accepted annotation.

use std::thread;
use std::time::Duration;

use super::{unique_ns, wait_for, SimNode, CONVERGE, EGRESS, INGRESS};
use crate::common::kube::ApiServer;

#[test]
fn converges_after_controller_daemon_and_apiserver_restarts() {
    require_root!();
    let mut api = ApiServer::start();
    let ns = unique_ns("restarts");
    api.create_namespace(&ns);
    let mut n1 = SimNode::start(&api, "node-1");
    let a = api.create_pod(&ns, "a", "node-1", &[(EGRESS, "10M")]);
    let b = api.create_pod(&ns, "b", "node-1", &[(EGRESS, "10M")]);
    n1.make_pod_cgroup(&a);
    n1.make_pod_cgroup(&b);
    wait_for("a and b limited", CONVERGE, Some(&n1), || {
        n1.limits(&a).is_some() && n1.limits(&b).is_some()
    });

    // 1. The controller is killed; meanwhile a changes, b goes, c comes, and
    //    someone limits a pod cgroup that has no Pod (stale).
    n1.kill9_controller();
    api.annotate(&ns, "a", &[(EGRESS, Some("30M"))]);
    api.delete_pod(&ns, "b");
    let c = api.create_pod(&ns, "c", "node-1", &[(INGRESS, "7M")]);
    n1.make_pod_cgroup(&c);
    let stale = "0f0f0f0f-1111-2222-3333-444444444444";
    n1.make_pod_cgroup(stale);
    n1.daemon
        .ok(&["attach", "--pod-uid", stale, "--egress", "1M"]);
    // Limits stay in force while the controller is down.
    thread::sleep(Duration::from_secs(1));
    assert_eq!(n1.limits(&a), Some((Some(10_000_000), None)));
    n1.start_controller();
    wait_for(
        "converged after the controller restart",
        CONVERGE,
        Some(&n1),
        || {
            n1.limits(&a) == Some((Some(30_000_000), None))
                && n1.limits(&b).is_none()
                && n1.limits(&c) == Some((None, Some(7_000_000)))
                && n1.limits(stale).is_none()
        },
    );

    // 2. The daemon is killed; a change made while it is down lands when it is back.
    n1.daemon.kill9();
    api.annotate(&ns, "a", &[(EGRESS, Some("40M"))]);
    thread::sleep(Duration::from_secs(2));
    n1.daemon.restart();
    wait_for(
        "converged after the daemon restart",
        CONVERGE,
        Some(&n1),
        || {
            n1.limits(&a) == Some((Some(40_000_000), None))
                && n1.limits(&c) == Some((None, Some(7_000_000)))
        },
    );

    // 3. The API server is killed under the controller (the watch is lost);
    //    limits stay; after it is back, changes flow again.
    api.kill_apiserver();
    thread::sleep(Duration::from_secs(3));
    assert_eq!(n1.limits(&a), Some((Some(40_000_000), None)));
    assert_eq!(n1.limits(&c), Some((None, Some(7_000_000))));
    api.start_apiserver();
    api.annotate(&ns, "a", &[(EGRESS, Some("15M"))]);
    api.delete_pod(&ns, "c");
    wait_for(
        "converged after the API server restart",
        Duration::from_secs(60),
        Some(&n1),
        || n1.limits(&a) == Some((Some(15_000_000), None)) && n1.limits(&c).is_none(),
    );
    let log = n1.controller_log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Kills of the controller and of the API server in the middle of a stream
/// of annotation changes: afterwards every pod has the limit of its last
/// accepted annotation.
#[test]
fn converges_after_kills_during_a_stream_of_changes() {
    require_root!();
    let mut api = ApiServer::start();
    let ns = unique_ns("stream");
    api.create_namespace(&ns);
    let mut n1 = SimNode::start(&api, "node-1");
    let pods: Vec<(String, String)> = (0..8)
        .map(|i| {
            let name = format!("p{i}");
            let uid = api.create_pod(&ns, &name, "node-1", &[(EGRESS, "10M")]);
            n1.make_pod_cgroup(&uid);
            (name, uid)
        })
        .collect();
    // The last value the API server accepted, per pod.
    let mut last: Vec<u64> = vec![10_000_000; pods.len()];
    let mut x: u64 = 12345;
    let mut change = |api: &ApiServer, last: &mut Vec<u64>, rounds: usize| {
        for _ in 0..rounds {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (x >> 33) as usize % pods.len();
            let rate = 1_000_000 * (1 + (x >> 40) % 500);
            if api
                .try_annotate(&ns, &pods[i].0, &[(EGRESS, Some(&rate.to_string()))])
                .is_ok()
            {
                last[i] = rate;
            }
            thread::sleep(Duration::from_millis(10));
        }
    };
    change(&api, &mut last, 50);
    n1.kill9_controller();
    change(&api, &mut last, 50);
    n1.start_controller();
    change(&api, &mut last, 20);
    api.kill_apiserver();
    // changes refused while it is away
    change(&api, &mut last, 5);
    thread::sleep(Duration::from_secs(2));
    api.start_apiserver();
    change(&api, &mut last, 50);
    n1.kill9_controller();
    api.kill_apiserver();
    n1.start_controller();
    thread::sleep(Duration::from_secs(2));
    api.start_apiserver();
    change(&api, &mut last, 30);
    wait_for(
        "every pod at its last annotation",
        Duration::from_secs(60),
        Some(&n1),
        || {
            pods.iter()
                .zip(&last)
                .all(|((_, uid), rate)| n1.limits(uid) == Some((Some(*rate), None)))
        },
    );
    assert_eq!(n1.daemon.list().len(), pods.len());
}
