//! The report's table, progress lines and JSON, on a made-up run.

use super::*;

fn rate(bps: u64) -> Rate {
    Rate::from_bits_per_sec(bps).unwrap_or_else(|e| panic!("{e}"))
}

fn cell(mechanism: Mechanism, achieved_bps: f64) -> Cell {
    let podshaper = mechanism == Mechanism::Podshaper;
    Cell {
        direction: Direction::Egress,
        rate: rate(100_000_000),
        traffic: Traffic::Tcp(4),
        mechanism,
        rtt_ms: 0.0,
        delay_line_lost: None,
        achieved_bps,
        achieved_ratio: achieved_bps / 100e6,
        retransmitted_segments: Some(3),
        sent_segments: Some(1000),
        cpu_busy: 0.25,
        cpu_percent_per_gbit: Some(25.0 / (achieved_bps / 1e9)),
        jain_index: Some(0.998),
        flow_bytes: vec![1, 2, 3, 4],
        rtt_p50_ms: Some(1.5),
        rtt_p99_ms: Some(4.25),
        bpf_ns_per_packet: podshaper.then_some(412.4),
        bpf_empty_ns_per_packet: podshaper.then_some(61.0),
        bpf_sockops_ns_per_run: None,
        bpf_sockops_runs: None,
        bpf_host_class_ns_per_run: None,
        bpf_host_class_runs: None,
        bpf_flow_class_ns_per_run: None,
        bpf_flow_class_runs: None,
        shaper_bytes: podshaper.then_some(10),
        shaper_packets: podshaper.then_some(99),
        shaper_dropped: podshaper.then_some(1),
        shaper_marked: podshaper.then_some(0),
        connections: None,
        connections_per_second: None,
        completion_p50_ms: None,
        completion_p99_ms: None,
        failed_connections: None,
    }
}

fn report() -> Report {
    Report {
        congestion_control: "cubic".into(),
        ecn: false,
        ingress_queue: true,
        host_queue: false,
        cells: vec![cell(Mechanism::Podshaper, 95e6), cell(Mechanism::Tbf, 93e6)],
        limit_changes: vec![LimitChange::new(
            rate(100_000_000),
            Mechanism::Podshaper,
            Some(Duration::from_millis(120)),
            vec![(0.05, 1.0)],
        )],
        open_flows: vec![OpenFlows::new(
            Direction::Egress,
            rate(100_000_000),
            4,
            Mechanism::Tbf,
            When::OnRunningFlows,
            vec![1.5, 1.0, 0.96],
        )],
        mechanisms: vec![Mechanism::Podshaper, Mechanism::Tbf],
        measured_ingress: false,
    }
}

