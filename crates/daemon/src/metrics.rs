//! Prometheus metrics (`/metrics`) and health (`/healthz`, `/readyz`), and
//! the JSON status page (`/status`, crate::status_page) on the same address.
//!
//! Values are read from the BPF maps at scrape time, so they are as fresh as
//! the scrape and cost nothing between scrapes.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result};
use podshaper_shaper::{CgroupStatus, DirectionCounters};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::service::State;

type Labels = Vec<(String, String)>;
/// name, help, and which counter a family reads
type CounterFamily = (&'static str, &'static str, fn(&DirectionCounters) -> u64);

/// Reads every limited cgroup on each scrape.
#[derive(Clone)]
struct ShaperCollector {
    state: Arc<State>,
}

impl std::fmt::Debug for ShaperCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShaperCollector")
    }
}

impl ShaperCollector {
    /// (labels without direction, status) for every limited cgroup.
    fn snapshot(&self) -> Vec<(Labels, CgroupStatus)> {
        let Ok(node) = self.state.node.lock() else {
            return Vec::new();
        };
        let Ok(list) = node.list() else {
            return Vec::new();
        };
        drop(node);
        let names = self.state.pod_names.lock().ok();
        list.into_iter()
            .map(|s| {
                let labels = match names.as_ref().and_then(|n| n.get(&s.cgroup_id)) {
                    Some(p) => vec![
                        ("namespace".into(), p.namespace.clone()),
                        ("pod".into(), p.name.clone()),
                    ],
                    None => vec![(
                        "cgroup".into(),
                        s.path
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                    )],
                };
                (labels, s)
            })
            .collect()
    }
}

impl Collector for ShaperCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot();
        let counters: [CounterFamily; 4] = [
            (
                "podshaper_bytes",
                "Bytes let through, by direction (bytes, the unit of podshaper_limit_bytes_per_second)",
                |c| c.bytes,
            ),
            (
                "podshaper_packets",
                "Packets let through, by direction",
                |c| c.packets,
            ),
            (
                "podshaper_dropped_packets",
                "Packets dropped to hold the limit",
                |c| c.dropped,
            ),
            (
                "podshaper_marked_packets",
                "Packets passed with a congestion signal (ECN CE, or local TCP told to slow down)",
                |c| c.marked,
            ),
        ];
        for (name, help, value) in counters {
            let probe = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
            for (labels, s) in &snapshot {
                for (direction, c) in [
                    ("egress", &s.counters.egress),
                    ("ingress", &s.counters.ingress),
                ] {
                    let mut l = labels.clone();
                    l.push(("direction".into(), direction.into()));
                    ConstCounter::new(value(c)).encode(family.encode_family(&l)?)?;
                }
            }
        }
        limit_family(
            &mut encoder,
            "podshaper_limit_bits_per_second",
            "The limit in force in bits per second (the annotations' unit), by direction",
            &snapshot,
            |bits| i64::try_from(bits).unwrap_or(i64::MAX),
        )?;
        limit_family(
            &mut encoder,
            "podshaper_limit_bytes_per_second",
            "The limit in force in bytes per second (the bits per second limit / 8), by direction: rate(podshaper_bytes_total) divided by it is the utilisation",
            &snapshot,
            |bits| bits as f64 / 8.0,
        )?;
        let probe = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "podshaper_ingress_mode",
            "1 for what holds the cgroup's ingress to its limit: mode queue (a queue in front of it, the policer behind) or policer (the policer alone)",
            None,
            probe.metric_type(),
        )?;
        for (labels, s) in &snapshot {
            if let Some(mode) = s.ingress_mode {
                let mut l = labels.clone();
                l.push(("mode".into(), mode.as_str().into()));
                ConstGauge::new(1i64).encode(family.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

/// A gauge family of each cgroup's limits, by direction, in the unit
/// `value` converts bits per second to.
fn limit_family<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    snapshot: &[(Labels, CgroupStatus)],
    value: fn(u64) -> N,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, s) in snapshot {
        for (direction, limit) in [("egress", s.limits.egress), ("ingress", s.limits.ingress)] {
            if let Some(limit) = limit {
                let mut l = labels.clone();
                l.push(("direction".into(), direction.into()));
                ConstGauge::new(value(limit.rate.bits_per_sec()))
                    .encode(family.encode_family(&l)?)?;
            }
        }
    }
    Ok(())
}

/// Serves the metrics and health endpoints until `stop` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ShaperCollector {
        state: state.clone(),
    }));
    let routes = crate::status_page::routes(state.clone());
    let ready: podshaper_telemetry::Readiness = Arc::new(move || {
        let state = state.clone();
        Box::pin(async move { ready(&state).await })
    });
    podshaper_telemetry::serve_with(listener, registry, ready, routes, stop)
        .await
        .context("cannot serve metrics")
}

/// Ready while the node state can be read (the shaper is loaded and usable),
/// on a thread of the blocking pool (crate::service::State::blocking says why).
async fn ready(state: &Arc<State>) -> bool {
    let readable = state
        .blocking(|state| matches!(state.node.lock(), Ok(node) if node.list().is_ok()))
        .await;
    matches!(readable, Ok(true))
}
