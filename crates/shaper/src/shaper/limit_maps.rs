//! The cgroups' limits in the `limits` map, the version that tells sockets
//! to look theirs up again, and which cgroups have an ingress queue in front
//! of them.

use aya::maps::{Array, HashMap, MapData};

use super::{
    is_not_found, map_error, map_mut, map_ref, raw_map_mut, remove_key, Shaper, ShaperError,
    LIMITS_MAP, LIMITS_VERSION_MAP, QUEUED_INGRESS_MAP,
};
use crate::abi;
use crate::limits::Limits;

impl Shaper {
    /// Sets (or changes, live) a cgroup's limits: one map update.
    pub fn set_limits(&mut self, cgroup_id: u64, limits: &Limits) -> Result<(), ShaperError> {
        let mut map: HashMap<&mut MapData, u64, abi::Limit> = map_mut(&mut self.ebpf, LIMITS_MAP)?;
        map.insert(cgroup_id, limits.to_abi(), 0)
            .map_err(|e| map_error(LIMITS_MAP, e))?;
        self.bump_limits_version()
    }

    /// Tells every socket's copy of its limit that `limits` changed: the
    /// programs look the limit up again on each socket's next packet. The
    /// version only grows: the larger of the last one plus one and the
    /// wall clock in nanoseconds, so that a version map created afresh does
    /// not land on a number a socket kept from before.
    pub(super) fn bump_limits_version(&mut self) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, LIMITS_VERSION_MAP)?)
                .map_err(|e| map_error(LIMITS_VERSION_MAP, e))?;
        let last = map
            .get(&0, 0)
            .map_err(|e| map_error(LIMITS_VERSION_MAP, e))?;
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        map.set(0, clock.max(last.saturating_add(1)), 0)
            .map_err(|e| map_error(LIMITS_VERSION_MAP, e))
    }

    /// Has every cgroup's state take its limit again on its next packet,
    /// through this build's programs: a state adopted from another build
    /// keeps what that build's programs derived from the limit (window
    /// lengths, the deficit allowed) until then. Counters, tokens and shares
    /// carry on; each CPU's slice goes back to its bucket.
    pub fn retake_limits(&mut self) -> Result<(), ShaperError> {
        self.bump_limits_version()
    }

    /// Forgets a cgroup: its limits, whether a queue is in front of it, and
    /// its shaping state with its counters.
    pub fn remove_limits(&mut self, cgroup_id: u64) -> Result<(), ShaperError> {
        remove_key::<abi::Limit>(&mut self.ebpf, LIMITS_MAP, cgroup_id)?;
        remove_key::<u32>(&mut self.ebpf, QUEUED_INGRESS_MAP, cgroup_id)?;
        self.bump_limits_version()?;
        self.reset_states(cgroup_id)
    }

    /// Tells the programs whether an ingress queue is in front of a cgroup
    /// (`queued`): only then are its receiving sockets' windows clamped to
    /// their flows' FIFOs. Its sockets take it on their next segment (the
    /// limits' version moves); sockets already open are armed by
    /// [`Self::ready_receivers`].
    pub fn set_ingress_queued(&mut self, cgroup_id: u64, queued: bool) -> Result<(), ShaperError> {
        if queued {
            let mut map: HashMap<&mut MapData, u64, u32> =
                map_mut(&mut self.ebpf, QUEUED_INGRESS_MAP)?;
            map.insert(cgroup_id, 1, 0)
                .map_err(|e| map_error(QUEUED_INGRESS_MAP, e))?;
        } else {
            remove_key::<u32>(&mut self.ebpf, QUEUED_INGRESS_MAP, cgroup_id)?;
        }
        self.bump_limits_version()
    }

    /// Whether the programs take a cgroup to have an ingress queue in front of it.
    pub fn is_ingress_queued(&self, cgroup_id: u64) -> Result<bool, ShaperError> {
        let map: HashMap<&MapData, u64, u32> = map_ref(&self.ebpf, QUEUED_INGRESS_MAP)?;
        match map.get(&cgroup_id, 0) {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_error(QUEUED_INGRESS_MAP, e)),
        }
    }

    /// The cgroups the programs take to have an ingress queue in front of them.
    pub fn ingress_queued_ids(&self) -> Result<Vec<u64>, ShaperError> {
        let map: HashMap<&MapData, u64, u32> = map_ref(&self.ebpf, QUEUED_INGRESS_MAP)?;
        map.keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(QUEUED_INGRESS_MAP, e))
    }

    /// A cgroup's limits as the `limits` map holds them (None if it has none).
    pub fn limits(&self, cgroup_id: u64) -> Result<Option<Limits>, ShaperError> {
        let map: HashMap<&MapData, u64, abi::Limit> = map_ref(&self.ebpf, LIMITS_MAP)?;
        match map.get(&cgroup_id, 0) {
            Ok(limit) => Ok(Some(Limits::from_abi(&limit))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error(LIMITS_MAP, e)),
        }
    }

    /// Every cgroup id with an entry in the `limits` map.
    pub fn limited_ids(&self) -> Result<Vec<u64>, ShaperError> {
        let map: HashMap<&MapData, u64, abi::Limit> = map_ref(&self.ebpf, LIMITS_MAP)?;
        map.keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(LIMITS_MAP, e))
    }
}
