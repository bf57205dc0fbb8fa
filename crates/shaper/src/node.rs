//! A node's shaping state, kept in bpffs: maps pinned under `<dir>/maps`, one
//! directory of pinned links per limited cgroup under `<dir>/links/<id>`.
//! The pins are the state: limits stay enforced while no process holds them,
//! and a new [`Node`] adopts what an earlier one left.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cgroup::Cgroup;
use crate::confine::{pod_uid_of, CgroupRoot};
use crate::counters::CgroupCounters;
use crate::limits::Limits;
use crate::shaper::{detach_pinned, is_fully_pinned, Shaper, ShaperError};

/// statfs magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path} is not on a bpf file system (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { path: String },
    #[error("cannot use the pin directory {path}")]
    PinDir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cgroup {path} is nested with {other}, which is already limited: limit one or the other"
    )]
    Nested { path: String, other: String },
    #[error("cgroup {path} has no limits attached")]
    NotAttached { path: String },
    #[error(transparent)]
    Shaper(#[from] ShaperError),
}

/// One limited cgroup, as reported to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupStatus {
    /// None when the cgroup is gone but its pins are not yet cleaned up.
    pub path: Option<PathBuf>,
    pub cgroup_id: u64,
    pub pod_uid: Option<String>,
    pub limits: Limits,
    pub counters: CgroupCounters,
}

/// What opening a node found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// limited cgroups taken over from pins
    pub adopted: usize,
    /// pins whose cgroup is gone, removed
    pub removed_stale: usize,
    /// attachments a crash left half made, completed
    pub repaired: usize,
}

/// What [`Node::repair`] put back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repair {
    /// map pins made again
    pub maps: usize,
    /// limited cgroups whose links were attached and pinned again
    pub cgroups: usize,
}

pub struct Node {
    shaper: Shaper,
    maps_dir: PathBuf,
    links_dir: PathBuf,
    root: CgroupRoot,
    /// Paths of the attached cgroups: an index of the pins, so that requests
    /// do not walk every pin (rebuilt from the pins on open).
    attached: HashMap<u64, PathBuf>,
}

impl Node {
    /// Loads the shaper with its maps pinned under `bpffs_dir` and adopts
    /// every attachment pinned there.
    pub fn open(bpffs_dir: &Path, root: CgroupRoot) -> Result<(Self, Adoption), NodeError> {
        let pin_dir_error = |source| NodeError::PinDir {
            path: bpffs_dir.display().to_string(),
            source,
        };
        fs::create_dir_all(bpffs_dir).map_err(pin_dir_error)?;
        if !is_bpffs(bpffs_dir).map_err(pin_dir_error)? {
            return Err(NodeError::NotBpffs {
                path: bpffs_dir.display().to_string(),
            });
        }
        let maps_dir = bpffs_dir.join("maps");
        let links_dir = bpffs_dir.join("links");
        for d in [&maps_dir, &links_dir] {
            fs::create_dir_all(d).map_err(pin_dir_error)?;
        }
        let shaper = Shaper::load_pinned(&maps_dir)?;
        let mut node = Self {
            shaper,
            maps_dir,
            links_dir,
            root,
            attached: HashMap::new(),
        };
        let adoption = node.adopt()?;
        Ok((node, adoption))
    }

    pub fn root(&self) -> &CgroupRoot {
        &self.root
    }

    /// Takes over the pinned attachments: completes half-made ones, removes
    /// those whose cgroup is gone, and forgets limits that never got links.
    fn adopt(&mut self) -> Result<Adoption, NodeError> {
        let mut report = Adoption::default();
        for id in self.pinned_ids()? {
            let dir = self.link_dir(id);
            let Some(path) = self.root.path_of(id) else {
                detach_pinned(&dir)?;
                self.shaper.remove_limits(id)?;
                report.removed_stale += 1;
                continue;
            };
            if !is_fully_pinned(&dir) {
                // A crash between pins: start the attachment over.
                detach_pinned(&dir)?;
                if self.shaper.limits(id)?.is_some() {
                    let cgroup = Cgroup::open(&path).map_err(ShaperError::from)?;
                    self.shaper.attach_pinned(&cgroup, &dir)?;
                    report.repaired += 1;
                } else {
                    continue;
                }
            }
            self.attached.insert(id, path);
            report.adopted += 1;
        }
        let pinned = self.pinned_ids()?;
        for id in self.shaper.limited_ids()? {
            if !pinned.contains(&id) {
                self.shaper.remove_limits(id)?;
            }
        }
        Ok(report)
    }

    /// Sets a cgroup's limits, attaching the shaper if it is not yet. A limit
    /// already attached changes with one map update, without re-attaching.
    pub fn apply(&mut self, cgroup: &Cgroup, limits: &Limits) -> Result<CgroupStatus, NodeError> {
        self.refuse_nesting(cgroup)?;
        let dir = self.link_dir(cgroup.id());
        // Limits first: a crash before the links are pinned leaves a limit
        // with no links, which the next adoption removes.
        self.shaper.set_limits(cgroup.id(), limits)?;
        if !is_fully_pinned(&dir) {
            detach_pinned(&dir)?;
            if let Err(e) = self.shaper.attach_pinned(cgroup, &dir) {
                let _ = self.shaper.remove_limits(cgroup.id());
                return Err(e.into());
            }
        }
        self.attached
            .insert(cgroup.id(), cgroup.path().to_path_buf());
        self.status_of(cgroup.id(), Some(cgroup.path().to_path_buf()))
    }

