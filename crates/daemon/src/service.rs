//! The gRPC service: requests in, node operations, statuses out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use podshaper_api::pb;
use podshaper_rate::{ByteSize, Rate};
use podshaper_shaper::{
    Cgroup, CgroupStatus, ConfineError, DirectionLimit, Limits, Node, NodeError,
};
use tonic::{Request, Response, Status};

use crate::custom::CustomPrograms;
use crate::waiting::{WaitingPod, MAX_WAITING};

/// Names of the pod a cgroup belongs to, for metrics labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// What the service and the metrics share.
/// Locks are taken in this order: node, waiting, pod_names.
/// The node is locked only on the blocking pool ([`State::blocking`]).
pub struct State {
    pub node: Mutex<Node>,
    /// Limits held by pod UID for pods whose cgroup does not exist yet.
    pub waiting: Mutex<HashMap<String, WaitingPod>>,
    pub pod_names: Mutex<HashMap<u64, PodName>>,
    pub custom: Option<Mutex<CustomPrograms>>,
}

fn poisoned() -> Status {
    Status::internal("daemon state poisoned by an earlier failure")
}

impl State {
    pub fn new(node: Node, custom: Option<CustomPrograms>) -> Self {
        Self {
            node: Mutex::new(node),
            waiting: Mutex::new(HashMap::new()),
            pod_names: Mutex::new(HashMap::new()),
            custom: custom.map(Mutex::new),
        }
    }

    pub fn node(&self) -> Result<MutexGuard<'_, Node>, Status> {
        self.node.lock().map_err(|_| poisoned())
    }

    pub fn waiting(&self) -> Result<MutexGuard<'_, HashMap<String, WaitingPod>>, Status> {
        self.waiting.lock().map_err(|_| poisoned())
    }

    fn name_of(&self, cgroup_id: u64) -> Option<PodName> {
        self.pod_names.lock().ok()?.get(&cgroup_id).cloned()
    }

    /// Runs `work` on the state on a thread of tokio's blocking pool, and
    /// waits for it without holding a thread of the runtime.
    ///
    /// Everything that locks the node goes through here. The node's work
    /// runs `ip` and `tc` (an ingress queue is a few processes) and walks
    /// sockets under the node's mutex, which serializes every change to the
    /// node: an attach and a detach of the same cgroup each see the whole
    /// effect of the other, never half of it. A runtime thread that took
    /// that mutex would stall, and with it the other requests, the metrics
    /// and the sweeps, for as long as a `tc` run takes (its own holder's or
    /// another's); a thread of the blocking pool waits instead. Work started
    /// here runs to its end even if the request that asked for it is
    /// dropped (a timeout, a client gone), so no change is left half made.
    pub async fn blocking<T, F>(self: &Arc<Self>, work: F) -> Result<T, tokio::task::JoinError>
    where
        T: Send + 'static,
        F: FnOnce(&State) -> T + Send + 'static,
    {
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&state)).await
    }
}

pub struct ShaperService {
    state: Arc<State>,
}

impl ShaperService {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// Runs a request's work with [`State::blocking`].
    async fn blocking<T, F>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&State) -> Result<T, Status> + Send + 'static,
    {
        self.state
            .blocking(work)
            .await
            .map_err(|e| Status::internal(format!("the request's work on the node failed: {e}")))?
    }
}

fn resolve(node: &Node, target: Option<&pb::Target>) -> Result<Cgroup, Status> {
    resolve_target(node.root(), target)
}

/// Holds a pod's limits until its cgroup appears (crate::waiting).
fn hold(
    state: &State,
    uid: &str,
    limits: Limits,
    name: Option<PodName>,
) -> Result<pb::CgroupStatus, Status> {
    let mut waiting = state.waiting()?;
    if waiting.len() >= MAX_WAITING && !waiting.contains_key(uid) {
        return Err(Status::resource_exhausted(format!(
            "{MAX_WAITING} pods already wait for their cgroup; ask again when fewer do"
        )));
    }
    let since = waiting
        .get(uid)
        .map_or_else(std::time::Instant::now, |w| w.since);
    let pod = WaitingPod {
        limits,
        name,
        since,
    };
    let status = waiting_pb(uid, &pod);
    if waiting.insert(uid.to_string(), pod).is_none() {
        tracing::info!(
            pod_uid = uid,
            ?limits,
            "limits held until the pod's cgroup appears"
        );
    }
    Ok(status)
}

/// A waiting pod's status: its limits, no cgroup yet.
fn waiting_pb(uid: &str, pod: &WaitingPod) -> pb::CgroupStatus {
    let (namespace, name) = pod
        .name
        .as_ref()
        .map(|n| (n.namespace.clone(), n.name.clone()))
        .unwrap_or_default();
    pb::CgroupStatus {
        pod_uid: Some(uid.to_string()),
        egress: limit_pb(pod.limits.egress),
        ingress: limit_pb(pod.limits.ingress),
        waiting: true,
        pod_namespace: namespace,
        pod_name: name,
        ..Default::default()
    }
}

