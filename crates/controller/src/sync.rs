//! The controller's loop: a pod watch feeding a local cache, and passes that
//! bring each node whose pods changed (and every node, periodically) to
//! exactly the limits its pods ask for.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use podshaper_api::pb;
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout, Instant};

use crate::annotations::PodBandwidth;
use crate::daemons::{DaemonTarget, Daemons};
use crate::events::Events;
use crate::lease::{Leadership, LeaseConfig};
use crate::plan::{plan, Enforced, PodWant, Step};
use crate::Error;

#[derive(Debug, Clone)]
pub struct Config {
    /// Node mode: only this node's pods, and the local daemon.
    pub node: Option<String>,
    pub daemons: DaemonTarget,
    /// Every node is brought in line this often, whatever the watch says.
    pub resync: Duration,
    /// How soon a node is tried again when a pod's cgroup is not there yet
    /// or its daemon did not answer.
    pub retry: Duration,
    /// Cluster mode: the Lease that decides which controller acts.
    pub lease: Option<LeaseConfig>,
    /// This controller's name in Events.
    pub instance: String,
}

/// How long one daemon call may take before the node is retried later.
const DAEMON_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Nodes synced at once in cluster mode.
const CONCURRENT_NODES: usize = 16;

/// Nodes that need a pass.
#[derive(Default)]
struct Dirty {
    all: bool,
    nodes: HashSet<String>,
}

struct Controller {
    config: Config,
    pods: Store<Pod>,
    daemons: Daemons,
    events: Events,
    nodes_api: Api<Node>,
    dirty: Mutex<Dirty>,
    wake: Notify,
    /// Pods whose limits a daemon holds until their cgroup appears: their
    /// BandwidthLimited event waits until the limits are in force.
    unannounced: Mutex<HashSet<String>>,
}

/// Runs until `shutdown` completes. Limits stay in force when it returns.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (pods, writer) = reflector::store::<Pod>();
    let controller = Arc::new(Controller {
        daemons: Daemons::new(config.daemons.clone(), client.clone()),
        events: Events::new(client.clone(), config.instance.clone()),
        nodes_api: Api::all(client.clone()),
        pods,
        config,
        dirty: Mutex::new(Dirty::default()),
        wake: Notify::new(),
        unannounced: Mutex::new(HashSet::new()),
    });
    let leadership = controller
        .config
        .lease
        .clone()
        .map(|l| Arc::new(Leadership::new(client.clone(), l)));

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch_pods(controller.clone(), client, writer));
    if let Some(l) = &leadership {
        let l = l.clone();
        tasks.spawn(async move { l.keep().await });
    }
    tokio::select! {
        () = shutdown => {}
        () = controller.reconcile_forever(leadership) => {}
    }
    tasks.abort_all();
    Ok(())
}

fn pods_api(client: kube::Client) -> Api<Pod> {
    Api::all(client)
}

async fn watch_pods(
    controller: Arc<Controller>,
    client: kube::Client,
    writer: reflector::store::Writer<Pod>,
) {
    let mut config = watcher::Config::default();
    if let Some(node) = &controller.config.node {
        config = config.fields(&format!("spec.nodeName={node}"));
    }
    let stream = watcher(pods_api(client), config)
        .default_backoff()
        // The cache holds every pod: keep only what the controller reads.
        .modify(|pod: &mut Pod| {
            pod.managed_fields_mut().clear();
            if let Some(spec) = pod.spec.as_mut() {
                spec.containers.iter_mut().for_each(|c| {
                    c.env = None;
                    c.command = None;
                    c.args = None;
                });
            }
        })
        .reflect(writer);
    futures::pin_mut!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(pod) | watcher::Event::Delete(pod))) => {
                controller.mark(node_of(&pod, controller.config.node.as_deref()));
            }
            Ok(Some(watcher::Event::InitDone)) => controller.mark_all(),
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::error!("{}", Error::WatchEnded);
                return;
            }
            // The backoff retries; the cache keeps the last known pods meanwhile.
            Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
        }
    }
}

fn node_of(pod: &Pod, local: Option<&str>) -> Option<String> {
    local
        .map(str::to_string)
        .or_else(|| pod.spec.as_ref().and_then(|s| s.node_name.clone()))
}

