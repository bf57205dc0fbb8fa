//! The report of a bench run: one typed value that `--json` prints (its
//! field names are the JSON's) and the table is drawn from.

use std::fmt::{self, Write as _};
use std::time::Duration;

use podshaper_rate::Rate;
use serde::{Serialize, Serializer};

use crate::options::{Direction, Mechanism, Traffic};

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub congestion_control: String,
    pub ecn: bool,
    /// podshaper's ingress went through the pod's queue
    pub ingress_queue: bool,
    /// podshaper's ingress went through the node's queue for hostNetwork pods
    pub host_queue: bool,
    pub cells: Vec<Cell>,
    pub limit_changes: Vec<LimitChange>,
    pub open_flows: Vec<OpenFlows>,
    /// the table's columns, in the order asked for
    #[serde(skip)]
    pub mechanisms: Vec<Mechanism>,
    /// some cells measured ingress
    #[serde(skip)]
    pub measured_ingress: bool,
}

/// One direction, rate, traffic and mechanism.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub direction: Direction,
    #[serde(rename = "target_bps", serialize_with = "bits_per_sec")]
    pub rate: Rate,
    pub traffic: Traffic,
    pub mechanism: Mechanism,
    /// goodput at the receiver after the warm-up, bit/s
    pub achieved_bps: f64,
    /// of the target
    pub achieved_ratio: f64,
    /// the sender's TCP segments retransmitted and sent (TCP)
    pub retransmitted_segments: Option<u64>,
    pub sent_segments: Option<u64>,
    /// the busy fraction of the whole machine's CPUs during the run
    pub cpu_busy: f64,
    /// Jain's index over the flows' bytes after the warm-up (TCP, more
    /// than one flow)
    pub jain_index: Option<f64>,
    /// each TCP flow's bytes at the receiver after the warm-up
    pub flow_bytes: Vec<u64>,
    /// round trips of a small request/response beside the bulk traffic
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    /// mean run time of the shaper's program for this direction (podshaper only)
    pub bpf_ns_per_packet: Option<f64>,
    /// the same for a program that does nothing, attached beside the shaper
    /// on the same cgroup: what any program costs on these packets here
    pub bpf_empty_ns_per_packet: Option<f64>,
    /// the sockops program (podshaper only): it runs on TCP events, mostly
    /// each ACK's RTT sample, not on packets the cgroup program sees
    pub bpf_sockops_ns_per_run: Option<f64>,
    pub bpf_sockops_runs: Option<u64>,
    /// the node's queue's classifier (`--host-queue`)
    pub bpf_host_class_ns_per_run: Option<f64>,
    pub bpf_host_class_runs: Option<u64>,
    /// the pod's queue's classifier (ingress with `--ingress-queue`), which
    /// runs on the same packets before the cgroup program
    pub bpf_flow_class_ns_per_run: Option<f64>,
    pub bpf_flow_class_runs: Option<u64>,
    /// the shaper's own counters for this direction (podshaper only): what
    /// it passed, dropped and marked
    pub shaper_bytes: Option<u64>,
    pub shaper_packets: Option<u64>,
    pub shaper_dropped: Option<u64>,
    pub shaper_marked: Option<u64>,
}

/// A limit halved mid-flow.
#[derive(Debug, Clone, Serialize)]
pub struct LimitChange {
    #[serde(rename = "target_bps", serialize_with = "bits_per_sec")]
    pub rate: Rate,
    pub mechanism: Mechanism,
    /// from the change to the new rate holding; None if it never did
    pub change_to_effect_ms: Option<f64>,
    /// (seconds, rate / the first target) in 100 ms bins, for the plot
    #[serde(skip)]
    pub series: Vec<(f64, f64)>,
}

/// When the limit comes, in an open-flows run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// two seconds into the flows
    OnRunningFlows,
    /// before they start (the yardstick)
    BeforeFlows,
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::OnRunningFlows => "on running flows",
            Self::BeforeFlows => "before the flows",
        })
    }
}

