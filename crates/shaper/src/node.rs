//! A node's shaping state, kept in bpffs: maps pinned under `<dir>/maps`, one
//! directory of pinned links per limited cgroup under `<dir>/links/<id>`, and
//! the ingress queues' classifiers at `<dir>/programs/flow_class` and
//! `<dir>/programs/host_class`, where `tc` finds them.
//! The pins are the state: limits stay enforced while no process holds them,
//! and a new [`Node`] adopts what an earlier one left.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::abi;
use crate::cgroup::Cgroup;
use crate::confine::{pod_uid_of, CgroupRoot};
use crate::counters::CgroupCounters;
use crate::host_queue;
use crate::ingress_queue;
use crate::limits::{DirectionLimit, Limits};
use crate::netns::{self, network_namespaces_in};
use crate::problems::{Problem, Problems};
use crate::shaper::{detach_pinned, is_fully_pinned, ProgramTags, Shaper, ShaperError};

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

/// Pods whose ingress queue one [`Node::sync_ingress_queues`] pass looks
/// at, at most: each costs a few `tc` runs, and the node is locked meanwhile.
const QUEUE_SYNCS_PER_PASS: usize = 32;

/// After an ingress queue fails to install, the sweep tries the pod again
/// after this long, doubled at every failure up to QUEUE_RETRY_MAX: a queue
/// that fails for a moment comes back within a second or two, one that
/// keeps failing (no ifb module, a pod's odd set-up) costs its `tc` runs and
/// a warning once or twice a minute, not every sweep.
const QUEUE_RETRY_FIRST: Duration = Duration::from_secs(1);
const QUEUE_RETRY_MAX: Duration = Duration::from_secs(30);

/// When the sweep next tries a cgroup whose ingress queue failed.
#[derive(Debug, Clone, Copy)]
struct QueueRetry {
    failures: u32,
    next: Instant,
}

impl QueueRetry {
    fn after(failures: u32, now: Instant) -> Self {
        let wait = QUEUE_RETRY_FIRST
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(QUEUE_RETRY_MAX);
        Self {
            failures,
            next: now + wait,
        }
    }
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

    /// Turns the ingress queue for pods with a network namespace of their
    /// own on (the default) or off (the cgroup policer alone).
    pub fn set_ingress_queue(&mut self, enabled: bool) {
        self.ingress_queue = enabled;
        if !enabled {
            // an earlier daemon's queues in pods' namespaces: this one does
            // not keep them up, so their sockets' windows go unclamped
            self.sync_queued_flags();
        }
    }

