//! A pod's effective limits: its own annotations, and for every field and
//! direction they leave unset, what the BandwidthPolicies selecting it ask.
//! Pure, so that every rule is tested without a cluster.
//!
//! Rules, per direction and field (ceiling, burst):
//! - the pod's annotation wins over any policy (an invalid annotation keeps
//!   what is in force, as without policies);
//! - among the policies that select the pod, the lowest value wins, so that
//!   no policy leaves a pod less limited than another policy asked; policies
//!   that ask different values are reported as a conflict;
//! - a policy value that cannot be parsed gives the pods nothing for that
//!   direction: what is in force stays in force, as with a bad annotation,
//!   and the policy's status names the field, the value and the bounds.

use std::collections::BTreeMap;
use std::fmt;

use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;
use podshaper_rate::{human_decimal, ByteSize, Rate, MAX_RATE_BITS, MIN_RATE_BITS};

use crate::annotations::{Direction, Invalid, PodBandwidth, Wanted};
use crate::crd::BandwidthPolicy;

pub const EGRESS_BANDWIDTH: &str = "egressBandwidth";
pub const INGRESS_BANDWIDTH: &str = "ingressBandwidth";
pub const EGRESS_BURST: &str = "egressBurst";
pub const INGRESS_BURST: &str = "ingressBurst";

/// One direction of a policy, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Side {
    rate: Option<Rate>,
    burst: Option<ByteSize>,
    /// a value of this direction cannot be used
    invalid: Option<Invalid>,
}

/// A BandwidthPolicy as the rules need it.
#[derive(Debug, Clone)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// `None`: a selector that cannot be read selects nothing
    selector: Option<Selector>,
    egress: Side,
    ingress: Side,
    /// What is wrong with the policy, for its status.
    pub errors: Vec<String>,
}

impl Policy {
    pub fn from_resource(p: &BandwidthPolicy) -> Self {
        let mut errors = Vec::new();
        let selector = match Selector::try_from(p.spec.pod_selector.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(format!("podSelector: {e}; the policy selects no pod"));
                None
            }
        };
        let egress = side(
            &p.spec.egress_bandwidth,
            &p.spec.egress_burst,
            EGRESS_BANDWIDTH,
            EGRESS_BURST,
        );
        let ingress = side(
            &p.spec.ingress_bandwidth,
            &p.spec.ingress_burst,
            INGRESS_BANDWIDTH,
            INGRESS_BURST,
        );
        errors.extend(
            [&egress.invalid, &ingress.invalid]
                .into_iter()
                .flatten()
                .map(|i| {
                    format!(
                        "{}={:?}: {} (accepted: rates {} to {} bit/s, bursts 4Ki to 1Gi bytes); \
                         the pods keep the limit in force for this direction",
                        i.key,
                        i.value,
                        i.reason,
                        human_decimal(MIN_RATE_BITS),
                        human_decimal(MAX_RATE_BITS)
                    )
                }),
        );
        Self {
            namespace: p.namespace().unwrap_or_default(),
            name: p.name_any(),
            selector,
            egress,
            ingress,
            errors,
        }
    }

    /// Whether the policy applies to a pod of `namespace` with `labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace && self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

