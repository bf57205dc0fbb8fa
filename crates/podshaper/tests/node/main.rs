//! podshaper on a real node: the kubelet, containerd, runc and the CNI
//! bridge that `scripts/kube-node.sh up` runs on this machine, podshaper
//! installed from deploy/ with `kubectl apply -k`, pods made from manifests
//! with kubectl, traffic between pods over the bridge measured by iperf3 at
//! the receiver, one second at a time.
//!
//! Built only with `--features node-tests` (scripts/test.sh starts the node
//! and runs them after the other tests).

mod cluster;
#[path = "../common/mod.rs"]
mod common;

use std::fs;
use std::time::{Duration, Instant};

use cluster::{
    daemon_entry, daemon_list, daemon_pod, ensure_installed, exclusive, iperf_client,
    iperf_intervals, iperf_server, kubectl, kubectl_ok, mbit, podshaper, repo_path, wait_for,
    PodSpec, TestNamespace, PINS, SYSTEM_NAMESPACE,
};
use common::traffic_turn;

const EGRESS: &str = "kubernetes.io/egress-bandwidth";
const INGRESS: &str = "kubernetes.io/ingress-bandwidth";
const PORT: u16 = 5201;

/// The mean of a run's seconds.
fn mean(seconds: &[f64]) -> f64 {
    seconds.iter().sum::<f64>() / seconds.len().max(1) as f64
}

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
/// in force on the node, over 100 changes (docs/benchmarks.md).
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

/// A deleted pod's pins go with it.
#[test]
fn a_deleted_pods_pins_are_gone() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("delete");
    ns.create(
        &PodSpec::new("idle", "exec sleep 3600")
            .annotate(EGRESS, "10M")
            .annotate(INGRESS, "10M"),
    );
    ns.wait_running("idle");
    let uid = ns.uid("idle");
    let mut id = 0;
    wait_for("the pod limited", Duration::from_secs(30), || {
        id = daemon_entry(&uid)
            .and_then(|e| e["cgroup_id"].as_u64())
            .unwrap_or(0);
        id != 0
    });
    let links = std::path::Path::new(PINS)
        .join("links")
        .join(id.to_string());
    assert!(links.exists(), "{} not pinned", links.display());
    ns.delete_pod("idle");
    wait_for("the pod's pins removed", Duration::from_secs(60), || {
        !links.exists() && daemon_entry(&uid).is_none()
    });
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

/// The DaemonSet rolled out to a new image while a limited pod sends: the
/// limit holds throughout (it lives in the pins while no daemon runs).
#[test]
fn a_daemonset_rollout_keeps_the_limit_of_a_sending_pod() {
    let _turn = exclusive();
    ensure_installed();
    // the same build under another tag and image ID, as a new release is
    let built = std::process::Command::new("bash")
        .arg(repo_path("scripts/kube-node.sh"))
        .args(["image", "0.1.0-next"])
        .output()
        .expect("scripts/kube-node.sh image");
    assert!(
        built.status.success(),
        "cannot build the next image: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ns = TestNamespace::new("rollout");
    let _traffic = traffic_turn();
    ns.create(&PodSpec::new("rx", &iperf_server(PORT)));
    ns.wait_running("rx");
    let rx = ns.ip("rx");
    ns.create(&PodSpec::new("tx", &iperf_client(&rx, PORT, 30)).annotate(EGRESS, "20M"));
    ns.wait_running("tx");
    let sending = Instant::now();
    let before = daemon_pod();
    std::thread::sleep(Duration::from_secs(5));
    let set_image = |image: &str| {
        kubectl_ok(&[
            "-n",
            SYSTEM_NAMESPACE,
            "set",
            "image",
            "daemonset/podshaper",
            &format!("mount-bpffs={image}"),
            &format!("daemon={image}"),
            &format!("controller={image}"),
        ]);
        kubectl_ok(&[
            "-n",
            SYSTEM_NAMESPACE,
            "rollout",
            "status",
            "daemonset/podshaper",
            "--timeout=120s",
        ]);
    };
    let rolled = Instant::now();
    set_image("podshaper:0.1.0-next");
    let took = rolled.elapsed();
    let after = daemon_pod();
    assert_ne!(before, after, "the DaemonSet's pod was not replaced");
    assert!(
        sending.elapsed() < Duration::from_secs(29),
        "the rollout ({took:?}) outlasted the 30 s sender"
    );
    let seconds = iperf_intervals(&ns.wait_succeeded("rx", Duration::from_secs(120)));
    // back to the image deploy/ names, for the tests after this one
    set_image("podshaper:0.1.0");
    let worst = seconds[1..].iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "rollout ({took:?}) under a 20M sender, Mbit/s by second: {:?}; worst {} ({:.3} of the limit)",
        seconds.iter().map(|s| mbit(*s)).collect::<Vec<_>>(),
        mbit(worst),
        worst / 20e6
    );
    assert!(worst <= 20e6 * 1.10, "worst second {} Mbit/s", mbit(worst));
    common::assert_ratio(
        "20M through the rollout",
        mean(&seconds[1..]),
        20e6,
        0.95,
        1.03,
    );
}

