//! What a bench run measures: the matrix's axes and how each cell runs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use podshaper_netlab::short::ShortConnections;
use podshaper_rate::{ByteSize, Rate};
use serde::{Serialize, Serializer};

use crate::error::{BenchError, Result};

/// What limits the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Podshaper,
    /// tc tbf on the veth, with the CNI bandwidth plugin's latency
    /// ([`crate::lab::tbf_args`])
    Tbf,
    /// no limit: what the lab carries
    Unlimited,
}

impl FromStr for Mechanism {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "podshaper" => Ok(Self::Podshaper),
            "tbf" => Ok(Self::Tbf),
            "none" => Ok(Self::Unlimited),
            other => Err(BenchError::UnknownMechanism(other.to_string())),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Podshaper => "podshaper",
            Self::Tbf => "tbf",
            Self::Unlimited => "none",
        })
    }
}

/// The direction limited, seen from the limited side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Egress,
    Ingress,
}

impl FromStr for Direction {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "egress" => Ok(Self::Egress),
            "ingress" => Ok(Self::Ingress),
            other => Err(BenchError::UnknownDirection(other.to_string())),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        })
    }
}

/// The traffic of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// this many TCP flows, as fast as they may
    Tcp(usize),
    /// UDP offered at four times the limit
    Udp,
    /// short TCP connections, this many at once of this size each
    Short(ShortConnections),
}

/// The most short connections a cell opens at once (one thread per
/// connection on each side).
pub const MAX_SHORT_CONCURRENCY: usize = 1024;

/// `SIZE:CONCURRENCY` (`64Ki:32`): a short-connection traffic. SIZE is the
/// CLI's size (a Kubernetes quantity of bytes, or a tc size: `64K` and
/// `64kb` are 64 KiB, `1M` is 1,000,000 bytes, `1Mi` 1 MiB).
pub fn parse_short(text: &str) -> Result<ShortConnections> {
    let invalid = |reason: String| BenchError::Short {
        value: text.to_string(),
        reason,
    };
    let (size, concurrency) = text
        .split_once(':')
        .ok_or_else(|| invalid("expected SIZE:CONCURRENCY, e.g. 64Ki:32".into()))?;
    let size: ByteSize = size.parse().map_err(|e| invalid(format!("{e}")))?;
    let concurrency: usize = concurrency
        .trim()
        .parse()
        .ok()
        .filter(|c| (1..=MAX_SHORT_CONCURRENCY).contains(c))
        .ok_or_else(|| {
            invalid(format!(
                "concurrency {concurrency:?} is not a whole number from 1 to {MAX_SHORT_CONCURRENCY}"
            ))
        })?;
    Ok(ShortConnections {
        size: size.bytes(),
        concurrency,
    })
}

/// The longest round trip a delay line may add (its queues grow with it).
pub const MAX_RTT: Duration = Duration::from_secs(1);

/// A round-trip time for the lab: `0` (the direct veth pair), or a number
/// with `us`, `ms` or `s` (`500us`, `10ms`, `0.05s`), at most [`MAX_RTT`].
pub fn parse_rtt(text: &str) -> Result<Duration> {
    let invalid = |reason: &str| BenchError::Rtt {
        value: text.to_string(),
        reason: reason.to_string(),
    };
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| invalid("expected a unit: us, ms or s (e.g. 10ms), or 0"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| invalid("expected a number before the unit"))?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        _ => return Err(invalid("the unit must be us, ms or s")),
    };
    let rtt = Duration::try_from_secs_f64(seconds).map_err(|_| invalid("out of range"))?;
    if rtt > MAX_RTT {
        return Err(invalid("at most 1s"));
    }
    Ok(rtt)
}

impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(n) => f.pad(&format!("tcp x{n}")),
            Self::Udp => f.pad("udp 4x"),
            Self::Short(s) => {
                let size = ByteSize::from_bytes(s.size)
                    .map_or_else(|_| format!("{}B", s.size), |b| b.to_string());
                f.pad(&format!("short {size}:{}", s.concurrency))
            }
        }
    }
}

