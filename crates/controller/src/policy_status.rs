//! Each node's entry in a BandwidthPolicy's status: the node's pods the
//! policy selects, its conflicts with other policies on them, and its own
//! errors. One writer per node: a server-side apply of `status.nodes` (a
//! list-map keyed by `node`) under the field manager
//! `podshaper-controller/<node>`, so that node controllers never overwrite
//! each other's entries. Written only when the entry differs from what the
//! policy cache shows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::crd::{BandwidthPolicy, NodePolicyStatus};
use crate::metrics::{ErrorKind, Metrics};
use crate::pass::NodePod;
use crate::policy::Policy;
use crate::sync::Controller;

/// How long one status write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The field manager of a node's entries.
pub(crate) fn field_manager(node: &str) -> String {
    format!("podshaper-controller/{node}")
}

/// A node's entry for each policy (by namespace and name); `None` when the
/// node has nothing to say about it.
pub(crate) fn entries(
    node: &str,
    pods: &[NodePod],
    policies: &[Policy],
) -> BTreeMap<(String, String), Option<NodePolicyStatus>> {
    let mut out = BTreeMap::new();
    for policy in policies {
        let mut names = BTreeSet::new();
        let mut conflicts = BTreeSet::new();
        for pod in pods.iter().filter(|p| {
            p.want.namespace == policy.namespace && p.effective.policies.contains(&policy.name)
        }) {
            names.insert(pod.want.name.clone());
            conflicts.extend(
                pod.effective
                    .conflicts
                    .iter()
                    .filter(|c| c.values.iter().any(|(p, _)| *p == policy.name))
                    .map(|c| c.to_string()),
            );
        }
        let entry = (!names.is_empty() || !policy.errors.is_empty()).then(|| NodePolicyStatus {
            node: node.to_string(),
            pods: names.into_iter().collect(),
            conflicts: conflicts.into_iter().collect(),
            errors: policy.errors.clone(),
        });
        out.insert((policy.namespace.clone(), policy.name.clone()), entry);
    }
    out
}

/// Writes nodes' entries in the background, so that an API server that is
/// slow or away never holds up a pass; one batch of writes per node at a time.
#[derive(Clone)]
pub(crate) struct StatusWriter {
    client: kube::Client,
    metrics: Arc<Metrics>,
    busy: Arc<Mutex<HashSet<String>>>,
}

impl StatusWriter {
    pub(crate) fn new(client: kube::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            metrics,
            busy: Arc::default(),
        }
    }
}

impl Controller {
    /// Writes the node's entries that differ from what the cache shows.
    pub(crate) fn write_policy_status(&self, node: &str, pods: &[NodePod], policies: &[Policy]) {
        let cached: HashMap<(String, String), Option<NodePolicyStatus>> = self
            .policies
            .state()
            .iter()
            .map(|p| {
                let entry = p
                    .status
                    .as_ref()
                    .and_then(|s| s.nodes.iter().find(|n| n.node == node).cloned());
                ((p.namespace().unwrap_or_default(), p.name_any()), entry)
            })
            .collect();
        let changed: Vec<_> = entries(node, pods, policies)
            .into_iter()
            .filter(|(key, entry)| cached.get(key) != Some(entry))
            .collect();
        if changed.is_empty() {
            return;
        }
        let writer = self.status_writer.clone();
        // the writes of an earlier pass still out: the next pass looks again
        let free = writer
            .busy
            .lock()
            .is_ok_and(|mut busy| busy.insert(node.to_string()));
        if !free {
            return;
        }
        let node = node.to_string();
        tokio::spawn(async move {
            for ((namespace, name), entry) in changed {
                writer.write(&node, &namespace, &name, entry).await;
            }
            if let Ok(mut busy) = writer.busy.lock() {
                busy.remove(&node);
            }
        });
    }
}

impl StatusWriter {
    async fn write(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
        entry: Option<NodePolicyStatus>,
    ) {
        let api: Api<BandwidthPolicy> = Api::namespaced(self.client.clone(), namespace);
        // an empty list gives up the node's entry; the others' stay
        let patch = json!({
            "apiVersion": "podshaper.io/v1alpha1",
            "kind": "BandwidthPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "status": {"nodes": entry.iter().collect::<Vec<_>>()},
        });
        let params = PatchParams::apply(&field_manager(node)).force();
        let policy = format!("{namespace}/{name}");
        let patch = Patch::Apply(&patch);
        let write = api.patch_status(name, &params, &patch);
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(_)) => tracing::debug!(%node, %policy, ?entry, "policy status written"),
            // deleted meanwhile: nothing to write to
            Ok(Err(kube::Error::Api(s))) if s.is_not_found() => {}
            Ok(Err(e)) => {
                self.metrics.error(ErrorKind::PolicyStatus);
                tracing::warn!(%node, %policy, error = %e, "cannot write the policy's status; retried on the next pass");
            }
            Err(_) => {
                self.metrics.error(ErrorKind::PolicyStatus);
                tracing::warn!(%node, %policy, "the policy's status was not written within 10 s; retried on the next pass");
            }
        }
    }
}
