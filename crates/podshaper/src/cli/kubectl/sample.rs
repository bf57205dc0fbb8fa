//! Two reads of each node's daemon, `interval` apart, joined with the pods
//! by UID: the limits, the rate over the interval, drops and marks.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use podshaper_api::{CgroupDocument, CountersDocument};
use serde::Serialize;
use tokio::task::JoinSet;

use super::cluster::{Cluster, Daemon, PodRef, Read};

/// One pod's line: what `-o json` prints for it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub node: String,
    /// the daemon pod the numbers come from
    pub daemon_pod: String,
    /// the pod's cgroup on the node (empty while waiting for it)
    pub cgroup: String,
    /// limits held until the kubelet makes the pod's cgroup
    pub waiting: bool,
    /// limits in bits per second, null: unlimited
    pub egress_bps: Option<u64>,
    pub ingress_bps: Option<u64>,
    /// bits per second over the interval, both directions whatever is limited
    pub egress_rate_bps: Option<u64>,
    pub ingress_rate_bps: Option<u64>,
    /// packets per second over the interval, both directions
    pub dropped_per_second: Option<f64>,
    pub marked_per_second: Option<f64>,
    pub interval_seconds: Option<f64>,
    /// `queue`, `policer`, or null without an ingress limit
    pub ingress_mode: Option<String>,
    /// since the limits were attached (the second read)
    pub counters: CountersDocument,
    pub problems: Vec<String>,
}

impl Row {
    /// For ranking: both directions' rates.
    pub fn total_rate(&self) -> f64 {
        (self.egress_rate_bps.unwrap_or(0) + self.ingress_rate_bps.unwrap_or(0)) as f64
    }
}

/// What a sweep of many pods found, and the nodes it could not read.
pub struct Sampled {
    pub rows: Vec<Row>,
    pub errors: Vec<anyhow::Error>,
}

/// One pod: every failure is an error that says what is wrong.
pub async fn one(cluster: &Cluster, pod: PodRef, interval: Duration) -> Result<Vec<Row>> {
    let id = format!("{}/{}", pod.namespace, pod.name);
    let Some(node) = pod.node.clone() else {
        bail!("pod {id} is not scheduled to a node yet: nothing limits it");
    };
    let daemons = cluster.daemons().await?;
    let daemon = daemons.get(&node).ok_or_else(|| cluster.no_daemon(&node))?;
    let (first, second) = two_reads(cluster, daemon, interval).await?;
    let find = |read: &Read| {
        read.cgroups
            .iter()
            .find(|c| c.pod_uid.as_deref() == Some(&pod.uid))
            .cloned()
    };
    match (find(&first), find(&second)) {
        (Some(a), Some(b)) => Ok(vec![row(&pod, daemon, Some((&first, &a)), &second, &b)]),
        (None, Some(b)) => Ok(vec![row(&pod, daemon, None, &second, &b)]),
        (_, None) => Err(not_limited(&pod, &node)),
    }
}

/// Every pod of `pods` that the daemon of its node limits; with
/// `annotated_too`, also the pods with a bandwidth annotation that it does
/// not (with a problem saying so).
pub async fn all(
    cluster: &Cluster,
    pods: Vec<PodRef>,
    interval: Duration,
    annotated_too: bool,
) -> Sampled {
    let mut sampled = Sampled {
        rows: Vec::new(),
        errors: Vec::new(),
    };
    let mut by_node: BTreeMap<String, Vec<PodRef>> = BTreeMap::new();
    for pod in pods {
        if let Some(node) = pod.node.clone() {
            by_node.entry(node).or_default().push(pod);
        }
    }
    if by_node.is_empty() {
        return sampled;
    }
    let daemons = match cluster.daemons().await {
        Ok(d) => d,
        Err(e) => {
            sampled.errors.push(e);
            return sampled;
        }
    };
    let mut reads = JoinSet::new();
    for (node, pods) in by_node {
        match daemons.get(&node) {
            Some(daemon) => {
                let (cluster, daemon) = (cluster.clone(), daemon.clone());
                reads.spawn(async move {
                    let result = two_reads(&cluster, &daemon, interval).await;
                    (daemon, pods, result)
                });
            }
            // a node without podshaper matters only if a pod there asks for a limit
            None if pods.iter().any(|p| !p.annotations.is_empty()) => {
                sampled.errors.push(cluster.no_daemon(&node));
            }
            None => {}
        }
    }
    while let Some(joined) = reads.join_next().await {
        let (daemon, pods, result) = match joined {
            Ok(j) => j,
            Err(e) => {
                sampled
                    .errors
                    .push(anyhow!("a read of a daemon failed: {e}"));
                continue;
            }
        };
        let (first, second) = match result {
            Ok(r) => r,
            Err(e) => {
                sampled.errors.push(e);
                continue;
            }
        };
        let before: HashMap<&str, &CgroupDocument> = by_uid(&first);
        let after: HashMap<&str, &CgroupDocument> = by_uid(&second);
        for pod in &pods {
            match after.get(pod.uid.as_str()) {
                Some(b) => {
                    let a = before.get(pod.uid.as_str()).map(|a| (&first, *a));
                    sampled.rows.push(row(pod, &daemon, a, &second, b));
                }
                None if annotated_too && !pod.annotations.is_empty() => {
                    sampled.rows.push(unlimited_row(pod, &daemon));
                }
                None => {}
            }
        }
    }
    sampled
        .rows
        .sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    sampled
}

