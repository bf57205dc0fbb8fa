//! The periodic sweep that puts ingress queues where they are missing and
//! takes away those whose removal failed, and the removal of every queue on
//! the node.

use std::path::PathBuf;
use std::time::Instant;

use super::{Node, NodeError};
use crate::host_queue;
use crate::ingress_queue;
use crate::netns;

/// Pods whose ingress queue one [`Node::sync_ingress_queues`] pass looks
/// at, at most: each costs a few `tc` runs, and the node is locked meanwhile.
const QUEUE_SYNCS_PER_PASS: usize = 32;

impl Node {
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
            // the pod's processes may be sending already
            if self.queue_open_flows(*id, path, namespaces, *ingress) {
                self.ready_receivers(*id, namespaces);
            }
        }
        Ok(todo.len() + removals.len())
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
