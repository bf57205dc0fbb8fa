//! Level-triggered planning for one node: from what the node's pods ask for
//! and what its daemon enforces, the steps that close the gap. Pure, so that
//! every rule is tested without a cluster.

use std::collections::HashMap;

use podshaper_api::pb;

use crate::annotations::{Direction, PodBandwidth};

/// A pod on the node, as the plan needs it.
#[derive(Debug, Clone)]
pub struct PodWant {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub bandwidth: PodBandwidth,
}

/// What the daemon enforces for a pod's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforced {
    pub egress: Option<pb::DirectionLimit>,
    pub ingress: Option<pb::DirectionLimit>,
}

impl Enforced {
    pub fn from_status(s: &pb::CgroupStatus) -> Self {
        Self {
            egress: s.egress,
            ingress: s.ingress,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Set the pod's limits (attach, or change live).
    Apply {
        uid: String,
        namespace: String,
        name: String,
        limits: Enforced,
    },
    /// Remove the limits of a pod that no longer asks for any, or is gone.
    Remove { uid: String },
}

/// The steps that make `enforced` (keyed by pod UID) match `pods`.
pub fn plan(pods: &[PodWant], enforced: &HashMap<String, Enforced>) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut wanted_uids = std::collections::HashSet::new();
    for pod in pods {
        let now = enforced.get(&pod.uid);
        let limits = Enforced {
            egress: want(&pod.bandwidth.egress, now.and_then(|n| n.egress)),
            ingress: want(&pod.bandwidth.ingress, now.and_then(|n| n.ingress)),
        };
        if limits.egress.is_none() && limits.ingress.is_none() {
            // Nothing wanted (and nothing kept): removed below if enforced.
            continue;
        }
        wanted_uids.insert(pod.uid.as_str());
        if now.is_some_and(|n| same(n, &limits)) {
            continue;
        }
        steps.push(Step::Apply {
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            limits,
        });
    }
    let mut gone: Vec<_> = enforced
        .keys()
        .filter(|uid| !wanted_uids.contains(uid.as_str()))
        .cloned()
        .collect();
    gone.sort();
    steps.extend(gone.into_iter().map(|uid| Step::Remove { uid }));
    steps
}

/// A direction's wanted limit; an invalid annotation keeps what is in force.
fn want(d: &Direction, now: Option<pb::DirectionLimit>) -> Option<pb::DirectionLimit> {
    match d {
        Direction::Absent => None,
        Direction::Limit(w) => Some(pb::DirectionLimit {
            bits_per_second: w.rate.bits_per_sec(),
            burst_bytes: w.burst_bytes(),
        }),
        Direction::Invalid(_) => now,
    }
}

fn same(a: &Enforced, b: &Enforced) -> bool {
    same_direction(a.egress, b.egress) && same_direction(a.ingress, b.ingress)
}

/// The kernel holds rates in whole bytes per second: compare them so.
fn same_direction(a: Option<pb::DirectionLimit>, b: Option<pb::DirectionLimit>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.bits_per_second / 8 == b.bits_per_second / 8 && a.burst_bytes == b.burst_bytes
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::annotations::{EGRESS_BANDWIDTH, INGRESS_BANDWIDTH};

    fn pod(uid: &str, pairs: &[(&str, &str)]) -> PodWant {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PodWant {
            uid: uid.into(),
            namespace: "ns".into(),
            name: format!("pod-{uid}"),
            bandwidth: PodBandwidth::from_annotations(&map),
        }
    }

    fn limit(bits: u64) -> Option<pb::DirectionLimit> {
        let rate = podshaper_rate::Rate::from_bits_per_sec(bits).ok()?;
        Some(pb::DirectionLimit {
            bits_per_second: bits,
            burst_bytes: rate.default_burst().bytes(),
        })
    }

    fn enforced(pairs: &[(&str, Option<u64>, Option<u64>)]) -> HashMap<String, Enforced> {
        pairs
            .iter()
            .map(|(uid, e, i)| {
                (
                    uid.to_string(),
                    Enforced {
                        egress: e.and_then(limit),
                        ingress: i.and_then(limit),
                    },
                )
            })
            .collect()
    }

    fn apply(uid: &str, e: Option<u64>, i: Option<u64>) -> Step {
        Step::Apply {
            uid: uid.into(),
            namespace: "ns".into(),
            name: format!("pod-{uid}"),
            limits: Enforced {
                egress: e.and_then(limit),
                ingress: i.and_then(limit),
            },
        }
    }

    #[test]
    fn new_annotation_attaches() {
        let pods = [pod("a", &[(EGRESS_BANDWIDTH, "10M")])];
        assert_eq!(
            plan(&pods, &HashMap::new()),
            [apply("a", Some(10_000_000), None)]
        );
    }

    #[test]
    fn matching_limits_need_nothing() {
        let pods = [pod(
            "a",
            &[(EGRESS_BANDWIDTH, "10M"), (INGRESS_BANDWIDTH, "20M")],
        )];
        let now = enforced(&[("a", Some(10_000_000), Some(20_000_000))]);
        assert_eq!(plan(&pods, &now), []);
    }

    #[test]
    fn rate_read_back_rounded_to_bytes_still_matches() {
        // 1001 bit/s is held as 125 bytes/s and reads back as 1000 bit/s.
        let pods = [pod("a", &[(EGRESS_BANDWIDTH, "1001")])];
        let mut now = enforced(&[("a", Some(1001), None)]);
        if let Some(e) = now.get_mut("a").and_then(|e| e.egress.as_mut()) {
            e.bits_per_second = 1000;
        }
        assert_eq!(plan(&pods, &now), []);
    }

    #[test]
    fn changed_annotation_updates() {
        let pods = [pod("a", &[(EGRESS_BANDWIDTH, "50M")])];
        let now = enforced(&[("a", Some(10_000_000), None)]);
        assert_eq!(plan(&pods, &now), [apply("a", Some(50_000_000), None)]);
    }

    #[test]
    fn removed_annotation_or_gone_pod_detaches() {
        let pods = [pod("a", &[("other", "x")])];
        let now = enforced(&[
            ("a", Some(10_000_000), None),
            ("gone", None, Some(1_000_000)),
        ]);
        assert_eq!(
            plan(&pods, &now),
            [
                Step::Remove { uid: "a".into() },
                Step::Remove { uid: "gone".into() }
            ]
        );
    }

    #[test]
    fn removing_one_direction_keeps_the_other() {
        let pods = [pod("a", &[(INGRESS_BANDWIDTH, "20M")])];
        let now = enforced(&[("a", Some(10_000_000), Some(20_000_000))]);
        assert_eq!(plan(&pods, &now), [apply("a", None, Some(20_000_000))]);
    }

    #[test]
    fn invalid_annotation_keeps_the_limit_in_force() {
        let pods = [pod(
            "a",
            &[(EGRESS_BANDWIDTH, "lots"), (INGRESS_BANDWIDTH, "30M")],
        )];
        let now = enforced(&[("a", Some(10_000_000), Some(20_000_000))]);
        // egress keeps 10M, ingress changes to 30M
        assert_eq!(
            plan(&pods, &now),
            [apply("a", Some(10_000_000), Some(30_000_000))]
        );
        // all invalid: nothing changes, nothing is removed
        let pods = [pod("a", &[(EGRESS_BANDWIDTH, "lots")])];
        let now = enforced(&[("a", Some(10_000_000), None)]);
        assert_eq!(plan(&pods, &now), []);
    }

    #[test]
    fn invalid_annotation_on_unlimited_pod_does_nothing() {
        let pods = [pod("a", &[(EGRESS_BANDWIDTH, "0")])];
        assert_eq!(plan(&pods, &HashMap::new()), []);
    }
}
