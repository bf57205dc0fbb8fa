//! Limits from pods' manifests and annotations, changed and removed on
//! running pods, in force within a second of their change; a hostNetwork
//! pod limited both ways; an invalid annotation warned about.

use std::time::{Duration, Instant};

use crate::cluster::{
    daemon_entry, daemon_pod, ensure_installed, exclusive, iperf_client, iperf_intervals,
    iperf_server, kubectl_ok, mbit, wait_for, PodSpec, TestNamespace, SYSTEM_NAMESPACE,
};
use crate::common::traffic_turn;
use crate::{cluster, common, mean, EGRESS, INGRESS, PORT};

/// The burst the daemon gave a direction, in bits.
fn burst_bits(entry: &serde_json::Value, direction: &str) -> f64 {
    entry[format!("{direction}_burst_bytes")]
        .as_f64()
        .unwrap_or_else(|| panic!("no {direction} burst in {entry}"))
        * 8.0
}

/// A pod created with its limits in its manifest, its sender started as the
/// container's command: the daemon attaches when the kubelet makes the
/// pod's cgroup, so even the first second holds (at most the limit and the
/// burst). The receiving pod runs as another user: the daemon enters its
/// network namespace anyway (CAP_SYS_PTRACE) and puts its queue there.
#[test]
fn limits_in_a_pods_manifest_hold_from_its_first_packet() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("first");
    let _traffic = traffic_turn();

    // egress: 10M on the sender
    ns.create(&PodSpec::new("rx", &iperf_server(PORT)));
    ns.wait_running("rx");
    let rx = ns.ip("rx");
    ns.create(&PodSpec::new("tx", &iperf_client(&rx, PORT, 6)).annotate(EGRESS, "10M"));
    let uid = ns.uid("tx");
    let mut entry = None;
    wait_for("the sender limited", Duration::from_secs(60), || {
        entry = daemon_entry(&uid);
        entry.is_some()
    });
    let entry = entry.unwrap_or_default();
    let report = ns.wait_succeeded("rx", Duration::from_secs(120));
    let seconds = iperf_intervals(&report);
    let burst = burst_bits(&entry, "egress");
    // the daemon held the limits and attached them as the cgroup appeared
    let log = kubectl_ok(&[
        "-n",
        SYSTEM_NAMESPACE,
        "logs",
        &daemon_pod(),
        "-c",
        "daemon",
    ]);
    assert!(
        log.lines()
            .any(|l| l.contains(&uid) && l.contains("from the pod cgroup's creation")),
        "the sender's limits were not attached as its cgroup appeared:\n{log}"
    );
    eprintln!(
        "egress 10M at creation, Mbit/s by second: {:?} (burst {} bytes)",
        seconds.iter().map(|s| mbit(*s)).collect::<Vec<_>>(),
        burst / 8.0
    );
    assert!(
        seconds[0] <= 10e6 + burst,
        "first second {} Mbit/s, above the limit and the burst ({} Mbit)",
        mbit(seconds[0]),
        mbit(10e6 + burst)
    );
    let rest = &seconds[1..];
    assert!(rest.iter().all(|s| *s <= 10e6 * 1.05), "{seconds:?}");
    common::assert_ratio(
        "egress 10M after the first second",
        mean(rest),
        10e6,
        0.95,
        1.03,
    );
    assert_eq!(entry["pod_name"], "tx");
    assert_eq!(entry["pod_namespace"], ns.name.as_str());
    wait_for(
        "BandwidthLimited on the sender",
        Duration::from_secs(30),
        || {
            ns.events("tx")
                .iter()
                .any(|(t, r, _)| t == "Normal" && r == "BandwidthLimited")
        },
    );

    // ingress: 20M on the receiver, which runs as user 1000
    ns.create(
        &PodSpec::new("rx2", &iperf_server(PORT))
            .annotate(INGRESS, "20M")
            .run_as(1000),
    );
    ns.wait_running("rx2");
    let rx2 = ns.ip("rx2");
    let uid2 = ns.uid("rx2");
    wait_for("the receiver's queue", Duration::from_secs(30), || {
        daemon_entry(&uid2).is_some_and(|e| e["ingress_mode"] == "queue")
    });
    let entry = daemon_entry(&uid2).unwrap_or_default();
    assert_eq!(entry["problems"], serde_json::json!([]), "{entry}");
    ns.create(&PodSpec::new("tx2", &iperf_client(&rx2, PORT, 6)));
    let seconds = iperf_intervals(&ns.wait_succeeded("rx2", Duration::from_secs(120)));
    eprintln!(
        "ingress 20M at creation, Mbit/s by second: {:?}",
        seconds.iter().map(|s| mbit(*s)).collect::<Vec<_>>()
    );
    assert!(
        seconds[0] <= 20e6 + burst_bits(&entry, "ingress"),
        "{seconds:?}"
    );
    common::assert_ratio("ingress 20M", mean(&seconds[1..]), 20e6, 0.95, 1.03);
}

