//! podshaper on a real node: the kubelet, containerd, runc and the CNI
//! bridge that `scripts/kube-node.sh up` runs on this machine, podshaper
//! installed from deploy/ with `kubectl apply -k`, pods made from manifests
//! with kubectl, traffic between pods over the bridge measured by iperf3 at
//! the receiver, one second at a time.
//!
//! Built only with `--features node-tests` (scripts/test.sh starts the node
//! and runs them after the other tests).

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod dashboard;
mod lifecycle;
mod limits;
mod plugin;
mod policy;

const EGRESS: &str = "kubernetes.io/egress-bandwidth";
const INGRESS: &str = "kubernetes.io/ingress-bandwidth";
const PORT: u16 = 5201;

/// The mean of a run's seconds.
fn mean(seconds: &[f64]) -> f64 {
    seconds.iter().sum::<f64>() / seconds.len().max(1) as f64
}