    /// Tells the programs again, for every cgroup they take to have a queue
    /// in front of it, whether it has one (as far as this daemon knows).
    fn sync_queued_flags(&mut self) {
        match self.shaper.ingress_queued_ids() {
            Ok(ids) => {
                for id in ids {
                    self.sync_queued_flag(id);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which cgroups have a queue in front of them")
            }
        }
    }

    /// Turns the node's ingress queue for hostNetwork pods on or off (the
    /// default; crate::host_queue). Off, the slots an earlier daemon gave
    /// (and with the last of them the queue) are taken away; on, the
    /// sweep ([`Self::sync_ingress_queues`]) puts the queue in order.
    pub fn set_host_ingress_queue(&mut self, enabled: bool) {
        self.host_queue = enabled;
        if enabled {
            // slots of cgroups no longer limited (gone while no daemon ran)
            let stale: Vec<u64> = self
                .host_slots
                .keys()
                .filter(|id| !self.attached.contains_key(id))
                .copied()
                .collect();
            for id in stale {
                self.take_host_slot(id, "a cgroup no longer limited");
            }
            return;
        }
        let ids: Vec<u64> = self.host_slots.keys().copied().collect();
        for id in ids {
            let shown = self
                .attached
                .get(&id)
                .map_or_else(|| format!("cgroup id {id}"), |p| p.display().to_string());
            self.take_host_slot(id, &shown);
            self.sync_queued_flag(id);
        }
    }

    pub fn root(&self) -> &CgroupRoot {
        &self.root
    }

    /// The optional parts of the shaper this kernel runs.
    pub fn features(&self) -> crate::shaper::Features {
        self.shaper.features()
    }

    /// Takes over the pinned attachments: completes half-made ones, removes
    /// those whose cgroup is gone, and forgets limits that never got links.
    fn adopt(&mut self) -> Result<Adoption, NodeError> {
        let mut report = Adoption::default();
        let tags = ProgramTags::read();
        for id in self.pinned_ids()? {
            let dir = self.link_dir(id);
            let Some(path) = self.root.path_of(id) else {
                detach_pinned(&dir)?;
                self.shaper.remove_limits(id)?;
                report.removed_stale += 1;
                continue;
            };
            if !is_fully_pinned(&dir) {
                // A crash between pins: start the attachment over.
                detach_pinned(&dir)?;
                if self.shaper.limits(id)?.is_some() {
                    let cgroup = Cgroup::open(&path).map_err(ShaperError::from)?;
                    self.shaper.attach_pinned(&cgroup, &dir)?;
                    self.ready_open_sockets(id, &path);
                    report.repaired += 1;
                } else {
                    continue;
                }
            } else {
                // After an upgrade the old programs would go on with their
                // own code (and, if a layout changed, their own state maps).
                // Failing that, they still hold the limit: logged, kept.
                match self.upgrade(id, &path, &dir, &tags) {
                    Ok(true) => report.upgraded += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(cgroup = %path.display(), error = %e, "cannot move an attachment to this build's programs: it keeps those of the build that made it")
                    }
                }
            }
            self.attached.insert(id, path);
            report.adopted += 1;
        }
        let pinned = self.pinned_ids()?;
        for id in self.shaper.limited_ids()? {
            if !pinned.contains(&id) {
                self.shaper.remove_limits(id)?;
            }
        }
        // a cgroup detached by hand, or by an older build that kept no flags
        for id in self.shaper.ingress_queued_ids()? {
            if !self.attached.contains_key(&id) {
                self.shaper.set_ingress_queued(id, false)?;
            }
        }
        // now that every attachment runs this build's programs (the bump at
        // load came before the moves: an older build's program could take
        // it with its own reading of the limit, docs/reliability.md)
        self.shaper.retake_limits()?;
        Ok(report)
    }

    /// Moves an attachment made by another build to this shaper's programs;
    /// false if it already runs them.
    fn upgrade(
        &mut self,
        id: u64,
        path: &Path,
        dir: &Path,
        tags: &ProgramTags,
    ) -> Result<bool, NodeError> {
        if !self.shaper.runs_another_build(dir, tags)? {
            return Ok(false);
        }
        let cgroup = Cgroup::open(path).map_err(ShaperError::from)?;
        if cgroup.id() != id {
            // a new cgroup of the same name: the stale sweep handles it
            return Ok(false);
        }
        self.shaper.reattach_pinned(&cgroup, dir)?;
        Ok(true)
    }

    /// Sets a cgroup's limits, attaching the shaper if it is not yet. A limit
    /// already attached changes with one map update, without re-attaching.
    pub fn apply(&mut self, cgroup: &Cgroup, limits: &Limits) -> Result<CgroupStatus, NodeError> {
        self.refuse_nesting(cgroup)?;
        let dir = self.link_dir(cgroup.id());
        let had = self.shaper.limits(cgroup.id())?.unwrap_or_default();
        let namespaces = self.namespaces_of(cgroup.id(), cgroup.path());
        // Open flows paced before the limit holds them: unpaced, they met a
        // bucket of a burst at the full speed of the path.
        let newly_egress = limits.egress.filter(|_| had.egress.is_none());
        if let Some(egress) = &newly_egress {
            self.ready_senders(cgroup.id(), egress, &namespaces);
        }
        // Limits first: a crash before the links are pinned leaves a limit
        // with no links, which the next adoption removes.
        let attached = self.shaper.set_limits(cgroup.id(), limits).and_then(|()| {
            if is_fully_pinned(&dir) {
                return Ok(());
            }
            detach_pinned(&dir)?;
            self.shaper.attach_pinned(cgroup, &dir).inspect_err(|_| {
                let _ = self.shaper.remove_limits(cgroup.id());
            })
        });
        if let Err(e) = attached {
            if newly_egress.is_some() {
                // paced above for a limit that did not come
                let _ = self.shaper.unpace(cgroup.id(), &namespaces);
            }
            return Err(e.into());
        }
        self.attached
            .insert(cgroup.id(), cgroup.path().to_path_buf());
        let newly_queued =
            self.sync_ingress_queue(cgroup.id(), cgroup.path(), &namespaces, limits.ingress);
        if limits.ingress.is_some() && (had.ingress.is_none() || newly_queued) {
            self.ready_receivers(cgroup.id(), &namespaces);
        }
        self.status_of(cgroup.id(), Some(cgroup.path().to_path_buf()))
    }

