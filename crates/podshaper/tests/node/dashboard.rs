//! The Grafana dashboard (deploy/grafana/) on the real node: a real
//! Prometheus scrapes the DaemonSet's daemon and controller (their metrics
//! ports on the node, 9466 and 9467, with the target labels the PodMonitor
//! in deploy/monitoring/ gives them) while a pod sends to another over the
//! CNI bridge, each at its limit, and every query of the dashboard returns
//! its series. tests/root/dashboard.rs does the same against a daemon and a
//! controller of its own.

use std::thread;
use std::time::Duration;

use crate::cluster::{
    daemon_entry, daemon_pod, ensure_installed, exclusive, iperf_client, iperf_server, kubectl_ok,
    wait_for, PodSpec, TestNamespace, SYSTEM_NAMESPACE,
};
use crate::common::grafana::{self, unix_now};
use crate::common::prometheus::{Prometheus, Target};
use crate::common::traffic_turn;
use crate::{EGRESS, INGRESS, PORT};

/// The metrics addresses deploy/daemonset.yaml gives the daemon and the
/// controller (hostNetwork: the node's own addresses).
const DAEMON_METRICS: &str = "127.0.0.1:9466";
const CONTROLLER_METRICS: &str = "127.0.0.1:9467";

#[test]
fn every_query_of_the_dashboard_returns_its_series_on_the_node() {
    let _turn = exclusive();
    ensure_installed();
    let dashboard = grafana::load();
    let ns = TestNamespace::new("dashboard");
    let _traffic = traffic_turn();
    let node = kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let controller_pod = daemon_pod();
    // Target labels as the PodMonitor makes them: the node on both; the
    // daemon's target loses the DaemonSet pod's namespace and pod (its
    // series carry the limited pods'), the controller's keeps them.
    let prometheus = Prometheus::start(&[
        Target {
            job: "podshaper-daemon",
            addr: DAEMON_METRICS,
            labels: &[
                ("node", &node),
                ("container", "daemon"),
                ("endpoint", "metrics"),
            ],
        },
        Target {
            job: "podshaper-controller",
            addr: CONTROLLER_METRICS,
            labels: &[
                ("node", &node),
                ("namespace", SYSTEM_NAMESPACE),
                ("pod", &controller_pod),
                ("container", "controller"),
                ("endpoint", "ctrl-metrics"),
            ],
        },
    ]);
    let scraping_since = unix_now();
    prometheus.wait_until("both targets up", Duration::from_secs(30), || {
        prometheus
            .query("sum(up)", unix_now())
            .first()
            .and_then(|s| s["value"][1].as_str())
            == Some("2")
    });

    // A sender limited at egress, to a receiver limited at ingress.
    ns.create(&PodSpec::new("rx", &iperf_server(PORT)).annotate(INGRESS, "20M"));
    ns.wait_running("rx");
    let rx = ns.ip("rx");
    ns.create(&PodSpec::new("tx", &iperf_client(&rx, PORT, 40)).annotate(EGRESS, "20M"));
    ns.wait_running("tx");
    let (tx_uid, rx_uid) = (ns.uid("tx"), ns.uid("rx"));
    wait_for("both pods limited", Duration::from_secs(30), || {
        daemon_entry(&tx_uid).is_some()
            && daemon_entry(&rx_uid).is_some_and(|e| e["ingress_mode"] == "queue")
    });
    // Traffic for a while, then the sender's limit changes, within the
    // rate interval of the queries (the changes and latency panels).
    thread::sleep(Duration::from_secs(12));
    ns.annotate("tx", EGRESS, Some("10M"));
    wait_for("tx's limit changed", Duration::from_secs(30), || {
        daemon_entry(&tx_uid).is_some_and(|e| e["egress_bps"] == 10_000_000)
    });
    thread::sleep(Duration::from_secs(3));
    assert_eq!(ns.phase("tx"), "Running", "the sender ended too soon");
    let at = unix_now();
    // that moment scraped
    thread::sleep(Duration::from_secs(2));
    let range = format!("{}s", (at - scraping_since).floor());
    grafana::check_every_query(&prometheus, &dashboard, at, &range, &ns.name, &["tx", "rx"]);
}
