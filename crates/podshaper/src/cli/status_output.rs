//! How `status` and `list` print the daemon's cgroup statuses: a table for
//! people, and for scripts one JSON or YAML document of [`StatusDoc`]s,
//! whose field names, types and nulls DESIGN.md fixes.

use anyhow::{Context, Result};
use clap::ValueEnum;
use podshaper_api::pb;
use podshaper_rate::{human_decimal, ByteSize, Rate};

/// The `-o` of `status` and `list`.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// One cgroup's status as `-o json` and `-o yaml` print it (an array of
/// these), the document the daemon also serves at `/status`. The field
/// names are a contract (DESIGN.md, "-o json").
pub use podshaper_api::CgroupDocument as StatusDoc;

/// `statuses` as `output` shows them.
pub fn render(statuses: &[pb::CgroupStatus], output: Output) -> Result<String> {
    let docs = || statuses.iter().map(StatusDoc::from).collect::<Vec<_>>();
    Ok(match output {
        Output::Json => serde_json::to_string(&docs()).context("cannot write JSON")? + "\n",
        Output::Yaml => yaml_serde::to_string(&docs()).context("cannot write YAML")?,
        Output::Table => table(statuses),
    })
}

/// A limit's rate as a person reads it, or "unlimited".
pub fn rate_text(d: Option<&pb::DirectionLimit>) -> String {
    match d.and_then(|d| Rate::from_bits_per_sec(d.bits_per_second).ok()) {
        Some(r) => r.to_string(),
        None => "unlimited".into(),
    }
}

