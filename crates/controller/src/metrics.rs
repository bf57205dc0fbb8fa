//! The controller's own metrics (served by `podshaper_telemetry` at
//! `--metrics-addr`) and its readiness. docs/controller.md lists each
//! metric and what it means.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// What a change the daemon accepted did to a pod.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ChangeKind {
    /// limits set on a pod that had none
    Attach,
    /// a pod's limits changed
    Update,
    /// a pod's limits removed
    Detach,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ErrorKind {
    /// a daemon could not be reached, or did not answer in time
    DaemonUnreachable,
    /// a daemon answered an attach or a detach with an error
    DaemonRefused,
    /// cluster mode: a node's daemon address could not be found
    NodeAddress,
    /// cluster mode: the nodes could not be listed
    NodeList,
    /// the pod watch failed (it is retried with a backoff)
    Watch,
    /// an Event could not be published
    Event,
    /// a BandwidthPolicy's status could not be written
    PolicyStatus,
}

impl ChangeKind {
    /// The `kind` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attach => "attach",
            Self::Update => "update",
            Self::Detach => "detach",
        }
    }
}

impl ErrorKind {
    pub const ALL: [Self; 7] = [
        Self::DaemonUnreachable,
        Self::DaemonRefused,
        Self::NodeAddress,
        Self::NodeList,
        Self::Watch,
        Self::Event,
        Self::PolicyStatus,
    ];

    /// The `kind` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DaemonUnreachable => "daemon_unreachable",
            Self::DaemonRefused => "daemon_refused",
            Self::NodeAddress => "node_address",
            Self::NodeList => "node_list",
            Self::Watch => "watch",
            Self::Event => "event",
            Self::PolicyStatus => "policy_status",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DaemonLabels {
    node: String,
    daemon: String,
}

pub struct Metrics {
    passes: Counter,
    changes: Family<KindLabel, Counter>,
    errors: Family<KindLabel, Counter>,
    reachable: Family<DaemonLabels, Gauge>,
    latency: Histogram,
    ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Bucket bounds of the latency histogram: 5 ms to about 10 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 12)
}

impl Metrics {
    /// The metrics, registered in `registry` (names gain `_total` and the
    /// unit there).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            passes: Counter::default(),
            changes: Family::default(),
            errors: Family::default(),
            reachable: Family::default(),
            latency: Histogram::new(latency_buckets()),
            ready: AtomicBool::new(false),
        };
        // Every kind from 0: a series that first appears at 1 hides its
        // first event from rate() and increase().
        for kind in [ChangeKind::Attach, ChangeKind::Update, ChangeKind::Detach] {
            let _ = m.changes.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        for kind in ErrorKind::ALL {
            let _ = m.errors.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        registry.register(
            "podshaper_controller_reconcile_passes",
            "Passes that compared a node's pods with what its daemon enforces, one per node and pass, whatever their outcome",
            m.passes.clone(),
        );
        registry.register(
            "podshaper_controller_changes_applied",
            "Changes a daemon accepted, by kind: attach (limits for a pod that had none, in force or held for its cgroup), update (new limits), detach (limits removed)",
            m.changes.clone(),
        );
        registry.register(
            "podshaper_controller_errors",
            "Errors by kind: daemon_unreachable, daemon_refused, node_address, node_list, watch, event, policy_status",
            m.errors.clone(),
        );
        registry.register(
            "podshaper_controller_daemon_reachable",
            "1 if the node's daemon answered the last pass, 0 if it could not be reached",
            m.reachable.clone(),
        );
        registry.register_with_unit(
            "podshaper_controller_pod_change_to_limit",
            "Time from the watch event that carried a pod's change to the daemon's answer that the new limits (or their removal) are in force",
            Unit::Seconds,
            m.latency.clone(),
        );
        m
    }

    pub fn pass(&self) {
        self.passes.inc();
    }

    pub fn applied(&self, kind: ChangeKind) {
        self.changes
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn reachable(&self, node: &str, daemon: &str, up: bool) {
        let labels = DaemonLabels {
            node: node.to_string(),
            daemon: daemon.to_string(),
        };
        self.reachable.get_or_create(&labels).set(i64::from(up));
    }

    pub fn change_in_force(&self, took: Duration) {
        self.latency.observe(took.as_secs_f64());
    }

    /// The first list of pods was reconciled and the daemon answered.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
        out
    }

    #[test]
    fn every_metric_has_its_unit_in_its_name_and_its_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.pass();
        m.applied(ChangeKind::Attach);
        m.applied(ChangeKind::Detach);
        m.error(ErrorKind::DaemonRefused);
        m.reachable("node-1", "unix:///run/podshaper/podshaper.sock", true);
        m.change_in_force(Duration::from_millis(12));
        let text = encode(&registry);
        for line in [
            "podshaper_controller_changes_applied_total{kind=\"update\"} 0",
            "podshaper_controller_errors_total{kind=\"watch\"} 0",
            "podshaper_controller_reconcile_passes_total 1",
            "podshaper_controller_changes_applied_total{kind=\"attach\"} 1",
            "podshaper_controller_changes_applied_total{kind=\"detach\"} 1",
            "podshaper_controller_errors_total{kind=\"daemon_refused\"} 1",
            "podshaper_controller_daemon_reachable{node=\"node-1\",daemon=\"unix:///run/podshaper/podshaper.sock\"} 1",
            "podshaper_controller_pod_change_to_limit_seconds_count 1",
            "podshaper_controller_pod_change_to_limit_seconds_bucket{le=\"0.02\"} 1",
            "podshaper_controller_pod_change_to_limit_seconds_bucket{le=\"0.01\"} 0",
            "# UNIT podshaper_controller_pod_change_to_limit_seconds seconds",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
    }

    #[test]
    fn the_latency_buckets_span_5_ms_to_10_s() {
        let b: Vec<f64> = latency_buckets().collect();
        assert_eq!(b.first().copied(), Some(0.005));
        assert!(b.last().is_some_and(|l| *l > 10.0), "{b:?}");
    }

    #[test]
    fn ready_only_once_set() {
        let m = Metrics::new(&mut Registry::default());
        assert!(!m.is_ready());
        m.set_ready();
        assert!(m.is_ready());
    }
}
