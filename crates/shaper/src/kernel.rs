//! What the running kernel has: its release, and what the shaper needs of
//! it. The releases below come from the kernel's history of the helpers,
//! fields, socket options and program types bpf/shaper.c and bpf/lib/ use;
//! `podshaper doctor`, the daemon's start-up line and README.md's support
//! table say them.

use std::fmt;
use std::fs;

/// A kernel release, as `major.minor` (the rest of `uname -r` aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
}

impl Release {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// The running kernel's, from /proc/sys/kernel/osrelease; None if it
    /// cannot be read or parsed.
    pub fn running() -> Option<Self> {
        Self::parse(&fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
    }

    /// `6.1.0-50-cloud-amd64` -> 6.1.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// An iterator may turn on a socket's sockops callbacks
/// (`TCP_BPF_SOCK_OPS_CB_FLAGS` from bpf_setsockopt) from this release on:
/// before it, connections open before a limit keep the rate they were given
/// when it came, instead of following their share, and open receiving
/// sockets get no receive-window clamp.
pub const ARMS_OPEN_SOCKETS: Release = Release::new(6, 12);

/// The BPF helpers bpf/shaper.c and bpf/lib/ call, and the first release where the
/// program types that call them here may: what a verifier's "unknown func"
/// means. From the kernel's history of each helper's function prototypes
/// (net/core/filter.c, kernel/bpf/helpers.c, net/ipv4/tcp_ipv4.c), each
/// bracketed by the release before it that lacks it.
const HELPERS: [(&str, Release); 11] = [
    // cgroup_skb: the egress and ingress programs
    ("bpf_skb_ancestor_cgroup_id", Release::new(5, 8)),
    ("bpf_skb_cgroup_id", Release::new(5, 3)),
    ("bpf_sk_storage_get", Release::new(5, 2)),
    ("bpf_tcp_sock", Release::new(5, 1)),
    ("bpf_sk_fullsock", Release::new(5, 1)),
    ("bpf_skb_ecn_set_ce", Release::new(5, 1)),
    ("bpf_spin_lock", Release::new(5, 1)),
    // sockops and the tc classifiers: BTF-typed socket pointers, CO-RE reads
    ("bpf_skc_to_tcp_sock", Release::new(5, 10)),
    ("bpf_probe_read_kernel", Release::new(5, 8)),
    // tc classifiers
    ("bpf_sk_lookup_tcp", Release::new(4, 20)),
    // the TCP iterators (sockops has had it since 4.13)
    ("bpf_setsockopt", Release::new(5, 15)),
];

/// The release below which the daemon cannot start: the sockops program
/// needs bpf_skc_to_tcp_sock there (5.10), and the egress and ingress
/// programs bpf_skb_ancestor_cgroup_id (5.8).
pub const ESSENTIAL: Release = Release::new(5, 10);

/// What a verifier log says the kernel lacks, in words: the helper and the
/// first release that offers it, if the log names one this code knows.
pub fn missing_feature(verifier_log: &str) -> Option<String> {
    let (_, rest) = verifier_log.split_once("unknown func ")?;
    let helper: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let since = HELPERS
        .iter()
        .find(|(name, _)| *name == helper)
        .map_or_else(String::new, |(_, r)| format!(" (Linux {r} or later)"));
    Some(format!(
        "the kernel lacks the BPF helper {helper} for this program{since}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_and_compare() {
        assert_eq!(
            Release::parse("6.1.0-50-cloud-amd64"),
            Some(Release::new(6, 1))
        );
        assert_eq!(
            Release::parse("6.12.107+deb12-amd64"),
            Some(Release::new(6, 12))
        );
        assert_eq!(
            Release::parse("6.18.44-fc-v1272\n"),
            Some(Release::new(6, 18))
        );
        assert_eq!(Release::parse("garbage"), None);
        assert!(Release::new(6, 1) < ARMS_OPEN_SOCKETS);
        assert!(Release::new(6, 18) >= ARMS_OPEN_SOCKETS);
        assert!(Release::new(5, 15) < Release::new(6, 1));
    }

    #[test]
    fn a_verifier_log_names_the_missing_helper() {
        let log = "0: R1=ctx()\n; @ shaper.c:256\n7: (85) call bpf_skc_to_tcp_sock#137\nunknown func bpf_skc_to_tcp_sock#137\n";
        assert_eq!(
            missing_feature(log).as_deref(),
            Some("the kernel lacks the BPF helper bpf_skc_to_tcp_sock for this program (Linux 5.10 or later)")
        );
        assert_eq!(missing_feature("R1 invalid mem access"), None);
    }
}