async fn two_reads(cluster: &Cluster, daemon: &Daemon, interval: Duration) -> Result<(Read, Read)> {
    let first = cluster.read(daemon).await?;
    tokio::time::sleep(interval).await;
    let second = cluster.read(daemon).await?;
    Ok((first, second))
}

fn by_uid(read: &Read) -> HashMap<&str, &CgroupDocument> {
    read.cgroups
        .iter()
        .filter_map(|c| c.pod_uid.as_deref().map(|u| (u, c)))
        .collect()
}

/// A pod the daemon of its node holds no limits for: why, in words.
fn not_limited(pod: &PodRef, node: &str) -> anyhow::Error {
    let id = format!("{}/{}", pod.namespace, pod.name);
    match pod.annotations.is_empty() {
        true => anyhow!(
            "pod {id} is not limited: it has no kubernetes.io/egress-bandwidth or \
             kubernetes.io/ingress-bandwidth annotation"
        ),
        false => anyhow!(
            "pod {id} is not limited: it has {} but the podshaper daemon on node {node} holds no \
             limits for it (`kubectl describe pod -n {} {}` shows podshaper's events)",
            pod.annotations.join(", "),
            pod.namespace,
            pod.name
        ),
    }
}

/// A pod with an annotation and no limits, as a row with its problem.
fn unlimited_row(pod: &PodRef, daemon: &Daemon) -> Row {
    let problem = format!(
        "not limited: it has {} but the podshaper daemon holds no limits for it \
         (`kubectl describe pod` shows podshaper's events)",
        pod.annotations.join(", ")
    );
    Row {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        node: daemon.node.clone(),
        daemon_pod: daemon.pod.clone(),
        cgroup: String::new(),
        waiting: false,
        egress_bps: None,
        ingress_bps: None,
        egress_rate_bps: None,
        ingress_rate_bps: None,
        dropped_per_second: None,
        marked_per_second: None,
        interval_seconds: None,
        ingress_mode: None,
        counters: CountersDocument::default(),
        problems: vec![problem],
    }
}

/// A limited pod's row from the second read, with rates from the first
/// when it was limited then too.
fn row(
    pod: &PodRef,
    daemon: &Daemon,
    first: Option<(&Read, &CgroupDocument)>,
    second: &Read,
    doc: &CgroupDocument,
) -> Row {
    let rates = first.and_then(|(read, before)| {
        let seconds = second.at.checked_duration_since(read.at)?.as_secs_f64();
        (seconds > 0.0 && before.cgroup_id == doc.cgroup_id)
            .then(|| Rates::between(&before.counters, &doc.counters, seconds))
    });
    let rates = rates.unwrap_or_default();
    Row {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        node: daemon.node.clone(),
        daemon_pod: daemon.pod.clone(),
        cgroup: doc.cgroup.clone(),
        waiting: doc.waiting,
        egress_bps: doc.egress_bps,
        ingress_bps: doc.ingress_bps,
        egress_rate_bps: rates.egress_bps,
        ingress_rate_bps: rates.ingress_bps,
        dropped_per_second: rates.dropped,
        marked_per_second: rates.marked,
        interval_seconds: rates.seconds,
        ingress_mode: doc.ingress_mode.clone(),
        counters: doc.counters,
        problems: doc.problems.clone(),
    }
}

/// Counter changes per second; none where a counter went back (the
/// limits were detached and attached again in between).
#[derive(Debug, Default, PartialEq)]
struct Rates {
    egress_bps: Option<u64>,
    ingress_bps: Option<u64>,
    dropped: Option<f64>,
    marked: Option<f64>,
    seconds: Option<f64>,
}

impl Rates {
    fn between(a: &CountersDocument, b: &CountersDocument, seconds: f64) -> Self {
        let per_second = |x: u64, y: u64| y.checked_sub(x).map(|d| d as f64 / seconds);
        let sum = |x: Option<f64>, y: Option<f64>| Some(x? + y?);
        Self {
            egress_bps: per_second(a.egress_bytes, b.egress_bytes)
                .map(|r| (r * 8.0).round() as u64),
            ingress_bps: per_second(a.ingress_bytes, b.ingress_bytes)
                .map(|r| (r * 8.0).round() as u64),
            dropped: sum(
                per_second(a.egress_dropped, b.egress_dropped),
                per_second(a.ingress_dropped, b.ingress_dropped),
            ),
            marked: sum(
                per_second(a.egress_marked, b.egress_marked),
                per_second(a.ingress_marked, b.ingress_marked),
            ),
            seconds: Some(seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_counters_change_per_second_in_bits() {
        let a = CountersDocument {
            egress_bytes: 1_000_000,
            ingress_bytes: 500,
            egress_dropped: 10,
            ingress_marked: 4,
            ..Default::default()
        };
        let b = CountersDocument {
            egress_bytes: 3_500_000,
            ingress_bytes: 500,
            egress_dropped: 15,
            ingress_dropped: 5,
            ingress_marked: 6,
            ..Default::default()
        };
        let r = Rates::between(&a, &b, 2.0);
        assert_eq!(r.egress_bps, Some(10_000_000));
        assert_eq!(r.ingress_bps, Some(0));
        assert_eq!(r.dropped, Some(5.0));
        assert_eq!(r.marked, Some(1.0));
    }

    #[test]
    fn a_counter_that_went_back_gives_no_rate() {
        let a = CountersDocument {
            egress_bytes: 9_000,
            ..Default::default()
        };
        let r = Rates::between(&a, &CountersDocument::default(), 1.0);
        assert_eq!(r.egress_bps, None);
        assert_eq!(r.ingress_bps, Some(0));
    }
}
