//! What every bench run sets up the same way: a quiet machine, tbf as the
//! CNI bandwidth plugin builds it, a sink in namespace B and senders in a
//! cgroup in namespace A (this binary's `traffic` subcommand, started in
//! the cgroup), podshaper's egress limit on a cgroup, and the stop flag.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use podshaper_netlab::short;
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::window::ReceiverReport;
use podshaper_netlab::{Meter, NetnsPair};
use podshaper_rate::Rate;
use podshaper_shaper::{Attachment, Cgroup, DirectionLimit, Limits, Shaper};

use crate::error::{BenchError, Result};
use crate::options::Traffic;

/// Fails once `stop` is set (a signal): the caller's values then remove the
/// namespaces, cgroups and pins they made as they drop.
pub fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::SeqCst) {
        return Err(BenchError::Interrupted);
    }
    Ok(())
}

/// Waits (5 s at most) until the machine is nearly idle: the previous cell's
/// namespaces are torn down in the background (their sockets freed by a
/// kernel worker), and a cell that starts meanwhile measures that too (5G x1
/// right after an unlimited cell: 0.65-0.78, alone 0.987-0.999; tbf as well).
pub fn settle() {
    settle_within(Duration::from_secs(5));
}

/// [`settle`], waiting `limit` at most.
pub fn settle_within(limit: Duration) {
    const IDLE_ENOUGH: f64 = 0.15;
    let deadline = Instant::now() + limit;
    let mut before = cpu_times();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        let now = cpu_times();
        if cpu_busy_between(before, now).is_some_and(|busy| busy < IDLE_ENOUGH) {
            return;
        }
        before = now;
    }
}

