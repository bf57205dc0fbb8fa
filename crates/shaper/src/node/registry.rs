//! The limited cgroups: setting and removing a cgroup's limits, refusing
//! nested ones, and readying the sockets its processes have open.

use std::fs;
use std::path::Path;

use super::{CgroupStatus, Node, NodeError};
use crate::cgroup::Cgroup;
use crate::limits::{DirectionLimit, Limits};
use crate::netns::network_namespaces_in;
use crate::problems::Problem;
use crate::shaper::{detach_pinned, is_fully_pinned};

impl Node {
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
        // Open flows coming in meet the queue before the policer, with their
        // windows clamped for it: the policer alone for the milliseconds the
        // queue takes to build dropped most of what they had in flight.
        let newly_ingress = limits.ingress.filter(|_| had.ingress.is_none());
        let queued_first = match newly_ingress {
            Some(ingress) if !namespaces.is_empty() => {
                Some(self.queue_open_flows(cgroup.id(), cgroup.path(), &namespaces, ingress))
            }
            _ => None,
        };
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
            if queued_first.is_some() {
                // a queue built above for a limit that did not come
                self.sync_ingress_queue(cgroup.id(), cgroup.path(), &namespaces, None);
                let _ = self
                    .shaper
                    .give_back_receive_windows(cgroup.id(), &namespaces);
            }
            return Err(e.into());
        }
        self.attached
            .insert(cgroup.id(), cgroup.path().to_path_buf());
        let newly_queued = match queued_first {
            Some(newly) => newly,
            None => {
                self.sync_ingress_queue(cgroup.id(), cgroup.path(), &namespaces, limits.ingress)
            }
        };
        if limits.ingress.is_some() && (had.ingress.is_none() || newly_queued) {
            self.ready_receivers(cgroup.id(), &namespaces);
        }
        self.status_of(cgroup.id(), Some(cgroup.path().to_path_buf()))
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

    /// Readies a cgroup's open sockets for its limits after its programs
    /// were attached again (sockets opened while they were not never met
    /// the sockops program).
    pub(super) fn ready_open_sockets(&mut self, id: u64, path: &Path) {
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
    pub(super) fn ready_senders(
        &mut self,
        id: u64,
        egress: &DirectionLimit,
        namespaces: &[fs::File],
    ) {
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
    pub(super) fn ready_receivers(&mut self, id: u64, namespaces: &[fs::File]) {
        if namespaces.is_empty() {
            return;
        }
        if let Err(e) = self.shaper.ready_receivers(id, namespaces) {
            tracing::warn!(error = %e, cgroup_id = id, "cannot shorten the delayed ACK and clamp the window of open sockets");
        }
    }

    /// The network namespaces of a cgroup's processes. Those that cannot be
    /// opened are a problem of the cgroup's (logged when it starts and when
    /// it ends, shown in its status): the daemon cannot put the ingress
    /// queue there, nor reach the sockets there.
    pub(super) fn namespaces_of(&mut self, id: u64, path: &Path) -> Vec<fs::File> {
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
}