    /// Detaches the shaper from a cgroup and forgets its limits.
    pub fn remove(&mut self, cgroup: &Cgroup) -> Result<(), NodeError> {
        self.remove_id(cgroup.id(), &cgroup.path().display().to_string())
    }

    pub fn remove_id(&mut self, cgroup_id: u64, shown: &str) -> Result<(), NodeError> {
        let dir = self.link_dir(cgroup_id);
        if !dir.exists() {
            return Err(NodeError::NotAttached { path: shown.into() });
        }
        detach_pinned(&dir)?;
        self.shaper.remove_limits(cgroup_id)?;
        // Open connections would otherwise stay paced at the old share.
        let netns = self
            .attached
            .remove(&cgroup_id)
            .map(|path| network_namespaces_in(&path))
            .unwrap_or_default();
        if let Err(e) = self.shaper.unpace(cgroup_id, &netns) {
            tracing::warn!(error = %e, cgroup_id, "cannot lift the pacing of open sockets");
        }
        Ok(())
    }

    /// A limited cgroup's status, or None if it is not limited.
    pub fn status(&self, cgroup: &Cgroup) -> Result<Option<CgroupStatus>, NodeError> {
        if !self.attached.contains_key(&cgroup.id()) {
            return Ok(None);
        }
        self.status_of(cgroup.id(), Some(cgroup.path().to_path_buf()))
            .map(Some)
    }

    /// Every limited cgroup.
    pub fn list(&self) -> Result<Vec<CgroupStatus>, NodeError> {
        let mut out = Vec::with_capacity(self.attached.len());
        for (id, path) in &self.attached {
            out.push(self.status_of(*id, Some(path.clone()))?);
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Removes the pins of cgroups that no longer exist; returns how many.
    pub fn remove_stale(&mut self) -> Result<usize, NodeError> {
        // gone, or replaced by a new cgroup of the same name (another id)
        let stale: Vec<u64> = self
            .attached
            .iter()
            .filter(|(id, path)| fs::metadata(path).map(|m| m.ino() != **id).unwrap_or(true))
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            detach_pinned(&self.link_dir(*id))?;
            self.shaper.remove_limits(*id)?;
            self.attached.remove(id);
        }
        Ok(stale.len())
    }

    /// Puts back pins removed under the daemon (by hand, or by a cleanup
    /// script): the maps' pins, and the links of every limited cgroup. A link
    /// whose pin is removed is detached by the kernel, so this runs with the
    /// stale sweep and a cgroup is unlimited for at most one sweep interval.
    pub fn repair(&mut self) -> Result<Repair, NodeError> {
        let mut report = Repair {
            maps: self.shaper.repin_maps(&self.maps_dir)?,
            cgroups: 0,
        };
        fs::create_dir_all(&self.links_dir).map_err(|source| NodeError::PinDir {
            path: self.links_dir.display().to_string(),
            source,
        })?;
        let attached: Vec<(u64, PathBuf)> =
            self.attached.iter().map(|(i, p)| (*i, p.clone())).collect();
        for (id, path) in attached {
            let dir = self.link_dir(id);
            if is_fully_pinned(&dir) {
                continue;
            }
            detach_pinned(&dir)?;
            match Cgroup::open(&path) {
                // the same cgroup (not a new one of the same name)
                Ok(cgroup) if cgroup.id() == id => {
                    self.shaper.attach_pinned(&cgroup, &dir)?;
                    report.cgroups += 1;
                }
                // gone: the stale sweep forgets it
                _ => {}
            }
        }
        Ok(report)
    }

    fn status_of(&self, id: u64, path: Option<PathBuf>) -> Result<CgroupStatus, NodeError> {
        Ok(CgroupStatus {
            pod_uid: path.as_deref().and_then(pod_uid_of),
            path,
            cgroup_id: id,
            limits: self.shaper.limits(id)?.unwrap_or_default(),
            counters: self.shaper.counters(id)?,
        })
    }

    /// A limit on a cgroup and another on its ancestor or descendant would
    /// both count the same packets.
    fn refuse_nesting(&self, cgroup: &Cgroup) -> Result<(), NodeError> {
        for (id, other) in &self.attached {
            if *id != cgroup.id()
                && (other.starts_with(cgroup.path()) || cgroup.path().starts_with(other))
            {
                return Err(NodeError::Nested {
                    path: cgroup.path().display().to_string(),
                    other: other.display().to_string(),
                });
            }
        }
        Ok(())
    }

    fn link_dir(&self, id: u64) -> PathBuf {
        self.links_dir.join(id.to_string())
    }

    fn pinned_ids(&self) -> Result<Vec<u64>, NodeError> {
        let entries = fs::read_dir(&self.links_dir).map_err(|source| NodeError::PinDir {
            path: self.links_dir.display().to_string(),
            source,
        })?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect())
    }
}

/// The distinct network namespaces of the processes in a cgroup subtree.
fn network_namespaces_in(cgroup: &Path) -> Vec<fs::File> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let Ok(file) = fs::File::open(format!("/proc/{}/ns/net", pid.trim())) else {
                    continue;
                };
                if let Ok(meta) = file.metadata() {
                    if seen.insert((meta.dev(), meta.ino())) {
                        out.push(file);
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

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs fills the struct we pass; the result is checked.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}
