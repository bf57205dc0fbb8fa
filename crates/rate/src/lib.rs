//! Rates and sizes as operators write them.
//!
//! A [`Rate`] is a bandwidth in **bits per second**; bounds are the
//! kubelet's: at least `1k`, at most `1P` bit/s. A [`ByteSize`] is a burst in
//! **bytes**, 4Ki to 1Gi.
//!
//! Two readings:
//! - [`Rate::from_kubernetes`] and [`ByteSize::from_kubernetes`], for the
//!   annotations: exactly what the kubelet does ([`quantity`]:
//!   `resource.ParseQuantity`, then `Value()`, then the bounds).
//! - `str::parse` ([`FromStr`]), for the CLI: the same quantities valued
//!   exactly (never wrapped around the int64 range), plus tc's units (`10mbit`,
//!   `1gbit`, `10mbps` = 10 megabytes per second; sizes `64kb` = 64 KiB, `1mb`)
//!   and surrounding whitespace.

use std::fmt;
use std::str::FromStr;

mod number;
pub mod quantity;

use number::Decimal;
use quantity::{parse_quantity, QuantityError};

/// The kubelet's lower bound for the bandwidth annotations: 1k bit/s.
pub const MIN_RATE_BITS: u64 = 1_000;
/// The kubelet's upper bound for the bandwidth annotations: 1P bit/s.
pub const MAX_RATE_BITS: u64 = 1_000_000_000_000_000;
/// The smallest burst accepted: below one full-size packet nothing would pass.
pub const MIN_BURST_BYTES: u64 = 4 * 1024;
/// The largest burst accepted (keeps the shaper's arithmetic exact).
pub const MAX_BURST_BYTES: u64 = 1 << 30;
/// The default burst never goes below this: a few GSO packets.
pub const DEFAULT_MIN_BURST_BYTES: u64 = 128 * 1024;

/// `resource.ParseQuantity(input).Value()`: the integer the kubelet reads an
/// annotation as (a fraction rounded up, beyond int64 wrapped as Go wraps).
fn kubernetes_value(input: &str) -> Result<i64, ParseError> {
    parse_quantity(input)
        .map(|q| q.value())
        .map_err(|source| ParseError::MalformedQuantity {
            value: input.to_string(),
            source,
        })
}

const MILLI_HINT: &str = " ('m' means milli in a Kubernetes quantity; did you mean 'M'?)";
const RATE_FORMS: &str = "a Kubernetes quantity in bit/s (10M, 1G, 500k, 2Mi) or a tc rate \
                          (10mbit, 1gbit, 500kbit, 10mbps)";
const SIZE_FORMS: &str = "a size in bytes (65536, 64Ki, 1Mi, 100k, 64kb, 1mb)";

/// Why a rate or size was refused. Every message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid rate {value:?}: {reason}; expected {RATE_FORMS}")]
    MalformedRate { value: String, reason: String },
    #[error(
        "rate {value:?} is {actual} bit/s, outside the accepted range 1k..=1P bit/s \
         (1000 to 1000000000000000 bit/s){hint}"
    )]
    RateOutOfBounds {
        value: String,
        actual: String,
        hint: &'static str,
    },
    #[error("invalid size {value:?}: {reason}; expected {SIZE_FORMS}")]
    MalformedSize { value: String, reason: String },
    #[error("size {value:?} is {actual} bytes, outside the accepted range 4Ki..=1Gi bytes")]
    SizeOutOfBounds { value: String, actual: String },
    #[error(
        "invalid quantity {value:?}: {source} (Kubernetes' resource.ParseQuantity refuses it)"
    )]
    MalformedQuantity {
        value: String,
        #[source]
        source: QuantityError,
    },
}

/// A bandwidth in bits per second, within the kubelet's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(u64);

impl Rate {
    /// A rate from bits per second, checked against the bounds.
    pub fn from_bits_per_sec(bits: u64) -> Result<Self, ParseError> {
        if !(MIN_RATE_BITS..=MAX_RATE_BITS).contains(&bits) {
            return Err(ParseError::RateOutOfBounds {
                value: bits.to_string(),
                actual: bits.to_string(),
                hint: "",
            });
        }
        Ok(Self(bits))
    }

