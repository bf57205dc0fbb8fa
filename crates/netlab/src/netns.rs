//! Network namespaces joined by a veth pair, removed on drop.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::delay::{DelayConfig, DelayLine};

/// Why the lab could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("{0:?} is not a TCP congestion control name (cubic, bbr, reno, ...)")]
    CongestionControl(String),
    #[error("cannot allow TCP congestion control {algorithm} in namespaces ({ALLOWED_CC})")]
    AllowCongestionControl {
        algorithm: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `ip` (install iproute2)")]
    Spawn(#[source] std::io::Error),
    #[error("cannot create the delay line's TUN devices in network namespace {netns}")]
    Tun {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the delay line's thread")]
    DelayThread(#[source] std::io::Error),
    #[error("cannot enter network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Two network namespaces, `a` and `b`, joined by one veth pair, or with a
/// delay line between them (each side then has a veth into the line's
/// router): a = 198.18.0.1/30 and 2001:2::1/64, b = 198.18.0.2/30 and
/// 2001:2::2/64 either way, each side's `veth0` the only interface besides
/// `lo`.
#[derive(Debug)]
pub struct NetnsPair {
    a: String,
    b: String,
    delay: Option<DelayLine>,
}

impl NetnsPair {
    pub const A_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const B_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const A_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
    pub const B_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

    /// Creates the pair with names unique to this process and call:
    /// `ps-<tag>-<pid>-<n>-a` and `...-b`.
    pub fn create(tag: &str) -> Result<Self, NetnsError> {
        Self::create_with_delay(tag, None)
    }

    /// [`NetnsPair::create`] with `rtt` between the sides: a direct veth
    /// pair for zero, else a delay line with its default queue.
    pub fn create_with_rtt(tag: &str, rtt: Duration) -> Result<Self, NetnsError> {
        let delay = (!rtt.is_zero()).then(|| DelayConfig::new(rtt));
        Self::create_with_delay(tag, delay)
    }

    /// [`NetnsPair::create`], through a delay line (`...-r`, between the
    /// sides) when `delay` is given.
    pub fn create_with_delay(tag: &str, delay: Option<DelayConfig>) -> Result<Self, NetnsError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("ps-{tag}-{}-{n}", std::process::id());
        let mut pair = Self {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
            delay: None,
        };
        // From here on, Drop removes whatever was made.
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        if let Some(config) = delay {
            pair.delay = Some(DelayLine::build(&base, &pair.a, &pair.b, config)?);
            // A window of several MB at 1 Gbit/s and 50 ms: a new
            // namespace's senders stop at 4 MiB (tcp_wmem), which caps one
            // flow at 4 MiB per round trip (670 Mbit/s at 50 ms).
            pair.sysctl_both("net.ipv4.tcp_wmem=4096 16384 33554432")?;
            pair.sysctl_both("net.ipv4.tcp_rmem=4096 131072 33554432")?;
        } else {
            ip(&[
                "-n", &pair.a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0",
                "netns", &pair.b,
            ])?;
        }
        for (ns, v4, v6) in [
            (&pair.a, Self::A_V4, Self::A_V6),
            (&pair.b, Self::B_V4, Self::B_V6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/30"), "dev", "veth0"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "veth0",
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", "veth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Static neighbour entries: no first packet waits for (or loses) a
        // neighbour solicitation while the fresh link settles. Each side's
        // peer is the other side's veth0, or, through a delay line, the
        // router's veth on its own side.
        let (from_a, from_b) = match &pair.delay {
            Some(line) => line.router_macs()?,
            None => (mac(&pair.b, "veth0")?, mac(&pair.a, "veth0")?),
        };
        neighbours(
            &pair.a,
            "veth0",
            &from_a,
            &[Self::B_V4.into(), Self::B_V6.into()],
        )?;
        neighbours(
            &pair.b,
            "veth0",
            &from_b,
            &[Self::A_V4.into(), Self::A_V6.into()],
        )?;
        Ok(pair)
    }

    /// The delay line between the sides, if there is one.
    pub fn delay(&self) -> Option<&DelayLine> {
        self.delay.as_ref()
    }

    /// Sets the TCP congestion control of both namespaces (a new namespace
    /// inherits the host's; senders' reactions to the shaper differ by
    /// algorithm, so measurements say which one they used).
    pub fn set_congestion_control(&self, algorithm: &str) -> Result<(), NetnsError> {
        let valid = !algorithm.is_empty()
            && algorithm.len() <= 16
            && algorithm
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if !valid {
            return Err(NetnsError::CongestionControl(algorithm.to_string()));
        }
        allow_congestion_control(algorithm)?;
        self.sysctl_both(&format!("net.ipv4.tcp_congestion_control={algorithm}"))
    }

    /// Whether TCP connections opened in either namespace ask for ECN
    /// (`net.ipv4.tcp_ecn` 1; a new namespace has 2: ECN only when the peer
    /// asks). Shapers that mark CE instead of dropping act on these flows.
    pub fn set_ecn(&self, enabled: bool) -> Result<(), NetnsError> {
        self.sysctl_both(&format!("net.ipv4.tcp_ecn={}", if enabled { 1 } else { 2 }))
    }

    /// Sets `name=value` with sysctl in both namespaces.
    fn sysctl_both(&self, setting: &str) -> Result<(), NetnsError> {
        for ns in [&self.a, &self.b] {
            ip(&["netns", "exec", ns, "sysctl", "-qw", setting])?;
        }
        Ok(())
    }

    pub fn a(&self) -> &str {
        &self.a
    }

    pub fn b(&self) -> &str {
        &self.b
    }

    /// The address of side `a` or `b` in the family of `like`.
    pub fn addr_b(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Self::B_V6)
        } else {
            IpAddr::V4(Self::B_V4)
        }
    }

    pub fn addr_a(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Self::A_V6)
        } else {
            IpAddr::V4(Self::A_V4)
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth, and with it the pair.
        for ns in [&self.a, &self.b] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                tracing::warn!(error = %e, netns = %ns, "could not delete network namespace");
            }
        }
    }
}

