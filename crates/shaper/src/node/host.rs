//! The node's ingress queue for hostNetwork pods (crate::host_queue): each
//! limited hostNetwork pod's slot in it.

use std::collections::HashSet;
use std::path::Path;

use super::Node;
use crate::abi;
use crate::host_queue;
use crate::limits::DirectionLimit;
use crate::netns;

impl Node {
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

    /// Gives a hostNetwork pod's cgroup its classes in the node's queue (a
    /// slot of its own, kept if it has one) and then its slot in the
    /// classifier's map. False (logged) if it failed: the policer holds.
    pub(super) fn give_host_slot(&mut self, id: u64, path: &Path, limit: &DirectionLimit) -> bool {
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
    pub(super) fn take_host_slot(&mut self, id: u64, shown: &str) -> bool {
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
}