/// (busy, total) jiffies of all CPUs.
pub fn cpu_times() -> Option<(u64, u64)> {
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

/// The share of the time between two [`cpu_times`] readings the CPUs were
/// busy (0-1); None if either could not be read.
pub fn cpu_busy_between(earlier: Option<(u64, u64)>, later: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (earlier?, later?);
    Some(b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64)
}

/// `tc qdisc del` of what [`tbf_args`] added.
pub fn tbf_del_args() -> Vec<String> {
    ["qdisc", "del", "dev", "veth0", "root"]
        .map(String::from)
        .to_vec()
}

/// `tc qdisc add|change` of a tbf on veth0 with the CNI bandwidth plugin's
/// latency, 25 ms, and a burst of rate/250 (4 ms at the rate, at least
/// 16 KiB); the plugin itself takes the burst the runtime passes
/// (containerd: 2^32-1 bits).
pub fn tbf_args(verb: &'static str, rate: Rate) -> Vec<String> {
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

/// Runs `tc args` in the network namespace `ns`.
pub fn tc(ns: &str, args: &[String]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc"])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(BenchError::Tc {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// `<this binary> traffic <verb> --netns <ns>`: the lab's traffic as a
/// command, so that it can be started inside a cgroup.
pub fn traffic_command(verb: &str, ns: &str) -> Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["traffic", verb, "--netns", ns]);
    Ok(command)
}

/// A receiver of `verb` (`tcp-recv`, `udp-recv`, `short-recv`, with
/// `extra` arguments) in `cgroup` and namespace `ns`, listening on `listen`
/// for `seconds`, of which the first `skip` are not counted; its report
/// comes on stdout when it ends ([`receiver_report`]).
pub fn spawn_receiver(
    verb: &str,
    ns: &str,
    cgroup: &Cgroup,
    listen: SocketAddr,
    (seconds, skip): (f64, f64),
    extra: &[&str],
) -> Result<Child> {
    let mut cmd = traffic_command(verb, ns)?;
    cmd.args(extra)
        .args(["--seconds", &seconds.to_string()])
        .args(["--skip", &skip.to_string(), "--listen", &listen.to_string()])
        .stdout(Stdio::piped());
    cgroup.spawn_inside(&mut cmd)?;
    Ok(cmd.spawn()?)
}

/// Waits for a receiver of [`spawn_receiver`] to end and reads its report.
pub fn receiver_report(receiver: Child) -> Result<ReceiverReport> {
    let out = receiver.wait_with_output()?;
    serde_json::from_slice(&out.stdout).map_err(BenchError::ReceiverReport)
}

/// podshaper's egress limit on `cgroup` (one map update), attached.
pub fn limit_egress(shaper: &mut Shaper, cgroup: &Cgroup, rate: Rate) -> Result<Attachment> {
    shaper.set_limits(cgroup.id(), &egress_limit(rate))?;
    Ok(shaper.attach(cgroup)?)
}

pub fn egress_limit(rate: Rate) -> Limits {
    Limits {
        egress: Some(DirectionLimit::new(rate, None)),
        ingress: None,
    }
}

/// Detaches what [`limit_egress`] (or the like) attached, and forgets the
/// cgroup's limits.
pub fn unlimit(shaper: &mut Shaper, cgroup_id: u64, attachment: Attachment) -> Result<()> {
    shaper.detach(attachment)?;
    shaper.remove_limits(cgroup_id)?;
    Ok(())
}

/// How long a sink is given to listen before its senders start.
pub const LISTEN_WAIT: Duration = Duration::from_millis(200);

/// A sink in namespace B that counts what it receives.
pub struct Sink {
    pub meter: Meter,
    until: Until,
    handle: JoinHandle<io::Result<()>>,
}

impl Sink {
    /// Listens at `at` in B for `traffic` (TCP or UDP) for `lasting` at
    /// most, and gives it a moment to listen.
    pub fn start(lab: &NetnsPair, traffic: Traffic, at: SocketAddr, lasting: Duration) -> Self {
        Self::start_until(lab, traffic, at, Until::after(lasting))
    }

    /// [`Sink::start`] until `until`.
    pub fn start_until(lab: &NetnsPair, traffic: Traffic, at: SocketAddr, until: Until) -> Self {
        let sink = Self::spawn(lab, traffic, at, until);
        thread::sleep(LISTEN_WAIT);
        sink
    }

    /// [`Sink::start_until`] without the moment to listen: for many sinks
    /// started together, which then wait [`LISTEN_WAIT`] once.
    pub fn spawn(lab: &NetnsPair, traffic: Traffic, at: SocketAddr, until: Until) -> Self {
        let meter = Meter::default();
        let handle = {
            let (meter, until) = (meter.clone(), until.clone());
            traffic::spawn_in(Some(lab.b().to_string()), move || match traffic {
                Traffic::Tcp(_) => traffic::tcp_sink(TcpListener::bind(at)?, meter, &until),
                Traffic::Udp => traffic::udp_sink(UdpSocket::bind(at)?, meter, &until),
                Traffic::Short(s) => {
                    short::short_sink(TcpListener::bind(at)?, meter, s.concurrency, &until)
                }
            })
        };
        Self {
            meter,
            until,
            handle,
        }
    }

    pub fn stop(self) {
        self.until.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

/// Senders in `cgroup` in namespace A, to `to` for `seconds`: TCP flows as
/// fast as they may, UDP at `udp_rate` bit/s, or short connections (whose
/// report, on the child's stdout, leaves out the first `skip` seconds).
pub fn start_senders(
    lab: &NetnsPair,
    cgroup: &Cgroup,
    traffic: Traffic,
    udp_rate: u64,
    seconds: &str,
    skip: f64,
    to: SocketAddr,
) -> Result<Child> {
    let mut command = match traffic {
        Traffic::Tcp(n) => {
            let mut c = traffic_command("tcp-send", lab.a())?;
            c.args(["--flows", &n.to_string()]);
            c
        }
        Traffic::Udp => {
            let mut c = traffic_command("udp-send", lab.a())?;
            c.args(["--rate", &udp_rate.to_string()]);
            c
        }
        Traffic::Short(s) => {
            let mut c = traffic_command("short-send", lab.a())?;
            c.args(["--size", &s.size.to_string()])
                .args(["--concurrency", &s.concurrency.to_string()])
                .stdout(Stdio::piped());
            c
        }
    };
    if !matches!(traffic, Traffic::Short(_)) {
        command.stdout(Stdio::null());
    }
    command.args([
        "--seconds",
        seconds,
        "--skip",
        &skip.to_string(),
        "--to",
        &to.to_string(),
    ]);
    cgroup.spawn_inside(&mut command)?;
    command
        .spawn()
        .map_err(BenchError::io("cannot start the sender"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_is_the_cni_plugins() {
        let rate = Rate::from_bits_per_sec(100_000_000).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            tbf_args("add", rate).join(" "),
            "qdisc add dev veth0 root tbf rate 100000000bit burst 50000 latency 25ms"
        );
        let slow = Rate::from_bits_per_sec(10_000_000).unwrap_or_else(|e| panic!("{e}"));
        assert!(tbf_args("change", slow).join(" ").contains("burst 16384 "));
    }
}
