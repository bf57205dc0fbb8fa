//! A queue in front of a pod that has a network namespace of its own.
//!
//! A cgroup program can only pass or drop what arrives, and a policer that
//! drops makes TCP senders retransmit and back off (docs/shaping.md: one
//! cubic flow reached 0.66-0.78 of its ingress limit). Where the pod has its
//! own network namespace, the daemon puts a queue in front of it: each of the
//! namespace's interfaces redirects what it receives (tc ingress, u32
//! match-all, mirred) to an ifb device, whose htb class releases it at the
//! limit into a short byte FIFO. Packets wait instead of being dropped, and
//! the cgroup policer behind the queue stays as the backstop (for traffic
//! that does not cross those interfaces, and if the queue is removed).
//!
//! It is built with iproute2's `ip` and `tc`, run inside the namespace; the
//! ifb lives in the pod's namespace, so it survives the daemon and goes away
//! with the pod.

use std::fs::{self, File};
use std::io::{self, Write};
use std::process::{Command, Stdio};

use crate::limits::DirectionLimit;
use crate::netns;

/// The ifb device in each queued pod's namespace.
pub const IFB_NAME: &str = "podshaper-ifb";
/// Preference of the redirecting filter on each interface's ingress.
const FILTER_PREF: &str = "49";
/// The FIFO holds this long at the rate (the added delay under load) ...
const QUEUE_NS: u64 = 2_000_000;
/// ... and at least this much (22 full-size packets; 26 ms at 10M, about
/// tbf's 25 ms): smaller floors lost accuracy and fairness at 10M (16 KiB,
/// 16 flows: 0.966, Jain 0.41), bigger ones add delay to bulk flows (64 KiB:
/// 52 ms at 10M). Small packets do not wait in it (`SMALL`).
const MIN_QUEUE_BYTES: u64 = 32 * 1024;
/// The htb classes' burst is at most half the limit's and at least this
/// much: the policer behind the queue has the whole burst, so what the queue
/// releases never finds it empty (with equal bursts it dropped up to 0.4%).
const MIN_HTB_BURST: u64 = 16 * 1024;

/// htb class ids: the limit, small packets, bulk.
const ROOT: u32 = 1;
const SMALL: u32 = 10;
const BULK: u32 = 20;
/// The small packets' FIFO: 64 packets of 256 bytes.
const SMALL_QUEUE_BYTES: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot enter the pod's network namespace")]
    Enter(#[source] io::Error),
    #[error("cannot run {program} (is iproute2 installed?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
}

/// How many bytes the FIFO behind the htb class holds for a limit.
pub fn queue_bytes(limit: &DirectionLimit) -> u64 {
    let at_rate = limit.rate.bytes_per_sec().saturating_mul(QUEUE_NS) / 1_000_000_000;
    at_rate.max(MIN_QUEUE_BYTES)
}

/// Puts (or updates, live) the queue in front of the network namespace `ns`.
pub fn install(ns: &File, limit: &DirectionLimit) -> Result<(), QueueError> {
    netns::run_in(ns, || install_here(limit)).map_err(QueueError::Enter)?
}

/// Removes the queue from `ns`, if it has one.
pub fn remove(ns: &File) -> Result<(), QueueError> {
    netns::run_in(ns, remove_here).map_err(QueueError::Enter)?
}

fn install_here(limit: &DirectionLimit) -> Result<(), QueueError> {
    let have = interfaces()?;
    if have.iter().any(|n| n == IFB_NAME) {
        // A live change: the classes' rates and the FIFOs' sizes, nothing else.
        if tc_batch(&classes("change", limit)).is_ok() {
            return redirect_interfaces(&have);
        }
        // Not the queue we build (changed by hand, or half made): start over.
        remove_here()?;
    }
    run("ip", &["link", "add", IFB_NAME, "type", "ifb"])?;
    run("ip", &["link", "set", IFB_NAME, "up"])?;
    let mut commands = vec![
        // stab: count IP bytes (the frame less its Ethernet header), and a
        // GRO packet once, as the cgroup programs count them
        format!("qdisc add dev {IFB_NAME} root handle 1: stab overhead -14 htb default {BULK}"),
    ];
    commands.extend(classes("add", limit));
    commands.extend([
        // IPv4 total length, IPv6 payload length under 256 bytes
        format!(
            "filter add dev {IFB_NAME} parent 1: prio 1 protocol ip u32 match u16 0 0xff00 at 2 flowid 1:{SMALL}"
        ),
        format!(
            "filter add dev {IFB_NAME} parent 1: prio 2 protocol ipv6 u32 match u16 0 0xff00 at 4 flowid 1:{SMALL}"
        ),
    ]);
    tc_batch(&commands)?;
    redirect_interfaces(&have)
}

/// The htb classes and FIFOs for `limit` (`verb`: add or change). Under the
/// class that holds the limit, small packets (pure ACKs, requests, replies:
/// IP length under 256 bytes) have a class of their own that goes first, so
/// they do not wait behind the bulk FIFO; the bulk class is assured 9/10 of
/// the limit, so a flood of small packets cannot starve it.
fn classes(verb: &str, limit: &DirectionLimit) -> Vec<String> {
    let rate = limit.rate.bytes_per_sec().max(10);
    let small_rate = rate / 10;
    let bulk_rate = rate - small_rate;
    let burst = (limit.burst.bytes() / 2).max(MIN_HTB_BURST);
    let queue = queue_bytes(limit);
    let class = |id: u32, parent: &str, assured: u64, prio: u32| {
        format!(
            "class {verb} dev {IFB_NAME} parent {parent} classid 1:{id} htb rate {assured}bps ceil {rate}bps burst {burst} cburst {burst} prio {prio} quantum 65535"
        )
    };
    vec![
        class(ROOT, "1:", rate, 0),
        class(SMALL, "1:1", small_rate, 0),
        class(BULK, "1:1", bulk_rate, 1),
        format!("qdisc {verb} dev {IFB_NAME} parent 1:{SMALL} handle {SMALL}: bfifo limit {SMALL_QUEUE_BYTES}"),
        format!("qdisc {verb} dev {IFB_NAME} parent 1:{BULK} handle {BULK}: bfifo limit {queue}"),
    ]
}