impl Serialize for When {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A limit put on TCP flows (egress).
#[derive(Debug, Clone, Serialize)]
pub struct OpenFlows {
    #[serde(rename = "target_bps", serialize_with = "bits_per_sec")]
    pub rate: Rate,
    pub flows: usize,
    pub mechanism: Mechanism,
    #[serde(rename = "limited")]
    pub when: When,
    /// the receiver's rate in each second after the limit, of the limit
    #[serde(rename = "seconds_ratio")]
    pub seconds: Vec<f64>,
    /// over the seconds from the second one after the limit on
    pub held_mean_ratio: f64,
    pub held_worst_ratio: f64,
}

fn bits_per_sec<S: Serializer>(rate: &Rate, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(rate.bits_per_sec())
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(r: u64, s: u64) -> f64 {
    if s == 0 {
        0.0
    } else {
        r as f64 * 100.0 / s as f64
    }
}

impl Cell {
    fn ratio(&self) -> f64 {
        self.achieved_bps / self.rate.bits_per_sec() as f64
    }

    fn retrans(&self) -> Option<(u64, u64)> {
        self.retransmitted_segments.zip(self.sent_segments)
    }
}

impl LimitChange {
    pub fn new(
        rate: Rate,
        mechanism: Mechanism,
        effect: Option<Duration>,
        series: Vec<(f64, f64)>,
    ) -> Self {
        Self {
            rate,
            mechanism,
            change_to_effect_ms: effect.map(ms),
            series,
        }
    }
}

impl OpenFlows {
    pub fn new(
        rate: Rate,
        flows: usize,
        mechanism: Mechanism,
        when: When,
        seconds: Vec<f64>,
    ) -> Self {
        // the seconds from the second one after the limit on
        let held = seconds.get(1..).unwrap_or_default();
        let held_mean_ratio = held.iter().sum::<f64>() / held.len().max(1) as f64;
        let held_worst_ratio = held.iter().cloned().fold(f64::INFINITY, f64::min);
        Self {
            rate,
            flows,
            mechanism,
            when,
            seconds,
            held_mean_ratio,
            held_worst_ratio,
        }
    }
}

/// A line on stderr as each run ends (not with `--json`).
impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<7} {:>10} {:<8} {:<9} achieved {:.3} of target",
            self.direction,
            self.rate.to_string(),
            self.traffic,
            self.mechanism,
            self.ratio(),
        )?;
        if let Some((r, s)) = self.retrans() {
            write!(f, ", retrans {:.2}%", pct(r, s))?;
        }
        if let Some(j) = self.jain_index {
            write!(f, ", jain {j:.3}")?;
        }
        if let (Some(p50), Some(p99)) = (self.rtt_p50_ms, self.rtt_p99_ms) {
            write!(f, ", rtt p50 {p50:.2} ms p99 {p99:.2} ms")?;
        }
        if let Some(ns) = self.bpf_ns_per_packet {
            write!(f, ", bpf {ns:.0} ns/pkt")?;
        }
        if let Some(ns) = self.bpf_empty_ns_per_packet {
            write!(f, " (empty program {ns:.0})")?;
        }
        let runs = [
            (
                "sockops",
                self.bpf_sockops_ns_per_run,
                self.bpf_sockops_runs,
            ),
            (
                "host classifier",
                self.bpf_host_class_ns_per_run,
                self.bpf_host_class_runs,
            ),
            (
                "queue classifier",
                self.bpf_flow_class_ns_per_run,
                self.bpf_flow_class_runs,
            ),
        ];
        for (program, ns, runs) in runs {
            if let (Some(ns), Some(runs)) = (ns, runs) {
                write!(f, ", {program} {ns:.0} ns/run over {runs} runs")?;
            }
        }
        if let (Some(packets), Some(dropped), Some(marked)) =
            (self.shaper_packets, self.shaper_dropped, self.shaper_marked)
        {
            write!(
                f,
                ", dropped {:.2}% marked {:.2}%",
                pct(dropped, packets + dropped),
                pct(marked, packets + dropped)
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for OpenFlows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>10} x{:<2} {:<9} {:<16} mean {:.3}, worst second {:.3}, first second {:.3}",
            self.rate.to_string(),
            self.flows,
            self.mechanism,
            self.when,
            self.held_mean_ratio,
            self.held_worst_ratio,
            self.seconds.first().copied().unwrap_or(0.0)
        )
    }
}

/// What just ended, for a line on stderr as the bench goes.
pub enum Progress<'a> {
    Cell(&'a Cell),
    Change(&'a LimitChange),
    Open(&'a OpenFlows),
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cell(c) => write!(f, "{c}"),
            Self::Change(c) => write!(
                f,
                "change  {:>10} {:<9} new limit in effect after {}",
                c.rate.to_string(),
                c.mechanism,
                c.change_to_effect_ms
                    .map_or("(never)".into(), |ms| format!("{ms:.0} ms"))
            ),
            Self::Open(o) => write!(f, "open    {o}"),
        }
    }
}

impl Report {
    /// The JSON document `--json` prints: the keys of each object sorted,
    /// as a `serde_json::Value` prints them.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }

