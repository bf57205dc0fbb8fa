//! A real Kubernetes API server for one test: etcd and kube-apiserver on
//! loopback (unique ports, a private data directory), both stopped and their
//! files removed when the test ends. The kube-apiserver binary is built from
//! Debian's source by `scripts/kube-build.sh` and cached outside the
//! repository.
//!
//! Two identities: an admin (the test, playing the kubelet and the operator)
//! and the controller's ServiceAccount, whose only rights are those that
//! `deploy/rbac.yaml` grants it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::{unique_port, ChildGuard};

const DEFAULT_APISERVER: &str = "/var/cache/podshaper/kube-v1.20.2/kube-apiserver";
const ADMIN_TOKEN: &str = "podshaper-test-admin";
const CONTROLLER_TOKEN: &str = "podshaper-test-controller";
/// The controller's ServiceAccount as deploy/ names it.
pub const CONTROLLER_SA_NAMESPACE: &str = "podshaper-system";
pub const CONTROLLER_SA: &str = "podshaper";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn apiserver_binary() -> PathBuf {
    let path = std::env::var_os("PODSHAPER_KUBE_APISERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_APISERVER));
    assert!(
        path.exists(),
        "{} is missing: build it with `bash scripts/kube-build.sh` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Children die with the test thread that started them, even on SIGKILL.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub struct ApiServer {
    pub dir: PathBuf,
    pub port: u16,
    etcd_port: u16,
    etcd: Option<ChildGuard>,
    apiserver: Option<ChildGuard>,
    pub admin_kubeconfig: PathBuf,
    pub controller_kubeconfig: PathBuf,
    runtime: tokio::runtime::Runtime,
    client: Option<kube::Client>,
}

impl ApiServer {
    pub fn start() -> Self {
        // Fail early, with how to build it, if the binary is missing.
        apiserver_binary();
        let dir = std::env::temp_dir().join(format!(
            "podshaper-test-kube-{}-{}",
            std::process::id(),
            unique_port()
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let pki = super::tls::write_test_pki(&dir);
        let sa_key = rcgen::KeyPair::generate().expect("service account key");
        fs::write(dir.join("sa.key"), sa_key.serialize_pem()).expect("write sa.key");
        fs::write(dir.join("sa.pub"), sa_key.public_key_pem()).expect("write sa.pub");
        fs::write(
            dir.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,admin-uid,system:masters\n\
                 {CONTROLLER_TOKEN},system:serviceaccount:{CONTROLLER_SA_NAMESPACE}:{CONTROLLER_SA},controller-uid,\"system:serviceaccounts,system:serviceaccounts:{CONTROLLER_SA_NAMESPACE},system:authenticated\"\n"
            ),
        )
        .expect("write tokens.csv");
        let port = unique_port();
        let etcd_port = unique_port();
        let kubeconfig = |token: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: u}}\ncurrent-context: test\n",
                ca = pki.ca
            )
        };
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        let controller_kubeconfig = dir.join("controller.kubeconfig");
        fs::write(&admin_kubeconfig, kubeconfig(ADMIN_TOKEN)).expect("write kubeconfig");
        fs::write(&controller_kubeconfig, kubeconfig(CONTROLLER_TOKEN)).expect("write kubeconfig");
        // etcd and the API server starting take both cores for seconds
        let starting = super::busy_turn();
        let mut s = Self {
            dir,
            port,
            etcd_port,
            etcd: None,
            apiserver: None,
            admin_kubeconfig,
            controller_kubeconfig,
            runtime: tokio::runtime::Runtime::new().expect("tokio runtime"),
            client: None,
        };
        s.start_etcd();
        s.start_apiserver();
        s.client = Some(s.make_client());
        // The controller's own RBAC, as deployed.
        s.kubectl_ok(&[
            "apply",
            "-f",
            &repo_file("deploy/namespace.yaml").display().to_string(),
        ]);
        s.kubectl_ok(&[
            "apply",
            "-f",
            &repo_file("deploy/rbac.yaml").display().to_string(),
        ]);
        drop(starting);
        s
    }

    fn log(&self, name: &str) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .unwrap_or_else(|e| panic!("cannot open {name}: {e}"))
    }

    fn start_etcd(&mut self) {
        let peer = unique_port();
        let url = format!("http://127.0.0.1:{}", self.etcd_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(self.log("etcd.log"));
        die_with_parent(&mut cmd);
        self.etcd = Some(ChildGuard::spawn(&mut cmd));
    }

    /// Starts kube-apiserver and waits until /readyz answers.
    pub fn start_apiserver(&mut self) {
        // as at the first start (the restart tests start it again)
        let _starting = super::busy_turn();
        let d = |f: &str| self.dir.join(f).display().to_string();
        let mut cmd = Command::new(apiserver_binary());
        cmd.args([
            "--etcd-servers",
            &format!("http://127.0.0.1:{}", self.etcd_port),
        ])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
        ])
        .args([
            "--secure-port",
            &self.port.to_string(),
            "--insecure-port",
            "0",
        ])
        .args([
            "--tls-cert-file",
            &d("server.pem"),
            "--tls-private-key-file",
            &d("server-key.pem"),
        ])
        .args([
            "--token-auth-file",
            &d("tokens.csv"),
            "--authorization-mode",
            "RBAC",
            // as clusters run it (kubeadm's default): the DaemonSet's
            // init container that mounts bpffs is privileged
            "--allow-privileged=true",
        ])
        .args(["--service-account-issuer", "https://kubernetes.default.svc"])
        .args(["--service-account-key-file", &d("sa.pub")])
        .args(["--service-account-signing-key-file", &d("sa.key")])
        .args(["--service-cluster-ip-range", "10.0.0.0/24"])
        // No controller-manager makes the namespaces' default ServiceAccounts.
        .args(["--disable-admission-plugins", "ServiceAccount"])
        .stdout(Stdio::null())
        .stderr(self.log("apiserver.log"));
        die_with_parent(&mut cmd);
        self.apiserver = Some(ChildGuard::spawn(&mut cmd));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 90 s; see {}",
                self.dir.join("apiserver.log").display()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill_apiserver(&mut self) {
        if let Some(g) = self.apiserver.take() {
            g.kill9();
        }
    }

    fn make_client(&self) -> kube::Client {
        let file = Kubeconfig::read_from(&self.admin_kubeconfig).expect("read kubeconfig");
        self.runtime.block_on(async {
            let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .expect("kubeconfig");
            kube::Client::try_from(config).expect("kube client")
        })
    }

    fn client(&self) -> kube::Client {
        self.client.clone().expect("client")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"))
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn create_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
        self.runtime
            .block_on(api.create(&PostParams::default(), &ns))
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }

    /// `kubectl ARGS` with `input` on its standard input; panics on failure.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("kubectl {args:?}: write stdin: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\ninput:\n{input}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a pod bound to `node` (as the scheduler would); returns its UID.
    pub fn create_pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        annotations: &[(&str, &str)],
    ) -> String {
        self.create_labeled_pod(ns, name, node, &[], annotations)
    }

    /// The same, with labels.
    pub fn create_labeled_pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> String {
        let annotations: BTreeMap<_, _> = annotations.iter().map(|(k, v)| (*k, *v)).collect();
        let labels: BTreeMap<_, _> = labels.iter().map(|(k, v)| (*k, *v)).collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "main", "image": "registry.invalid/none"}],
            },
        }))
        .expect("pod");
        let api: Api<Pod> = Api::namespaced(self.client(), ns);
        let created = self
            .runtime
            .block_on(api.create(&PostParams::default(), &pod))
            .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"));
        created.metadata.uid.expect("pod uid")
    }

    /// Sets (Some) or removes (None) annotations of a pod.
    pub fn annotate(&self, ns: &str, name: &str, changes: &[(&str, Option<&str>)]) {
        self.try_annotate(ns, name, changes)
            .unwrap_or_else(|e| panic!("annotate {ns}/{name}: {e}"));
    }

    /// The same, returning the API server's refusal (or absence) as an error.
    pub fn try_annotate(
        &self,
        ns: &str,
        name: &str,
        changes: &[(&str, Option<&str>)],
    ) -> Result<(), kube::Error> {
        let map: serde_json::Map<String, serde_json::Value> = changes
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.map_or(serde_json::Value::Null, |v| json!(v)),
                )
            })
            .collect();
        let api: Api<Pod> = Api::namespaced(self.client(), ns);
        let patch = json!({"metadata": {"annotations": map}});
        self.runtime
            .block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .map(|_| ())
    }

    /// A Node whose daemon is reached at `internal_ip` (cluster mode).
    pub fn create_node(&self, name: &str, internal_ip: &str) {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}]},
        }))
        .expect("node");
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client());
        self.runtime
            .block_on(api.create(&PostParams::default(), &node))
            .unwrap_or_else(|e| panic!("create node {name}: {e}"));
    }

    pub fn delete_pod(&self, ns: &str, name: &str) {
        let api: Api<Pod> = Api::namespaced(self.client(), ns);
        // No kubelet confirms the deletion: remove the object at once.
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        self.runtime
            .block_on(api.delete(name, &params))
            .unwrap_or_else(|e| panic!("delete pod {ns}/{name}: {e}"));
    }

    /// (type, reason, note) of the events about a pod.
    pub fn events(&self, ns: &str, pod: &str) -> Vec<(String, String, String)> {
        let api: Api<Event> = Api::namespaced(self.client(), ns);
        let list = self
            .runtime
            .block_on(api.list(&ListParams::default()))
            .unwrap_or_else(|e| panic!("list events in {ns}: {e}"));
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.apiserver.take();
        self.etcd.take();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
