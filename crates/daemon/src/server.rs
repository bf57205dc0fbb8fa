//! Starting the daemon: open the node, serve the API and the metrics, sweep
//! stale pins, and stop on request. Stopping keeps every limit in force:
//! removing one is an explicit detach.

use std::fs;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use podshaper_api::pb::shaper_server::ShaperServer;
use podshaper_shaper::{CgroupRoot, Node};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::custom::CustomPrograms;
use crate::metrics;
use crate::service::{ShaperService, State};

/// How often pins whose cgroup disappeared are cleaned up.
const STALE_SWEEP: Duration = Duration::from_secs(5);
/// How often limited pods are checked for a missing ingress queue (their
/// processes joined after the limit, or the daemon restarted).
const QUEUE_SWEEP: Duration = Duration::from_secs(1);
/// A request that takes longer than this is failed (a stuck client cannot hold the node).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `pass` on the node every `interval` until the daemon stops, on a
/// thread of the blocking pool (crate::service::State::blocking says why).
async fn every(
    interval: Duration,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    pass: fn(&mut Node),
) -> Result<()> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let done = state
            .blocking(move |state| match state.node.lock() {
                Ok(mut node) => pass(&mut node),
                Err(_) => tracing::error!("daemon state poisoned"),
            })
            .await;
        if let Err(e) = done {
            // a pass that panicked ends this task as it would have inline
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            return Ok(());
        }
    }
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// mode of the socket file (0600: root only)
    pub socket_mode: u32,
    pub listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub bpffs_dir: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub allow_custom_programs: bool,
    /// Queue ingress in front of pods with a network namespace of their own
    /// (an ifb with htb in the pod's namespace), besides the cgroup policer.
    pub ingress_queue: bool,
    /// Queue the ingress of hostNetwork pods too, in one queue in the
    /// node's namespace (a filter on every interface of the node).
    pub host_ingress_queue: bool,
}

