//! A BandwidthPolicy on the real node: the CRD from deploy/, the DaemonSet's
//! controller reading it, the node's daemon enforcing it on a pod that has
//! no bandwidth annotation, live through a change of the policy, a pod
//! annotation that overrides it, and the policy's deletion.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{
    apply, daemon_entry, ensure_installed, exclusive, iperf_client, iperf_intervals, iperf_server,
    mbit, wait_for, PodSpec, TestNamespace,
};
use crate::common::traffic_turn;
use crate::{common, mean, EGRESS, PORT};

const POLICY: &str = "batch";

/// Creates or replaces the test's policy: pods labelled `tier: batch`,
/// `egress` as its egress ceiling.
fn apply_policy(ns: &TestNamespace, egress: &str) {
    apply(&format!(
        "apiVersion: podshaper.io/v1alpha1\nkind: BandwidthPolicy\nmetadata:\n  name: {POLICY}\n  \
         namespace: {}\nspec:\n  podSelector:\n    matchLabels: {{tier: batch}}\n  egressBandwidth: {egress}\n",
        ns.name
    ));
}

/// The policy's `status.nodes` entry for `node`, if it has one.
fn status_entry(ns: &TestNamespace, node: &str) -> Option<Value> {
    let out = ns.kubectl_ok(&["get", "bandwidthpolicy", POLICY, "-o", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    doc["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == node)
        .cloned()
}

/// Waits until the daemon enforces `bits` per second of egress on the pod
/// (None: no limit at all); the time since `since`.
fn wait_egress(uid: &str, bits: Option<u64>, what: &str, since: Instant) -> Duration {
    wait_for(what, Duration::from_secs(30), || match bits {
        Some(b) => daemon_entry(uid).is_some_and(|e| e["egress_bps"] == b),
        None => daemon_entry(uid).is_none(),
    });
    since.elapsed()
}

/// A sender labelled for a policy of 40M: limited by the daemon from the
/// policy alone, listed in the policy's status, then 10M when the policy
/// changes, 20M while the pod's own annotation says so, 10M again when the
/// annotation goes, unlimited once the policy is deleted. Its receiver,
/// unlabelled in the same namespace, is never limited.
#[test]
fn a_bandwidth_policy_limits_a_pod_live_and_its_annotation_overrides_it() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("policy");
    apply_policy(&ns, "40M");
    ns.create(&PodSpec::new("rx", &iperf_server(PORT)));
    ns.wait_running("rx");
    let rx = ns.ip("rx");
    // the sender waits for /tmp/go, so that the checks below take no
    // seconds of the measured run
    let script = format!(
        "until [ -e /tmp/go ]; do sleep 0.1; done; {}",
        iperf_client(&rx, PORT, 25)
    );
    ns.create(&PodSpec::new("tx", &script).label("tier", "batch"));
    ns.wait_running("tx");
    let uid = ns.uid("tx");
    let node = ns.kubectl_ok(&["get", "pod", "tx", "-o", "jsonpath={.spec.nodeName}"]);

    wait_egress(
        &uid,
        Some(40_000_000),
        "the policy's 40M in the daemon",
        Instant::now(),
    );
    let entry = daemon_entry(&uid).unwrap_or_default();
    assert_eq!(entry["ingress_bps"], Value::Null, "{entry}");
    wait_for(
        "BandwidthLimited naming the policy",
        Duration::from_secs(30),
        || {
            ns.events("tx").iter().any(|(t, r, m)| {
                t == "Normal"
                    && r == "BandwidthLimited"
                    && m.contains(&format!("from BandwidthPolicy {POLICY}"))
            })
        },
    );
    let mut status = None;
    wait_for(
        "the policy's status lists the sender on its node",
        Duration::from_secs(30),
        || {
            status = status_entry(&ns, &node);
            status
                .as_ref()
                .is_some_and(|s| s["pods"] == serde_json::json!(["tx"]))
        },
    );
    let status = status.unwrap_or_default();
    eprintln!("status.nodes entry: {status}");
    assert_eq!(status["conflicts"], serde_json::json!([]), "{status}");
    assert_eq!(status["errors"], serde_json::json!([]), "{status}");
    assert!(
        daemon_entry(&ns.uid("rx")).is_none(),
        "the unlabelled receiver is limited"
    );

    let _traffic = traffic_turn();
    ns.kubectl_ok(&["exec", "tx", "--", "touch", "/tmp/go"]);
    let started = Instant::now();
    let at = |s: u64| {
        let wait = Duration::from_secs(s).saturating_sub(started.elapsed());
        std::thread::sleep(wait);
    };
    // each change, from the kubectl command to the new limit in the daemon
    // (`podshaper list` polled)
    let mut took = Vec::new();
    at(5);
    let t = Instant::now();
    apply_policy(&ns, "10M");
    took.push(wait_egress(
        &uid,
        Some(10_000_000),
        "the policy changed to 10M",
        t,
    ));
    at(10);
    let t = Instant::now();
    ns.annotate("tx", EGRESS, Some("20M"));
    took.push(wait_egress(
        &uid,
        Some(20_000_000),
        "the annotation's 20M over the policy",
        t,
    ));
    at(15);
    let t = Instant::now();
    ns.annotate("tx", EGRESS, None);
    took.push(wait_egress(
        &uid,
        Some(10_000_000),
        "the policy's 10M again",
        t,
    ));
    at(20);
    let t = Instant::now();
    ns.kubectl_ok(&["delete", "bandwidthpolicy", POLICY]);
    took.push(wait_egress(&uid, None, "the policy deleted, no limit", t));
    eprintln!("each change to the daemon's new limit, kubectl included: {took:?}");
    let seconds = iperf_intervals(&ns.wait_succeeded("rx", Duration::from_secs(120)));
    eprintln!(
        "policy 40M, policy 10M, annotation 20M, policy 10M, policy deleted; Mbit/s by second: {:?}",
        seconds.iter().map(|s| mbit(*s)).collect::<Vec<_>>()
    );
    assert!(seconds.len() >= 24, "{seconds:?}");
    // a change every 5 s from the sender's start; the windows leave a
    // second after each change and end before the next
    common::assert_ratio("policy 40M", mean(&seconds[1..4]), 40e6, 0.93, 1.05);
    common::assert_ratio("policy 10M", mean(&seconds[6..9]), 10e6, 0.93, 1.05);
    common::assert_ratio(
        "annotation 20M over the policy",
        mean(&seconds[11..14]),
        20e6,
        0.93,
        1.05,
    );
    common::assert_ratio(
        "annotation removed, policy 10M",
        mean(&seconds[16..19]),
        10e6,
        0.93,
        1.05,
    );
    let lifted = mean(&seconds[21..24]);
    assert!(lifted > 200e6, "policy deleted: {} Mbit/s", mbit(lifted));
}
