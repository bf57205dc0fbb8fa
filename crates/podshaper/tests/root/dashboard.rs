//! The Grafana dashboard (deploy/grafana/) and the PodMonitor
//! (deploy/monitoring/): every query of the dashboard evaluated by a real
//! Prometheus that scrapes a real daemon and controller while a limited pod
//! sends and receives.

mod grafana;
mod prometheus;

use std::path::Path;
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{Meter, NetnsPair};
use serde_json::Value;

use self::prometheus::{Prometheus, Target};
use crate::common::kube::ApiServer;
use crate::common::{http_get, podshaper, traffic_turn, unique_port, ChildGuard};
use crate::controller::{unique_ns, wait_for, SimNode, CONVERGE, EGRESS, INGRESS};

/// What a panel's queries return while the pod sends and receives at its
/// limits, the daemon having been down once before (so the controller
/// counted an error) and the pod's egress limit changed within the last
/// rate interval (so the latency histogram moved). Every panel is here, and
/// nothing else: a panel added to the dashboard needs its line.
const EXPECTED: &[(&str, Data)] = &[
    ("Egress: rate and limit", Data::Positive),
    ("Ingress: rate and limit", Data::Positive),
    ("Utilisation (rate / limit)", Data::Positive),
    // counted if the shaper dropped or marked; 0 a second is a series too
    ("Dropped packets per second", Data::Finite),
    ("Marked packets per second", Data::Finite),
    ("Ingress mode", Data::Positive),
    ("Reconcile passes per second", Data::Positive),
    // the attach came before the rate interval, the update within it
    ("Changes applied per second", Data::SomePositive),
    // the daemon_unreachable error came before Prometheus started
    ("Errors per second", Data::Finite),
    ("Daemon reachable", Data::Positive),
    ("Pod change to limit in force", Data::Positive),
    (
        "Pod change to limit in force, p99 over the range",
        Data::Positive,
    ),
];

/// What each series of a query must hold (every query must return at least
/// one series).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Data {
    /// a finite number above 0
    Positive,
    /// a finite number
    Finite,
    /// finite numbers, one of them at least above 0
    SomePositive,
}

const NODE: &str = "node-1";
/// The pod's limits: low, so the traffic stays light.
const LIMIT: &str = "5M";
const CHANGED_LIMIT: &str = "6M";
const TRAFFIC: Duration = Duration::from_secs(20);
/// When, into the traffic, the egress limit changes.
const CHANGE_AT: Duration = Duration::from_secs(12);
/// `$__rate_interval` as Grafana computes it for a 1 s scrape interval and
/// a dashboard of the last few minutes: max(interval + scrape, 4 x scrape),
/// rounded up to leave room for a late scrape.
const RATE_INTERVAL: &str = "10s";

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

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
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
    let intervals = [
        ("__rate_interval", RATE_INTERVAL),
        ("__interval", "1s"),
        ("__range", range.as_str()),
    ];
    let variables = [("namespace", ns.as_str()), ("pod", "p")];
    for v in grafana::label_variables(&dashboard) {
        let selector = grafana::substitute(&v.selector, &intervals, &variables);
        let values = prometheus.label_values(&v.label, &selector);
        let want = variables
            .iter()
            .find(|(name, _)| *name == v.name)
            .map(|(_, value)| *value)
            .unwrap_or_else(|| panic!("no value for the variable {}", v.name));
        eprintln!(
            "variable {}: label_values({selector}, {}) = {values:?}",
            v.name, v.label
        );
        assert!(
            values.iter().any(|x| x == want),
            "variable {}: {want} not in {values:?}",
            v.name
        );
    }
    let queries = grafana::queries(&dashboard);
    for q in &queries {
        let expr = grafana::substitute(&q.expr, &intervals, &variables);
        let data = EXPECTED
            .iter()
            .find(|(t, _)| *t == q.panel)
            .map(|(_, d)| *d)
            .unwrap_or_else(|| panic!("panel {:?} is not in EXPECTED", q.panel));
        let result = prometheus.query(&expr, at);
        eprintln!("{} {}: {expr}", q.panel, q.ref_id);
        assert!(
            !result.is_empty(),
            "{} {}: no series for {expr}",
            q.panel,
            q.ref_id
        );
        let mut above_zero = false;
        for series in &result {
            let labels = &series["metric"];
            let value: f64 = series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            eprintln!("  {labels} {value}");
            for label in &q.legend_labels {
                assert!(
                    labels[label].as_str().is_some_and(|v| !v.is_empty()),
                    "{} {}: series {labels} lacks the legend's {label}",
                    q.panel,
                    q.ref_id
                );
            }
            // the template variables hold: the test's pod only
            if let Some(n) = labels["namespace"].as_str() {
                assert_eq!(n, ns, "{}: {labels}", q.panel);
            }
            assert!(
                value.is_finite(),
                "{} {}: {labels} = {value}",
                q.panel,
                q.ref_id
            );
            if data == Data::Positive {
                assert!(value > 0.0, "{} {}: {labels} = {value}", q.panel, q.ref_id);
            }
            above_zero |= value > 0.0;
        }
        if data == Data::SomePositive {
            assert!(above_zero, "{} {}: every series is 0", q.panel, q.ref_id);
        }
    }
    eprintln!(
        "{} queries and {} variables checked",
        queries.len(),
        grafana::label_variables(&dashboard).len()
    );
}