    /// The table `podshaper bench` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = self.write_table(&mut out);
        out
    }

    fn write_table(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "TCP congestion control: {}", self.congestion_control)?;
        let ecn = if self.ecn {
            "negotiated"
        } else {
            "not asked for"
        };
        writeln!(out, "ECN: {ecn}")?;
        if self.measured_ingress {
            let ingress = if self.host_queue {
                "the node's queue for hostNetwork pods (ifb + htb, the receiver's namespace as the node's) and the cgroup policer"
            } else if self.ingress_queue {
                "queue in front of the namespace (ifb + htb) and the cgroup policer"
            } else {
                "cgroup policer alone"
            };
            writeln!(out, "podshaper ingress: {ingress}")?;
        }
        self.write_cells(out)?;
        if !self.limit_changes.is_empty() {
            writeln!(out)?;
            writeln!(
                out,
                "limit halved mid-flow (one TCP flow, egress): time until the new rate holds"
            )?;
            for c in &self.limit_changes {
                writeln!(
                    out,
                    "  {:>11}  {:<9}  {}",
                    c.rate.to_string(),
                    c.mechanism,
                    c.change_to_effect_ms
                        .map_or("never".into(), |ms| format!("{ms:.0} ms"))
                )?;
            }
        }
        if !self.open_flows.is_empty() {
            writeln!(out)?;
            writeln!(out, "a limit put on TCP flows already running (egress), seconds 2-7 after it, of the limit:")?;
            for o in &self.open_flows {
                writeln!(out, "  {o}")?;
            }
        }
        Ok(())
    }

    /// The matrix: a row per direction, rate and traffic, a column per
    /// mechanism; then latency, fairness and BPF cost of the TCP rows.
    fn write_cells(&self, out: &mut String) -> fmt::Result {
        let rows = || self.cells.chunks(self.mechanisms.len().max(1));
        let row_head = |c: &Cell| {
            format!(
                "{:<8}{:>11}  {:<9}",
                c.direction,
                c.rate.to_string(),
                c.traffic.to_string()
            )
        };
        let mut header = format!("{:<8}{:>11}  {:<9}", "dir", "target", "traffic");
        for m in &self.mechanisms {
            write!(header, "  {:>24}", format!("{m} (ratio/retr%/cpu)"))?;
        }
        writeln!(out, "{header}")?;
        for chunk in rows() {
            let mut line = row_head(&chunk[0]);
            for c in chunk {
                let retr = c
                    .retrans()
                    .map_or("-".to_string(), |(r, s)| format!("{:.2}", pct(r, s)));
                let cell = format!("{:.3} / {retr} / {:.0}%", c.ratio(), c.cpu_busy * 100.0);
                write!(line, "  {cell:>24}")?;
            }
            writeln!(out, "{line}")?;
        }
        writeln!(
            out,
            "ratio: goodput at the receiver / target (unlimited: / the target it would have had)"
        )?;
        writeln!(out)?;
        let mut header = format!("{:<8}{:>11}  {:<9}", "dir", "target", "traffic");
        for m in &self.mechanisms {
            write!(header, "  {:>22}", format!("{m} (rtt p99/jain)"))?;
        }
        write!(header, "  {:>18}", "bpf ns/pkt (empty)")?;
        writeln!(out, "{header}")?;
        for chunk in rows() {
            if chunk[0].traffic == Traffic::Udp {
                continue;
            }
            let mut line = row_head(&chunk[0]);
            for c in chunk {
                let rtt = c.rtt_p99_ms.map_or("-".into(), |p99| format!("{p99:.2}ms"));
                let jain = c.jain_index.map_or("-".into(), |j| format!("{j:.3}"));
                write!(line, "  {:>22}", format!("{rtt} / {jain}"))?;
            }
            let bpf = chunk
                .iter()
                .find_map(|c| {
                    c.bpf_ns_per_packet
                        .map(|ns| (ns, c.bpf_empty_ns_per_packet))
                })
                .map_or("-".into(), |(ns, empty)| match empty {
                    Some(e) => format!("{ns:.0} ({e:.0})"),
                    None => format!("{ns:.0}"),
                });
            write!(line, "  {bpf:>18}")?;
            writeln!(out, "{line}")?;
        }
        writeln!(
            out,
            "rtt p99: round trip of a 64-byte request/response beside the bulk flows, one leg \
             through the limit; jain: fairness of the flows' bytes (1 = equal); \
             bpf: mean run time of the shaper's program per packet (kernel BPF statistics), \
             in brackets that of a program that does nothing, on the same packets"
        )
    }
}

#[cfg(test)]
mod tests {
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
            achieved_bps,
            achieved_ratio: achieved_bps / 100e6,
            retransmitted_segments: Some(3),
            sent_segments: Some(1000),
            cpu_busy: 0.25,
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
ratio: goodput at the receiver / target (unlimited: / the target it would have had)

dir          target  traffic    podshaper (rtt p99/jain)      tbf (rtt p99/jain)  bpf ns/pkt (empty)
egress    100Mbit/s  tcp x4             4.25ms / 0.998          4.25ms / 0.998            412 (61)
rtt p99: round trip of a 64-byte request/response beside the bulk flows, one leg through the limit; jain: fairness of the flows' bytes (1 = equal); bpf: mean run time of the shaper's program per packet (kernel BPF statistics), in brackets that of a program that does nothing, on the same packets

limit halved mid-flow (one TCP flow, egress): time until the new rate holds
    100Mbit/s  podshaper  120 ms

a limit put on TCP flows already running (egress), seconds 2-7 after it, of the limit:
   100Mbit/s x4  tbf       on running flows mean 0.980, worst second 0.960, first second 1.500
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
        assert_eq!(json["open_flows"][0]["limited"], "on running flows");
        assert_eq!(json["open_flows"][0]["seconds_ratio"][0], 1.5);
        assert!(json.get("mechanisms").is_none(), "{text}");
    }
}
