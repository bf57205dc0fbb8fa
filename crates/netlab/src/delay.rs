//! A delay line between the two namespaces of a [`crate::NetnsPair`]: a
//! third namespace, the router, with a veth from each side and two TUN
//! devices, and one thread per direction that holds each packet for half
//! the round-trip time before passing it on.
//!
//! ```text
//!  A: veth0 ── va ─┐ router           ┌─ vb ── veth0 :B
//!                  │  iif va  → dla ──┤ thread a→b: read dla, hold, write dlb → vb
//!                  │  iif vb  → dlb ──┘ thread b→a: read dlb, hold, write dla → va
//! ```
//!
//! Packets that come in on `va` are routed (policy rule on the input
//! interface) into the TUN `dla`; the a→b thread reads them, holds them for
//! RTT/2 and writes them into `dlb`, where they enter the router's stack
//! again and the main table sends them out of `vb` to B. The way back is
//! the mirror image. A and B keep their addresses and their own `veth0`
//! (the shaper's programs, qdiscs and queues sit there as without a delay
//! line); their neighbour entries point at the router's veths.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::netns::{self, ip, mac, neighbours, NetnsError, NetnsPair};
use crate::traffic;
use crate::tun::{self, Counters};

/// The smallest queue a direction gets: room for 64 GSO packets.
const MIN_QUEUE: usize = 4 << 20;
/// The rate the default queue is sized for.
const SIZED_FOR_BPS: u64 = 1_000_000_000;
/// The TUN devices' transmit queues (packets waiting for the forwarder to
/// read them; the default 500 overflows under bursts of small packets).
const TUN_TXQUEUELEN: &str = "10000";
/// Routing tables of the router's policy rules.
const TABLE_FROM_A: &str = "100";
const TABLE_FROM_B: &str = "101";

/// How long a delay line holds packets, and how much it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayConfig {
    /// the round trip it adds: half of it each way
    pub rtt: Duration,
    /// the most bytes each direction holds; beyond it, packets are dropped
    /// and counted
    pub queue_bytes: usize,
}

impl DelayConfig {
    /// `rtt` with the default queue: what 1 Gbit/s puts in flight over the
    /// whole round trip (twice what one direction holds at that rate, as
    /// each holds RTT/2), at least 4 MiB.
    pub fn new(rtt: Duration) -> Self {
        Self::for_rate(rtt, SIZED_FOR_BPS)
    }

    /// `rtt` with a queue for traffic of up to `bits_per_sec`: what that
    /// rate puts in flight over the whole round trip, at least the default.
    pub fn for_rate(rtt: Duration, bits_per_sec: u64) -> Self {
        let bdp = |bps: u64| (bps as f64 / 8.0 * rtt.as_secs_f64()) as usize;
        Self {
            rtt,
            queue_bytes: bdp(bits_per_sec.max(SIZED_FOR_BPS)).max(MIN_QUEUE),
        }
    }
}

/// What one direction of the delay line did since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionCounts {
    /// packets (GSO packets count once) passed on
    pub packets: u64,
    /// their bytes, virtio-net headers included
    pub bytes: u64,
    /// dropped because the direction's queue was full
    pub dropped: u64,
    /// lost to a failed read or write
    pub errors: u64,
    /// dropped by the kernel before the forwarder read them (the TUN
    /// device's transmit queue was full); None if it cannot be read
    pub tun_dropped: Option<u64>,
    /// the most bytes the queue held at once
    pub peak_queue_bytes: u64,
}

impl DirectionCounts {
    /// Every packet the direction lost, wherever.
    pub fn lost(&self) -> u64 {
        self.dropped + self.errors + self.tun_dropped.unwrap_or(0)
    }
}

/// A running delay line; dropping it stops the threads and removes the
/// router namespace with everything in it.
#[derive(Debug)]
pub struct DelayLine {
    router: String,
    config: DelayConfig,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    a_to_b: Arc<Counters>,
    b_to_a: Arc<Counters>,
}

