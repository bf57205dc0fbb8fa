//! podshaper's life on the node: a deleted pod's pins go with it, a
//! DaemonSet rollout keeps the limits, `podshaper doctor` passes, an
//! uninstall leaves nothing behind.

use std::fs;
use std::time::{Duration, Instant};

use crate::cluster::{
    daemon_entry, daemon_list, daemon_pod, ensure_installed, exclusive, iperf_client,
    iperf_intervals, iperf_server, kubectl, kubectl_ok, mbit, podshaper, repo_path, wait_for,
    wait_rollout, PodSpec, TestNamespace, PINS, SYSTEM_NAMESPACE,
};
use crate::common::traffic_turn;
use crate::{cluster, common, mean, EGRESS, INGRESS, PORT};

/// Starts a pod named "idle" in `ns` that sends nothing, with 10M each way;
/// its UID, once it runs.
fn idle_pod_limited_both_ways(ns: &TestNamespace) -> String {
    ns.create(
        &PodSpec::new("idle", "exec sleep 3600")
            .annotate(EGRESS, "10M")
            .annotate(INGRESS, "10M"),
    );
    ns.wait_running("idle");
    ns.uid("idle")
}

/// A deleted pod's pins go with it.
#[test]
fn a_deleted_pods_pins_are_gone() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("delete");
    let uid = idle_pod_limited_both_ways(&ns);
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
        wait_rollout("120s");
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
    let uid = idle_pod_limited_both_ways(&ns);
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