    /// Readies a cgroup's open sockets for its limits after its programs
    /// were attached again (sockets opened while they were not never met
    /// the sockops program).
    fn ready_open_sockets(&mut self, id: u64, path: &Path) {
        let Ok(Some(limits)) = self.shaper.limits(id) else {
            return;
        };
        let namespaces = self.namespaces_of(id, path);
        if limits.ingress.is_some() {
            self.ready_receivers(id, &namespaces);
        }
        if let Some(egress) = &limits.egress {
            self.ready_senders(id, egress, &namespaces);
        }
    }

    /// Paces the open sending sockets of a cgroup about to get an egress
    /// limit, or whose programs were attached again (sockets opened while they
    /// were not, as after a detach, never met the sockops program). Sockets
    /// opened from now on get it from the sockops program. As for
    /// [`Self::ready_receivers`], no walk for a cgroup with no processes.
    fn ready_senders(&mut self, id: u64, egress: &DirectionLimit, namespaces: &[fs::File]) {
        if namespaces.is_empty() {
            if let Err(e) = self.shaper.forget_open_senders() {
                tracing::warn!(error = %e, cgroup_id = id, "cannot clear the open sockets' share: the cgroup's egress share may start below the limit");
            }
            return;
        }
        if let Err(e) = self.shaper.ready_senders(id, egress, namespaces) {
            tracing::warn!(error = %e, cgroup_id = id, "cannot pace the open sockets; the bucket alone holds them");
        }
    }

    /// Readies the open receiving sockets of a cgroup that got an ingress
    /// limit or a queue in front of it: the delayed ACK shortened, and the
    /// receive window clamped where a queue is. Sockets opened from now on
    /// get it from the sockops program. A cgroup with no processes (a pod
    /// limited as its cgroup appears) has no sockets to look for: no walk
    /// over the node's sockets then.
    fn ready_receivers(&mut self, id: u64, namespaces: &[fs::File]) {
        if namespaces.is_empty() {
            return;
        }
        if let Err(e) = self.shaper.ready_receivers(id, namespaces) {
            tracing::warn!(error = %e, cgroup_id = id, "cannot shorten the delayed ACK and clamp the window of open sockets");
        }
    }

    /// Tells the programs whether a queue is in front of a cgroup's ingress
    /// now (in its pod's namespaces or the node's), where that changed: only
    /// there are its receiving sockets' windows clamped. True if one newly
    /// is (its open sockets need arming). A failure is logged: the windows
    /// stay as they were.
    fn sync_queued_flag(&mut self, id: u64) -> bool {
        let queued = self.queued.contains_key(&id) || self.host_slots.contains_key(&id);
        let done = self.shaper.is_ingress_queued(id).and_then(|flagged| {
            if flagged != queued {
                self.shaper.set_ingress_queued(id, queued)?;
            }
            Ok(!flagged && queued)
        });
        done.unwrap_or_else(|e| {
            tracing::warn!(error = %e, cgroup_id = id, queued, "cannot tell the programs whether a queue is in front of the cgroup: its receive windows stay as they were");
            false
        })
    }