fn table(statuses: &[pb::CgroupStatus]) -> String {
    let rows: Vec<[String; 7]> = statuses
        .iter()
        .map(|s| {
            let e = s.egress_counters.unwrap_or_default();
            let i = s.ingress_counters.unwrap_or_default();
            let burst = s
                .egress
                .or(s.ingress)
                .and_then(|d| ByteSize::from_bytes(d.burst_bytes).ok());
            let pod = match (s.pod_name.as_str(), s.pod_uid.as_deref()) {
                ("", None) => "-".into(),
                ("", Some(uid)) => uid.to_string(),
                (name, _) => format!("{}/{name}", s.pod_namespace),
            };
            let ingress = match s.ingress_mode.as_str() {
                "" => rate_text(s.ingress.as_ref()),
                mode => format!("{} ({mode})", rate_text(s.ingress.as_ref())),
            };
            [
                match s.waiting {
                    true => "(waiting for the pod's cgroup)".into(),
                    false => s.cgroup.clone(),
                },
                pod,
                rate_text(s.egress.as_ref()),
                ingress,
                burst.map_or("-".into(), |b| b.to_string()),
                format!("{}B / {}B", human_decimal(e.bytes), human_decimal(i.bytes)),
                format!("{} / {}", e.dropped + i.dropped, e.marked + i.marked),
            ]
        })
        .collect();
    let header = [
        "CGROUP",
        "POD",
        "EGRESS",
        "INGRESS",
        "BURST",
        "SENT / RECEIVED",
        "DROPPED / MARKED",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut out = line(header.to_vec());
    for (r, s) in rows.iter().zip(statuses) {
        out += &line(r.iter().map(String::as_str).collect());
        for problem in &s.problems {
            out += &format!("  ! {problem}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    /// A limited pod's cgroup with counters, and limits held for a pod
    /// whose cgroup is not there yet (no names, no ingress, no counters).
    fn statuses() -> Vec<pb::CgroupStatus> {
        vec![
            pb::CgroupStatus {
                cgroup: "kubepods/besteffort/pod1234".into(),
                cgroup_id: 4242,
                pod_uid: Some("1234".into()),
                egress: Some(pb::DirectionLimit {
                    bits_per_second: 10_000_000,
                    burst_bytes: 131_072,
                }),
                ingress: Some(pb::DirectionLimit {
                    bits_per_second: 20_000_000,
                    burst_bytes: 262_144,
                }),
                egress_counters: Some(pb::DirectionCounters {
                    bytes: 1,
                    packets: 2,
                    dropped: 3,
                    marked: 4,
                }),
                ingress_counters: Some(pb::DirectionCounters {
                    bytes: 5,
                    packets: 6,
                    dropped: 7,
                    marked: 8,
                }),
                waiting: false,
                pod_namespace: "shop".into(),
                pod_name: "web-0".into(),
                ingress_mode: "queue".into(),
                problems: vec!["the ingress queue is not built: no ifb".into()],
            },
            pb::CgroupStatus {
                pod_uid: Some("5678".into()),
                ingress: Some(pb::DirectionLimit {
                    bits_per_second: 1_000_000,
                    burst_bytes: 65_536,
                }),
                waiting: true,
                ..Default::default()
            },
        ]
    }

    fn json_of(statuses: &[pb::CgroupStatus]) -> Value {
        let text = render(statuses, Output::Json).expect("json");
        serde_json::from_str(&text).expect("one JSON document")
    }

    #[test]
    fn the_json_fields_are_those_design_md_fixes_with_their_types_and_nulls() {
        let doc = json_of(&statuses());
        let [limited, waiting] = doc.as_array().expect("an array").as_slice() else {
            panic!("two statuses: {doc}");
        };
        let keys = |v: &Value| {
            v.as_object()
                .expect("an object")
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
        };
        let fields: BTreeSet<String> = [
            "cgroup",
            "cgroup_id",
            "pod_uid",
            "pod_namespace",
            "pod_name",
            "waiting",
            "ingress_mode",
            "problems",
            "egress_bps",
            "ingress_bps",
            "burst_bytes",
            "egress_burst_bytes",
            "ingress_burst_bytes",
            "counters",
        ]
        .map(String::from)
        .into();
        let counters: BTreeSet<String> = ["egress", "ingress"]
            .iter()
            .flat_map(|d| ["bytes", "packets", "dropped", "marked"].map(|c| format!("{d}_{c}")))
            .collect();
        for status in [limited, waiting] {
            assert_eq!(keys(status), fields, "{status}");
            assert_eq!(keys(&status["counters"]), counters, "{status}");
        }
        assert_eq!(
            *limited,
            serde_json::json!({
                "cgroup": "kubepods/besteffort/pod1234",
                "cgroup_id": 4242,
                "pod_uid": "1234",
                "pod_namespace": "shop",
                "pod_name": "web-0",
                "waiting": false,
                "ingress_mode": "queue",
                "problems": ["the ingress queue is not built: no ifb"],
                "egress_bps": 10_000_000,
                "ingress_bps": 20_000_000,
                "burst_bytes": 131_072,
                "egress_burst_bytes": 131_072,
                "ingress_burst_bytes": 262_144,
                "counters": {
                    "egress_bytes": 1, "egress_packets": 2, "egress_dropped": 3, "egress_marked": 4,
                    "ingress_bytes": 5, "ingress_packets": 6, "ingress_dropped": 7, "ingress_marked": 8,
                },
            })
        );
        // absent names, mode and limits are null, never "" or 0
        for null in [
            "pod_namespace",
            "pod_name",
            "ingress_mode",
            "egress_bps",
            "egress_burst_bytes",
        ] {
            assert_eq!(waiting[null], Value::Null, "{null}: {waiting}");
        }
        assert_eq!(waiting["cgroup"], "");
        assert_eq!(waiting["cgroup_id"], 0);
        assert_eq!(waiting["waiting"], true);
        assert_eq!(
            waiting["burst_bytes"], 65_536,
            "ingress's burst without egress"
        );
        assert_eq!(waiting["problems"], serde_json::json!([]));
        assert_eq!(waiting["counters"]["ingress_bytes"], 0);
    }

    #[test]
    fn yaml_holds_the_same_document_as_json() {
        let yaml = render(&statuses(), Output::Yaml).expect("yaml");
        assert!(
            yaml.starts_with("- cgroup: kubepods/besteffort/pod1234\n"),
            "{yaml}"
        );
        assert!(yaml.contains("\n  pod_name: web-0\n"), "{yaml}");
        assert!(yaml.contains("\n  egress_bps: null\n"), "{yaml}");
        assert!(yaml.contains("\n    ingress_marked: 8\n"), "{yaml}");
        let parsed: Vec<StatusDoc> = yaml_serde::from_str(&yaml).expect("the YAML reads back");
        let docs: Vec<StatusDoc> = statuses().iter().map(StatusDoc::from).collect();
        assert_eq!(parsed, docs);
        let as_json: Value = yaml_serde::from_str(&yaml).expect("yaml as a value");
        assert_eq!(as_json, json_of(&statuses()));
    }

    #[test]
    fn nothing_limited_is_an_empty_array_in_json_and_yaml() {
        assert_eq!(render(&[], Output::Json).expect("json"), "[]\n");
        assert_eq!(render(&[], Output::Yaml).expect("yaml"), "[]\n");
    }

    #[test]
    fn the_table_names_the_pod_its_ingress_mode_and_problems() {
        let table = render(&statuses(), Output::Table).expect("table");
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("CGROUP"), "{table}");
        assert!(lines[1].contains("shop/web-0"), "{table}");
        assert!(lines[1].contains("(queue)"), "{table}");
        assert_eq!(lines[2], "  ! the ingress queue is not built: no ifb");
        assert!(
            lines[3].starts_with("(waiting for the pod's cgroup)  5678"),
            "{table}"
        );
    }
}
