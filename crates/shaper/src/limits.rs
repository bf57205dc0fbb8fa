//! What a cgroup is limited to, in the units operators use.

use podshaper_rate::{ByteSize, Rate};

use crate::abi;

/// One direction's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectionLimit {
    pub rate: Rate,
    pub burst: ByteSize,
}

impl DirectionLimit {
    /// A limit with the burst given, or the rate's default burst.
    pub fn new(rate: Rate, burst: Option<ByteSize>) -> Self {
        Self {
            rate,
            burst: burst.unwrap_or_else(|| rate.default_burst()),
        }
    }
}

/// A cgroup's limits; `None` leaves that direction unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub egress: Option<DirectionLimit>,
    pub ingress: Option<DirectionLimit>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.egress.is_none() && self.ingress.is_none()
    }

    /// Limits read back from the `limits` map. Rates are held in whole bytes
    /// per second there, so a rate that was not a multiple of 8 bit/s reads
    /// back rounded down.
    pub(crate) fn from_abi(limit: &abi::Limit) -> Self {
        let dir = |d: &abi::DirLimit| -> Option<DirectionLimit> {
            if d.rate_bytes_per_sec == 0 {
                return None;
            }
            Some(DirectionLimit {
                rate: Rate::from_bits_per_sec(d.rate_bytes_per_sec.saturating_mul(8)).ok()?,
                burst: ByteSize::from_bytes(d.burst_bytes).ok()?,
            })
        };
        Self {
            egress: dir(&limit.dir[abi::EGRESS]),
            ingress: dir(&limit.dir[abi::INGRESS]),
        }
    }

    /// The value the BPF `limits` map holds.
    pub(crate) fn to_abi(self) -> abi::Limit {
        let dir = |d: Option<DirectionLimit>| match d {
            Some(d) => abi::DirLimit {
                rate_bytes_per_sec: d.rate.bytes_per_sec(),
                burst_bytes: d.burst.bytes(),
            },
            None => abi::DirLimit::default(),
        };
        let mut limit = abi::Limit::default();
        limit.dir[abi::EGRESS] = dir(self.egress);
        limit.dir[abi::INGRESS] = dir(self.ingress);
        limit
    }
}
