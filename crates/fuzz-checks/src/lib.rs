//! The properties the fuzz targets check, as plain functions: cargo-fuzz
//! (`fuzz/`) drives them with libFuzzer, and `cargo test` replays the kept
//! corpus (`fuzz/corpus/<target>/`) through them, so every input the fuzzer
//! found interesting stays a regression test. Each function panics only when
//! a property is broken.

pub mod quantity_inputs;

use std::path::Path;
use std::sync::OnceLock;

use podshaper_api::pb;
use podshaper_rate::{
    ByteSize, Rate, MAX_BURST_BYTES, MAX_RATE_BITS, MIN_BURST_BYTES, MIN_RATE_BITS,
};
use podshaper_shaper::confine::{pod_cgroup_candidates, pod_uid_of};
use podshaper_shaper::CgroupRoot;
use prost::Message;

/// Rates and sizes: never a panic; anything accepted is within the bounds
/// and reads back the same from its exact form; the annotations' strict
/// reading (Kubernetes' ParseQuantity) accepts only in-bounds values, and the
/// CLI's reading agrees with it wherever both accept.
pub fn rate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let strict = Rate::from_kubernetes(text).ok();
    if let Some(r) = strict {
        assert!((MIN_RATE_BITS..=MAX_RATE_BITS).contains(&r.bits_per_sec()));
        if let Ok(cli) = text.parse::<Rate>() {
            assert_eq!(cli, r, "{text:?}");
        }
    }
    if let Ok(b) = ByteSize::from_kubernetes(text) {
        assert!((MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&b.bytes()));
    }
    if let Ok(r) = text.parse::<Rate>() {
        let bits = r.bits_per_sec();
        assert!(
            (MIN_RATE_BITS..=MAX_RATE_BITS).contains(&bits),
            "{text:?} -> {bits}"
        );
        assert_eq!(bits.to_string().parse::<Rate>().ok(), Some(r), "{text:?}");
        let _ = r.to_string();
        let _ = r.default_burst();
    }
    if let Ok(b) = text.parse::<ByteSize>() {
        let bytes = b.bytes();
        assert!(
            (MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&bytes),
            "{text:?} -> {bytes}"
        );
        assert_eq!(
            bytes.to_string().parse::<ByteSize>().ok(),
            Some(b),
            "{text:?}"
        );
        let _ = b.to_string();
    }
}

fn root() -> Option<&'static CgroupRoot> {
    static ROOT: OnceLock<Option<CgroupRoot>> = OnceLock::new();
    ROOT.get_or_init(|| CgroupRoot::new(None).ok()).as_ref()
}

/// Confinement: whatever path or UID is asked for, a cgroup that resolves is
/// below the root; UIDs read back from kubelet paths are valid UIDs.
/// Read-only: resolving opens and inspects, never creates.
pub fn confine(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(root) = root() {
        if let Ok(cg) = root.resolve(&text) {
            assert!(
                cg.path().starts_with(root.root()),
                "{text:?} -> {}",
                cg.path().display()
            );
            assert!(
                !text.contains('\0') && !text.split('/').any(|c| c == ".."),
                "{text:?}"
            );
        }
        if let Ok(cg) = root.resolve_pod(&text) {
            assert!(
                cg.path().starts_with(root.root()),
                "{text:?} -> {}",
                cg.path().display()
            );
        }
    }
    for candidate in pod_cgroup_candidates(&text) {
        // a UID never adds path components of its own when it is valid
        let _ = candidate;
    }
    if let Some(uid) = pod_uid_of(Path::new(text.as_ref())) {
        assert_eq!(uid.len(), 36, "{text:?} -> {uid:?}");
        assert!(
            uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "{uid:?}"
        );
    }
}

/// API requests: every request type decodes or is refused without a panic,
/// and the daemon's checks of an attach request and its target never panic
/// and never accept a limit out of bounds.
pub fn request(data: &[u8]) {
    if let Ok(req) = pb::AttachRequest::decode(data) {
        if let Ok(limits) = podshaper_daemon::service::requested_limits(&req) {
            for d in [limits.egress, limits.ingress].into_iter().flatten() {
                let bits = d.rate.bits_per_sec();
                assert!((MIN_RATE_BITS..=MAX_RATE_BITS).contains(&bits));
                assert!((MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&d.burst.bytes()));
            }
        }
        target(req.target.as_ref());
    }
    if let Ok(req) = pb::DetachRequest::decode(data) {
        target(req.target.as_ref());
    }
    if let Ok(req) = pb::StatusRequest::decode(data) {
        target(req.target.as_ref());
    }
    let _ = pb::ListRequest::decode(data);
}

fn target(t: Option<&pb::Target>) {
    if let Some(root) = root() {
        if let Ok(cg) = podshaper_daemon::service::resolve_target(root, t) {
            assert!(cg.path().starts_with(root.root()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    /// Replays the kept corpus of each target (and the inputs that once broke it).
    #[test]
    fn replay_fuzz_corpus() {
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        type Check = fn(&[u8]);
        let targets: [(&str, Check); 3] = [
            ("rate", super::rate),
            ("confine", super::confine),
            ("request", super::request),
        ];
        for (name, check) in targets {
            let mut count = 0;
            for dir in ["corpus", "regressions"] {
                let Ok(entries) = fs::read_dir(base.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let data = fs::read(entry.path()).unwrap_or_default();
                    check(&data);
                    count += 1;
                }
            }
            eprintln!("{name}: {count} inputs replayed");
            assert!(count > 0, "no corpus for {name} under {}", base.display());
        }
    }
}
