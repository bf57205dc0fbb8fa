//! The hostNetwork pods' slots in the node's ingress queue, as the host
//! classifier reads them (crate::host_queue builds the queue itself).

use aya::maps::{Array, HashMap, MapData};

use super::{
    map_error, map_mut, map_ref, raw_map_mut, remove_key, Shaper, ShaperError, HOST_LEVELS_MAP,
    HOST_SLOTS_MAP, HOST_VERSION_MAP,
};
use crate::abi;

impl Shaper {
    /// Gives a hostNetwork pod's cgroup its slot in the node's queue (the
    /// host classifier sends the packets of its sockets there from now on),
    /// and has the classifier look at its cgroup level.
    pub fn set_host_queue_slot(
        &mut self,
        cgroup_id: u64,
        level: u32,
        slot: u32,
    ) -> Result<(), ShaperError> {
        self.add_host_queue_level(level)?;
        let mut map: HashMap<&mut MapData, u64, u32> = map_mut(&mut self.ebpf, HOST_SLOTS_MAP)?;
        map.insert(cgroup_id, slot, 0)
            .map_err(|e| map_error(HOST_SLOTS_MAP, e))?;
        self.bump_host_queue_version()
    }

    /// Takes a cgroup's slot away: its packets are no longer queued.
    pub fn remove_host_queue_slot(&mut self, cgroup_id: u64) -> Result<(), ShaperError> {
        remove_key::<u32>(&mut self.ebpf, HOST_SLOTS_MAP, cgroup_id)?;
        self.bump_host_queue_version()
    }

    /// Has the host classifier find every socket's slot again on its next
    /// packet (it keeps what it found in the socket's storage).
    fn bump_host_queue_version(&mut self) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, HOST_VERSION_MAP)?)
                .map_err(|e| map_error(HOST_VERSION_MAP, e))?;
        let last = map.get(&0, 0).map_err(|e| map_error(HOST_VERSION_MAP, e))?;
        map.set(0, last.wrapping_add(1), 0)
            .map_err(|e| map_error(HOST_VERSION_MAP, e))
    }

    /// Every cgroup with a slot in the node's queue, and its slot.
    pub fn host_queue_slots(&self) -> Result<Vec<(u64, u32)>, ShaperError> {
        let map: HashMap<&MapData, u64, u32> = map_ref(&self.ebpf, HOST_SLOTS_MAP)?;
        map.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(HOST_SLOTS_MAP, e))
    }

    /// Adds a cgroup level to those the host classifier looks at. Levels
    /// are only added, never taken away: a level left without slots costs
    /// a lookup that finds nothing, and a pod's level is the same for every
    /// pod of a node (the kubelet's layout).
    fn add_host_queue_level(&mut self, level: u32) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(raw_map_mut(&mut self.ebpf, HOST_LEVELS_MAP)?)
                .map_err(|e| map_error(HOST_LEVELS_MAP, e))?;
        for index in 0..abi::HOST_LEVELS {
            let have = map
                .get(&index, 0)
                .map_err(|e| map_error(HOST_LEVELS_MAP, e))?;
            if have == level {
                return Ok(());
            }
            if have == 0 {
                return map
                    .set(index, level, 0)
                    .map_err(|e| map_error(HOST_LEVELS_MAP, e));
            }
        }
        Err(ShaperError::HostLevels {
            level,
            most: abi::HOST_LEVELS,
        })
    }
}
