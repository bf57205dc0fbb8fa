//! The node's ingress queue for hostNetwork pods (crates/shaper/src/host_queue.rs,
//! the daemon's `--host-ingress-queue`): a daemon in a namespace of the
//! test's own, which it takes for the node's, queues what the pods whose
//! processes share that namespace receive; it builds the queue once their
//! processes are there, gives each pod classes of its own, keeps them
//! through kill -9, changes them live, and takes the queue and its filters
//! away with the last limit. And what it buys TCP senders: through the
//! cgroup policer alone, 16 cubic flows at 10 Mbit/s resent 66-70% of their
//! segments and shared the limit with Jain's index 0.72-0.84
//! (docs/design/ingress.md).

use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::{
    assert_fair, assert_ratio, has_host_queue, measure_flows_on, ChildGuard, Flow, Limiter,
};
use podshaper_netlab::netns::{netns_path, tcp_segments, NetnsPair};
use podshaper_shaper::host_queue::HOST_IFB_NAME;
use podshaper_shaper::ingress_queue::flow_filter;
use podshaper_shaper::Cgroup;

/// `ip netns exec <ns> <args>`, its stdout.
fn in_ns(ns: &str, args: &[&str]) -> String {
    let out: Output = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} in {ns}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node's queue's class `classid` (`tc -s class show`), empty if none.
fn class(ns: &str, classid: &str) -> String {
    in_ns(
        ns,
        &[
            "tc",
            "-s",
            "class",
            "show",
            "dev",
            HOST_IFB_NAME,
            "classid",
            classid,
        ],
    )
}

/// The bytes a class sent (`Sent N bytes`).
fn sent_bytes(class: &str) -> u64 {
    class
        .split_whitespace()
        .skip_while(|w| *w != "Sent")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The program of the classifying filter on an interface's ingress.
fn filter_program(ns: &str, dev: &str) -> Option<u32> {
    let show = in_ns(
        ns,
        &["tc", "-json", "filter", "show", "dev", dev, "ingress"],
    );
    flow_filter(&show).map(|(id, _)| id)
}

/// A process of a hostNetwork pod: in the node's namespace before it joins
/// the pod's cgroup.
fn host_pod_process(cgroup: &Cgroup, ns: &str) -> ChildGuard {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()))
        .args([
            "--",
            "sh",
            "-c",
            r#"echo $$ > "$0/cgroup.procs" && exec sleep 120"#,
        ])
        .arg(cgroup.path());
    ChildGuard::spawn(&mut cmd)
}

