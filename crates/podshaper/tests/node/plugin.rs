//! `kubectl podshaper` on the real node: kubectl finds the plugin on PATH
//! (a link named kubectl-podshaper to the podshaper binary), which finds
//! each pod's node and that node's daemon and reads its `/status` through
//! the API server's pods/proxy, twice, a second apart.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{
    daemon_entry, ensure_installed, exclusive, iperf_client, iperf_server, kubectl, kubectl_ok,
    mbit, wait_for, PodSpec, TestNamespace, KUBECONFIG, SYSTEM_NAMESPACE,
};
use crate::common::traffic_turn;
use crate::{EGRESS, INGRESS, PORT};

/// A directory on PATH holding the plugin, removed when dropped.
struct PluginPath {
    dir: PathBuf,
}

impl PluginPath {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "podshaper-test-plugin-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_podshaper"),
            dir.join("kubectl-podshaper"),
        )
        .unwrap_or_else(|e| panic!("cannot link the plugin into {}: {e}", dir.display()));
        Self { dir }
    }

    /// `kubectl ARGS` with the plugin on PATH and the node's kubeconfig.
    fn kubectl(&self, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("kubectl")
            .args(args)
            .env("PATH", path)
            .env("KUBECONFIG", KUBECONFIG)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"))
    }

    /// The plugin run directly, as kubectl runs it.
    fn plugin(&self, args: &[&str]) -> Output {
        Command::new(self.dir.join("kubectl-podshaper"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl-podshaper: {e}"))
    }
}

impl Drop for PluginPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn json_rows(out: &Output, what: &str) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(rows)) => rows,
        other => panic!("{what} printed {other:?}"),
    }
}