/// Sends what each interface receives through the ifb (once per interface).
fn redirect_interfaces(have: &[String]) -> Result<(), QueueError> {
    for dev in have.iter().filter(|n| is_pod_interface(n)) {
        if redirects_to_ifb(dev) {
            continue;
        }
        // The ingress qdisc may be there already (ours from before, or
        // another tool's): our filter goes beside whatever it holds.
        let _ = tc(&format!("qdisc add dev {dev} handle ffff: ingress"));
        tc(&format!(
            "filter add dev {dev} parent ffff: pref {FILTER_PREF} protocol all u32 match u32 0 0 action mirred egress redirect dev {IFB_NAME}"
        ))?;
    }
    Ok(())
}

fn remove_here() -> Result<(), QueueError> {
    let have = interfaces()?;
    // Filters first: a redirect to a device that is gone drops packets.
    for dev in have.iter().filter(|n| is_pod_interface(n)) {
        if !redirects_to_ifb(dev) {
            continue;
        }
        tc(&format!(
            "filter del dev {dev} parent ffff: pref {FILTER_PREF}"
        ))?;
        if ingress_filters(dev).is_some_and(|f| f.trim().is_empty()) {
            let _ = tc(&format!("qdisc del dev {dev} handle ffff: ingress"));
        }
    }
    if have.iter().any(|n| n == IFB_NAME) {
        run("ip", &["link", "del", IFB_NAME])?;
    }
    Ok(())
}

/// The filters on an interface's ingress; None if it has no ingress qdisc.
fn ingress_filters(dev: &str) -> Option<String> {
    tc(&format!("filter show dev {dev} parent ffff:")).ok()
}

fn redirects_to_ifb(dev: &str) -> bool {
    ingress_filters(dev).is_some_and(|f| f.contains(IFB_NAME))
}

/// Interfaces whose received traffic goes through the queue: all but
/// loopback (the pod talking to itself) and the ifb. Names come from the
/// pod's namespace, so anything unusual is left alone rather than passed on.
fn is_pod_interface(name: &str) -> bool {
    name != "lo"
        && name != IFB_NAME
        && !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// The network interfaces of the calling thread's namespace.
fn interfaces() -> Result<Vec<String>, QueueError> {
    const NET_DEV: &str = "/proc/thread-self/net/dev";
    let table = fs::read_to_string(NET_DEV).map_err(|source| QueueError::Read {
        path: NET_DEV,
        source,
    })?;
    Ok(parse_net_dev(&table))
}

fn parse_net_dev(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

/// One tc command, its output. Words are split on whitespace: interface
/// names in it have passed [`is_pod_interface`], which admits none.
fn tc(command: &str) -> Result<String, QueueError> {
    output("tc", &command.split_whitespace().collect::<Vec<_>>())
}

fn run(program: &'static str, args: &[&str]) -> Result<(), QueueError> {
    output(program, args).map(|_| ())
}

fn output(program: &'static str, args: &[&str]) -> Result<String, QueueError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| QueueError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(QueueError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs tc commands in one process; fails on the first that fails.
fn tc_batch(commands: &[String]) -> Result<(), QueueError> {
    let failed = |stderr: String| QueueError::Command {
        command: format!("tc -batch: {}", commands.join("; ")),
        stderr,
    };
    let spawn_error = |source| QueueError::Spawn {
        program: "tc",
        source,
    };
    let mut child = Command::new("tc")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all((commands.join("\n") + "\n").as_bytes())
            .map_err(spawn_error)?;
    }
    let out = child.wait_with_output().map_err(spawn_error)?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use podshaper_rate::Rate;

    use super::*;

    #[test]
    fn reads_interface_names() {
        let table = "Inter-|   Receive |  Transmit\n face |bytes packets\n    lo: 0 0\n  eth0: 1 2\nveth-x@if3: 5\n";
        assert_eq!(parse_net_dev(table), ["lo", "eth0", "veth-x@if3"]);
    }

    #[test]
    fn leaves_odd_interface_names_alone() {
        assert!(is_pod_interface("eth0"));
        assert!(is_pod_interface("net1.100"));
        assert!(!is_pod_interface("lo"));
        assert!(!is_pod_interface(IFB_NAME));
        assert!(!is_pod_interface("-n"));
        assert!(!is_pod_interface("a b"));
        assert!(!is_pod_interface("x;y"));
    }

    #[test]
    fn the_fifo_holds_two_milliseconds_and_at_least_32_kib() {
        let limit = |s: &str| DirectionLimit::new(s.parse::<Rate>().expect("rate"), None);
        assert_eq!(queue_bytes(&limit("10M")), 32 * 1024);
        assert_eq!(queue_bytes(&limit("1G")), 250_000);
        assert_eq!(queue_bytes(&limit("5G")), 1_250_000);
    }
}
