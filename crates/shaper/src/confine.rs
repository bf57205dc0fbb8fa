//! Which cgroups the daemon may act on: only those below its cgroup root.
//!
//! Requests name a cgroup by path (relative to the cgroup2 mount, or
//! absolute inside it) or by pod UID (the kubelet's layouts, below the root).
//! Paths with `..`, NUL bytes, or symlinks that lead outside the root are
//! refused, as are paths that do not exist or are not cgroup v2 directories.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::cgroup::{cgroup2_mount, cgroup2_mounts, Cgroup, CgroupError};

fn canonical_mount(mount: PathBuf) -> Result<PathBuf, ConfineError> {
    fs::canonicalize(mount).map_err(|source| ConfineError::Io {
        path: "cgroup2 mount".into(),
        source,
    })
}

/// Why a requested cgroup was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("no target: give a cgroup path or a pod UID")]
    NoTarget,
    #[error("cgroup path {0:?} is empty")]
    Empty(String),
    #[error("cgroup path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("cgroup path {0:?} contains '..'")]
    DotDot(String),
    #[error("cgroup {path:?} does not exist")]
    Missing { path: String },
    #[error("cgroup {path:?} resolves to {resolved}, outside the cgroup root {root}")]
    Outside {
        path: String,
        resolved: String,
        root: String,
    },
    #[error("{path:?} ({resolved}) is not inside a cgroup2 mount and holds none of the whole hierarchy below it (cgroup2 is mounted at: {mounts})")]
    NoCgroup2Mount {
        path: String,
        resolved: String,
        mounts: String,
    },
    #[error("{path:?} is not a cgroup v2 directory")]
    NotCgroup { path: String },
    #[error("pod UID {0:?} is not a UID (expected 36 characters of hex digits and dashes)")]
    BadUid(String),
    #[error("no cgroup for pod {uid} below {root} (looked for the systemd and cgroupfs layouts of every QoS class)")]
    NoPodCgroup { uid: String, root: String },
    #[error("cannot read cgroup {path:?}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// The subtree of the cgroup2 hierarchy the daemon is confined to.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    mount: PathBuf,
    root: PathBuf,
}

/// QoS classes as the kubelet names their cgroups; Guaranteed pods sit
/// directly under kubepods.
const QOS_CLASSES: [Option<&str>; 3] = [None, Some("burstable"), Some("besteffort")];

impl CgroupRoot {
    /// The root `root` (default: the whole cgroup2 mount). It must exist,
    /// and either lie inside a cgroup2 mount or hold the mount of the whole
    /// hierarchy below it: a daemon in a container is given the node's
    /// `/sys/fs/cgroup` (a hostPath), where cgroup2 is mounted itself on
    /// unified nodes and at `unified/` below it on hybrid ones.
    pub fn new(root: Option<&Path>) -> Result<Self, ConfineError> {
        let mounts: Vec<(PathBuf, bool)> = cgroup2_mounts()?
            .into_iter()
            .filter_map(|m| Some((fs::canonicalize(&m.point).ok()?, m.is_whole())))
            .collect();
        let Some(r) = root else {
            let mount = canonical_mount(cgroup2_mount()?)?;
            return Ok(Self {
                root: mount.clone(),
                mount,
            });
        };
        let shown = r.display().to_string();
        let root = fs::canonicalize(r).map_err(|_| ConfineError::Missing {
            path: shown.clone(),
        })?;
        Self::choose(&shown, root, &mounts)
    }