    /// A rate from a Kubernetes quantity of bit/s, read exactly as the
    /// kubelet reads the `kubernetes.io/*-bandwidth` annotations:
    /// `resource.ParseQuantity`, then `Value()` (a fraction rounds up), then
    /// its bounds (1k..=1P). No whitespace, no tc units; see [`quantity`].
    pub fn from_kubernetes(input: &str) -> Result<Self, ParseError> {
        let value = kubernetes_value(input)?;
        match u64::try_from(value) {
            Ok(bits) if (MIN_RATE_BITS..=MAX_RATE_BITS).contains(&bits) => Ok(Self(bits)),
            _ => Err(ParseError::RateOutOfBounds {
                value: input.to_string(),
                actual: value.to_string(),
                hint: if input.ends_with('m') { MILLI_HINT } else { "" },
            }),
        }
    }

    pub fn bits_per_sec(self) -> u64 {
        self.0
    }

    /// Bytes per second, rounded down (what the BPF shaper counts in).
    pub fn bytes_per_sec(self) -> u64 {
        self.0 / 8
    }

    /// The burst used when none is given: 25 ms at this rate (as long as the
    /// queue tc's tbf allows in the CNI bandwidth plugin), but never less than
    /// a few GSO packets so that TCP is not starved at low rates.
    pub fn default_burst(self) -> ByteSize {
        let bytes = (self.bytes_per_sec() / 40).clamp(DEFAULT_MIN_BURST_BYTES, MAX_BURST_BYTES);
        ByteSize(bytes)
    }
}

impl FromStr for Rate {
    type Err = ParseError;

    /// The CLI's RATE: a Kubernetes quantity as `resource.ParseQuantity`
    /// reads it, valued exactly (rounded up, never wrapped around), or a tc
    /// rate (`10mbit`, `10mbps` = bytes); surrounding whitespace is ignored.
    fn from_str(input: &str) -> Result<Self, ParseError> {
        let text = input.trim();
        if let Ok(q) = parse_quantity(text) {
            return match q.ceil_u64() {
                Some(b) if (MIN_RATE_BITS..=MAX_RATE_BITS).contains(&b) => Ok(Rate(b)),
                _ => Err(ParseError::RateOutOfBounds {
                    value: input.to_string(),
                    actual: q.exact(40).unwrap_or_else(|| "more than 40 digits".into()),
                    hint: if text.ends_with('m') { MILLI_HINT } else { "" },
                }),
            };
        }
        let malformed = |reason: String| ParseError::MalformedRate {
            value: input.to_string(),
            reason,
        };
        let (number, unit) = number::split(text).map_err(|e| malformed(e.to_string()))?;
        let multiplier =
            tc_rate_unit(unit).ok_or_else(|| malformed(format!("unknown unit {unit:?}")))?;
        let bits = number.times(multiplier);
        match bits.ceil() {
            Some(b) if (MIN_RATE_BITS..=MAX_RATE_BITS).contains(&b) => Ok(Rate(b)),
            _ => Err(ParseError::RateOutOfBounds {
                value: input.to_string(),
                actual: bits.to_string(),
                hint: "",
            }),
        }
    }
}

/// Bits per second per tc unit (case insensitive: bit, kbit, mibit ...; bps is bytes).
fn tc_rate_unit(unit: &str) -> Option<Multiplier> {
    let lower = unit.to_ascii_lowercase();
    let (prefix, per_unit) = if let Some(p) = lower.strip_suffix("bit") {
        (p, 1)
    } else if let Some(p) = lower.strip_suffix("bps") {
        (p, 8)
    } else {
        return None;
    };
    let scale: u128 = match prefix {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => return None,
    };
    Some(Multiplier::whole(scale * per_unit))
}