/// The report names mechanisms, directions and traffics as the table does.
macro_rules! serialize_as_shown {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_shown!(Mechanism, Direction, Traffic);

/// A run of `seconds` whose first `warmup` are not measured leaves at least
/// a second to measure.
pub fn check_window(seconds: f64, warmup: f64) -> Result<()> {
    if !(warmup >= 0.0 && seconds >= warmup + 1.0) {
        return Err(BenchError::Window { seconds, warmup });
    }
    Ok(())
}

/// A bench run (`podshaper bench`'s flags; the defaults are its defaults).
#[derive(Debug, Clone)]
pub struct Options {
    /// target rates
    pub rates: Vec<Rate>,
    /// TCP flow counts (0 counts as 1)
    pub flows: Vec<usize>,
    /// round-trip times between the namespaces: zero is the direct veth
    /// pair, more a delay line (`podshaper_netlab::delay`)
    pub rtts: Vec<Duration>,
    pub directions: Vec<Direction>,
    pub mechanisms: Vec<Mechanism>,
    /// also UDP, offered at 4x the limit
    pub udp: bool,
    /// also short connections, each of these
    pub short: Vec<ShortConnections>,
    /// seconds per run, the warm-up included
    pub seconds: f64,
    /// seconds at the start of each run left out of the measurement
    pub warmup: f64,
    /// the latency probe beside TCP traffic
    pub probe: bool,
    /// the senders' TCP congestion control
    pub cc: String,
    /// TCP connections negotiate ECN
    pub ecn: bool,
    /// podshaper's ingress: the queue the daemon puts in front of a pod
    /// with its own network namespace, with the policer behind it
    pub ingress_queue: bool,
    /// podshaper's ingress: the node's queue for hostNetwork pods instead
    pub host_queue: bool,
    /// also the limit-change runs
    pub change: bool,
    /// also a limit put on TCP flows already running (egress)
    pub open: bool,
    /// draw the limit-change runs to this PNG (runs them even without
    /// `change`); needs the `plot` feature
    pub plot: Option<PathBuf>,
}

impl Options {
    /// Refuses a run that would measure nothing, before anything is built.
    pub fn check(&self) -> Result<()> {
        check_window(self.seconds, self.warmup)?;
        if self.plot.is_some() && !cfg!(feature = "plot") {
            return Err(BenchError::PlotNotBuilt);
        }
        Ok(())
    }

    /// The cells' traffics: the TCP flow counts, then UDP, then short
    /// connections.
    pub fn traffics(&self) -> Vec<Traffic> {
        let mut traffics: Vec<Traffic> = self
            .flows
            .iter()
            .map(|f| Traffic::Tcp((*f).max(1)))
            .collect();
        if self.udp {
            traffics.push(Traffic::Udp);
        }
        traffics.extend(self.short.iter().map(|s| Traffic::Short(*s)));
        traffics
    }

    /// The podshaper ingress the cells measure: the pod's queue (not with
    /// the node's queue), the node's queue, or the policer alone.
    pub fn pod_queue(&self) -> bool {
        self.ingress_queue && !self.host_queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_they_print() {
        for m in ["podshaper", "tbf", "none"] {
            assert_eq!(
                m.parse::<Mechanism>()
                    .map(|m| m.to_string())
                    .ok()
                    .as_deref(),
                Some(m)
            );
        }
        for d in ["egress", "ingress"] {
            assert_eq!(
                d.parse::<Direction>()
                    .map(|d| d.to_string())
                    .ok()
                    .as_deref(),
                Some(d)
            );
        }
        assert!(matches!(
            "htb".parse::<Mechanism>(),
            Err(BenchError::UnknownMechanism(_))
        ));
        assert_eq!(format!("{:<9}|", Traffic::Tcp(4)), "tcp x4   |");
        assert_eq!(
            serde_json::to_value(Traffic::Udp).ok(),
            Some(serde_json::json!("udp 4x"))
        );
    }

    #[test]
    fn round_trips_read_with_their_unit() {
        let ms = |s: &str| parse_rtt(s).ok().map(|d| d.as_secs_f64() * 1e3);
        assert_eq!(ms("0"), Some(0.0));
        assert_eq!(ms("10ms"), Some(10.0));
        assert_eq!(ms("0.05s"), Some(50.0));
        assert_eq!(ms("500us"), Some(0.5));
        assert_eq!(ms("1s"), Some(1000.0));
        for bad in ["10", "10 ms", "ms", "-1ms", "10h", "2s", "1.2.3ms", ""] {
            let e = parse_rtt(bad).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(bad)),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn short_connections_read_as_size_and_concurrency() {
        let short = |s: &str| parse_short(s).map(Traffic::Short).map(|t| t.to_string());
        assert_eq!(short("64Ki:32").ok().as_deref(), Some("short 64KiB:32"));
        assert_eq!(short("16K:8").ok().as_deref(), Some("short 16KiB:8"));
        assert_eq!(short("1Mi:256").ok().as_deref(), Some("short 1MiB:256"));
        assert_eq!(
            parse_short("1M:64").ok(),
            Some(ShortConnections {
                size: 1_000_000,
                concurrency: 64
            })
        );
        for bad in [
            "64Ki",
            "64Ki:0",
            "64Ki:x",
            "64Ki:1025",
            "nope:8",
            "1:8",
            ":8",
        ] {
            let e = parse_short(bad).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(bad)),
                "{bad}: {e:?}"
            );
        }
    }
}