    /// Puts the ingress queue in front of each of `namespaces` (those of the
    /// cgroup's processes) other than the host's, with the cgroup's ingress
    /// limit, or takes it away if there is none. Failures leave the cgroup
    /// with its policer (never unlimited): they are logged, not returned.
    /// True if the cgroup newly has a queue in front of it.
    fn sync_ingress_queue(
        &mut self,
        id: u64,
        path: &Path,
        namespaces: &[fs::File],
        ingress: Option<DirectionLimit>,
    ) -> bool {
        if !self.ingress_queue && !self.host_queue {
            return false;
        }
        let known = self.queued.get(&id);
        let mut tried = Vec::new();
        let mut failed = false;
        let mut queue_error = None;
        let pod_namespaces = if self.ingress_queue {
            netns::not_ours(namespaces)
        } else {
            Vec::new()
        };
        for ns in pod_namespaces {
            let identity = netns::identity(ns).ok();
            // a namespace this daemon has not put a queue in may hold an
            // older daemon's, with its classifier
            let adopting = !identity.is_some_and(|n| known.is_some_and(|k| k.contains(&n)));
            let done = match ingress {
                Some(limit) => ingress_queue::install(ns, &limit, &self.flow_classifier, adopting),
                None => ingress_queue::remove(ns),
            };
            match done {
                // recorded as done: its live changes skip the classifier check
                Ok(()) => tried.extend(identity),
                // not recorded: a sweep (sync_ingress_queues) tries again
                Err(e) if ingress.is_some() => {
                    failed = true;
                    tracing::warn!(
                        error = %e,
                        cgroup = %path.display(),
                        "ingress queue not updated, tried again by a later sweep; the cgroup policer holds the limit"
                    );
                    queue_error = Some(format!(
                        "ingress queue not built (the policer holds the limit): {e}"
                    ));
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(
                        error = %e,
                        cgroup = %path.display(),
                        "ingress queue not removed, tried again by a later sweep; it holds the pod at its last rate meanwhile"
                    );
                    queue_error = Some(format!(
                        "ingress queue not removed (it holds the last rate): {e}"
                    ));
                }
            }
        }
        if self.host_queue {
            // a hostNetwork pod's processes are in our namespace; one that
            // has classes keeps them while it has no process (a container
            // restarting), until its ingress limit goes
            let host_pod = self.host_slots.contains_key(&id) || netns::has_ours(namespaces);
            match ingress {
                Some(limit) if host_pod => failed |= !self.give_host_slot(id, path, &limit),
                None if self.host_slots.contains_key(&id) => {
                    failed |= !self.take_host_slot(id, &path.display().to_string());
                }
                _ => {}
            }
        }
        if failed && queue_error.is_none() {
            queue_error = Some("the node's queue for hostNetwork pods not updated (the policer holds the limit; the daemon's log says why)".into());
        }
        self.problems.set(id, Problem::Queue, queue_error);
        let installs = self.queue_retry.remove(&id);
        let removals = self.queue_removals.remove(&id).map(|(_, r)| r);
        if failed {
            let now = Instant::now();
            let failures = |last: Option<QueueRetry>| last.map_or(0, |r| r.failures) + 1;
            match ingress {
                Some(_) => {
                    let retry = QueueRetry::after(failures(installs), now);
                    self.queue_retry.insert(id, retry);
                }
                None => {
                    let retry = QueueRetry::after(failures(removals), now);
                    self.queue_removals.insert(id, (path.to_path_buf(), retry));
                }
            }
        }
        if ingress.is_some() && !tried.is_empty() {
            self.queued.insert(id, tried);
        } else {
            self.queued.remove(&id);
        }
        self.sync_queued_flag(id)
    }

