//! The matrix: for each direction, rate and traffic, every mechanism gets a
//! fresh lab (a veth pair between two network namespaces, or a delay line
//! between them for a round trip above zero) and the same
//! traffic; a cell reports goodput at the receiver, the sender's TCP
//! retransmissions, the machine's CPU, fairness, latency beside the flows,
//! the BPF programs' cost, and for short connections how many completed a
//! second and how long each took.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use podshaper_netlab::short::{self, ShortReport};
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::window;
use podshaper_netlab::{netns, DelayConfig, NetnsPair};
use podshaper_rate::Rate;
use podshaper_shaper::empty::{EmptyPrograms, EMPTY_EGRESS, EMPTY_INGRESS};
use podshaper_shaper::{DirectionLimit, Limits, Shaper, TransientCgroup};

use crate::bpf_stats;
use crate::error::{BenchError, Result};
use crate::lab::{self, tbf_args, tc, Sink};
use crate::options::{Direction, Mechanism, Traffic};
use crate::report::{ms, Cell};

/// What every cell runs with.
pub struct CellOptions {
    pub seconds: f64,
    /// the seconds at the start of a run left out of the measurement
    pub warmup: f64,
    /// the shaper's programs are those loaded since
    pub loaded_since: SystemTime,
    /// the latency probe beside TCP traffic
    pub probe: bool,
    /// the senders' TCP congestion control
    pub cc: String,
    /// TCP connections negotiate ECN
    pub ecn: bool,
    /// podshaper's ingress queue in front of the limited namespace: where
    /// its flow classifier is pinned (None: no queue)
    pub ingress_queue: Option<PathBuf>,
    /// the node's queue for hostNetwork pods in the limited namespace:
    /// where its classifier is pinned (None: none)
    pub host_queue: Option<PathBuf>,
    /// the round trip between the namespaces: zero for the direct veth
    /// pair, else through a delay line
    pub rtt: Duration,
}

/// A classifier of the ingress queues pinned where `tc` can find it, for as
/// long as the bench runs (the daemon pins them in its own bpffs directory).
pub struct ClassifierPin(pub PathBuf);

impl ClassifierPin {
    /// The flow classifier of a pod's own queue.
    pub fn flow(shaper: &mut Shaper) -> Result<Self> {
        let path = Self::path("flow_class");
        shaper.pin_flow_classifier(&path).map_err(|e| {
            BenchError::from(e).during(
                "cannot pin the ingress queue's flow classifier under /sys/fs/bpf \
                 (mount bpffs there, or measure without the queue: --ingress-queue false)",
            )
        })?;
        Ok(Self(path))
    }

