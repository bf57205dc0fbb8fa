//! The loaded BPF shaper: attach it to cgroups, set their limits, read their
//! counters. One loaded object serves every cgroup.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::maps::{Array, CgroupStorageKey, HashMap, MapData, MapError, PerCpuValues};
use aya::programs::cgroup_skb::CgroupSkbLinkId;
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::sock_ops::SockOpsLinkId;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Iter, ProgramError, SchedClassifier, SockOps,
};
use aya::Btf;
use aya::{Ebpf, EbpfError, EbpfLoader};

use crate::abi;
use crate::cgroup::{Cgroup, CgroupError};
use crate::counters::CgroupCounters;
use crate::layout;
use crate::limits::{DirectionLimit, Limits};

/// The shaper object, compiled from `bpf/shaper.c` by build.rs.
pub(crate) static SHAPER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shaper.o"));

const EGRESS_PROGRAM: &str = "podshaper_egress";
const INGRESS_PROGRAM: &str = "podshaper_ingress";
const SOCKOPS_PROGRAM: &str = "podshaper_sockops";
const LIMITS_MAP: &str = "limits";
const LIMITS_VERSION_MAP: &str = "limits_version";
const STATES_MAP: &str = "cgroup_states";
/// Maps of older builds, whose pins are removed once this build has loaded:
/// the per-CPU `counters` (until session 8) and the `states` hash (until
/// session 9); their contents now live in `cgroup_states`.
const OBSOLETE_MAPS: [&str; 2] = ["counters", "states"];
/// `cgroup_states`, the legacy cgroup storage (BPF_MAP_TYPE_CGROUP_STORAGE),
/// which aya marks deprecated for BPF_MAP_TYPE_CGRP_STORAGE: only the legacy
/// type hands a cgroup_skb program the storage of the cgroup it is attached
/// to without a lookup; the newer one needs a `struct cgroup` pointer these
/// programs do not have. The kernel keeps supporting it (uapi).
#[expect(deprecated, reason = "see above")]
type StateMap<T> = aya::maps::CgroupStorage<T, abi::State>;
/// Each CPU's slice of each state's bucket (`struct ps_credit`), beside
/// `cgroup_states` under the same keys: the legacy per-CPU cgroup storage,
/// for the same reason as [`StateMap`].
const CREDITS_MAP: &str = "cpu_credits";
#[expect(deprecated, reason = "as for StateMap")]
type CreditMap<T> = aya::maps::PerCpuCgroupStorage<T, abi::Credit>;
const SOCK_STATES_MAP: &str = "sock_states";
/// Each receiving socket's window clamp: pinned so that a restarted daemon's
/// detach still finds (and gives back) the clamps the last one set.
const RCV_WINDOWS_MAP: &str = "rcv_windows";
/// The cgroups with an ingress queue in front of them: only their receiving
/// sockets' windows are clamped (to their flows' FIFOs).
const QUEUED_INGRESS_MAP: &str = "queued_ingress";
const UNPACE_TARGET_MAP: &str = "unpace_target";
const UNPACE_PROGRAM: &str = "podshaper_unpace";
const RECEIVERS_TARGET_MAP: &str = "receivers_target";
const RECEIVERS_PROGRAM: &str = "podshaper_receivers";
const SENDERS_TARGET_MAP: &str = "senders_target";
const SENDERS_PROGRAM: &str = "podshaper_senders";
const FLOW_CLASS_PROGRAM: &str = "podshaper_flow_class";
const HOST_CLASS_PROGRAM: &str = "podshaper_host_class";
const HOST_SLOTS_MAP: &str = "host_queue_slots";
const HOST_LEVELS_MAP: &str = "host_queue_levels";
const HOST_VERSION_MAP: &str = "host_queue_version";
const ALL_MAPS: [&str; 11] = [
    LIMITS_MAP,
    LIMITS_VERSION_MAP,
    STATES_MAP,
    CREDITS_MAP,
    SOCK_STATES_MAP,
    RCV_WINDOWS_MAP,
    QUEUED_INGRESS_MAP,
    UNPACE_TARGET_MAP,
    HOST_SLOTS_MAP,
    HOST_LEVELS_MAP,
    HOST_VERSION_MAP,
];
/// The maps that hold only what the programs rebuild from traffic, in the
/// groups that start afresh together when a build changes their layout: the
/// buckets with the CPUs' slices of them (a slice's bytes are counted in its
/// bucket's `lent`, and the counters live in both), the sockets' state, and
/// their receive windows' (a socket still armed finds none and starts again).
const STATE_MAP_GROUPS: [&[&str]; 3] = [
    &[STATES_MAP, CREDITS_MAP],
    &[SOCK_STATES_MAP],
    &[RCV_WINDOWS_MAP],
];
/// Pin names of an attachment's links, inside its directory.
const EGRESS_LINK: &str = "egress";
const INGRESS_LINK: &str = "ingress";
const SOCKOPS_LINK: &str = "sockops";
/// Each link's pin name and the program it runs.
const LINKS: [(&str, &str); 3] = [
    (EGRESS_LINK, EGRESS_PROGRAM),
    (INGRESS_LINK, INGRESS_PROGRAM),
    (SOCKOPS_LINK, SOCKOPS_PROGRAM),
];
/// Where [`Shaper::reattach_pinned`] pins the new links, inside an
/// attachment's directory, before they take the old ones' places.
const NEXT_LINKS_DIR: &str = "next";

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