fn limit_pb(d: Option<DirectionLimit>) -> Option<pb::DirectionLimit> {
    d.map(|d| pb::DirectionLimit {
        bits_per_second: d.rate.bits_per_sec(),
        burst_bytes: d.burst.bytes(),
    })
}

fn pod_uid(target: Option<&pb::Target>) -> Option<&str> {
    match target?.target.as_ref()? {
        pb::target::Target::PodUid(uid) => Some(uid),
        pb::target::Target::Cgroup(_) => None,
    }
}

fn confine_status(e: ConfineError) -> Status {
    let message = e.to_string();
    match e {
        ConfineError::Missing { .. } | ConfineError::NoPodCgroup { .. } => {
            Status::not_found(message)
        }
        ConfineError::Outside { .. } => Status::permission_denied(message),
        ConfineError::Io { .. } | ConfineError::Cgroup(_) => Status::internal(message),
        _ => Status::invalid_argument(message),
    }
}

fn node_status(e: NodeError) -> Status {
    let message = podshaper_api::error_chain(&e);
    match e {
        NodeError::Nested { .. } => Status::failed_precondition(message),
        NodeError::NotAttached { .. } => Status::not_found(message),
        _ => Status::internal(message),
    }
}

fn direction(
    which: &str,
    d: Option<&pb::DirectionLimit>,
) -> Result<Option<DirectionLimit>, Status> {
    let Some(d) = d else { return Ok(None) };
    let rate = Rate::from_bits_per_sec(d.bits_per_second)
        .map_err(|_| Status::invalid_argument(format!(
            "{which} rate {} bit/s is outside the accepted range 1k..=1P bit/s (1000 to 1000000000000000 bit/s)",
            d.bits_per_second
        )))?;
    let burst = match d.burst_bytes {
        0 => None,
        b => Some(
            ByteSize::from_bytes(b)
                .map_err(|e| Status::invalid_argument(format!("{which} burst: {e}")))?,
        ),
    };
    Ok(Some(DirectionLimit::new(rate, burst)))
}

/// The limits an attach request asks for, checked against the bounds.
pub fn requested_limits(req: &pb::AttachRequest) -> Result<Limits, Status> {
    Ok(Limits {
        egress: direction("egress", req.egress.as_ref())?,
        ingress: direction("ingress", req.ingress.as_ref())?,
    })
}

/// The cgroup a request's target names, confined to `root`.
pub fn resolve_target(
    root: &podshaper_shaper::CgroupRoot,
    target: Option<&pb::Target>,
) -> Result<Cgroup, Status> {
    resolve_confined(root, target).map_err(confine_status)
}

fn resolve_confined(
    root: &podshaper_shaper::CgroupRoot,
    target: Option<&pb::Target>,
) -> Result<Cgroup, ConfineError> {
    match target.and_then(|t| t.target.as_ref()) {
        None => Err(ConfineError::NoTarget),
        Some(pb::target::Target::Cgroup(path)) => root.resolve(path),
        Some(pb::target::Target::PodUid(uid)) => root.resolve_pod(uid),
    }
}

/// A limited cgroup's status, with its pod's names when the daemon was told.
pub fn to_pb(s: &CgroupStatus, name: Option<PodName>) -> pb::CgroupStatus {
    let limit = limit_pb;
    let counters = |c: &podshaper_shaper::DirectionCounters| pb::DirectionCounters {
        bytes: c.bytes,
        packets: c.packets,
        dropped: c.dropped,
        marked: c.marked,
    };
    pb::CgroupStatus {
        cgroup: s
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        cgroup_id: s.cgroup_id,
        pod_uid: s.pod_uid.clone(),
        egress: limit(s.limits.egress),
        ingress: limit(s.limits.ingress),
        egress_counters: Some(counters(&s.counters.egress)),
        ingress_counters: Some(counters(&s.counters.ingress)),
        waiting: false,
        pod_namespace: name
            .as_ref()
            .map(|n| n.namespace.clone())
            .unwrap_or_default(),
        pod_name: name.map(|n| n.name).unwrap_or_default(),
        ingress_mode: s
            .ingress_mode
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
        problems: s.problems.clone(),
    }
}

