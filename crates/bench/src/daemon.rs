//! `podshaper bench daemon`: how fast the daemon attaches, and what it costs.
//!
//! Starts a daemon of its own (this binary's `daemon` subcommand, with a
//! private socket, bpffs directory and cgroup root), then measures over its
//! Unix socket: attach latency for new cgroups and for updates, the time to
//! limit N cgroups, the daemon's RSS after that, and N concurrent clients
//! attaching and detaching. Everything it made is removed at the end.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use podshaper_api::{pb, DaemonAddress};
use podshaper_netlab::latency::quantile;
use podshaper_netlab::NetnsPair;
use podshaper_shaper::cgroup::{cgroup2_mount, remove_cgroup_tree};
use podshaper_shaper::Cgroup;
use serde::Serialize;

use crate::bpf_stats;
use crate::error::{BenchError, Result};
use crate::lab::{self, check_stop, Sink};
use crate::options::Traffic;

/// A daemon bench run (`podshaper bench daemon`'s flags).
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// cgroups to limit
    pub cgroups: usize,
    /// concurrent clients
    pub clients: usize,
    /// limited cgroups that send TCP traffic at once (with the N limits in
    /// the maps), to measure the per-packet BPF cost and the daemon's CPU
    pub traffic_cgroups: usize,
    /// seconds of that traffic
    pub traffic_seconds: u64,
}

/// What the daemon bench measured (`--json` prints it; the table is drawn
/// from it).
#[derive(Debug, Clone, Serialize)]
pub struct DaemonReport {
    pub cgroups: usize,
    /// cgroups the daemon listed with every limit in place
    pub listed: usize,
    pub attach_p50_ms: f64,
    pub attach_p99_ms: f64,
    pub update_p50_ms: f64,
    pub update_p99_ms: f64,
    pub detach_p50_ms: f64,
    pub detach_p99_ms: f64,
    /// limiting every cgroup, one RPC each
    pub attach_all_seconds: f64,
    pub rss_idle_kib: u64,
    pub rss_after_attach_kib: u64,
    pub daemon_cpu_seconds_start_and_attach: f64,
    pub daemon_cpu_seconds_during_traffic: f64,
    /// None without traffic cgroups
    pub traffic: Option<TrafficPhase>,
    pub clients: usize,
    pub concurrent_errors: usize,
    pub concurrent_seconds: f64,
    /// programs, maps and links loaded after the concurrent clients, less
    /// before them
    pub leaked_programs_maps_links: [i64; 3],
}

/// TCP senders in limited cgroups, all at once.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficPhase {
    pub senders: usize,
    pub achieved_bps: f64,
    pub target_bps: u64,
    /// by program name
    pub programs: BTreeMap<String, ProgramRuns>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramRuns {
    pub ns_per_run: f64,
    pub runs: u64,
}

/// Egress limit of each cgroup while traffic runs: 50 x 20M = 1 Gbit/s,
/// which two cores can carry.
const TRAFFIC_LIMIT_BITS: u64 = 20_000_000;

/// CPU time (user + system) a process has used.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || BenchError::Proc("bad /proc/PID/stat");
    // fields after the command name (which may hold spaces) in parentheses
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(bad)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        |i: usize| -> Result<u64> { fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(bad) };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .map_err(|e| BenchError::Io(e.into()))?
        .unwrap_or(100) as u64;
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or(BenchError::Proc("no VmRSS in /proc/PID/status"))
}