    /// Installs the ingress queue where it is missing: pods whose processes
    /// joined their cgroup after it was limited, pods in a new network
    /// namespace, and every pod after the daemon starts; and takes away the
    /// queues whose removal failed. Returns how many cgroups it updated.
    pub fn sync_ingress_queues(&mut self) -> Result<usize, NodeError> {
        if !self.ingress_queue && !self.host_queue {
            return Ok(0);
        }
        if self.host_queue && !self.host_slots.is_empty() {
            // interfaces come and go with the node's pods
            let done = netns::node_namespace()
                .map_err(ingress_queue::QueueError::Enter)
                .and_then(|ns| {
                    host_queue::redirect_interfaces(
                        &ns,
                        &self.host_classifier,
                        &mut self.host_redirected,
                    )
                });
            if let Err(e) = done {
                tracing::warn!(error = %e, "the node's interfaces not all classify for the hostNetwork pods' queue; tried again by the next sweep");
            }
        }
        let now = Instant::now();
        let removals: Vec<(u64, PathBuf)> = self
            .queue_removals
            .iter()
            .filter(|(_, (_, retry))| retry.next <= now)
            .map(|(id, (path, _))| (*id, path.clone()))
            .collect();
        for (id, path) in &removals {
            // a limit that came back in the meantime put the queue back
            let limited = self.attached.contains_key(id)
                && self.shaper.limits(*id)?.and_then(|l| l.ingress).is_some();
            if limited {
                self.queue_removals.remove(id);
                continue;
            }
            // a cgroup gone has no processes left, so no namespaces here
            let namespaces = self.namespaces_of(*id, path);
            self.sync_ingress_queue(*id, path, &namespaces, None);
        }
        let mut todo = Vec::new();
        let attached: Vec<(u64, PathBuf)> =
            self.attached.iter().map(|(i, p)| (*i, p.clone())).collect();
        for (id, path) in &attached {
            if self.queue_retry.get(id).is_some_and(|r| r.next > now) {
                continue;
            }
            let Some(ingress) = self.shaper.limits(*id)?.and_then(|l| l.ingress) else {
                continue;
            };
            let namespaces = self.namespaces_of(*id, path);
            let known = self.queued.get(id);
            let new_pod_ns = self.ingress_queue
                && netns::not_ours(&namespaces).into_iter().any(|ns| {
                    netns::identity(ns).is_ok_and(|n| !known.is_some_and(|k| k.contains(&n)))
                });
            let new_host_pod = self.host_queue
                && (self.host_unsynced.contains(id)
                    || !self.host_slots.contains_key(id) && netns::has_ours(&namespaces));
            let new = new_pod_ns || new_host_pod;
            if new {
                todo.push((*id, path.clone(), namespaces, ingress));
            }
            if todo.len() == QUEUE_SYNCS_PER_PASS {
                break;
            }
        }
        for (id, path, namespaces, ingress) in &todo {
            if self.sync_ingress_queue(*id, path, namespaces, Some(*ingress)) {
                self.ready_receivers(*id, namespaces);
            }
        }
        Ok(todo.len() + removals.len())
    }

    /// Gives a hostNetwork pod's cgroup its classes in the node's queue (a
    /// slot of its own, kept if it has one) and then its slot in the
    /// classifier's map. False (logged) if it failed: the policer holds.
    fn give_host_slot(&mut self, id: u64, path: &Path, limit: &DirectionLimit) -> bool {
        let given = self.host_slots.get(&id).copied().or_else(|| {
            let taken: HashSet<u32> = self.host_slots.values().copied().collect();
            (1..=abi::HOST_SLOTS).find(|s| !taken.contains(s))
        });
        let Some(slot) = given else {
            tracing::warn!(cgroup = %path.display(), most = abi::HOST_SLOTS, "every slot of the hostNetwork pods' queue is taken; the cgroup policer holds the limit");
            return false;
        };
        // only logged: either error will do
        let done = (|| -> Result<(), Box<dyn std::error::Error>> {
            let level = crate::cgroup::cgroup_level(path).ok_or(
                "its level in the cgroup hierarchy cannot be told from the cgroup root's mount",
            )?;
            let ns = netns::node_namespace()?;
            host_queue::install(
                &ns,
                slot,
                limit,
                &self.host_classifier,
                &mut self.host_redirected,
            )?;
            self.shaper.set_host_queue_slot(id, level, slot)?;
            Ok(())
        })();
        match done {
            Ok(()) => {
                self.host_slots.insert(id, slot);
                self.host_unsynced.remove(&id);
                true
            }
            Err(e) => {
                self.host_unsynced.insert(id);
                tracing::warn!(error = %e, cgroup = %path.display(), "hostNetwork pod's ingress queue not updated, tried again by a later sweep; the cgroup policer holds the limit");
                false
            }
        }
    }

    /// Takes a cgroup's slot away: first from the classifier's map (its
    /// packets are no longer queued), then its classes, and with the last
    /// slot the node's queue. False (logged) if it failed.
    fn take_host_slot(&mut self, id: u64, shown: &str) -> bool {
        let Some(&slot) = self.host_slots.get(&id) else {
            self.host_unsynced.remove(&id);
            return true;
        };
        let last = self.host_slots.len() == 1;
        let done = (|| -> Result<(), Box<dyn std::error::Error>> {
            self.shaper.remove_host_queue_slot(id)?;
            host_queue::remove(&netns::node_namespace()?, slot, last)?;
            Ok(())
        })();
        match done {
            Ok(()) => {
                self.host_slots.remove(&id);
                self.host_unsynced.remove(&id);
                if last {
                    self.host_redirected.clear();
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, cgroup = shown, "hostNetwork pod's classes not removed from the node's queue, tried again by a later sweep");
                false
            }
        }
    }

