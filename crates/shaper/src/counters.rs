//! A cgroup's traffic counters, summed over CPUs.

use crate::abi;

/// One direction's counters: what passed, what was dropped, what was marked
/// (ECN CE, or a congestion notification to the local TCP stack).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    pub bytes: u64,
    pub packets: u64,
    pub dropped: u64,
    pub marked: u64,
}

/// Both directions' counters of one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupCounters {
    pub egress: DirectionCounters,
    pub ingress: DirectionCounters,
}

impl CgroupCounters {
    /// Adds up the per-CPU values of the `counters` map.
    pub(crate) fn sum<'a>(per_cpu: impl Iterator<Item = &'a abi::Counters>) -> Self {
        let mut total = Self::default();
        for c in per_cpu {
            total.egress.add(&c.dir[abi::EGRESS]);
            total.ingress.add(&c.dir[abi::INGRESS]);
        }
        total
    }
}

impl DirectionCounters {
    fn add(&mut self, c: &abi::DirCounters) {
        self.bytes += c.bytes;
        self.packets += c.packets;
        self.dropped += c.dropped;
        self.marked += c.marked;
    }
}
