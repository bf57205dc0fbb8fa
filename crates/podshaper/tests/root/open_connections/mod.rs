//! A limit put on connections that are already open: an operator annotates
//! a pod that is sending right now, `podshaper attach` limits a running
//! workload, a daemon attaches while pods reconnect. The flows start in a
//! cgroup with no limit; two seconds in, the daemon is asked to limit it.
//! From the second second after the attach, every second must be within
//! [0.95, 1.05] of the limit and the run within [0.97, 1.02], as for flows
//! that start under the limit, except that one second may stall down to
//! 0.85 (`ONE_STALLED_SECOND` says why); the hostNetwork policer has wider
//! bounds (its test says why).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::{traffic_turn, unique_port, ChildGuard, Proto};
use podshaper_netlab::meter::Seconds;
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::window::ReceiverReport;
use podshaper_netlab::{Meter, NetnsPair};

/// Seconds of traffic before the attach, and after it.
const BEFORE: u64 = 2;
const AFTER: u64 = 7;

/// One measurement: flows running in a cgroup, then a limit on it.
struct Cell {
    egress: bool,
    proto: Proto,
    /// the limit, as the CLI takes it, and in bit/s
    rate: &'static str,
    bits: f64,
    flows: usize,
    /// the limited side in the host's network namespace (a hostNetwork
    /// pod), over loopback; else in a namespace of its own
    host: bool,
    /// the limited side a hostNetwork pod of a daemon in the lab's first
    /// namespace, which it takes for the node's, with the node's queue
    node_queue: bool,
}

impl Cell {
    fn tcp(egress: bool, rate: &'static str, bits: f64, flows: usize) -> Self {
        Self {
            egress,
            proto: Proto::Tcp,
            rate,
            bits,
            flows,
            host: false,
            node_queue: false,
        }
    }

    fn name(&self) -> String {
        format!(
            "{} {} {:?} x{}{}",
            if self.egress { "egress" } else { "ingress" },
            self.rate,
            self.proto,
            self.flows,
            match (self.host, self.node_queue) {
                (true, _) => " (host)",
                (_, true) => " (node's queue)",
                _ => "",
            }
        )
    }
}

