//! The podshaper controller: watches Pods, turns their bandwidth annotations
//! into limits, and tells each node's daemon. Level-triggered: every pass
//! compares what a node's pods ask for with what its daemon enforces and
//! closes the gap (`plan`), so restarts of anything and lost watches converge
//! by the next pass.

pub mod annotations;
pub mod crd;
pub mod daemons;
pub mod events;
pub mod layout;
pub mod lease;
pub mod metrics;
mod pass;
mod pending;
pub mod plan;
pub mod policy;
mod policy_status;
mod sync;

pub use daemons::DaemonTarget;
pub use lease::LeaseConfig;
pub use sync::{run, Config};

/// What can go wrong talking to the API server or a daemon. None of these
/// stop the controller: the node is retried on the next pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot reach the daemon of node {node}")]
    Daemon {
        node: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("node {0} has no InternalIP address to reach its daemon at")]
    NoInternalIp(String),
    #[error("per-node daemon addresses need the Node API (cluster mode)")]
    NoNodeApi,
    #[error("the pod watch ended")]
    WatchEnded,
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