    /// The root for the canonical path `root`, given the canonical cgroup2
    /// mount points (and whether each shows the whole hierarchy).
    fn choose(
        shown: &str,
        root: PathBuf,
        mounts: &[(PathBuf, bool)],
    ) -> Result<Self, ConfineError> {
        // The mount the root lies in: the deepest, if mounts nest, and one
        // of the whole hierarchy before a container's view of its own cgroup.
        let containing = mounts
            .iter()
            .filter(|(m, _)| root.starts_with(m))
            .max_by_key(|(m, whole)| (*whole, m.components().count()));
        if let Some((mount, _)) = containing {
            return Ok(Self {
                mount: mount.clone(),
                root,
            });
        }
        // Above the mount: the shallowest mount of the whole hierarchy below it.
        let below = mounts
            .iter()
            .filter(|(m, whole)| *whole && m.starts_with(&root))
            .min_by_key(|(m, _)| m.components().count());
        match below {
            Some((mount, _)) => Ok(Self {
                mount: mount.clone(),
                root: mount.clone(),
            }),
            None => Err(ConfineError::NoCgroup2Mount {
                path: shown.into(),
                resolved: root.display().to_string(),
                mounts: mounts
                    .iter()
                    .map(|(m, _)| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// A root from already canonical paths (tests use a fake hierarchy).
    #[cfg(test)]
    fn from_paths(mount: PathBuf, root: PathBuf) -> Self {
        Self { mount, root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// A cgroup named by path: relative to the cgroup2 mount, or absolute
    /// (inside it). Refused unless it is an existing cgroup below the root.
    pub fn resolve(&self, requested: &str) -> Result<Cgroup, ConfineError> {
        if requested.is_empty() {
            return Err(ConfineError::Empty(requested.into()));
        }
        if requested.contains('\0') {
            return Err(ConfineError::Nul(requested.into()));
        }
        let path = Path::new(requested);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(ConfineError::DotDot(requested.into()));
        }
        let joined = if path.is_absolute() && path.starts_with(&self.mount) {
            path.to_path_buf()
        } else {
            // relative to the mount; a leading '/' means the hierarchy's root
            self.mount.join(path.strip_prefix("/").unwrap_or(path))
        };
        // Resolves every symlink: what we check is where it really leads.
        let resolved = fs::canonicalize(&joined).map_err(|_| ConfineError::Missing {
            path: requested.into(),
        })?;
        if !resolved.starts_with(&self.root) {
            return Err(ConfineError::Outside {
                path: requested.into(),
                resolved: resolved.display().to_string(),
                root: self.root.display().to_string(),
            });
        }
        if !resolved.join("cgroup.procs").exists() {
            return Err(ConfineError::NotCgroup {
                path: requested.into(),
            });
        }
        Ok(Cgroup::open(resolved)?)
    }

    /// The cgroup the kubelet made for a pod, under either cgroup driver and
    /// any QoS class.
    pub fn resolve_pod(&self, uid: &str) -> Result<Cgroup, ConfineError> {
        validate_uid(uid)?;
        for path in self.pod_cgroup_paths(uid) {
            if path.is_dir() {
                return self.resolve(&path.display().to_string());
            }
        }
        Err(ConfineError::NoPodCgroup {
            uid: uid.into(),
            root: self.root.display().to_string(),
        })
    }

    /// Where the kubelet may put a pod's cgroup: its layouts below the
    /// cgroup2 mount (a kubelet's default --cgroup-root, `/`) and below
    /// this root (a kubelet given this root as its own). Only those below
    /// this root are ever resolved.
    pub fn pod_cgroup_paths(&self, uid: &str) -> Vec<PathBuf> {
        let bases: &[&Path] = if self.root == self.mount {
            &[&self.mount]
        } else {
            &[&self.mount, &self.root]
        };
        bases
            .iter()
            .flat_map(|base| pod_cgroup_candidates(uid).into_iter().map(|c| base.join(c)))
            .filter(|p| p.starts_with(&self.root))
            .collect()
    }

    /// The directories in which the kubelet makes pods' cgroups (the
    /// parents of [`Self::pod_cgroup_paths`]), whether they exist yet or not.
    pub fn pod_cgroup_parents(&self) -> Vec<PathBuf> {
        // any UID will do: the parents do not depend on it
        let mut out: Vec<PathBuf> = self
            .pod_cgroup_paths("00000000-0000-0000-0000-000000000000")
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The path of a live cgroup from its id, or None if it is gone.
    pub fn path_of(&self, cgroup_id: u64) -> Option<PathBuf> {
        path_by_id(&self.mount, cgroup_id).ok()
    }
}

/// Where the kubelet puts a pod's cgroup, relative to its cgroup root.
pub fn pod_cgroup_candidates(uid: &str) -> Vec<PathBuf> {
    let underscored = uid.replace('-', "_");
    let mut out = Vec::with_capacity(6);
    for qos in QOS_CLASSES {
        // systemd driver
        out.push(match qos {
            None => PathBuf::from(format!("kubepods.slice/kubepods-pod{underscored}.slice")),
            Some(q) => PathBuf::from(format!(
                "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{underscored}.slice"
            )),
        });
        // cgroupfs driver
        out.push(match qos {
            None => PathBuf::from(format!("kubepods/pod{uid}")),
            Some(q) => PathBuf::from(format!("kubepods/{q}/pod{uid}")),
        });
    }
    out
}

/// The pod UID a kubelet cgroup path belongs to, if it is one.
pub fn pod_uid_of(path: &Path) -> Option<String> {
    path.components().rev().find_map(|c| {
        let name = c.as_os_str().to_str()?;
        let uid = if let Some(rest) = name.strip_suffix(".slice") {
            rest.rsplit_once("-pod")?.1.replace('_', "-")
        } else {
            name.strip_prefix("pod")?.to_string()
        };
        validate_uid(&uid).ok().map(|_| uid)
    })
}

fn validate_uid(uid: &str) -> Result<(), ConfineError> {
    let ok = uid.len() == 36
        && uid.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(ConfineError::BadUid(uid.into()))
    }
}

/// Opens a cgroup by id (a cgroup2 file handle is its 8-byte id) and reads
/// back its path.
fn path_by_id(mount: &Path, cgroup_id: u64) -> io::Result<PathBuf> {
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mount_c = CString::new(mount.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let mount_fd = unsafe {
        libc::open(
            mount_c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if mount_fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: we own the descriptor just opened.
    let mount_fd = unsafe { OwnedFd::from_raw_fd(mount_fd) };
    let mut handle = Handle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id: cgroup_id,
    };
    // SAFETY: `handle` has the layout of struct file_handle with 8 bytes of f_handle.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut handle as *mut Handle).cast(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: we own the descriptor just opened.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f2b8c1e-5d4a-4e7b-9c0d-1a2b3c4d5e6f";

    #[test]
    fn pod_layouts_for_both_drivers_and_all_qos_classes() {
        let c: Vec<String> = pod_cgroup_candidates(UID)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let u = UID.replace('-', "_");
        assert!(c.contains(&format!("kubepods.slice/kubepods-pod{u}.slice")));
        assert!(c.contains(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"
        )));
        assert!(c.contains(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
        )));
        assert!(c.contains(&format!("kubepods/pod{UID}")));
        assert!(c.contains(&format!("kubepods/burstable/pod{UID}")));
        assert!(c.contains(&format!("kubepods/besteffort/pod{UID}")));
    }

    #[test]
    fn pod_uid_from_a_path() {
        for p in pod_cgroup_candidates(UID) {
            assert_eq!(pod_uid_of(&p).as_deref(), Some(UID), "{}", p.display());
            let container = p.join("cri-containerd-abc.scope");
            assert_eq!(pod_uid_of(&container).as_deref(), Some(UID));
        }
        assert_eq!(
            pod_uid_of(Path::new("/sys/fs/cgroup/system.slice/sshd.service")),
            None
        );
        assert_eq!(pod_uid_of(Path::new("kubepods/podnot-a-uid")), None);
    }

    /// A fake hierarchy in a temporary directory: cgroupfs itself has no
    /// user symlinks, but a path can still reach one (a bind mount, a
    /// mistaken --cgroup-root), so resolution must follow and check them.
    #[test]
    fn symlinks_are_followed_and_must_stay_below_the_root() {
        struct RemoveOnDrop(PathBuf);
        impl Drop for RemoveOnDrop {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let base = std::env::temp_dir().join(format!("podshaper-confine-{}", std::process::id()));
        let _cleanup = RemoveOnDrop(base.clone());
        let mount = base.join("mnt");
        for d in ["root/a", "outside/b"] {
            fs::create_dir_all(mount.join(d)).expect("mkdir");
            fs::write(mount.join(d).join("cgroup.procs"), "").expect("procs");
        }
        std::os::unix::fs::symlink("../outside/b", mount.join("root/escape")).expect("symlink");
        std::os::unix::fs::symlink("a", mount.join("root/inner")).expect("symlink");
        let mount = fs::canonicalize(&mount).expect("canonical");
        let root = CgroupRoot::from_paths(mount.clone(), mount.join("root"));

        let ok = root
            .resolve("root/inner")
            .expect("a symlink inside the root");
        assert_eq!(ok.path(), mount.join("root/a"));
        assert!(root
            .resolve(&mount.join("root/a").display().to_string())
            .is_ok());
        assert!(matches!(
            root.resolve("root/escape"),
            Err(ConfineError::Outside { .. })
        ));
        assert!(matches!(
            root.resolve("outside/b"),
            Err(ConfineError::Outside { .. })
        ));
        assert!(matches!(
            root.resolve("root/a/../../outside/b"),
            Err(ConfineError::DotDot(_))
        ));
        assert!(matches!(
            root.resolve("root/a\0"),
            Err(ConfineError::Nul(_))
        ));
        assert!(matches!(
            root.resolve("root/a/cgroup.procs"),
            Err(ConfineError::NotCgroup { .. })
        ));
        assert!(matches!(root.resolve(""), Err(ConfineError::Empty(_))));
    }

    #[test]
    fn the_root_is_found_inside_a_mount_or_as_the_whole_hierarchys_mount_below_it() {
        let p = PathBuf::from;
        let hybrid = [(p("/host/sys/fs/cgroup/unified"), true)];
        let r = CgroupRoot::choose("x", p("/host/sys/fs/cgroup"), &hybrid).expect("hybrid");
        assert_eq!(r.mount(), Path::new("/host/sys/fs/cgroup/unified"));
        assert_eq!(r.root(), Path::new("/host/sys/fs/cgroup/unified"));
        let unified = [(p("/host/sys/fs/cgroup"), true)];
        let r = CgroupRoot::choose("x", p("/host/sys/fs/cgroup"), &unified).expect("unified");
        assert_eq!(r.root(), Path::new("/host/sys/fs/cgroup"));
        // a root inside the mount stays as given
        let r = CgroupRoot::choose("x", p("/host/sys/fs/cgroup/kubepods"), &unified).expect("in");
        assert_eq!(r.mount(), Path::new("/host/sys/fs/cgroup"));
        assert_eq!(r.root(), Path::new("/host/sys/fs/cgroup/kubepods"));
        // a container's view of its own cgroup is not the hierarchy
        let own = [
            (p("/sys/fs/cgroup"), false),
            (p("/host/sys/fs/cgroup/unified"), true),
        ];
        let r = CgroupRoot::choose("x", p("/host"), &own).expect("below");
        assert_eq!(r.root(), Path::new("/host/sys/fs/cgroup/unified"));
        assert!(matches!(
            CgroupRoot::choose("x", p("/srv"), &own),
            Err(ConfineError::NoCgroup2Mount { .. })
        ));
        let subtree_only = [(p("/host/sys/fs/cgroup/unified"), false)];
        assert!(CgroupRoot::choose("x", p("/host/sys/fs/cgroup"), &subtree_only).is_err());
    }

    #[test]
    fn pods_are_looked_for_below_the_mount_and_below_a_narrower_root() {
        let mount = PathBuf::from("/sys/fs/cgroup");
        let whole = CgroupRoot::from_paths(mount.clone(), mount.clone());
        let paths = whole.pod_cgroup_paths(UID);
        assert_eq!(paths.len(), 6);
        assert!(paths.contains(&mount.join(format!("kubepods/besteffort/pod{UID}"))));
        // --cgroup-root=/sys/fs/cgroup/kubepods.slice: the systemd layout's
        // pods are below it, the cgroupfs layout's are not
        let slice = CgroupRoot::from_paths(mount.clone(), mount.join("kubepods.slice"));
        let paths = slice.pod_cgroup_paths(UID);
        assert!(paths
            .iter()
            .all(|p| p.starts_with(mount.join("kubepods.slice"))));
        assert!(paths.contains(&mount.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            UID.replace('-', "_")
        ))));
        assert_eq!(
            whole.pod_cgroup_parents(),
            [
                "kubepods",
                "kubepods/besteffort",
                "kubepods/burstable",
                "kubepods.slice",
                "kubepods.slice/kubepods-besteffort.slice",
                "kubepods.slice/kubepods-burstable.slice",
            ]
            .map(|d| mount.join(d))
        );
    }

    #[test]
    fn uids_are_validated() {
        assert!(validate_uid(UID).is_ok());
        for bad in [
            "",
            "../../etc",
            "3f2b8c1e5d4a4e7b9c0d1a2b3c4d5e6f",
            &format!("{UID}x"),
            "3f2b8c1e-5d4a-4e7b-9c0d-1a2b3c4d5e6g",
        ] {
            assert!(validate_uid(bad).is_err(), "{bad}");
        }
    }
}