/// The receiver's rate in each second after the attach, the limit being in
/// force from the attach request's return (a debug daemon takes 0.02-0.18 s
/// to pace up to 16 open flows and attach on a quiet machine). Going out, the seconds are counted
/// from that return; coming in, they are the receiver's own, from the one
/// the attach returned in. Counted from the request, a slow attach moved
/// the flows' way down to the limit into the second checked first.
fn seconds_after_attach(
    cell: &Cell,
    daemon: &TestDaemon,
    cgroup: &podshaper_shaper::Cgroup,
    lab: &NetnsPair,
) -> Vec<f64> {
    lab.set_congestion_control("cubic").expect("cubic");
    let port = unique_port();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (limited_addr, peer_addr) = match cell.host {
        true => (loopback, loopback),
        false => (NetnsPair::addr_a(false), NetnsPair::addr_b(false)),
    };
    let peer_ns = (!cell.host).then(|| lab.b().to_string());
    let total = BEFORE + AFTER;
    let attach = || {
        let mut args = vec!["attach", "--cgroup", cgroup.path().to_str().expect("path")];
        args.extend([
            if cell.egress { "--egress" } else { "--ingress" },
            cell.rate,
        ]);
        daemon.ok(&args);
    };
    let mut cmd = common::podshaper();
    cgroup.spawn_inside(&mut cmd).expect("spawn inside");
    let verb = match (cell.proto, cell.egress) {
        (Proto::Tcp, true) => "tcp-send",
        (Proto::Tcp, false) => "tcp-recv",
        (Proto::Udp, true) => "udp-send",
        (Proto::Udp, false) => "udp-recv",
    };
    // the limited side outlasts the measurement (going out, AFTER seconds
    // from the attach's return): it ends the run
    let runs = if cell.egress { total + 2 } else { total };
    cmd.args(["traffic", verb, "--seconds", &runs.to_string()]);
    if !cell.host {
        cmd.args(["--netns", lab.a()]);
    }
    let offered = (cell.bits * 4.0) as u64;
    if cell.egress {
        // the limited side sends; we receive and count, second by second
        let meter = Meter::default();
        let until = Until::after(Duration::from_secs(total + 3));
        let sink = {
            let (meter, until, proto) = (meter.clone(), until.clone(), cell.proto);
            let bind = SocketAddr::new(peer_addr, port);
            traffic::spawn_in(peer_ns, move || match proto {
                Proto::Tcp => traffic::tcp_sink(TcpListener::bind(bind)?, meter, &until),
                Proto::Udp => traffic::udp_sink(UdpSocket::bind(bind)?, meter, &until),
            })
        };
        thread::sleep(Duration::from_millis(200));
        cmd.arg("--to")
            .arg(SocketAddr::new(peer_addr, port).to_string());
        match cell.proto {
            Proto::Tcp => cmd.args(["--flows", &cell.flows.to_string()]),
            Proto::Udp => cmd.args(["--rate", &offered.to_string()]),
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let source = ChildGuard::spawn(&mut cmd);
        thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        thread::sleep(Duration::from_secs(BEFORE));
        attach();
        // seconds counted from the attach's return, when the limit is in
        // force
        let mut seconds = Seconds::start(&meter);
        let attached = Instant::now();
        eprintln!(
            "{}: the attach took {} ms",
            cell.name(),
            (attached - start - Duration::from_secs(BEFORE)).as_millis()
        );
        while attached.elapsed() < Duration::from_secs(AFTER) + Duration::from_millis(50) {
            seconds.poll(&meter);
            thread::sleep(Duration::from_millis(5));
        }
        drop(source);
        until.stop.store(true, Ordering::Relaxed);
        let _ = sink.join();
        seconds.bits_per_second()
    } else {
        // the limited side receives and reports its seconds; we send
        cmd.args(["--skip", "0", "--listen"])
            .arg(SocketAddr::new(limited_addr, port).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let receiver = ChildGuard::spawn(&mut cmd);
        let start = Instant::now();
        let until = Until::after(Duration::from_secs(total + 1));
        let to = SocketAddr::new(limited_addr, port);
        let (proto, flows, u) = (cell.proto, cell.flows, until.clone());
        let source = traffic::spawn_in(peer_ns, move || {
            thread::sleep(Duration::from_millis(100));
            match proto {
                Proto::Tcp => traffic::tcp_send(to, flows, &u).map(|_| ()),
                Proto::Udp => traffic::udp_send(to, offered, &u).map(|_| ()),
            }
        });
        thread::sleep(Duration::from_secs(BEFORE).saturating_sub(start.elapsed()));
        attach();
        let attached_in = start.elapsed().as_secs() as usize;
        receiver_seconds(receiver, &until, source)
            .get(attached_in..)
            .unwrap_or_default()
            .to_vec()
    }
}

/// Waits for the limited side's receiver to end, stops its senders, and
/// returns the rate it reports for each second from its start.
fn receiver_seconds(
    receiver: ChildGuard,
    until: &Until,
    source: thread::JoinHandle<std::io::Result<()>>,
) -> Vec<f64> {
    let out = receiver.wait_output();
    until.stop.store(true, Ordering::Relaxed);
    let _ = source.join();
    assert!(
        out.status.success(),
        "receiver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: ReceiverReport = serde_json::from_slice(&out.stdout).expect("report");
    report.per_second_bits
}

/// The bounds of the first second checked, of each of the others, and of
/// the run, as fractions of the limit.
type Bounds = ((f64, f64), (f64, f64), (f64, f64));

/// Runs each cell on a cgroup of its own under one daemon, and checks it
/// against the bounds `bounds` gives it.
fn check(cells: &[Cell], bounds: fn(&Cell) -> Bounds) {
    let root = TestRoot::new("open");
    // loading the shaper takes a core for a moment: not beside a cell that
    // measures
    let daemon = {
        let _turn = traffic_turn();
        TestDaemon::start(&root.path, &[])
    };
    let mut failures = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        let cgroup = root.make(&format!("pod{i}/app"));
        let _turn = traffic_turn();
        let lab = NetnsPair::create("open").expect("lab");
        let seconds = seconds_after_attach(cell, &daemon, &cgroup, &lab);
        failures.extend(judge(cell, &seconds, bounds(cell)));
        daemon.ok(&["detach", "--cgroup", cgroup.path().to_str().expect("path")]);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A cell's seconds against its bounds: what was wrong, if anything.
fn judge(cell: &Cell, seconds: &[f64], (first, second, run): Bounds) -> Option<String> {
    let ratios: Vec<f64> = seconds.iter().map(|s| s / cell.bits).collect();
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    assert!(
        ratios.len() >= 4,
        "{}: the attach left {} seconds to check: {ratios:?}",
        cell.name(),
        ratios.len()
    );
    let checked = &ratios[1..];
    let mean = checked.iter().sum::<f64>() / checked.len() as f64;
    eprintln!(
        "{}: seconds after the attach, of the limit: {shown:?}; run {mean:.3}",
        cell.name()
    );
    let each = checked
        .iter()
        .enumerate()
        .map(|(i, r)| (*r, if i == 0 { first } else { second }));
    let seconds_ok = held_but_one_stall(each);
    (!seconds_ok || !(run.0..=run.1).contains(&mean)).then(|| {
        format!(
            "{}: {shown:?}, run {mean:.3}: outside [{}, {}] the first second checked, [{}, {}] another (one second of them may be down to {ONE_STALLED_SECOND} under its floor) or [{}, {}] the run",
            cell.name(),
            first.0,
            first.1,
            second.0,
            second.1,
            run.0,
            run.1
        )
    })
}

/// Whether every second (its fraction of the limit, and its bounds) is
/// under its ceiling and over its floor, but for one that may stall down
/// to ONE_STALLED_SECOND under its floor.
fn held_but_one_stall(seconds: impl Iterator<Item = (f64, (f64, f64))>) -> bool {
    let mut stalls = 0;
    for (r, (floor, ceiling)) in seconds {
        if r > ceiling || r < floor - ONE_STALLED_SECOND {
            return false;
        }
        if r < floor {
            stalls += 1;
        }
    }
    stalls <= 1
}

const EACH_SECOND: (f64, f64) = (0.95, 1.05);
const THE_RUN: (f64, f64) = (0.97, 1.02);
/// How far under its floor one second of a cell may read. On this 2-core
/// machine what runs beside a cell (another test, the kernel tearing the
/// last cell's namespaces down) can hold the sender for tens of
/// milliseconds: in whole root-suite runs one flow at 100M read 0.924 in
/// one second, every other 0.996-1.007, and four flows coming in through
/// a daemon's restart 0.888 in one, every other 0.994-1.012; alone they
/// read 0.995-1.003 (three runs). A retransmission timeout (200 ms) reads
/// 0.80 or less; a limit that holds the flows low shows in more than one
/// second and in the run, one above the limit in any.
const ONE_STALLED_SECOND: f64 = 0.10;

/// The bounds every cell must meet: each second within EACH_SECOND, the
/// run within THE_RUN.
fn bounds_for(_: &Cell) -> Bounds {
    (EACH_SECOND, EACH_SECOND, THE_RUN)
}

/// TCP cells at one rate, one per number of flows.
fn tcp_cells(egress: bool, rate: &'static str, bits: f64, flows: &[usize]) -> Vec<Cell> {
    flows
        .iter()
        .map(|&n| Cell::tcp(egress, rate, bits, n))
        .collect()
}

#[test]
fn egress_10m_on_open_tcp_connections() {
    require_root!();
    check(&tcp_cells(true, "10M", 10e6, &[1, 16]), bounds_for);
}

#[test]
fn egress_100m_on_open_tcp_connections() {
    require_root!();
    check(&tcp_cells(true, "100M", 100e6, &[1, 4, 16]), bounds_for);
}

#[test]
fn egress_1g_on_open_tcp_connections() {
    require_root!();
    check(&tcp_cells(true, "1G", 1e9, &[1, 16]), bounds_for);
}

/// Ingress, 1 and 4 flows (16 below, all rates in one test: they take
/// longest).
#[test]
fn ingress_10m_on_open_tcp_connections() {
    require_root!();
    check(&tcp_cells(false, "10M", 10e6, &[1, 4]), bounds_for);
}

#[test]
fn ingress_100m_on_open_tcp_connections() {
    require_root!();
    check(&tcp_cells(false, "100M", 100e6, &[1, 4]), bounds_for);
}

#[test]
fn ingress_1g_on_open_tcp_connections() {
    require_root!();
    check(&tcp_cells(false, "1G", 1e9, &[1, 4]), bounds_for);
}

/// 16 open flows coming in. Each had offered its sender a window of
/// megabytes before the limit; only with the pod's namespace letting TCP
/// shrink an offered window (`ingress_queue::shrink_windows`) does the next
/// ACK offer the clamped one: without it the senders kept more in flight
/// than their FIFOs hold until they had used the old windows up, and 100M
/// read 0.84-0.94 of the limit.
#[test]
fn ingress_on_16_open_tcp_connections() {
    require_root!();
    let cells = [("10M", 10e6), ("100M", 100e6), ("1G", 1e9)]
        .map(|(rate, bits)| Cell::tcp(false, rate, bits, 16));
    check(&cells, bounds_for);
}

/// UDP needs nothing found: a socket's cgroup is fixed when it is made, and
/// both cgroup programs see every datagram from the attach on. Offered at
/// 4x the limit.
#[test]
fn both_directions_on_open_udp_flows() {
    require_root!();
    let cells = [true, false].map(|egress| Cell {
        proto: Proto::Udp,
        ..Cell::tcp(egress, "100M", 100e6, 1)
    });
    check(&cells, bounds_for);
}

/// A hostNetwork pod's open connections (the node's namespace, loopback).
/// Its ingress has the policer alone (no queue), whose seconds swing
/// around the limit (0.86-1.11, run 1.000, four flows at 100M): as for
/// flows that start under it (tests/root/accuracy.rs).
#[test]
fn open_tcp_connections_in_the_nodes_namespace() {
    require_root!();
    let host = |egress| Cell {
        host: true,
        ..Cell::tcp(egress, "100M", 100e6, 4)
    };
    check(&[host(true)], bounds_for);
    check(&[host(false)], |_| {
        ((0.80, 1.15), (0.80, 1.15), (0.95, 1.03))
    });
}

/// A hostNetwork pod's open connections coming in through the node's queue
/// (`--host-ingress-queue true`): a daemon in the lab's first namespace,
/// which it takes for the node's, the pod's receiver there, its senders
/// across the veth.
#[test]
fn open_tcp_connections_through_the_nodes_queue() {
    require_root!();
    let root = TestRoot::new("open-node-queue");
    let _turn = traffic_turn();
    let lab = NetnsPair::create("opennq").expect("lab");
    let daemon = TestDaemon::start_in_netns(&root.path, &["--host-ingress-queue", "true"], lab.a());
    let cells = [("10M", 10e6), ("100M", 100e6)].map(|(rate, bits)| Cell {
        node_queue: true,
        ..Cell::tcp(false, rate, bits, 4)
    });
    let mut failures = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        let cgroup = root.make(&format!("pod{i}/app"));
        let seconds = seconds_after_attach(cell, &daemon, &cgroup, &lab);
        failures.extend(judge(cell, &seconds, (EACH_SECOND, EACH_SECOND, THE_RUN)));
        daemon.ok(&["detach", "--cgroup", cgroup.path().to_str().expect("path")]);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

mod restarts;
