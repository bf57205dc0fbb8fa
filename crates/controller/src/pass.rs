//! One pass over one node: the daemon's list, the plan, the daemon calls
//! that carry it out, and what they tell the operator (Events, metrics).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{Resource, ResourceExt};
use podshaper_api::pb;
use tokio::time::timeout;

use crate::annotations::PodBandwidth;
use crate::events::Cause;
use crate::layout::expected_cgroups;
use crate::metrics::{ChangeKind, ErrorKind};
use crate::plan::{plan, Enforced, PodWant, Step};
use crate::policy::{effective, Effective, Policy};
use crate::sync::{node_of, Controller, DAEMON_CALL_TIMEOUT};
use crate::Error;

/// A pod on the node, with what the Events about it need.
pub(crate) struct NodePod {
    /// the effective limits (annotations, then policies)
    pub(crate) want: PodWant,
    /// the pod's own annotations, whose errors are Events on the pod
    annotations: PodBandwidth,
    /// where the limits come from, and the policies that select the pod
    pub(crate) effective: Effective,
    reference: ObjectReference,
    qos_class: Option<String>,
}

impl Controller {
    /// Brings one node in line. `Ok(true)`: some pod's cgroup is not there
    /// yet, or the daemon refused something: try again soon.
    pub(crate) async fn sync_node(&self, node: &str) -> Result<bool, Error> {
        self.metrics.pass();
        // before the cache is read: a change that comes later is the next pass's
        let mut changes = self
            .pending
            .lock()
            .map(|mut p| p.take_changes(node))
            .unwrap_or_default();
        let outcome = self.sync_node_inner(node, &mut changes).await;
        match &outcome {
            Ok(_) => {}
            Err(e) => {
                let kind = match e {
                    Error::Daemon { .. } => ErrorKind::DaemonUnreachable,
                    _ => ErrorKind::NodeAddress,
                };
                self.metrics.error(kind);
                if kind == ErrorKind::DaemonUnreachable {
                    self.metrics
                        .reachable(node, &self.daemons.address_of(node), false);
                }
                // seen through by a later pass, counted from the first event
                if let Ok(mut p) = self.pending.lock() {
                    p.put_back(node, changes);
                }
            }
        }
        outcome
    }

