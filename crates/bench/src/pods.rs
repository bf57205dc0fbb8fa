//! Many pods on one node sending at once, each at its own limit
//! (`podshaper bench pods`): every pod a cgroup (a container's below it, as
//! kubelet lays a pod out) and a network namespace whose veth is its own,
//! one TCP flow out of it to a receiver across the veth. The limits spread
//! evenly from `--min` to `--max`; each mechanism runs on the same pods, the
//! same veths and the same flows: podshaper's egress limit on the pod's
//! cgroup, or tbf on the pod's veth as the CNI bandwidth plugin puts it.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use podshaper_netlab::netns;
use podshaper_netlab::traffic::Until;
use podshaper_netlab::NetnsPair;
use podshaper_rate::Rate;
use podshaper_shaper::{Shaper, TransientCgroup};
use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::lab::{self, check_stop, tbf_args, Sink};
use crate::options::{check_window, Mechanism, Traffic};

/// Where a pod's rate counts as held, as a fraction of its limit.
pub const HELD: (f64, f64) = (0.95, 1.02);

/// What `podshaper bench pods` runs.
#[derive(Debug, Clone)]
pub struct PodsOptions {
    pub pods: usize,
    /// the lowest limit and the highest; the others spread evenly between
    pub min: Rate,
    pub max: Rate,
    /// seconds of traffic, the warm-up included
    pub seconds: f64,
    pub warmup: f64,
    /// podshaper, tbf: each runs on the same pods in turn
    pub mechanisms: Vec<Mechanism>,
}

impl PodsOptions {
    pub fn check(&self) -> Result<()> {
        check_window(self.seconds, self.warmup)?;
        if self.seconds > RUN_AT_MOST.as_secs_f64() {
            return Err(BenchError::Pods(format!(
                "--seconds {} is above {}",
                self.seconds,
                RUN_AT_MOST.as_secs()
            )));
        }
        if !(1..=MAX_PODS).contains(&self.pods) {
            return Err(BenchError::Pods(format!(
                "--pods {} is not within 1-{MAX_PODS}",
                self.pods
            )));
        }
        if self.min.bits_per_sec() > self.max.bits_per_sec() {
            return Err(BenchError::Pods(format!(
                "--min {} is above --max {}",
                self.min, self.max
            )));
        }
        if self.mechanisms.contains(&Mechanism::Unlimited) {
            return Err(BenchError::Pods(
                "each pod needs a limit: the mechanisms are podshaper and tbf".into(),
            ));
        }
        Ok(())
    }

    /// Each pod's limit: `min` to `max` in even steps.
    pub fn limits(&self) -> Vec<u64> {
        let (min, max) = (self.min.bits_per_sec(), self.max.bits_per_sec());
        let steps = self.pods.saturating_sub(1).max(1) as u64;
        (0..self.pods as u64)
            .map(|i| min + (max - min) * i / steps)
            .collect()
    }
}

/// The longest run: the senders and sinks are stopped after the window, and
/// end by themselves after this (should the bench not get to stop them).
const RUN_AT_MOST: Duration = Duration::from_secs(600);

/// Namespaces and cgroups are made for each pod: a thousand is far beyond
/// what one node runs (kubelet's default is 110 pods).
const MAX_PODS: usize = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct PodsReport {
    pub pods: usize,
    pub seconds: f64,
    pub warmup: f64,
    /// each pod's limit, in bit/s, in pod order
    pub limits_bps: Vec<u64>,
    pub runs: Vec<PodsRun>,
}