/// An annotation added, changed and removed on a running pod takes effect
/// within the second, without restarting it.
#[test]
fn an_annotation_changed_and_removed_on_a_running_pod_takes_effect() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("live");
    let _traffic = traffic_turn();
    ns.create(&PodSpec::new("rx", &iperf_server(PORT)));
    ns.wait_running("rx");
    let rx = ns.ip("rx");
    ns.create(&PodSpec::new("tx", &iperf_client(&rx, PORT, 15)).annotate(EGRESS, "40M"));
    ns.wait_running("tx");
    let uid = ns.uid("tx");
    wait_for("the sender limited", Duration::from_secs(30), || {
        daemon_entry(&uid).is_some()
    });
    let started = Instant::now();
    let at = |s: u64| {
        let wait = Duration::from_secs(s).saturating_sub(started.elapsed());
        std::thread::sleep(wait);
    };
    at(5);
    ns.annotate("tx", EGRESS, Some("10M"));
    at(10);
    ns.annotate("tx", EGRESS, None);
    let seconds = iperf_intervals(&ns.wait_succeeded("rx", Duration::from_secs(120)));
    eprintln!(
        "40M, then 10M, then none, Mbit/s by second: {:?}",
        seconds.iter().map(|s| mbit(*s)).collect::<Vec<_>>()
    );
    assert!(seconds.len() >= 14, "{seconds:?}");
    // the client connects a moment after the pod runs: the windows below
    // leave a second either side of each change
    common::assert_ratio("40M", mean(&seconds[1..4]), 40e6, 0.93, 1.05);
    common::assert_ratio("changed to 10M", mean(&seconds[7..9]), 10e6, 0.93, 1.05);
    let lifted = mean(&seconds[12..14]);
    assert!(lifted > 200e6, "removed: {} Mbit/s", mbit(lifted));
    wait_for("the limit removed", Duration::from_secs(30), || {
        daemon_entry(&uid).is_none()
    });
}

/// An annotation added to a pod that is sending right now, as an operator
/// does to a misbehaving pod: its open connection is held to the limit from
/// the second second on, as a new one would be.
#[test]
fn an_annotation_added_to_a_sending_pod_limits_its_open_connection() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("opened");
    let _traffic = traffic_turn();
    ns.create(&PodSpec::new("rx", &iperf_server(PORT)));
    ns.wait_running("rx");
    let rx = ns.ip("rx");
    ns.create(&PodSpec::new("tx", &iperf_client(&rx, PORT, 12)));
    ns.wait_running("tx");
    // sending, unlimited, for a few seconds
    std::thread::sleep(Duration::from_secs(4));
    ns.annotate("tx", EGRESS, Some("30M"));
    let seconds = iperf_intervals(&ns.wait_succeeded("rx", Duration::from_secs(120)));
    eprintln!(
        "30M added to a sending pod, Mbit/s by second: {:?}",
        seconds.iter().map(|s| mbit(*s)).collect::<Vec<_>>()
    );
    // the pod runs before its client connects, and the annotation takes
    // tens of milliseconds: the limit is in force by second 6 at the latest
    let held = &seconds[7..];
    for (i, s) in held.iter().enumerate() {
        assert!(
            (0.95..=1.05).contains(&(s / 30e6)),
            "second {}: {} Mbit/s ({seconds:?})",
            i + 7,
            mbit(*s)
        );
    }
    common::assert_ratio("30M on an open connection", mean(held), 30e6, 0.97, 1.02);
}

/// The time from an annotation's change on the API server to the new limit
/// in force on the node, over 100 changes (docs/benchmarks-control-plane.md).
#[test]
fn an_annotation_change_is_in_force_on_the_node_within_a_second() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("latency");
    ns.create(&PodSpec::new("idle", "exec sleep 3600").annotate(EGRESS, "10M"));
    ns.wait_running("idle");
    let uid = ns.uid("idle");
    wait_for("the pod limited", Duration::from_secs(30), || {
        daemon_entry(&uid).is_some()
    });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(cluster::KUBECONFIG).expect("kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kubeconfig");
        kube::Client::try_from(config).expect("client")
    });
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, &ns.name);
    let mut daemon = runtime.block_on(async {
        podshaper_api::connect(
            &podshaper_api::DaemonAddress::Unix(cluster::DAEMON_SOCKET.into()),
            None,
        )
        .await
        .expect("the daemon's socket")
    });
    let target = podshaper_api::pb::Target {
        target: Some(podshaper_api::pb::target::Target::PodUid(uid.clone())),
    };
    let mut took = Vec::new();
    for i in 0..100u64 {
        let bits = 11_000_000 + i * 100_000;
        let patch = serde_json::json!({"metadata": {"annotations": {EGRESS: bits.to_string()}}});
        let start = Instant::now();
        runtime
            .block_on(pods.patch(
                "idle",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            ))
            .expect("patch");
        loop {
            let status = runtime
                .block_on(daemon.status(podshaper_api::pb::StatusRequest {
                    target: Some(target.clone()),
                }))
                .expect("status")
                .into_inner();
            if status.egress.map(|e| e.bits_per_second) == Some(bits) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "change {i} not in force"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        took.push(start.elapsed());
    }
    took.sort();
    let p50 = took[49];
    let p99 = took[98];
    eprintln!(
        "annotation change to limit in force over 100 changes: p50 {p50:?}, p99 {p99:?}, max {:?}",
        took[99]
    );
    assert!(p50 < Duration::from_secs(1), "p50 {p50:?}");
    assert!(p99 < Duration::from_secs(3), "p99 {p99:?}");
}

