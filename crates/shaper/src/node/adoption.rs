//! The pins as the node's state: taking over what an earlier daemon left
//! (completing, upgrading or removing attachments), removing the pins of
//! cgroups that are gone, putting back pins removed under the daemon, and
//! removing everything for an uninstall.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::sweep::remove_all_queues;
use super::{create_pin_dir, Adoption, Node, NodeError, QueueRetry, Repair, Uninstall};
use crate::cgroup::Cgroup;
use crate::shaper::{detach_pinned, is_fully_pinned, ProgramTags, ShaperError};

impl Node {
    /// Takes over the pinned attachments: completes half-made ones, removes
    /// those whose cgroup is gone, and forgets limits that never got links.
    pub(super) fn adopt(&mut self) -> Result<Adoption, NodeError> {
        let mut report = Adoption::default();
        let tags = ProgramTags::read();
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
                    self.ready_open_sockets(id, &path);
                    report.repaired += 1;
                } else {
                    continue;
                }
            } else {
                // After an upgrade the old programs would go on with their
                // own code (and, if a layout changed, their own state maps).
                // Failing that, they still hold the limit: logged, kept.
                match self.upgrade(id, &path, &dir, &tags) {
                    Ok(true) => report.upgraded += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(cgroup = %path.display(), error = %e, "cannot move an attachment to this build's programs: it keeps those of the build that made it")
                    }
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
        // a cgroup detached by hand, or by an older build that kept no flags
        for id in self.shaper.ingress_queued_ids()? {
            if !self.attached.contains_key(&id) {
                self.shaper.set_ingress_queued(id, false)?;
            }
        }
        // now that every attachment runs this build's programs (the bump at
        // load came before the moves: an older build's program could take
        // it with its own reading of the limit, docs/design/state-and-upgrades.md)
        self.shaper.retake_limits()?;
        Ok(report)
    }

    /// Moves an attachment made by another build to this shaper's programs;
    /// false if it already runs them.
    fn upgrade(
        &mut self,
        id: u64,
        path: &Path,
        dir: &Path,
        tags: &ProgramTags,
    ) -> Result<bool, NodeError> {
        if !self.shaper.runs_another_build(dir, tags)? {
            return Ok(false);
        }
        let cgroup = Cgroup::open(path).map_err(ShaperError::from)?;
        if cgroup.id() != id {
            // a new cgroup of the same name: the stale sweep handles it
            return Ok(false);
        }
        self.shaper.reattach_pinned(&cgroup, dir)?;
        Ok(true)
    }

    /// Removes everything the shaper put on the node, for an uninstall:
    /// every limited cgroup's links and limits (lifting the pacing of its
    /// open sockets), every ingress queue in any network namespace on the
    /// node (a pod's whose limit outlived its pins too) and the node's queue
    /// for hostNetwork pods, then, once this shaper's programs are unloaded,
    /// every pin under the bpffs directory. A daemon must not be running:
    /// it would put its pins back.
    pub fn uninstall(mut self) -> Result<Uninstall, NodeError> {
        // the queues first (the policers behind them hold the limits
        // meanwhile): every one on the node, whether a pin names it or not
        let mut report = Uninstall {
            queues: remove_all_queues()?,
            ..Uninstall::default()
        };
        self.set_host_ingress_queue(false);
        let attached: Vec<(u64, PathBuf)> =
            self.attached.iter().map(|(i, p)| (*i, p.clone())).collect();
        for (id, path) in attached {
            self.remove_id(id, &path.display().to_string())?;
            report.cgroups += 1;
        }
        let dir = self.maps_dir.parent().map(Path::to_path_buf);
        // unloads the programs and closes the maps; only pins hold them now
        drop(self);
        if let Some(dir) = dir {
            fs::remove_dir_all(&dir).map_err(|source| NodeError::PinDir {
                path: dir.display().to_string(),
                source,
            })?;
            report.pins = true;
        }
        Ok(report)
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
            let path = self.attached.remove(id).unwrap_or_default();
            self.problems.forget(*id);
            // its namespace went with its processes, and the queue with it
            self.queued.remove(id);
            self.queue_retry.remove(id);
            self.queue_removals.remove(id);
            // but a hostNetwork pod's classes live in the node's queue
            if !self.take_host_slot(*id, &path.display().to_string()) {
                let retry = QueueRetry::after(1, Instant::now());
                self.queue_removals.insert(*id, (path, retry));
            }
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
        if self.shaper.has_flow_classifier() && !self.flow_classifier.exists() {
            // queues built before keep their program; new ones need the pin
            if let Some(dir) = self.flow_classifier.parent() {
                create_pin_dir(dir)?;
            }
            self.shaper.pin_flow_classifier(&self.flow_classifier)?;
            report.maps += 1;
        }
        if self.shaper.has_host_classifier() && !self.host_classifier.exists() {
            if let Some(dir) = self.host_classifier.parent() {
                create_pin_dir(dir)?;
            }
            self.shaper.pin_host_classifier(&self.host_classifier)?;
            report.maps += 1;
        }
        create_pin_dir(&self.links_dir)?;
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
                    self.ready_open_sockets(id, &path);
                    report.cgroups += 1;
                }
                // gone: the stale sweep forgets it
                _ => {}
            }
        }
        Ok(report)
    }
}
