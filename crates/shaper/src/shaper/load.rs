//! Loading the shaper object into the kernel, with its maps pinned or not,
//! and starting afresh the pinned state maps of another build's layout.

use std::path::{Path, PathBuf};

use aya::programs::{CgroupSkb, Iter, SchedClassifier, SockOps};
use aya::{Btf, EbpfLoader};

use super::{
    pin_error, program, program_error, Shaper, ShaperError, ALL_MAPS, CREDITS_MAP, EGRESS_PROGRAM,
    FLOW_CLASS_PROGRAM, HOST_CLASS_PROGRAM, INGRESS_PROGRAM, RCV_WINDOWS_MAP, RECEIVERS_PROGRAM,
    SENDERS_PROGRAM, SHAPER_OBJECT, SOCKOPS_PROGRAM, SOCK_STATES_MAP, STATES_MAP, UNPACE_PROGRAM,
};
use crate::layout;

/// Maps of older builds, whose pins are removed once this build has loaded:
/// the per-CPU `counters` and the `states` hash, whose contents live in
/// `cgroup_states`.
const OBSOLETE_MAPS: [&str; 2] = ["counters", "states"];
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

impl Shaper {
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
}

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