/// `podshaper doctor` in the daemon's container on the node.
#[test]
fn doctor_passes_on_the_node() {
    let _turn = exclusive();
    ensure_installed();
    let out = kubectl(&[
        "-n",
        SYSTEM_NAMESPACE,
        "exec",
        &daemon_pod(),
        "-c",
        "daemon",
        "--",
        "podshaper",
        "doctor",
        "--cgroup-root=/host/sys/fs/cgroup",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "ok    BPF shaper",
        "ok    cgroup2",
        "ok    bpffs",
        "ok    daemon",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
}

/// The names of the BPF programs loaded on the machine.
/// The ids of the programs loaded in the kernel.
fn loaded_program_ids() -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| p.id())
        .collect()
}

/// The ids of the programs the node's pins hold: pinned themselves or
/// through a pinned link. Other podshaper programs may be loaded on this
/// machine (another test's daemon, a `podshaper run`): they are not the
/// node's.
fn pinned_program_ids(dir: &std::path::Path) -> std::collections::BTreeSet<u32> {
    let mut ids = std::collections::BTreeSet::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            ids.extend(pinned_program_ids(&path));
        } else if let Ok(link) = aya::programs::links::PinnedLink::from_pin(&path) {
            if let Ok(info) = aya::programs::links::FdLink::from(link).info() {
                ids.insert(info.program_id());
            }
        } else if let Ok(info) = aya::programs::ProgramInfo::from_pin(&path) {
            ids.insert(info.id());
        }
    }
    ids
}

/// An uninstall, `kubectl delete -k deploy/` then `podshaper cleanup` on the
/// node, leaves no program, link, pin or queue, while the pods that were
/// limited go on running.
#[test]
fn an_uninstall_leaves_no_program_link_pin_or_queue() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("uninstall");
    ns.create(
        &PodSpec::new("idle", "exec sleep 3600")
            .annotate(EGRESS, "10M")
            .annotate(INGRESS, "10M"),
    );
    ns.wait_running("idle");
    let uid = ns.uid("idle");
    wait_for("the pod's queue", Duration::from_secs(30), || {
        daemon_entry(&uid).is_some_and(|e| e["ingress_mode"] == "queue")
    });
    let pid: u32 = {
        let entry = daemon_entry(&uid).expect("limited");
        let cgroup = entry["cgroup"].as_str().unwrap_or_default().to_string();
        // the daemon names it as its container sees it
        let host = cgroup.replace("/host/sys/fs/cgroup", "/sys/fs/cgroup");
        let procs = walk_procs(std::path::Path::new(&host));
        *procs
            .first()
            .unwrap_or_else(|| panic!("no process in {host}"))
    };
    let has_ifb = || {
        std::process::Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "ip",
                "link",
                "show",
                "podshaper-ifb",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(has_ifb(), "the pod's queue is not there");
    assert!(!daemon_list().is_empty());
    let node_programs = pinned_program_ids(std::path::Path::new(PINS));
    assert!(!node_programs.is_empty(), "no program pinned in {PINS}");

    let deploy = repo_path("deploy").display().to_string();
    kubectl_ok(&["delete", "-k", &deploy, "--wait=true", "--timeout=120s"]);
    // limits stay in force with no daemon: that is what the pins are for
    assert!(std::path::Path::new(PINS).join("links").exists());
    let out = podshaper(&["cleanup"]);
    assert!(
        out.status.success(),
        "podshaper cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(!std::path::Path::new(PINS).exists(), "pins left in {PINS}");
    assert!(!has_ifb(), "the pod's queue is left");
    let left: Vec<u32> = loaded_program_ids()
        .intersection(&node_programs)
        .copied()
        .collect();
    assert!(
        left.is_empty(),
        "the node's programs left loaded: ids {left:?}"
    );
    assert!(!std::path::Path::new(cluster::DAEMON_SOCKET).exists());
    assert_eq!(ns.phase("idle"), "Running");
}

/// Every pid in a cgroup subtree.
fn walk_procs(dir: &std::path::Path) -> Vec<u32> {
    let mut out: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk_procs(&entry.path()));
        }
    }
    out
}
