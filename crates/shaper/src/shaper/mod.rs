//! The loaded BPF shaper: attach it to cgroups, set their limits, read their
//! counters. One loaded object serves every cgroup.
//!
//! By concern: loading the object (`load`), attaching its programs to a
//! cgroup (`attach`), the pins of links, maps and classifiers (`pins`), the
//! limits and their version (`limit_maps`), the cgroups' shaping state and
//! counters (`state`), the hostNetwork pods' queue slots (`host_slots`), and
//! the TCP iterators over open sockets (`iterators`). The errors and the map
//! and program accessors are here.

mod attach;
mod host_slots;
mod iterators;
mod limit_maps;
mod load;
mod pins;
mod state;

use std::path::Path;

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::cgroup_skb::CgroupSkbLinkId;
use aya::programs::sock_ops::SockOpsLinkId;
use aya::programs::ProgramError;
use aya::{Ebpf, EbpfError};

pub use pins::{detach_pinned, is_fully_pinned, ProgramTags};

use crate::abi;
use crate::cgroup::CgroupError;

/// The shaper object, compiled from `bpf/shaper.c` by build.rs.
pub(crate) static SHAPER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shaper.o"));

const EGRESS_PROGRAM: &str = "podshaper_egress";
const INGRESS_PROGRAM: &str = "podshaper_ingress";
const SOCKOPS_PROGRAM: &str = "podshaper_sockops";
const LIMITS_MAP: &str = "limits";
const LIMITS_VERSION_MAP: &str = "limits_version";
const STATES_MAP: &str = "cgroup_states";
/// `cgroup_states`, the legacy cgroup storage (BPF_MAP_TYPE_CGROUP_STORAGE),
/// which aya marks deprecated for BPF_MAP_TYPE_CGRP_STORAGE: only the legacy
/// type hands a cgroup_skb program the storage of the cgroup it is attached
/// to without a lookup; the newer one needs a `struct cgroup` pointer these
/// programs do not have. The kernel keeps supporting it (uapi).
#[expect(deprecated, reason = "see above")]
type StateMap<T> = aya::maps::CgroupStorage<T, abi::State>;
/// Each CPU's slice of each state's bucket (`struct ps_credit`), beside
/// `cgroup_states` under the same keys: the legacy per-CPU cgroup storage,
/// for the same reason as [`StateMap`].
const CREDITS_MAP: &str = "cpu_credits";
#[expect(deprecated, reason = "as for StateMap")]
type CreditMap<T> = aya::maps::PerCpuCgroupStorage<T, abi::Credit>;
const SOCK_STATES_MAP: &str = "sock_states";
/// Each receiving socket's window clamp: pinned so that a restarted daemon's
/// detach still finds (and gives back) the clamps the last one set.
const RCV_WINDOWS_MAP: &str = "rcv_windows";
/// The cgroups with an ingress queue in front of them: only their receiving
/// sockets' windows are clamped (to their flows' FIFOs).
const QUEUED_INGRESS_MAP: &str = "queued_ingress";
const UNPACE_TARGET_MAP: &str = "unpace_target";
const UNPACE_PROGRAM: &str = "podshaper_unpace";
const RECEIVERS_TARGET_MAP: &str = "receivers_target";
const RECEIVERS_PROGRAM: &str = "podshaper_receivers";
const SENDERS_TARGET_MAP: &str = "senders_target";
const SENDERS_PROGRAM: &str = "podshaper_senders";
const FLOW_CLASS_PROGRAM: &str = "podshaper_flow_class";
const HOST_CLASS_PROGRAM: &str = "podshaper_host_class";
const HOST_SLOTS_MAP: &str = "host_queue_slots";
const HOST_LEVELS_MAP: &str = "host_queue_levels";
const HOST_VERSION_MAP: &str = "host_queue_version";
const ALL_MAPS: [&str; 11] = [
    LIMITS_MAP,
    LIMITS_VERSION_MAP,
    STATES_MAP,
    CREDITS_MAP,
    SOCK_STATES_MAP,
    RCV_WINDOWS_MAP,
    QUEUED_INGRESS_MAP,
    UNPACE_TARGET_MAP,
    HOST_SLOTS_MAP,
    HOST_LEVELS_MAP,
    HOST_VERSION_MAP,
];
/// Pin names of an attachment's links, inside its directory.
const EGRESS_LINK: &str = "egress";
const INGRESS_LINK: &str = "ingress";
const SOCKOPS_LINK: &str = "sockops";
/// Each link's pin name and the program it runs.
const LINKS: [(&str, &str); 3] = [
    (EGRESS_LINK, EGRESS_PROGRAM),
    (INGRESS_LINK, INGRESS_PROGRAM),
    (SOCKOPS_LINK, SOCKOPS_PROGRAM),
];
/// Where [`Shaper::reattach_pinned`] pins the new links, inside an
/// attachment's directory, before they take the old ones' places.
const NEXT_LINKS_DIR: &str = "next";

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
    #[error("the kernel ({release}) refuses BPF program {name}: {missing}")]
    KernelLacks {
        name: &'static str,
        release: String,
        missing: String,
        #[source]
        source: Box<ProgramError>,
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
    #[error("cannot pin or unpin the links in {path}")]
    Pin {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "cannot enter a network namespace of the cgroup's processes to reach their open sockets"
    )]
    EnterNetns(#[source] std::io::Error),
    #[error("the iterator {program} over the cgroup's open TCP sockets failed")]
    Iterator {
        program: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("hostNetwork pods' cgroups already sit at {most} other cgroup levels; level {level} gets no queue")]
    HostLevels { level: u32, most: u32 },
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
    /// whether the un-pacing iterator loaded (it needs kernel BTF and iter/tcp)
    can_unpace: bool,
    /// whether the delayed-ACK iterator loaded (kernel BTF, iter/tcp, and
    /// the kernel's socket and cgroup structs as it reads them)
    can_ready_receivers: bool,
    /// whether the iterator that paces sockets opened before an egress
    /// limit loaded
    can_ready_senders: bool,
    /// whether the ingress queue's flow classifier loaded
    has_flow_classifier: bool,
    /// whether the hostNetwork pods' queue's classifier loaded
    has_host_classifier: bool,
}