/// Why the shaper could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ShaperError {
    #[error("cannot load the BPF shaper into the kernel (are you root, with CONFIG_CGROUP_BPF?)")]
    Load(#[source] Box<EbpfError>),
    #[error("the BPF shaper has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("the kernel ({release}) refuses BPF program {name}: {missing}")]
    KernelLacks {
        name: &'static str,
        release: String,
        missing: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("BPF program {name} failed")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot attach the shaper to cgroup {path}")]
    Attach {
        path: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("BPF map {name} operation failed")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("cannot pin or unpin the links in {path}")]
    Pin {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "cannot enter a network namespace of the cgroup's processes to reach their open sockets"
    )]
    EnterNetns(#[source] std::io::Error),
    #[error("the iterator {program} over the cgroup's open TCP sockets failed")]
    Iterator {
        program: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("hostNetwork pods' cgroups already sit at {most} other cgroup levels; level {level} gets no queue")]
    HostLevels { level: u32, most: u32 },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// The links that bind the shaper's three programs to one cgroup.
#[derive(Debug)]
pub struct Attachment {
    cgroup_id: u64,
    egress: CgroupSkbLinkId,
    ingress: CgroupSkbLinkId,
    sockops: SockOpsLinkId,
}

impl Attachment {
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }
}

/// The loaded shaper. Dropping it detaches every attachment it made and
/// unloads the programs (nothing is pinned).
pub struct Shaper {
    ebpf: Ebpf,
    /// whether the un-pacing iterator loaded (it needs kernel BTF and iter/tcp)
    can_unpace: bool,
    /// whether the delayed-ACK iterator loaded (kernel BTF, iter/tcp, and
    /// the kernel's socket and cgroup structs as it reads them)
    can_ready_receivers: bool,
    /// whether the iterator that paces sockets opened before an egress
    /// limit loaded
    can_ready_senders: bool,
    /// whether the ingress queue's flow classifier loaded
    has_flow_classifier: bool,
    /// whether the hostNetwork pods' queue's classifier loaded
    has_host_classifier: bool,
}

/// The optional parts of the shaper that loaded on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// the ingress queue's flow classifier (pods' queues)
    pub flow_classifier: bool,
    /// the hostNetwork pods' queue's classifier
    pub host_classifier: bool,
    /// the TCP iterator that lifts open sockets' pacing at a detach
    pub unpace: bool,
    /// the TCP iterator that readies open receiving sockets at an ingress limit
    pub ready_receivers: bool,
    /// the TCP iterator that paces open sending sockets at an egress limit
    pub ready_senders: bool,
    /// whether the iterators may turn on an open socket's sockops callbacks
    /// (Linux 6.12: crate::kernel::ARMS_OPEN_SOCKETS)
    pub arms_open_sockets: bool,
}

impl Features {
    /// Each optional refinement: its name, whether it is on, and what the
    /// shaper does without it. The limits hold either way.
    pub fn refinements(&self) -> [(&'static str, bool, &'static str); 6] {
        [
            (
                "queue classifier",
                self.flow_classifier,
                "pods' ingress is held by the cgroup policer alone (no queue in front of them)",
            ),
            (
                "host classifier",
                self.host_classifier,
                "hostNetwork pods' ingress is held by the cgroup policer alone",
            ),
            (
                "unpace iterator",
                self.unpace,
                "open sockets keep their pacing after a detach",
            ),
            (
                "receivers iterator",
                self.ready_receivers,
                "sockets opened before an ingress limit keep the kernel's delayed ACK",
            ),
            (
                "senders iterator",
                self.ready_senders,
                "sockets opened before an egress limit stay unpaced (the bucket alone holds them)",
            ),
            (
                "arming open sockets",
                self.arms_open_sockets,
                "sockets opened before a limit keep the share they had when it came (Linux 6.12 lets an iterator turn on their per-ACK callback), and open receiving sockets get no receive-window clamp",
            ),
        ]
    }
}

impl Shaper {
    /// Which optional parts loaded.
    pub fn features(&self) -> Features {
        Features {
            flow_classifier: self.has_flow_classifier,
            host_classifier: self.has_host_classifier,
            unpace: self.can_unpace,
            ready_receivers: self.can_ready_receivers,
            ready_senders: self.can_ready_senders,
            arms_open_sockets: crate::kernel::Release::running()
                .is_some_and(|r| r >= crate::kernel::ARMS_OPEN_SOCKETS),
        }
    }

