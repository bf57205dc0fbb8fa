//! What the shaper pins in bpffs so that it outlives the process: each
//! attachment's links, the maps, and the queues' classifiers.

use std::path::Path;

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::{CgroupSkb, SchedClassifier, SockOps};

use super::{
    pin_error, program, program_error, Shaper, ShaperError, ALL_MAPS, EGRESS_LINK, EGRESS_PROGRAM,
    FLOW_CLASS_PROGRAM, HOST_CLASS_PROGRAM, INGRESS_LINK, INGRESS_PROGRAM, LINKS, NEXT_LINKS_DIR,
    SOCKOPS_LINK, SOCKOPS_PROGRAM,
};
use crate::cgroup::Cgroup;

/// The tag (a hash of the instructions, the same for every load of one
/// build) of every program loaded in the kernel, by program id.
pub struct ProgramTags(std::collections::HashMap<u32, u64>);

impl ProgramTags {
    /// Reads them from the kernel (programs that go away meanwhile are left
    /// out).
    pub fn read() -> Self {
        Self(
            aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .map(|info| (info.id(), info.tag()))
                .collect(),
        )
    }
}

impl Shaper {
    /// Attaches to a cgroup and pins the three links in `links_dir`, so that
    /// they outlive this process. On failure nothing stays attached.
    pub fn attach_pinned(&mut self, cgroup: &Cgroup, links_dir: &Path) -> Result<(), ShaperError> {
        let attachment = self.attach(cgroup)?;
        let links: [(&str, Result<FdLink, LinkError>); 3] = [
            (
                EGRESS_LINK,
                program::<CgroupSkb>(&mut self.ebpf, EGRESS_PROGRAM)?
                    .take_link(attachment.egress)
                    .map_err(|e| program_error(EGRESS_PROGRAM, e))?
                    .try_into(),
            ),
            (
                INGRESS_LINK,
                program::<CgroupSkb>(&mut self.ebpf, INGRESS_PROGRAM)?
                    .take_link(attachment.ingress)
                    .map_err(|e| program_error(INGRESS_PROGRAM, e))?
                    .try_into(),
            ),
            (
                SOCKOPS_LINK,
                program::<SockOps>(&mut self.ebpf, SOCKOPS_PROGRAM)?
                    .take_link(attachment.sockops)
                    .map_err(|e| program_error(SOCKOPS_PROGRAM, e))?
                    .try_into(),
            ),
        ];
        std::fs::create_dir_all(links_dir).map_err(|e| pin_error(links_dir, e))?;
        // Links not yet pinned are detached when dropped on an early return;
        // the ones already pinned are removed by detach_pinned.
        for (name, link) in links {
            let pinned = link.map_err(|e| pin_error(links_dir, e)).and_then(|l| {
                l.pin(links_dir.join(name))
                    .map_err(|e| pin_error(links_dir, e))
            });
            if let Err(e) = pinned {
                let _ = detach_pinned(links_dir);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether any link pinned in `links_dir` runs a program of another
    /// build than this shaper's (another daemon version attached it). A
    /// restarted daemon of the same build loads programs with other ids but
    /// the same tags, so those count as its own.
    pub fn runs_another_build(
        &self,
        links_dir: &Path,
        tags: &ProgramTags,
    ) -> Result<bool, ShaperError> {
        for (link, name) in LINKS {
            let ours = self
                .ebpf
                .program(name)
                .ok_or(ShaperError::Missing {
                    kind: "program",
                    name,
                })?
                .info()
                .map_err(|e| program_error(name, e))?
                .tag();
            let path = links_dir.join(link);
            let pinned: FdLink = PinnedLink::from_pin(&path)
                .map_err(|e| pin_error(&path, e))?
                .into();
            let program_id = pinned.info().map_err(|e| pin_error(&path, e))?.program_id();
            if tags.0.get(&program_id) != Some(&ours) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Moves an attachment pinned in `links_dir` to this shaper's programs.
    /// The new links are attached and pinned first (in a subdirectory),
    /// then each old link is unpinned, which detaches it, and the new pin
    /// takes its name: the cgroup is never without its limit (for a moment
    /// it has both programs, each holding it to the limit).
    pub fn reattach_pinned(
        &mut self,
        cgroup: &Cgroup,
        links_dir: &Path,
    ) -> Result<(), ShaperError> {
        let next = links_dir.join(NEXT_LINKS_DIR);
        // what a move cut short left
        detach_pinned(&next)?;
        self.attach_pinned(cgroup, &next)?;
        for (link, _) in LINKS {
            let old = links_dir.join(link);
            if old.exists() {
                let pinned = PinnedLink::from_pin(&old).map_err(|e| pin_error(&old, e))?;
                drop(pinned.unpin().map_err(|e| pin_error(&old, e))?);
            }
            std::fs::rename(next.join(link), &old).map_err(|e| pin_error(&old, e))?;
        }
        std::fs::remove_dir(&next).map_err(|e| pin_error(&next, e))
    }

    /// Pins the ingress queue's flow classifier at `path` (in bpffs), where
    /// `tc` finds it (crate::ingress_queue). A pin already there is replaced:
    /// the queues built with the program it named keep that program.
    pub fn pin_flow_classifier(&mut self, path: &Path) -> Result<(), ShaperError> {
        self.pin_classifier(FLOW_CLASS_PROGRAM, self.has_flow_classifier, path)
    }

    /// Pins the hostNetwork pods' queue classifier at `path`, as
    /// [`Self::pin_flow_classifier`] does the flow classifier
    /// (crate::host_queue).
    pub fn pin_host_classifier(&mut self, path: &Path) -> Result<(), ShaperError> {
        self.pin_classifier(HOST_CLASS_PROGRAM, self.has_host_classifier, path)
    }

    fn pin_classifier(
        &mut self,
        name: &'static str,
        loaded: bool,
        path: &Path,
    ) -> Result<(), ShaperError> {
        if !loaded {
            return Err(ShaperError::Missing {
                kind: "loaded program",
                name,
            });
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(pin_error(path, e)),
            _ => {}
        }
        program::<SchedClassifier>(&mut self.ebpf, name)?
            .pin(path)
            .map_err(|e| pin_error(path, e))
    }

    /// Pins again, in `maps_dir`, the maps whose pins were removed (the maps
    /// live on while this process or a program holds them; without their
    /// pins the next daemon would start with empty ones). Returns how many.
    pub fn repin_maps(&self, maps_dir: &Path) -> Result<usize, ShaperError> {
        std::fs::create_dir_all(maps_dir).map_err(|e| pin_error(maps_dir, e))?;
        let mut repinned = 0;
        for name in ALL_MAPS {
            let path = maps_dir.join(name);
            if path.exists() {
                continue;
            }
            let map = self
                .ebpf
                .map(name)
                .ok_or(ShaperError::Missing { kind: "map", name })?;
            map.pin(&path).map_err(|e| pin_error(maps_dir, e))?;
            repinned += 1;
        }
        Ok(repinned)
    }
}

/// Whether all three links of an attachment are pinned in `links_dir`.
pub fn is_fully_pinned(links_dir: &Path) -> bool {
    LINKS.iter().all(|(l, _)| links_dir.join(l).exists())
}

/// Unpins and so detaches the links pinned in `links_dir`, then removes it.
/// Missing pins are skipped, so this also finishes a half-made attachment.
pub fn detach_pinned(links_dir: &Path) -> Result<(), ShaperError> {
    let next = links_dir.join(NEXT_LINKS_DIR);
    if next.exists() {
        detach_pinned(&next)?;
    }
    for (name, _) in LINKS {
        let path = links_dir.join(name);
        if !path.exists() {
            continue;
        }
        let link = PinnedLink::from_pin(&path).map_err(|e| pin_error(links_dir, e))?;
        // Dropping the last reference to the link detaches it.
        drop(link.unpin().map_err(|e| pin_error(links_dir, e))?);
    }
    match std::fs::remove_dir(links_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(pin_error(links_dir, e)),
    }
}
