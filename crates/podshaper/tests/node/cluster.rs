//! The one-node cluster that `scripts/kube-node.sh up` runs on this machine
//! (kubelet, containerd, runc, the CNI bridge), and podshaper installed on
//! it from deploy/ as an operator installs it. The tests share the node and
//! the DaemonSet, so they take turns ([`exclusive`]); each works in a
//! namespace of its own, deleted when it ends, whether it passed or not.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Written by `scripts/kube-node.sh up`.
pub const KUBECONFIG: &str = "/var/lib/podshaper-node/kubeconfig";
/// The tests' workload image (iperf3, a shell), built by `kube-node.sh up`.
pub const WORKLOAD_IMAGE: &str = "podshaper-e2e:1";
/// The daemon's socket on the node, as deploy/ puts it.
pub const DAEMON_SOCKET: &str = "/run/podshaper/podshaper.sock";
/// The daemon's pins on the node, as deploy/ puts them.
pub const PINS: &str = "/sys/fs/bpf/podshaper";
pub const SYSTEM_NAMESPACE: &str = "podshaper-system";

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// One test at a time: they share the DaemonSet, and they measure rates.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn kubectl(args: &[&str]) -> Output {
    assert!(
        Path::new(KUBECONFIG).exists(),
        "{KUBECONFIG} is missing: start the node with `bash scripts/kube-node.sh up` (scripts/test.sh does)"
    );
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(KUBECONFIG)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"))
}

pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl apply -f -` of a manifest.
pub fn apply(manifest: &str) {
    let mut child = Command::new("kubectl")
        .args(["--kubeconfig", KUBECONFIG, "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(manifest.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write to kubectl: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("kubectl: {e}"));
    assert!(
        out.status.success(),
        "kubectl apply failed: {}\n{manifest}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `done` every 100 ms until it holds, or panics naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// podshaper installed as an operator does: `kubectl apply -k deploy/`, the
/// DaemonSet rolled out, and its daemon answering on the node's socket.
pub fn ensure_installed() {
    let deploy = repo_path("deploy").display().to_string();
    kubectl_ok(&["apply", "-k", &deploy]);
    // BandwidthPolicies are accepted once the API server serves the CRD
    kubectl_ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/bandwidthpolicies.podshaper.io",
    ]);
    wait_rollout("180s");
    wait_for(
        "the daemon answers on the node's socket",
        Duration::from_secs(60),
        || podshaper(&["list", "-o", "json"]).status.success(),
    );
}

/// Waits (`kubectl rollout status`, at most `timeout`, e.g. "120s") until
/// the DaemonSet's pods run its current template.
pub fn wait_rollout(timeout: &str) {
    kubectl_ok(&[
        "-n",
        SYSTEM_NAMESPACE,
        "rollout",
        "status",
        "daemonset/podshaper",
        &format!("--timeout={timeout}"),
    ]);
}

/// The DaemonSet's pod (there is one node).
pub fn daemon_pod() -> String {
    kubectl_ok(&[
        "-n",
        SYSTEM_NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=podshaper",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])
}

/// The podshaper CLI on the node, against the DaemonSet's daemon.
pub fn podshaper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podshaper"))
        .args(args)
        .env("PODSHAPER_DAEMON", format!("unix://{DAEMON_SOCKET}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run podshaper: {e}"))
}

/// `podshaper list -o json` on the node.
pub fn daemon_list() -> Vec<Value> {
    let out = podshaper(&["list", "-o", "json"]);
    assert!(
        out.status.success(),
        "podshaper list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(a)) => a,
        other => panic!("list -o json gave {other:?}"),
    }
}

/// The daemon's entry for a pod, if it has one.
pub fn daemon_entry(uid: &str) -> Option<Value> {
    daemon_list().into_iter().find(|e| e["pod_uid"] == uid)
}

/// A namespace for one test, deleted (with its pods) when the test ends.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "e2e-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        kubectl_ok(&["create", "namespace", &name]);
        // pods are admitted once the namespace's ServiceAccount exists
        wait_for(
            "the namespace's default ServiceAccount",
            Duration::from_secs(60),
            || {
                kubectl(&["-n", &name, "get", "serviceaccount", "default"])
                    .status
                    .success()
            },
        );
        Self { name }
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        kubectl_ok(&all)
    }

    /// Creates a pod from a manifest ([`PodSpec`]) with kubectl.
    pub fn create(&self, pod: &PodSpec) {
        apply(&pod.manifest(&self.name));
    }

    pub fn uid(&self, pod: &str) -> String {
        self.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"])
    }

    pub fn ip(&self, pod: &str) -> String {
        let mut ip = String::new();
        wait_for(
            &format!("pod {pod} has an IP"),
            Duration::from_secs(60),
            || {
                ip = self.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
                !ip.is_empty()
            },
        );
        ip
    }

    pub fn phase(&self, pod: &str) -> String {
        self.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
    }

    pub fn wait_running(&self, pod: &str) {
        wait_for(
            &format!("pod {pod} running"),
            Duration::from_secs(120),
            || {
                let phase = self.phase(pod);
                assert!(phase != "Failed", "pod {pod} failed: {}", self.logs(pod));
                phase == "Running"
            },
        );
    }

    /// Waits for a pod's command to end well, and returns its output.
    pub fn wait_succeeded(&self, pod: &str, timeout: Duration) -> String {
        wait_for(&format!("pod {pod} succeeded"), timeout, || {
            let phase = self.phase(pod);
            assert!(phase != "Failed", "pod {pod} failed: {}", self.logs(pod));
            phase == "Succeeded"
        });
        self.logs(pod)
    }

    pub fn logs(&self, pod: &str) -> String {
        let out = kubectl(&["-n", &self.name, "logs", pod]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets (Some) or removes (None) an annotation of a running pod.
    pub fn annotate(&self, pod: &str, key: &str, value: Option<&str>) {
        let arg = match value {
            Some(v) => format!("{key}={v}"),
            None => format!("{key}-"),
        };
        self.kubectl_ok(&["annotate", "--overwrite", "pod", pod, &arg]);
    }

    /// The reasons and notes of the Events about a pod.
    pub fn events(&self, pod: &str) -> Vec<(String, String, String)> {
        let out = self.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={pod}"),
            "-o",
            "json",
        ]);
        let doc: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        doc["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|e| {
                        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                        (s("type"), s("reason"), s("message"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn delete_pod(&self, pod: &str) {
        self.kubectl_ok(&["delete", "pod", pod, "--grace-period=1", "--wait=true"]);
    }
}

impl Drop for TestNamespace {
    /// The namespace goes in the background (its pods' grace period is 1 s):
    /// the next test need not wait for the namespace controller, and
    /// `kube-node.sh down` removes whatever is left.
    fn drop(&mut self) {
        let out = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
        if !out.status.success() {
            eprintln!(
                "cannot delete namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A pod of the workload image running one shell command.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub host_network: bool,
    /// run as this user instead of root
    pub user: Option<u32>,
    pub script: String,
}

impl PodSpec {
    pub fn new(name: &str, script: &str) -> Self {
        Self {
            name: name.into(),
            script: script.into(),
            ..Default::default()
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    pub fn run_as(mut self, user: u32) -> Self {
        self.user = Some(user);
        self
    }

    fn manifest(&self, namespace: &str) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "apiVersion: v1\nkind: Pod\nmetadata:");
        let _ = writeln!(m, "  name: {}\n  namespace: {namespace}", self.name);
        if !self.labels.is_empty() {
            let _ = writeln!(m, "  labels:");
            for (k, v) in &self.labels {
                let _ = writeln!(m, "    {k}: {}", serde_json::Value::from(v.as_str()));
            }
        }
        if !self.annotations.is_empty() {
            let _ = writeln!(m, "  annotations:");
            for (k, v) in &self.annotations {
                let _ = writeln!(m, "    {k}: {}", serde_json::Value::from(v.as_str()));
            }
        }
        let _ = writeln!(
            m,
            "spec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1"
        );
        if self.host_network {
            let _ = writeln!(m, "  hostNetwork: true");
        }
        if let Some(user) = self.user {
            let _ = writeln!(
                m,
                "  securityContext:\n    runAsUser: {user}\n    runAsGroup: {user}"
            );
        }
        let _ = writeln!(
            m,
            "  containers:\n    - name: main\n      image: {WORKLOAD_IMAGE}"
        );
        let _ = writeln!(
            m,
            "      command: [\"/bin/sh\", \"-c\", {}]",
            serde_json::Value::from(self.script.as_str())
        );
        m
    }
}

/// Per-second receive rates (bit/s) from an iperf3 server's `-J` report.
pub fn iperf_intervals(json: &str) -> Vec<f64> {
    let doc: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("not an iperf3 JSON report ({e}): {json}"));
    let intervals = doc["intervals"]
        .as_array()
        .unwrap_or_else(|| panic!("no intervals in the iperf3 report: {json}"));
    intervals
        .iter()
        .filter(|i| i["sum"]["seconds"].as_f64().unwrap_or(0.0) > 0.5)
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0))
        .collect()
}

/// An iperf3 server for one test run (`-1`), its JSON report on stdout.
pub fn iperf_server(port: u16) -> String {
    format!("exec iperf3 -s -1 -J -p {port}")
}

/// An iperf3 client that tries until the server listens, then sends for
/// `seconds` (its report goes nowhere: the server's is the measurement).
pub fn iperf_client(server: &str, port: u16, seconds: u32) -> String {
    format!(
        "until iperf3 -c {server} -p {port} -t {seconds} >/dev/null 2>/tmp/err; do \
         grep -q 'Connection refused\\|No route' /tmp/err || {{ cat /tmp/err; exit 1; }}; sleep 0.2; done"
    )
}

pub fn mbit(bits: f64) -> String {
    format!("{:.2}", bits / 1e6)
}
