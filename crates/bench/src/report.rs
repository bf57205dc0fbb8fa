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

/// One direction, round trip, rate, traffic and mechanism.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub direction: Direction,
    #[serde(rename = "target_bps", serialize_with = "bits_per_sec")]
    pub rate: Rate,
    pub traffic: Traffic,
    pub mechanism: Mechanism,
    /// the round trip the lab's delay line added (0: a direct veth pair)
    pub rtt_ms: f64,
    /// packets the delay line lost, both ways (its queue or TUN devices
    /// full, a failed write); None without a delay line
    pub delay_line_lost: Option<u64>,
    /// goodput at the receiver after the warm-up, bit/s
    pub achieved_bps: f64,
    /// of the target
    pub achieved_ratio: f64,
    /// the sender's TCP segments retransmitted and sent (TCP)
    pub retransmitted_segments: Option<u64>,
    pub sent_segments: Option<u64>,
    /// the busy fraction of the whole machine's CPUs during the run
    pub cpu_busy: f64,
    /// `cpu_busy` in percent per delivered Gbit/s: what a mechanism costs
    /// the machine for what it lets through (None when nothing arrived or
    /// /proc/stat could not be read)
    pub cpu_percent_per_gbit: Option<f64>,
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
    /// short connections: those completed after the warm-up, and per second
    pub connections: Option<u64>,
    pub connections_per_second: Option<f64>,
    /// their completion times, from `connect()` to the receiver's answer
    /// (sent once it has read the last byte)
    pub completion_p50_ms: Option<f64>,
    pub completion_p99_ms: Option<f64>,
    /// connections refused, reset or timed out, over the whole run
    pub failed_connections: Option<u64>,
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
    pub direction: Direction,
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
        direction: Direction,
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
            direction,
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
        if self.rtt_ms > 0.0 {
            write!(f, ", rtt {}ms", self.rtt_ms)?;
            if let Some(lost) = self.delay_line_lost.filter(|n| *n > 0) {
                write!(f, " ({lost} packets lost in the delay line)")?;
            }
        }
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
        if let (Some(per_sec), Some(p50), Some(p99)) = (
            self.connections_per_second,
            self.completion_p50_ms,
            self.completion_p99_ms,
        ) {
            write!(
                f,
                ", {per_sec:.0} conn/s, completion p50 {p50:.2} ms p99 {p99:.2} ms"
            )?;
            if let Some(failed) = self.failed_connections.filter(|n| *n > 0) {
                write!(f, ", {failed} failed")?;
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
            "{:<8} {:>10} x{:<2} {:<9} {:<16} mean {:.3}, worst second {:.3}, first second {:.3}",
            self.direction,
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
        self.write_short_connections(out)?;
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
            writeln!(
                out,
                "a limit put on TCP flows already running, seconds 2-7 after it, of the limit:"
            )?;
            for o in &self.open_flows {
                writeln!(out, "  {o}")?;
            }
        }
        Ok(())
    }

    /// The matrix: a row per direction, rate and traffic, a column per
    /// mechanism; then latency, fairness and BPF cost of the TCP rows.
    fn write_cells(&self, out: &mut String) -> fmt::Result {
        let mut header = self.head();
        for m in &self.mechanisms {
            write!(header, "  {:>24}", format!("{m} (ratio/retr%/cpu)"))?;
        }
        writeln!(out, "{header}")?;
        for chunk in self.rows() {
            let mut line = self.row_head(&chunk[0]);
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
            "ratio: goodput at the receiver / target (unlimited: / the target it would have had); cpu: the whole machine busy through the cell (the JSON's cpu_percent_per_gbit: per delivered Gbit/s)"
        )?;
        if self.with_rtt() {
            writeln!(
                out,
                "rtt: the round trip the lab's delay line adds (half each way; 0ms: a direct veth pair, about 0.05 ms)"
            )?;
        }
        writeln!(out)?;
        let mut header = self.head();
        for m in &self.mechanisms {
            write!(header, "  {:>22}", format!("{m} (rtt p99/jain)"))?;
        }
        write!(header, "  {:>18}", "bpf ns/pkt (empty)")?;
        writeln!(out, "{header}")?;
        for chunk in self.rows() {
            if chunk[0].traffic == Traffic::Udp {
                continue;
            }
            let mut line = self.row_head(&chunk[0]);
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

    /// The short-connection rows again: connections per second and their
    /// completion times.
    fn write_short_connections(&self, out: &mut String) -> fmt::Result {
        let short = |chunk: &&[Cell]| matches!(chunk[0].traffic, Traffic::Short(_));
        if !self.rows().any(|chunk| short(&chunk)) {
            return Ok(());
        }
        writeln!(out)?;
        let mut header = self.head();
        for m in &self.mechanisms {
            write!(header, "  {:>30}", format!("{m} (conn/s / p50 / p99)"))?;
        }
        writeln!(out, "{header}")?;
        for chunk in self.rows().filter(short) {
            let mut line = self.row_head(&chunk[0]);
            for c in chunk {
                let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
                let per_sec = c
                    .connections_per_second
                    .map_or("-".into(), |v| format!("{v:.0}"));
                let cell = format!(
                    "{per_sec} / {} / {}ms",
                    ms(c.completion_p50_ms),
                    ms(c.completion_p99_ms)
                );
                write!(line, "  {cell:>30}")?;
            }
            writeln!(out, "{line}")?;
        }
        writeln!(
            out,
            "short SIZE:N: N connections at once, each writing SIZE, shutting down its write \
             side and waiting for the receiver's answer before the next opens; conn/s: those \
             completed per second after the warm-up; p50, p99: their time from connect() to \
             the answer"
        )
    }

    /// The cells a row of the matrix holds: one per mechanism.
    fn rows(&self) -> std::slice::Chunks<'_, Cell> {
        self.cells.chunks(self.mechanisms.len().max(1))
    }

    /// The traffic column's width: the longest traffic's name, at least 9.
    fn traffic_width(&self) -> usize {
        self.cells
            .iter()
            .map(|c| c.traffic.to_string().len())
            .fold(9, usize::max)
    }

    /// Some cell went through a delay line: the rows name their round trip.
    fn with_rtt(&self) -> bool {
        self.cells.iter().any(|c| c.rtt_ms > 0.0)
    }

    /// The first columns of a table's header.
    fn head(&self) -> String {
        let w = self.traffic_width();
        let rtt = if self.with_rtt() {
            format!("{:>7}", "rtt")
        } else {
            String::new()
        };
        format!("{:<8}{rtt}{:>11}  {:<w$}", "dir", "target", "traffic")
    }

    /// The first columns of `c`'s row: direction, round trip (when some
    /// cell had a delay line), target and traffic.
    fn row_head(&self, c: &Cell) -> String {
        let w = self.traffic_width();
        let rtt = if self.with_rtt() {
            format!("{:>7}", format!("{}ms", c.rtt_ms))
        } else {
            String::new()
        };
        format!(
            "{:<8}{rtt}{:>11}  {:<w$}",
            c.direction,
            c.rate.to_string(),
            c.traffic.to_string()
        )
    }
}

#[cfg(test)]
mod tests;