    async fn sync_node_inner(
        &self,
        node: &str,
        changes: &mut HashMap<String, Instant>,
    ) -> Result<bool, Error> {
        let local = self.config.node.as_deref();
        let policies: Vec<Policy> = self
            .policies
            .state()
            .iter()
            .map(|p| Policy::from_resource(p))
            .collect();
        let pods: Vec<NodePod> = self
            .pods
            .state()
            .iter()
            .filter(|p| node_of(p, local).as_deref() == Some(node))
            .filter(|p| !is_finished(p))
            .filter_map(|p| node_pod(p, &policies))
            .collect();
        // what the policies govern on this node: written whatever the daemon says
        self.write_policy_status(node, &pods, &policies);
        let daemon_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Daemon {
            node: node.to_string(),
            source,
        };
        let mut client = self.daemons.client(node).await?;
        let list = timeout(DAEMON_CALL_TIMEOUT, client.list(pb::ListRequest {}))
            .await
            .map_err(|e| daemon_error(Box::new(e)))?
            .map_err(|e| daemon_error(Box::new(e)))?
            .into_inner();
        self.metrics
            .reachable(node, &self.daemons.address_of(node), true);
        let enforced: HashMap<String, Enforced> = list
            .cgroups
            .iter()
            // an empty path: a gone cgroup whose pins the daemon is removing,
            // unless the daemon holds the limits for a cgroup still to come
            .filter(|c| !c.cgroup.is_empty() || c.waiting)
            .filter_map(|c| Some((c.pod_uid.clone()?, Enforced::from_status(c))))
            .collect();
        // pods whose limits wait for their cgroup
        let mut waiting: HashSet<String> = list
            .cgroups
            .iter()
            .filter(|c| c.waiting)
            .filter_map(|c| c.pod_uid.clone())
            .collect();
        // a pod still waiting for its cgroup: look again soon (a daemon
        // restarted meanwhile has forgotten it, and is told again)
        let mut pending = !waiting.is_empty();

        for pod in &pods {
            let invalid: Vec<_> = pod.annotations.invalid().collect();
            self.events.retain_current(&pod.want.uid, &invalid);
            for i in invalid {
                self.events.invalid(&pod.want.uid, &pod.reference, i);
            }
        }

        let wants: Vec<PodWant> = pods.iter().map(|p| p.want.clone()).collect();
        let by_uid: HashMap<&str, &NodePod> =
            pods.iter().map(|p| (p.want.uid.as_str(), p)).collect();
        self.announce_attached(&list.cgroups, &by_uid);
        for step in plan(&wants, &enforced) {
            match step {
                Step::Apply {
                    uid,
                    namespace,
                    name,
                    limits,
                } => {
                    let kind = if enforced.contains_key(&uid) {
                        ChangeKind::Update
                    } else {
                        ChangeKind::Attach
                    };
                    let pod = format!("{namespace}/{name}");
                    let request = pb::AttachRequest {
                        target: Some(pod_target(&uid)),
                        egress: limits.egress,
                        ingress: limits.ingress,
                        custom_program: Vec::new(),
                        pod_namespace: namespace,
                        pod_name: name,
                        wait_for_cgroup: true,
                    };
                    match timeout(DAEMON_CALL_TIMEOUT, client.attach(request)).await {
                        Ok(Ok(r)) if r.get_ref().waiting => {
                            // The kubelet has not made the pod's cgroup yet:
                            // the daemon attaches the moment it does.
                            tracing::debug!(%node, %pod, "limits held by the daemon until the pod's cgroup appears");
                            self.metrics.applied(kind);
                            self.events
                                .resolved(&uid, |c| matches!(c, Cause::Refused(_)));
                            if let Ok(mut u) = self.unannounced.lock() {
                                u.insert(uid.clone());
                            }
                            // in force only once the cgroup is there: not a
                            // latency the controller or the daemon decides
                            changes.remove(&uid);
                            waiting.insert(uid);
                            pending = true;
                        }
                        Ok(Ok(_)) => {
                            tracing::info!(%node, %pod, ?limits.egress, ?limits.ingress, "limits in force");
                            self.metrics.applied(kind);
                            if let Some(at) = changes.remove(&uid) {
                                self.metrics.change_in_force(at.elapsed());
                            }
                            self.events
                                .resolved(&uid, |c| matches!(c, Cause::Refused(_)));
                            waiting.remove(&uid);
                            if let Some(p) = by_uid.get(uid.as_str()) {
                                self.events
                                    .limited(&p.reference, &limits, &p.effective.origin());
                            }
                        }
                        Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                            // The kubelet has not made the pod's cgroup yet.
                            tracing::debug!(%node, %pod, "pod cgroup not there yet");
                            waiting.insert(uid);
                            pending = true;
                        }
                        Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                            return Err(daemon_error(Box::new(s)));
                        }
                        Ok(Err(s)) => {
                            tracing::warn!(%node, %pod, error = %s.message(), "daemon refused the limits");
                            self.metrics.error(ErrorKind::DaemonRefused);
                            if let Some(p) = by_uid.get(uid.as_str()) {
                                self.events
                                    .refused(&uid, &p.reference, &limits, s.message());
                            }
                            pending = true;
                        }
                        Err(e) => return Err(daemon_error(Box::new(e))),
                    }
                }
                Step::Remove { uid } => {
                    let request = pb::DetachRequest {
                        target: Some(pod_target(&uid)),
                    };
                    match timeout(DAEMON_CALL_TIMEOUT, client.detach(request)).await {
                        Ok(Ok(_)) => {
                            tracing::info!(%node, pod_uid = %uid, "limits removed");
                            self.metrics.applied(ChangeKind::Detach);
                            if let Some(at) = changes.remove(&uid) {
                                self.metrics.change_in_force(at.elapsed());
                            }
                            waiting.remove(&uid);
                        }
                        // Cgroup already gone: the daemon removes its pins itself.
                        Ok(Err(s)) if s.code() == tonic::Code::NotFound => {}
                        Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                            return Err(daemon_error(Box::new(s)));
                        }
                        Ok(Err(s)) => {
                            tracing::warn!(%node, pod_uid = %uid, error = %s.message(), "daemon did not remove the limits");
                            self.metrics.error(ErrorKind::DaemonRefused);
                            pending = true;
                        }
                        Err(e) => return Err(daemon_error(Box::new(e))),
                    }
                }
            }
        }
        self.warn_of_missing_cgroups(&pods, &waiting);
        Ok(pending)
    }

    /// CgroupNotFound for the pods whose limits have waited longer than
    /// the configured delay.
    fn warn_of_missing_cgroups(&self, pods: &[NodePod], waiting: &HashSet<String>) {
        let now = Instant::now();
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        for pod in pods {
            let uid = pod.want.uid.as_str();
            if !waiting.contains(uid) {
                pending.not_waiting(uid);
                self.events.resolved(uid, |c| *c == Cause::CgroupNotFound);
                continue;
            }
            let waited = pending.waiting(uid, now);
            if waited >= self.config.cgroup_warning {
                let expected = expected_cgroups(uid, pod.qos_class.as_deref());
                self.events
                    .cgroup_not_found(uid, &pod.reference, waited, &expected);
            }
        }
    }

    /// BandwidthLimited for the pods whose held limits came into force.
    fn announce_attached(&self, statuses: &[pb::CgroupStatus], pods: &HashMap<&str, &NodePod>) {
        let Ok(mut unannounced) = self.unannounced.lock() else {
            return;
        };
        for s in statuses
            .iter()
            .filter(|s| !s.waiting && !s.cgroup.is_empty())
        {
            let Some(uid) = s.pod_uid.as_deref() else {
                continue;
            };
            if unannounced.remove(uid) {
                if let Some(p) = pods.get(uid) {
                    self.events.limited(
                        &p.reference,
                        &Enforced::from_status(s),
                        &p.effective.origin(),
                    );
                }
            }
        }
    }
}

fn pod_target(uid: &str) -> pb::Target {
    pb::Target {
        target: Some(pb::target::Target::PodUid(uid.to_string())),
    }
}

/// Succeeded and Failed pods have no running processes (and soon no cgroup).
fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn node_pod(pod: &Pod, policies: &[Policy]) -> Option<NodePod> {
    let uid = pod.uid()?;
    let namespace = pod.namespace().unwrap_or_default();
    let annotations = PodBandwidth::from_annotations(pod.annotations());
    let effective = effective(&namespace, pod.labels(), &annotations, policies);
    Some(NodePod {
        want: PodWant {
            uid,
            namespace,
            name: pod.name_any(),
            bandwidth: effective.bandwidth.clone(),
        },
        annotations,
        effective,
        reference: pod.object_ref(&()),
        qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
    })
}