impl fmt::Display for Rate {
    /// Prints the rate the way people read it: `100Mbit/s`, `1.5Gbit/s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}bit/s", human_decimal(self.0))
    }
}

/// A size in bytes (a burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    /// A size from bytes, checked against the bounds.
    pub fn from_bytes(bytes: u64) -> Result<Self, ParseError> {
        if !(MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&bytes) {
            return Err(ParseError::SizeOutOfBounds {
                value: bytes.to_string(),
                actual: bytes.to_string(),
            });
        }
        Ok(Self(bytes))
    }

    /// A size from a Kubernetes quantity of bytes (the
    /// `podshaper.io/*-burst` annotations): `resource.ParseQuantity`, then
    /// `Value()` (a fraction rounds up), then the burst bounds (4Ki..=1Gi).
    pub fn from_kubernetes(input: &str) -> Result<Self, ParseError> {
        let value = kubernetes_value(input)?;
        match u64::try_from(value) {
            Ok(bytes) if (MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&bytes) => Ok(Self(bytes)),
            _ => Err(ParseError::SizeOutOfBounds {
                value: input.to_string(),
                actual: value.to_string(),
            }),
        }
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ParseError;

    /// The CLI's SIZE: a Kubernetes quantity of bytes valued exactly (rounded
    /// up), or a tc size (`64kb` = 64 KiB, `1mb`, `1500b`); surrounding
    /// whitespace is ignored.
    fn from_str(input: &str) -> Result<Self, ParseError> {
        let text = input.trim();
        if let Ok(q) = parse_quantity(text) {
            return match q.ceil_u64() {
                Some(b) if (MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&b) => Ok(ByteSize(b)),
                _ => Err(ParseError::SizeOutOfBounds {
                    value: input.to_string(),
                    actual: q.exact(40).unwrap_or_else(|| "more than 40 digits".into()),
                }),
            };
        }
        let malformed = |reason: String| ParseError::MalformedSize {
            value: input.to_string(),
            reason,
        };
        let (number, unit) = number::split(text).map_err(|e| malformed(e.to_string()))?;
        let multiplier =
            tc_size_unit(unit).ok_or_else(|| malformed(format!("unknown unit {unit:?}")))?;
        let bytes = number.times(multiplier);
        match bytes.ceil() {
            Some(b) if (MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&b) => Ok(ByteSize(b)),
            _ => Err(ParseError::SizeOutOfBounds {
                value: input.to_string(),
                actual: bytes.to_string(),
            }),
        }
    }
}

/// Bytes per tc size unit (case insensitive, 1024-based: `b`, `k`/`kb`, `mb`, `gb`).
fn tc_size_unit(unit: &str) -> Option<Multiplier> {
    let bytes: u128 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    Some(Multiplier::whole(bytes))
}

impl fmt::Display for ByteSize {
    /// Prints binary units where they are exact (`64KiB`), else bytes (`1500B`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (size, name) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        for (size, name) in UNITS {
            if self.0 >= size {
                return write!(f, "{:.1}{name}", self.0 as f64 / size as f64);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// `1234567890` -> `1.23G`: at most three significant decimals, SI prefix.
pub fn human_decimal(value: u64) -> String {
    const PREFIXES: [(u64, &str); 5] = [
        (1_000_000_000_000_000, "P"),
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ];
    for (size, prefix) in PREFIXES {
        if value >= size {
            let scaled = value as f64 / size as f64;
            let text = format!("{scaled:.2}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            return format!("{text}{prefix}");
        }
    }
    value.to_string()
}

/// An exact multiplier: a whole number, or one thousandth.
#[derive(Debug, Clone, Copy)]
struct Multiplier {
    numerator: u128,
    denominator: u128,
}

impl Multiplier {
    fn whole(n: u128) -> Self {
        Self {
            numerator: n,
            denominator: 1,
        }
    }
}

impl Decimal {
    fn times(self, m: Multiplier) -> Decimal {
        self.scale(m.numerator, m.denominator)
    }
}

#[cfg(test)]
mod tests;
