//! What the plugin asks the API server: the pods, their nodes, the
//! podshaper daemon pod on each node, and that daemon's `/status` through
//! the pods/proxy subresource (the daemon listens on the node's addresses,
//! hostNetwork, at the port deploy/daemonset.yaml names `metrics`).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use podshaper_api::CgroupDocument;

use super::CommonArgs;

/// deploy/namespace.yaml
pub const SYSTEM_NAMESPACE: &str = "podshaper-system";
/// The DaemonSet's pods' label (deploy/daemonset.yaml).
const DAEMON_SELECTOR: &str = "app.kubernetes.io/name=podshaper";
/// The daemon container and its port for metrics and `/status`.
const DAEMON_CONTAINER: &str = "daemon";
const METRICS_PORT_NAME: &str = "metrics";
pub const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";
pub const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";

#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    default_namespace: String,
    system_namespace: String,
}

/// A pod as the plugin needs it.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    /// its bandwidth annotations, `key=value`
    pub annotations: Vec<String>,
}

/// The podshaper daemon pod on one node.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub node: String,
    pub pod: String,
    port: Result<i32, String>,
    phase: String,
}

/// One read of a daemon's `/status`, and when it was taken.
pub struct Read {
    pub cgroups: Vec<CgroupDocument>,
    /// the middle of the request: the daemon read its counters in between
    pub at: Instant,
}

impl Cluster {
    /// A client as kubectl makes one: --kubeconfig, else $KUBECONFIG, else
    /// ~/.kube/config (else the in-cluster account), with --context.
    pub async fn connect(args: &CommonArgs) -> Result<Self> {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..Default::default()
        };
        let config = match (&args.kubeconfig, &args.context) {
            (Some(path), _) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .with_context(|| format!("invalid kubeconfig {}", path.display()))?
            }
            (None, Some(context)) => kube::Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("cannot use kubeconfig context {context}"))?,
            (None, None) => kube::Config::infer().await.context(
                "no Kubernetes configuration ($KUBECONFIG, ~/.kube/config or in-cluster); give --kubeconfig",
            )?,
        };
        let default_namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).context("cannot make a Kubernetes client")?;
        Ok(Self {
            client,
            default_namespace,
            system_namespace: args.podshaper_namespace.clone(),
        })
    }

    /// -n, else the context's namespace.
    pub fn namespace(&self, args: &CommonArgs) -> String {
        args.namespace
            .clone()
            .unwrap_or_else(|| self.default_namespace.clone())
    }

    pub async fn pod(&self, namespace: &str, name: &str) -> Result<PodRef> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(pod)) => Ok(pod_ref(&pod)),
            Ok(None) => bail!("pod {namespace}/{name} not found"),
            Err(e) => Err(anyhow!(e).context(format!("cannot get pod {namespace}/{name}"))),
        }
    }

    /// The pods of the namespace (or of all, with -A).
    pub async fn pods(&self, args: &CommonArgs) -> Result<Vec<PodRef>> {
        let (api, scope): (Api<Pod>, String) = match args.all_namespaces {
            true => (Api::all(self.client.clone()), "any namespace".into()),
            false => {
                let ns = self.namespace(args);
                (
                    Api::namespaced(self.client.clone(), &ns),
                    format!("namespace {ns}"),
                )
            }
        };
        let list = api
            .list(&ListParams::default())
            .await
            .with_context(|| format!("cannot list the pods of {scope}"))?;
        Ok(list.items.iter().map(pod_ref).collect())
    }

    /// The daemon pod of each node that has one.
    pub async fn daemons(&self) -> Result<HashMap<String, Daemon>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.system_namespace);
        let list = api
            .list(&ListParams::default().labels(DAEMON_SELECTOR))
            .await
            .with_context(|| {
                format!(
                    "cannot list podshaper's daemon pods in namespace {}",
                    self.system_namespace
                )
            })?;
        let mut by_node = HashMap::new();
        for pod in &list.items {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let daemon = Daemon {
                node: node.clone(),
                pod: pod.metadata.name.clone().unwrap_or_default(),
                port: metrics_port(pod),
                phase: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Unknown".into()),
            };
            // a node has one daemon pod; while one replaces another, the running one
            let replace = match by_node.get(&node) {
                Some(Daemon { phase, .. }) => phase != "Running",
                None => true,
            };
            if replace {
                by_node.insert(node, daemon);
            }
        }
        Ok(by_node)
    }

    /// The error for a node without a daemon pod.
    pub fn no_daemon(&self, node: &str) -> anyhow::Error {
        anyhow!(
            "no podshaper daemon on node {node}: namespace {} has no pod labelled {DAEMON_SELECTOR} there \
             (is podshaper installed, `kubectl apply -k deploy/`? does the node's taint keep the DaemonSet off?)",
            self.system_namespace
        )
    }

    /// One read of the daemon's `/status` through the API server.
    pub async fn read(&self, daemon: &Daemon) -> Result<Read> {
        let ns = &self.system_namespace;
        let (node, pod) = (&daemon.node, &daemon.pod);
        if daemon.phase != "Running" {
            bail!(
                "the podshaper daemon on node {node} is unreachable: its pod {ns}/{pod} is {}",
                daemon.phase
            );
        }
        let port = daemon
            .port
            .as_ref()
            .map_err(|e| anyhow!("the podshaper daemon on node {node} is unreachable: {e}"))?;
        let path = format!("/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/status");
        let request = http::Request::get(&path)
            .body(Vec::new())
            .with_context(|| format!("cannot make the request {path}"))?;
        let sent = Instant::now();
        let cgroups = self
            .client
            .request::<Vec<CgroupDocument>>(request)
            .await
            .map_err(|e| proxy_error(e, node, &format!("{ns}/{pod}:{port}")))?;
        Ok(Read {
            cgroups,
            at: sent + sent.elapsed() / 2,
        })
    }
}

fn pod_ref(pod: &Pod) -> PodRef {
    let annotations = pod
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| [EGRESS_ANNOTATION, INGRESS_ANNOTATION].contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    PodRef {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        annotations,
    }
}

/// The port the daemon container names `metrics`.
fn metrics_port(pod: &Pod) -> Result<i32, String> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter(|c| c.name == DAEMON_CONTAINER)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(METRICS_PORT_NAME))
        .map(|p| p.container_port)
        .ok_or_else(|| {
            format!(
                "its pod {} names no port {METRICS_PORT_NAME:?} in container {DAEMON_CONTAINER:?} \
                 (deploy/daemonset.yaml gives the daemon --metrics-addr and that port)",
                pod.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

/// What went wrong between the plugin, the API server and the daemon.
fn proxy_error(e: kube::Error, node: &str, target: &str) -> anyhow::Error {
    let unreachable =
        format!("the podshaper daemon on node {node} is unreachable (pods/proxy to {target})");
    match &e {
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "permission denied reading the podshaper daemon on node {node}: \
             `kubectl podshaper` needs get on pods/proxy in namespace {} \
             (deploy/kubectl-plugin-rbac.yaml): {}",
            target.split('/').next().unwrap_or_default(),
            s.message
        ),
        kube::Error::Api(s) if s.code == 404 => anyhow!(
            "{unreachable}: the daemon serves no /status (a podshaper older than this plugin?): {}",
            s.message
        ),
        kube::Error::Api(s) => anyhow!("{unreachable}: {} (HTTP {})", s.message.trim(), s.code),
        kube::Error::SerdeError(_) => anyhow!(e).context(format!(
            "the podshaper daemon on node {node} answered something that is not its status"
        )),
        _ => anyhow!(e).context(unreachable),
    }
}
