//! A cgroup's traffic counters, as its shaping state keeps them.

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
    /// The counters a cgroup's shaping state keeps beside its buckets.
    pub(crate) fn of_state(state: &abi::State) -> Self {
        Self {
            egress: DirectionCounters::from(&state.dir[abi::EGRESS].counters),
            ingress: DirectionCounters::from(&state.dir[abi::INGRESS].counters),
        }
    }
}

impl From<&abi::DirCounters> for DirectionCounters {
    fn from(c: &abi::DirCounters) -> Self {
        Self {
            bytes: c.bytes,
            packets: c.packets,
            dropped: c.dropped,
            marked: c.marked,
        }
    }
}
