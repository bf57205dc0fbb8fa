//! cgroup v2: finding the mount, naming cgroups, and transient cgroups.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Why a cgroup could not be found, made or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mountinfo")]
    MountInfo(#[source] io::Error),
    #[error("no cgroup2 file system is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cgroup {path} does not exist or cannot be opened")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The mount point of the cgroup v2 hierarchy, read from `/proc/self/mountinfo`
/// (`/sys/fs/cgroup` on most nodes, `/sys/fs/cgroup/unified` on hybrid ones).
/// A mount of the whole hierarchy comes first: in a container, the
/// container's own cgroup is often mounted too, showing only its subtree.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    parse_cgroup2_mount(&info).ok_or(CgroupError::NoCgroup2)
}

/// A cgroup's level in the hierarchy (the root's is 0), as the kernel
/// counts it: the directories from it up to the hierarchy's root, the one
/// cgroup without `cgroup.events`. Not the path's depth under a mount: in a
/// container (a cgroup namespace of its own, the host's hierarchy mounted
/// elsewhere) mounts do not start at the root. None if the walk leaves the
/// cgroup file system first (a mount that shows only part of the
/// hierarchy: the level cannot be told from it).
pub fn cgroup_level(path: &Path) -> Option<u32> {
    let mut level = 0;
    let mut dir = path;
    loop {
        if !dir.join("cgroup.controllers").exists() {
            return None;
        }
        if !dir.join("cgroup.events").exists() {
            return Some(level);
        }
        level += 1;
        dir = dir.parent()?;
    }
}

/// One cgroup2 mount: where it is, and which directory of the hierarchy
/// it shows (`/` for the whole hierarchy, or the whole of a cgroup
/// namespace; a container's bind mount of its own cgroup shows a subtree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub point: PathBuf,
    pub root: PathBuf,
}

impl Cgroup2Mount {
    /// Whether the mount shows the whole hierarchy (as far as this process
    /// can see it).
    pub fn is_whole(&self) -> bool {
        self.root == Path::new("/")
    }
}

/// Every cgroup2 mount. In a container the hierarchy is often mounted
/// twice: the container's own view at /sys/fs/cgroup and the host's
/// (a hostPath) elsewhere.
pub fn cgroup2_mounts() -> Result<Vec<Cgroup2Mount>, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    Ok(parse_cgroup2_mounts(&info))
}

/// The first mount of the whole cgroup2 hierarchy in mountinfo text, else
/// the first cgroup2 mount.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mounts = parse_cgroup2_mounts(mountinfo);
    let whole = mounts.iter().find(|m| m.is_whole()).or(mounts.first());
    whole.map(|m| m.point.clone())
}