#[test]
fn the_table_reads_as_before() {
    let expected = "\
TCP congestion control: cubic
ECN: not asked for
dir          target  traffic    podshaper (ratio/retr%/cpu)     tbf (ratio/retr%/cpu)
egress    100Mbit/s  tcp x4           0.950 / 0.30 / 25%        0.930 / 0.30 / 25%
ratio: goodput at the receiver / target (unlimited: / the target it would have had); cpu: the whole machine busy through the cell (the JSON's cpu_percent_per_gbit: per delivered Gbit/s)

dir          target  traffic    podshaper (rtt p99/jain)      tbf (rtt p99/jain)  bpf ns/pkt (empty)
egress    100Mbit/s  tcp x4             4.25ms / 0.998          4.25ms / 0.998            412 (61)
rtt p99: round trip of a 64-byte request/response beside the bulk flows, one leg through the limit; jain: fairness of the flows' bytes (1 = equal); bpf: mean run time of the shaper's program per packet (kernel BPF statistics), in brackets that of a program that does nothing, on the same packets

limit halved mid-flow (one TCP flow, egress): time until the new rate holds
    100Mbit/s  podshaper  120 ms

a limit put on TCP flows already running, seconds 2-7 after it, of the limit:
  egress    100Mbit/s x4  tbf       on running flows mean 0.980, worst second 0.960, first second 1.500
";
    assert_eq!(report().table(), expected);
}

#[test]
fn progress_lines_name_what_ended() {
    let r = report();
    assert_eq!(
        Progress::Cell(&r.cells[0]).to_string(),
        "egress   100Mbit/s tcp x4   podshaper achieved 0.950 of target, retrans 0.30%, \
             jain 0.998, rtt p50 1.50 ms p99 4.25 ms, bpf 412 ns/pkt (empty program 61), \
             dropped 1.00% marked 0.00%"
    );
    assert_eq!(
        Progress::Change(&r.limit_changes[0]).to_string(),
        "change   100Mbit/s podshaper new limit in effect after 120 ms"
    );
}

#[test]
fn json_names_the_fields_as_the_contract_does() {
    let json = report().to_json().unwrap_or_else(|e| panic!("{e}"));
    let text = json.to_string();
    // keys sorted, as serde_json's maps print them
    assert!(
        text.starts_with("{\"cells\":[{\"achieved_bps\":95000000.0,"),
        "{text}"
    );
    assert_eq!(json["cells"][0]["target_bps"], 100_000_000);
    assert_eq!(json["cells"][0]["traffic"], "tcp x4");
    assert_eq!(
        json["cells"][1]["bpf_ns_per_packet"],
        serde_json::Value::Null
    );
    assert_eq!(json["limit_changes"][0]["change_to_effect_ms"], 120.0);
    assert_eq!(json["open_flows"][0]["direction"], "egress");
    assert_eq!(json["open_flows"][0]["limited"], "on running flows");
    assert_eq!(json["open_flows"][0]["seconds_ratio"][0], 1.5);
    assert!(json.get("mechanisms").is_none(), "{text}");
}

/// A short-connection row beside a TCP row, for two mechanisms.
fn with_short_connections() -> Report {
    let short = Traffic::Short(podshaper_netlab::short::ShortConnections {
        size: 64 * 1024,
        concurrency: 32,
    });
    let mut r = report();
    for (mechanism, ratio, per_sec) in [
        (Mechanism::Podshaper, 0.991, 94.5),
        (Mechanism::Tbf, 0.957, 91.2),
    ] {
        let mut c = cell(mechanism, ratio * 100e6);
        c.traffic = short;
        c.jain_index = None;
        c.flow_bytes = Vec::new();
        c.rtt_p50_ms = None;
        c.rtt_p99_ms = None;
        c.connections = Some((per_sec * 4.0) as u64);
        c.connections_per_second = Some(per_sec);
        c.completion_p50_ms = Some(330.0);
        c.completion_p99_ms = Some(412.25);
        c.failed_connections = Some(0);
        r.cells.push(c);
    }
    r.limit_changes.clear();
    r.open_flows.clear();
    r
}

#[test]
fn short_connections_get_a_table_of_their_own() {
    let expected = "\
TCP congestion control: cubic
ECN: not asked for
dir          target  traffic         podshaper (ratio/retr%/cpu)     tbf (ratio/retr%/cpu)
egress    100Mbit/s  tcp x4                0.950 / 0.30 / 25%        0.930 / 0.30 / 25%
egress    100Mbit/s  short 64KiB:32        0.991 / 0.30 / 25%        0.957 / 0.30 / 25%
ratio: goodput at the receiver / target (unlimited: / the target it would have had); cpu: the whole machine busy through the cell (the JSON's cpu_percent_per_gbit: per delivered Gbit/s)

dir          target  traffic         podshaper (rtt p99/jain)      tbf (rtt p99/jain)  bpf ns/pkt (empty)
egress    100Mbit/s  tcp x4                  4.25ms / 0.998          4.25ms / 0.998            412 (61)
egress    100Mbit/s  short 64KiB:32                   - / -                   - / -            412 (61)
rtt p99: round trip of a 64-byte request/response beside the bulk flows, one leg through the limit; jain: fairness of the flows' bytes (1 = equal); bpf: mean run time of the shaper's program per packet (kernel BPF statistics), in brackets that of a program that does nothing, on the same packets

dir          target  traffic         podshaper (conn/s / p50 / p99)        tbf (conn/s / p50 / p99)
egress    100Mbit/s  short 64KiB:32            94 / 330.0 / 412.2ms            91 / 330.0 / 412.2ms
short SIZE:N: N connections at once, each writing SIZE, shutting down its write side and waiting for the receiver's answer before the next opens; conn/s: those completed per second after the warm-up; p50, p99: their time from connect() to the answer
";
    let r = with_short_connections();
    assert_eq!(r.table(), expected, "{}", r.table());
    assert_eq!(
        Progress::Cell(&r.cells[2]).to_string(),
        "egress   100Mbit/s short 64KiB:32 podshaper achieved 0.991 of target, retrans 0.30%, \
         bpf 412 ns/pkt (empty program 61), 94 conn/s, completion p50 330.00 ms \
         p99 412.25 ms, dropped 1.00% marked 0.00%"
    );
    let json = r.to_json().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["cells"][2]["traffic"], "short 64KiB:32");
    assert_eq!(json["cells"][2]["connections_per_second"], 94.5);
    assert_eq!(json["cells"][2]["completion_p99_ms"], 412.25);
    assert_eq!(
        json["cells"][0]["completion_p99_ms"],
        serde_json::Value::Null
    );
}

#[test]
fn a_delay_line_adds_an_rtt_column_and_field() {
    let mut r = report();
    for c in &mut r.cells {
        c.rtt_ms = 10.0;
        c.delay_line_lost = Some(0);
    }
    r.limit_changes.clear();
    r.open_flows.clear();
    let table = r.table();
    assert!(
        table.contains("dir         rtt     target  traffic    podshaper (ratio/retr%/cpu)"),
        "{table}"
    );
    assert!(
        table.contains("egress     10ms  100Mbit/s  tcp x4           0.950 / 0.30 / 25%"),
        "{table}"
    );
    assert!(
        table.contains("rtt: the round trip the lab's delay line adds"),
        "{table}"
    );
    assert!(
        Progress::Cell(&r.cells[0])
            .to_string()
            .contains("podshaper achieved 0.950 of target, rtt 10ms, retrans 0.30%"),
        "{}",
        Progress::Cell(&r.cells[0])
    );
    let json = r.to_json().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["cells"][0]["rtt_ms"], 10.0);
    assert_eq!(json["cells"][0]["delay_line_lost"], 0);
    assert_eq!(
        report().to_json().unwrap_or_else(|e| panic!("{e}"))["cells"][0]["rtt_ms"],
        0.0
    );
}
