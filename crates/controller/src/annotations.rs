//! What a pod asks for: its bandwidth annotations, parsed.
//!
//! The annotations are those kubelet, the CNI bandwidth plugin and Cilium read
//! (`kubernetes.io/{egress,ingress}-bandwidth`, bits per second as quantities),
//! plus podshaper's bursts (`podshaper.io/{egress,ingress}-burst`, bytes).
//! Values are read exactly as the kubelet reads the bandwidth annotations:
//! apimachinery's `resource.ParseQuantity`, then `Value()`, then the bounds
//! ([`Rate::from_kubernetes`]), so a pod the kubelet and the CNI bandwidth
//! plugin would refuse is refused here too, and the reverse. The CLI's extras
//! (surrounding whitespace, tc units such as `10mbit`) are not accepted here.

use std::collections::BTreeMap;

use podshaper_rate::{ByteSize, Rate};

pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_BURST: &str = "podshaper.io/egress-burst";
pub const INGRESS_BURST: &str = "podshaper.io/ingress-burst";

/// A direction's limit as the pod asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub rate: Rate,
    /// `None`: the default burst for the rate
    pub burst: Option<ByteSize>,
}

impl Wanted {
    /// The burst in bytes the daemon will apply.
    pub fn burst_bytes(&self) -> u64 {
        self.burst
            .unwrap_or_else(|| self.rate.default_burst())
            .bytes()
    }
}

/// One direction of a pod's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// No bandwidth annotation: unlimited.
    Absent,
    Limit(Wanted),
    /// An annotation that cannot be parsed or is out of bounds. What is in
    /// force for this direction stays in force.
    Invalid(Invalid),
}

/// A bad annotation: its key, its value and why (the message names the bounds).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Invalid {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "annotation {}={:?}: {}",
            self.key, self.value, self.reason
        )
    }
}

/// Both directions of a pod's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBandwidth {
    pub egress: Direction,
    pub ingress: Direction,
}

impl PodBandwidth {
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Self {
        Self {
            egress: direction(annotations, EGRESS_BANDWIDTH, EGRESS_BURST),
            ingress: direction(annotations, INGRESS_BANDWIDTH, INGRESS_BURST),
        }
    }

    /// True when the pod has no bandwidth annotation at all.
    pub fn is_absent(&self) -> bool {
        self.egress == Direction::Absent && self.ingress == Direction::Absent
    }

    pub fn invalid(&self) -> impl Iterator<Item = &Invalid> {
        [&self.egress, &self.ingress]
            .into_iter()
            .filter_map(|d| match d {
                Direction::Invalid(i) => Some(i),
                _ => None,
            })
    }
}