    /// Detaches the shaper from a cgroup and forgets its limits.
    pub fn remove(&mut self, cgroup: &Cgroup) -> Result<(), NodeError> {
        self.remove_id(cgroup.id(), &cgroup.path().display().to_string())
    }

    pub fn remove_id(&mut self, cgroup_id: u64, shown: &str) -> Result<(), NodeError> {
        let dir = self.link_dir(cgroup_id);
        if !dir.exists() {
            return Err(NodeError::NotAttached { path: shown.into() });
        }
        detach_pinned(&dir)?;
        self.shaper.remove_limits(cgroup_id)?;
        // Open connections would otherwise stay paced at the old share.
        let mut netns = Vec::new();
        if let Some(path) = self.attached.remove(&cgroup_id) {
            netns = self.namespaces_of(cgroup_id, &path);
            self.sync_ingress_queue(cgroup_id, &path, &netns, None);
        }
        if let Err(e) = self.shaper.unpace(cgroup_id, &netns) {
            tracing::warn!(error = %e, cgroup_id, "cannot lift the pacing of open sockets");
        }
        self.problems.forget(cgroup_id);
        Ok(())
    }

    /// Removes everything the shaper put on the node, for an uninstall:
    /// every limited cgroup's links and limits (lifting the pacing of its
    /// open sockets), every ingress queue in any network namespace on the
    /// node (a pod's whose limit outlived its pins too) and the node's queue
    /// for hostNetwork pods, then, once this shaper's programs are unloaded,
    /// every pin under the bpffs directory. A daemon must not be running:
    /// it would put its pins back.
    pub fn uninstall(mut self) -> Result<Uninstall, NodeError> {
        // the queues first (the policers behind them hold the limits
        // meanwhile): every one on the node, whether a pin names it or not
        let mut report = Uninstall {
            queues: remove_all_queues()?,
            ..Uninstall::default()
        };
        self.set_host_ingress_queue(false);
        let attached: Vec<(u64, PathBuf)> =
            self.attached.iter().map(|(i, p)| (*i, p.clone())).collect();
        for (id, path) in attached {
            self.remove_id(id, &path.display().to_string())?;
            report.cgroups += 1;
        }
        let dir = self.maps_dir.parent().map(Path::to_path_buf);
        // unloads the programs and closes the maps; only pins hold them now
        drop(self);
        if let Some(dir) = dir {
            fs::remove_dir_all(&dir).map_err(|source| NodeError::PinDir {
                path: dir.display().to_string(),
                source,
            })?;
            report.pins = true;
        }
        Ok(report)
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

    /// Removes the pins of cgroups that no longer exist; returns how many.
    pub fn remove_stale(&mut self) -> Result<usize, NodeError> {
        // gone, or replaced by a new cgroup of the same name (another id)
        let stale: Vec<u64> = self
            .attached
            .iter()
            .filter(|(id, path)| fs::metadata(path).map(|m| m.ino() != **id).unwrap_or(true))
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            detach_pinned(&self.link_dir(*id))?;
            self.shaper.remove_limits(*id)?;
            let path = self.attached.remove(id).unwrap_or_default();
            self.problems.forget(*id);
            // its namespace went with its processes, and the queue with it
            self.queued.remove(id);
            self.queue_retry.remove(id);
            self.queue_removals.remove(id);
            // but a hostNetwork pod's classes live in the node's queue
            if !self.take_host_slot(*id, &path.display().to_string()) {
                let retry = QueueRetry::after(1, Instant::now());
                self.queue_removals.insert(*id, (path, retry));
            }
        }
        Ok(stale.len())
    }

