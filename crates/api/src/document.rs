//! The JSON document of one limited cgroup, as DESIGN.md fixes it: what
//! `podshaper status|list -o json` prints and what the daemon serves at
//! `/status` beside its metrics (read by `kubectl podshaper` through the
//! API server's pods/proxy). Field names are a contract.

use serde::{Deserialize, Serialize};

use crate::pb;

/// One limited cgroup (or a pod whose limits wait for its cgroup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDocument {
    /// empty while `waiting`
    pub cgroup: String,
    pub cgroup_id: u64,
    pub pod_uid: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub waiting: bool,
    /// `queue`, `policer`, or null without an ingress limit
    pub ingress_mode: Option<String>,
    pub problems: Vec<String>,
    /// bits per second, null: unlimited
    pub egress_bps: Option<u64>,
    pub ingress_bps: Option<u64>,
    /// the egress burst, else the ingress burst
    pub burst_bytes: Option<u64>,
    pub egress_burst_bytes: Option<u64>,
    pub ingress_burst_bytes: Option<u64>,
    pub counters: CountersDocument,
}

/// A cgroup's counters since its limits were attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersDocument {
    pub egress_bytes: u64,
    pub egress_packets: u64,
    pub egress_dropped: u64,
    pub egress_marked: u64,
    pub ingress_bytes: u64,
    pub ingress_packets: u64,
    pub ingress_dropped: u64,
    pub ingress_marked: u64,
}

impl From<&pb::CgroupStatus> for CgroupDocument {
    fn from(s: &pb::CgroupStatus) -> Self {
        let e = s.egress_counters.unwrap_or_default();
        let i = s.ingress_counters.unwrap_or_default();
        let egress_burst = s.egress.map(|d| d.burst_bytes);
        let ingress_burst = s.ingress.map(|d| d.burst_bytes);
        let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
        Self {
            cgroup: s.cgroup.clone(),
            cgroup_id: s.cgroup_id,
            pod_uid: s.pod_uid.clone(),
            pod_namespace: some(&s.pod_namespace),
            pod_name: some(&s.pod_name),
            waiting: s.waiting,
            ingress_mode: some(&s.ingress_mode),
            problems: s.problems.clone(),
            egress_bps: s.egress.map(|d| d.bits_per_second),
            ingress_bps: s.ingress.map(|d| d.bits_per_second),
            burst_bytes: egress_burst.or(ingress_burst),
            egress_burst_bytes: egress_burst,
            ingress_burst_bytes: ingress_burst,
            counters: CountersDocument {
                egress_bytes: e.bytes,
                egress_packets: e.packets,
                egress_dropped: e.dropped,
                egress_marked: e.marked,
                ingress_bytes: i.bytes,
                ingress_packets: i.packets,
                ingress_dropped: i.dropped,
                ingress_marked: i.marked,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_becomes_the_documented_fields_and_reads_back() {
        let status = pb::CgroupStatus {
            cgroup: "/kubepods/besteffort/podabc".into(),
            cgroup_id: 42,
            pod_uid: Some("abc".into()),
            ingress: Some(pb::DirectionLimit {
                bits_per_second: 20_000_000,
                burst_bytes: 131_072,
            }),
            ingress_counters: Some(pb::DirectionCounters {
                bytes: 1,
                packets: 2,
                dropped: 3,
                marked: 4,
            }),
            pod_namespace: "ns".into(),
            pod_name: "rx".into(),
            ingress_mode: "queue".into(),
            ..Default::default()
        };
        let doc = CgroupDocument::from(&status);
        let value = serde_json::to_value(&doc).expect("serializes");
        // exactly the fields `podshaper list -o json` prints
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        assert_eq!(
            keys(&value),
            [
                "burst_bytes",
                "cgroup",
                "cgroup_id",
                "counters",
                "egress_bps",
                "egress_burst_bytes",
                "ingress_bps",
                "ingress_burst_bytes",
                "ingress_mode",
                "pod_name",
                "pod_namespace",
                "pod_uid",
                "problems",
                "waiting",
            ]
        );
        assert_eq!(
            keys(&value["counters"]),
            [
                "egress_bytes",
                "egress_dropped",
                "egress_marked",
                "egress_packets",
                "ingress_bytes",
                "ingress_dropped",
                "ingress_marked",
                "ingress_packets",
            ]
        );
        assert_eq!(value["egress_bps"], serde_json::Value::Null);
        assert_eq!(value["ingress_bps"], 20_000_000);
        assert_eq!(value["burst_bytes"], 131_072);
        assert_eq!(value["ingress_mode"], "queue");
        assert_eq!(value["counters"]["ingress_dropped"], 3);
        assert_eq!(value["counters"]["egress_bytes"], 0);
        let back: CgroupDocument = serde_json::from_value(value).expect("reads back");
        assert_eq!(back, doc);
    }
}