/// Gives the heap that loading the shaper freed back to the kernel. Loading
/// parses the kernel's BTF (several MB, for the TCP iterator), and glibc
/// keeps freed heap mapped unless asked: the daemon's RSS was 25 MiB idle
/// instead of 10.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of glibc's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let tls = tls_config(&config)?;
    let root = CgroupRoot::new(config.cgroup_root.as_deref()).context("invalid --cgroup-root")?;
    let (mut node, adoption) =
        Node::open(&config.bpffs_dir, root).context("cannot open the shaper state")?;
    release_freed_heap();
    log_refinements(&node);
    if podshaper_shaper::netns::in_init_namespace() == Some(false) {
        // Pods in its namespace would be taken for hostNetwork pods, and
        // hostNetwork pods (in the node's) get no queue.
        tracing::warn!("the daemon runs outside the network namespace of PID 1 (the node's, with hostPID): it takes its own for the node's; run it with hostNetwork: true");
    }
    node.set_ingress_queue(config.ingress_queue);
    node.set_host_ingress_queue(config.host_ingress_queue);
    tracing::info!(
        bpffs = %config.bpffs_dir.display(),
        cgroup_root = %node.root().root().display(),
        adopted = adoption.adopted,
        removed_stale = adoption.removed_stale,
        repaired = adoption.repaired,
        upgraded = adoption.upgraded,
        "shaper loaded"
    );
    let state = Arc::new(State::new(
        node,
        config
            .allow_custom_programs
            .then(|| CustomPrograms::new(config.bpffs_dir.clone())),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let unix = bind_unix(&config.socket, config.socket_mode)?;
    let mut tasks = tokio::task::JoinSet::new();
    {
        let svc = ShaperServer::new(ShaperService::new(state.clone()));
        let stop = stopped();
        tasks.spawn(async move {
            server_builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(UnixListenerStream::new(unix), stop)
                .await
                .context("the Unix socket server failed")
        });
    }
    if let (Some(addr), Some(tls)) = (config.listen, tls) {
        let svc = ShaperServer::new(ShaperService::new(state.clone()));
        let stop = stopped();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(%addr, "serving the API with mutual TLS");
        tasks.spawn(async move {
            server_builder()
                .tls_config(tls)
                .context("invalid TLS configuration")?
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop,
                )
                .await
                .context("the TLS server failed")
        });
    }
    if let Some(addr) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(%addr, "serving metrics");
        let (state, stop) = (state.clone(), stopped());
        tasks.spawn(async move { metrics::serve(listener, state, stop).await });
    }
    tasks.spawn(every(STALE_SWEEP, state.clone(), stop_rx.clone(), |node| {
        match node.remove_stale() {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed the pins of cgroups that are gone"),
            Err(e) => tracing::warn!(error = %e, "stale pin sweep failed"),
        }
        // Pins removed under us: put them back before limits are lost.
        match node.repair() {
            Ok(r) if r == podshaper_shaper::Repair::default() => {}
            Ok(r) => tracing::warn!(
                maps = r.maps,
                cgroups = r.cgroups,
                "pins were removed under the daemon; pinned and attached them again"
            ),
            Err(e) => tracing::error!(error = %e, "cannot repair removed pins"),
        }
    }));
    tasks.spawn(crate::waiting::run(state.clone(), stop_rx.clone()));
    if config.ingress_queue || config.host_ingress_queue {
        tasks.spawn(every(
            QUEUE_SWEEP,
            state.clone(),
            stop_rx.clone(),
            |node| match node.sync_ingress_queues() {
                Ok(0) => {}
                Ok(n) => tracing::info!(cgroups = n, "ingress queues synced"),
                Err(e) => tracing::warn!(error = %e, "ingress queue sweep failed"),
            },
        ));
    }
    tracing::info!(socket = %config.socket.display(), "ready");

    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        let outcome = done.context("a daemon task panicked").and_then(|r| r);
        if let Err(e) = outcome {
            tracing::error!(error = format!("{e:#}"), "daemon task failed; stopping");
            result = Err(e);
            tasks.abort_all();
        }
    }
    let _ = fs::remove_file(&config.socket);
    tracing::info!("stopped; limits stay in force");
    result
}

/// One line: the kernel, and which refinements of the shaper it allows (the
/// limits hold either way; `podshaper doctor` says what each one's absence
/// costs).
fn log_refinements(node: &Node) {
    let features = node.features();
    let (on, off): (Vec<_>, Vec<_>) = features.refinements().into_iter().partition(|r| r.1);
    let names =
        |list: &[(&str, bool, &str)]| list.iter().map(|r| r.0).collect::<Vec<_>>().join(", ");
    let kernel = podshaper_shaper::kernel::Release::running()
        .map_or_else(|| "unknown".into(), |r| r.to_string());
    if off.is_empty() {
        tracing::info!(
            kernel,
            on = names(&on),
            "every refinement of the shaper is on"
        );
    } else {
        tracing::warn!(kernel, on = names(&on), off = names(&off), "the kernel leaves some refinements off (the limits hold; `podshaper doctor` says what each costs)");
    }
}

fn server_builder() -> Server {
    Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(64)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
}

fn tls_config(config: &DaemonConfig) -> Result<Option<ServerTlsConfig>> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    let (Some(cert), Some(key), Some(ca)) = (&config.tls_cert, &config.tls_key, &config.client_ca)
    else {
        bail!("--listen {addr} needs --tls-cert, --tls-key and --client-ca: TCP is served only with mutual TLS");
    };
    let read = |p: &PathBuf| fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let identity = Identity::from_pem(read(cert)?, read(key)?);
    // A client must present a certificate signed by this CA.
    Ok(Some(
        ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(false),
    ))
}

/// Binds the Unix socket with `mode`, replacing a stale socket file.
fn bind_unix(path: &PathBuf, mode: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?,
        Ok(_) => bail!(
            "{} exists and is not a socket: refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    // Create the socket with no access for anyone but root, then set the mode.
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}
