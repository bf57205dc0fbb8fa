//! The controller's loop: a pod watch feeding a local cache, and passes that
//! bring each node whose pods changed (and every node, periodically) to
//! exactly the limits its pods ask for.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use crate::crd::BandwidthPolicy;
use crate::daemons::{DaemonTarget, Daemons};
use crate::events::Events;
use crate::lease::{Leadership, LeaseConfig};
use crate::metrics::{ErrorKind, Metrics};
use crate::pending::Pending;
use crate::policy_status::StatusWriter;
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
    /// How long a pod's limits may wait for its cgroup before a
    /// CgroupNotFound Warning.
    pub cgroup_warning: Duration,
    /// Serve /metrics, /healthz and /readyz here.
    pub metrics_addr: Option<SocketAddr>,
}

/// How long one daemon call may take before the node is retried later.
pub(crate) const DAEMON_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Nodes synced at once in cluster mode.
const CONCURRENT_NODES: usize = 16;

/// Nodes that need a pass.
#[derive(Default)]
struct Dirty {
    all: bool,
    nodes: HashSet<String>,
}

pub(crate) struct Controller {
    pub(crate) config: Config,
    pub(crate) pods: Store<Pod>,
    pub(crate) policies: Store<BandwidthPolicy>,
    /// The BandwidthPolicy CRD is not installed: there are no policies.
    policies_absent: Notify,
    pub(crate) status_writer: StatusWriter,
    pub(crate) daemons: Daemons,
    pub(crate) events: Events,
    pub(crate) metrics: Arc<Metrics>,
    nodes_api: Api<Node>,
    dirty: Mutex<Dirty>,
    wake: Notify,
    /// Pods whose limits a daemon holds until their cgroup appears: their
    /// BandwidthLimited event waits until the limits are in force.
    pub(crate) unannounced: Mutex<HashSet<String>>,
    /// Changes not yet seen through, and pods waiting for their cgroup.
    pub(crate) pending: Mutex<Pending>,
}

/// Runs until `shutdown` completes. Limits stay in force when it returns.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (pods, writer) = reflector::store::<Pod>();
    let (policies, policy_writer) = reflector::store::<BandwidthPolicy>();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    // bound before anything else, so that a taken port fails the start
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Metrics { addr, source })?,
        ),
        None => None,
    };
    let controller = Arc::new(Controller {
        daemons: Daemons::new(config.daemons.clone(), client.clone()),
        events: Events::new(client.clone(), config.instance.clone(), metrics.clone()),
        metrics: metrics.clone(),
        nodes_api: Api::all(client.clone()),
        pods,
        policies,
        policies_absent: Notify::new(),
        status_writer: StatusWriter::new(client.clone(), metrics.clone()),
        config,
        dirty: Mutex::new(Dirty::default()),
        wake: Notify::new(),
        unannounced: Mutex::new(HashSet::new()),
        pending: Mutex::new(Pending::default()),
    });
    let leadership = controller
        .config
        .lease
        .clone()
        .map(|l| Arc::new(Leadership::new(client.clone(), l)));

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "serving metrics");
        let ready: podshaper_telemetry::Readiness = Arc::new(move || {
            let ready = metrics.is_ready();
            Box::pin(async move { ready })
        });
        tasks.spawn(async move {
            // stopped with the other tasks
            if let Err(e) =
                podshaper_telemetry::serve(listener, registry, ready, std::future::pending()).await
            {
                tracing::error!(error = %podshaper_api::error_chain(&e), "metrics server stopped");
            }
        });
    }
    tasks.spawn(watch_policies(
        controller.clone(),
        client.clone(),
        policy_writer,
    ));
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
                let node = node_of(&pod, controller.config.node.as_deref());
                if let (Some(uid), Some(node), Ok(mut p)) =
                    (pod.uid(), node.as_deref(), controller.pending.lock())
                {
                    p.changed(&uid, node, Instant::now().into_std());
                }
                controller.mark(node);
            }
            Ok(Some(watcher::Event::InitDone)) => controller.mark_all(),
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::error!("{}", Error::WatchEnded);
                return;
            }
            // The backoff retries; the cache keeps the last known pods meanwhile.
            Err(e) => {
                controller.metrics.error(ErrorKind::Watch);
                tracing::warn!(error = %e, "pod watch failed; retrying");
            }
        }
    }
}

/// Policies feed their own cache; a change of a policy's spec, or its
/// removal, brings every node in line (a change of its status does not).
async fn watch_policies(
    controller: Arc<Controller>,
    client: kube::Client,
    writer: reflector::store::Writer<BandwidthPolicy>,
) {
    let stream = watcher(
        Api::<BandwidthPolicy>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|p: &mut BandwidthPolicy| p.managed_fields_mut().clear())
    .reflect(writer);
    futures::pin_mut!(stream);
    // the generation each policy was last seen at, by UID
    let mut seen: HashMap<String, Option<i64>> = HashMap::new();
    // whether the missing CRD was logged
    let mut told = false;
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                let uid = p.uid().unwrap_or_default();
                let generation = p.metadata.generation;
                if seen.insert(uid, generation) != Some(generation) {
                    controller.mark_all();
                }
            }
            Ok(Some(watcher::Event::Delete(p))) => {
                seen.remove(&p.uid().unwrap_or_default());
                controller.mark_all();
            }
            Ok(Some(watcher::Event::InitDone)) => controller.mark_all(),
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::error!("the BandwidthPolicy watch ended");
                return;
            }
            Err(e) => {
                controller.metrics.error(ErrorKind::Watch);
                if crd_missing(&e) {
                    // limits from annotations go on; policies count once the CRD is there
                    if !told {
                        tracing::warn!("the BandwidthPolicy CRD is not installed (deploy/bandwidthpolicy-crd.yaml); no policy applies until it is");
                        told = true;
                    }
                    controller.policies_absent.notify_one();
                } else {
                    tracing::warn!(error = %e, "BandwidthPolicy watch failed; retrying");
                }
            }
        }
    }
}

/// The API server has no such resource: a 404 for the list or the watch
/// (its body is a plain "404 page not found", not a Status).
fn crd_missing(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

pub(crate) fn node_of(pod: &Pod, local: Option<&str>) -> Option<String> {
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
        // ... nor on an empty policy cache, which would remove every limit
        // that comes from a policy
        tokio::select! {
            r = self.policies.wait_until_ready() => if r.is_err() {
                tracing::error!("the policy cache was dropped before it was filled");
                return;
            },
            () = self.policies_absent.notified() => {}
        }
        tracing::info!(
            pods = self.pods.len(),
            policies = self.policies.len(),
            "pod and policy caches filled; reconciling"
        );
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
                // a replica on standby, its cache filled, is ready to take over
                self.metrics.set_ready();
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
            if outcomes.iter().all(|(_, o)| o.is_ok()) {
                self.metrics.set_ready();
            }
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
                        Err(e) => {
                            self.metrics.error(ErrorKind::NodeList);
                            tracing::warn!(error = %e, "cannot list nodes");
                        }
                    }
                }
            }
        }
        nodes.into_iter().collect()
    }

    fn forget_gone_pods(&self) {
        let live: HashSet<String> = self.pods.state().iter().filter_map(|p| p.uid()).collect();
        self.events.retain(&live);
        if let Ok(mut p) = self.pending.lock() {
            p.retain(&live);
        }
        if let Ok(mut u) = self.unannounced.lock() {
            u.retain(|uid| live.contains(uid));
        }
    }
}