    /// Loads the embedded shaper into the kernel, with maps of its own.
    pub fn load() -> Result<Self, ShaperError> {
        Self::load_with(&mut EbpfLoader::new())
    }

    /// net.ipv4.tcp_adv_win_scale, which kernels before 6.6 size a window
    /// from a buffer with (1 if it cannot be read: their default).
    fn adv_win_scale() -> &'static i32 {
        static SCALE: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
        SCALE.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_adv_win_scale")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1)
        })
    }

    /// Loads the shaper with its maps pinned in `maps_dir` (a bpffs directory):
    /// maps already pinned there are reused, with every limit and counter in
    /// them, so a restarted daemon carries on where the last one stopped.
    ///
    /// The four maps that hold only what the programs rebuild from traffic
    /// (`cgroup_states`: bucket levels and shares; `cpu_credits`: the CPUs'
    /// slices of the buckets; `sock_states`: per-socket state;
    /// `rcv_windows`: receiving sockets' window clamps) are started
    /// afresh where this build's layout differs: a pinned one whose key or
    /// value size is not this build's is unpinned first, with its group
    /// (STATE_MAP_GROUPS); and if the shaper does not load with the pinned
    /// maps, all four are unpinned and the load tried once more. So a
    /// daemon whose shaper changed their layout starts them afresh (buckets
    /// full) rather than not at all, or reading them wrong. Limits are never
    /// dropped; the counters, kept in `cgroup_states`, start again from zero then
    /// (a counter reset, to Prometheus). Programs still attached from before
    /// keep the maps they were loaded with until [`Node`](crate::Node) moves
    /// them to this build's.
    pub fn load_pinned(maps_dir: &Path) -> Result<Self, ShaperError> {
        let shaper = Self::load_pinned_maps(maps_dir)?;
        for name in OBSOLETE_MAPS {
            let obsolete = maps_dir.join(name);
            if !obsolete.exists() {
                continue;
            }
            // the programs of older builds still attached hold the map
            // itself until they are moved to this build's
            match std::fs::remove_file(&obsolete) {
                Ok(()) => {
                    tracing::info!(pin = %obsolete.display(), "removed the pin of an older build's map (its contents now live in cgroup_states)")
                }
                Err(e) => {
                    tracing::warn!(pin = %obsolete.display(), error = %e, "cannot remove the pin of an older build's map")
                }
            }
        }
        Ok(shaper)
    }

    fn load_pinned_maps(maps_dir: &Path) -> Result<Self, ShaperError> {
        // aya reuses a pinned map as it is, and a program that reads less
        // of a value than the pinned map holds loads fine: a state whose
        // layout shrank would be read under the new layout, silently
        let changed = changed_state_pins(maps_dir);
        if !changed.is_empty() {
            tracing::warn!(pins = ?changed, "pinned state maps of another size or layout (another version's): starting them afresh; limits are kept");
            unpin(&changed)?;
        }
        let first = match Self::load_with_pins(maps_dir) {
            Ok(shaper) => return Ok(shaper),
            Err(e) => e,
        };
        let stale: Vec<PathBuf> = STATE_MAP_GROUPS
            .iter()
            .flat_map(|group| group.iter())
            .map(|name| maps_dir.join(name))
            .filter(|path| path.exists())
            .collect();
        if stale.is_empty() {
            return Err(first);
        }
        tracing::warn!(error = %first, "the shaper does not load with its pinned state maps (another version's layout?): starting them afresh (buckets full, counters from zero); limits are kept");
        unpin(&stale)?;
        Self::load_with_pins(maps_dir)
    }

    fn load_with_pins(maps_dir: &Path) -> Result<Self, ShaperError> {
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&'static str, PathBuf)> = ALL_MAPS
            .iter()
            .map(|name| (*name, maps_dir.join(name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        Self::load_with(&mut loader)
    }

    fn load_with(loader: &mut EbpfLoader<'_>) -> Result<Self, ShaperError> {
        let mut ebpf = loader
            .override_global("adv_win_scale", Self::adv_win_scale(), false)
            .load(SHAPER_OBJECT)
            .map_err(|e| ShaperError::Load(Box::new(e)))?;
        for name in [EGRESS_PROGRAM, INGRESS_PROGRAM] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load().map_err(|e| program_error(name, e))?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, SOCKOPS_PROGRAM)?;
        sockops
            .load()
            .map_err(|e| program_error(SOCKOPS_PROGRAM, e))?;
        // Only the ingress queue needs it (and kernel 5.12 for its atomics):
        // without it, pods keep the cgroup policer.
        let mut load_classifier = |name: &'static str,
                                   without: &str|
         -> Result<bool, ShaperError> {
            match program::<SchedClassifier>(&mut ebpf, name)?.load() {
                Ok(()) => Ok(true),
                Err(e) => {
                    tracing::warn!(error = %e, program = name, "cannot load a queue's classifier: {without}");
                    Ok(false)
                }
            }
        };
        let has_flow_classifier = load_classifier(
            FLOW_CLASS_PROGRAM,
            "ingress is held by the cgroup policer alone",
        )?;
        let has_host_classifier = load_classifier(
            HOST_CLASS_PROGRAM,
            "hostNetwork pods' ingress is held by the cgroup policer alone",
        )?;
        let (can_unpace, can_ready_receivers, can_ready_senders) = match Btf::from_sys_fs() {
            Ok(btf) => {
                let mut load = |name: &'static str, without: &str| -> Result<bool, ShaperError> {
                    match program::<Iter>(&mut ebpf, name)?.load("tcp", &btf) {
                        Ok(()) => Ok(true),
                        Err(e) => {
                            tracing::warn!(error = %e, program = name, "cannot load a TCP iterator: {without}");
                            Ok(false)
                        }
                    }
                };
                (
                    load(
                        UNPACE_PROGRAM,
                        "open sockets keep their pacing after a detach",
                    )?,
                    load(
                        RECEIVERS_PROGRAM,
                        "sockets opened before an ingress limit keep the kernel's delayed ACK and their window",
                    )?,
                    load(
                        SENDERS_PROGRAM,
                        "sockets opened before an egress limit stay unpaced (the bucket alone holds them)",
                    )?,
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "no kernel BTF: open sockets keep their pacing after a detach, those opened before an ingress limit the kernel's delayed ACK, and those opened before an egress limit stay unpaced");
                (false, false, false)
            }
        };
        let mut shaper = Self {
            ebpf,
            can_unpace,
            can_ready_receivers,
            can_ready_senders,
            has_flow_classifier,
            has_host_classifier,
        };
        // Sockets' copies of their limits may come from pinned socket
        // storage that outlived the version map they were taken against.
        shaper.bump_limits_version()?;
        Ok(shaper)
    }

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

    /// Whether the flow classifier loaded (it needs kernel 5.12).
    pub fn has_flow_classifier(&self) -> bool {
        self.has_flow_classifier
    }

    /// Pins the hostNetwork pods' queue classifier at `path`, as
    /// [`Self::pin_flow_classifier`] does the flow classifier
    /// (crate::host_queue).
    pub fn pin_host_classifier(&mut self, path: &Path) -> Result<(), ShaperError> {
        self.pin_classifier(HOST_CLASS_PROGRAM, self.has_host_classifier, path)
    }

    pub fn has_host_classifier(&self) -> bool {
        self.has_host_classifier
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

    /// Gives a hostNetwork pod's cgroup its slot in the node's queue (the
    /// host classifier sends the packets of its sockets there from now on),
    /// and has the classifier look at its cgroup level.
    pub fn set_host_queue_slot(
        &mut self,
        cgroup_id: u64,
        level: u32,
        slot: u32,
    ) -> Result<(), ShaperError> {
        self.add_host_queue_level(level)?;
        let mut map: HashMap<&mut MapData, u64, u32> = map_mut(&mut self.ebpf, HOST_SLOTS_MAP)?;
        map.insert(cgroup_id, slot, 0)
            .map_err(|e| map_error(HOST_SLOTS_MAP, e))?;
        self.bump_host_queue_version()
    }

    /// Takes a cgroup's slot away: its packets are no longer queued.
    pub fn remove_host_queue_slot(&mut self, cgroup_id: u64) -> Result<(), ShaperError> {
        remove_key::<u32>(&mut self.ebpf, HOST_SLOTS_MAP, cgroup_id)?;
        self.bump_host_queue_version()
    }

    /// Has the host classifier find every socket's slot again on its next
    /// packet (it keeps what it found in the socket's storage).
    fn bump_host_queue_version(&mut self) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, HOST_VERSION_MAP)?)
                .map_err(|e| map_error(HOST_VERSION_MAP, e))?;
        let last = map.get(&0, 0).map_err(|e| map_error(HOST_VERSION_MAP, e))?;
        map.set(0, last.wrapping_add(1), 0)
            .map_err(|e| map_error(HOST_VERSION_MAP, e))
    }

    /// Every cgroup with a slot in the node's queue, and its slot.
    pub fn host_queue_slots(&self) -> Result<Vec<(u64, u32)>, ShaperError> {
        let map: HashMap<&MapData, u64, u32> = map_ref(&self.ebpf, HOST_SLOTS_MAP)?;
        map.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(HOST_SLOTS_MAP, e))
    }

    /// Adds a cgroup level to those the host classifier looks at. Levels
    /// are only added, never taken away: a level left without slots costs
    /// a lookup that finds nothing, and a pod's level is the same for every
    /// pod of a node (the kubelet's layout).
    fn add_host_queue_level(&mut self, level: u32) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(raw_map_mut(&mut self.ebpf, HOST_LEVELS_MAP)?)
                .map_err(|e| map_error(HOST_LEVELS_MAP, e))?;
        for index in 0..abi::HOST_LEVELS {
            let have = map
                .get(&index, 0)
                .map_err(|e| map_error(HOST_LEVELS_MAP, e))?;
            if have == level {
                return Ok(());
            }
            if have == 0 {
                return map
                    .set(index, level, 0)
                    .map_err(|e| map_error(HOST_LEVELS_MAP, e));
            }
        }
        Err(ShaperError::HostLevels {
            level,
            most: abi::HOST_LEVELS,
        })
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

    /// Lifts the pacing cap this shaper put on a cgroup's open TCP sockets.
    /// Call it after detaching: with the programs gone, nothing else would.
    ///
    /// A TCP iterator sees the sockets of the network namespace it is opened
    /// in, so it runs once in ours (hostNetwork pods) and once in each of
    /// `netns` (the namespaces of the cgroup's processes).
    pub fn unpace(&mut self, cgroup_id: u64, netns: &[File]) -> Result<(), ShaperError> {
        if !self.can_unpace {
            return Ok(());
        }
        self.run_iterator(UNPACE_PROGRAM, UNPACE_TARGET_MAP, cgroup_id, netns)
    }

    /// Readies the TCP sockets a cgroup's processes (or those of cgroups
    /// below it) opened before it got an ingress limit for receiving under
    /// it, as the sockops program does for sockets opened since: shortens
    /// their delayed ACK and arms their receive-window clamp. Call it when a
    /// cgroup gets an ingress limit. The sockets are looked for as in
    /// [`Shaper::unpace`].
    pub fn ready_receivers(&mut self, cgroup_id: u64, netns: &[File]) -> Result<(), ShaperError> {
        if !self.can_ready_receivers {
            return Ok(());
        }
        self.run_iterator(RECEIVERS_PROGRAM, RECEIVERS_TARGET_MAP, cgroup_id, netns)
    }

    /// Paces the TCP sockets a cgroup's processes (or those of cgroups below
    /// it) opened before it got an egress limit of `rate`, as the sockops
    /// program does for sockets opened since: each at the limit divided
    /// among them (where the egress program starts the cgroup's share too),
    /// with its congestion window clamped, and with the per-ACK callback on
    /// that applies each new share. Call it just before a cgroup gets an
    /// egress limit (so that its open flows meet the bucket paced), or after
    /// its programs were attached again. The sockets are looked for as in
    /// [`Shaper::unpace`]: once to count them, once to pace them.
    pub fn ready_senders(
        &mut self,
        cgroup_id: u64,
        rate: &DirectionLimit,
        netns: &[File],
    ) -> Result<(), ShaperError> {
        if !self.can_ready_senders {
            return Ok(());
        }
        // [cgroup, the rate to pace at (0: count), sockets found, the share
        // the cgroup's bucket starts at]
        self.write_senders_target(&[(1, 0), (2, 0), (3, 0)])?;
        self.run_iterator(SENDERS_PROGRAM, SENDERS_TARGET_MAP, cgroup_id, netns)?;
        let found = self.read_senders_target(2)?;
        if found == 0 {
            return Ok(());
        }
        let limit = rate.rate.bytes_per_sec();
        self.write_senders_target(&[(1, limit), (3, (limit / found).max(1))])?;
        self.run_iterator(SENDERS_PROGRAM, SENDERS_TARGET_MAP, cgroup_id, netns)
    }

    /// Tells the egress program that no cgroup's open sockets were just
    /// paced (a cgroup limited with no processes has none): a new bucket
    /// starts its share at the whole limit.
    pub fn forget_open_senders(&mut self) -> Result<(), ShaperError> {
        if !self.can_ready_senders {
            return Ok(());
        }
        self.write_senders_target(&[(0, 0), (3, 0)])
    }

    fn write_senders_target(&mut self, entries: &[(u32, u64)]) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, SENDERS_TARGET_MAP)?)
                .map_err(|e| map_error(SENDERS_TARGET_MAP, e))?;
        for (key, value) in entries {
            map.set(*key, value, 0)
                .map_err(|e| map_error(SENDERS_TARGET_MAP, e))?;
        }
        Ok(())
    }

    fn read_senders_target(&mut self, key: u32) -> Result<u64, ShaperError> {
        let map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, SENDERS_TARGET_MAP)?)
                .map_err(|e| map_error(SENDERS_TARGET_MAP, e))?;
        map.get(&key, 0)
            .map_err(|e| map_error(SENDERS_TARGET_MAP, e))
    }

    /// Runs the TCP iterator `name` for `cgroup_id` (written into its
    /// `target` map): over the sockets of our network namespace (hostNetwork
    /// pods: a TCP iterator sees the namespace it is opened in), then of each
    /// of `netns` that is not ours (a cgroup with hostNetwork processes lists
    /// ours too: its sockets were walked once already).
    fn run_iterator(
        &mut self,
        name: &'static str,
        target: &'static str,
        cgroup_id: u64,
        netns: &[File],
    ) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, target)?)
                .map_err(|e| map_error(target, e))?;
        map.set(0, cgroup_id, 0).map_err(|e| map_error(target, e))?;
        self.run_iterator_here(name)?;
        for ns in crate::netns::not_ours(netns) {
            crate::netns::run_in(ns, || self.run_iterator_here(name))
                .map_err(ShaperError::EnterNetns)??;
        }
        Ok(())
    }

    /// Runs the TCP iterator `name` over the sockets of the calling thread's
    /// network namespace.
    fn run_iterator_here(&mut self, name: &'static str) -> Result<(), ShaperError> {
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| ShaperError::Iterator {
            program: name,
            source: e,
        };
        let iter: &mut Iter = program(&mut self.ebpf, name)?;
        let link_id = iter.attach().map_err(|e| program_error(name, e))?;
        let link = iter
            .take_link(link_id)
            .map_err(|e| program_error(name, e))?;
        // Reading the iterator runs the program over every TCP socket.
        let mut file = link.into_file().map_err(|e| failed(Box::new(e)))?;
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut sink).map_err(|e| failed(Box::new(e)))?;
        Ok(())
    }

    /// Sets (or changes, live) a cgroup's limits: one map update.
    pub fn set_limits(&mut self, cgroup_id: u64, limits: &Limits) -> Result<(), ShaperError> {
        let mut map: HashMap<&mut MapData, u64, abi::Limit> = map_mut(&mut self.ebpf, LIMITS_MAP)?;
        map.insert(cgroup_id, limits.to_abi(), 0)
            .map_err(|e| map_error(LIMITS_MAP, e))?;
        self.bump_limits_version()
    }

    /// Tells every socket's copy of its limit that `limits` changed: the
    /// programs look the limit up again on each socket's next packet. The
    /// version only grows: the larger of the last one plus one and the
    /// wall clock in nanoseconds, so that a version map created afresh does
    /// not land on a number a socket kept from before.
    fn bump_limits_version(&mut self) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, LIMITS_VERSION_MAP)?)
                .map_err(|e| map_error(LIMITS_VERSION_MAP, e))?;
        let last = map
            .get(&0, 0)
            .map_err(|e| map_error(LIMITS_VERSION_MAP, e))?;
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        map.set(0, clock.max(last.saturating_add(1)), 0)
            .map_err(|e| map_error(LIMITS_VERSION_MAP, e))
    }

    /// Has every cgroup's state take its limit again on its next packet,
    /// through this build's programs: a state adopted from another build
    /// keeps what that build's programs derived from the limit (window
    /// lengths, the deficit allowed) until then. Counters, tokens and shares
    /// carry on; each CPU's slice goes back to its bucket.
    pub fn retake_limits(&mut self) -> Result<(), ShaperError> {
        self.bump_limits_version()
    }

    /// Forgets a cgroup: its limits, whether a queue is in front of it, and
    /// its shaping state with its counters.
    pub fn remove_limits(&mut self, cgroup_id: u64) -> Result<(), ShaperError> {
        remove_key::<abi::Limit>(&mut self.ebpf, LIMITS_MAP, cgroup_id)?;
        remove_key::<u32>(&mut self.ebpf, QUEUED_INGRESS_MAP, cgroup_id)?;
        self.bump_limits_version()?;
        self.reset_states(cgroup_id)
    }

    /// Zeroes a cgroup's shaping state in both directions, where the kernel
    /// keeps one (cgroup storage exists from the first attach until the
    /// cgroup is removed, and cannot be deleted), so that an attach after
    /// this one starts with a full bucket and counters from zero. Written
    /// under the state's lock.
    fn reset_states(&mut self, cgroup_id: u64) -> Result<(), ShaperError> {
        let mut map: StateMap<&mut MapData> =
            StateMap::try_from(raw_map_mut(&mut self.ebpf, STATES_MAP)?)
                .map_err(|e| map_error(STATES_MAP, e))?;
        for key in state_keys(cgroup_id) {
            match map.insert(key, abi::State::default(), BPF_EXIST | BPF_F_LOCK) {
                Err(e) if !is_not_found(&e) => return Err(map_error(STATES_MAP, e)),
                _ => {}
            }
        }
        let mut credits: CreditMap<&mut MapData> =
            CreditMap::try_from(raw_map_mut(&mut self.ebpf, CREDITS_MAP)?)
                .map_err(|e| map_error(CREDITS_MAP, e))?;
        for key in state_keys(cgroup_id) {
            match credits.insert(key, zeroed_credits()?, BPF_EXIST) {
                Err(e) if !is_not_found(&e) => return Err(map_error(CREDITS_MAP, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Tells the programs whether an ingress queue is in front of a cgroup
    /// (`queued`): only then are its receiving sockets' windows clamped to
    /// their flows' FIFOs. Its sockets take it on their next segment (the
    /// limits' version moves); sockets already open are armed by
    /// [`Self::ready_receivers`].
    pub fn set_ingress_queued(&mut self, cgroup_id: u64, queued: bool) -> Result<(), ShaperError> {
        if queued {
            let mut map: HashMap<&mut MapData, u64, u32> =
                map_mut(&mut self.ebpf, QUEUED_INGRESS_MAP)?;
            map.insert(cgroup_id, 1, 0)
                .map_err(|e| map_error(QUEUED_INGRESS_MAP, e))?;
        } else {
            remove_key::<u32>(&mut self.ebpf, QUEUED_INGRESS_MAP, cgroup_id)?;
        }
        self.bump_limits_version()
    }

    /// Whether the programs take a cgroup to have an ingress queue in front of it.
    pub fn is_ingress_queued(&self, cgroup_id: u64) -> Result<bool, ShaperError> {
        let map: HashMap<&MapData, u64, u32> = map_ref(&self.ebpf, QUEUED_INGRESS_MAP)?;
        match map.get(&cgroup_id, 0) {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_error(QUEUED_INGRESS_MAP, e)),
        }
    }

    /// The cgroups the programs take to have an ingress queue in front of them.
    pub fn ingress_queued_ids(&self) -> Result<Vec<u64>, ShaperError> {
        let map: HashMap<&MapData, u64, u32> = map_ref(&self.ebpf, QUEUED_INGRESS_MAP)?;
        map.keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(QUEUED_INGRESS_MAP, e))
    }

    /// A cgroup's limits as the `limits` map holds them (None if it has none).
    pub fn limits(&self, cgroup_id: u64) -> Result<Option<Limits>, ShaperError> {
        let map: HashMap<&MapData, u64, abi::Limit> = map_ref(&self.ebpf, LIMITS_MAP)?;
        match map.get(&cgroup_id, 0) {
            Ok(limit) => Ok(Some(Limits::from_abi(&limit))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error(LIMITS_MAP, e)),
        }
    }

    /// Every cgroup id with an entry in the `limits` map.
    pub fn limited_ids(&self) -> Result<Vec<u64>, ShaperError> {
        let map: HashMap<&MapData, u64, abi::Limit> = map_ref(&self.ebpf, LIMITS_MAP)?;
        map.keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(LIMITS_MAP, e))
    }

    /// A cgroup's counters (zero if it was never attached). Each
    /// direction's are read under its state's lock.
    pub fn counters(&self, cgroup_id: u64) -> Result<CgroupCounters, ShaperError> {
        let map: StateMap<&MapData> = StateMap::try_from(raw_map(&self.ebpf, STATES_MAP)?)
            .map_err(|e| map_error(STATES_MAP, e))?;
        let [egress, ingress] = state_keys(cgroup_id).map(|key| match map.get(key, BPF_F_LOCK) {
            Ok(state) => Ok(Some(state)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error(STATES_MAP, e)),
        });
        let mut counters = CgroupCounters::of_states(egress?.as_ref(), ingress?.as_ref());
        // and what each CPU passed on its slices of the buckets
        let credits: CreditMap<&MapData> = CreditMap::try_from(raw_map(&self.ebpf, CREDITS_MAP)?)
            .map_err(|e| map_error(CREDITS_MAP, e))?;
        let [egress_key, ingress_key] = state_keys(cgroup_id);
        for (direction, key) in [
            (&mut counters.egress, egress_key),
            (&mut counters.ingress, ingress_key),
        ] {
            match credits.get(key, 0) {
                Ok(per_cpu) => direction.add_credits(per_cpu.iter()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_error(CREDITS_MAP, e)),
            }
        }
        Ok(counters)
    }
}

/// A `cpu_credits` value of every possible CPU, all zero.
fn zeroed_credits() -> Result<PerCpuValues<abi::Credit>, ShaperError> {
    let syscall_error = |call, io_error| {
        map_error(
            CREDITS_MAP,
            MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
        )
    };
    let cpus = aya::util::nr_cpus().map_err(|(call, e)| syscall_error(call, e))?;
    PerCpuValues::try_from(vec![abi::Credit::default(); cpus])
        .map_err(|e| syscall_error("one value per possible CPU", e))
}

/// `BPF_F_LOCK`: a lookup or update that copies a value under its spin lock.
const BPF_F_LOCK: u64 = 4;
/// `BPF_EXIST`: an update of an existing element only.
const BPF_EXIST: u64 = 2;

/// The keys of a cgroup's egress and ingress state in `cgroup_states`: the
/// kernel keeps one per cgroup and attach type.
fn state_keys(cgroup_id: u64) -> [CgroupStorageKey; 2] {
    [
        CgroupStorageKey::new(cgroup_id, BPF_CGROUP_INET_EGRESS),
        CgroupStorageKey::new(cgroup_id, BPF_CGROUP_INET_INGRESS),
    ]
}

/// `enum bpf_attach_type` values of the cgroup_skb programs (kernel uapi).
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;

/// The pins in `maps_dir` of the state maps made under another layout than
/// this build's, with the rest of their group (STATE_MAP_GROUPS): another
/// key or value size, or, where the kernel kept the map's BTF, another
/// value layout of the same size (a field moved, renamed or retyped). A pin
/// that cannot be read is left to the load, which fails on it and starts
/// the state maps afresh then; one whose BTF cannot be read is judged by
/// its sizes.
fn changed_state_pins(maps_dir: &Path) -> Vec<PathBuf> {
    let object = match aya_obj::Object::parse(SHAPER_OBJECT) {
        Ok(object) => object,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the shaper's own map definitions: pinned state maps are reused unchecked");
            return Vec::new();
        }
    };
    let btf = layout::object_btf(&object);
    let changed = |name: &str| -> bool {
        let pin = maps_dir.join(name);
        let (Some(ours), Ok(pinned)) = (object.maps.get(name), aya::maps::MapInfo::from_pin(&pin))
        else {
            return false;
        };
        if ours.key_size() != pinned.key_size() || ours.value_size() != pinned.value_size() {
            return true;
        }
        let ours = btf
            .as_ref()
            .and_then(|btf| layout::object_value_layout(&object, btf, name));
        match (ours, layout::pinned_value_layout(&pin)) {
            (Some(ours), Some(pinned)) if ours != pinned => {
                tracing::info!(map = name, pinned = %pinned, ours = %ours, "a pinned state map of this build's size but another layout");
                true
            }
            _ => false,
        }
    };
    STATE_MAP_GROUPS
        .iter()
        .filter(|group| group.iter().any(|name| changed(name)))
        .flat_map(|group| group.iter())
        .map(|name| maps_dir.join(name))
        .filter(|path| path.exists())
        .collect()
}

