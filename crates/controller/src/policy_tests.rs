use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use super::*;
use crate::annotations::{
    EGRESS_BANDWIDTH as EGRESS_ANNOTATION, INGRESS_BANDWIDTH as INGRESS_ANNOTATION,
};
use crate::crd::BandwidthPolicySpec;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn policy(name: &str, labels: &[(&str, &str)], spec: BandwidthPolicySpec) -> Policy {
    let mut spec = spec;
    if !labels.is_empty() {
        spec.pod_selector.match_labels = Some(map(labels));
    }
    Policy::from_resource(&BandwidthPolicy {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        spec,
        status: None,
    })
}

fn egress(rate: &str) -> BandwidthPolicySpec {
    BandwidthPolicySpec {
        egress_bandwidth: Some(rate.into()),
        ..Default::default()
    }
}

fn limit(d: &Direction) -> Option<(u64, Option<u64>)> {
    match d {
        Direction::Limit(w) => Some((w.rate.bits_per_sec(), w.burst.map(|b| b.bytes()))),
        _ => None,
    }
}

fn pod(annotations: &[(&str, &str)], policies: &[Policy]) -> Effective {
    effective(
        "ns",
        &map(&[("app", "web")]),
        &PodBandwidth::from_annotations(&map(annotations)),
        policies,
    )
}

#[test]
fn an_empty_selector_selects_every_pod_of_its_namespace_only() {
    let all = policy("all", &[], egress("10M"));
    let e = pod(&[], std::slice::from_ref(&all));
    assert_eq!(limit(&e.bandwidth.egress), Some((10_000_000, None)));
    assert_eq!(e.egress, Source::Policies(vec!["all".into()]));
    assert_eq!(e.ingress, Source::None);
    assert_eq!(e.bandwidth.ingress, Direction::Absent);
    let other = effective(
        "elsewhere",
        &map(&[("app", "web")]),
        &PodBandwidth::from_annotations(&BTreeMap::new()),
        &[all],
    );
    assert_eq!(other.bandwidth.egress, Direction::Absent);
    assert!(other.policies.is_empty());
}

#[test]
fn a_selector_picks_pods_by_label() {
    let db = policy("db", &[("app", "db")], egress("10M"));
    let web = policy("web", &[("app", "web")], egress("20M"));
    let e = pod(&[], &[db, web]);
    assert_eq!(limit(&e.bandwidth.egress), Some((20_000_000, None)));
    assert_eq!(e.policies, ["web"]);
    assert!(e.conflicts.is_empty());
}

#[test]
fn the_pods_annotation_wins_per_direction() {
    let p = policy(
        "p",
        &[],
        BandwidthPolicySpec {
            egress_bandwidth: Some("10M".into()),
            ingress_bandwidth: Some("20M".into()),
            ..Default::default()
        },
    );
    let e = pod(&[(EGRESS_ANNOTATION, "50M")], &[p]);
    assert_eq!(limit(&e.bandwidth.egress), Some((50_000_000, None)));
    assert_eq!(e.egress, Source::Annotation);
    assert_eq!(limit(&e.bandwidth.ingress), Some((20_000_000, None)));
    assert_eq!(e.ingress, Source::Policies(vec!["p".into()]));
    assert!(e.origin().contains("BandwidthPolicy p"), "{}", e.origin());
    // an invalid annotation is still the pod's: it keeps what is in force
    let p = policy("p", &[], egress("10M"));
    let e = pod(
        &[(INGRESS_ANNOTATION, "1M"), (EGRESS_ANNOTATION, "fast")],
        &[p],
    );
    assert!(matches!(e.bandwidth.egress, Direction::Invalid(_)));
    assert_eq!(e.egress, Source::Annotation);
}

#[test]
fn conflicting_policies_give_the_lowest_ceiling_and_burst() {
    let loose = policy(
        "loose",
        &[],
        BandwidthPolicySpec {
            egress_bandwidth: Some("50M".into()),
            egress_burst: Some("64Ki".into()),
            ..Default::default()
        },
    );
    let strict = policy(
        "strict",
        &[("app", "web")],
        BandwidthPolicySpec {
            egress_bandwidth: Some("5M".into()),
            egress_burst: Some("1Mi".into()),
            ..Default::default()
        },
    );
    let e = pod(&[], &[strict, loose]);
    assert_eq!(
        limit(&e.bandwidth.egress),
        Some((5_000_000, Some(64 * 1024)))
    );
    assert_eq!(
        e.egress,
        Source::Policies(vec!["loose".into(), "strict".into()])
    );
    let text: Vec<String> = e.conflicts.iter().map(|c| c.to_string()).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert_eq!(
        text[0],
        "egressBandwidth: loose asks 50M, strict asks 5M; the lowest, 5M, is in force"
    );
    assert!(text[1].starts_with("egressBurst:"), "{text:?}");
    // the same value twice is no conflict
    let e = pod(
        &[],
        &[
            policy("a", &[], egress("5M")),
            policy("b", &[], egress("5M")),
        ],
    );
    assert!(e.conflicts.is_empty());
    assert_eq!(limit(&e.bandwidth.egress), Some((5_000_000, None)));
}

#[test]
fn a_burst_alone_limits_nothing_but_joins_a_ceiling_from_another_policy() {
    let burst = BandwidthPolicySpec {
        egress_burst: Some("256Ki".into()),
        ..Default::default()
    };
    let e = pod(&[], &[policy("b", &[], burst.clone())]);
    assert_eq!(e.bandwidth.egress, Direction::Absent);
    assert_eq!(e.egress, Source::None);
    let e = pod(
        &[],
        &[policy("b", &[], burst), policy("r", &[], egress("10M"))],
    );
    assert_eq!(
        limit(&e.bandwidth.egress),
        Some((10_000_000, Some(256 * 1024)))
    );
}

#[test]
fn a_bad_value_is_named_and_keeps_what_is_in_force() {
    for (spec, field, value) in [
        (egress("fast"), EGRESS_BANDWIDTH, "fast"),
        (egress("2P"), EGRESS_BANDWIDTH, "2P"),
        (
            BandwidthPolicySpec {
                egress_bandwidth: Some("10M".into()),
                egress_burst: Some("2Gi".into()),
                ..Default::default()
            },
            EGRESS_BURST,
            "2Gi",
        ),
    ] {
        let bad = policy("bad", &[], spec);
        assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
        let error = &bad.errors[0];
        assert!(
            error.contains(&format!("{field}={value:?}"))
                && error.contains("1k")
                && error.contains("1P"),
            "{error}"
        );
        // with a good policy beside it, the direction still keeps what is in force
        let e = pod(&[], &[bad, policy("good", &[], egress("1M"))]);
        assert!(
            matches!(&e.bandwidth.egress, Direction::Invalid(i) if i.key == field),
            "{:?}",
            e.bandwidth.egress
        );
        assert_eq!(e.bandwidth.ingress, Direction::Absent);
    }
}

#[test]
fn a_selector_that_cannot_be_read_selects_nothing() {
    let mut spec = egress("10M");
    spec.pod_selector.match_expressions = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
            key: "app".into(),
            operator: "Sometimes".into(),
            values: None,
        },
    ]);
    let p = policy("odd", &[], spec);
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert!(p.errors[0].starts_with("podSelector"), "{:?}", p.errors);
    let e = pod(&[], &[p]);
    assert_eq!(e.bandwidth.egress, Direction::Absent);
}
