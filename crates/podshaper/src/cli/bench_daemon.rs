//! `podshaper bench daemon`: how fast the daemon attaches, and what it costs.
//!
//! Starts a daemon of its own (private socket, bpffs directory and cgroup
//! root), then measures over its Unix socket: attach latency for new
//! cgroups and for updates, the time to limit N cgroups, the daemon's RSS
//! after that, and N concurrent clients attaching and detaching. Everything
//! it made is removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use podshaper_api::{pb, DaemonAddress};
use podshaper_netlab::latency::quantile;
use podshaper_shaper::cgroup::{cgroup2_mount, remove_cgroup_tree};

use super::bench::check_stop;

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

/// Egress limit of each cgroup while traffic runs: 50 x 20M = 1 Gbit/s,
/// which two cores can carry.
const TRAFFIC_LIMIT_BITS: u64 = 20_000_000;

/// CPU time (user + system) a process has used.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // fields after the command name (which may hold spaces) in parentheses
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("bad /proc/PID/stat")
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as u64;
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// Runs TCP senders in `cgroups` (one each, in namespace A of a fresh lab)
/// for `seconds`, with BPF run-time statistics on. Returns the achieved
/// aggregate rate and, per program, nanoseconds per run and runs.
fn traffic_phase(
    cgroups: &[String],
    seconds: u64,
    loaded_since: std::time::SystemTime,
) -> Result<serde_json::Value> {
    use podshaper_netlab::traffic::{self, Until};
    use podshaper_netlab::{Meter, NetnsPair};
    use podshaper_shaper::Cgroup;

    let lab = NetnsPair::create("bd")?;
    let port = 20000 + (std::process::id() % 10000) as u16;
    let sink_addr = std::net::SocketAddr::new(NetnsPair::addr_b(false), port);
    let meter = Meter::default();
    let until = Until::after(Duration::from_secs(seconds + 2));
    let sink = {
        let (meter, until) = (meter.clone(), until.clone());
        traffic::spawn_in(Some(lab.b().to_string()), move || {
            traffic::tcp_sink(std::net::TcpListener::bind(sink_addr)?, meter, &until)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Stats are on while this fd is open.
    let stats = super::bpf_stats::enable()?;
    let before = super::bpf_stats::snapshot(loaded_since);
    let mut senders = Vec::new();
    for cg in cgroups {
        let cgroup = Cgroup::open(Path::new(cg))?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cgroup.spawn_inside(&mut cmd)?;
        cmd.args(["traffic", "tcp-send", "--seconds", &seconds.to_string()])
            .args(["--netns", lab.a(), "--to", &sink_addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        senders.push(cmd.spawn().context("cannot start a sender")?);
    }
    std::thread::sleep(Duration::from_secs(1));
    let first = meter.read();
    std::thread::sleep(Duration::from_secs(seconds.saturating_sub(1).max(1)));
    let last = meter.read();
    for mut s in senders {
        let _ = s.wait();
    }
    let after = super::bpf_stats::snapshot(loaded_since);
    drop(stats);
    until.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sink.join();
    let mut programs = serde_json::Map::new();
    for (name, (ns, runs)) in super::bpf_stats::per_run(&before, &after) {
        programs.insert(name, serde_json::json!({"ns_per_run": ns, "runs": runs}));
    }
    let achieved = last.bits_per_sec_since(&first);
    Ok(serde_json::json!({
        "senders": cgroups.len(),
        "achieved_bps": achieved,
        "target_bps": cgroups.len() as u64 * TRAFFIC_LIMIT_BITS,
        "programs": programs,
    }))
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

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn request(cgroup: &str, bits: u64) -> pb::AttachRequest {
    pb::AttachRequest {
        target: Some(pb::Target {
            target: Some(pb::target::Target::Cgroup(cgroup.to_string())),
        }),
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
        target: Some(pb::Target {
            target: Some(pb::target::Target::Cgroup(cgroup.to_string())),
        }),
    }
}

pub fn run(args: BenchDaemonArgs, stop: Arc<AtomicBool>) -> Result<ExitCode> {
    let tag = format!("podshaper-bench-{}", std::process::id());
    let mut scratch = Scratch {
        root: cgroup2_mount()?.join(&tag),
        bpffs: PathBuf::from("/sys/fs/bpf").join(&tag),
        socket_dir: std::env::temp_dir().join(&tag),
        daemon: None,
    };
    std::fs::create_dir_all(&scratch.socket_dir)?;
    let cgroups: Vec<String> = (0..args.cgroups.max(args.clients))
        .map(|i| {
            let p = scratch.root.join(format!("c{i}"));
            std::fs::create_dir_all(&p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            Ok(p.display().to_string())
        })
        .collect::<Result<_>>()?;
    let socket = scratch.socket_dir.join("podshaper.sock");
    let daemon = start_daemon(&socket, &scratch.bpffs, &scratch.root, &scratch.socket_dir)?;
    let pid = daemon.id();
    let loaded_since = std::time::SystemTime::now() - Duration::from_secs(1);
    scratch.daemon = Some(daemon);
    let rss_idle = rss_kib(pid)?;
    let address = DaemonAddress::Unix(socket.clone());

    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(async {
        let mut client = podshaper_api::connect(&address, None).await?;
        // new attachments: N cgroups, one RPC each
        let started = Instant::now();
        let mut attach = Vec::with_capacity(args.cgroups);
        for cg in &cgroups[..args.cgroups] {
            check_stop(&stop)?;
            let t = Instant::now();
            client.attach(request(cg, 100_000_000)).await.map_err(|e| anyhow::anyhow!("attach: {e}"))?;
            attach.push(t.elapsed());
        }
        let total = started.elapsed();
        let rss_loaded = rss_kib(pid)?;
        let cpu_attach = cpu_time(pid)?;
        // traffic in some of them, with every limit in the maps
        let senders = &cgroups[..args.traffic_cgroups.min(args.cgroups)];
        for cg in senders {
            check_stop(&stop)?;
            client.attach(request(cg, TRAFFIC_LIMIT_BITS)).await.map_err(|e| anyhow::anyhow!("attach: {e}"))?;
        }
        let cpu_before_traffic = cpu_time(pid)?;
        let traffic = if senders.is_empty() {
            serde_json::Value::Null
        } else {
            let senders = senders.to_vec();
            let seconds = args.traffic_seconds;
            tokio::task::spawn_blocking(move || traffic_phase(&senders, seconds, loaded_since)).await??
        };
        let cpu_during_traffic = cpu_time(pid)? - cpu_before_traffic;
        check_stop(&stop)?;
        // updates: a new rate on each, one map update each
        let mut update = Vec::with_capacity(args.cgroups);
        for cg in &cgroups[..args.cgroups] {
            check_stop(&stop)?;
            let t = Instant::now();
            client.attach(request(cg, 50_000_000)).await.map_err(|e| anyhow::anyhow!("update: {e}"))?;
            update.push(t.elapsed());
        }
        let listed = client.list(pb::ListRequest {}).await?.into_inner().cgroups.len();
        let mut detach = Vec::with_capacity(args.cgroups);
        for cg in &cgroups[..args.cgroups] {
            check_stop(&stop)?;
            let t = Instant::now();
            client.detach(detach_request(cg)).await.map_err(|e| anyhow::anyhow!("detach: {e}"))?;
            detach.push(t.elapsed());
        }
        // concurrent clients, each on its own connection
        check_stop(&stop)?;
        let before = kernel_objects();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for cg in &cgroups[..args.clients] {
            let (address, cg) = (address.clone(), cg.clone());
            tasks.spawn(async move {
                let mut c = podshaper_api::connect(&address, None).await.map_err(|e| e.to_string())?;
                c.attach(request(&cg, 10_000_000)).await.map_err(|e| e.to_string())?;
                c.detach(detach_request(&cg)).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            });
        }
        let mut errors = 0;
        while let Some(r) = tasks.join_next().await {
            if !matches!(r, Ok(Ok(()))) {
                errors += 1;
            }
        }
        let concurrent = started.elapsed();
        let after = kernel_objects();
        Ok::<_, anyhow::Error>(serde_json::json!({
            "cgroups": args.cgroups,
            "listed": listed,
            "attach_p50_ms": ms(quantile(&mut attach, 0.5)),
            "attach_p99_ms": ms(quantile(&mut attach, 0.99)),
            "update_p50_ms": ms(quantile(&mut update, 0.5)),
            "update_p99_ms": ms(quantile(&mut update, 0.99)),
            "detach_p50_ms": ms(quantile(&mut detach, 0.5)),
            "detach_p99_ms": ms(quantile(&mut detach, 0.99)),
            "attach_all_seconds": total.as_secs_f64(),
            "rss_idle_kib": rss_idle,
            "rss_after_attach_kib": rss_loaded,
            "daemon_cpu_seconds_start_and_attach": cpu_attach.as_secs_f64(),
            "daemon_cpu_seconds_during_traffic": cpu_during_traffic.as_secs_f64(),
            "traffic": traffic,
            "clients": args.clients,
            "concurrent_errors": errors,
            "concurrent_seconds": concurrent.as_secs_f64(),
            "leaked_programs_maps_links": [after.0 as i64 - before.0 as i64, after.1 as i64 - before.1 as i64, after.2 as i64 - before.2 as i64],
        }))
    });
    // a signal also reaches the daemon and the senders (the terminal's
    // process group): the phase's error is then the signal's
    check_stop(&stop)?;
    let report = report?;
    drop(scratch);
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
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
        .context("cannot start the daemon")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("the daemon exited with {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the daemon did not come up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn print_table(r: &serde_json::Value) {
    println!("podshaper daemon benchmark (Unix socket, one client unless noted)");
    println!(
        "  attach a new cgroup      p50 {:.2} ms   p99 {:.2} ms",
        r["attach_p50_ms"].as_f64().unwrap_or(0.0),
        r["attach_p99_ms"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  update a limit           p50 {:.2} ms   p99 {:.2} ms",
        r["update_p50_ms"].as_f64().unwrap_or(0.0),
        r["update_p99_ms"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  detach                   p50 {:.2} ms   p99 {:.2} ms",
        r["detach_p50_ms"].as_f64().unwrap_or(0.0),
        r["detach_p99_ms"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  limit {} cgroups         {:.2} s",
        r["cgroups"],
        r["attach_all_seconds"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  daemon RSS               {} KiB idle, {} KiB with {} limited",
        r["rss_idle_kib"], r["rss_after_attach_kib"], r["cgroups"]
    );
    println!(
        "  daemon CPU               {:.2} s to start and limit {}; {:.2} s during the traffic",
        r["daemon_cpu_seconds_start_and_attach"]
            .as_f64()
            .unwrap_or(0.0),
        r["cgroups"],
        r["daemon_cpu_seconds_during_traffic"]
            .as_f64()
            .unwrap_or(0.0)
    );
    let t = &r["traffic"];
    if !t.is_null() {
        println!(
            "  traffic                  {} cgroups sending at once: {:.0} of {} bit/s ({:.3})",
            t["senders"],
            t["achieved_bps"].as_f64().unwrap_or(0.0),
            t["target_bps"],
            t["achieved_bps"].as_f64().unwrap_or(0.0) / t["target_bps"].as_f64().unwrap_or(1.0)
        );
        if let Some(programs) = t["programs"].as_object() {
            for (name, p) in programs {
                println!(
                    "  BPF {:<20} {:>7.0} ns per run over {} runs",
                    name,
                    p["ns_per_run"].as_f64().unwrap_or(0.0),
                    p["runs"]
                );
            }
        }
    }
    println!(
        "  {} concurrent clients    {} errors, {:.2} s, leaked (programs, maps, links) {}",
        r["clients"],
        r["concurrent_errors"],
        r["concurrent_seconds"].as_f64().unwrap_or(0.0),
        r["leaked_programs_maps_links"]
    );
}