/// Removes the pins of maps that start afresh: the maps go once nothing
/// else holds them.
fn unpin(paths: &[PathBuf]) -> Result<(), ShaperError> {
    for path in paths {
        std::fs::remove_file(path).map_err(|e| pin_error(path, e))?;
    }
    Ok(())
}

/// A pin (or the pinned object behind it) at `path` that could not be used.
fn pin_error(path: &Path, source: impl std::error::Error + Send + Sync + 'static) -> ShaperError {
    ShaperError::Pin {
        path: path.display().to_string(),
        source: Box::new(source),
    }
}

fn raw_map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, ShaperError> {
    ebpf.map(name)
        .ok_or(ShaperError::Missing { kind: "map", name })
}

fn raw_map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, ShaperError> {
    ebpf.map_mut(name)
        .ok_or(ShaperError::Missing { kind: "map", name })
}

fn map_ref<'a, V: aya::Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a MapData, u64, V>, ShaperError> {
    HashMap::try_from(raw_map(ebpf, name)?).map_err(|e| map_error(name, e))
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

pub(crate) fn program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, ShaperError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(ShaperError::Missing {
        kind: "program",
        name,
    })?;
    prog.try_into().map_err(|e| program_error(name, e))
}

fn map_mut<'a, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, u64, V>, ShaperError> {
    HashMap::try_from(raw_map_mut(ebpf, name)?).map_err(|e| map_error(name, e))
}

/// Deletes a key from a hash map; a missing key is not an error.
fn remove_key<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: u64,
) -> Result<(), ShaperError> {
    match map_mut::<V>(ebpf, name)?.remove(&key) {
        Err(e) if !is_not_found(&e) => Err(map_error(name, e)),
        _ => Ok(()),
    }
}

/// aya reports a missing key on lookup as KeyNotFound, on delete as ENOENT.
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

pub(crate) fn program_error(name: &'static str, source: ProgramError) -> ShaperError {
    // a verifier's refusal names what the kernel lacks, where it is known
    if let ProgramError::LoadError { verifier_log, .. } = &source {
        if let Some(missing) = crate::kernel::missing_feature(&verifier_log.to_string()) {
            return ShaperError::KernelLacks {
                name,
                release: crate::kernel::Release::running()
                    .map_or_else(|| "unknown".into(), |r| r.to_string()),
                missing,
                source: Box::new(source),
            };
        }
    }
    ShaperError::Program {
        name,
        source: Box::new(source),
    }
}

fn map_error(name: &'static str, source: MapError) -> ShaperError {
    ShaperError::Map {
        name,
        source: Box::new(source),
    }
}
