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
    /// The counters a cgroup's shaping states keep beside their buckets,
    /// one state per direction (None: never attached, all zero).
    pub(crate) fn of_states(egress: Option<&abi::State>, ingress: Option<&abi::State>) -> Self {
        let of = |state: Option<&abi::State>| {
            state.map_or_else(DirectionCounters::default, |s| {
                DirectionCounters::from(&s.bucket.counters)
            })
        };
        Self {
            egress: of(egress),
            ingress: of(ingress),
        }
    }
}

impl DirectionCounters {
    /// Adds what CPUs passed on their slices of the bucket (`struct
    /// ps_credit`), which the state's counters do not hold.
    pub(crate) fn add_credits<'a>(&mut self, credits: impl IntoIterator<Item = &'a abi::Credit>) {
        for c in credits {
            self.bytes = self.bytes.saturating_add(c.bytes);
            self.packets = self.packets.saturating_add(c.packets);
            self.marked = self.marked.saturating_add(c.marked);
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
