//! Client-supplied BPF programs, behind `--allow-custom-programs` (off by
//! default). Only cgroup program types are accepted; their
//! links are pinned under `<bpffs-dir>/custom/<cgroup id>/<program>`.

use std::fs;
use std::path::PathBuf;

use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, Program};
use aya::Ebpf;
use podshaper_shaper::Cgroup;

#[derive(Debug, thiserror::Error)]
pub enum CustomError {
    #[error("the BPF object cannot be loaded")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the BPF object has no programs")]
    Empty,
    #[error("program {name} is of type {kind}; only cgroup_skb (with a cgroup_skb/ingress or cgroup_skb/egress section) and sockops programs are accepted")]
    NotCgroup { name: String, kind: String },
    #[error("program {name} failed to load or attach")]
    Program {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub struct CustomPrograms {
    dir: PathBuf,
}

impl CustomPrograms {
    pub fn new(bpffs_dir: PathBuf) -> Self {
        Self {
            dir: bpffs_dir.join("custom"),
        }
    }

    /// Loads `object`, checks every program is a cgroup program, attaches
    /// each to `cgroup` and pins its link.
    pub fn attach(&mut self, cgroup: &Cgroup, object: &[u8]) -> Result<(), CustomError> {
        let mut ebpf = Ebpf::load(object).map_err(|e| CustomError::Load(Box::new(e)))?;
        let mut count = 0;
        for (name, program) in ebpf.programs() {
            count += 1;
            let accepted = match program {
                Program::CgroupSkb(p) => p.expected_attach_type().is_some(),
                Program::SockOps(_) => true,
                _ => false,
            };
            if !accepted {
                return Err(CustomError::NotCgroup {
                    name: name.to_string(),
                    kind: format!("{:?}", program.prog_type()),
                });
            }
        }
        if count == 0 {
            return Err(CustomError::Empty);
        }
        let dir = self.dir.join(cgroup.id().to_string());
        let fd = cgroup.fd().map_err(|e| program_error("(cgroup)", e))?;
        fs::create_dir_all(&dir).map_err(|e| program_error("(pin directory)", e))?;
        for (name, program) in ebpf.programs_mut() {
            let link: FdLink = match program {
                Program::CgroupSkb(p) => {
                    p.load().map_err(|e| program_error(name, e))?;
                    let Some(kind) = *p.expected_attach_type() else {
                        continue;
                    };
                    let id = p
                        .attach(&fd, kind, CgroupAttachMode::Single)
                        .map_err(|e| program_error(name, e))?;
                    let link = p.take_link(id).map_err(|e| program_error(name, e))?;
                    link.try_into().map_err(|e| program_error(name, e))?
                }
                Program::SockOps(p) => {
                    p.load().map_err(|e| program_error(name, e))?;
                    let id = p
                        .attach(&fd, CgroupAttachMode::Single)
                        .map_err(|e| program_error(name, e))?;
                    let link = p.take_link(id).map_err(|e| program_error(name, e))?;
                    link.try_into().map_err(|e| program_error(name, e))?
                }
                _ => continue,
            };
            link.pin(dir.join(name))
                .map_err(|e| program_error(name, e))?;
        }
        Ok(())
    }

    /// Detaches every custom program from a cgroup (unpinning drops the
    /// links); true if there were any.
    pub fn detach(&mut self, cgroup_id: u64) -> bool {
        let dir = self.dir.join(cgroup_id.to_string());
        match fs::remove_dir_all(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot remove custom program pins");
                false
            }
        }
    }
}

fn program_error(name: &str, e: impl std::error::Error + Send + Sync + 'static) -> CustomError {
    CustomError::Program {
        name: name.to_string(),
        source: Box::new(e),
    }
}