/// The optional parts of the shaper that loaded on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// the ingress queue's flow classifier (pods' queues)
    pub flow_classifier: bool,
    /// the hostNetwork pods' queue's classifier
    pub host_classifier: bool,
    /// the TCP iterator that lifts open sockets' pacing at a detach
    pub unpace: bool,
    /// the TCP iterator that readies open receiving sockets at an ingress limit
    pub ready_receivers: bool,
    /// the TCP iterator that paces open sending sockets at an egress limit
    pub ready_senders: bool,
    /// whether the iterators may turn on an open socket's sockops callbacks
    /// (Linux 6.12: crate::kernel::ARMS_OPEN_SOCKETS)
    pub arms_open_sockets: bool,
}

impl Features {
    /// Each optional refinement: its name, whether it is on, and what the
    /// shaper does without it. The limits hold either way.
    pub fn refinements(&self) -> [(&'static str, bool, &'static str); 6] {
        [
            (
                "queue classifier",
                self.flow_classifier,
                "pods' ingress is held by the cgroup policer alone (no queue in front of them)",
            ),
            (
                "host classifier",
                self.host_classifier,
                "hostNetwork pods' ingress is held by the cgroup policer alone",
            ),
            (
                "unpace iterator",
                self.unpace,
                "open sockets keep their pacing after a detach",
            ),
            (
                "receivers iterator",
                self.ready_receivers,
                "sockets opened before an ingress limit keep the kernel's delayed ACK",
            ),
            (
                "senders iterator",
                self.ready_senders,
                "sockets opened before an egress limit stay unpaced (the bucket alone holds them)",
            ),
            (
                "arming open sockets",
                self.arms_open_sockets,
                "sockets opened before a limit keep the share they had when it came (Linux 6.12 lets an iterator turn on their per-ACK callback), and open receiving sockets get no receive-window clamp",
            ),
        ]
    }
}

impl Shaper {
    /// Which optional parts loaded.
    pub fn features(&self) -> Features {
        Features {
            flow_classifier: self.has_flow_classifier,
            host_classifier: self.has_host_classifier,
            unpace: self.can_unpace,
            ready_receivers: self.can_ready_receivers,
            ready_senders: self.can_ready_senders,
            arms_open_sockets: crate::kernel::Release::running()
                .is_some_and(|r| r >= crate::kernel::ARMS_OPEN_SOCKETS),
        }
    }

    /// Whether the flow classifier loaded (it needs kernel 5.12).
    pub fn has_flow_classifier(&self) -> bool {
        self.has_flow_classifier
    }

    pub fn has_host_classifier(&self) -> bool {
        self.has_host_classifier
    }
}

/// A pin (or the pinned object behind it) at `path` that could not be used.
fn pin_error(path: &Path, source: impl std::error::Error + Send + Sync + 'static) -> ShaperError {
    ShaperError::Pin {
        path: path.display().to_string(),
        source: Box::new(source),
    }
}

fn raw_map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, ShaperError> {
    ebpf.map(name)
        .ok_or(ShaperError::Missing { kind: "map", name })
}

fn raw_map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, ShaperError> {
    ebpf.map_mut(name)
        .ok_or(ShaperError::Missing { kind: "map", name })
}

fn map_ref<'a, V: aya::Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a MapData, u64, V>, ShaperError> {
    HashMap::try_from(raw_map(ebpf, name)?).map_err(|e| map_error(name, e))
}

pub(crate) fn program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, ShaperError>
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
    HashMap::try_from(raw_map_mut(ebpf, name)?).map_err(|e| map_error(name, e))
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

pub(crate) fn program_error(name: &'static str, source: ProgramError) -> ShaperError {
    // a verifier's refusal names what the kernel lacks, where it is known
    if let ProgramError::LoadError { verifier_log, .. } = &source {
        if let Some(missing) = crate::kernel::missing_feature(&verifier_log.to_string()) {
            return ShaperError::KernelLacks {
                name,
                release: crate::kernel::Release::running()
                    .map_or_else(|| "unknown".into(), |r| r.to_string()),
                missing,
                source: Box::new(source),
            };
        }
    }
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
