//! Real traffic through a limited cgroup, between two network namespaces
//! joined by a veth pair, with `podshaper run` applying the limit: IPv6,
//! a BBR sender against the policer, a direction left unlimited, and the
//! host's namespace. tests/root/accuracy.rs measures TCP and UDP at 10M-1G.

use crate::common::{assert_ratio, measure, Flow};

#[test]
fn tcp_egress_over_ipv6() {
    require_root!();
    let flow = Flow {
        v6: true,
        ..Flow::tcp(true)
    };
    let rate = measure(&["--egress", "50M"], &flow);
    assert_ratio("TCP egress IPv6 50M", rate, 50e6, 0.90, 1.05);
}

/// Ingress policing costs the sender an occasional retransmission timeout
/// (docs/design/ingress.md), so ingress is measured over a longer window.
fn tcp_ingress() -> Flow {
    Flow {
        seconds: 9.0,
        skip: 2.0,
        ..Flow::tcp(false)
    }
}

#[test]
fn tcp_ingress_one_flow_at_50m() {
    require_root!();
    // A BBR sender: one cubic flow against the policer is the known gap,
    // asserted with its own bound in tests/root/accuracy.rs (0.56 here in CI).
    let flow = Flow {
        cc: "bbr",
        ..tcp_ingress()
    };
    let rate = measure(&["--ingress", "50M"], &flow);
    assert_ratio("TCP ingress 50M", rate, 50e6, 0.85, 1.05);
}

#[test]
fn an_unlimited_direction_is_left_alone() {
    require_root!();
    // Only ingress is limited: egress must run far above that limit.
    let rate = measure(&["--ingress", "10M"], &Flow::tcp(true));
    assert!(
        rate > 500e6,
        "egress was throttled to {rate:.0} bit/s by an ingress-only limit"
    );
}

#[test]
fn tcp_egress_in_the_host_network_namespace() {
    require_root!();
    // A hostNetwork pod: no namespace of its own, traffic over loopback.
    let flow = Flow {
        host: true,
        ..Flow::tcp(true)
    };
    let rate = measure(&["--egress", "100M"], &flow);
    assert_ratio("TCP egress host namespace 100M", rate, 100e6, 0.90, 1.05);
}

#[test]
fn tcp_ingress_in_the_host_network_namespace() {
    require_root!();
    let flow = Flow {
        host: true,
        ..tcp_ingress()
    };
    let rate = measure(&["--ingress", "100M"], &flow);
    // Over loopback the MSS is 64 KiB, so every policer drop costs the sender
    // a 64 KiB segment and often a timeout: one flow's goodput varies from
    // run to run (0.56-1.03 seen, lowest with other tests loading the CPUs).
    // This test checks that the limit holds and traffic flows; the veth test
    // above checks accuracy. Known gap, docs/design/ingress.md.
    assert_ratio("TCP ingress host namespace 100M", rate, 100e6, 0.40, 1.05);
}
