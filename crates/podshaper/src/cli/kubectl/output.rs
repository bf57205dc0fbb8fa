//! kubectl-style tables, or one JSON document, of the sampled pods.

use anyhow::{Context, Result};
use podshaper_rate::human_decimal;

use super::sample::Row;
use super::Output;

/// What DROPPED and MARKED count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// packets since the limits were attached (`status`)
    Totals,
    /// packets per second over the interval (`top`)
    PerSecond,
}

pub fn print(rows: &[Row], output: Output, columns: Columns) -> Result<()> {
    match output {
        Output::Json => {
            let text =
                serde_json::to_string_pretty(rows).context("cannot encode the rows as JSON")?;
            println!("{text}");
        }
        Output::Table => print!("{}", table(rows, columns)),
    }
    Ok(())
}

/// `19.6Mbit/s`, or `-` for none.
fn bits(value: Option<u64>) -> String {
    value.map_or("-".into(), |v| format!("{}bit/s", human_decimal(v)))
}

fn per_second(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.1}"),
        Some(v) => human_decimal(v.round() as u64),
    }
}

fn cells(r: &Row, columns: Columns) -> Vec<String> {
    let c = &r.counters;
    let (dropped, marked) = match columns {
        Columns::Totals => (
            human_decimal(c.egress_dropped + c.ingress_dropped),
            human_decimal(c.egress_marked + c.ingress_marked),
        ),
        Columns::PerSecond => (
            per_second(r.dropped_per_second),
            per_second(r.marked_per_second),
        ),
    };
    let mode = match (r.waiting, &r.ingress_mode) {
        (true, _) => "(waiting for the pod's cgroup)".into(),
        (false, Some(m)) => m.clone(),
        (false, None) => "-".into(),
    };
    vec![
        r.namespace.clone(),
        r.pod.clone(),
        r.node.clone(),
        r.egress_bps.map_or("-".into(), |v| bits(Some(v))),
        bits(r.egress_rate_bps),
        r.ingress_bps.map_or("-".into(), |v| bits(Some(v))),
        bits(r.ingress_rate_bps),
        dropped,
        marked,
        mode,
    ]
}

/// Columns padded to their widest cell, three spaces apart, as kubectl
/// prints them; a pod's problems on the lines below it.
fn table(rows: &[Row], columns: Columns) -> String {
    let (dropped, marked) = match columns {
        Columns::Totals => ("DROPPED", "MARKED"),
        Columns::PerSecond => ("DROPPED/S", "MARKED/S"),
    };
    let header: Vec<String> = [
        "NAMESPACE",
        "POD",
        "NODE",
        "EGRESS LIMIT",
        "EGRESS RATE",
        "INGRESS LIMIT",
        "INGRESS RATE",
        dropped,
        marked,
        "INGRESS MODE",
    ]
    .map(String::from)
    .to_vec();
    let body: Vec<Vec<String>> = rows.iter().map(|r| cells(r, columns)).collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in &body {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("   ").trim_end())
    };
    let mut out = line(&header);
    for (cells, r) in body.iter().zip(rows) {
        out.push_str(&line(cells));
        for problem in &r.problems {
            out.push_str(&format!("  ! {problem}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use podshaper_api::CountersDocument;

    use super::*;

    fn row() -> Row {
        Row {
            namespace: "shop".into(),
            pod: "web-0".into(),
            pod_uid: "u".into(),
            node: "node-a".into(),
            daemon_pod: "podshaper-x".into(),
            cgroup: "/kubepods/besteffort/podu".into(),
            waiting: false,
            egress_bps: Some(20_000_000),
            ingress_bps: None,
            egress_rate_bps: Some(19_612_345),
            ingress_rate_bps: Some(12_000),
            dropped_per_second: Some(2.0),
            marked_per_second: Some(1234.0),
            interval_seconds: Some(1.0),
            ingress_mode: None,
            counters: CountersDocument {
                egress_dropped: 7,
                ingress_dropped: 3,
                egress_marked: 1500,
                ..Default::default()
            },
            problems: vec!["no queue".into()],
        }
    }

    #[test]
    fn a_table_shows_limits_and_rates_in_bits_per_second() {
        let text = table(&[row()], Columns::Totals);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE   POD     NODE     EGRESS LIMIT"),
            "{text}"
        );
        let cells: Vec<&str> = lines[1]
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            [
                "shop",
                "web-0",
                "node-a",
                "20Mbit/s",
                "19.61Mbit/s",
                "-",
                "12kbit/s",
                "10",
                "1.5k",
                "-"
            ],
            "{text}"
        );
        assert_eq!(lines[2], "  ! no queue");
        let top = table(&[row()], Columns::PerSecond);
        assert!(
            top.contains("DROPPED/S") && top.contains(" 2.0 ") && top.contains("1.23k"),
            "{top}"
        );
    }
}
