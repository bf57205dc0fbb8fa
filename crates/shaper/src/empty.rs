//! Programs that pass every packet and do nothing else (`bpf/empty.c`): the
//! baseline `podshaper bench` reports the shaper's BPF run time against, on
//! the same packets of the same cgroup.

use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::cgroup::Cgroup;
use crate::shaper::{program, program_error, ShaperError};

static EMPTY_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/empty.o"));

/// The programs' names, as the kernel's statistics know them.
pub const EMPTY_EGRESS: &str = "empty_egress";
pub const EMPTY_INGRESS: &str = "empty_ingress";

/// Both programs, loaded and attached to one cgroup; dropping this detaches
/// and unloads them.
pub struct EmptyPrograms {
    _ebpf: Ebpf,
}

impl EmptyPrograms {
    /// Loads the programs and attaches them to `cgroup`, beside whatever runs
    /// there (BPF links coexist with other programs on a cgroup).
    pub fn attach(cgroup: &Cgroup) -> Result<Self, ShaperError> {
        let mut ebpf = EbpfLoader::new()
            .load(EMPTY_OBJECT)
            .map_err(|e| ShaperError::Load(Box::new(e)))?;
        let fd = cgroup.fd()?;
        for (name, attach_type) in [
            (EMPTY_EGRESS, CgroupSkbAttachType::Egress),
            (EMPTY_INGRESS, CgroupSkbAttachType::Ingress),
        ] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load().map_err(|e| program_error(name, e))?;
            prog.attach(&fd, attach_type, CgroupAttachMode::Single)
                .map_err(|e| ShaperError::Attach {
                    path: cgroup.path().display().to_string(),
                    source: Box::new(e),
                })?;
        }
        Ok(Self { _ebpf: ebpf })
    }
}
