//! `podshaper bench`: podshaper against tc tbf (as the CNI bandwidth plugin
//! configures it) and against no limit at all, side by side in one run, on
//! a veth pair between two network namespaces.
//!
//! For each direction, rate and flow count, every mechanism gets a fresh lab
//! and the same traffic; the table reports goodput at the receiver as a
//! fraction of the target, the sender's TCP retransmissions, and the CPU
//! busy fraction of the whole machine during the run.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{Meter, NetnsPair};
use podshaper_rate::Rate;
use podshaper_shaper::empty::{EmptyPrograms, EMPTY_EGRESS, EMPTY_INGRESS};
use podshaper_shaper::{DirectionCounters, DirectionLimit, Limits, Shaper, TransientCgroup};
use serde_json::json;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Target rates.
    #[arg(long, value_delimiter = ',', default_value = "10M,100M,1G,5G")]
    rates: Vec<String>,
    /// TCP flow counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    flows: Vec<usize>,
    /// Directions, seen from the limited side.
    #[arg(long, value_delimiter = ',', default_value = "egress,ingress")]
    directions: Vec<String>,
    /// Mechanisms to compare.
    #[arg(long, value_delimiter = ',', default_value = "podshaper,tbf,none")]
    mechanisms: Vec<String>,
    /// Also UDP, offered at 4x the limit.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    udp: bool,
    /// Seconds per run, the warm-up included.
    #[arg(long, default_value_t = 7.0)]
    seconds: f64,
    /// Seconds at the start of each run left out of the measurement. Three:
    /// 16 flows' start-up losses in the ingress queue's FIFOs are repaired
    /// about 2.5 s in at 100 Mbit/s, and a window that starts earlier counts
    /// the repair's release of held data as rate (docs/benchmarks.md).
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Run the latency probe beside TCP traffic (it is a second TCP flow in
    /// the limited cgroup, and changes what the bulk flows get).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    probe: bool,
    /// TCP congestion control of the senders (both namespaces): cubic is
    /// Linux's default; bbr reacts to the shaper differently.
    #[arg(long, default_value = "cubic")]
    cc: String,
    /// TCP connections negotiate ECN (net.ipv4.tcp_ecn=1 in both
    /// namespaces), so CE marks reach the senders instead of being ignored.
    #[arg(long, value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set)]
    ecn: bool,
    /// podshaper's ingress: the queue the daemon puts in front of a pod with
    /// its own network namespace, with the cgroup policer behind it (true),
    /// or the policer alone, as for hostNetwork pods (false).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    ingress_queue: bool,
    /// podshaper's ingress: the node's queue for hostNetwork pods (the
    /// daemon's `--host-ingress-queue`), with the receiver's namespace
    /// playing the node's, and the policer behind it; instead of the
    /// queue of `--ingress-queue`.
    #[arg(long, value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set)]
    host_queue: bool,
    /// Also measure limit change to effect (one TCP flow, egress, limit halved).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    change: bool,
    /// Also measure a limit put on TCP flows already running (egress, the
    /// flow counts above): podshaper as the daemon limits a cgroup, tbf
    /// added to the running veth, and podshaper on the same flows started
    /// under the limit.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    open: bool,
    /// Draw the limit-change runs (rate over time per mechanism) to this PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<std::path::PathBuf>,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mechanism {
    Podshaper,
    Tbf,
    Unlimited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Tcp(usize),
    Udp,
}

struct Cell {
    direction: &'static str,
    rate: Rate,
    traffic: Traffic,
    mechanism: Mechanism,
    achieved: f64,
    retrans: Option<(u64, u64)>,
    cpu_busy: f64,
    /// Jain's index over the flows' bytes (TCP, more than one flow)
    jain: Option<f64>,
    /// each TCP flow's bytes at the receiver over the measured seconds
    flow_bytes: Vec<u64>,
    /// round trips of a small request/response beside the bulk traffic: p50, p99
    rtt: Option<(Duration, Duration)>,
    /// mean run time of the shaper's program for this direction (podshaper only)
    bpf_ns: Option<f64>,
    /// the same for a program that does nothing, attached beside the shaper
    /// on the same cgroup: what any program costs on these packets here
    bpf_empty_ns: Option<f64>,
    /// the sockops program's mean run time and runs (podshaper only): it
    /// runs on TCP events, mostly each ACK's RTT sample, not on packets the
    /// cgroup program sees
    bpf_sockops: Option<(f64, u64)>,
    /// the node's queue's classifier (`--host-queue`): ns per run, runs
    bpf_host_class: Option<(f64, u64)>,
    /// the pod's queue's classifier (ingress with `--ingress-queue`), which
    /// runs on the same packets before the cgroup program: ns per run, runs
    bpf_flow_class: Option<(f64, u64)>,
    /// the shaper's own counters for this direction (podshaper only): what it
    /// passed, dropped and marked
    shaped: Option<DirectionCounters>,
}