fn failure(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ratio(row: &Value, rate: &str, limit: &str) -> f64 {
    let rate = row[rate]
        .as_f64()
        .unwrap_or_else(|| panic!("no {rate} in {row}"));
    let limit = row[limit]
        .as_f64()
        .unwrap_or_else(|| panic!("no {limit} in {row}"));
    rate / limit
}

/// A sender limited to 20M egress and its receiver limited to 20M ingress:
/// `kubectl podshaper status` and `top` show each pod's node, limits, a
/// rate near the limit, and the receiver's ingress queue; pods that are
/// missing, not limited, or on a node without a daemon give errors that say
/// so; and the roles in deploy/kubectl-plugin-rbac.yaml are enough.
#[test]
fn kubectl_podshaper_shows_a_sending_pods_limits_rates_and_node() {
    let _turn = exclusive();
    ensure_installed();
    let ns = TestNamespace::new("plugin");
    let _traffic = traffic_turn();
    let path = PluginPath::new(&ns.name);
    ns.create(&PodSpec::new("rx", &iperf_server(PORT)).annotate(INGRESS, "20M"));
    ns.wait_running("rx");
    let rx = ns.ip("rx");
    ns.create(&PodSpec::new("tx", &iperf_client(&rx, PORT, 40)).annotate(EGRESS, "20M"));
    ns.create(&PodSpec::new("idle", "exec sleep 600"));
    ns.wait_running("tx");
    ns.wait_running("idle");
    let (tx_uid, rx_uid) = (ns.uid("tx"), ns.uid("rx"));
    wait_for("both pods limited", Duration::from_secs(30), || {
        daemon_entry(&tx_uid).is_some()
            && daemon_entry(&rx_uid).is_some_and(|e| e["ingress_mode"] == "queue")
    });
    let node = ns.kubectl_ok(&["get", "pod", "tx", "-o", "jsonpath={.spec.nodeName}"]);
    // the client connects within a second or two of running
    std::thread::sleep(Duration::from_secs(3));

    let rows = json_rows(
        &path.kubectl(&["podshaper", "status", "tx", "-n", &ns.name, "-o", "json"]),
        "kubectl podshaper status tx",
    );
    eprintln!("kubectl podshaper status tx -o json: {rows:?}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let tx = &rows[0];
    assert_eq!(tx["pod"], "tx");
    assert_eq!(tx["namespace"], ns.name.as_str());
    assert_eq!(tx["node"], node.as_str());
    assert_eq!(tx["egress_bps"], 20_000_000);
    assert_eq!(tx["ingress_bps"], Value::Null);
    let sent = ratio(tx, "egress_rate_bps", "egress_bps");
    assert!(
        (0.5..=1.1).contains(&sent),
        "egress rate / limit {sent}: {tx}"
    );

    let rows = json_rows(
        &path.kubectl(&["podshaper", "top", "-n", &ns.name, "-o", "json"]),
        "kubectl podshaper top",
    );
    eprintln!("kubectl podshaper top -o json: {rows:?}");
    let pods: Vec<&str> = rows.iter().filter_map(|r| r["pod"].as_str()).collect();
    assert_eq!(pods.len(), 2, "top lists the limited pods only: {rows:?}");
    assert!(pods.contains(&"tx") && pods.contains(&"rx"), "{rows:?}");
    let rx = rows
        .iter()
        .find(|r| r["pod"] == "rx")
        .unwrap_or_else(|| panic!("no rx in {rows:?}"));
    assert_eq!(rx["ingress_mode"], "queue");
    assert_eq!(rx["node"], node.as_str());
    assert_eq!(rx["ingress_bps"], 20_000_000);
    let received = ratio(rx, "ingress_rate_bps", "ingress_bps");
    assert!(
        (0.5..=1.1).contains(&received),
        "ingress rate / limit {received}: {rx}"
    );
    let tx = rows
        .iter()
        .find(|r| r["pod"] == "tx")
        .unwrap_or_else(|| panic!("no tx in {rows:?}"));
    let sent = ratio(tx, "egress_rate_bps", "egress_bps");
    assert!(
        (0.5..=1.1).contains(&sent),
        "top: egress rate / limit {sent}: {tx}"
    );

    let started = std::time::Instant::now();
    let table = path.kubectl(&["podshaper", "top", "-n", &ns.name]);
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&table.stdout);
    eprintln!("kubectl podshaper top, {took:.2?} with its 1 s interval:\n{text}");
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    assert!(text.starts_with("NAMESPACE"), "{text}");
    for wanted in [
        "EGRESS RATE",
        "INGRESS MODE",
        "queue",
        "20Mbit/s",
        node.as_str(),
    ] {
        assert!(text.contains(wanted), "no {wanted:?} in\n{text}");
    }
    eprintln!(
        "rates read by the plugin: tx {} Mbit/s of 20, rx {} Mbit/s of 20",
        mbit(sent * 20e6),
        mbit(received * 20e6)
    );

    let rows = json_rows(
        &path.kubectl(&["podshaper", "status", "-n", &ns.name, "-o", "json"]),
        "kubectl podshaper status of the namespace",
    );
    let pods: Vec<&str> = rows.iter().filter_map(|r| r["pod"].as_str()).collect();
    assert_eq!(pods, ["rx", "tx"], "the limited pods, by name: {rows:?}");

    // what an operator is told when it cannot answer
    let missing = failure(
        &path.kubectl(&["podshaper", "status", "nosuch", "-n", &ns.name]),
        "status of a missing pod",
    );
    assert!(
        missing.contains(&format!("pod {}/nosuch not found", ns.name)),
        "{missing}"
    );
    let idle = failure(
        &path.kubectl(&["podshaper", "status", "idle", "-n", &ns.name]),
        "status of a pod without limits",
    );
    assert!(idle.contains("is not limited"), "{idle}");
    let elsewhere = failure(
        &path.kubectl(&[
            "podshaper",
            "status",
            "tx",
            "-n",
            &ns.name,
            "--podshaper-namespace",
            &ns.name,
        ]),
        "status with no daemon found",
    );
    assert!(
        elsewhere.contains(&format!("no podshaper daemon on node {node}")),
        "{elsewhere}"
    );

    // an operator bound to the roles deploy/ defines, and nothing more
    let viewer = Viewer::new(&ns.name);
    let rows = json_rows(
        &path.plugin(&[
            "status",
            "tx",
            "-n",
            &ns.name,
            "-o",
            "json",
            "--kubeconfig",
            &viewer.kubeconfig.display().to_string(),
        ]),
        "status as a viewer",
    );
    assert_eq!(rows[0]["pod"], "tx", "{rows:?}");
}

/// A ServiceAccount bound to podshaper-viewer in the test's namespace and
/// to podshaper-viewer-daemons in podshaper-system, and a kubeconfig with
/// its token; the binding in podshaper-system and the file go when dropped.
struct Viewer {
    binding: String,
    kubeconfig: PathBuf,
}

impl Viewer {
    fn new(namespace: &str) -> Self {
        let account = format!("{namespace}:viewer");
        kubectl_ok(&["-n", namespace, "create", "serviceaccount", "viewer"]);
        kubectl_ok(&[
            "-n",
            namespace,
            "create",
            "rolebinding",
            "viewer",
            "--clusterrole=podshaper-viewer",
            &format!("--serviceaccount={account}"),
        ]);
        let binding = format!("{namespace}-viewer");
        kubectl_ok(&[
            "-n",
            SYSTEM_NAMESPACE,
            "create",
            "rolebinding",
            &binding,
            "--role=podshaper-viewer-daemons",
            &format!("--serviceaccount={account}"),
        ]);
        let viewer = Self {
            binding,
            kubeconfig: std::env::temp_dir().join(format!("podshaper-test-{namespace}.kubeconfig")),
        };
        let token = viewer_token(namespace);
        let view = |path: &str| {
            kubectl_ok(&[
                "config",
                "view",
                "--raw",
                "--minify",
                "-o",
                &format!("jsonpath={path}"),
            ])
        };
        let server = view("{.clusters[0].cluster.server}");
        let ca = view("{.clusters[0].cluster.certificate-authority-data}");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: node\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: viewer\n  user:\n    token: {}\n\
             contexts:\n- name: viewer\n  context:\n    cluster: node\n    user: viewer\n    namespace: {namespace}\n\
             current-context: viewer\n",
            token.trim()
        );
        std::fs::write(&viewer.kubeconfig, config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", viewer.kubeconfig.display()));
        viewer
    }
}

/// A token of the ServiceAccount `viewer`: from the TokenRequest API, else
/// from the Secret the token controller makes for it.
fn viewer_token(namespace: &str) -> String {
    let requested = kubectl(&["-n", namespace, "create", "token", "viewer"]);
    if requested.status.success() {
        return String::from_utf8_lossy(&requested.stdout).into_owned();
    }
    let mut secret = String::new();
    wait_for("the viewer's token Secret", Duration::from_secs(30), || {
        secret = kubectl_ok(&[
            "-n",
            namespace,
            "get",
            "serviceaccount",
            "viewer",
            "-o",
            "jsonpath={.secrets[0].name}",
        ]);
        !secret.is_empty()
    });
    kubectl_ok(&[
        "-n",
        namespace,
        "get",
        "secret",
        &secret,
        "-o",
        "go-template={{.data.token | base64decode}}",
    ])
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let out = kubectl(&[
            "-n",
            SYSTEM_NAMESPACE,
            "delete",
            "rolebinding",
            &self.binding,
        ]);
        if !out.status.success() {
            eprintln!(
                "cannot delete rolebinding {}: {}",
                self.binding,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
