//! `podshaper daemon`: the node daemon (root). The work is in podshaper-daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use podshaper_daemon::DaemonConfig;

use crate::signals::Signals;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Unix socket to serve the API on.
    #[arg(long, default_value = podshaper_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Mode of the socket file, in octal (default: root only).
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Also serve the API on TCP, with mutual TLS only.
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key", "client_ca"])]
    listen: Option<SocketAddr>,
    /// The daemon's certificate (PEM), for --listen.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The daemon's private key (PEM), for --listen.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that must have signed a TCP client's certificate.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Only cgroups below this one may be limited (default: the whole cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,
    /// bpffs directory for the pinned maps and links (the state that outlives the daemon).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf/podshaper")]
    bpffs_dir: PathBuf,
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz) here.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// Accept BPF objects sent by clients (cgroup program types only). Off by default.
    #[arg(long)]
    allow_custom_programs: bool,
    /// Put a queue (ifb + htb, built with iproute2) in front of pods that have
    /// a network namespace of their own, so that ingress waits instead of
    /// being dropped; `false` leaves ingress to the cgroup policer alone.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    ingress_queue: bool,
    /// Queue the ingress of hostNetwork pods too: one queue (ifb + htb) in
    /// the node's network namespace, fed by a BPF classifier on every
    /// interface there that picks the packets for limited hostNetwork pods'
    /// sockets. Off by default: every packet the node receives then pays
    /// for a socket lookup while such a pod is limited.
    #[arg(long, value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set)]
    host_ingress_queue: bool,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("invalid mode {s:?}: expected octal like 600"))
}

pub fn run(args: DaemonArgs, signals: Signals) -> Result<ExitCode> {
    let config = DaemonConfig {
        socket: args.socket,
        socket_mode: args.socket_mode,
        listen: args.listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        client_ca: args.client_ca,
        cgroup_root: args.cgroup_root,
        bpffs_dir: args.bpffs_dir,
        metrics_addr: args.metrics_addr,
        allow_custom_programs: args.allow_custom_programs,
        ingress_queue: args.ingress_queue,
        host_ingress_queue: args.host_ingress_queue,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    signals.handle(move |signal| {
        tracing::info!(?signal, "stopping");
        if let Some(tx) = tx.take() {
            let _ = tx.send(());
        }
    });
    runtime.block_on(podshaper_daemon::run(config, async move {
        let _ = rx.await;
    }))?;
    Ok(ExitCode::SUCCESS)
}
