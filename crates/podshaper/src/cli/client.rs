//! `podshaper attach | detach | status | list`: the operator's client of a
//! daemon, over its Unix socket or over mutual TLS.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use podshaper_api::pb;
use podshaper_api::{ClientTlsFiles, DaemonAddress, ShaperClient};
use tonic::transport::Channel;

use super::limits::LimitArgs;
use super::status_output::{rate_text, render, Output};

/// How to reach the daemon.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// unix:///path/to.sock or https://host:port (default: $PODSHAPER_DAEMON, else
    /// unix:///run/podshaper/podshaper.sock).
    #[arg(long, value_name = "ADDRESS")]
    daemon: Option<String>,
    /// Client certificate (PEM) for https:// addresses.
    #[arg(long, value_name = "FILE", env = "PODSHAPER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Client key (PEM) for https:// addresses.
    #[arg(long, value_name = "FILE", env = "PODSHAPER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that signed the daemon's certificate, for https:// addresses.
    #[arg(long, value_name = "FILE", env = "PODSHAPER_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

/// Which cgroup.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Cgroup path, relative to the cgroup2 mount or absolute inside it.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<String>,
    /// A pod's UID (its cgroup is found by the kubelet's layouts).
    #[arg(long, value_name = "UID")]
    pod_uid: Option<String>,
}

/// Same as [`Target`], but optional (status of all when absent).
#[derive(Debug, Clone, Args)]
#[group(required = false, multiple = false)]
pub struct OptionalTarget {
    #[arg(long, value_name = "PATH")]
    cgroup: Option<String>,
    #[arg(long, value_name = "UID")]
    pod_uid: Option<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    limits: LimitArgs,
    /// Attach this BPF object (cgroup programs) instead of the built-in shaper;
    /// the daemon must run with --allow-custom-programs.
    #[arg(long, value_name = "FILE.o")]
    program: Option<PathBuf>,
    /// With --pod-uid: if the pod's cgroup does not exist yet, the daemon
    /// holds the limits and attaches them the moment the kubelet makes it.
    #[arg(long, requires = "pod_uid")]
    wait_for_cgroup: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    target: OptionalTarget,
    /// table for people; json or yaml: one document, an array of each
    /// cgroup's fields.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// table for people; json or yaml: one document, an array of each
    /// cgroup's fields.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    connection: Connection,
}

fn to_pb_target(cgroup: Option<String>, pod_uid: Option<String>) -> Option<pb::Target> {
    let target = match (cgroup, pod_uid) {
        (Some(c), _) => pb::target::Target::Cgroup(c),
        (None, Some(u)) => pb::target::Target::PodUid(u),
        (None, None) => return None,
    };
    Some(pb::Target {
        target: Some(target),
    })
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

async fn connect(c: &Connection) -> Result<ShaperClient<Channel>> {
    let address = match &c.daemon {
        Some(a) => a.parse::<DaemonAddress>()?,
        None => DaemonAddress::from_env_or_default()?,
    };
    let tls = match (&c.tls_cert, &c.tls_key, &c.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(ClientTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        }),
        _ => None,
    };
    Ok(podshaper_api::connect(&address, tls.as_ref()).await?)
}

/// A daemon's refusal as one line: its message (which names what was wrong).
fn rpc_error(what: &str, status: tonic::Status) -> anyhow::Error {
    let message = status.message();
    match status.code() {
        tonic::Code::Unavailable => anyhow::anyhow!("{what}: the daemon is unavailable: {message}"),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            anyhow::anyhow!("{what}: permission denied: {message}")
        }
        _ => anyhow::anyhow!("{what}: {message}"),
    }
}

pub fn attach(args: AttachArgs) -> Result<ExitCode> {
    let limits = args.limits.limits()?;
    let custom_program = match &args.program {
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => Vec::new(),
    };
    if limits.is_unlimited() && custom_program.is_empty() {
        bail!("nothing to limit: give --egress RATE and/or --ingress RATE");
    }
    let dir = |d: Option<podshaper_shaper::DirectionLimit>| {
        d.map(|d| pb::DirectionLimit {
            bits_per_second: d.rate.bits_per_sec(),
            burst_bytes: d.burst.bytes(),
        })
    };
    let request = pb::AttachRequest {
        target: to_pb_target(args.target.cgroup, args.target.pod_uid),
        egress: dir(limits.egress),
        ingress: dir(limits.ingress),
        custom_program,
        wait_for_cgroup: args.wait_for_cgroup,
        ..Default::default()
    };
    let status = block_on(async {
        let mut client = connect(&args.connection).await?;
        client
            .attach(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| rpc_error("attach", s))
    })?;
    match status.waiting {
        true => println!(
            "held until the cgroup of pod {} appears: egress {}, ingress {}",
            status.pod_uid.as_deref().unwrap_or_default(),
            rate_text(status.egress.as_ref()),
            rate_text(status.ingress.as_ref())
        ),
        false => println!("limited {}", describe(&status)),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn detach(args: DetachArgs) -> Result<ExitCode> {
    let target = to_pb_target(args.target.cgroup.clone(), args.target.pod_uid.clone());
    block_on(async {
        let mut client = connect(&args.connection).await?;
        client
            .detach(pb::DetachRequest { target })
            .await
            .map_err(|s| rpc_error("detach", s))
    })?;
    let shown = args
        .target
        .cgroup
        .or(args.target.pod_uid.map(|u| format!("pod {u}")));
    println!("detached {}", shown.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let statuses = match to_pb_target(args.target.cgroup, args.target.pod_uid) {
        Some(target) => vec![block_on(async {
            let mut client = connect(&args.connection).await?;
            client
                .status(pb::StatusRequest {
                    target: Some(target),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| rpc_error("status", s))
        })?],
        None => list_all(&args.connection)?,
    };
    print!("{}", render(&statuses, args.output)?);
    Ok(ExitCode::SUCCESS)
}

pub fn list(args: ListArgs) -> Result<ExitCode> {
    print!("{}", render(&list_all(&args.connection)?, args.output)?);
    Ok(ExitCode::SUCCESS)
}

fn list_all(connection: &Connection) -> Result<Vec<pb::CgroupStatus>> {
    block_on(async {
        let mut client = connect(connection).await?;
        client
            .list(pb::ListRequest {})
            .await
            .map(|r| r.into_inner().cgroups)
            .map_err(|s| rpc_error("list", s))
    })
}

fn describe(s: &pb::CgroupStatus) -> String {
    format!(
        "{}: egress {}, ingress {}",
        s.cgroup,
        rate_text(s.egress.as_ref()),
        rate_text(s.ingress.as_ref())
    )
}