impl DelayLine {
    /// Builds the router `<base>-r` between namespaces `a` and `b` (which
    /// exist and have no `veth0` yet), gives each side a `veth0` into it,
    /// and starts forwarding. The sides' addresses and neighbour entries
    /// are the caller's ([`DelayLine::router_macs`] gives the latter).
    pub(crate) fn build(
        base: &str,
        a: &str,
        b: &str,
        config: DelayConfig,
    ) -> Result<Self, NetnsError> {
        let mut line = Self {
            router: format!("{base}-r"),
            config,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            a_to_b: Arc::default(),
            b_to_a: Arc::default(),
        };
        let r = line.router.clone();
        // From here on, Drop removes whatever was made.
        ip(&["netns", "add", &r])?;
        for setting in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            // packets from A come back in on dlb: not the way to A
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            ip(&["netns", "exec", &r, "sysctl", "-qw", setting])?;
        }
        for (side, peer) in [(a, "va"), (b, "vb")] {
            ip(&[
                "-n", side, "link", "add", "veth0", "type", "veth", "peer", "name", peer, "netns",
                &r,
            ])?;
            ip(&["-n", &r, "link", "set", peer, "up"])?;
        }
        ip(&["-n", &r, "link", "set", "lo", "up"])?;
        let (dla, dlb) = open_tuns(&r)?;
        for tun in ["dla", "dlb"] {
            ip(&[
                "-n",
                &r,
                "link",
                "set",
                tun,
                "txqueuelen",
                TUN_TXQUEUELEN,
                "up",
            ])?;
        }
        line.route(a, b)?;
        line.start(dla, dlb)?;
        Ok(line)
    }

    /// The router's routes: the main table to each side through its veth
    /// (with static neighbours), and per input veth a table into its TUN.
    fn route(&self, a: &str, b: &str) -> Result<(), NetnsError> {
        let r = self.router.as_str();
        let mac_a = mac(a, "veth0")?;
        let mac_b = mac(b, "veth0")?;
        let sides = [
            ("va", NetnsPair::A_V4, NetnsPair::A_V6, &mac_a),
            ("vb", NetnsPair::B_V4, NetnsPair::B_V6, &mac_b),
        ];
        for (veth, v4, v6, side_mac) in sides {
            ip(&["-n", r, "route", "add", &format!("{v4}/32"), "dev", veth])?;
            ip(&[
                "-n",
                r,
                "-6",
                "route",
                "add",
                &format!("{v6}/128"),
                "dev",
                veth,
            ])?;
            neighbours(r, veth, side_mac, &[v4.into(), v6.into()])?;
        }
        for (veth, tun, table) in [("va", "dla", TABLE_FROM_A), ("vb", "dlb", TABLE_FROM_B)] {
            for family in ["-4", "-6"] {
                ip(&["-n", r, family, "rule", "add", "iif", veth, "lookup", table])?;
                ip(&[
                    "-n", r, family, "route", "add", "default", "dev", tun, "table", table,
                ])?;
            }
        }
        Ok(())
    }

    fn start(&mut self, dla: File, dlb: File) -> Result<(), NetnsError> {
        let hold = self.config.rtt / 2;
        let (dla, dlb) = (Arc::new(dla), Arc::new(dlb));
        for (name, from, to, counters) in [
            ("delay-a-b", &dla, &dlb, &self.a_to_b),
            ("delay-b-a", &dlb, &dla, &self.b_to_a),
        ] {
            let (from, to, counters) = (from.clone(), to.clone(), counters.clone());
            let (stop, limit) = (self.stop.clone(), self.config.queue_bytes);
            let handle = thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    tun::tight_timer_slack();
                    tun::forward(&from, &to, hold, limit, &counters, &stop);
                })
                .map_err(NetnsError::DelayThread)?;
            self.threads.push(handle);
        }
        Ok(())
    }

    /// The MAC addresses of the router's veths toward A and toward B: the
    /// neighbour entries A and B need for each other's addresses.
    pub(crate) fn router_macs(&self) -> Result<(String, String), NetnsError> {
        Ok((mac(&self.router, "va")?, mac(&self.router, "vb")?))
    }

    pub fn config(&self) -> DelayConfig {
        self.config
    }

    /// The router namespace's name.
    pub fn router(&self) -> &str {
        &self.router
    }

    /// What each direction did: (A to B, B to A).
    pub fn counts(&self) -> (DirectionCounts, DirectionCounts) {
        let read = |c: &Counters, tun: &str| DirectionCounts {
            packets: c.packets.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            tun_dropped: tx_dropped(&self.router, tun),
            peak_queue_bytes: c.peak_bytes.load(Ordering::Relaxed),
        };
        (read(&self.a_to_b, "dla"), read(&self.b_to_a, "dlb"))
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
        // The TUN devices went with the threads' last file handles; the
        // router's veths go with its namespace.
        if let Err(e) = ip(&["netns", "del", &self.router]) {
            tracing::warn!(error = %e, netns = %self.router, "could not delete the delay line's namespace");
        }
    }
}

/// Opens `dla` and `dlb` inside the router (a TUN device belongs to the
/// namespace of the thread that creates it).
fn open_tuns(router: &str) -> Result<(File, File), NetnsError> {
    let opened = traffic::spawn_in(Some(router.to_string()), || {
        Ok((tun::open("dla")?, tun::open("dlb")?))
    })
    .join();
    let failed = |source| NetnsError::Tun {
        netns: router.to_string(),
        source,
    };
    match opened {
        Ok(result) => result.map_err(failed),
        Err(_) => Err(failed(std::io::Error::other(
            "the thread opening it panicked",
        ))),
    }
}

/// Packets the kernel dropped on their way out of `dev` in `ns`.
fn tx_dropped(ns: &str, dev: &str) -> Option<u64> {
    netns::tx_counts(ns, dev).map(|tx| tx.dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_queue_holds_a_round_trip_at_1g() {
        let q = |ms| DelayConfig::new(Duration::from_millis(ms)).queue_bytes;
        assert_eq!(q(50), 6_250_000);
        assert_eq!(q(100), 12_500_000);
        assert_eq!(q(1), MIN_QUEUE);
        assert_eq!(q(10), MIN_QUEUE);
        let at_5g = DelayConfig::for_rate(Duration::from_millis(50), 5_000_000_000);
        assert_eq!(at_5g.queue_bytes, 31_250_000);
        let at_10m = DelayConfig::for_rate(Duration::from_millis(50), 10_000_000);
        assert_eq!(at_10m, DelayConfig::new(Duration::from_millis(50)));
    }

    #[test]
    fn reads_tx_drops_from_ip_json() {
        // iproute2 6.1's `ip -json -s link show dla`, shortened
        let json = r#"[{"ifindex":5,"ifname":"dla","flags":["POINTOPOINT","UP"],"mtu":1500,"qdisc":"fq_codel","txqlen":10000,"link_type":"none","stats64":{"rx":{"bytes":0,"packets":0,"errors":0,"dropped":0,"over_errors":0,"multicast":0},"tx":{"bytes":84,"packets":1,"errors":0,"dropped":3,"carrier_errors":0,"collisions":0}}}]"#;
        let tx = netns::parse_tx_counts(json);
        assert_eq!(
            tx.map(|t| (t.bytes, t.packets, t.dropped)),
            Some((84, 1, 3))
        );
        assert_eq!(netns::parse_tx_counts("[]").map(|t| t.packets), None);
    }
}