fn direction(
    annotations: &BTreeMap<String, String>,
    rate_key: &'static str,
    burst_key: &'static str,
) -> Direction {
    let Some(rate_value) = annotations.get(rate_key) else {
        // A burst without a rate limits nothing.
        return Direction::Absent;
    };
    let rate = match Rate::from_kubernetes(rate_value) {
        Ok(r) => r,
        Err(e) => {
            return Direction::Invalid(Invalid {
                key: rate_key,
                value: rate_value.clone(),
                reason: e.to_string(),
            })
        }
    };
    let burst = match annotations.get(burst_key) {
        None => None,
        Some(v) => match ByteSize::from_kubernetes(v) {
            Ok(b) => Some(b),
            Err(e) => {
                return Direction::Invalid(Invalid {
                    key: burst_key,
                    value: v.clone(),
                    reason: e.to_string(),
                })
            }
        },
    };
    Direction::Limit(Wanted { rate, burst })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> PodBandwidth {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PodBandwidth::from_annotations(&map)
    }

    fn limit(d: &Direction) -> (u64, Option<u64>) {
        match d {
            Direction::Limit(w) => (w.rate.bits_per_sec(), w.burst.map(|b| b.bytes())),
            other => panic!("expected a limit, got {other:?}"),
        }
    }

    #[test]
    fn no_annotations_is_absent() {
        let p = parse(&[("app", "web")]);
        assert!(p.is_absent());
        assert_eq!(p.invalid().count(), 0);
    }

    #[test]
    fn kubernetes_quantities_are_bits_per_second() {
        let p = parse(&[(EGRESS_BANDWIDTH, "10M"), (INGRESS_BANDWIDTH, "2Mi")]);
        assert_eq!(limit(&p.egress), (10_000_000, None));
        assert_eq!(limit(&p.ingress), (2 * 1024 * 1024, None));
    }

    #[test]
    fn bursts_apply_to_their_direction() {
        let p = parse(&[
            (EGRESS_BANDWIDTH, "100M"),
            (EGRESS_BURST, "1Mi"),
            (INGRESS_BURST, "1Mi"),
        ]);
        assert_eq!(limit(&p.egress), (100_000_000, Some(1 << 20)));
        // a burst without a rate limits nothing
        assert_eq!(p.ingress, Direction::Absent);
    }

    #[test]
    fn invalid_values_name_the_annotation_value_and_bounds() {
        for (key, value) in [
            (EGRESS_BANDWIDTH, "fast"),
            (EGRESS_BANDWIDTH, "10"),
            (EGRESS_BANDWIDTH, "2P"),
            (EGRESS_BANDWIDTH, "-5M"),
            (EGRESS_BANDWIDTH, ""),
        ] {
            let p = parse(&[(key, value), (INGRESS_BANDWIDTH, "1M")]);
            let bad: Vec<_> = p.invalid().collect();
            assert_eq!(bad.len(), 1, "{value:?}");
            let text = bad[0].to_string();
            assert!(
                text.contains(key) && text.contains(&format!("{value:?}")),
                "{text}"
            );
            // the other direction is unaffected
            assert_eq!(limit(&p.ingress), (1_000_000, None));
        }
        let p = parse(&[(EGRESS_BANDWIDTH, "2P")]);
        let text = p
            .invalid()
            .next()
            .map(|i| i.to_string())
            .unwrap_or_default();
        assert!(text.contains("1k") && text.contains("1P"), "{text}");
    }

    #[test]
    fn values_follow_kubernetes_parse_quantity_not_the_cli() {
        // what ParseQuantity refuses (whitespace, tc units, an exponent
        // before a suffix) and what the kubelet's bounds refuse (512 bit/s)
        for value in [" 10M", "10M ", "10mbit", "10mbps", "1e3M", "10 M", "0.5Ki"] {
            let p = parse(&[(EGRESS_BANDWIDTH, value)]);
            assert_eq!(p.invalid().count(), 1, "{value:?}");
        }
        // what it accepts, valued as Value() does (a fraction rounds up)
        for (value, bits) in [
            ("1.5M", 1_500_000),
            ("1000.1", 1_001),
            ("1e6", 1_000_000),
            ("+1.G", 1_000_000_000),
        ] {
            let p = parse(&[(INGRESS_BANDWIDTH, value)]);
            assert_eq!(limit(&p.ingress), (bits, None), "{value:?}");
        }
        // bursts are quantities of bytes, read the same way
        let p = parse(&[(EGRESS_BANDWIDTH, "10M"), (EGRESS_BURST, "64kb")]);
        assert_eq!(p.invalid().count(), 1);
        let p = parse(&[(EGRESS_BANDWIDTH, "10M"), (EGRESS_BURST, "64Ki")]);
        assert_eq!(limit(&p.egress), (10_000_000, Some(64 * 1024)));
    }

    #[test]
    fn invalid_burst_makes_the_direction_invalid() {
        let p = parse(&[(EGRESS_BANDWIDTH, "10M"), (EGRESS_BURST, "2Gi")]);
        match &p.egress {
            Direction::Invalid(i) => assert_eq!(i.key, EGRESS_BURST),
            other => panic!("expected invalid, got {other:?}"),
        }
    }
}
