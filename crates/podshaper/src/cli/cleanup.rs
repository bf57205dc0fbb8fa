//! `podshaper cleanup`: removes everything podshaper put on a node (programs,
//! links, pins, queues), for an uninstall. Stopping the daemon keeps every
//! limit in force (the pins hold them); this is how they go.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use podshaper_shaper::{remove_all_queues, CgroupRoot, Node};

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The daemon's bpffs directory (its pins).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf/podshaper")]
    bpffs_dir: PathBuf,
    /// The daemon's cgroup root (default: the whole cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,
    /// The daemon's socket: if a daemon answers there, nothing is removed
    /// (it would put its pins back); a socket file left behind is removed.
    #[arg(long, value_name = "PATH", default_value = podshaper_api::DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub fn run(args: CleanupArgs) -> Result<ExitCode> {
    if UnixStream::connect(&args.socket).is_ok() {
        bail!(
            "a podshaper daemon answers on {}: stop it first (kubectl delete -k deploy/, or stop its service), or it puts back what this removes",
            args.socket.display()
        );
    }
    let (cgroups, queues, pins) = if args.bpffs_dir.exists() {
        let root = CgroupRoot::new(args.cgroup_root.as_deref()).context("invalid --cgroup-root")?;
        let (node, _) = Node::open(&args.bpffs_dir, root)
            .with_context(|| format!("cannot open the pins in {}", args.bpffs_dir.display()))?;
        let done = node.uninstall().context("cleanup stopped")?;
        (done.cgroups, done.queues, done.pins)
    } else {
        // no pins, but a queue may outlive them (its pod's namespace does)
        let queues = remove_all_queues().context("cannot remove the ingress queues")?;
        (0, queues, false)
    };
    if args.socket.exists() {
        std::fs::remove_file(&args.socket)
            .with_context(|| format!("cannot remove {}", args.socket.display()))?;
    }
    if let Some(dir) = args.socket.parent() {
        // only if empty: the directory may hold an operator's files
        let _ = std::fs::remove_dir(dir);
    }
    println!(
        "removed: {cgroups} limited cgroup(s) detached, {queues} ingress queue(s), pins in {}: {}",
        args.bpffs_dir.display(),
        if pins { "removed" } else { "none" }
    );
    Ok(ExitCode::SUCCESS)
}