/// What every cell runs with.
struct RunOptions {
    seconds: f64,
    /// the seconds at the start of a run left out of the measurement
    warmup: f64,
    /// the shaper's programs are those loaded since
    loaded_since: std::time::SystemTime,
    /// the latency probe beside TCP traffic
    probe: bool,
    /// the senders' TCP congestion control
    cc: String,
    /// TCP connections negotiate ECN
    ecn: bool,
    /// podshaper's ingress queue in front of the limited namespace: where
    /// its flow classifier is pinned (None: no queue)
    ingress_queue: Option<PathBuf>,
    /// the node's queue for hostNetwork pods in the limited namespace:
    /// where its classifier is pinned (None: none)
    host_queue: Option<PathBuf>,
}

/// A classifier of the ingress queues pinned where `tc` can find it, for as
/// long as the bench runs (the daemon pins them in its own bpffs directory).
struct ClassifierPin(PathBuf);

impl ClassifierPin {
    /// The flow classifier of a pod's own queue.
    fn flow(shaper: &mut Shaper) -> Result<Self> {
        let path = Self::path("flow_class");
        shaper.pin_flow_classifier(&path).with_context(|| {
            "cannot pin the ingress queue's flow classifier under /sys/fs/bpf \
             (mount bpffs there, or measure without the queue: --ingress-queue false)"
        })?;
        Ok(Self(path))
    }

    /// The classifier of the node's queue for hostNetwork pods.
    fn host(shaper: &mut Shaper) -> Result<Self> {
        let path = Self::path("host_class");
        shaper.pin_host_classifier(&path).with_context(|| {
            "cannot pin the hostNetwork pods' queue classifier under /sys/fs/bpf \
             (mount bpffs there, or measure without it: --host-queue false)"
        })?;
        Ok(Self(path))
    }

    fn path(name: &str) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(format!("podshaper-bench-{}-{name}", std::process::id()))
    }
}

impl Drop for ClassifierPin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The slot of the limited cgroup in the node's queue (one at a time).
const BENCH_HOST_SLOT: u32 = 1;

/// What one measurement saw.
struct Measured {
    achieved: f64,
    flow_bytes: Vec<u64>,
    rtts: Vec<Duration>,
}

/// Fails once `stop` is set (a signal): the caller's values then remove the
/// namespaces, cgroups and pins they made as they drop.
pub(crate) fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted: stopped, and removed what the bench made");
    }
    Ok(())
}

