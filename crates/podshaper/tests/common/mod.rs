//! Helpers for the tests that drive the real `podshaper` binary on the real
//! kernel: a lab of two network namespaces, traffic through a limited
//! cgroup, and children that are stopped (and so clean up) even when a test
//! fails.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use podshaper_netlab::netns::netns_path;
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::window::{self, ReceiverReport};
use podshaper_netlab::{Meter, NetnsPair};

pub mod daemon;
pub mod grafana;
pub mod kube;
pub mod prometheus;
mod turns;

// each test binary uses some of them
#[allow(unused_imports)]
pub use turns::{busy_turn, output_in_turn, traffic_turn};

pub fn podshaper() -> Command {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests attach BPF programs and make network namespaces: run them as root"
    );
    Command::new(env!("CARGO_BIN_EXE_podshaper"))
}

/// A port no other test in this process uses, and free on the host's
/// loopback right now. Taken from below the kernel's ephemeral range
/// (32768-60999 here): a port in that range can be the local end of any
/// outgoing connection on the machine (a CI run once lost its daemon's TLS
/// port to one).
pub fn unique_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(21000);
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port < 32768, "the tests ran out of ports below 32768");
        let free = |ip: Ipv4Addr| {
            TcpListener::bind((ip, port)).is_ok() && UdpSocket::bind((ip, port)).is_ok()
        };
        if free(Ipv4Addr::LOCALHOST) && free(Ipv4Addr::UNSPECIFIED) {
            return port;
        }
    }
}

/// A child process that is sent SIGTERM (and reaped) if the test ends early,
/// so that `podshaper run` gets to remove what it made.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(command: &mut Command) -> Self {
        match command.spawn() {
            Ok(c) => Self(Some(c)),
            Err(e) => panic!("cannot start {command:?}: {e}"),
        }
    }

    pub fn wait_output(mut self) -> Output {
        let child = self.0.take().expect("child present");
        match child.wait_with_output() {
            Ok(o) => o,
            Err(e) => panic!("waiting for child: {e}"),
        }
    }

    /// SIGKILL and reap, as a crash would: the child cleans up nothing.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process's resident memory in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One traffic measurement through a limited cgroup.
pub struct Flow {
    pub proto: Proto,
    /// true: the limited process sends (egress); false: it receives (ingress)
    pub egress: bool,
    pub flows: usize,
    /// egress TCP: light, bursty flows beside the bulk ones (16 KiB writes
    /// at an average of `light_rate` bit/s each)
    pub light: usize,
    pub light_rate: u64,
    pub v6: bool,
    /// both ends in the host's network namespace, over loopback (a
    /// hostNetwork pod)
    pub host: bool,
    /// UDP: offered rate in bit/s
    pub offered: u64,
    pub seconds: f64,
    /// seconds at the start left out of the measurement
    pub skip: f64,
    /// TCP congestion control of both namespaces (not for `host` flows)
    pub cc: &'static str,
    /// TCP connections negotiate ECN (both namespaces ask for it)
    pub ecn: bool,
    /// ingress: send only once a daemon has put its ingress queue in front
    /// of the receiver's namespace (as for a pod whose queue is built when
    /// its processes start), at most 5 s after the receiver started
    pub after_ingress_queue: bool,
}

impl Flow {
    pub fn tcp(egress: bool) -> Self {
        Self {
            proto: Proto::Tcp,
            egress,
            flows: 1,
            light: 0,
            light_rate: 0,
            v6: false,
            host: false,
            offered: 0,
            seconds: 6.0,
            skip: 1.5,
            // Linux's default; the BBR cells of tests/root/accuracy.rs say so
            cc: "cubic",
            ecn: false,
            after_ingress_queue: false,
        }
    }

    pub fn udp(egress: bool, offered: u64) -> Self {
        Self {
            proto: Proto::Udp,
            offered,
            ..Self::tcp(egress)
        }
    }
}

/// Runs `flow` with the limited side under `podshaper run <limit_args>` in
/// namespace A and the other side in this process in namespace B; returns the
/// rate (bit/s of payload) the receiver saw after the skipped start.
pub fn measure(limit_args: &[&str], flow: &Flow) -> f64 {
    measure_with(&Limiter::Run(limit_args), flow)
}

