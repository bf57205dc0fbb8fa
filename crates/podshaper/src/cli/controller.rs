//! `podshaper controller`: watches Pods and tells the daemons what to do.
//! The work is in podshaper-controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};
use podshaper_api::{ClientTlsFiles, DaemonAddress};
use podshaper_controller::{Config, DaemonTarget, LeaseConfig};

use crate::signals::Signals;

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Node mode: watch only this node's pods and talk to the local daemon
    /// (in a DaemonSet, from the downward API's spec.nodeName).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node: Option<String>,
    /// kubeconfig file (default: in-cluster config, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Node mode: the local daemon, unix:///path/to.sock or https://host:port
    /// (default: $PODSHAPER_DAEMON, else unix:///run/podshaper/podshaper.sock).
    #[arg(long, value_name = "ADDRESS", conflicts_with = "daemon_port")]
    daemon: Option<String>,
    /// Cluster mode: reach each node's daemon at its InternalIP and this port
    /// (mutual TLS).
    #[arg(long, value_name = "PORT", requires_all = ["tls_cert", "tls_key", "tls_ca"], conflicts_with = "node")]
    daemon_port: Option<u16>,
    /// Client certificate (PEM) for the daemons' TLS.
    #[arg(long, value_name = "FILE", env = "PODSHAPER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Client key (PEM) for the daemons' TLS.
    #[arg(long, value_name = "FILE", env = "PODSHAPER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that signed the daemons' certificates.
    #[arg(long, value_name = "FILE", env = "PODSHAPER_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Bring every node in line this often, whatever the watch says (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    resync: u64,
    /// Cluster mode: namespace of the Lease that elects one acting controller.
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "kube-system"
    )]
    lease_namespace: String,
    /// This controller's name in the Lease and in Events (default: $POD_NAME, else the host name).
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    identity: Option<String>,
    /// Warn on the pod (a CgroupNotFound Event) when its limits have waited
    /// this long for the kubelet to make its cgroup (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    cgroup_warning: u64,
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz) here.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<SocketAddr>,
}

pub fn run(args: ControllerArgs, signals: Signals) -> Result<ExitCode> {
    let identity = match args.identity.clone() {
        Some(i) => i,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("cannot read the host name (give --identity)")?
            .trim()
            .to_string(),
    };
    let daemons = match (args.daemon_port, &args.node) {
        (Some(port), _) => DaemonTarget::PerNode {
            port,
            tls: ClientTlsFiles {
                cert: args.tls_cert.clone().context("--tls-cert is required")?,
                key: args.tls_key.clone().context("--tls-key is required")?,
                ca: args.tls_ca.clone().context("--tls-ca is required")?,
            },
        },
        (None, Some(_)) => DaemonTarget::Local(match &args.daemon {
            Some(a) => a.parse()?,
            None => DaemonAddress::from_env_or_default()?,
        }),
        (None, None) => bail!(
            "give --node NAME (node mode, local daemon) or --daemon-port PORT with --tls-cert, \
             --tls-key and --tls-ca (cluster mode)"
        ),
    };
    let lease = match &args.node {
        Some(_) => None,
        None => Some(LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: "podshaper-controller".into(),
            identity: identity.clone(),
            duration: Duration::from_secs(15),
        }),
    };
    if args.resync == 0 {
        bail!("--resync must be at least 1 second");
    }
    let config = Config {
        node: args.node.clone(),
        daemons,
        resync: Duration::from_secs(args.resync),
        retry: Duration::from_millis(500),
        lease,
        instance: identity,
        cgroup_warning: Duration::from_secs(args.cgroup_warning),
        metrics_addr: args.metrics_addr,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    signals.handle(move |signal| {
        tracing::info!(?signal, "stopping; limits stay in force");
        if let Some(tx) = tx.take() {
            let _ = tx.send(());
        }
    });
    runtime.block_on(async move {
        let client = kube_client(args.kubeconfig.as_deref()).await?;
        tracing::info!(node = ?config.node, "controller starting");
        podshaper_controller::run(client, config, async move {
            let _ = rx.await;
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration (in-cluster or ~/.kube/config); give --kubeconfig",
        )?,
    };
    kube::Client::try_from(config).context("cannot make a Kubernetes client")
}