impl Controller {
    fn mark(&self, node: Option<String>) {
        if let Some(node) = node {
            if let Ok(mut d) = self.dirty.lock() {
                d.nodes.insert(node);
            }
            self.wake.notify_one();
        }
    }

    fn mark_all(&self) {
        if let Ok(mut d) = self.dirty.lock() {
            d.all = true;
        }
        self.wake.notify_one();
    }

    async fn reconcile_forever(&self, leadership: Option<Arc<Leadership>>) {
        // Never act on an empty cache: that would remove every limit.
        if self.pods.wait_until_ready().await.is_err() {
            tracing::error!("the pod cache was dropped before it was filled");
            return;
        }
        tracing::info!(pods = self.pods.len(), "pod cache filled; reconciling");
        let mut next_resync = Instant::now() + self.config.resync;
        // Nodes to try again soon, and when.
        let mut retry: HashMap<String, Instant> = HashMap::new();
        self.mark_all();
        loop {
            let next_retry = retry.values().min().copied();
            tokio::select! {
                () = self.wake.notified() => {}
                () = sleep_until(next_resync) => {
                    next_resync = Instant::now() + self.config.resync;
                    self.mark_all();
                }
                () = sleep_until(next_retry.unwrap_or(next_resync)), if next_retry.is_some() => {
                    let now = Instant::now();
                    let due: Vec<_> = retry.iter().filter(|(_, t)| **t <= now).map(|(n, _)| n.clone()).collect();
                    for n in due {
                        retry.remove(&n);
                        self.mark(Some(n));
                    }
                }
            }
            if leadership.as_ref().is_some_and(|l| !l.is_leader()) {
                continue;
            }
            let nodes = self.take_dirty().await;
            let outcomes: Vec<(String, Result<bool, Error>)> = futures::stream::iter(nodes)
                .map(|node| async move {
                    let r = self.sync_node(&node).await;
                    (node, r)
                })
                .buffer_unordered(CONCURRENT_NODES)
                .collect()
                .await;
            for (node, outcome) in outcomes {
                match outcome {
                    Ok(false) => {
                        retry.remove(&node);
                    }
                    Ok(true) => {
                        retry.insert(node, Instant::now() + self.config.retry);
                    }
                    Err(e) => {
                        tracing::warn!(%node, error = %podshaper_api::error_chain(&e), "node not reconciled; retrying");
                        self.daemons.forget(&node).await;
                        retry.insert(node, Instant::now() + self.config.retry * 4);
                    }
                }
            }
            self.forget_gone_pods();
        }
    }

    /// The nodes marked since the last pass ("all" resolved to names).
    async fn take_dirty(&self) -> Vec<String> {
        let (all, mut nodes) = match self.dirty.lock() {
            Ok(mut d) => (std::mem::take(&mut d.all), std::mem::take(&mut d.nodes)),
            Err(_) => (true, HashSet::new()),
        };
        if all {
            match &self.config.node {
                Some(n) => {
                    nodes.insert(n.clone());
                }
                None => {
                    // Every node with pods, and every node at all: a node whose
                    // pods are all gone may still hold their limits.
                    nodes.extend(self.pods.state().iter().filter_map(|p| node_of(p, None)));
                    match self.nodes_api.list(&ListParams::default()).await {
                        Ok(list) => nodes.extend(list.items.iter().map(|n| n.name_any())),
                        Err(e) => tracing::warn!(error = %e, "cannot list nodes"),
                    }
                }
            }
        }
        nodes.into_iter().collect()
    }

    fn forget_gone_pods(&self) {
        let live: HashSet<String> = self.pods.state().iter().filter_map(|p| p.uid()).collect();
        self.events.retain(&live);
        if let Ok(mut u) = self.unannounced.lock() {
            u.retain(|uid| live.contains(uid));
        }
    }