/// Waits (`seconds` at most) until `check` holds.
fn wait_until(what: &str, seconds: u64, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not after {seconds} s");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_host_network_pods_ingress_waits_in_the_nodes_queue_until_its_last_limit_goes() {
    require_root!();
    let root = TestRoot::new("hostq");
    let pod = root.make("pod");
    let container = root.make("pod/container");
    let other = root.make("other");
    let lab = NetnsPair::create("hq").unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    // namespace A is the node's: the daemon runs there
    let mut daemon =
        TestDaemon::start_in_netns(&root.path, &["--host-ingress-queue", "true"], lab.a());
    let pod_path = pod.path().display().to_string();
    let other_path = other.path().display().to_string();

    // limited before its processes start (as the controller does): nothing
    // to queue for yet
    daemon.ok(&["attach", "--cgroup", &pod_path, "--ingress", "10M"]);
    assert!(
        !has_host_queue(lab.a()),
        "a queue with no process to queue for"
    );

    // eight cubic flows from B to the pod's receiver in A; the sweep builds
    // the queue once the receiver is there, and the flows start after it
    let (resent_before, sent_before) = tcp_segments(lab.b()).expect("B's TCP counters");
    let flow = Flow {
        flows: 8,
        after_ingress_queue: true,
        ..Flow::tcp(false)
    };
    let received = measure_flows_on(&lab, &Limiter::Node(&container), &flow);
    let (resent_after, sent_after) = tcp_segments(lab.b()).expect("B's TCP counters");
    assert_ratio(
        "10M x8 through the node's queue",
        received.bits_per_second,
        10e6,
        0.90,
        1.05,
    );
    assert_fair(
        "10M x8 through the node's queue",
        &received.flow_bytes,
        8,
        0.90,
    );
    let resent = (resent_after - resent_before) as f64 / (sent_after - sent_before).max(1) as f64;
    eprintln!(
        "the senders resent {:.1}% of their segments",
        resent * 100.0
    );
    assert!(
        resent < 0.25,
        "the senders resent {:.1}% of their segments",
        resent * 100.0
    );
    // the queue carried it: the pod's class (slot 1) sent what came in
    let pod_class = class(lab.a(), "1:201");
    let measured: u64 = received.flow_bytes.iter().sum();
    assert!(
        sent_bytes(&pod_class) >= measured,
        "the pod's class sent less than the flows received ({measured} bytes): {pod_class}"
    );

    // the receiver is gone; the pod keeps a process, as a running pod does
    let pod_process = host_pod_process(&container, lab.a());
    // another hostNetwork pod, already running: classes of its own, at once
    let _other_process = host_pod_process(&other, lab.a());
    for cgroup in [&container, &other] {
        wait_until("a pod's process in its cgroup", 5, || {
            std::fs::read_to_string(cgroup.path().join("cgroup.procs"))
                .is_ok_and(|p| !p.trim().is_empty())
        });
    }
    daemon.ok(&["attach", "--cgroup", &other_path, "--ingress", "20M"]);
    assert!(
        class(lab.a(), "1:401").contains("ceil 20Mbit "),
        "{}",
        class(lab.a(), "1:401")
    );

    // kill -9: the queue stays; a restarted daemon adopts the slots and
    // changes a rate live
    daemon.kill9();
    assert!(has_host_queue(lab.a()), "the queue went with the daemon");
    let killed_daemons = filter_program(lab.a(), "veth0");
    daemon.restart();
    daemon.ok(&["attach", "--cgroup", &pod_path, "--ingress", "30M"]);
    assert!(
        class(lab.a(), "1:201").contains("ceil 30Mbit "),
        "{}",
        class(lab.a(), "1:201")
    );
    // and its own classifier took over from the killed daemon's on every
    // interface (tc holds the program a filter was built with: after an
    // upgrade, the older build's)
    let pinned = daemon.pinned_program("host_class");
    assert_ne!(
        killed_daemons,
        Some(pinned),
        "the restarted daemon reused the program"
    );
    for dev in ["veth0", "lo"] {
        assert_eq!(
            filter_program(lab.a(), dev),
            Some(pinned),
            "{dev} still runs the killed daemon's classifier"
        );
    }

    // one detached: its classes go, the other's stay
    daemon.ok(&["detach", "--cgroup", &pod_path]);
    assert!(
        class(lab.a(), "1:201").is_empty(),
        "{}",
        class(lab.a(), "1:201")
    );
    assert!(class(lab.a(), "1:401").contains("ceil 20Mbit "));

    // a pod whose cgroup goes without a detach (the stale sweep, every 5
    // s, finds it): its classes go too
    daemon.ok(&["attach", "--cgroup", &pod_path, "--ingress", "10M"]);
    assert!(class(lab.a(), "1:201").contains("ceil 10Mbit "));
    drop(pod_process);
    for cgroup in [&container, &pod] {
        std::fs::remove_dir(cgroup.path())
            .unwrap_or_else(|e| panic!("cannot remove {}: {e}", cgroup.path().display()));
    }
    wait_until("the removed pod's classes gone", 15, || {
        class(lab.a(), "1:201").is_empty()
    });
    assert!(class(lab.a(), "1:401").contains("ceil 20Mbit "));

    // the last ingress limit goes (egress stays): the queue and every
    // filter that fed it go
    daemon.ok(&["attach", "--cgroup", &other_path, "--egress", "20M"]);
    assert!(
        !has_host_queue(lab.a()),
        "the queue outlived the last limit"
    );
    for dev in ["veth0", "lo"] {
        let qdiscs = in_ns(lab.a(), &["tc", "qdisc", "show", "dev", dev]);
        assert!(!qdiscs.contains("ingress"), "left on {dev}: {qdiscs}");
    }
    daemon.ok(&["detach", "--cgroup", &other_path]);
}
