//! A node's shaping state, kept in bpffs: maps pinned under `<dir>/maps`, one
//! directory of pinned links per limited cgroup under `<dir>/links/<id>`, and
//! the ingress queues' classifiers at `<dir>/programs/flow_class` and
//! `<dir>/programs/host_class`, where `tc` finds them.
//! The pins are the state: limits stay enforced while no process holds them,
//! and a new [`Node`] adopts what an earlier one left.
//!
//! By concern: the registry of limited cgroups (`registry`: apply, remove,
//! readying open sockets), taking over and repairing the pins (`adoption`),
//! the ingress queues in pods' namespaces (`pod_queues`), the node's queue
//! for hostNetwork pods (`host`), and the periodic queue sweep (`sweep`).

mod adoption;
mod host;
mod pod_queues;
mod registry;
mod sweep;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use sweep::remove_all_queues;

use self::pod_queues::QueueRetry;
use crate::cgroup::Cgroup;
use crate::confine::{pod_uid_of, CgroupRoot};
use crate::counters::CgroupCounters;
use crate::host_queue;
use crate::ingress_queue;
use crate::limits::Limits;
use crate::problems::Problems;
use crate::shaper::{Shaper, ShaperError};

/// statfs magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path} is not on a bpf file system (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { path: String },
    #[error("cannot use the pin directory {path}")]
    PinDir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cgroup {path} is nested with {other}, which is already limited: limit one or the other"
    )]
    Nested { path: String, other: String },
    #[error("cgroup {path} has no limits attached")]
    NotAttached { path: String },
    #[error(transparent)]
    Shaper(#[from] ShaperError),
    #[error(transparent)]
    Queue(#[from] ingress_queue::QueueError),
}

/// One limited cgroup, as reported to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupStatus {
    /// None when the cgroup is gone but its pins are not yet cleaned up.
    pub path: Option<PathBuf>,
    pub cgroup_id: u64,
    pub pod_uid: Option<String>,
    pub limits: Limits,
    pub counters: CgroupCounters,
    /// What receives the cgroup's ingress: None without an ingress limit.
    pub ingress_mode: Option<IngressMode>,
    /// What the daemon could not do for this cgroup (each also logged).
    pub problems: Vec<String>,
}

/// What holds a cgroup's ingress to its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressMode {
    /// a queue (ifb + htb) in front of it, and the policer behind
    Queue,
    /// the cgroup policer alone
    Policer,
}

impl IngressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Policer => "policer",
        }
    }
}

/// What opening a node found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// limited cgroups taken over from pins
    pub adopted: usize,
    /// pins whose cgroup is gone, removed
    pub removed_stale: usize,
    /// attachments a crash left half made, completed
    pub repaired: usize,
    /// attachments made by another build of the shaper, moved to this one's
    /// programs
    pub upgraded: usize,
}

/// What [`Node::uninstall`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Uninstall {
    /// limited cgroups detached
    pub cgroups: usize,
    /// ingress queues removed (in pods' namespaces, and the node's)
    pub queues: usize,
    /// whether the pin directory was removed
    pub pins: bool,
}

/// What [`Node::repair`] put back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repair {
    /// map and program pins made again
    pub maps: usize,
    /// limited cgroups whose links were attached and pinned again
    pub cgroups: usize,
}

pub struct Node {
    shaper: Shaper,
    maps_dir: PathBuf,
    links_dir: PathBuf,
    /// where the flow classifier is pinned
    flow_classifier: PathBuf,
    /// where the host classifier is pinned
    host_classifier: PathBuf,
    root: CgroupRoot,
    /// Paths of the attached cgroups: an index of the pins, so that requests
    /// do not walk every pin (rebuilt from the pins on open).
    attached: HashMap<u64, PathBuf>,
    /// Whether pods with a network namespace of their own get an ingress
    /// queue in front of them (crate::ingress_queue).
    ingress_queue: bool,
    /// The network namespaces (dev, inode) each limited cgroup's ingress
    /// queue was put in, with its current limit. A namespace where it
    /// failed is not in it, so the sweep tries again, after `queue_retry`.
    queued: HashMap<u64, Vec<(u64, u64)>>,
    /// Cgroups whose ingress queue failed in some namespace, and when the
    /// sweep tries them again (a limit change tries at once).
    queue_retry: HashMap<u64, QueueRetry>,
    /// Cgroups whose ingress limit went (or that were detached) but whose
    /// queue could not be taken away, with their path (a detached cgroup is
    /// no longer in `attached`): left, the queue would hold the pod at the
    /// old rate. The sweep tries again, as for `queue_retry`.
    queue_removals: HashMap<u64, (PathBuf, QueueRetry)>,
    /// Whether hostNetwork pods get the node's ingress queue
    /// (crate::host_queue). Off unless asked for: it puts a filter on every
    /// interface of the node.
    host_queue: bool,
    /// The hostNetwork pods' cgroups with a slot in the node's queue (the
    /// pinned `host_queue_slots` map, kept here to find free slots).
    host_slots: HashMap<u64, u32>,
    /// The node's interfaces that classify for the node's queue.
    host_redirected: HashSet<host_queue::Interface>,
    /// Cgroups whose classes in the node's queue could not be put in place
    /// (or changed): the sweep tries again, after `queue_retry`.
    host_unsynced: HashSet<u64>,
    /// What could not be done for each cgroup, for `status`.
    problems: Problems,
}