#[tonic::async_trait]
impl pb::shaper_server::Shaper for ShaperService {
    async fn attach(
        &self,
        request: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::CgroupStatus>, Status> {
        let req = request.into_inner();
        let limits = requested_limits(&req)?;
        self.blocking(move |state| attach(state, &req, limits))
            .await
            .map(Response::new)
    }

    async fn detach(
        &self,
        request: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachResponse>, Status> {
        let req = request.into_inner();
        self.blocking(move |state| detach(state, &req))
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::CgroupStatus>, Status> {
        let req = request.into_inner();
        self.blocking(move |state| status(state, &req))
            .await
            .map(Response::new)
    }

    async fn list(
        &self,
        _request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.blocking(list).await.map(Response::new)
    }
}

/// Sets a cgroup's limits (or attaches a custom program to it), or holds
/// them for a pod whose cgroup is not there yet.
fn attach(
    state: &State,
    req: &pb::AttachRequest,
    limits: Limits,
) -> Result<pb::CgroupStatus, Status> {
    if !req.custom_program.is_empty() {
        let custom = state.custom.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "custom BPF programs are refused: the daemon runs without --allow-custom-programs",
            )
        })?;
        let cgroup = resolve(&*state.node()?, req.target.as_ref())?;
        let mut custom = custom
            .lock()
            .map_err(|_| Status::internal("custom program state poisoned"))?;
        custom
            .attach(&cgroup, &req.custom_program)
            .map_err(|e| Status::invalid_argument(podshaper_api::error_chain(&e)))?;
        tracing::info!(cgroup = %cgroup.path().display(), "custom program attached");
        return Ok(pb::CgroupStatus {
            cgroup: cgroup.path().display().to_string(),
            cgroup_id: cgroup.id(),
            ..Default::default()
        });
    }
    if limits.is_unlimited() {
        return Err(Status::invalid_argument(
            "nothing to limit: give an egress and/or an ingress rate (to remove limits, detach)",
        ));
    }
    let name = (!req.pod_name.is_empty()).then(|| PodName {
        namespace: req.pod_namespace.clone(),
        name: req.pod_name.clone(),
    });
    let status = {
        let mut node = state.node()?;
        let cgroup = match resolve_confined(node.root(), req.target.as_ref()) {
            Ok(c) => c,
            Err(e @ ConfineError::NoPodCgroup { .. }) => {
                return match pod_uid(req.target.as_ref()) {
                    Some(uid) if req.wait_for_cgroup => hold(state, uid, limits, name),
                    _ => Err(confine_status(e)),
                };
            }
            Err(e) => return Err(confine_status(e)),
        };
        let status = node.apply(&cgroup, &limits).map_err(node_status)?;
        if let Some(uid) = pod_uid(req.target.as_ref()) {
            state.waiting()?.remove(uid);
        }
        status
    };
    if let (Some(name), Ok(mut names)) = (&name, state.pod_names.lock()) {
        names.insert(status.cgroup_id, name.clone());
    }
    tracing::info!(cgroup = ?status.path, ?limits, "limits applied");
    Ok(to_pb(&status, name))
}

/// Removes a cgroup's limits (and custom program), or those held for a pod.
fn detach(state: &State, req: &pb::DetachRequest) -> Result<pb::DetachResponse, Status> {
    let id = {
        let mut node = state.node()?;
        let held = match pod_uid(req.target.as_ref()) {
            Some(uid) => state.waiting()?.remove(uid).is_some(),
            None => false,
        };
        let cgroup = match resolve_confined(node.root(), req.target.as_ref()) {
            Ok(c) => c,
            Err(ConfineError::NoPodCgroup { .. }) if held => {
                tracing::info!(pod_uid = ?pod_uid(req.target.as_ref()), "limits held for a pod that never got its cgroup removed");
                return Ok(pb::DetachResponse {});
            }
            Err(e) => return Err(confine_status(e)),
        };
        let had_custom = match &state.custom {
            Some(c) => c.lock().map(|mut c| c.detach(cgroup.id())).unwrap_or(false),
            None => false,
        };
        match node.remove(&cgroup) {
            Ok(()) => {}
            Err(NodeError::NotAttached { .. }) if had_custom => {}
            Err(e) => return Err(node_status(e)),
        }
        tracing::info!(cgroup = %cgroup.path().display(), "limits removed");
        cgroup.id()
    };
    if let Ok(mut names) = state.pod_names.lock() {
        names.remove(&id);
    }
    Ok(pb::DetachResponse {})
}

/// A limited cgroup's status, or the limits held for a waiting pod.
fn status(state: &State, req: &pb::StatusRequest) -> Result<pb::CgroupStatus, Status> {
    let node = state.node()?;
    let cgroup = match resolve_confined(node.root(), req.target.as_ref()) {
        Ok(c) => c,
        Err(e @ ConfineError::NoPodCgroup { .. }) => {
            let uid = pod_uid(req.target.as_ref()).unwrap_or_default();
            return match state.waiting()?.get(uid) {
                Some(pod) => Ok(waiting_pb(uid, pod)),
                None => Err(confine_status(e)),
            };
        }
        Err(e) => return Err(confine_status(e)),
    };
    match node.status(&cgroup).map_err(node_status)? {
        Some(s) => Ok(to_pb(&s, state.name_of(s.cgroup_id))),
        None => Err(Status::not_found(format!(
            "cgroup {} has no limits attached",
            cgroup.path().display()
        ))),
    }
}

/// Every limited cgroup, then every waiting pod.
pub(crate) fn list(state: &State) -> Result<pb::ListResponse, Status> {
    let node = state.node()?;
    let mut cgroups: Vec<pb::CgroupStatus> = node
        .list()
        .map_err(node_status)?
        .iter()
        .map(|s| to_pb(s, state.name_of(s.cgroup_id)))
        .collect();
    let mut waiting: Vec<pb::CgroupStatus> = state
        .waiting()?
        .iter()
        .map(|(uid, pod)| waiting_pb(uid, pod))
        .collect();
    waiting.sort_by(|a, b| a.pod_uid.cmp(&b.pod_uid));
    cgroups.extend(waiting);
    Ok(pb::ListResponse { cgroups })
}