    /// Puts back pins removed under the daemon (by hand, or by a cleanup
    /// script): the maps' pins, and the links of every limited cgroup. A link
    /// whose pin is removed is detached by the kernel, so this runs with the
    /// stale sweep and a cgroup is unlimited for at most one sweep interval.
    pub fn repair(&mut self) -> Result<Repair, NodeError> {
        let mut report = Repair {
            maps: self.shaper.repin_maps(&self.maps_dir)?,
            cgroups: 0,
        };
        if self.shaper.has_flow_classifier() && !self.flow_classifier.exists() {
            // queues built before keep their program; new ones need the pin
            if let Some(dir) = self.flow_classifier.parent() {
                create_pin_dir(dir)?;
            }
            self.shaper.pin_flow_classifier(&self.flow_classifier)?;
            report.maps += 1;
        }
        if self.shaper.has_host_classifier() && !self.host_classifier.exists() {
            if let Some(dir) = self.host_classifier.parent() {
                create_pin_dir(dir)?;
            }
            self.shaper.pin_host_classifier(&self.host_classifier)?;
            report.maps += 1;
        }
        create_pin_dir(&self.links_dir)?;
        let attached: Vec<(u64, PathBuf)> =
            self.attached.iter().map(|(i, p)| (*i, p.clone())).collect();
        for (id, path) in attached {
            let dir = self.link_dir(id);
            if is_fully_pinned(&dir) {
                continue;
            }
            detach_pinned(&dir)?;
            match Cgroup::open(&path) {
                // the same cgroup (not a new one of the same name)
                Ok(cgroup) if cgroup.id() == id => {
                    self.shaper.attach_pinned(&cgroup, &dir)?;
                    self.ready_open_sockets(id, &path);
                    report.cgroups += 1;
                }
                // gone: the stale sweep forgets it
                _ => {}
            }
        }
        Ok(report)
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

    /// The network namespaces of a cgroup's processes. Those that cannot be
    /// opened are a problem of the cgroup's (logged when it starts and when
    /// it ends, shown in its status): the daemon cannot put the ingress
    /// queue there, nor reach the sockets there.
    fn namespaces_of(&mut self, id: u64, path: &Path) -> Vec<fs::File> {
        let scan = network_namespaces_in(path);
        let problem = (!scan.unreadable.is_empty()).then(|| {
            let shown: Vec<String> = scan.unreadable.iter().map(|u| u.to_string()).collect();
            shown.join("; ")
        });
        let was = self.problems.get(id, Problem::Namespaces);
        if was != problem.as_deref() {
            match &problem {
                Some(p) => {
                    tracing::warn!(cgroup = %path.display(), problem = %p, "cannot enter a network namespace of the cgroup's processes: no ingress queue there, and its open sockets are not reached")
                }
                None if was.is_some() => {
                    tracing::info!(cgroup = %path.display(), "the network namespaces of the cgroup's processes can be entered again")
                }
                None => {}
            }
        }
        self.problems.set(id, Problem::Namespaces, problem);
        scan.found
    }

    /// A limit on a cgroup and another on its ancestor or descendant would
    /// both count the same packets.
    fn refuse_nesting(&self, cgroup: &Cgroup) -> Result<(), NodeError> {
        for (id, other) in &self.attached {
            if *id != cgroup.id()
                && (other.starts_with(cgroup.path()) || cgroup.path().starts_with(other))
            {
                return Err(NodeError::Nested {
                    path: cgroup.path().display().to_string(),
                    other: other.display().to_string(),
                });
            }
        }
        Ok(())
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

/// Removes every ingress queue on the node: a pod's in each network
/// namespace that has one, and the node's queue for hostNetwork pods.
/// Returns how many there were.
pub fn remove_all_queues() -> Result<usize, ingress_queue::QueueError> {
    let node = netns::node_namespace().ok();
    let node_id = node.as_ref().and_then(|n| netns::identity(n).ok());
    let mut removed = 0;
    for ns in netns::all_namespaces() {
        let there = match netns::identity(&ns).ok() == node_id {
            true => host_queue::remove_all(&ns)?,
            false => ingress_queue::remove_if_present(&ns)?,
        };
        removed += usize::from(there);
    }
    Ok(removed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_queue_is_tried_again_later_each_time_up_to_the_cap() {
        let now = Instant::now();
        let wait = |failures| QueueRetry::after(failures, now).next - now;
        assert_eq!(wait(1), Duration::from_secs(1));
        assert_eq!(wait(2), Duration::from_secs(2));
        assert_eq!(wait(3), Duration::from_secs(4));
        assert_eq!(wait(6), QUEUE_RETRY_MAX);
        assert_eq!(wait(u32::MAX), QUEUE_RETRY_MAX);
    }
}
