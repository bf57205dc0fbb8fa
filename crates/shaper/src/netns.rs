//! The network namespaces of a cgroup's processes, and running code in one.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The network namespaces of a cgroup's processes, and those that could not
/// be opened.
#[derive(Debug, Default)]
pub struct Namespaces {
    /// distinct namespaces, one open file each
    pub found: Vec<File>,
    /// processes whose namespace could not be opened (one per process at
    /// most): the daemon lacks a capability, or a security module refuses
    pub unreadable: Vec<Unreadable>,
}

/// A process whose network namespace could not be opened.
#[derive(Debug)]
pub struct Unreadable {
    pub pid: u32,
    pub error: io::Error,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot open the network namespace of process {}: {}",
            self.pid, self.error
        )?;
        if self.error.kind() == io::ErrorKind::PermissionDenied {
            // opening another user's /proc/PID/ns/* is a ptrace access check
            write!(f, " (the daemon needs CAP_SYS_PTRACE to enter the namespaces of processes of other users)")?;
        }
        Ok(())
    }
}

/// The distinct network namespaces of the processes (and their threads) in a
/// cgroup subtree. A process or thread that exits meanwhile is skipped; one
/// whose namespace cannot be opened for another reason is reported.
pub fn network_namespaces_in(cgroup: &Path) -> Namespaces {
    let mut seen = HashSet::new();
    let mut out = Namespaces::default();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                // every thread: one may have entered a namespace on its own
                let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
                    continue;
                };
                let mut failed = None;
                for task in tasks.flatten() {
                    let file = match File::open(task.path().join("ns/net")) {
                        Ok(f) => f,
                        // gone meanwhile
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            failed.get_or_insert(e);
                            continue;
                        }
                    };
                    if let Ok(meta) = file.metadata() {
                        if seen.insert((meta.dev(), meta.ino())) {
                            out.found.push(file);
                        }
                    }
                }
                if let Some(error) = failed {
                    out.unreadable.push(Unreadable { pid, error });
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

/// Of `namespaces`, those that are pods' own: neither this process's (for
/// the daemon, which runs with the node's network, its own is a hostNetwork
/// pod's) nor that of PID 1 (the node's, when the daemon sees the node's
/// processes: a daemon started in a namespace of its own by mistake never
/// takes the node's for a pod's, whose queue would take every interface of
/// the node). If ours cannot be read, none are returned: nothing is done to
/// the node's.
pub fn not_ours(namespaces: &[File]) -> Vec<&File> {
    let Ok(ours) = ours() else {
        return Vec::new();
    };
    let init = init_namespace().ok();
    namespaces
        .iter()
        .filter(|ns| identity(ns).is_ok_and(|id| id != ours && Some(id) != init))
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

/// The node's network namespace, for the daemon: its own.
pub fn node_namespace() -> io::Result<File> {
    File::open("/proc/self/ns/net")
}

/// The identity of PID 1's network namespace, as this process sees PID 1.
fn init_namespace() -> io::Result<(u64, u64)> {
    File::open("/proc/1/ns/net").and_then(|f| identity(&f))
}

/// The identity of this process's own network namespace.
pub fn ours() -> io::Result<(u64, u64)> {
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

/// Whether this process is in the network namespace of PID 1 as it sees
/// PID 1 (the node's, for a daemon in the node's PID namespace). None if
/// either cannot be read.
pub fn in_init_namespace() -> Option<bool> {
    Some(ours().ok()? == init_namespace().ok()?)
}

/// Every network namespace on the node this process can see: those of its
/// processes and those bind-mounted in /run/netns (`ip netns`, CNI plugins),
/// one file each. Namespaces that cannot be opened are left out.
pub fn all_namespaces() -> Vec<File> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let procs = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path().join("ns/net"));
    let pinned = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    for path in procs.chain(pinned) {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if identity(&file).is_ok_and(|id| seen.insert(id)) {
            out.push(file);
        }
    }
    out
}