/// The bind-mounted handle `ip netns add` made.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Moves the calling thread into a named network namespace. Sockets it opens
/// afterwards belong there; other threads are unaffected.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let enter_error = |source| NetnsError::Enter {
        name: name.to_string(),
        source,
    };
    let file = File::open(netns_path(name)).map_err(enter_error)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| enter_error(std::io::Error::from(e)))
}

/// Permanent neighbour entries on `dev` in `ns`: each of `addrs` at `mac`.
pub(crate) fn neighbours(
    ns: &str,
    dev: &str,
    mac: &str,
    addrs: &[IpAddr],
) -> Result<(), NetnsError> {
    for addr in addrs {
        ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// The MAC address of `dev` in namespace `ns` (`ip -json link show`).
pub(crate) fn mac(ns: &str, dev: &str) -> Result<String, NetnsError> {
    let args = ["-json", "-n", ns, "link", "show", dev];
    let out = ip_output(&args)?;
    link_address(&out).ok_or_else(|| NetnsError::Ip {
        args: args.join(" "),
        stderr: format!("no link address in {out:?}"),
    })
}

/// One interface of `ip -json link show`, as far as the lab reads it.
#[derive(serde::Deserialize)]
struct Link {
    address: Option<String>,
}

/// The address of the one interface in `ip -json link show DEV` output.
fn link_address(json: &str) -> Option<String> {
    serde_json::from_str::<Vec<Link>>(json)
        .ok()?
        .into_iter()
        .next()?
        .address
}

/// The host's list of congestion controls a network namespace may choose.
const ALLOWED_CC: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// Adds `algorithm` to the host's allowed list if it is not there. A
/// namespace other than the host's may only pick an allowed algorithm
/// (EPERM otherwise), and the list holds only the boot default unless
/// someone added to it: a host booted with bbr allows "reno bbr", and a lab
/// asking for cubic failed. Adding permits; it changes no socket's algorithm.
fn allow_congestion_control(algorithm: &str) -> Result<(), NetnsError> {
    let failed = |source| NetnsError::AllowCongestionControl {
        algorithm: algorithm.to_string(),
        source,
    };
    let allowed = std::fs::read_to_string(ALLOWED_CC).map_err(failed)?;
    if allowed.split_whitespace().any(|a| a == algorithm) {
        return Ok(());
    }
    std::fs::write(ALLOWED_CC, format!("{} {algorithm}", allowed.trim())).map_err(failed)
}

pub(crate) fn ip(args: &[&str]) -> Result<(), NetnsError> {
    ip_output(args).map(|_| ())
}

pub(crate) fn ip_output(args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetnsError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// What an interface has sent: bytes, packets, and packets the kernel
/// dropped on their way out.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct TxCounts {
    pub bytes: u64,
    pub packets: u64,
    pub dropped: u64,
}

/// One interface's counters in `ip -json -s link show`, as far as read.
#[derive(serde::Deserialize)]
struct LinkStats {
    stats64: Stats64,
}

#[derive(serde::Deserialize)]
struct Stats64 {
    tx: TxCounts,
}

/// What `dev` in the namespace `ns` has sent since it was made. None if it
/// cannot be read.
pub fn tx_counts(ns: &str, dev: &str) -> Option<TxCounts> {
    let out = ip_output(&["-json", "-s", "-n", ns, "link", "show", dev]).ok()?;
    parse_tx_counts(&out)
}

pub(crate) fn parse_tx_counts(json: &str) -> Option<TxCounts> {
    serde_json::from_str::<Vec<LinkStats>>(json)
        .ok()?
        .first()
        .map(|l| l.stats64.tx)
}

/// (TcpRetransSegs, TcpOutSegs) of the namespace `ns`: the segments its TCP
/// sockets resent and sent, since it was made. None if they cannot be read.
pub fn tcp_segments(ns: &str) -> Option<(u64, u64)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        values
            .get(header.iter().position(|h| *h == name)?)?
            .parse()
            .ok()
    };
    Some((get("RetransSegs")?, get("OutSegs")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_links_address_from_ip_json() {
        // iproute2 6.1's `ip -json -n NS link show veth0`, copied from this machine
        let json = r#"[{"ifindex":3,"link":"veth1","ifname":"veth0","flags":["BROADCAST","MULTICAST","M-DOWN"],"mtu":1500,"qdisc":"noop","operstate":"DOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether","address":"3e:d3:1a:58:f1:bb","broadcast":"ff:ff:ff:ff:ff:ff"}]"#;
        assert_eq!(link_address(json).as_deref(), Some("3e:d3:1a:58:f1:bb"));
        assert_eq!(link_address("[]"), None);
        assert_eq!(
            link_address("3: veth0@if2: <BROADCAST> link/ether 3e:d3:1a:58:f1:bb"),
            None
        );
    }
}