    /// The classifier of the node's queue for hostNetwork pods.
    pub fn host(shaper: &mut Shaper) -> Result<Self> {
        let path = Self::path("host_class");
        shaper.pin_host_classifier(&path).map_err(|e| {
            BenchError::from(e).during(
                "cannot pin the hostNetwork pods' queue classifier under /sys/fs/bpf \
                 (mount bpffs there, or measure without it: --host-queue false)",
            )
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
    /// each flow's bytes after the warm-up
    flow_bytes: Vec<u64>,
    rtts: Vec<Duration>,
    /// what the source of short connections saw
    short: Option<ShortReport>,
}

pub fn run_cell(
    shaper: &mut Shaper,
    direction: Direction,
    rate: Rate,
    traffic: Traffic,
    mechanism: Mechanism,
    run: &CellOptions,
) -> Result<Cell> {
    let loaded_since = run.loaded_since;
    lab::settle();
    // a delay line's queues sized for the cell's rate (at least for
    // 1 Gbit/s), so that traffic shaped to it does not overflow them
    let delay = (!run.rtt.is_zero()).then(|| DelayConfig::for_rate(run.rtt, rate.bits_per_sec()));
    let lab = NetnsPair::create_with_delay("bench", delay)?;
    lab.set_congestion_control(&run.cc)?;
    lab.set_ecn(run.ecn)?;
    // As kubelet lays a pod out: the limit on the pod's cgroup, the
    // processes in a container's cgroup below it (so the programs find the
    // limit one level up, as on a node).
    let pod_name = format!("podshaper-bench-{}", std::process::id());
    let cgroup = TransientCgroup::create(&pod_name)?;
    let container = TransientCgroup::create(&format!("{pod_name}/container"))?;
    let egress = direction == Direction::Egress;
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
                let ns = std::fs::File::open(netns::netns_path(lab.a()))?;
                podshaper_shaper::ingress_queue::install(&ns, &ingress, classifier, false)?;
                shaper.set_ingress_queued(cgroup.cgroup().id(), true)?;
            }
            if let (Some(ingress), Some(classifier)) = (limits.ingress, &run.host_queue) {
                // what the daemon does for a hostNetwork pod: the receiver's
                // namespace plays the node's (torn down with the cell)
                let ns = std::fs::File::open(netns::netns_path(lab.a()))?;
                podshaper_shaper::host_queue::install(
                    &ns,
                    BENCH_HOST_SLOT,
                    &ingress,
                    classifier,
                    &mut HashSet::new(),
                )?;
                let level = podshaper_shaper::cgroup::cgroup_level(cgroup.cgroup().path())
                    .ok_or(BenchError::CgroupLevel)?;
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
    let before_tcp = netns::tcp_segments(sender_ns);
    let before_cpu = lab::cpu_times();
    let before_bpf = bpf_stats::snapshot(loaded_since);
    let result = measure(&lab, &container, egress, rate, traffic, run);
    let bpf_runs = bpf_stats::per_run(&before_bpf, &bpf_stats::snapshot(loaded_since));
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
    // None when /proc/stat could not be read
    let cpu = lab::cpu_busy_between(before_cpu, lab::cpu_times());
    let cpu_busy = cpu.unwrap_or(0.0);
    let retrans = match (before_tcp, netns::tcp_segments(sender_ns), traffic) {
        (Some(b), Some(a), Traffic::Tcp(_) | Traffic::Short(_)) => Some((a.0 - b.0, a.1 - b.1)),
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
    let delay_line_lost = lab.delay().map(|line| {
        let (a_to_b, b_to_a) = line.counts();
        a_to_b.lost() + b_to_a.lost()
    });
    let measured = result?;
    // over the flows' bytes after the warm-up, as the tests count them
    let jain = match traffic {
        Traffic::Tcp(n) if n > 1 => traffic::jain_index(&measured.flow_bytes),
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
        rtt_ms: ms(run.rtt),
        delay_line_lost,
        achieved_bps: measured.achieved,
        achieved_ratio: measured.achieved / rate.bits_per_sec() as f64,
        retransmitted_segments: retrans.map(|r| r.0),
        sent_segments: retrans.map(|r| r.1),
        cpu_busy,
        cpu_percent_per_gbit: cpu
            .filter(|_| measured.achieved > 0.0)
            .map(|busy| busy * 100.0 / (measured.achieved / 1e9)),
        jain_index: jain,
        flow_bytes: measured.flow_bytes,
        rtt_p50_ms: rtt.map(|r| ms(r.0)),
        rtt_p99_ms: rtt.map(|r| ms(r.1)),
        bpf_ns_per_packet: bpf_ns,
        bpf_empty_ns_per_packet: bpf_empty_ns,
        bpf_sockops_ns_per_run: bpf_sockops.map(|(ns, _)| ns),
        bpf_sockops_runs: bpf_sockops.map(|(_, runs)| runs),
        bpf_host_class_ns_per_run: bpf_host_class.map(|(ns, _)| ns),
        bpf_host_class_runs: bpf_host_class.map(|(_, runs)| runs),
        bpf_flow_class_ns_per_run: bpf_flow_class.map(|(ns, _)| ns),
        bpf_flow_class_runs: bpf_flow_class.map(|(_, runs)| runs),
        shaper_bytes: shaped.map(|s| s.bytes),
        shaper_packets: shaped.map(|s| s.packets),
        shaper_dropped: shaped.map(|s| s.dropped),
        shaper_marked: shaped.map(|s| s.marked),
        connections: measured.short.as_ref().map(|s| s.connections),
        connections_per_second: measured.short.as_ref().map(|s| s.connections_per_second),
        completion_p50_ms: measured.short.as_ref().map(|s| s.completion_p50_ms),
        completion_p99_ms: measured.short.as_ref().map(|s| s.completion_p99_ms),
        failed_connections: measured.short.as_ref().map(|s| s.failed),
    })
}

/// Goodput at the receiver after the warm-up. The limited side runs as a
/// child in the cgroup and namespace A; the other side in this process in B.
fn measure(
    lab: &NetnsPair,
    cgroup: &TransientCgroup,
    egress: bool,
    rate: Rate,
    traffic: Traffic,
    run: &CellOptions,
) -> Result<Measured> {
    const PORT: u16 = 5301;
    const ECHO_PORT: u16 = 5302;
    let (seconds, skip, with_probe) = (run.seconds, run.warmup, run.probe);
    let total = Duration::from_secs_f64(seconds);
    let offered = rate.bits_per_sec() * 4;
    let flows = match traffic {
        Traffic::Tcp(n) => n,
        Traffic::Udp | Traffic::Short(_) => 1,
    };
    // Beside TCP bulk traffic: a request/response probe. Its far end runs in
    // the limited cgroup (in A); this process pings it from B, so one leg of
    // each round trip crosses the limit in the direction being measured.
    let probe = match traffic {
        Traffic::Tcp(_) if with_probe => Some(Probe::start(lab, cgroup, seconds, skip, ECHO_PORT)?),
        _ => None,
    };
    let rtts = || -> Vec<Duration> { probe.map(|p| p.finish()).unwrap_or_default() };
    if egress {
        let to = SocketAddr::new(NetnsPair::addr_b(false), PORT);
        let sink = Sink::start(lab, traffic, to, total + Duration::from_secs(1));
        let seconds = seconds.to_string();
        let child = lab::start_senders(lab, cgroup.cgroup(), traffic, offered, &seconds, skip, to)?;
        // the window ends a little before the senders do
        let until = Until::after(total - Duration::from_millis(100));
        let measured = window::measure(&sink.meter, Duration::from_secs_f64(skip), &until);
        let sender = child.wait_with_output();
        sink.stop();
        let short = match traffic {
            Traffic::Short(_) => {
                Some(serde_json::from_slice(&sender?.stdout).map_err(BenchError::SenderReport)?)
            }
            _ => None,
        };
        Ok(Measured {
            achieved: measured.bits_per_sec(),
            flow_bytes: measured.flow_bytes,
            rtts: rtts(),
            short,
        })
    } else {
        let listen = SocketAddr::new(NetnsPair::addr_a(false), PORT);
        let verb = match traffic {
            Traffic::Tcp(_) => "tcp-recv",
            Traffic::Udp => "udp-recv",
            Traffic::Short(_) => "short-recv",
        };
        let concurrency = match traffic {
            Traffic::Short(s) => s.concurrency.to_string(),
            _ => String::new(),
        };
        let extra: &[&str] = match traffic {
            Traffic::Short(_) => &["--concurrency", &concurrency],
            _ => &[],
        };
        let receiver = lab::spawn_receiver(
            verb,
            lab.a(),
            cgroup.cgroup(),
            listen,
            (seconds, skip),
            extra,
        )?;
        // short connections stop with the receiver's window (it answers
        // for a second more, so that none is refused as the run ends)
        let source_lasts = match traffic {
            Traffic::Short(_) => total,
            _ => total + Duration::from_secs(1),
        };
        let until = Until::after(source_lasts);
        let source = {
            let until = until.clone();
            traffic::spawn_in(Some(lab.b().to_string()), move || {
                thread::sleep(Duration::from_millis(200));
                match traffic {
                    Traffic::Tcp(_) => traffic::tcp_send(listen, flows, &until).map(|_| None),
                    Traffic::Udp => traffic::udp_send(listen, offered, &until).map(|_| None),
                    Traffic::Short(s) => {
                        let skip = Duration::from_secs_f64(skip);
                        short::short_send(listen, s, skip, &until).map(Some)
                    }
                }
            })
        };
        let report = lab::receiver_report(receiver);
        until.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = source.join();
        let report = report?;
        let short = match (traffic, sent) {
            (Traffic::Short(_), Ok(sent)) => sent?,
            (Traffic::Short(_), Err(_)) => {
                return Err(BenchError::Proc("the short connections' thread panicked"))
            }
            _ => None,
        };
        Ok(Measured {
            achieved: report.bits_per_second,
            flow_bytes: report.flow_bytes_measured,
            rtts: rtts(),
            short,
        })
    }
}

/// A latency probe in flight: the echo child and the pinging thread.
struct Probe {
    echo: Child,
    pinger: JoinHandle<std::io::Result<Vec<(Instant, Duration)>>>,
    measure_from: Instant,
}

impl Probe {
    fn start(
        lab: &NetnsPair,
        cgroup: &TransientCgroup,
        seconds: f64,
        skip: f64,
        port: u16,
    ) -> Result<Self> {
        let at = SocketAddr::new(NetnsPair::addr_a(false), port);
        let mut cmd = lab::traffic_command("tcp-echo", lab.a())?;
        cmd.args([
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
        Ok(Self {
            echo,
            pinger,
            measure_from: start + Duration::from_secs_f64(skip),
        })
    }

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
