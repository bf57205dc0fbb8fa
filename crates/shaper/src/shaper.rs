//! The loaded BPF shaper: attach it to cgroups, set their limits, read their
//! counters. One loaded object serves every cgroup.

use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap};
use aya::programs::cgroup_skb::CgroupSkbLinkId;
use aya::programs::sock_ops::SockOpsLinkId;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, SockOps};
use aya::{Ebpf, EbpfError};

use crate::abi;
use crate::cgroup::{Cgroup, CgroupError};
use crate::counters::CgroupCounters;
use crate::limits::Limits;

/// The shaper object, compiled from `bpf/shaper.c` by build.rs.
static SHAPER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shaper.o"));

const EGRESS_PROGRAM: &str = "podshaper_egress";
const INGRESS_PROGRAM: &str = "podshaper_ingress";
const SOCKOPS_PROGRAM: &str = "podshaper_sockops";
const LIMITS_MAP: &str = "limits";
const STATES_MAP: &str = "states";
const COUNTERS_MAP: &str = "counters";

/// Why the shaper could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ShaperError {
    #[error("cannot load the BPF shaper into the kernel (are you root, with CONFIG_CGROUP_BPF?)")]
    Load(#[source] Box<EbpfError>),
    #[error("the BPF shaper has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("BPF program {name} failed")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot attach the shaper to cgroup {path}")]
    Attach {
        path: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("BPF map {name} operation failed")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// The links that bind the shaper's three programs to one cgroup.
#[derive(Debug)]
pub struct Attachment {
    cgroup_id: u64,
    egress: CgroupSkbLinkId,
    ingress: CgroupSkbLinkId,
    sockops: SockOpsLinkId,
}

impl Attachment {
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }
}

/// The loaded shaper. Dropping it detaches every attachment it made and
/// unloads the programs (nothing is pinned).
pub struct Shaper {
    ebpf: Ebpf,
}

impl Shaper {
    /// Loads the embedded shaper into the kernel.
    pub fn load() -> Result<Self, ShaperError> {
        let mut ebpf = Ebpf::load(SHAPER_OBJECT).map_err(|e| ShaperError::Load(Box::new(e)))?;
        for name in [EGRESS_PROGRAM, INGRESS_PROGRAM] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load().map_err(|e| program_error(name, e))?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, SOCKOPS_PROGRAM)?;
        sockops
            .load()
            .map_err(|e| program_error(SOCKOPS_PROGRAM, e))?;
        Ok(Self { ebpf })
    }

    /// Attaches the egress, ingress and sockops programs to a cgroup. Its
    /// limits come from [`Shaper::set_limits`]; until then traffic passes.
    pub fn attach(&mut self, cgroup: &Cgroup) -> Result<Attachment, ShaperError> {
        let fd = cgroup.fd()?;
        let attach_error = |source: ProgramError| ShaperError::Attach {
            path: cgroup.path().display().to_string(),
            source: Box::new(source),
        };
        // BPF links (what aya makes on 5.7+) always coexist with other
        // programs on the cgroup (systemd's, a CNI's); the kernel refuses any
        // attach flag on them, so the mode must be Single (no flags).
        let mode = CgroupAttachMode::Single;
        let egress = program::<CgroupSkb>(&mut self.ebpf, EGRESS_PROGRAM)?
            .attach(&fd, CgroupSkbAttachType::Egress, mode)
            .map_err(attach_error)?;
        let ingress = match program::<CgroupSkb>(&mut self.ebpf, INGRESS_PROGRAM)?.attach(
            &fd,
            CgroupSkbAttachType::Ingress,
            mode,
        ) {
            Ok(link) => link,
            Err(e) => {
                let _ = program::<CgroupSkb>(&mut self.ebpf, EGRESS_PROGRAM)?.detach(egress);
                return Err(attach_error(e));
            }
        };
        let sockops = match program::<SockOps>(&mut self.ebpf, SOCKOPS_PROGRAM)?.attach(&fd, mode) {
            Ok(link) => link,
            Err(e) => {
                let _ = program::<CgroupSkb>(&mut self.ebpf, EGRESS_PROGRAM)?.detach(egress);
                let _ = program::<CgroupSkb>(&mut self.ebpf, INGRESS_PROGRAM)?.detach(ingress);
                return Err(attach_error(e));
            }
        };
        Ok(Attachment {
            cgroup_id: cgroup.id(),
            egress,
            ingress,
            sockops,
        })
    }

    /// Detaches the programs from a cgroup.
    pub fn detach(&mut self, attachment: Attachment) -> Result<(), ShaperError> {
        let Attachment {
            egress,
            ingress,
            sockops,
            ..
        } = attachment;
        let mut first_error = None;
        if let Err(e) = program::<CgroupSkb>(&mut self.ebpf, EGRESS_PROGRAM)?.detach(egress) {
            first_error.get_or_insert(program_error(EGRESS_PROGRAM, e));
        }
        if let Err(e) = program::<CgroupSkb>(&mut self.ebpf, INGRESS_PROGRAM)?.detach(ingress) {
            first_error.get_or_insert(program_error(INGRESS_PROGRAM, e));
        }
        if let Err(e) = program::<SockOps>(&mut self.ebpf, SOCKOPS_PROGRAM)?.detach(sockops) {
            first_error.get_or_insert(program_error(SOCKOPS_PROGRAM, e));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sets (or changes, live) a cgroup's limits: one map update.
    pub fn set_limits(&mut self, cgroup_id: u64, limits: &Limits) -> Result<(), ShaperError> {
        let mut map: HashMap<&mut MapData, u64, abi::Limit> = map_mut(&mut self.ebpf, LIMITS_MAP)?;
        map.insert(cgroup_id, limits.to_abi(), 0)
            .map_err(|e| map_error(LIMITS_MAP, e))
    }

    /// Forgets a cgroup: its limits, its shaping state and its counters.
    pub fn remove_limits(&mut self, cgroup_id: u64) -> Result<(), ShaperError> {
        remove_key::<abi::Limit>(&mut self.ebpf, LIMITS_MAP, cgroup_id)?;
        remove_key::<abi::State>(&mut self.ebpf, STATES_MAP, cgroup_id)?;
        let map = self
            .ebpf
            .map_mut(COUNTERS_MAP)
            .ok_or(ShaperError::Missing {
                kind: "map",
                name: COUNTERS_MAP,
            })?;
        let mut counters: PerCpuHashMap<&mut MapData, u64, abi::Counters> =
            PerCpuHashMap::try_from(map).map_err(|e| map_error(COUNTERS_MAP, e))?;
        match counters.remove(&cgroup_id) {
            Err(e) if !is_not_found(&e) => Err(map_error(COUNTERS_MAP, e)),
            _ => Ok(()),
        }
    }

    /// A cgroup's shaping state as BPF last left it (None before its first packet).
    pub fn state(&self, cgroup_id: u64) -> Result<Option<abi::State>, ShaperError> {
        let map = self.ebpf.map(STATES_MAP).ok_or(ShaperError::Missing {
            kind: "map",
            name: STATES_MAP,
        })?;
        let map: HashMap<&MapData, u64, abi::State> =
            HashMap::try_from(map).map_err(|e| map_error(STATES_MAP, e))?;
        match map.get(&cgroup_id, 0) {
            Ok(state) => Ok(Some(state)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(STATES_MAP, e)),
        }
    }

    /// A cgroup's counters, summed over CPUs (zero if it never sent a packet).
    pub fn counters(&self, cgroup_id: u64) -> Result<CgroupCounters, ShaperError> {
        let map = self.ebpf.map(COUNTERS_MAP).ok_or(ShaperError::Missing {
            kind: "map",
            name: COUNTERS_MAP,
        })?;
        let map: PerCpuHashMap<&MapData, u64, abi::Counters> =
            PerCpuHashMap::try_from(map).map_err(|e| map_error(COUNTERS_MAP, e))?;
        match map.get(&cgroup_id, 0) {
            Ok(per_cpu) => Ok(CgroupCounters::sum(per_cpu.iter())),
            Err(MapError::KeyNotFound) => Ok(CgroupCounters::default()),
            Err(e) => Err(map_error(COUNTERS_MAP, e)),
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ShaperError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(ShaperError::Missing {
        kind: "program",
        name,
    })?;
    prog.try_into().map_err(|e| program_error(name, e))
}

fn map_mut<'a, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, u64, V>, ShaperError> {
    let map = ebpf
        .map_mut(name)
        .ok_or(ShaperError::Missing { kind: "map", name })?;
    HashMap::try_from(map).map_err(|e| map_error(name, e))
}

/// Deletes a key from a hash map; a missing key is not an error.
fn remove_key<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: u64,
) -> Result<(), ShaperError> {
    match map_mut::<V>(ebpf, name)?.remove(&key) {
        Err(e) if !is_not_found(&e) => Err(map_error(name, e)),
        _ => Ok(()),
    }
}

/// aya reports a missing key on lookup as KeyNotFound, on delete as ENOENT.
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

fn program_error(name: &'static str, source: ProgramError) -> ShaperError {
    ShaperError::Program {
        name,
        source: Box::new(source),
    }
}

fn map_error(name: &'static str, source: MapError) -> ShaperError {
    ShaperError::Map {
        name,
        source: Box::new(source),
    }
}
