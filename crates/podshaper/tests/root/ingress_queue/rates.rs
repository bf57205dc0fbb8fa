//! What the queue buys TCP senders into a pod: the rate and its fair shares
//! for cubic, ECN and BBR flows at 10M, 100M and 1G.

use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::{assert_fair, assert_ratio, measure_flows_on, Flow, Limiter};
use podshaper_netlab::netns::{tcp_segments, NetnsPair};

/// Cubic senders into a pod through the daemon: the daemon's sweep installs
/// the queue once the receiving thread has entered the namespace (within a
/// second); the senders start after that, and the first 3 s are left out.
fn queued_ingress(rate: &str, bits: f64, flows: usize) {
    queued_ingress_with(rate, bits, flows, false, "cubic");
}

/// The same with connections that negotiate ECN (`ecn`), senders on the
/// congestion control `cc`. Returns the daemon's ingress counters of the
/// pod: (packets passed, packets marked CE).
fn queued_ingress_with(
    rate: &str,
    bits: f64,
    flows: usize,
    ecn: bool,
    cc: &'static str,
) -> (u64, u64) {
    let root = TestRoot::new("qrate");
    let app = root.make("app");
    let daemon = TestDaemon::start(&root.path, &[]);
    let path = app.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &path, "--ingress", rate]);
    let flow = Flow {
        flows,
        ecn,
        cc,
        seconds: 8.0,
        skip: 3.0,
        // as for a pod, whose queue is there before its traffic: flows that
        // ran through the policer alone first come out of it with losses
        // (and large bursts) that take seconds to even out at 10M
        after_ingress_queue: true,
        ..Flow::tcp(false)
    };
    let lab = NetnsPair::create("t").unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let sent_before = tcp_segments(lab.b());
    let received = measure_flows_on(&lab, &Limiter::Cgroup(&app), &flow);
    let sent_after = tcp_segments(lab.b());
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    assert!(
        log.contains("ingress queues synced") && !log.contains("ingress queue not updated"),
        "the daemon did not install the queue: {log}"
    );
    let what = format!(
        "queued ingress {rate} x{flows} ({cc}{})",
        if ecn { ", ECN" } else { "" }
    );
    assert_ratio(&what, received.bits_per_second, bits, 0.90, 1.05);
    if flows > 1 {
        // each flow has a FIFO of its own
        assert_fair(&what, &received.flow_bytes, flows, 0.90);
    }
    // Each receiving socket's window fits its flow's FIFO (the sockops
    // program's clamp, and a first window of the senders' own first
    // flight), so the queue loses nothing: cubic senders resent 1-6% of
    // their segments at 10M and 100M without them, 0.00% with them
    // (docs/design/ingress.md).
    let ((retrans_0, out_0), (retrans_1, out_1)) = sent_before
        .zip(sent_after)
        .unwrap_or_else(|| panic!("no TCP counters in {}", lab.b()));
    let resent =
        retrans_1.saturating_sub(retrans_0) as f64 / out_1.saturating_sub(out_0).max(1) as f64;
    eprintln!(
        "{what}: the senders resent {:.2}% of their segments",
        resent * 100.0
    );
    assert!(
        resent < 0.01,
        "{what}: the senders resent {:.2}% of their segments ({} of {})",
        resent * 100.0,
        retrans_1.saturating_sub(retrans_0),
        out_1.saturating_sub(out_0)
    );
    let status: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["status", "--cgroup", &path, "-o", "json"]))
            .unwrap_or_else(|e| panic!("status is not JSON: {e}"));
    let counter = |name: &str| {
        status[0]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (counter("ingress_packets"), counter("ingress_marked"))
}

/// ECN-capable senders into a queued pod: the queue holds the rate, so the
/// policer behind it has no reason to mark them: 0-2% are marked. With the
/// queue's htb burst half the limit's and the policer's marking level not
/// counting the CPUs' slices, its bucket sat just under half full behind
/// the queue, where it marks: 98-99% of the packets were marked CE and the
/// flows got 0.953-0.957 of 10M, 0.963 of 1G, with 3-7 ms of added round
/// trip (`podshaper bench --ecn true`).
fn queued_ecn_ingress_is_not_marked(rate: &str, bits: f64, flows: usize) {
    let (packets, marked) = queued_ingress_with(rate, bits, flows, true, "cubic");
    assert!(packets > 0, "no ingress packets counted");
    let fraction = marked as f64 / packets as f64;
    assert!(
        fraction < 0.2,
        "{marked} of {packets} ingress packets marked CE ({:.1}%) behind the queue ({rate} x{flows})",
        fraction * 100.0
    );
}

#[test]
fn queued_ecn_ingress_10m_eight_flows_is_not_marked() {
    require_root!();
    queued_ecn_ingress_is_not_marked("10M", 10e6, 8);
}

#[test]
fn queued_ecn_ingress_1g_one_flow_is_not_marked() {
    require_root!();
    queued_ecn_ingress_is_not_marked("1G", 1e9, 1);
}

#[test]
fn queued_ingress_10m_one_flow() {
    require_root!();
    queued_ingress("10M", 10e6, 1);
}

#[test]
fn queued_ingress_10m_eight_flows() {
    require_root!();
    queued_ingress("10M", 10e6, 8);
}

#[test]
fn queued_ingress_100m_one_flow() {
    require_root!();
    queued_ingress("100M", 100e6, 1);
}

#[test]
fn queued_ingress_100m_eight_flows() {
    require_root!();
    queued_ingress("100M", 100e6, 8);
}

#[test]
fn queued_ingress_1g_one_flow() {
    require_root!();
    queued_ingress("1G", 1e9, 1);
}

#[test]
fn queued_ingress_1g_eight_flows() {
    require_root!();
    queued_ingress("1G", 1e9, 8);
}

/// One BBR flow into a queued pod. Each flow's FIFO holds 10 ms at the
/// rate because with 0.5 ms BBR's probes overflowed it, and its policer
/// detection then held the flow at what got through: 0.02-0.03 of 100M,
/// 0.2-0.3 of 1G (`podshaper bench --cc bbr`), where the policer alone
/// gave it 1.01-1.04.
#[test]
fn queued_bbr_ingress_100m_one_flow() {
    require_root!();
    queued_ingress_with("100M", 100e6, 1, false, "bbr");
}

#[test]
fn queued_bbr_ingress_1g_one_flow() {
    require_root!();
    queued_ingress_with("1G", 1e9, 1, false, "bbr");
}