/// One mechanism's run over every pod.
#[derive(Debug, Clone, Serialize)]
pub struct PodsRun {
    pub mechanism: Mechanism,
    /// each pod's goodput over the window, as a fraction of its limit
    pub ratios: Vec<f64>,
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// pods within [`HELD`]
    pub pods_held: usize,
    /// what every pod delivered together, and what their limits add up to
    pub delivered_bps: f64,
    pub limits_sum_bps: u64,
    /// the whole machine's CPU busy over the window (0-1), and per delivered
    /// Gbit/s, in percent; None when /proc/stat could not be read
    pub cpu_busy: Option<f64>,
    pub cpu_percent_per_gbit: Option<f64>,
    /// TCP segments resent and sent by every pod's sender
    pub retransmitted_segments: u64,
    pub sent_segments: u64,
    /// the mean size of the packets the pods' veths carried out of them, in
    /// bytes, from the senders' start to their end: what each costs the
    /// node is mostly per packet
    pub veth_bytes_per_packet: Option<f64>,
}

/// One pod: its namespaces, its cgroup and its container's.
struct Pod {
    lab: NetnsPair,
    container: TransientCgroup,
    cgroup: TransientCgroup,
    limit: Rate,
}

pub fn run(options: &PodsOptions, stop: &AtomicBool) -> Result<PodsReport> {
    options.check()?;
    let limits = options.limits();
    let mut shaper = Shaper::load()?;
    let node_name = format!("podshaper-pods-{}", std::process::id());
    let node = TransientCgroup::create(&node_name)?;
    let mut pods = Vec::with_capacity(limits.len());
    for (i, bits) in limits.iter().enumerate() {
        check_stop(stop)?;
        let lab = NetnsPair::create("pods")?;
        lab.set_congestion_control("cubic")?;
        let name = format!("{node_name}/pod{i}");
        let cgroup = TransientCgroup::create(&name)?;
        let container = TransientCgroup::create(&format!("{name}/container"))?;
        pods.push(Pod {
            lab,
            container,
            cgroup,
            limit: Rate::from_bits_per_sec(*bits)?,
        });
    }
    let mut runs = Vec::new();
    for mechanism in &options.mechanisms {
        check_stop(stop)?;
        lab::settle();
        let run = run_mechanism(&mut shaper, &pods, *mechanism, options);
        check_stop(stop)?;
        runs.push(run.map_err(|e| e.during(format!("{} pods, {mechanism}", pods.len())))?);
    }
    // containers, then pods, then the node's cgroup
    drop(pods);
    drop(node);
    Ok(PodsReport {
        pods: options.pods,
        seconds: options.seconds,
        warmup: options.warmup,
        limits_bps: limits,
        runs,
    })
}

/// Limits every pod with `mechanism`, runs its flow, and takes the limits
/// off again.
fn run_mechanism(
    shaper: &mut Shaper,
    pods: &[Pod],
    mechanism: Mechanism,
    options: &PodsOptions,
) -> Result<PodsRun> {
    let mut attachments = Vec::new();
    let mut tbf_on = Vec::new();
    let limited = (|| -> Result<()> {
        for pod in pods {
            match mechanism {
                Mechanism::Podshaper => attachments.push((
                    pod.cgroup.cgroup().id(),
                    lab::limit_egress(shaper, pod.cgroup.cgroup(), pod.limit)?,
                )),
                Mechanism::Tbf => {
                    lab::tc(pod.lab.a(), &tbf_args("add", pod.limit))?;
                    tbf_on.push(pod.lab.a());
                }
                Mechanism::Unlimited => {}
            }
        }
        Ok(())
    })();
    let measured = limited.and_then(|()| measure(pods, options));
    // the limits come off whatever happened
    let mut off = Ok(());
    for (id, attachment) in attachments {
        off = off.and(lab::unlimit(shaper, id, attachment));
    }
    for ns in tbf_on {
        off = off.and(lab::tc(ns, &lab::tbf_del_args()));
    }
    let measured = measured?;
    off?;
    let ratios: Vec<f64> = measured
        .bits
        .iter()
        .zip(pods)
        .map(|(bits, pod)| bits / pod.limit.bits_per_sec() as f64)
        .collect();
    let delivered_bps: f64 = measured.bits.iter().sum();
    Ok(PodsRun {
        mechanism,
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(0.0, f64::max),
        pods_held: ratios
            .iter()
            .filter(|r| (HELD.0..=HELD.1).contains(*r))
            .count(),
        ratios,
        delivered_bps,
        limits_sum_bps: pods.iter().map(|p| p.limit.bits_per_sec()).sum(),
        cpu_busy: measured.cpu_busy,
        cpu_percent_per_gbit: measured
            .cpu_busy
            .filter(|_| delivered_bps > 0.0)
            .map(|busy| busy * 100.0 / (delivered_bps / 1e9)),
        retransmitted_segments: measured.segments.0,
        sent_segments: measured.segments.1,
        veth_bytes_per_packet: measured.veth_bytes_per_packet,
    })
}

