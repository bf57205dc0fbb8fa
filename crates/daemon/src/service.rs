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

/// Names of the pod a cgroup belongs to, for metrics labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// What the service and the metrics share.
pub struct State {
    pub node: Mutex<Node>,
    pub pod_names: Mutex<HashMap<u64, PodName>>,
    pub custom: Option<Mutex<CustomPrograms>>,
}

impl State {
    pub fn node(&self) -> Result<MutexGuard<'_, Node>, Status> {
        self.node
            .lock()
            .map_err(|_| Status::internal("daemon state poisoned by an earlier failure"))
    }
}

pub struct ShaperService {
    state: Arc<State>,
}

impl ShaperService {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    fn resolve(node: &Node, target: Option<&pb::Target>) -> Result<Cgroup, Status> {
        resolve_target(node.root(), target)
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
    let target = target
        .and_then(|t| t.target.as_ref())
        .ok_or_else(|| Status::invalid_argument("no target: give a cgroup path or a pod UID"))?;
    let resolved = match target {
        pb::target::Target::Cgroup(path) => root.resolve(path),
        pb::target::Target::PodUid(uid) => root.resolve_pod(uid),
    };
    resolved.map_err(confine_status)
}

pub fn to_pb(s: &CgroupStatus) -> pb::CgroupStatus {
    let limit = |d: Option<DirectionLimit>| {
        d.map(|d| pb::DirectionLimit {
            bits_per_second: d.rate.bits_per_sec(),
            burst_bytes: d.burst.bytes(),
        })
    };
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
        if !req.custom_program.is_empty() {
            let custom = self.state.custom.as_ref().ok_or_else(|| {
                Status::failed_precondition(
                    "custom BPF programs are refused: the daemon runs without --allow-custom-programs",
                )
            })?;
            let cgroup = Self::resolve(&*self.state.node()?, req.target.as_ref())?;
            let mut custom = custom
                .lock()
                .map_err(|_| Status::internal("custom program state poisoned"))?;
            custom
                .attach(&cgroup, &req.custom_program)
                .map_err(|e| Status::invalid_argument(podshaper_api::error_chain(&e)))?;
            tracing::info!(cgroup = %cgroup.path().display(), "custom program attached");
            return Ok(Response::new(pb::CgroupStatus {
                cgroup: cgroup.path().display().to_string(),
                cgroup_id: cgroup.id(),
                ..Default::default()
            }));
        }
        if limits.is_unlimited() {
            return Err(Status::invalid_argument(
                "nothing to limit: give an egress and/or an ingress rate (to remove limits, detach)",
            ));
        }
        let status = {
            let mut node = self.state.node()?;
            let cgroup = Self::resolve(&node, req.target.as_ref())?;
            node.apply(&cgroup, &limits).map_err(node_status)?
        };
        if !req.pod_name.is_empty() {
            if let Ok(mut names) = self.state.pod_names.lock() {
                names.insert(
                    status.cgroup_id,
                    PodName {
                        namespace: req.pod_namespace.clone(),
                        name: req.pod_name.clone(),
                    },
                );
            }
        }
        tracing::info!(cgroup = ?status.path, ?limits, "limits applied");
        Ok(Response::new(to_pb(&status)))
    }

    async fn detach(
        &self,
        request: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachResponse>, Status> {
        let req = request.into_inner();
        let id = {
            let mut node = self.state.node()?;
            let cgroup = Self::resolve(&node, req.target.as_ref())?;
            let had_custom = match &self.state.custom {
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
        if let Ok(mut names) = self.state.pod_names.lock() {
            names.remove(&id);
        }
        Ok(Response::new(pb::DetachResponse {}))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::CgroupStatus>, Status> {
        let req = request.into_inner();
        let node = self.state.node()?;
        let cgroup = Self::resolve(&node, req.target.as_ref())?;
        match node.status(&cgroup).map_err(node_status)? {
            Some(s) => Ok(Response::new(to_pb(&s))),
            None => Err(Status::not_found(format!(
                "cgroup {} has no limits attached",
                cgroup.path().display()
            ))),
        }
    }

    async fn list(
        &self,
        _request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let node = self.state.node()?;
        let cgroups = node
            .list()
            .map_err(node_status)?
            .iter()
            .map(to_pb)
            .collect();
        Ok(Response::new(pb::ListResponse { cgroups }))
    }
}
