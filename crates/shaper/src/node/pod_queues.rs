//! The ingress queues in pods' own network namespaces
//! (crate::ingress_queue), and the programs' flag of which cgroups have a
//! queue in front of them.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Node;
use crate::ingress_queue;
use crate::limits::DirectionLimit;
use crate::netns;
use crate::problems::Problem;

/// After an ingress queue fails to install, the sweep tries the pod again
/// after this long, doubled at every failure up to QUEUE_RETRY_MAX: a queue
/// that fails for a moment comes back within a second or two, one that
/// keeps failing (no ifb module, a pod's odd set-up) costs its `tc` runs and
/// a warning once or twice a minute, not every sweep.
const QUEUE_RETRY_FIRST: Duration = Duration::from_secs(1);
const QUEUE_RETRY_MAX: Duration = Duration::from_secs(30);

/// When the sweep next tries a cgroup whose ingress queue failed.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueRetry {
    pub(super) failures: u32,
    pub(super) next: Instant,
}

impl QueueRetry {
    pub(super) fn after(failures: u32, now: Instant) -> Self {
        let wait = QUEUE_RETRY_FIRST
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(QUEUE_RETRY_MAX);
        Self {
            failures,
            next: now + wait,
        }
    }
}

impl Node {
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

    /// Tells the programs whether a queue is in front of a cgroup's ingress
    /// now (in its pod's namespaces or the node's), where that changed: only
    /// there are its receiving sockets' windows clamped. True if one newly
    /// is (its open sockets need arming). A failure is logged: the windows
    /// stay as they were.
    pub(super) fn sync_queued_flag(&mut self, id: u64) -> bool {
        let queued = self.has_queue(id);
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

    /// Whether a queue of this daemon's is in front of a cgroup's ingress (in
    /// its pod's namespaces or the node's).
    fn has_queue(&self, id: u64) -> bool {
        self.queued.contains_key(&id) || self.host_slots.contains_key(&id)
    }

    /// Builds a cgroup's ingress queue in front of connections that are open
    /// and may be sending at the full speed of the path, as
    /// [`Self::sync_ingress_queue`] does, but clamps their receive windows
    /// for the queue's rate first (with TCP let shrink the windows it
    /// offered in the pods' namespaces), so that by the time the queue holds
    /// them their senders keep no more in flight than its FIFOs take. Built
    /// over such flows without that, the queue dropped most of what they
    /// had in flight, and sixteen flows at 10M waited out a retransmission
    /// timeout together (docs/design/state-and-upgrades.md, "Connections
    /// open before the limit"). If no queue came, the windows are given
    /// back. True if the cgroup newly has a queue in front of it.
    pub(super) fn queue_open_flows(
        &mut self,
        id: u64,
        path: &Path,
        namespaces: &[fs::File],
        ingress: DirectionLimit,
    ) -> bool {
        let pod_namespaces = if self.ingress_queue {
            netns::not_ours(namespaces)
        } else {
            Vec::new()
        };
        let host_pod = self.host_queue && netns::has_ours(namespaces);
        if pod_namespaces.is_empty() && !host_pod {
            return self.sync_ingress_queue(id, path, namespaces, Some(ingress));
        }
        let shrink = |on| {
            for ns in &pod_namespaces {
                if let Err(e) = ingress_queue::let_windows_shrink(ns, on) {
                    tracing::warn!(error = %e, cgroup = %path.display(), "cannot set whether TCP may shrink offered windows in a namespace of the cgroup's processes");
                }
            }
        };
        shrink(true);
        if let Err(e) = self.shaper.clamp_receivers(id, &ingress, namespaces) {
            tracing::warn!(error = %e, cgroup_id = id, "cannot clamp the open sockets' receive windows before the ingress queue: it may drop what their senders have in flight");
        }
        let newly = self.sync_ingress_queue(id, path, namespaces, Some(ingress));
        if !self.has_queue(id) {
            shrink(false);
            if let Err(e) = self.shaper.give_back_receive_windows(id, namespaces) {
                tracing::warn!(error = %e, cgroup_id = id, "cannot give the open sockets' receive windows back after their queue failed: they stay clamped for its rate");
            }
        }
        newly
    }

    /// Puts the ingress queue in front of each of `namespaces` (those of the
    /// cgroup's processes) other than the host's, with the cgroup's ingress
    /// limit, or takes it away if there is none. Failures leave the cgroup
    /// with its policer (never unlimited): they are logged, not returned.
    /// True if the cgroup newly has a queue in front of it.
    pub(super) fn sync_ingress_queue(
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
