//! Each cgroup's shaping state (the buckets, with the CPUs' slices of them)
//! in cgroup storage, and the counters kept in it.

use aya::maps::{CgroupStorageKey, MapData, MapError, PerCpuValues};

use super::{
    is_not_found, map_error, raw_map, raw_map_mut, CreditMap, Shaper, ShaperError, StateMap,
    CREDITS_MAP, STATES_MAP,
};
use crate::abi;
use crate::counters::CgroupCounters;

impl Shaper {
    /// Zeroes a cgroup's shaping state in both directions, where the kernel
    /// keeps one (cgroup storage exists from the first attach until the
    /// cgroup is removed, and cannot be deleted), so that an attach after
    /// this one starts with a full bucket and counters from zero. Written
    /// under the state's lock.
    pub(super) fn reset_states(&mut self, cgroup_id: u64) -> Result<(), ShaperError> {
        let mut map: StateMap<&mut MapData> =
            StateMap::try_from(raw_map_mut(&mut self.ebpf, STATES_MAP)?)
                .map_err(|e| map_error(STATES_MAP, e))?;
        for key in state_keys(cgroup_id) {
            match map.insert(key, abi::State::default(), BPF_EXIST | BPF_F_LOCK) {
                Err(e) if !is_not_found(&e) => return Err(map_error(STATES_MAP, e)),
                _ => {}
            }
        }
        let mut credits: CreditMap<&mut MapData> =
            CreditMap::try_from(raw_map_mut(&mut self.ebpf, CREDITS_MAP)?)
                .map_err(|e| map_error(CREDITS_MAP, e))?;
        for key in state_keys(cgroup_id) {
            match credits.insert(key, zeroed_credits()?, BPF_EXIST) {
                Err(e) if !is_not_found(&e) => return Err(map_error(CREDITS_MAP, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// A cgroup's counters (zero if it was never attached). Each
    /// direction's are read under its state's lock.
    pub fn counters(&self, cgroup_id: u64) -> Result<CgroupCounters, ShaperError> {
        let map: StateMap<&MapData> = StateMap::try_from(raw_map(&self.ebpf, STATES_MAP)?)
            .map_err(|e| map_error(STATES_MAP, e))?;
        let [egress, ingress] = state_keys(cgroup_id).map(|key| match map.get(key, BPF_F_LOCK) {
            Ok(state) => Ok(Some(state)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error(STATES_MAP, e)),
        });
        let mut counters = CgroupCounters::of_states(egress?.as_ref(), ingress?.as_ref());
        // and what each CPU passed on its slices of the buckets
        let credits: CreditMap<&MapData> = CreditMap::try_from(raw_map(&self.ebpf, CREDITS_MAP)?)
            .map_err(|e| map_error(CREDITS_MAP, e))?;
        let [egress_key, ingress_key] = state_keys(cgroup_id);
        for (direction, key) in [
            (&mut counters.egress, egress_key),
            (&mut counters.ingress, ingress_key),
        ] {
            match credits.get(key, 0) {
                Ok(per_cpu) => direction.add_credits(per_cpu.iter()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_error(CREDITS_MAP, e)),
            }
        }
        Ok(counters)
    }
}

/// A `cpu_credits` value of every possible CPU, all zero.
fn zeroed_credits() -> Result<PerCpuValues<abi::Credit>, ShaperError> {
    let syscall_error = |call, io_error| {
        map_error(
            CREDITS_MAP,
            MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
        )
    };
    let cpus = aya::util::nr_cpus().map_err(|(call, e)| syscall_error(call, e))?;
    PerCpuValues::try_from(vec![abi::Credit::default(); cpus])
        .map_err(|e| syscall_error("one value per possible CPU", e))
}

/// `BPF_F_LOCK`: a lookup or update that copies a value under its spin lock.
const BPF_F_LOCK: u64 = 4;
/// `BPF_EXIST`: an update of an existing element only.
const BPF_EXIST: u64 = 2;

/// The keys of a cgroup's egress and ingress state in `cgroup_states`: the
/// kernel keeps one per cgroup and attach type.
fn state_keys(cgroup_id: u64) -> [CgroupStorageKey; 2] {
    [
        CgroupStorageKey::new(cgroup_id, BPF_CGROUP_INET_EGRESS),
        CgroupStorageKey::new(cgroup_id, BPF_CGROUP_INET_INGRESS),
    ]
}

/// `enum bpf_attach_type` values of the cgroup_skb programs (kernel uapi).
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