impl Node {
    /// Loads the shaper with its maps pinned under `bpffs_dir` and adopts
    /// every attachment pinned there.
    pub fn open(bpffs_dir: &Path, root: CgroupRoot) -> Result<(Self, Adoption), NodeError> {
        let pin_dir_error = |source| NodeError::PinDir {
            path: bpffs_dir.display().to_string(),
            source,
        };
        create_pin_dir(bpffs_dir)?;
        if !is_bpffs(bpffs_dir).map_err(pin_dir_error)? {
            return Err(NodeError::NotBpffs {
                path: bpffs_dir.display().to_string(),
            });
        }
        let maps_dir = bpffs_dir.join("maps");
        let links_dir = bpffs_dir.join("links");
        let programs_dir = bpffs_dir.join("programs");
        for d in [&maps_dir, &links_dir, &programs_dir] {
            create_pin_dir(d)?;
        }
        let mut shaper = Shaper::load_pinned(&maps_dir)?;
        let flow_classifier = programs_dir.join("flow_class");
        if let Err(e) = shaper.pin_flow_classifier(&flow_classifier) {
            // queues cannot be built (tc finds no classifier): the policer holds
            tracing::warn!(error = %e, "the ingress queue's flow classifier is not pinned");
        }
        let host_classifier = programs_dir.join("host_class");
        if let Err(e) = shaper.pin_host_classifier(&host_classifier) {
            tracing::warn!(error = %e, "the hostNetwork pods' queue classifier is not pinned");
        }
        let host_slots = shaper.host_queue_slots()?.into_iter().collect();
        let mut node = Self {
            shaper,
            maps_dir,
            links_dir,
            flow_classifier,
            host_classifier,
            root,
            attached: HashMap::new(),
            ingress_queue: true,
            queued: HashMap::new(),
            queue_retry: HashMap::new(),
            queue_removals: HashMap::new(),
            host_queue: false,
            host_slots,
            host_redirected: HashSet::new(),
            host_unsynced: HashSet::new(),
            problems: Problems::default(),
        };
        let adoption = node.adopt()?;
        Ok((node, adoption))
    }

    pub fn root(&self) -> &CgroupRoot {
        &self.root
    }

    /// The optional parts of the shaper this kernel runs.
    pub fn features(&self) -> crate::shaper::Features {
        self.shaper.features()
    }

    /// A limited cgroup's status, or None if it is not limited.
    pub fn status(&self, cgroup: &Cgroup) -> Result<Option<CgroupStatus>, NodeError> {
        if !self.attached.contains_key(&cgroup.id()) {
            return Ok(None);
        }
        self.status_of(cgroup.id(), Some(cgroup.path().to_path_buf()))
            .map(Some)
    }

    /// Every limited cgroup.
    pub fn list(&self) -> Result<Vec<CgroupStatus>, NodeError> {
        let mut out = Vec::with_capacity(self.attached.len());
        for (id, path) in &self.attached {
            out.push(self.status_of(*id, Some(path.clone()))?);
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn status_of(&self, id: u64, path: Option<PathBuf>) -> Result<CgroupStatus, NodeError> {
        let limits = self.shaper.limits(id)?.unwrap_or_default();
        let queued = self.queued.contains_key(&id) || self.host_slots.contains_key(&id);
        Ok(CgroupStatus {
            pod_uid: path.as_deref().and_then(pod_uid_of),
            path,
            cgroup_id: id,
            ingress_mode: limits.ingress.map(|_| match queued {
                true => IngressMode::Queue,
                false => IngressMode::Policer,
            }),
            limits,
            counters: self.shaper.counters(id)?,
            problems: self.problems.of(id),
        })
    }

    fn link_dir(&self, id: u64) -> PathBuf {
        self.links_dir.join(id.to_string())
    }

    fn pinned_ids(&self) -> Result<Vec<u64>, NodeError> {
        let entries = fs::read_dir(&self.links_dir).map_err(|source| NodeError::PinDir {
            path: self.links_dir.display().to_string(),
            source,
        })?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect())
    }
}

/// Makes a directory for pins (and its parents), naming it on failure.
fn create_pin_dir(dir: &Path) -> Result<(), NodeError> {
    fs::create_dir_all(dir).map_err(|source| NodeError::PinDir {
        path: dir.display().to_string(),
        source,
    })
}

/// Whether `path` is on a bpf file system.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs fills the struct we pass; the result is checked.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}