fn parse_cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <maj:min> <root> <mount point> <options> ... - <fstype> <source> ..."
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = left.split_whitespace();
            let root = fields.nth(3)?;
            let point = fields.next()?;
            Some(Cgroup2Mount {
                point: PathBuf::from(unescape_mountinfo(point)),
                root: PathBuf::from(unescape_mountinfo(root)),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.clone().take(3).collect();
            if code.len() == 3 {
                if let Ok(byte) = u8::from_str_radix(&code, 8) {
                    out.push(char::from(byte));
                    for _ in 0..3 {
                        chars.next();
                    }
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// A cgroup v2 directory and its id (the id BPF's `bpf_skb_cgroup_id` returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
    id: u64,
}

impl Cgroup {
    /// Opens an existing cgroup by absolute path.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        let path = path.into();
        let meta = fs::metadata(&path).map_err(|source| CgroupError::Open {
            path: path.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(CgroupError::Open {
                path,
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        // On cgroup2 the directory's inode number is the cgroup id.
        Ok(Self {
            path,
            id: meta.ino(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// An open descriptor of the directory, as BPF attach calls need.
    pub fn fd(&self) -> Result<File, CgroupError> {
        File::open(&self.path).map_err(|source| CgroupError::Open {
            path: self.path.clone(),
            source,
        })
    }

    /// The path of `cgroup.procs`, where a pid is written to move a process in.
    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Makes `command` start inside this cgroup: the child moves itself in
    /// between fork and exec, so its first packet is already shaped.
    pub fn spawn_inside(&self, command: &mut Command) -> Result<(), CgroupError> {
        let procs = OpenOptions::new()
            .write(true)
            .open(self.procs_path())
            .map_err(|source| CgroupError::Open {
                path: self.procs_path(),
                source,
            })?;
        // The descriptor lives as long as `command`; it is close-on-exec.
        // SAFETY: the closure makes one async-signal-safe system call (write)
        // on a descriptor it owns.
        unsafe {
            command.pre_exec(move || {
                // "0" means "the writing process".
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// A cgroup made for the life of this value: on drop, every process still in
/// it is killed and the directory removed.
#[derive(Debug)]
pub struct TransientCgroup {
    cgroup: Cgroup,
}

impl TransientCgroup {
    /// Creates `<cgroup2 mount>/<name>`.
    pub fn create(name: &str) -> Result<Self, CgroupError> {
        let path = cgroup2_mount()?.join(name);
        fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        match Cgroup::open(&path) {
            Ok(cgroup) => Ok(Self { cgroup }),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Kills what is left inside and removes the directory.
    pub fn remove(&self) -> Result<(), CgroupError> {
        remove_cgroup_tree(self.cgroup.path())
    }
}

impl Drop for TransientCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(error = %e, "could not remove transient cgroup");
        }
    }
}

/// Kills every process in a cgroup tree and removes its directories, deepest
/// first. Removal waits (briefly) for killed processes to leave.
pub fn remove_cgroup_tree(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14+) kills the whole subtree at once.
    if fs::write(path.join("cgroup.kill"), "1").is_err() {
        kill_listed_processes(path);
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path())?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while killed processes are still exiting
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, path = %path.display(), "cgroup busy; retrying");
                thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

fn kill_listed_processes(path: &Path) {
    let Ok(procs) = fs::read_to_string(path.join("cgroup.procs")) else {
        return;
    };
    for pid in procs
        .lines()
        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
    {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroups_level_counts_up_to_the_root_not_to_the_mount() {
        // a hierarchy as cgroupfs shows it: the root has no cgroup.events
        let top = std::env::temp_dir().join(format!("podshaper-level-{}", std::process::id()));
        let pod = top.join("root/kubepods/pod1");
        fs::create_dir_all(&pod).expect("make the tree");
        let mark = |dir: &Path, events: bool| {
            fs::write(dir.join("cgroup.controllers"), "").expect("write");
            if events {
                fs::write(dir.join("cgroup.events"), "").expect("write");
            }
        };
        mark(&top.join("root"), false);
        mark(&top.join("root/kubepods"), true);
        mark(&pod, true);
        assert_eq!(cgroup_level(&top.join("root")), Some(0));
        assert_eq!(cgroup_level(&pod), Some(2));
        // a mount showing part of a hierarchy: its top has cgroup.events
        // and nothing above it is a cgroup
        fs::remove_file(top.join("root/cgroup.controllers")).expect("remove");
        assert_eq!(cgroup_level(&pod), None);
        fs::remove_dir_all(&top).expect("clean up");
    }

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,relatime shared:5 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "30 1 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(
            parse_cgroup2_mount("30 1 0:26 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        assert_eq!(parse_cgroup2_mount("garbage\n\n"), None);
    }

    #[test]
    fn a_mount_of_the_whole_hierarchy_comes_before_a_containers_own_view() {
        // a container's own cgroup bind-mounted first, the host's hierarchy
        // (a hostPath on a hybrid node) below /host
        let container = "40 30 0:24 /kubepods/besteffort/pod1/c1 /sys/fs/cgroup/unified ro - cgroup2 cgroup2 rw\n\
                         51 50 0:24 / /host/sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(container),
            Some(PathBuf::from("/host/sys/fs/cgroup/unified"))
        );
        let mounts = parse_cgroup2_mounts(container);
        assert_eq!(mounts.len(), 2);
        assert!(!mounts[0].is_whole());
        assert_eq!(
            mounts[0].root,
            PathBuf::from("/kubepods/besteffort/pod1/c1")
        );
        assert!(mounts[1].is_whole());
    }
}
