//! Rust mirrors of `bpf/shaper.h`. Change both together; the tests below
//! check sizes, offsets and field order against the header.

/// Index of the egress half of a per-direction array.
pub const EGRESS: usize = 0;
/// Index of the ingress half of a per-direction array.
pub const INGRESS: usize = 1;

/// The ingress queue's per-flow htb classes: `QUEUE_MAJOR:FLOW_CLASS_BASE`
/// and the next `FLOW_QUEUES - 1` (`PS_QUEUE_MAJOR`, ...).
pub const QUEUE_MAJOR: u32 = 1;
pub const FLOW_CLASS_BASE: u32 = 0x100;
pub const FLOW_QUEUES: u32 = 16;
/// The small packets' class (`PS_SMALL_CLASS`).
pub const SMALL_CLASS: u32 = 0x10;
/// Each flow's FIFO in the ingress queue: this long at the rate, at most
/// this much, at least this long at the rate and this much
/// (`PS_FLOW_QUEUE_*`; the sockops program keeps receive windows within it).
pub const FLOW_QUEUE_US: u32 = 10_000;
pub const FLOW_QUEUE_CAP_BYTES: u32 = 128 * 1024;
pub const FLOW_QUEUE_MIN_US: u32 = 2_000;
pub const FLOW_QUEUE_MIN_BYTES: u32 = 16 * 1024;
/// The node's queue for hostNetwork pods: slots 1 to `HOST_SLOTS`, each a
/// subtree of the classes above offset by slot x `HOST_SLOT_STRIDE`; the
/// classifier looks at up to `HOST_LEVELS` cgroup levels (`PS_HOST_*`).
pub const HOST_SLOTS: u32 = 127;
pub const HOST_SLOT_STRIDE: u32 = 0x200;
pub const HOST_LEVELS: u32 = 4;
// the last slot's last class is still a 16-bit minor id
const _: () = assert!(HOST_SLOTS * HOST_SLOT_STRIDE + FLOW_CLASS_BASE + FLOW_QUEUES <= 0xffff);

/// `struct ps_dir_limit`: rate 0 means "no limit this way".
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirLimit {
    pub rate_bytes_per_sec: u64,
    pub burst_bytes: u64,
}

/// `struct ps_limit`: the value of the `limits` map.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limit {
    pub dir: [DirLimit; 2],
}

/// `struct ps_dir_counters`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirCounters {
    pub bytes: u64,
    pub packets: u64,
    pub dropped: u64,
    pub marked: u64,
}

/// `struct ps_bucket`: one direction's shaping state (fields every packet
/// touches first).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub rate: u64,
    pub burst: u64,
    pub fill_ns: u64,
    pub tokens: i64,
    pub last_ns: u64,
    pub window_start_ns: u64,
    pub window_ns: u64,
    pub window_bytes: u64,
    pub window_seq: u64,
    pub share: u64,
    pub window_top_bytes: u64,
    /// what passed, was dropped and was marked this way
    pub counters: DirCounters,
    pub max_deficit: u64,
    pub window_flows: u64,
    pub flows: u64,
    pub top_flow_rate: u64,
    /// slices CPUs hold, not yet settled
    pub lent: u64,
    /// while a limit put on open senders is new, when its way down ends (ns)
    pub opening: u64,
}

/// `struct ps_state`: the value of the `cgroup_states` map, one per
/// attached cgroup and direction.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub lock: u32,
    pub _pad: u32,
    pub limit_version: u64,
    pub limit_cgid: u64,
    pub bucket: Bucket,
}

/// `struct ps_credit`: one CPU's slice of one direction's bucket, the value
/// of the per-CPU `cpu_credits` map (same keys as `cgroup_states`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credit {
    pub credit: i64,
    pub slice: u64,
    pub version: u64,
    pub rate: u64,
    /// what this CPU passed on credit, not in the state's counters
    pub bytes: u64,
    pub packets: u64,
    pub marked: u64,
    pub congested: u64,
    pub top_bytes: u64,
    pub window_seq: u64,
    pub share: u64,
    pub limit_cgid: u64,
}