/// A hostNetwork pod is limited both ways, and the other pods' traffic on
/// the node is not: its cgroup, not an interface, is what is limited.
#[test]
fn a_host_network_pod_is_limited_both_ways_and_other_pods_are_not() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("hostnet");
    let _traffic = traffic_turn();
    let host_port = common::unique_port();
    ns.create(&PodSpec::new("rx", &iperf_server(PORT)));
    ns.create(&PodSpec::new("other-rx", &iperf_server(PORT)));
    ns.wait_running("rx");
    ns.wait_running("other-rx");
    let rx = ns.ip("rx");
    let other_rx = ns.ip("other-rx");
    // the hostNetwork pod sends first, then receives on a port of the node
    let script = format!(
        "{}; {}",
        iperf_client(&rx, PORT, 6),
        iperf_server(host_port)
    );
    ns.create(
        &PodSpec::new("host", &script)
            .host_network()
            .annotate(EGRESS, "20M")
            .annotate(INGRESS, "30M"),
    );
    // unlimited pods talking at the same time
    ns.create(&PodSpec::new("other-tx", &iperf_client(&other_rx, PORT, 6)));
    let egress = iperf_intervals(&ns.wait_succeeded("rx", Duration::from_secs(120)));
    let others = iperf_intervals(&ns.wait_succeeded("other-rx", Duration::from_secs(120)));
    let node_ip = ns.ip("host");
    let uid = ns.uid("host");
    let entry = daemon_entry(&uid).expect("the hostNetwork pod is limited");
    assert_eq!(entry["ingress_mode"], "policer", "{entry}");
    ns.create(&PodSpec::new("tx", &iperf_client(&node_ip, host_port, 6)));
    let ingress = iperf_intervals(&ns.wait_succeeded("host", Duration::from_secs(120)));
    let show = |s: &[f64]| s.iter().map(|s| mbit(*s)).collect::<Vec<_>>();
    eprintln!(
        "hostNetwork pod: egress 20M {:?}; ingress 30M {:?}; unlimited pods meanwhile {:?}",
        show(&egress),
        show(&ingress),
        show(&others)
    );
    common::assert_ratio(
        "hostNetwork egress 20M",
        mean(&egress[1..]),
        20e6,
        0.95,
        1.03,
    );
    common::assert_ratio(
        "hostNetwork ingress 30M",
        mean(&ingress[1..]),
        30e6,
        0.90,
        1.03,
    );
    assert!(
        mean(&others) > 300e6,
        "other pods' traffic limited too: {} Mbit/s",
        mbit(mean(&others))
    );
}

/// An annotation that cannot be used is reported on the pod with a Warning
/// Event. Changed on a running pod, it leaves the limit in force as it was.
/// On a new pod it limits nothing, and the pod does not start at all:
/// containerd's CRI reads the bandwidth annotations itself (for the CNI
/// bandwidth plugin) with the kubelet's bounds, and refuses to create, and
/// then to stop, a sandbox whose annotation it cannot read; such a pod is
/// only deleted with --force (docs/install.md).
#[test]
fn an_invalid_annotation_gets_a_warning_event() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("invalid");
    let warned = |pod: &str, value: &str| {
        ns.events(pod)
            .iter()
            .any(|(t, r, m)| t == "Warning" && r == "InvalidBandwidth" && m.contains(value))
    };
    ns.create(&PodSpec::new("running", "exec sleep 3600").annotate(EGRESS, "20M"));
    ns.wait_running("running");
    let uid = ns.uid("running");
    wait_for("the pod limited", Duration::from_secs(30), || {
        daemon_entry(&uid).is_some()
    });
    ns.annotate("running", EGRESS, Some("500"));
    wait_for(
        "InvalidBandwidth on the running pod",
        Duration::from_secs(60),
        || warned("running", "500"),
    );
    let entry = daemon_entry(&uid).unwrap_or_default();
    assert_eq!(
        entry["egress_bps"], 20_000_000,
        "the limit in force went: {entry}"
    );

    ns.create(&PodSpec::new("new", "exec sleep 3600").annotate(EGRESS, "ten megabits"));
    wait_for(
        "InvalidBandwidth on the new pod",
        Duration::from_secs(60),
        || warned("new", "ten megabits"),
    );
    assert_ne!(ns.phase("new"), "Running");
    assert!(daemon_entry(&ns.uid("new")).is_none());
    ns.kubectl_ok(&["delete", "pod", "new", "--force", "--grace-period=0"]);
}
