//! Attaching the shaper's three programs to a cgroup, and detaching them.

use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, SockOps};

use super::{
    program, program_error, Attachment, Shaper, ShaperError, EGRESS_PROGRAM, INGRESS_PROGRAM,
    SOCKOPS_PROGRAM,
};
use crate::cgroup::Cgroup;

impl Shaper {
    /// Attaches the egress, ingress and sockops programs to a cgroup. Its
    /// limits come from [`Shaper::set_limits`]; until then traffic passes.
    /// The cgroup's shaping state (and counters) is the kernel's cgroup
    /// storage: made at the first attach to this map, kept while the cgroup
    /// lives, zeroed by [`Shaper::remove_limits`]. A repair that attaches
    /// again finds it as the programs left it.
    pub fn attach(&mut self, cgroup: &Cgroup) -> Result<Attachment, ShaperError> {
        let fd = cgroup.fd()?;
        let attach_error = |source: ProgramError| ShaperError::Attach {
            path: cgroup.path().display().to_string(),
            source: Box::new(source),
        };
        // BPF links (what aya makes on 5.7+) always coexist with other
        // programs on the cgroup (systemd's, a CNI's); the kernel refuses any
        // attach flag on them, so the mode must be Single (no flags).
        let mode = CgroupAttachMode::Single;
        let egress = program::<CgroupSkb>(&mut self.ebpf, EGRESS_PROGRAM)?
            .attach(&fd, CgroupSkbAttachType::Egress, mode)
            .map_err(attach_error)?;
        let ingress = match program::<CgroupSkb>(&mut self.ebpf, INGRESS_PROGRAM)?.attach(
            &fd,
            CgroupSkbAttachType::Ingress,
            mode,
        ) {
            Ok(link) => link,
            Err(e) => {
                let _ = program::<CgroupSkb>(&mut self.ebpf, EGRESS_PROGRAM)?.detach(egress);
                return Err(attach_error(e));
            }
        };
        let sockops = match program::<SockOps>(&mut self.ebpf, SOCKOPS_PROGRAM)?.attach(&fd, mode) {
            Ok(link) => link,
            Err(e) => {
                let _ = program::<CgroupSkb>(&mut self.ebpf, EGRESS_PROGRAM)?.detach(egress);
                let _ = program::<CgroupSkb>(&mut self.ebpf, INGRESS_PROGRAM)?.detach(ingress);
                return Err(attach_error(e));
            }
        };
        Ok(Attachment {
            cgroup_id: cgroup.id(),
            egress,
            ingress,
            sockops,
        })
    }

    /// Detaches the programs from a cgroup.
    pub fn detach(&mut self, attachment: Attachment) -> Result<(), ShaperError> {
        let Attachment {
            egress,
            ingress,
            sockops,
            ..
        } = attachment;
        let mut first_error = None;
        if let Err(e) = program::<CgroupSkb>(&mut self.ebpf, EGRESS_PROGRAM)?.detach(egress) {
            first_error.get_or_insert(program_error(EGRESS_PROGRAM, e));
        }
        if let Err(e) = program::<CgroupSkb>(&mut self.ebpf, INGRESS_PROGRAM)?.detach(ingress) {
            first_error.get_or_insert(program_error(INGRESS_PROGRAM, e));
        }
        if let Err(e) = program::<SockOps>(&mut self.ebpf, SOCKOPS_PROGRAM)?.detach(sockops) {
            first_error.get_or_insert(program_error(SOCKOPS_PROGRAM, e));
        }
        first_error.map_or(Ok(()), Err)
    }
}