/// How the limited side gets its limit.
pub enum Limiter<'a> {
    /// `podshaper run <args> -- ...`
    Run(&'a [&'a str]),
    /// started inside a cgroup that a daemon limits (or not)
    Cgroup(&'a podshaper_shaper::Cgroup),
    /// a hostNetwork pod's process on a node whose namespace is A (the
    /// daemon's): it enters A before it joins the cgroup, so the daemon
    /// never sees it in another namespace
    Node(&'a podshaper_shaper::Cgroup),
}

pub fn measure_with(limiter: &Limiter<'_>, flow: &Flow) -> f64 {
    measure_flows(limiter, flow).bits_per_second
}

/// What the receiving side saw.
pub struct Received {
    pub bits_per_second: f64,
    /// bytes of each TCP flow after the skipped start
    pub flow_bytes: Vec<u64>,
    /// ingress TCP: each receiving socket's window clamp as it ended
    pub window_clamps: Vec<u64>,
}

pub fn measure_flows(limiter: &Limiter<'_>, flow: &Flow) -> Received {
    let lab = match NetnsPair::create("t") {
        Ok(l) => l,
        Err(e) => panic!("cannot build the lab: {e}"),
    };
    measure_flows_on(&lab, limiter, flow)
}

/// [`measure_flows`] on a lab the caller made (and keeps: a daemon may run
/// in its namespace A).
pub fn measure_flows_on(lab: &NetnsPair, limiter: &Limiter<'_>, flow: &Flow) -> Received {
    let _turn = traffic_turn();
    if let Err(e) = lab.set_congestion_control(flow.cc) {
        panic!("cannot set {}: {e}", flow.cc);
    }
    if let Err(e) = lab.set_ecn(flow.ecn) {
        panic!("cannot set ECN: {e}");
    }
    let port = unique_port();
    let seconds = flow.seconds.to_string();
    let skip = flow.skip.to_string();
    let verb = match (flow.proto, flow.egress) {
        (Proto::Tcp, true) => "tcp-send",
        (Proto::Tcp, false) => "tcp-recv",
        (Proto::Udp, true) => "udp-send",
        (Proto::Udp, false) => "udp-recv",
    };
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // the limited side's address (ingress) or its peer's (egress)
    let addr = match (flow.host, flow.egress) {
        (true, _) => loopback,
        (false, true) => NetnsPair::addr_b(flow.v6),
        (false, false) => NetnsPair::addr_a(flow.v6),
    };
    // where our side runs: B, or the host's namespace
    let our_ns = (!flow.host).then(|| lab.b().to_string());
    let our_addr = if flow.host {
        loopback
    } else {
        NetnsPair::addr_b(flow.v6)
    };
    let sock = SocketAddr::new(addr, port).to_string();
    let mut cmd = match limiter {
        Limiter::Run(limit_args) => {
            let mut cmd = podshaper();
            cmd.arg("run").args(*limit_args).arg("--");
            cmd.arg(env!("CARGO_BIN_EXE_podshaper"));
            cmd
        }
        Limiter::Cgroup(cgroup) => {
            let mut cmd = podshaper();
            if let Err(e) = cgroup.spawn_inside(&mut cmd) {
                panic!("cannot start inside {}: {e}", cgroup.path().display());
            }
            cmd
        }
        Limiter::Node(cgroup) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", netns_path(lab.a()).display()))
                .args([
                    "--",
                    "sh",
                    "-c",
                    r#"echo $$ > "$0/cgroup.procs" && exec "$@""#,
                ])
                .arg(cgroup.path())
                .arg(env!("CARGO_BIN_EXE_podshaper"));
            cmd
        }
    };
    cmd.args(["traffic", verb, "--seconds", &seconds, "--skip", &skip]);
    if !flow.host {
        cmd.args(["--netns", lab.a()]);
    }
    cmd.arg(if flow.egress { "--to" } else { "--listen" })
        .arg(&sock);
    if flow.proto == Proto::Tcp && flow.egress {
        cmd.args(["--flows", &flow.flows.to_string()]);
        if flow.light > 0 {
            cmd.args(["--light", &flow.light.to_string()])
                .args(["--light-rate", &flow.light_rate.to_string()]);
        }
    }
    if flow.proto == Proto::Udp && flow.egress {
        cmd.args(["--rate", &flow.offered.to_string()]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());

    let total = Duration::from_secs_f64(flow.seconds);
    if flow.egress {
        // Our side receives, in B, and measures.
        let meter = Meter::default();
        let until = Until::after(total + Duration::from_secs(1));
        let sink = {
            let (meter, until, proto) = (meter.clone(), until.clone(), flow.proto);
            let bind = SocketAddr::new(our_addr, port);
            traffic::spawn_in(our_ns.clone(), move || match proto {
                Proto::Tcp => traffic::tcp_sink(TcpListener::bind(bind)?, meter, &until),
                Proto::Udp => traffic::udp_sink(UdpSocket::bind(bind)?, meter, &until),
            })
        };
        thread::sleep(Duration::from_millis(200));
        let child = ChildGuard::spawn(&mut cmd);
        // the sender's run, less a little for its last writes in flight
        let sending = Until::after(total - Duration::from_millis(100));
        let measured = window::measure(&meter, Duration::from_secs_f64(flow.skip), &sending);
        let out = child.wait_output();
        until.stop.store(true, Ordering::Relaxed);
        let _ = sink.join();
        assert!(
            out.status.success(),
            "podshaper run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Received {
            bits_per_second: measured.bits_per_sec(),
            flow_bytes: measured.flow_bytes,
            window_clamps: Vec::new(),
        }
    } else {
        // The limited process receives and reports; we send from B.
        let child = ChildGuard::spawn(&mut cmd);
        // The source outlasts the receiver, whose clock starts only once
        // `podshaper run` has loaded and attached the shaper.
        let until = Until::after(total + Duration::from_secs(1));
        let start = Instant::now();
        let to: SocketAddr = match sock.parse() {
            Ok(a) => a,
            Err(e) => panic!("{sock}: {e}"),
        };
        if flow.after_ingress_queue {
            wait_for_ingress_queue(lab.a());
        }
        let (proto, flows, offered, u) = (flow.proto, flow.flows, flow.offered, until.clone());
        let source = traffic::spawn_in(our_ns, move || match proto {
            Proto::Tcp => {
                thread::sleep(Duration::from_millis(200));
                traffic::tcp_send(to, flows, &u).map(|_| ())
            }
            Proto::Udp => {
                thread::sleep(Duration::from_millis(200));
                let sent = traffic::udp_send(to, offered, &u)?;
                let offered_rate = sent as f64 * traffic::UDP_PAYLOAD as f64 * 8.0
                    / (u.deadline - start).as_secs_f64();
                eprintln!("UDP offered {offered_rate:.0} bit/s");
                Ok(())
            }
        });
        let out = child.wait_output();
        until.stop.store(true, Ordering::Relaxed);
        let _ = source.join();
        assert!(
            out.status.success(),
            "podshaper run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: ReceiverReport = match serde_json::from_slice(&out.stdout) {
            Ok(r) => r,
            Err(e) => panic!("bad report {:?}: {e}", String::from_utf8_lossy(&out.stdout)),
        };
        Received {
            bits_per_second: report.bits_per_second,
            flow_bytes: report.flow_bytes_measured,
            window_clamps: report.window_clamps,
        }
    }
}

/// Whether a daemon's ingress queue (its ifb) is in the network namespace
/// `ns` (None: the host's).
pub fn has_ingress_queue(ns: Option<&str>) -> bool {
    let mut ip = Command::new("ip");
    if let Some(ns) = ns {
        ip.args(["-n", ns]);
    }
    ip.args(["link", "show", podshaper_shaper::ingress_queue::IFB_NAME])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the node's queue for hostNetwork pods (its ifb) is in the
/// network namespace `ns`.
pub fn has_host_queue(ns: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show"])
        .arg(podshaper_shaper::host_queue::HOST_IFB_NAME)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits (5 s at most) for a daemon's ingress queue (a pod's own, or the
/// node's for hostNetwork pods) to appear in the namespace `ns`.
fn wait_for_ingress_queue(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if has_ingress_queue(Some(ns)) || has_host_queue(ns) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("no ingress queue in {ns} after 5 s");
}

/// Asserts that `measured / target` is within `[low, high]`.
pub fn assert_ratio(what: &str, measured: f64, target: f64, low: f64, high: f64) {
    let ratio = measured / target;
    eprintln!("{what}: {measured:.0} bit/s of {target:.0} = {ratio:.3}");
    assert!(
        (low..=high).contains(&ratio),
        "{what}: achieved {ratio:.3} of the target ({measured:.0} of {target:.0} bit/s), expected {low}..={high}"
    );
}

/// Asserts that `flows` flows were all received and shared fairly: Jain's
/// index of their bytes at least `min` (the bench's target is 0.95; tests
/// leave slack for a shared machine).
pub fn assert_fair(what: &str, flow_bytes: &[u64], flows: usize, min: f64) {
    assert_eq!(flow_bytes.len(), flows, "{what}: flows received");
    let jain = podshaper_netlab::traffic::jain_index(flow_bytes).unwrap_or(0.0);
    eprintln!("{what}: Jain's index {jain:.3} over {flow_bytes:?}");
    assert!(
        jain >= min,
        "{what}: flows shared unfairly, Jain's index {jain:.3} over {flow_bytes:?}"
    );
}

pub mod tls;

/// Compiles a one-function BPF C program; returns the object's path.
pub fn compile_bpf(dir: &std::path::Path, name: &str, body: &str) -> String {
    let src = dir.join(format!("{name}.c"));
    let obj = dir.join(format!("{name}.o"));
    let text = format!(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n{body}\nchar LICENSE[] SEC(\"license\") = \"GPL\";\n"
    );
    std::fs::write(&src, text).expect("write BPF source");
    let arch = std::env::consts::ARCH;
    let status = Command::new("clang")
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            &format!("-I/usr/include/{arch}-linux-gnu"),
            "-c",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .expect("run clang");
    assert!(status.success(), "clang failed on {name}");
    obj.display().to_string()
}

/// Compiles `body` (see [`compile_bpf`]) in a scratch directory of its own
/// and returns the object's bytes; the directory is removed.
pub fn compiled_bpf(name: &str, body: &str) -> Vec<u8> {
    let scratch = std::env::temp_dir().join(format!(
        "podshaper-test-{name}-{}-{}",
        std::process::id(),
        unique_port()
    ));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let object = compile_bpf(&scratch, name, body);
    let bytes = std::fs::read(&object).expect("read the object");
    let _ = std::fs::remove_dir_all(&scratch);
    bytes
}

/// A daemon API target naming a cgroup path.
pub fn cgroup_target(cgroup: &str) -> Option<podshaper_api::pb::Target> {
    Some(podshaper_api::pb::Target {
        target: Some(podshaper_api::pb::target::Target::Cgroup(
            cgroup.to_string(),
        )),
    })
}

/// (programs, maps, links) loaded on the whole machine.
pub fn kernel_objects() -> (usize, usize, usize) {
    (
        aya::programs::loaded_programs().count(),
        aya::maps::loaded_maps().count(),
        aya::programs::loaded_links().count(),
    )
}

/// The counts once they stop moving: the kernel frees the objects of a
/// process that just exited (an earlier test binary) a little later.
pub fn settled_kernel_objects() -> (usize, usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = kernel_objects();
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = kernel_objects();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Fails if the machine holds more BPF objects than `before` (waiting a
/// little for deferred frees). Fewer is fine: another process may have ended.
pub fn assert_no_bpf_leak(before: (usize, usize, usize), what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = kernel_objects();
        if now.0 <= before.0 && now.1 <= before.1 && now.2 <= before.2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: (programs, maps, links) went from {before:?} to {now:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` from an HTTP server on `addr` (ADDR:PORT): the status code
/// and the whole answer (headers and body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{path}: not an HTTP answer: {answer}"));
    (status, answer)
}