// SAFETY: plain `repr(C)` structs of integers with no implicit padding.
unsafe impl aya::Pod for Limit {}
// SAFETY: as above.
unsafe impl aya::Pod for Credit {}
// SAFETY: as above (the padding after `lock` is an explicit field).
unsafe impl aya::Pod for State {}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    /// The C layout, written out: every field a __u64 in declaration order.
    #[test]
    fn layout_matches_shaper_h() {
        assert_eq!(size_of::<DirLimit>(), 16);
        assert_eq!(offset_of!(DirLimit, burst_bytes), 8);
        assert_eq!(size_of::<Limit>(), 32);
        assert_eq!(size_of::<DirCounters>(), 32);
        assert_eq!(offset_of!(DirCounters, packets), 8);
        assert_eq!(offset_of!(DirCounters, dropped), 16);
        assert_eq!(offset_of!(DirCounters, marked), 24);
        assert_eq!(size_of::<Bucket>(), 168);
        assert_eq!(offset_of!(Bucket, tokens), 24);
        assert_eq!(offset_of!(Bucket, share), 72);
        assert_eq!(offset_of!(Bucket, counters), 88);
        assert_eq!(offset_of!(Bucket, max_deficit), 120);
        assert_eq!(offset_of!(Bucket, top_flow_rate), 144);
        assert_eq!(offset_of!(Bucket, lent), 152);
        assert_eq!(offset_of!(State, limit_version), 8);
        assert_eq!(offset_of!(State, bucket), 24);
        assert_eq!(size_of::<State>(), 192);
        assert_eq!(offset_of!(Credit, bytes), 32);
        assert_eq!(offset_of!(Credit, marked), 48);
        assert_eq!(offset_of!(Credit, window_seq), 72);
        assert_eq!(offset_of!(Credit, limit_cgid), 88);
        assert_eq!(size_of::<Credit>(), 96);
    }

    #[test]
    fn constants_match_shaper_h() {
        let header = include_str!("../../../bpf/shaper.h");
        let define = |name: &str| -> u32 {
            let line = header
                .lines()
                .find(|l| l.split_whitespace().take(2).eq(["#define", name]))
                .unwrap_or_else(|| panic!("{name} missing from shaper.h"));
            let value = line.split_whitespace().nth(2).unwrap_or_default();
            match value.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => value.parse(),
            }
            .unwrap_or_else(|e| panic!("{name} = {value:?}: {e}"))
        };
        assert_eq!(define("PS_QUEUE_MAJOR"), QUEUE_MAJOR);
        assert_eq!(define("PS_FLOW_CLASS_BASE"), FLOW_CLASS_BASE);
        assert_eq!(define("PS_FLOW_QUEUES"), FLOW_QUEUES);
        assert_eq!(define("PS_SMALL_CLASS"), SMALL_CLASS);
        assert_eq!(define("PS_FLOW_QUEUE_US"), FLOW_QUEUE_US);
        assert_eq!(define("PS_FLOW_QUEUE_CAP_BYTES"), FLOW_QUEUE_CAP_BYTES);
        assert_eq!(define("PS_FLOW_QUEUE_MIN_US"), FLOW_QUEUE_MIN_US);
        assert_eq!(define("PS_FLOW_QUEUE_MIN_BYTES"), FLOW_QUEUE_MIN_BYTES);
        assert_eq!(define("PS_HOST_SLOTS"), HOST_SLOTS);
        assert_eq!(define("PS_HOST_SLOT_STRIDE"), HOST_SLOT_STRIDE);
        assert_eq!(define("PS_HOST_LEVELS"), HOST_LEVELS);
        assert_eq!(define("PS_INGRESS") as usize, INGRESS);
    }

    /// The C header, parsed: the same fields in the same order.
    #[test]
    fn fields_match_shaper_h() {
        let header = include_str!("../../../bpf/shaper.h");
        let fields = |name: &str| -> Vec<String> {
            let start = header
                .find(&format!("struct {name} {{"))
                .unwrap_or_else(|| panic!("struct {name} missing from shaper.h"));
            let body = &header[start..];
            let end = body
                .find("};")
                .unwrap_or_else(|| panic!("struct {name} unterminated"));
            body[..end]
                .lines()
                .skip(1)
                .map(str::trim)
                .filter(|l| l.starts_with("__u64") || l.starts_with("struct"))
                .map(|l| l.trim_end_matches(';').to_string())
                .collect()
        };
        assert_eq!(
            fields("ps_dir_limit"),
            ["__u64 rate_bytes_per_sec", "__u64 burst_bytes"]
        );
        assert_eq!(
            fields("ps_limit"),
            ["struct ps_dir_limit dir[PS_DIRECTIONS]"]
        );
        assert_eq!(
            fields("ps_dir_counters"),
            [
                "__u64 bytes",
                "__u64 packets",
                "__u64 dropped",
                "__u64 marked"
            ]
        );
        assert_eq!(
            fields("ps_bucket"),
            [
                "__u64 rate",
                "__u64 burst",
                "__u64 fill_ns",
                "__u64 last_ns",
                "__u64 window_start_ns",
                "__u64 window_ns",
                "__u64 window_bytes",
                "__u64 window_seq",
                "__u64 share",
                "__u64 window_top_bytes",
                "struct ps_dir_counters counters",
                "__u64 max_deficit",
                "__u64 window_flows",
                "__u64 flows",
                "__u64 top_flow_rate",
                "__u64 lent",
                "__u64 opening"
            ]
        );
        assert!(header.contains("__s64 tokens;"));
        assert_eq!(
            fields("ps_state"),
            [
                "struct bpf_spin_lock lock",
                "__u64 limit_version",
                "__u64 limit_cgid",
                "struct ps_bucket bucket"
            ]
        );
        assert_eq!(
            fields("ps_credit"),
            [
                "__u64 slice",
                "__u64 version",
                "__u64 rate",
                "__u64 bytes",
                "__u64 packets",
                "__u64 marked",
                "__u64 congested",
                "__u64 top_bytes",
                "__u64 window_seq",
                "__u64 share",
                "__u64 limit_cgid"
            ]
        );
        assert!(header.contains("__s64 credit;"));
        assert!(header.contains("#define PS_EGRESS 0") && header.contains("#define PS_INGRESS 1"));
    }
}