struct Measured {
    /// each pod's goodput over the window
    bits: Vec<f64>,
    cpu_busy: Option<f64>,
    /// (resent, sent) TCP segments of every pod's namespace
    segments: (u64, u64),
    veth_bytes_per_packet: Option<f64>,
}

/// Every pod's flow at once: a sink across each veth, a sender in each
/// pod's container; each pod's goodput after the warm-up. The warm-up
/// starts once the last sender is started (a hundred take seconds to start
/// beside the flows already running); every sender runs until it is
/// stopped, after the window.
fn measure(pods: &[Pod], options: &PodsOptions) -> Result<Measured> {
    const PORT: u16 = 5303;
    let total = Duration::from_secs_f64(options.seconds);
    let to = SocketAddr::new(NetnsPair::addr_b(false), PORT);
    let sinks: Vec<Sink> = pods
        .iter()
        .map(|pod| Sink::spawn(&pod.lab, Traffic::Tcp(1), to, Until::after(RUN_AT_MOST)))
        .collect();
    std::thread::sleep(lab::LISTEN_WAIT);
    let before_tcp: Vec<_> = pods
        .iter()
        .map(|p| netns::tcp_segments(p.lab.a()))
        .collect();
    let before_veth: Vec<_> = pods
        .iter()
        .map(|p| netns::tx_counts(p.lab.a(), "veth0"))
        .collect();
    let mut senders = Vec::with_capacity(pods.len());
    let seconds = RUN_AT_MOST.as_secs().to_string();
    for pod in pods {
        let sender = lab::start_senders(
            &pod.lab,
            pod.container.cgroup(),
            Traffic::Tcp(1),
            0,
            &seconds,
            0.0,
            to,
        );
        match sender {
            Ok(child) => senders.push(child),
            Err(e) => {
                stop_all(senders, sinks);
                return Err(e);
            }
        }
    }
    let started = Instant::now();
    sleep_until(started + Duration::from_secs_f64(options.warmup));
    let first: Vec<_> = sinks.iter().map(|s| s.meter.read()).collect();
    let cpu_first = lab::cpu_times();
    // the window ends, then the senders are stopped
    sleep_until(started + total - Duration::from_millis(100));
    let last: Vec<_> = sinks.iter().map(|s| s.meter.read()).collect();
    let cpu_last = lab::cpu_times();
    stop_all(senders, sinks);
    let (bytes, packets) = pods
        .iter()
        .zip(before_veth)
        .filter_map(|(p, before)| Some((before?, netns::tx_counts(p.lab.a(), "veth0")?)))
        .fold((0, 0), |(bytes, packets), (b, a)| {
            (
                bytes + a.bytes.saturating_sub(b.bytes),
                packets + a.packets.saturating_sub(b.packets),
            )
        });
    let segments = pods
        .iter()
        .zip(before_tcp)
        .filter_map(|(p, before)| Some((before?, netns::tcp_segments(p.lab.a())?)))
        .fold((0, 0), |(r, s), (b, a)| {
            (r + a.0.saturating_sub(b.0), s + a.1.saturating_sub(b.1))
        });
    Ok(Measured {
        bits: last
            .iter()
            .zip(&first)
            .map(|(l, f)| l.bits_per_sec_since(f))
            .collect(),
        cpu_busy: lab::cpu_busy_between(cpu_first, cpu_last),
        segments,
        veth_bytes_per_packet: (packets > 0).then(|| bytes as f64 / packets as f64),
    })
}

