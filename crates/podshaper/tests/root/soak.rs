//! Soak: random attaches, updates, detaches and traffic against one daemon
//! (with an occasional kill -9 and restart), checked against a model all
//! along; at the end the kernel holds exactly the objects the remaining
//! limits need, and once those are removed, what it held before.
//!
//! `PODSHAPER_SOAK_SECS` sets the length (default 20 s, what CI runs; the
//! 30-minute run is reported in docs/design/reliability.md). In a module of
//! its own, whose test runs beside no other module's (main.rs): it counts
//! every BPF object on the machine.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::{podshaper, rss_kib, unique_port};
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{Meter, NetnsPair};

/// A small deterministic generator: a failing run can be replayed by seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

type Model = BTreeMap<u64, (Option<u64>, Option<u64>)>;

fn listed(daemon: &TestDaemon) -> Model {
    daemon
        .list()
        .iter()
        .map(|c| {
            (
                c["cgroup_id"].as_u64().unwrap_or(0),
                (c["egress_bps"].as_u64(), c["ingress_bps"].as_u64()),
            )
        })
        .collect()
}

#[test]
fn soak_random_operations_and_traffic() {
    require_root!();
    // unmeasured traffic, restarts and a stream of requests: a measurement
    // beside it would measure them
    let _busy = common::busy_turn();
    let seconds: u64 = std::env::var("PODSHAPER_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::process::id() as u64;
    eprintln!("soak: {seconds} s, seed {seed}");
    let before = common::settled_kernel_objects();
    let root = TestRoot::new("soak");
    let cgroups: Vec<podshaper_shaper::Cgroup> =
        (0..24).map(|i| root.make(&format!("c{i}"))).collect();
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let lab = NetnsPair::create("soak").expect("lab");
    let (tcp_port, udp_port) = (unique_port(), unique_port());
    let meter = Meter::default();
    let until = Until::after(Duration::from_secs(seconds + 30));
    let b = NetnsPair::addr_b(false);
    let sinks = [
        {
            let (meter, until) = (meter.clone(), until.clone());
            traffic::spawn_in(Some(lab.b().to_string()), move || {
                traffic::tcp_sink(
                    TcpListener::bind(SocketAddr::new(b, tcp_port))?,
                    meter,
                    &until,
                )
            })
        },
        {
            let (meter, until) = (meter.clone(), until.clone());
            traffic::spawn_in(Some(lab.b().to_string()), move || {
                traffic::udp_sink(
                    UdpSocket::bind(SocketAddr::new(b, udp_port))?,
                    meter,
                    &until,
                )
            })
        },
    ];

    let mut rng = Lcg(seed);
    let mut model = Model::new();
    let mut senders: Vec<Child> = Vec::new();
    let (mut ops, mut restarts, mut flows, mut checks) = (0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    let rss_start = daemon.pid().map(rss_kib).unwrap_or(0);
    let mut rss_max = rss_start;
    let mut next_check = Instant::now() + Duration::from_secs(5);
    while start.elapsed() < Duration::from_secs(seconds) {
        let cg = &cgroups[rng.next(cgroups.len() as u64) as usize];
        let path = cg.path().display().to_string();
        match rng.next(100) {
            0..=39 => {
                let e = (rng.next(4) > 0).then(|| 1_000_000 * (1 + rng.next(200)));
                let i = (rng.next(4) > 0 || e.is_none()).then(|| 1_000_000 * (1 + rng.next(200)));
                let mut args = vec!["attach".to_string(), "--cgroup".into(), path.clone()];
                if let Some(e) = e {
                    args.extend(["--egress".into(), e.to_string()]);
                }
                if let Some(i) = i {
                    args.extend(["--ingress".into(), i.to_string()]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                daemon.ok(&args);
                model.insert(cg.id(), (e, i));
            }
            40..=64 => {
                let out = daemon.cli(&["detach", "--cgroup", &path]);
                assert_eq!(
                    out.status.success(),
                    model.remove(&cg.id()).is_some(),
                    "detach {path}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            65..=97 => {
                senders.retain_mut(|s| !matches!(s.try_wait(), Ok(Some(_))));
                if senders.len() < 3 {
                    let mut cmd = podshaper();
                    cg.spawn_inside(&mut cmd).expect("spawn inside");
                    let secs = (1 + rng.next(3)).to_string();
                    if rng.next(2) == 0 {
                        cmd.args(["traffic", "tcp-send", "--seconds", &secs])
                            .args(["--to", &SocketAddr::new(b, tcp_port).to_string()]);
                    } else {
                        cmd.args(["traffic", "udp-send", "--seconds", &secs, "--rate", "50M"])
                            .args(["--to", &SocketAddr::new(b, udp_port).to_string()]);
                    }
                    cmd.args(["--netns", lab.a()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    senders.push(cmd.spawn().expect("sender"));
                    flows += 1;
                }
            }
            _ => {
                daemon.kill9();
                daemon.restart();
                restarts += 1;
            }
        }
        ops += 1;
        if Instant::now() >= next_check {
            assert_eq!(
                listed(&daemon),
                model,
                "the daemon disagrees with the model"
            );
            rss_max = rss_max.max(daemon.pid().map(rss_kib).unwrap_or(0));
            checks += 1;
            next_check = Instant::now() + Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut s in senders {
        let _ = s.wait();
    }
    let rss_end = daemon.pid().map(rss_kib).unwrap_or(0);

    // Exactly what the remaining limits need: their pins, three links each.
    assert_eq!(listed(&daemon), model);
    let pinned = std::fs::read_dir(daemon.bpffs.join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(pinned, model.len(), "link pin directories");
    let links_now = common::kernel_objects().2;
    assert_eq!(
        links_now as i64 - before.2 as i64,
        3 * model.len() as i64,
        "links in the kernel"
    );
    eprintln!(
        "soak: {ops} operations, {flows} traffic flows ({:.1} GB received), {restarts} kill -9 restarts, \
         {checks} model checks; {} cgroups limited at the end; daemon RSS {rss_start} KiB at start, \
         {rss_max} KiB max, {rss_end} KiB at the end",
        meter.read().bytes as f64 / 1e9,
        model.len()
    );

    for c in daemon.list() {
        daemon.ok(&[
            "detach",
            "--cgroup",
            c["cgroup"].as_str().unwrap_or_default(),
        ]);
    }
    until.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in sinks {
        let _ = s.join();
    }
    drop(lab);
    drop(daemon);
    drop(root);
    common::assert_no_bpf_leak(before, "after removing everything");
}
