//! `podshaper bench`, `podshaper bench daemon` and `podshaper bench pods`:
//! the flags, parsed into the bench library's options (`podshaper_bench`),
//! and its report printed as a table or as JSON.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use podshaper_bench::daemon::DaemonOptions;
use podshaper_bench::pods::PodsOptions;
use podshaper_bench::Options;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Target rates.
    #[arg(long, value_delimiter = ',', default_value = "10M,100M,1G,5G")]
    rates: Vec<String>,
    /// TCP flow counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    flows: Vec<usize>,
    /// Round-trip times between the sender and the receiver, a dimension of
    /// the cells like the rates: 0 is the direct veth pair (about 0.05 ms);
    /// anything more (e.g. 1ms,10ms,50ms, at most 1s) a delay line of the
    /// lab's own between the two namespaces, holding each packet for half
    /// of it each way.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0",
        value_name = "DURATION"
    )]
    rtt: Vec<String>,
    /// Directions, seen from the limited side.
    #[arg(long, value_delimiter = ',', default_value = "egress,ingress")]
    directions: Vec<String>,
    /// Mechanisms to compare.
    #[arg(long, value_delimiter = ',', default_value = "podshaper,tbf,none")]
    mechanisms: Vec<String>,
    /// Also UDP, offered at 4x the limit.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    udp: bool,
    /// Also short TCP connections, as SIZE:CONCURRENCY pairs (e.g.
    /// 16Ki:32,256Ki:8,1Mi:64): CONCURRENCY connections (1-1024) at once,
    /// each writing SIZE bytes (a Kubernetes quantity, or a tc size: 64K is
    /// 64 KiB, 1M is 1,000,000 bytes, 1Mi 1 MiB), shutting down its write
    /// side and waiting for the receiver's answer (one byte, once it has
    /// read everything), a new one opening at once in its place. Each is a row of cells beside the TCP flows and UDP,
    /// with connections per second and completion times.
    #[arg(long, value_delimiter = ',', value_name = "SIZE:CONCURRENCY")]
    short: Vec<String>,
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
    /// Also measure a limit put on TCP flows already running (the
    /// directions and flow counts above): podshaper as the daemon limits a
    /// cgroup, tbf added to the running sender's veth, and podshaper on the
    /// same flows started under the limit.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    open: bool,
    /// Draw the limit-change runs (rate over time per mechanism) to this PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<std::path::PathBuf>,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct BenchDaemonArgs {
    /// Cgroups to limit.
    #[arg(long, default_value_t = 1000)]
    cgroups: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Limited cgroups that send TCP traffic at once (with the N limits in
    /// the maps), to measure the per-packet BPF cost and the daemon's CPU.
    #[arg(long, default_value_t = 50)]
    traffic_cgroups: usize,
    /// Seconds of that traffic.
    #[arg(long, default_value_t = 5)]
    traffic_seconds: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs, stop: Arc<AtomicBool>) -> Result<ExitCode> {
    let options = Options {
        rates: args
            .rates
            .iter()
            .map(|r| r.parse())
            .collect::<Result<_, _>>()?,
        flows: args.flows,
        rtts: args
            .rtt
            .iter()
            .map(|r| podshaper_bench::options::parse_rtt(r))
            .collect::<Result<_, _>>()?,
        mechanisms: args
            .mechanisms
            .iter()
            .map(|m| m.parse())
            .collect::<Result<_, _>>()?,
        directions: args
            .directions
            .iter()
            .map(|d| d.parse())
            .collect::<Result<_, _>>()?,
        udp: args.udp,
        short: args
            .short
            .iter()
            .map(|s| podshaper_bench::options::parse_short(s))
            .collect::<Result<_, _>>()?,
        seconds: args.seconds,
        warmup: args.warmup,
        probe: args.probe,
        cc: args.cc,
        ecn: args.ecn,
        ingress_queue: args.ingress_queue,
        host_queue: args.host_queue,
        change: args.change,
        open: args.open,
        plot: args.plot,
    };
    let json = args.json;
    let report = podshaper_bench::run(&options, &stop, &mut |done| {
        if !json {
            eprintln!("  {done}");
        }
    })?;
    if json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct BenchPodsArgs {
    /// Pods, each a cgroup and a network namespace with a veth of its own,
    /// sending one TCP flow at once.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// The lowest pod's limit; the others spread evenly up to --max.
    #[arg(long, default_value = "1M")]
    min: String,
    /// The highest pod's limit.
    #[arg(long, default_value = "50M")]
    max: String,
    /// Mechanisms, each in turn on the same pods: podshaper's egress limit
    /// on each pod's cgroup, tbf on each pod's veth.
    #[arg(long, value_delimiter = ',', default_value = "podshaper,tbf")]
    mechanisms: Vec<String>,
    /// Seconds of traffic, the warm-up included.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds at the start left out of the measurement.
    #[arg(long, default_value_t = 4.0)]
    warmup: f64,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run_pods(args: BenchPodsArgs, stop: Arc<AtomicBool>) -> Result<ExitCode> {
    let options = PodsOptions {
        pods: args.pods,
        min: args.min.parse()?,
        max: args.max.parse()?,
        seconds: args.seconds,
        warmup: args.warmup,
        mechanisms: args
            .mechanisms
            .iter()
            .map(|m| m.parse())
            .collect::<Result<_, _>>()?,
    };
    let report = podshaper_bench::pods::run(&options, &stop)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_daemon(args: BenchDaemonArgs, stop: Arc<AtomicBool>) -> Result<ExitCode> {
    let options = DaemonOptions {
        cgroups: args.cgroups,
        clients: args.clients,
        traffic_cgroups: args.traffic_cgroups,
        traffic_seconds: args.traffic_seconds,
    };
    let report = podshaper_bench::daemon::run(&options, &stop)?;
    if args.json {
        // as a JSON object's keys print: sorted
        println!("{}", serde_json::to_value(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}
