//! The network namespaces of a cgroup's processes, and running code in one.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The distinct network namespaces of the processes (and their threads) in a
/// cgroup subtree.
pub fn network_namespaces_in(cgroup: &Path) -> Vec<File> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                // every thread: one may have entered a namespace on its own
                let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", pid.trim())) else {
                    continue;
                };
                for task in tasks.flatten() {
                    let Ok(file) = File::open(task.path().join("ns/net")) else {
                        continue;
                    };
                    if let Ok(meta) = file.metadata() {
                        if seen.insert((meta.dev(), meta.ino())) {
                            out.push(file);
                        }
                    }
                }
            }
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// The identity of a network namespace (device and inode of its nsfs file).
pub fn identity(ns: &File) -> io::Result<(u64, u64)> {
    let meta = ns.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// Of `namespaces`, those that are not this process's own (for the daemon,
/// which runs with the host's network, its own is a hostNetwork pod's). If
/// ours cannot be read, none are returned: nothing is done to the host's.
pub fn not_ours(namespaces: &[File]) -> Vec<&File> {
    let Ok(ours) = ours() else {
        return Vec::new();
    };
    namespaces
        .iter()
        .filter(|ns| identity(ns).is_ok_and(|id| id != ours))
        .collect()
}

/// Whether one of `namespaces` is this process's own (for the daemon, a
/// hostNetwork pod's). False if ours cannot be read.
pub fn has_ours(namespaces: &[File]) -> bool {
    let Ok(ours) = ours() else {
        return false;
    };
    namespaces
        .iter()
        .any(|ns| identity(ns).is_ok_and(|id| id == ours))
}

/// The identity of this process's own network namespace.
fn ours() -> io::Result<(u64, u64)> {
    File::open("/proc/self/ns/net").and_then(|f| identity(&f))
}

/// Runs `f` on a thread of its own that has entered `ns`: setns changes only
/// the calling thread, and processes that thread starts are born in `ns`.
pub fn run_in<R: Send>(ns: &File, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<R> {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(io::Error::other(
                    "a thread inside a network namespace panicked",
                ))
            })
    })
}