/// Runs TCP senders in `cgroups` (one each, in namespace A of a fresh lab)
/// for `seconds`, with BPF run-time statistics on: the achieved aggregate
/// rate and, per program, nanoseconds per run and runs.
fn traffic_phase(
    cgroups: &[String],
    seconds: u64,
    loaded_since: SystemTime,
) -> Result<TrafficPhase> {
    let lab = NetnsPair::create("bd")?;
    let port = 20000 + (std::process::id() % 10000) as u16;
    let sink_addr = std::net::SocketAddr::new(NetnsPair::addr_b(false), port);
    let sink = Sink::start(
        &lab,
        Traffic::Tcp(1),
        sink_addr,
        Duration::from_secs(seconds + 2),
    );
    // Stats are on while this fd is open.
    let stats = bpf_stats::enable()?;
    let before = bpf_stats::snapshot(loaded_since);
    let mut senders = Vec::new();
    for cg in cgroups {
        let cgroup = Cgroup::open(Path::new(cg))?;
        let mut cmd = lab::traffic_command("tcp-send", lab.a())?;
        cgroup.spawn_inside(&mut cmd)?;
        cmd.args(["--seconds", &seconds.to_string()])
            .args(["--to", &sink_addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        senders.push(
            cmd.spawn()
                .map_err(BenchError::io("cannot start a sender"))?,
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let first = sink.meter.read();
    std::thread::sleep(Duration::from_secs(seconds.saturating_sub(1).max(1)));
    let last = sink.meter.read();
    for mut s in senders {
        let _ = s.wait();
    }
    let after = bpf_stats::snapshot(loaded_since);
    drop(stats);
    sink.stop();
    let programs = bpf_stats::per_run(&before, &after)
        .into_iter()
        .map(|(name, (ns_per_run, runs))| (name, ProgramRuns { ns_per_run, runs }))
        .collect();
    Ok(TrafficPhase {
        senders: cgroups.len(),
        achieved_bps: last.bits_per_sec_since(&first),
        target_bps: cgroups.len() as u64 * TRAFFIC_LIMIT_BITS,
        programs,
    })
}

/// What the bench made, removed on drop.
struct Scratch {
    root: PathBuf,
    bpffs: PathBuf,
    socket_dir: PathBuf,
    daemon: Option<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.socket_dir);
        let _ = remove_cgroup_tree(&self.root);
    }
}

/// (programs, maps, links) loaded on the whole machine.
fn kernel_objects() -> (usize, usize, usize) {
    (
        aya::programs::loaded_programs().count(),
        aya::maps::loaded_maps().count(),
        aya::programs::loaded_links().count(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn target(cgroup: &str) -> Option<pb::Target> {
    Some(pb::Target {
        target: Some(pb::target::Target::Cgroup(cgroup.to_string())),
    })
}

fn request(cgroup: &str, bits: u64) -> pb::AttachRequest {
    pb::AttachRequest {
        target: target(cgroup),
        egress: Some(pb::DirectionLimit {
            bits_per_second: bits,
            burst_bytes: 0,
        }),
        ingress: Some(pb::DirectionLimit {
            bits_per_second: bits / 2,
            burst_bytes: 0,
        }),
        ..Default::default()
    }
}

fn detach_request(cgroup: &str) -> pb::DetachRequest {
    pb::DetachRequest {
        target: target(cgroup),
    }
}

/// A request the daemon refused.
fn refused(what: &'static str) -> impl FnOnce(tonic::Status) -> BenchError {
    move |source| BenchError::Request { what, source }
}

/// Runs the daemon bench; `stop` (a signal) ends it early with
/// [`BenchError::Interrupted`], once what it made is removed.
pub fn run(options: &DaemonOptions, stop: &AtomicBool) -> Result<DaemonReport> {
    let tag = format!("podshaper-bench-{}", std::process::id());
    let mut scratch = Scratch {
        root: cgroup2_mount()?.join(&tag),
        bpffs: PathBuf::from("/sys/fs/bpf").join(&tag),
        socket_dir: std::env::temp_dir().join(&tag),
        daemon: None,
    };
    std::fs::create_dir_all(&scratch.socket_dir)?;
    let cgroups: Vec<String> = (0..options.cgroups.max(options.clients))
        .map(|i| {
            let p = scratch.root.join(format!("c{i}"));
            std::fs::create_dir_all(&p)
                .map_err(BenchError::io(format!("cannot create {}", p.display())))?;
            Ok(p.display().to_string())
        })
        .collect::<Result<_>>()?;
    let socket = scratch.socket_dir.join("podshaper.sock");
    let daemon = start_daemon(&socket, &scratch.bpffs, &scratch.root, &scratch.socket_dir)?;
    let pid = daemon.id();
    let loaded_since = SystemTime::now() - Duration::from_secs(1);
    scratch.daemon = Some(daemon);
    let rss_idle_kib = rss_kib(pid)?;
    let address = DaemonAddress::Unix(socket.clone());
    let n = options.cgroups;

    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(async {
        let mut client = podshaper_api::connect(&address, None).await?;
        // new attachments: N cgroups, one RPC each
        let started = Instant::now();
        let mut attach = Vec::with_capacity(n);
        for cg in &cgroups[..n] {
            check_stop(stop)?;
            let t = Instant::now();
            client
                .attach(request(cg, 100_000_000))
                .await
                .map_err(refused("attach"))?;
            attach.push(t.elapsed());
        }
        let attach_all = started.elapsed();
        let rss_after_attach_kib = rss_kib(pid)?;
        let cpu_attach = cpu_time(pid)?;
        // traffic in some of them, with every limit in the maps
        let senders = &cgroups[..options.traffic_cgroups.min(n)];
        for cg in senders {
            check_stop(stop)?;
            client
                .attach(request(cg, TRAFFIC_LIMIT_BITS))
                .await
                .map_err(refused("attach"))?;
        }
        let cpu_before_traffic = cpu_time(pid)?;
        let traffic = if senders.is_empty() {
            None
        } else {
            let senders = senders.to_vec();
            let seconds = options.traffic_seconds;
            let phase =
                tokio::task::spawn_blocking(move || traffic_phase(&senders, seconds, loaded_since));
            Some(phase.await.map_err(|e| BenchError::Io(e.into()))??)
        };
        let cpu_during_traffic = cpu_time(pid)? - cpu_before_traffic;
        check_stop(stop)?;
        // updates: a new rate on each, one map update each
        let mut update = Vec::with_capacity(n);
        for cg in &cgroups[..n] {
            check_stop(stop)?;
            let t = Instant::now();
            client
                .attach(request(cg, 50_000_000))
                .await
                .map_err(refused("update"))?;
            update.push(t.elapsed());
        }
        let listed = client
            .list(pb::ListRequest {})
            .await
            .map_err(refused("list"))?
            .into_inner()
            .cgroups
            .len();
        let mut detach = Vec::with_capacity(n);
        for cg in &cgroups[..n] {
            check_stop(stop)?;
            let t = Instant::now();
            client
                .detach(detach_request(cg))
                .await
                .map_err(refused("detach"))?;
            detach.push(t.elapsed());
        }
        // concurrent clients, each on its own connection
        check_stop(stop)?;
        let before = kernel_objects();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for cg in &cgroups[..options.clients] {
            let (address, cg) = (address.clone(), cg.clone());
            tasks.spawn(async move {
                let mut c = podshaper_api::connect(&address, None)
                    .await
                    .map_err(|e| e.to_string())?;
                c.attach(request(&cg, 10_000_000))
                    .await
                    .map_err(|e| e.to_string())?;
                c.detach(detach_request(&cg))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            });
        }
        let mut concurrent_errors = 0;
        while let Some(r) = tasks.join_next().await {
            if !matches!(r, Ok(Ok(()))) {
                concurrent_errors += 1;
            }
        }
        let concurrent = started.elapsed();
        let after = kernel_objects();
        Ok::<_, BenchError>(DaemonReport {
            cgroups: n,
            listed,
            attach_p50_ms: ms(quantile(&mut attach, 0.5)),
            attach_p99_ms: ms(quantile(&mut attach, 0.99)),
            update_p50_ms: ms(quantile(&mut update, 0.5)),
            update_p99_ms: ms(quantile(&mut update, 0.99)),
            detach_p50_ms: ms(quantile(&mut detach, 0.5)),
            detach_p99_ms: ms(quantile(&mut detach, 0.99)),
            attach_all_seconds: attach_all.as_secs_f64(),
            rss_idle_kib,
            rss_after_attach_kib,
            daemon_cpu_seconds_start_and_attach: cpu_attach.as_secs_f64(),
            daemon_cpu_seconds_during_traffic: cpu_during_traffic.as_secs_f64(),
            traffic,
            clients: options.clients,
            concurrent_errors,
            concurrent_seconds: concurrent.as_secs_f64(),
            leaked_programs_maps_links: [
                after.0 as i64 - before.0 as i64,
                after.1 as i64 - before.1 as i64,
                after.2 as i64 - before.2 as i64,
            ],
        })
    });
    // a signal also reaches the daemon and the senders (the terminal's
    // process group): the phase's error is then the signal's
    check_stop(stop)?;
    let report = report?;
    drop(scratch);
    Ok(report)
}

fn start_daemon(socket: &Path, bpffs: &Path, root: &Path, log_dir: &Path) -> Result<Child> {
    let log = std::fs::File::create(log_dir.join("daemon.log"))?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("daemon")
        .arg("--socket")
        .arg(socket)
        .arg("--bpffs-dir")
        .arg(bpffs)
        .arg("--cgroup-root")
        .arg(root)
        .env("PODSHAPER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(BenchError::io("cannot start the daemon"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = child.try_wait()? {
            return Err(BenchError::DaemonExited(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(BenchError::DaemonNotUp);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

impl DaemonReport {
    /// The table `podshaper bench daemon` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = self.write_table(&mut out);
        out
    }

    fn write_table(&self, out: &mut String) -> fmt::Result {
        writeln!(
            out,
            "podshaper daemon benchmark (Unix socket, one client unless noted)"
        )?;
        writeln!(
            out,
            "  attach a new cgroup      p50 {:.2} ms   p99 {:.2} ms",
            self.attach_p50_ms, self.attach_p99_ms
        )?;
        writeln!(
            out,
            "  update a limit           p50 {:.2} ms   p99 {:.2} ms",
            self.update_p50_ms, self.update_p99_ms
        )?;
        writeln!(
            out,
            "  detach                   p50 {:.2} ms   p99 {:.2} ms",
            self.detach_p50_ms, self.detach_p99_ms
        )?;
        writeln!(
            out,
            "  limit {} cgroups         {:.2} s",
            self.cgroups, self.attach_all_seconds
        )?;
        writeln!(
            out,
            "  daemon RSS               {} KiB idle, {} KiB with {} limited",
            self.rss_idle_kib, self.rss_after_attach_kib, self.cgroups
        )?;
        writeln!(
            out,
            "  daemon CPU               {:.2} s to start and limit {}; {:.2} s during the traffic",
            self.daemon_cpu_seconds_start_and_attach,
            self.cgroups,
            self.daemon_cpu_seconds_during_traffic
        )?;
        if let Some(t) = &self.traffic {
            writeln!(
                out,
                "  traffic                  {} cgroups sending at once: {:.0} of {} bit/s ({:.3})",
                t.senders,
                t.achieved_bps,
                t.target_bps,
                t.achieved_bps / t.target_bps as f64
            )?;
            for (name, p) in &t.programs {
                writeln!(
                    out,
                    "  BPF {:<20} {:>7.0} ns per run over {} runs",
                    name, p.ns_per_run, p.runs
                )?;
            }
        }
        let [programs, maps, links] = self.leaked_programs_maps_links;
        writeln!(
            out,
            "  {} concurrent clients    {} errors, {:.2} s, leaked (programs, maps, links) [{programs},{maps},{links}]",
            self.clients, self.concurrent_errors, self.concurrent_seconds
        )
    }
}