    /// Brings one node in line. `Ok(true)`: some pod's cgroup is not there
    /// yet, try again soon.
    async fn sync_node(&self, node: &str) -> Result<bool, Error> {
        let local = self.config.node.as_deref();
        let pods: Vec<(PodWant, ObjectReference)> = self
            .pods
            .state()
            .iter()
            .filter(|p| node_of(p, local).as_deref() == Some(node))
            .filter(|p| !is_finished(p))
            .filter_map(|p| want(p))
            .collect();
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
        let enforced: HashMap<String, Enforced> = list
            .cgroups
            .iter()
            // an empty path: a gone cgroup whose pins the daemon is removing,
            // unless the daemon holds the limits for a cgroup still to come
            .filter(|c| !c.cgroup.is_empty() || c.waiting)
            .filter_map(|c| Some((c.pod_uid.clone()?, Enforced::from_status(c))))
            .collect();
        // a pod still waiting for its cgroup: look again soon (a daemon
        // restarted meanwhile has forgotten it, and is told again)
        let mut pending = list.cgroups.iter().any(|c| c.waiting);

        for (pod, reference) in &pods {
            let invalid: Vec<_> = pod.bandwidth.invalid().collect();
            self.events.retain_current(&pod.uid, &invalid);
            for i in invalid {
                self.events.invalid(&pod.uid, reference, i);
            }
        }

        let wants: Vec<PodWant> = pods.iter().map(|(p, _)| p.clone()).collect();
        let references: HashMap<&str, &ObjectReference> =
            pods.iter().map(|(p, r)| (p.uid.as_str(), r)).collect();
        self.announce_attached(&list.cgroups, &references);
        for step in plan(&wants, &enforced) {
            match step {
                Step::Apply {
                    uid,
                    namespace,
                    name,
                    limits,
                } => {
                    let request = pb::AttachRequest {
                        target: Some(pod_target(&uid)),
                        egress: limits.egress,
                        ingress: limits.ingress,
                        custom_program: Vec::new(),
                        pod_namespace: namespace.clone(),
                        pod_name: name.clone(),
                        wait_for_cgroup: true,
                    };
                    match timeout(DAEMON_CALL_TIMEOUT, client.attach(request)).await {
                        Ok(Ok(r)) if r.get_ref().waiting => {
                            // The kubelet has not made the pod's cgroup yet:
                            // the daemon attaches the moment it does.
                            tracing::debug!(%node, pod = %format!("{namespace}/{name}"), "limits held by the daemon until the pod's cgroup appears");
                            if let Ok(mut u) = self.unannounced.lock() {
                                u.insert(uid.clone());
                            }
                            pending = true;
                        }
                        Ok(Ok(_)) => {
                            tracing::info!(%node, pod = %format!("{namespace}/{name}"), ?limits.egress, ?limits.ingress, "limits in force");
                            if let Some(r) = references.get(uid.as_str()) {
                                self.events.limited(r, &limits);
                            }
                        }
                        Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                            // The kubelet has not made the pod's cgroup yet.
                            tracing::debug!(%node, pod = %format!("{namespace}/{name}"), "pod cgroup not there yet");
                            pending = true;
                        }
                        Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                            return Err(daemon_error(Box::new(s)));
                        }
                        Ok(Err(s)) => {
                            tracing::warn!(%node, pod = %format!("{namespace}/{name}"), error = %s.message(), "daemon refused the limits");
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
                        Ok(Ok(_)) => tracing::info!(%node, pod_uid = %uid, "limits removed"),
                        // Cgroup already gone: the daemon removes its pins itself.
                        Ok(Err(s)) if s.code() == tonic::Code::NotFound => {}
                        Ok(Err(s)) => {
                            tracing::warn!(%node, pod_uid = %uid, error = %s.message(), "daemon did not remove the limits");
                            pending = true;
                        }
                        Err(e) => return Err(daemon_error(Box::new(e))),
                    }
                }
            }
        }
        Ok(pending)
    }

    /// BandwidthLimited for the pods whose held limits came into force.
    fn announce_attached(
        &self,
        statuses: &[pb::CgroupStatus],
        references: &HashMap<&str, &ObjectReference>,
    ) {
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
                if let Some(r) = references.get(uid) {
                    self.events.limited(r, &Enforced::from_status(s));
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

fn want(pod: &Pod) -> Option<(PodWant, ObjectReference)> {
    let uid = pod.uid()?;
    let bandwidth = PodBandwidth::from_annotations(pod.annotations());
    Some((
        PodWant {
            uid,
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            bandwidth,
        },
        pod.object_ref(&()),
    ))
}
