//! The controller against a real kube-apiserver (and etcd), with one real
//! daemon per simulated node. There is no kubelet: the tests play it, creating
//! Pods bound to a node, the pods' cgroups under each node's private cgroup
//! root, and the pods' processes in them. Run as root.

mod annotations;
mod cluster;
mod observability;
mod policy;
mod restarts;

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::kube::ApiServer;
use crate::common::{podshaper, ChildGuard};

pub(crate) const EGRESS: &str = "kubernetes.io/egress-bandwidth";
pub(crate) const INGRESS: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_BURST: &str = "podshaper.io/egress-burst";

/// A node as the controller sees it: a cgroup root, its daemon, and the
/// node-scoped controller beside it (as the DaemonSet runs them).
pub(crate) struct SimNode {
    name: String,
    pub(crate) root: TestRoot,
    pub(crate) daemon: TestDaemon,
    controller: Option<ChildGuard>,
    /// the controller's arguments beyond those every test gives
    controller_args: Vec<String>,
    log: PathBuf,
    kubeconfig: PathBuf,
}

impl SimNode {
    fn start(api: &ApiServer, name: &str) -> Self {
        Self::start_with(api, name, &[])
    }

    /// A node whose controller is given `controller_args` too.
    pub(crate) fn start_with(api: &ApiServer, name: &str, controller_args: &[&str]) -> Self {
        let root = TestRoot::new(name);
        let daemon = TestDaemon::start(&root.path, &[]);
        let mut node = Self {
            name: name.to_string(),
            log: api.dir.join(format!("controller-{name}.log")),
            kubeconfig: api.controller_kubeconfig.clone(),
            root,
            daemon,
            controller: None,
            controller_args: controller_args.iter().map(|a| a.to_string()).collect(),
        };
        node.start_controller();
        node
    }

    pub(crate) fn start_controller(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let mut cmd = podshaper();
        cmd.args(["controller", "--node", &self.name, "--resync", "3"])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--daemon", &self.daemon.address()])
            .args(&self.controller_args)
            .env("PODSHAPER_LOG", "info,podshaper_controller=debug")
            .stdout(Stdio::null())
            .stderr(log);
        self.controller = Some(ChildGuard::spawn(&mut cmd));
    }

    pub(crate) fn kill9_controller(&mut self) {
        if let Some(g) = self.controller.take() {
            g.kill9();
        }
    }

    /// The kubelet's cgroup for a BestEffort pod (systemd driver).
    pub(crate) fn pod_cgroup_path(uid: &str) -> String {
        format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        )
    }

    pub(crate) fn make_pod_cgroup(&self, uid: &str) -> podshaper_shaper::Cgroup {
        self.root.make(&Self::pod_cgroup_path(uid))
    }

    fn remove_pod_cgroup(&self, uid: &str) {
        let path = self.root.path.join(Self::pod_cgroup_path(uid));
        fs::remove_dir(&path).unwrap_or_else(|e| panic!("rmdir {}: {e}", path.display()));
    }

    /// (egress, ingress) bit/s the daemon enforces for a pod, if any.
    pub(crate) fn limits(&self, uid: &str) -> Option<(Option<u64>, Option<u64>)> {
        self.daemon
            .list()
            .into_iter()
            .find(|c| c["pod_uid"].as_str() == Some(uid) && c["cgroup"].as_str() != Some(""))
            .map(|c| (c["egress_bps"].as_u64(), c["ingress_bps"].as_u64()))
    }

    fn controller_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits up to `timeout` for `check` to hold.
pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    node: Option<&SimNode>,
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            let log = node.map(|n| n.controller_log()).unwrap_or_default();
            panic!("timed out after {timeout:?} waiting for {what}\ncontroller log:\n{log}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) const CONVERGE: Duration = Duration::from_secs(20);

pub(crate) fn unique_ns(tag: &str) -> String {
    format!("t-{tag}-{}", std::process::id())
}