fn side(
    rate: &Option<String>,
    burst: &Option<String>,
    rate_key: &'static str,
    burst_key: &'static str,
) -> Side {
    let mut s = Side::default();
    if let Some(v) = rate {
        match Rate::from_kubernetes(v) {
            Ok(r) => s.rate = Some(r),
            Err(e) => {
                s.invalid = Some(Invalid {
                    key: rate_key,
                    value: v.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }
    if let (Some(v), None) = (burst, &s.invalid) {
        match ByteSize::from_kubernetes(v) {
            Ok(b) => s.burst = Some(b),
            Err(e) => {
                s.invalid = Some(Invalid {
                    key: burst_key,
                    value: v.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }
    s
}

/// Where a direction's limit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// no annotation and no policy: unlimited
    None,
    Annotation,
    /// these policies of the pod's namespace
    Policies(Vec<String>),
}

/// Policies that ask different values of one field for the same pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub field: &'static str,
    /// (policy, its value), by name
    pub values: Vec<(String, String)>,
    /// the value in force
    pub chosen: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values: Vec<String> = self
            .values
            .iter()
            .map(|(p, v)| format!("{p} asks {v}"))
            .collect();
        write!(
            f,
            "{}: {}; the lowest, {}, is in force",
            self.field,
            values.join(", "),
            self.chosen
        )
    }
}

/// A pod's limits, whichever way they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub bandwidth: PodBandwidth,
    pub egress: Source,
    pub ingress: Source,
    /// the policies that select the pod, by name
    pub policies: Vec<String>,
    pub conflicts: Vec<Conflict>,
}

impl Effective {
    /// How the BandwidthLimited event names where the limits come from:
    /// "egress from BandwidthPolicy web, ingress from the pod's annotations".
    pub fn origin(&self) -> String {
        let one = |direction: &str, s: &Source| match s {
            Source::None => None,
            Source::Annotation => Some(format!("{direction} from the pod's annotations")),
            Source::Policies(p) => {
                Some(format!("{direction} from BandwidthPolicy {}", p.join(", ")))
            }
        };
        [one("egress", &self.egress), one("ingress", &self.ingress)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The pod's effective limits, from its annotations and `policies` (those
/// of any namespace: only the ones that select the pod count).
pub fn effective(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    annotations: &PodBandwidth,
    policies: &[Policy],
) -> Effective {
    let mut selecting: Vec<&Policy> = policies
        .iter()
        .filter(|p| p.selects(namespace, labels))
        .collect();
    selecting.sort_by(|a, b| a.name.cmp(&b.name));
    let mut conflicts = Vec::new();
    let (egress, egress_source) = direction(
        &annotations.egress,
        &selecting,
        |p| &p.egress,
        [EGRESS_BANDWIDTH, EGRESS_BURST],
        &mut conflicts,
    );
    let (ingress, ingress_source) = direction(
        &annotations.ingress,
        &selecting,
        |p| &p.ingress,
        [INGRESS_BANDWIDTH, INGRESS_BURST],
        &mut conflicts,
    );
    Effective {
        bandwidth: PodBandwidth { egress, ingress },
        egress: egress_source,
        ingress: ingress_source,
        policies: selecting.iter().map(|p| p.name.clone()).collect(),
        conflicts,
    }
}

fn direction(
    annotation: &Direction,
    policies: &[&Policy],
    side: impl Fn(&Policy) -> &Side,
    [rate_field, burst_field]: [&'static str; 2],
    conflicts: &mut Vec<Conflict>,
) -> (Direction, Source) {
    if *annotation != Direction::Absent {
        return (annotation.clone(), Source::Annotation);
    }
    let asking: Vec<&Policy> = policies
        .iter()
        .copied()
        .filter(|p| {
            let s = side(p);
            s.rate.is_some() || s.burst.is_some() || s.invalid.is_some()
        })
        .collect();
    let names = || asking.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    if let Some(bad) = asking.iter().find_map(|p| side(p).invalid.clone()) {
        return (Direction::Invalid(bad), Source::Policies(names()));
    }
    let rate = lowest(
        &asking,
        |p| side(p).rate,
        rate_field,
        |r| human_decimal(r.bits_per_sec()),
        conflicts,
    );
    let Some(rate) = rate else {
        // bursts without a ceiling limit nothing
        return (Direction::Absent, Source::None);
    };
    let burst = lowest(
        &asking,
        |p| side(p).burst,
        burst_field,
        |b| b.bytes().to_string(),
        conflicts,
    );
    (
        Direction::Limit(Wanted { rate, burst }),
        Source::Policies(names()),
    )
}

/// The lowest of the policies' values for a field; a conflict when they differ.
fn lowest<T: Copy + Ord>(
    policies: &[&Policy],
    value: impl Fn(&Policy) -> Option<T>,
    field: &'static str,
    show: impl Fn(T) -> String,
    conflicts: &mut Vec<Conflict>,
) -> Option<T> {
    let values: Vec<(String, T)> = policies
        .iter()
        .filter_map(|p| Some((p.name.clone(), value(p)?)))
        .collect();
    let min = values.iter().map(|(_, v)| *v).min()?;
    if values.iter().any(|(_, v)| *v != min) {
        conflicts.push(Conflict {
            field,
            values: values.iter().map(|(p, v)| (p.clone(), show(*v))).collect(),
            chosen: show(min),
        });
    }
    Some(min)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