fn stop_all(senders: Vec<std::process::Child>, sinks: Vec<Sink>) {
    for mut sender in senders {
        let _ = sender.kill();
        let _ = sender.wait();
    }
    for sink in sinks {
        sink.stop();
    }
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

impl PodsReport {
    /// The table `podshaper bench pods` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = self.write_table(&mut out);
        out
    }

    fn write_table(&self, out: &mut String) -> fmt::Result {
        let (min, max) = (
            self.limits_bps.iter().min().copied().unwrap_or(0),
            self.limits_bps.iter().max().copied().unwrap_or(0),
        );
        writeln!(
            out,
            "{} pods, one TCP flow each, limits {} to {} bit/s, {} s measured after {} s",
            self.pods,
            min,
            max,
            self.seconds - self.warmup - 0.1,
            self.warmup
        )?;
        writeln!(
            out,
            "{:<10} {:>13} {:>18} {:>14} {:>9} {:>11} {:>7} {:>9}",
            "mechanism",
            "of each limit",
            "pods in [.95,1.02]",
            "delivered",
            "CPU busy",
            "CPU %/Gbit",
            "resent",
            "B/packet"
        )?;
        for run in &self.runs {
            let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
            writeln!(
                out,
                "{:<10} {:>13} {:>18} {:>14} {:>9} {:>11} {:>6.2}% {:>9}",
                run.mechanism.to_string(),
                format!("{:.3}-{:.3}", run.ratio_min, run.ratio_max),
                format!("{}/{}", run.pods_held, self.pods),
                format!("{:.3} Gbit/s", run.delivered_bps / 1e9),
                pct(run.cpu_busy.map(|b| b * 100.0)),
                pct(run.cpu_percent_per_gbit),
                if run.sent_segments == 0 {
                    0.0
                } else {
                    run.retransmitted_segments as f64 * 100.0 / run.sent_segments as f64
                },
                run.veth_bytes_per_packet
                    .map_or_else(|| "-".into(), |b| format!("{b:.0}"))
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pods: usize, min: &str, max: &str) -> PodsOptions {
        PodsOptions {
            pods,
            min: min.parse().unwrap_or_else(|e| panic!("{e}")),
            max: max.parse().unwrap_or_else(|e| panic!("{e}")),
            seconds: 8.0,
            warmup: 3.0,
            mechanisms: vec![Mechanism::Podshaper, Mechanism::Tbf],
        }
    }

    #[test]
    fn limits_spread_evenly_from_min_to_max() {
        let limits = options(100, "1M", "50M").limits();
        assert_eq!(limits.len(), 100);
        assert_eq!(limits[0], 1_000_000);
        assert_eq!(limits[99], 50_000_000);
        assert_eq!(limits[33], 1_000_000 + 49_000_000 * 33 / 99);
        assert_eq!(options(1, "5M", "5M").limits(), vec![5_000_000]);
    }

    #[test]
    fn bad_options_are_named() {
        let err = |o: PodsOptions| o.check().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(options(0, "1M", "50M")).contains("--pods 0"));
        assert!(err(options(5, "50M", "1M")).contains("--min"));
        let mut none = options(5, "1M", "50M");
        none.mechanisms.push(Mechanism::Unlimited);
        assert!(err(none).contains("podshaper and tbf"));
        for seconds in [601.0, f64::INFINITY] {
            let long = PodsOptions {
                seconds,
                ..options(5, "1M", "50M")
            };
            assert!(err(long).contains("is above 600"));
        }
        let nan = PodsOptions {
            seconds: f64::NAN,
            ..options(5, "1M", "50M")
        };
        assert!(err(nan).contains("--seconds"));
        assert!(options(100, "1M", "50M").check().is_ok());
    }
}
