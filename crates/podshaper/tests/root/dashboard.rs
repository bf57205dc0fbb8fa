//! The Grafana dashboard (deploy/grafana/) and the PodMonitor
//! (deploy/monitoring/): every query of the dashboard evaluated by a real
//! Prometheus that scrapes a real daemon and controller while a limited pod
//! sends and receives (tests/node/dashboard.rs does the same on the real
//! node, against the DaemonSet).

use std::path::Path;
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{Meter, NetnsPair};
use serde_json::Value;

use crate::common::grafana::{self, unix_now, EXPECTED};
use crate::common::kube::ApiServer;
use crate::common::prometheus::{Prometheus, Target};
use crate::common::{http_get, podshaper, traffic_turn, unique_port, ChildGuard};
use crate::controller::{unique_ns, wait_for, SimNode, CONVERGE, EGRESS, INGRESS};

const NODE: &str = "node-1";
/// The pod's limits: low, so the traffic stays light.
const LIMIT: &str = "5M";
const CHANGED_LIMIT: &str = "6M";
const TRAFFIC: Duration = Duration::from_secs(20);
/// When, into the traffic, the egress limit changes.
const CHANGE_AT: Duration = Duration::from_secs(12);
fn repo(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn yaml(relative: &str) -> Value {
    let path = repo(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_dashboard_is_grafana_json_and_the_podmonitor_scrapes_both_containers() {
    require_root!();
    let d = grafana::load();
    let mut titles = grafana::titles(&d);
    let mut expected: Vec<String> = EXPECTED.iter().map(|(t, _)| t.to_string()).collect();
    titles.sort();
    expected.sort();
    assert_eq!(
        titles, expected,
        "the dashboard's panels and EXPECTED differ"
    );

    let monitor = yaml("deploy/monitoring/podmonitor.yaml");
    let daemonset = yaml("deploy/daemonset.yaml");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(
        monitor["metadata"]["namespace"],
        daemonset["metadata"]["namespace"]
    );
    let pod_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("spec.selector.matchLabels");
    for (k, v) in selector {
        assert_eq!(&pod_labels[k], v, "selector {k}");
    }
    let ports: Vec<&str> = monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("podMetricsEndpoints")
        .iter()
        .map(|e| {
            assert_eq!(
                e["honorLabels"], true,
                "{e}: the pods' own namespace and pod labels"
            );
            e["port"].as_str().expect("port")
        })
        .collect();
    // each container's metrics port, by name
    for container in daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
    {
        let named = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect::<Vec<_>>();
        assert!(
            named.iter().any(|n| ports.contains(n)),
            "container {:?}: none of its ports {named:?} is scraped ({ports:?})",
            container["name"]
        );
    }
    // the default kustomization applies without the Operator's CRDs
    let default = yaml("deploy/kustomization.yaml");
    assert!(
        default["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .all(|r| r.as_str().is_some_and(|r| !r.contains("monitoring"))),
        "deploy/kustomization.yaml includes the PodMonitor"
    );
    let built = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(repo("deploy/monitoring"))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        built.status.success()
            && String::from_utf8_lossy(&built.stdout).contains("kind: PodMonitor"),
        "kubectl kustomize deploy/monitoring: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// The limited pod's processes: started in its cgroup, then in namespace A.
fn pod_traffic(cgroup: &podshaper_shaper::Cgroup, lab: &NetnsPair, args: &[&str]) -> ChildGuard {
    let mut cmd = podshaper();
    if let Err(e) = cgroup.spawn_inside(&mut cmd) {
        panic!("cannot start inside {}: {e}", cgroup.path().display());
    }
    let seconds = TRAFFIC.as_secs().to_string();
    cmd.args(["traffic"])
        .args(args)
        .args(["--netns", lab.a(), "--seconds", &seconds])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ChildGuard::spawn(&mut cmd)
}

fn succeeded(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_query_of_the_dashboard_returns_its_series_from_a_real_prometheus() {
    require_root!();
    let dashboard = grafana::load();
    let api = ApiServer::start();
    let ns = unique_ns("dashboard");
    api.create_namespace(&ns);
    let controller_addr = format!("127.0.0.1:{}", unique_port());
    let daemon_addr = format!("127.0.0.1:{}", unique_port());
    let mut node = SimNode::start_with(&api, NODE, &["--metrics-addr", &controller_addr]);
    // The daemon down once: the controller counts it unreachable.
    node.kill9_controller();
    node.daemon.kill9();
    node.start_controller();
    wait_for(
        "the daemon counted unreachable",
        CONVERGE,
        Some(&node),
        || {
            std::net::TcpStream::connect(&controller_addr).is_ok()
                && http_get(&controller_addr, "/metrics")
                    .1
                    .contains("podshaper_controller_errors_total{kind=\"daemon_unreachable\"}")
        },
    );
    node.daemon.restart_with(&["--metrics-addr", &daemon_addr]);

    // Target labels as the PodMonitor makes them: the node on both, the
    // DaemonSet pod's namespace and pod on the controller's only.
    let prometheus = Prometheus::start(&[
        Target {
            job: "podshaper-daemon",
            addr: &daemon_addr,
            labels: &[
                ("node", NODE),
                ("container", "daemon"),
                ("endpoint", "metrics"),
            ],
        },
        Target {
            job: "podshaper-controller",
            addr: &controller_addr,
            labels: &[
                ("node", NODE),
                ("namespace", "podshaper-system"),
                ("pod", "podshaper-test"),
                ("container", "controller"),
                ("endpoint", "ctrl-metrics"),
            ],
        },
    ]);
    let scraping_since = unix_now();
    prometheus.wait_until("both targets up", CONVERGE, || {
        prometheus
            .query("sum(up)", unix_now())
            .first()
            .and_then(|s| s["value"][1].as_str())
            == Some("2")
    });

    let uid = api.create_pod(&ns, "p", NODE, &[(EGRESS, LIMIT), (INGRESS, LIMIT)]);
    let cgroup = node.make_pod_cgroup(&uid);
    wait_for("p limited", CONVERGE, Some(&node), || {
        node.limits(&uid) == Some((Some(5_000_000), Some(5_000_000)))
    });

    // Light traffic both ways through the pod's limits.
    let lab = NetnsPair::create("dash").unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let turn = traffic_turn();
    let (egress_port, ingress_port) = (unique_port(), unique_port());
    let until = Until::after(TRAFFIC + Duration::from_secs(2));
    let sink = {
        let (until, bind) = (until.clone(), (NetnsPair::B_V4, egress_port));
        traffic::spawn_in(Some(lab.b().to_string()), move || {
            traffic::tcp_sink(std::net::TcpListener::bind(bind)?, Meter::default(), &until)
        })
    };
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let sender = pod_traffic(
        &cgroup,
        &lab,
        &[
            "tcp-send",
            "--to",
            &format!("{}:{egress_port}", NetnsPair::B_V4),
        ],
    );
    let receiver = pod_traffic(
        &cgroup,
        &lab,
        &[
            "tcp-recv",
            "--listen",
            &format!("{}:{ingress_port}", NetnsPair::A_V4),
        ],
    );
    let source = {
        let until = until.clone();
        let to = std::net::SocketAddr::from((NetnsPair::A_V4, ingress_port));
        traffic::spawn_in(Some(lab.b().to_string()), move || {
            thread::sleep(Duration::from_millis(300));
            traffic::tcp_send(to, 1, &until).map(|_| ())
        })
    };
    thread::sleep(CHANGE_AT.saturating_sub(started.elapsed()));
    api.annotate(&ns, "p", &[(EGRESS, Some(CHANGED_LIMIT))]);
    wait_for("p's egress limit changed", CONVERGE, Some(&node), || {
        node.limits(&uid) == Some((Some(6_000_000), Some(5_000_000)))
    });
    let sent = sender.wait_output();
    let received = receiver.wait_output();
    let traffic_end = unix_now();
    until.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sink.join();
    let _ = source.join();
    drop(turn);
    succeeded("the pod's sender", &sent);
    succeeded("the pod's receiver", &received);
    eprintln!(
        "the pod's receiver: {}",
        String::from_utf8_lossy(&received.stdout).trim()
    );

    // Queries as of 1.5 s before the traffic ended, once that is scraped.
    let at = traffic_end - 1.5;
    thread::sleep(Duration::from_secs(2));
    let range = format!("{}s", (at - scraping_since).floor());
    grafana::check_every_query(&prometheus, &dashboard, at, &range, &ns, &["p"]);
}