pub fn run(args: BenchArgs, stop: Arc<AtomicBool>) -> Result<ExitCode> {
    let rates: Vec<Rate> = args
        .rates
        .iter()
        .map(|r| r.parse())
        .collect::<Result<_, _>>()?;
    let mechanisms: Vec<Mechanism> = args
        .mechanisms
        .iter()
        .map(|m| match m.as_str() {
            "podshaper" => Ok(Mechanism::Podshaper),
            "tbf" => Ok(Mechanism::Tbf),
            "none" => Ok(Mechanism::Unlimited),
            other => bail!("unknown mechanism {other:?}: expected podshaper, tbf or none"),
        })
        .collect::<Result<_>>()?;
    let directions: Vec<&'static str> = args
        .directions
        .iter()
        .map(|d| match d.as_str() {
            "egress" => Ok("egress"),
            "ingress" => Ok("ingress"),
            other => bail!("unknown direction {other:?}: expected egress or ingress"),
        })
        .collect::<Result<_>>()?;
    if !(args.warmup >= 0.0 && args.seconds >= args.warmup + 1.0) {
        bail!(
            "--seconds ({}) must be at least one more than --warmup ({}), which may not be negative",
            args.seconds,
            args.warmup
        );
    }
    let mut traffics: Vec<Traffic> = args
        .flows
        .iter()
        .map(|f| Traffic::Tcp((*f).max(1)))
        .collect();
    if args.udp {
        traffics.push(Traffic::Udp);
    }

    let loaded_since = std::time::SystemTime::now() - Duration::from_secs(1);
    let mut shaper = Shaper::load()?;
    // The kernel keeps run-time statistics of BPF programs while this is open.
    let _stats = super::bpf_stats::enable()?;
    let flow_classifier = if args.ingress_queue && !args.host_queue {
        Some(ClassifierPin::flow(&mut shaper)?)
    } else {
        None
    };
    let host_classifier = if args.host_queue {
        Some(ClassifierPin::host(&mut shaper)?)
    } else {
        None
    };
    let run_options = RunOptions {
        seconds: args.seconds,
        warmup: args.warmup,
        loaded_since,
        probe: args.probe,
        cc: args.cc.clone(),
        ecn: args.ecn,
        ingress_queue: flow_classifier.as_ref().map(|p| p.0.clone()),
        host_queue: host_classifier.as_ref().map(|p| p.0.clone()),
    };
    let mut cells = Vec::new();
    for direction in &directions {
        for rate in &rates {
            for traffic in &traffics {
                for mechanism in &mechanisms {
                    check_stop(&stop)?;
                    let cell = run_cell(
                        &mut shaper,
                        direction,
                        *rate,
                        *traffic,
                        *mechanism,
                        &run_options,
                    );
                    // a signal also ends the traffic children (the terminal's
                    // process group): the cell's error is then the signal's
                    check_stop(&stop)?;
                    let cell = cell
                        .with_context(|| format!("{direction} {rate} {traffic:?} {mechanism:?}"))?;
                    if !args.json {
                        eprintln!("  {}", describe(&cell));
                    }
                    cells.push(cell);
                }
            }
        }
    }
    let mut changes = Vec::new();
    if args.change || args.plot.is_some() {
        for rate in &rates {
            for mechanism in mechanisms.iter().filter(|m| **m != Mechanism::Unlimited) {
                check_stop(&stop)?;
                let run = super::bench_change::run(&mut shaper, *rate, *mechanism, &args.cc);
                check_stop(&stop)?;
                let run =
                    run.with_context(|| format!("limit change at {rate} with {mechanism:?}"))?;
                if !args.json {
                    eprintln!(
                        "  change  {:>10} {:<9} new limit in effect after {}",
                        rate.to_string(),
                        name(*mechanism),
                        run.effect
                            .map_or("(never)".into(), |d| format!("{:.0} ms", ms(d)))
                    );
                }
                changes.push(run);
            }
        }
    }
    if let Some(file) = &args.plot {
        super::bench_change::plot(&changes, file)?;
    }
    let mut opens = Vec::new();
    if args.open && directions.contains(&"egress") {
        use super::bench_open::When;
        let mut runs = Vec::new();
        for mechanism in mechanisms.iter().filter(|m| **m != Mechanism::Unlimited) {
            runs.push((*mechanism, When::OnRunningFlows));
        }
        if mechanisms.contains(&Mechanism::Podshaper) {
            runs.push((Mechanism::Podshaper, When::BeforeFlows));
        }
        for rate in &rates {
            for flows in args.flows.iter().map(|f| (*f).max(1)) {
                for (mechanism, when) in &runs {
                    check_stop(&stop)?;
                    let run = super::bench_open::run(
                        &mut shaper,
                        *rate,
                        flows,
                        *mechanism,
                        *when,
                        &args.cc,
                    );
                    check_stop(&stop)?;
                    let run = run.with_context(|| {
                        format!("a limit on open flows at {rate} x{flows} with {mechanism:?}")
                    })?;
                    if !args.json {
                        eprintln!("  open    {}", describe_open(&run));
                    }
                    opens.push(run);
                }
            }
        }
    }
    let open_rows: Vec<_> = opens
        .iter()
        .map(|o| {
            json!({
                "target_bps": o.rate.bits_per_sec(),
                "flows": o.flows,
                "mechanism": name(o.mechanism),
                "limited": open_when(o.when),
                "seconds_ratio": o.seconds,
                "held_mean_ratio": o.mean(),
                "held_worst_ratio": o.worst(),
            })
        })
        .collect();
    let change_rows: Vec<_> = changes
        .iter()
        .map(|c| {
            json!({
                "target_bps": c.rate.bits_per_sec(),
                "mechanism": name(c.mechanism),
                "change_to_effect_ms": c.effect.map(ms),
            })
        })
        .collect();
    if args.json {
        let rows: Vec<_> = cells
            .iter()
            .map(|c| {
                json!({
                    "direction": c.direction,
                    "target_bps": c.rate.bits_per_sec(),
                    "traffic": match c.traffic { Traffic::Tcp(n) => format!("tcp x{n}"), Traffic::Udp => "udp 4x".into() },
                    "mechanism": name(c.mechanism),
                    "achieved_bps": c.achieved,
                    "achieved_ratio": c.achieved / c.rate.bits_per_sec() as f64,
                    "retransmitted_segments": c.retrans.map(|r| r.0),
                    "sent_segments": c.retrans.map(|r| r.1),
                    "cpu_busy": c.cpu_busy,
                    "jain_index": c.jain,
                    "flow_bytes": c.flow_bytes,
                    "rtt_p50_ms": c.rtt.map(|r| ms(r.0)),
                    "rtt_p99_ms": c.rtt.map(|r| ms(r.1)),
                    "bpf_ns_per_packet": c.bpf_ns,
                    "bpf_empty_ns_per_packet": c.bpf_empty_ns,
                    "bpf_sockops_ns_per_run": c.bpf_sockops.map(|(ns, _)| ns),
                    "bpf_sockops_runs": c.bpf_sockops.map(|(_, runs)| runs),
                    "bpf_host_class_ns_per_run": c.bpf_host_class.map(|(ns, _)| ns),
                    "bpf_host_class_runs": c.bpf_host_class.map(|(_, runs)| runs),
                    "bpf_flow_class_ns_per_run": c.bpf_flow_class.map(|(ns, _)| ns),
                    "bpf_flow_class_runs": c.bpf_flow_class.map(|(_, runs)| runs),
                    "shaper_bytes": c.shaped.map(|s| s.bytes),
                    "shaper_packets": c.shaped.map(|s| s.packets),
                    "shaper_dropped": c.shaped.map(|s| s.dropped),
                    "shaper_marked": c.shaped.map(|s| s.marked),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"congestion_control": args.cc, "ecn": args.ecn, "ingress_queue": args.ingress_queue && !args.host_queue, "host_queue": args.host_queue, "cells": rows, "limit_changes": change_rows, "open_flows": open_rows})
        );
    } else {
        println!("TCP congestion control: {}", args.cc);
        println!(
            "ECN: {}",
            if args.ecn {
                "negotiated"
            } else {
                "not asked for"
            }
        );
        if directions.contains(&"ingress") {
            println!(
                "podshaper ingress: {}",
                if args.host_queue {
                    "the node's queue for hostNetwork pods (ifb + htb, the receiver's namespace as the node's) and the cgroup policer"
                } else if args.ingress_queue {
                    "queue in front of the namespace (ifb + htb) and the cgroup policer"
                } else {
                    "cgroup policer alone"
                }
            );
        }
        print_table(&cells, &mechanisms);
        if !changes.is_empty() {
            println!();
            println!("limit halved mid-flow (one TCP flow, egress): time until the new rate holds");
            for c in &changes {
                println!(
                    "  {:>11}  {:<9}  {}",
                    c.rate.to_string(),
                    name(c.mechanism),
                    c.effect
                        .map_or("never".into(), |d| format!("{:.0} ms", ms(d)))
                );
            }
        }
        if !opens.is_empty() {
            println!();
            println!("a limit put on TCP flows already running (egress), seconds 2-7 after it, of the limit:");
            for o in &opens {
                println!("  {}", describe_open(o));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn open_when(when: super::bench_open::When) -> &'static str {
    match when {
        super::bench_open::When::OnRunningFlows => "on running flows",
        super::bench_open::When::BeforeFlows => "before the flows",
    }
}

fn describe_open(o: &super::bench_open::OpenRun) -> String {
    format!(
        "{:>10} x{:<2} {:<9} {:<16} mean {:.3}, worst second {:.3}, first second {:.3}",
        o.rate.to_string(),
        o.flows,
        name(o.mechanism),
        open_when(o.when),
        o.mean(),
        o.worst(),
        o.seconds.first().copied().unwrap_or(0.0)
    )
}

pub(super) fn name(m: Mechanism) -> &'static str {
    match m {
        Mechanism::Podshaper => "podshaper",
        Mechanism::Tbf => "tbf",
        Mechanism::Unlimited => "none",
    }
}

fn describe(c: &Cell) -> String {
    let traffic = match c.traffic {
        Traffic::Tcp(n) => format!("tcp x{n}"),
        Traffic::Udp => "udp 4x".into(),
    };
    format!(
        "{:<7} {:>10} {:<8} {:<9} achieved {:.3} of target{}",
        c.direction,
        c.rate.to_string(),
        traffic,
        name(c.mechanism),
        c.achieved / c.rate.bits_per_sec() as f64,
        c.retrans.map_or(String::new(), |(r, s)| format!(
            ", retrans {:.2}%",
            pct(r, s)
        ))
    ) + &c.jain.map_or(String::new(), |j| format!(", jain {j:.3}"))
        + &c.rtt.map_or(String::new(), |(p50, p99)| {
            format!(", rtt p50 {:.2} ms p99 {:.2} ms", ms(p50), ms(p99))
        })
        + &c.bpf_ns
            .map_or(String::new(), |ns| format!(", bpf {ns:.0} ns/pkt"))
        + &c.bpf_empty_ns
            .map_or(String::new(), |ns| format!(" (empty program {ns:.0})"))
        + &c.bpf_sockops.map_or(String::new(), |(ns, runs)| {
            format!(", sockops {ns:.0} ns/run over {runs} runs")
        })
        + &c.bpf_host_class.map_or(String::new(), |(ns, runs)| {
            format!(", host classifier {ns:.0} ns/run over {runs} runs")
        })
        + &c.bpf_flow_class.map_or(String::new(), |(ns, runs)| {
            format!(", queue classifier {ns:.0} ns/run over {runs} runs")
        })
        + &c.shaped.map_or(String::new(), |s| {
            format!(
                ", dropped {:.2}% marked {:.2}%",
                pct(s.dropped, s.packets + s.dropped),
                pct(s.marked, s.packets + s.dropped)
            )
        })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(r: u64, s: u64) -> f64 {
    if s == 0 {
        0.0
    } else {
        r as f64 * 100.0 / s as f64
    }
}

fn run_cell(
    shaper: &mut Shaper,
    direction: &'static str,
    rate: Rate,
    traffic: Traffic,
    mechanism: Mechanism,
    run: &RunOptions,
) -> Result<Cell> {
    let loaded_since = run.loaded_since;
    settle();
    let lab = NetnsPair::create("bench")?;
    lab.set_congestion_control(&run.cc)?;
    lab.set_ecn(run.ecn)?;
    // As kubelet lays a pod out: the limit on the pod's cgroup, the
    // processes in a container's cgroup below it (so the programs find the
    // limit one level up, as on a node).
    let pod_name = format!("podshaper-bench-{}", std::process::id());
    let cgroup = TransientCgroup::create(&pod_name)?;
    let container = TransientCgroup::create(&format!("{pod_name}/container"))?;
    let egress = direction == "egress";
    let mut attachment = None;
    let mut empty = None;
    match mechanism {
        Mechanism::Podshaper => {
            let limit = Some(DirectionLimit::new(rate, None));
            let limits = if egress {
                Limits {
                    egress: limit,
                    ingress: None,
                }
            } else {
                Limits {
                    egress: None,
                    ingress: limit,
                }
            };
            shaper.set_limits(cgroup.cgroup().id(), &limits)?;
            attachment = Some(shaper.attach(cgroup.cgroup())?);
            empty = match EmptyPrograms::attach(cgroup.cgroup()) {
                Ok(programs) => Some(programs),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot attach the empty programs: no baseline for the shaper's BPF cost");
                    None
                }
            };
            if let (Some(ingress), Some(classifier)) = (limits.ingress, &run.ingress_queue) {
                // what the daemon does for a pod in a namespace of its own
                // (a fresh one: no other daemon's queue to adopt)
                let ns = std::fs::File::open(podshaper_netlab::netns::netns_path(lab.a()))?;
                podshaper_shaper::ingress_queue::install(&ns, &ingress, classifier, false)?;
                shaper.set_ingress_queued(cgroup.cgroup().id(), true)?;
            }
            if let (Some(ingress), Some(classifier)) = (limits.ingress, &run.host_queue) {
                // what the daemon does for a hostNetwork pod: the receiver's
                // namespace plays the node's (torn down with the cell)
                let ns = std::fs::File::open(podshaper_netlab::netns::netns_path(lab.a()))?;
                podshaper_shaper::host_queue::install(
                    &ns,
                    BENCH_HOST_SLOT,
                    &ingress,
                    classifier,
                    &mut std::collections::HashSet::new(),
                )?;
                let level = podshaper_shaper::cgroup::cgroup_level(cgroup.cgroup().path())
                    .context("cannot tell the limited cgroup's level in the hierarchy")?;
                shaper.set_host_queue_slot(cgroup.cgroup().id(), level, BENCH_HOST_SLOT)?;
                shaper.set_ingress_queued(cgroup.cgroup().id(), true)?;
            }
        }
        Mechanism::Tbf => {
            // The CNI bandwidth plugin's queue: on the sending side's veth.
            let ns = if egress { lab.a() } else { lab.b() };
            tc(ns, &tbf_args("add", rate))?;
        }
        Mechanism::Unlimited => {}
    }
    let sender_ns = if egress { lab.a() } else { lab.b() };
    let before_tcp = podshaper_netlab::netns::tcp_segments(sender_ns);
    let before_cpu = cpu_times();
    let before_bpf = super::bpf_stats::snapshot(loaded_since);
    let result = measure(&lab, &container, egress, rate, traffic, run);
    let bpf_runs =
        super::bpf_stats::per_run(&before_bpf, &super::bpf_stats::snapshot(loaded_since));
    let ns_per_run = |program: &str| {
        bpf_runs
            .get(program)
            .filter(|(_, runs)| *runs > 0)
            .map(|(ns, _)| *ns)
    };
    let (bpf_ns, bpf_empty_ns) = match (mechanism, egress) {
        (Mechanism::Podshaper, true) => (ns_per_run("podshaper_egres"), ns_per_run(EMPTY_EGRESS)),
        (Mechanism::Podshaper, false) => (ns_per_run("podshaper_ingre"), ns_per_run(EMPTY_INGRESS)),
        _ => (None, None),
    };
    let runs_of = |program: &str| match mechanism {
        Mechanism::Podshaper => bpf_runs.get(program).filter(|(_, runs)| *runs > 0).copied(),
        _ => None,
    };
    let bpf_sockops = runs_of("podshaper_socko");
    let bpf_host_class = runs_of("podshaper_host_");
    let bpf_flow_class = runs_of("podshaper_flow_");
    drop(empty);
    let cpu_busy = cpu_times()
        .zip(before_cpu)
        .map(|((b1, t1), (b0, t0))| (b1 - b0) as f64 / (t1 - t0).max(1) as f64)
        .unwrap_or(0.0);
    let retrans = match (
        before_tcp,
        podshaper_netlab::netns::tcp_segments(sender_ns),
        traffic,
    ) {
        (Some(b), Some(a), Traffic::Tcp(_)) => Some((a.0 - b.0, a.1 - b.1)),
        _ => None,
    };
    let mut shaped = None;
    if let Some(a) = attachment {
        let counters = shaper.counters(cgroup.cgroup().id())?;
        shaped = Some(if egress {
            counters.egress
        } else {
            counters.ingress
        });
        shaper.detach(a)?;
        shaper.remove_limits(cgroup.cgroup().id())?;
        shaper.remove_host_queue_slot(cgroup.cgroup().id())?;
    }
    let measured = result?;
    let jain = match traffic {
        Traffic::Tcp(n) if n > 1 => podshaper_netlab::traffic::jain_index(&measured.flow_bytes),
        _ => None,
    };
    let mut rtts = measured.rtts;
    let rtt = (!rtts.is_empty()).then(|| {
        (
            podshaper_netlab::latency::quantile(&mut rtts, 0.5),
            podshaper_netlab::latency::quantile(&mut rtts, 0.99),
        )
    });
    Ok(Cell {
        direction,
        rate,
        traffic,
        mechanism,
        achieved: measured.achieved,
        retrans,
        cpu_busy,
        jain,
        flow_bytes: measured.flow_bytes,
        rtt,
        bpf_ns,
        bpf_empty_ns,
        bpf_sockops,
        bpf_host_class,
        bpf_flow_class,
        shaped,
    })
}

/// Goodput at the receiver after a 2 s warm-up. The limited side runs as a
/// child in the cgroup and namespace A; the other side in this process in B.
fn measure(
    lab: &NetnsPair,
    cgroup: &TransientCgroup,
    egress: bool,
    rate: Rate,
    traffic: Traffic,
    run: &RunOptions,
) -> Result<Measured> {
    const PORT: u16 = 5301;
    const ECHO_PORT: u16 = 5302;
    let (seconds, skip, with_probe) = (run.seconds, run.warmup, run.probe);
    let total = Duration::from_secs_f64(seconds);
    let exe = std::env::current_exe()?;
    let offered = (rate.bits_per_sec() * 4).to_string();
    let flows = match traffic {
        Traffic::Tcp(n) => n,
        Traffic::Udp => 1,
    };
    // Beside TCP bulk traffic: a request/response probe. Its far end runs in
    // the limited cgroup (in A); this process pings it from B, so one leg of
    // each round trip crosses the limit in the direction being measured.
    let probe = match traffic {
        Traffic::Tcp(_) if with_probe => Some(start_probe(lab, cgroup, seconds, skip, ECHO_PORT)?),
        _ => None,
    };
    let rtts = || -> Vec<Duration> { probe.map(|p| p.finish()).unwrap_or_default() };
    if egress {
        let to = SocketAddr::new(NetnsPair::addr_b(false), PORT);
        let meter = Meter::default();
        let until = Until::after(total + Duration::from_secs(1));
        let sink = {
            let (meter, until) = (meter.clone(), until.clone());
            traffic::spawn_in(Some(lab.b().to_string()), move || match traffic {
                Traffic::Tcp(_) => traffic::tcp_sink(TcpListener::bind(to)?, meter, &until),
                Traffic::Udp => traffic::udp_sink(UdpSocket::bind(to)?, meter, &until),
            })
        };
        thread::sleep(Duration::from_millis(200));
        let mut cmd = Command::new(exe);
        match traffic {
            Traffic::Tcp(n) => cmd.args(["traffic", "tcp-send", "--flows", &n.to_string()]),
            Traffic::Udp => cmd.args(["traffic", "udp-send", "--rate", &offered]),
        };
        cmd.args([
            "--netns",
            lab.a(),
            "--seconds",
            &seconds.to_string(),
            "--to",
            &to.to_string(),
        ])
        .stdout(Stdio::null());
        cgroup.cgroup().spawn_inside(&mut cmd)?;
        let mut child = cmd.spawn()?;
        let start = Instant::now();
        thread::sleep(Duration::from_secs_f64(skip));
        let first = meter.read();
        while start.elapsed() < total - Duration::from_millis(100) {
            thread::sleep(Duration::from_millis(20));
        }
        let last = meter.read();
        let _ = child.wait();
        until.stop.store(true, Ordering::Relaxed);
        let _ = sink.join();
        Ok(Measured {
            achieved: last.bits_per_sec_since(&first),
            flow_bytes: meter.flow_bytes(),
            rtts: rtts(),
        })
    } else {
        let listen = SocketAddr::new(NetnsPair::addr_a(false), PORT);
        let mut cmd = Command::new(exe);
        let verb = match traffic {
            Traffic::Tcp(_) => "tcp-recv",
            Traffic::Udp => "udp-recv",
        };
        cmd.args([
            "traffic",
            verb,
            "--netns",
            lab.a(),
            "--seconds",
            &seconds.to_string(),
        ])
        .args(["--skip", &skip.to_string(), "--listen", &listen.to_string()])
        .stdout(Stdio::piped());
        cgroup.cgroup().spawn_inside(&mut cmd)?;
        let child = cmd.spawn()?;
        let until = Until::after(total + Duration::from_secs(1));
        let source = {
            let until = until.clone();
            traffic::spawn_in(Some(lab.b().to_string()), move || {
                thread::sleep(Duration::from_millis(200));
                match traffic {
                    Traffic::Tcp(_) => traffic::tcp_send(listen, flows, &until).map(|_| ()),
                    Traffic::Udp => {
                        traffic::udp_send(listen, rate.bits_per_sec() * 4, &until).map(|_| ())
                    }
                }
            })
        };
        let out = child.wait_with_output()?;
        until.stop.store(true, Ordering::Relaxed);
        let _ = source.join();
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("the receiver's report")?;
        let flow_bytes = report["flow_bytes"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        Ok(Measured {
            achieved: report["bits_per_second"]
                .as_f64()
                .context("no rate in the receiver's report")?,
            flow_bytes,
            rtts: rtts(),
        })
    }
}

/// A latency probe in flight: the echo child and the pinging thread.
struct Probe {
    echo: std::process::Child,
    pinger: thread::JoinHandle<std::io::Result<Vec<(Instant, Duration)>>>,
    measure_from: Instant,
}

impl Probe {
    /// Round trips of requests sent after the warm-up.
    fn finish(mut self) -> Vec<Duration> {
        let samples = match self.pinger.join() {
            Ok(Ok(s)) => s,
            _ => Vec::new(),
        };
        let _ = self.echo.wait();
        samples
            .into_iter()
            .filter(|(sent, _)| *sent >= self.measure_from)
            .map(|(_, rtt)| rtt)
            .collect()
    }
}

fn start_probe(
    lab: &NetnsPair,
    cgroup: &TransientCgroup,
    seconds: f64,
    skip: f64,
    port: u16,
) -> Result<Probe> {
    let at = SocketAddr::new(NetnsPair::addr_a(false), port);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["traffic", "tcp-echo", "--netns", lab.a()])
        .args([
            "--seconds",
            &(seconds + 0.5).to_string(),
            "--listen",
            &at.to_string(),
        ])
        .stdout(Stdio::null());
    cgroup.cgroup().spawn_inside(&mut cmd)?;
    let echo = cmd.spawn()?;
    let start = Instant::now();
    let until = Until::after(Duration::from_secs_f64(seconds));
    let pinger = traffic::spawn_in(Some(lab.b().to_string()), move || {
        // the echo server needs a moment to listen
        thread::sleep(Duration::from_millis(150));
        podshaper_netlab::latency::tcp_ping(at, Duration::from_millis(10), &until)
    });
    Ok(Probe {
        echo,
        pinger,
        measure_from: start + Duration::from_secs_f64(skip),
    })
}

/// `tc qdisc add|change` of the tbf the CNI bandwidth plugin builds on veth0:
/// burst = rate/250 (at least 16 KiB), latency 25 ms.
pub(super) fn tbf_args(verb: &'static str, rate: Rate) -> Vec<String> {
    let burst = (rate.bits_per_sec() / 250 / 8).max(16 * 1024);
    ["qdisc", verb, "dev", "veth0", "root", "tbf", "rate"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("{}bit", rate.bits_per_sec()),
            "burst".into(),
            burst.to_string(),
            "latency".into(),
            "25ms".into(),
        ])
        .collect()
}

pub(super) fn tc(ns: &str, args: &[String]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "tc {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// (busy, total) jiffies of all CPUs.
/// Waits (5 s at most) until the machine is nearly idle: the previous cell's
/// namespaces are torn down in the background (their sockets freed by a
/// kernel worker), and a cell that starts meanwhile measures that too (5G x1
/// right after an unlimited cell: 0.65-0.78, alone 0.987-0.999; tbf as well).
pub(super) fn settle() {
    const IDLE_ENOUGH: f64 = 0.15;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut before = cpu_times();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = cpu_times();
        if let (Some((b1, t1)), Some((b0, t0))) = (now, before) {
            if ((b1 - b0) as f64 / (t1 - t0).max(1) as f64) < IDLE_ENOUGH {
                return;
            }
        }
        before = now;
    }
}

fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().sum();
    let idle = cpu.get(3)? + cpu.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

fn print_table(cells: &[Cell], mechanisms: &[Mechanism]) {
    let mut header = format!("{:<8}{:>11}  {:<9}", "dir", "target", "traffic");
    for m in mechanisms {
        header.push_str(&format!(
            "  {:>24}",
            format!("{} (ratio/retr%/cpu)", name(*m))
        ));
    }
    println!("{header}");
    for chunk in cells.chunks(mechanisms.len()) {
        let c0 = &chunk[0];
        let traffic = match c0.traffic {
            Traffic::Tcp(n) => format!("tcp x{n}"),
            Traffic::Udp => "udp 4x".into(),
        };
        let mut line = format!(
            "{:<8}{:>11}  {:<9}",
            c0.direction,
            c0.rate.to_string(),
            traffic
        );
        for c in chunk {
            let ratio = c.achieved / c.rate.bits_per_sec() as f64;
            let retr = c
                .retrans
                .map_or("-".to_string(), |(r, s)| format!("{:.2}", pct(r, s)));
            line.push_str(&format!(
                "  {:>24}",
                format!("{ratio:.3} / {retr} / {:.0}%", c.cpu_busy * 100.0)
            ));
        }
        println!("{line}");
    }
    println!("ratio: goodput at the receiver / target (unlimited: / the target it would have had)");
    println!();
    let mut header = format!("{:<8}{:>11}  {:<9}", "dir", "target", "traffic");
    for m in mechanisms {
        header.push_str(&format!("  {:>22}", format!("{} (rtt p99/jain)", name(*m))));
    }
    header.push_str(&format!("  {:>18}", "bpf ns/pkt (empty)"));
    println!("{header}");
    for chunk in cells.chunks(mechanisms.len()) {
        let c0 = &chunk[0];
        if c0.traffic == Traffic::Udp {
            continue;
        }
        let mut line = format!(
            "{:<8}{:>11}  {:<9}",
            c0.direction,
            c0.rate.to_string(),
            match c0.traffic {
                Traffic::Tcp(n) => format!("tcp x{n}"),
                Traffic::Udp => "udp 4x".into(),
            }
        );
        for c in chunk {
            let rtt = c
                .rtt
                .map_or("-".into(), |(_, p99)| format!("{:.2}ms", ms(p99)));
            let jain = c.jain.map_or("-".into(), |j| format!("{j:.3}"));
            line.push_str(&format!("  {:>22}", format!("{rtt} / {jain}")));
        }
        let bpf = chunk
            .iter()
            .find_map(|c| c.bpf_ns.map(|ns| (ns, c.bpf_empty_ns)))
            .map_or("-".into(), |(ns, empty)| match empty {
                Some(e) => format!("{ns:.0} ({e:.0})"),
                None => format!("{ns:.0}"),
            });
        line.push_str(&format!("  {bpf:>18}"));
        println!("{line}");
    }
    println!(
        "rtt p99: round trip of a 64-byte request/response beside the bulk flows, one leg \
         through the limit; jain: fairness of the flows' bytes (1 = equal); \
         bpf: mean run time of the shaper's program per packet (kernel BPF statistics), \
         in brackets that of a program that does nothing, on the same packets"
    );
}
