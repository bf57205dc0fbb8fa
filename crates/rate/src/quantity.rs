//! Kubernetes quantities exactly as apimachinery reads them.
//!
//! [`parse_quantity`] accepts and refuses the strings that
//! `resource.ParseQuantity` (k8s.io/apimachinery v0.20.2, the version in
//! Kubernetes v1.20.2) accepts and refuses, and [`Quantity::value`] is the
//! integer `Quantity.Value()` returns: what the kubelet checks against its
//! bandwidth bounds and hands the CNI bandwidth plugin. That includes
//! apimachinery's corner cases: `.`, `+` and `Ki` are zero; `1.G` is 1G; an
//! exponent is read as an int64 and then truncated to an int32
//! (`1e4294967299` is `1e3`); `Value()` rounds a fraction up, and a value that
//! does not fit in an int64 wraps around as Go's integer conversions do
//! (`18446744073709552616` reads as 1000), except that binary-suffixed values
//! stop at 2^63-1.
//!
//! The fixture `tests/fixtures/apimachinery-quantity-table.tsv` holds
//! apimachinery's own parse table, and `scripts/quantity-differential.sh`
//! compares this module with Go's parser on random strings.

/// Why `ParseQuantity` refuses a string; the messages are apimachinery's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "quantities must match the regular expression \
         '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    FormatWrong,
    #[error("unable to parse numeric part of quantity")]
    Numeric,
    #[error("unable to parse quantity's suffix")]
    Suffix,
}

/// A parsed quantity: its sign and its magnitude, rounded up to a
/// billionth as apimachinery stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    amount: Amount,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Amount {
    /// apimachinery's int64Amount: `value × 10^scale`, `value` carrying the sign.
    Int64 { value: i64, scale: i32 },
    /// apimachinery's inf.Dec path: `digits × 2^binary × 10^shift`, rounded up
    /// to a billionth, unless it is zero.
    Dec {
        digits: Vec<u8>,
        binary: u32,
        shift: i64,
    },
    /// A binary-suffixed value beyond 2^63-1, capped there.
    Capped,
}

const NANO: i32 = -9;
const MAX_INT64_FACTORS: i64 = 18;
const SUFFIX_CHARS: &[u8] = b"eEinumkKMGTP";

enum Format {
    Decimal,
    Binary,
}

struct Parts<'a> {
    positive: bool,
    value: &'a [u8],
    num: &'a [u8],
    denom: &'a [u8],
    suffix: &'a [u8],
}

/// `resource.ParseQuantity`: the same verdict for every string.
pub fn parse_quantity(input: &str) -> Result<Quantity, QuantityError> {
    let s = input.as_bytes();
    if s.is_empty() {
        return Err(QuantityError::FormatWrong);
    }
    if s == b"0" {
        return Ok(Quantity::zero());
    }
    let p = split(s)?;
    let (base, exponent, format) = interpret(p.suffix).ok_or(QuantityError::Suffix)?;
    let digits = || p.num.iter().chain(p.denom).map(|d| d - b'0');
    let denom_len = i32::try_from(p.denom.len()).unwrap_or(i32::MAX);
    let mut scale: i32 = 0;
    let mut mantissa: i64 = 1;
    let precision: i64 = match format {
        Format::Decimal => {
            scale = exponent;
            MAX_INT64_FACTORS - (p.num.len() + p.denom.len()) as i64
        }
        Format::Binary if exponent >= 0 && p.denom.is_empty() => {
            mantissa <<= exponent;
            // float32(exponent)*3/10 is exact for the binary suffixes (10..60)
            15 - p.num.len() as i64 - i64::from(exponent * 3 / 10) - 1
        }
        Format::Binary => -1,
    };
    if precision >= 0 {
        scale = scale.wrapping_sub(denom_len);
        if scale >= NANO {
            // at most 18 digits: fits
            let value = digits().fold(0i64, |v, d| v * 10 + i64::from(d));
            if let Some(result) = int64_multiply(value, mantissa) {
                let value = if p.positive { result } else { -result };
                return Ok(Quantity {
                    negative: value < 0,
                    amount: Amount::Int64 { value, scale },
                });
            }
        }
    }
    // inf.Dec's SetString needs a digit in the number part
    if !p.value.iter().any(u8::is_ascii_digit) {
        return Err(QuantityError::Numeric);
    }
    let digits: Vec<u8> = digits().skip_while(|&d| d == 0).collect();
    if digits.is_empty() {
        return Ok(Quantity::zero());
    }
    let (binary, shift) = if base == 10 {
        // inf.Dec keeps the scale in an int32: the sum wraps as Go's does
        let inf_scale = denom_len.wrapping_add(exponent.wrapping_neg());
        (0, -i64::from(inf_scale))
    } else {
        (exponent.unsigned_abs(), -i64::from(denom_len))
    };
    let amount = Amount::Dec {
        digits,
        binary,
        shift,
    };
    let amount = match (&format, amount.ceil_at(0).exact) {
        (Format::Binary, None) => Amount::Capped,
        (Format::Binary, Some(v)) if v > i64::MAX as u128 => Amount::Capped,
        _ => amount,
    };
    Ok(Quantity {
        negative: !p.positive,
        amount,
    })
}

impl Quantity {
    fn zero() -> Self {
        Self {
            negative: false,
            amount: Amount::Int64 { value: 0, scale: 0 },
        }
    }

    /// `Quantity.Value()`: the value rounded up to an integer, wrapping
    /// around beyond the int64 range as apimachinery's does.
    pub fn value(&self) -> i64 {
        match &self.amount {
            Amount::Int64 { value, scale } => scaled_int64(*value, *scale),
            Amount::Capped if self.negative => -i64::MAX,
            Amount::Capped => i64::MAX,
            Amount::Dec { .. } => {
                // scaledValue(unscaled, 9, 0) on the value rounded to 9 places
                let unscaled = self.amount.ceil_at(-NANO);
                let small = unscaled.exact.is_some_and(|u| u < i64::MAX as u128);
                if self.negative || small {
                    let low = unscaled.low as i64;
                    let i = if self.negative {
                        low.wrapping_neg()
                    } else {
                        low
                    };
                    i / 1_000_000_000 + i64::from(i % 1_000_000_000 != 0)
                } else {
                    self.amount.ceil_at(0).low as i64
                }
            }
        }
    }

    /// The exact value rounded up to a whole number, when it is not
    /// negative and fits in a u64 (no wrapping around: what the CLI uses).
    pub fn ceil_u64(&self) -> Option<u64> {
        match &self.amount {
            Amount::Int64 { value: 0, .. } => Some(0),
            _ if self.negative => None,
            Amount::Int64 { value, scale } if *scale >= 0 => u64::try_from(*value)
                .ok()?
                .checked_mul(10u64.checked_pow(scale.unsigned_abs())?),
            Amount::Int64 { value, scale } => Some(
                u64::try_from(*value)
                    .ok()?
                    .div_ceil(10u64.pow(scale.unsigned_abs())),
            ),
            Amount::Capped => None,
            Amount::Dec { .. } => u64::try_from(self.amount.ceil_at(0).exact?).ok(),
        }
    }

    /// The exact value as a plain decimal (`-0.001`, `1024`), or None when
    /// it would have more than `max_digits` digits.
    pub fn exact(&self, max_digits: usize) -> Option<String> {
        let (digits, point) = match &self.amount {
            Amount::Int64 { value: 0, .. } => return Some("0".to_string()),
            Amount::Int64 { value, scale } => {
                let digits = value.unsigned_abs().to_string().into_bytes();
                (digits, i64::from(*scale))
            }
            Amount::Capped => (i64::MAX.to_string().into_bytes(), 0),
            Amount::Dec { .. } => {
                let nano = self.amount.ceil_at(-NANO);
                let digits = nano.digits.filter(|d| d.len() <= max_digits + 9)?;
                (digits.iter().map(|d| d + b'0').collect(), i64::from(NANO))
            }
        };
        let sign = if self.negative { "-" } else { "" };
        let text = String::from_utf8(digits).ok()?;
        if point >= 0 {
            let zeros = usize::try_from(point).ok()?;
            if text.len() + zeros > max_digits {
                return None;
            }
            return Some(format!("{sign}{text}{}", "0".repeat(zeros)));
        }
        let frac = usize::try_from(-point).ok()?;
        let padded = format!(
            "{}{text}",
            "0".repeat((frac + 1).saturating_sub(text.len()))
        );
        let (int, dec) = padded.split_at(padded.len() - frac);
        let dec = dec.trim_end_matches('0');
        let int = int.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        Some(match dec.is_empty() {
            true => format!("{sign}{int}"),
            false => format!("{sign}{int}.{dec}"),
        })
    }
}

/// int64Amount.AsScaledInt64(0), whose overflow flag Value() ignores.
fn scaled_int64(value: i64, scale: i32) -> i64 {
    if scale < 0 {
        return negative_scale(value, scale.unsigned_abs());
    }
    match scale {
        0 => value,
        // int64MultiplyScale10/100/1000/...: the wrapped product
        1 | 2 | 3 | 6 | 9 => value.wrapping_mul(10i64.pow(scale.unsigned_abs())),
        _ => {
            let mut v = value;
            for _ in 0..scale {
                if v == 0 {
                    return 0;
                }
                match v.checked_mul(10) {
                    Some(next) => v = next,
                    None => return 0,
                }
            }
            v
        }
    }
}

/// negativeScaleInt64: divides by 10^scale, rounding away from zero.
fn negative_scale(base: i64, scale: u32) -> i64 {
    let mut value = base;
    let mut fraction = false;
    for _ in 0..scale {
        if !fraction && value % 10 != 0 {
            fraction = true;
        }
        value /= 10;
        if value == 0 {
            return match (fraction, base > 0) {
                (false, _) => 0,
                (true, true) => 1,
                (true, false) => -1,
            };
        }
    }
    match (fraction, base > 0) {
        (false, _) => value,
        (true, true) => value + 1,
        (true, false) => value - 1,
    }
}

fn int64_multiply(a: i64, b: i64) -> Option<i64> {
    if a == 0 || b == 0 || a == 1 || b == 1 {
        return Some(a * b);
    }
    a.checked_mul(b)
}

/// parseQuantityString: sign, number, fraction and suffix, as Go splits them.
fn split(s: &[u8]) -> Result<Parts<'_>, QuantityError> {
    let end = s.len();
    let digits_from = |at: usize| at + s[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut parts = Parts {
        positive: true,
        value: s,
        num: b"0",
        denom: b"",
        suffix: b"",
    };
    let mut pos = 0;
    match s.first() {
        Some(b'-') => {
            parts.positive = false;
            pos += 1;
        }
        Some(b'+') => pos += 1,
        _ => {}
    }
    while pos < end && s[pos] == b'0' {
        pos += 1;
    }
    if pos >= end {
        // only zeros (or nothing) after the sign
        parts.value = b"0";
        return Ok(parts);
    }
    let num_end = digits_from(pos);
    if num_end > pos {
        parts.num = &s[pos..num_end];
    }
    if num_end >= end {
        return Ok(parts);
    }
    pos = num_end;
    if s[pos] == b'.' {
        let denom_end = digits_from(pos + 1);
        parts.denom = &s[pos + 1..denom_end];
        if denom_end >= end {
            return Ok(parts);
        }
        pos = denom_end;
    }
    parts.value = &s[..pos];
    let suffix_start = pos;
    pos += s[pos..]
        .iter()
        .take_while(|b| SUFFIX_CHARS.contains(b))
        .count();
    if pos < end && (s[pos] == b'-' || s[pos] == b'+') {
        pos += 1;
    }
    if digits_from(pos) < end {
        return Err(QuantityError::FormatWrong);
    }
    parts.suffix = &s[suffix_start..];
    Ok(parts)
}

/// The suffixer's interpret: base, exponent and format of a suffix.
fn interpret(suffix: &[u8]) -> Option<(u32, i32, Format)> {
    let decimal = |e| Some((10, e, Format::Decimal));
    let binary = |e| Some((2, e, Format::Binary));
    match suffix {
        b"" => decimal(0),
        b"n" => decimal(-9),
        b"u" => decimal(-6),
        b"m" => decimal(-3),
        b"k" => decimal(3),
        b"M" => decimal(6),
        b"G" => decimal(9),
        b"T" => decimal(12),
        b"P" => decimal(15),
        b"E" => decimal(18),
        b"Ki" => binary(10),
        b"Mi" => binary(20),
        b"Gi" => binary(30),
        b"Ti" => binary(40),
        b"Pi" => binary(50),
        b"Ei" => binary(60),
        [b'e' | b'E', rest @ ..] if !rest.is_empty() => {
            // strconv.ParseInt(rest, 10, 64), then int32(parsed)
            let parsed: i64 = std::str::from_utf8(rest).ok()?.parse().ok()?;
            decimal(parsed as i32)
        }
        _ => None,
    }
}

/// A non-negative integer known exactly when it is small, and modulo 2^64
/// always (which is what Go's int64 conversions keep of a larger one).
struct Magnitude {
    low: u64,
    exact: Option<u128>,
    /// Its decimal digits, when there are at most 4,096 of them.
    digits: Option<Vec<u8>>,
}

const MAX_EXACT_DIGITS: i64 = 4_096;

impl Amount {
    /// `ceil(|amount| × 10^places)` of a Dec amount.
    fn ceil_at(&self, places: i32) -> Magnitude {
        let Amount::Dec {
            digits,
            binary,
            shift,
        } = self
        else {
            return Magnitude {
                low: 0,
                exact: Some(0),
                digits: Some(Vec::new()),
            };
        };
        let digits = times_power_of_two(digits, *binary);
        let shift = shift + i64::from(places);
        if shift >= 0 {
            let low = low64(&digits).wrapping_mul(10u64.wrapping_pow(shift.min(64) as u32));
            let exact = u32::try_from(shift)
                .ok()
                .and_then(|s| 10u128.checked_pow(s))
                .and_then(|p| exact(&digits)?.checked_mul(p));
            let all = (digits.len() as i64 + shift <= MAX_EXACT_DIGITS).then(|| {
                let mut all = digits.clone();
                all.resize(digits.len() + shift as usize, 0);
                all
            });
            return Magnitude {
                low,
                exact,
                digits: all,
            };
        }
        let drop = usize::try_from(shift.unsigned_abs()).unwrap_or(usize::MAX);
        let keep = digits.len().saturating_sub(drop);
        let (head, tail) = digits.split_at(keep);
        let carry = tail.iter().any(|&d| d != 0);
        let mut head = head.to_vec();
        if carry {
            increment(&mut head);
        }
        Magnitude {
            low: low64(&head),
            exact: exact(&head),
            digits: (head.len() as i64 <= MAX_EXACT_DIGITS).then_some(head),
        }
    }
}

/// Decimal digits times 2^power (power at most 60).
fn times_power_of_two(digits: &[u8], power: u32) -> Vec<u8> {
    if power == 0 {
        return digits.to_vec();
    }
    let factor = 1u128 << power;
    let mut out = Vec::with_capacity(digits.len() + 20);
    let mut carry: u128 = 0;
    for &d in digits.iter().rev() {
        let v = u128::from(d) * factor + carry;
        out.push((v % 10) as u8);
        carry = v / 10;
    }
    while carry > 0 {
        out.push((carry % 10) as u8);
        carry /= 10;
    }
    out.reverse();
    out
}

fn increment(digits: &mut Vec<u8>) {
    for d in digits.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    digits.insert(0, 1);
}

fn low64(digits: &[u8]) -> u64 {
    digits
        .iter()
        .fold(0u64, |v, &d| v.wrapping_mul(10).wrapping_add(u64::from(d)))
}

fn exact(digits: &[u8]) -> Option<u128> {
    digits
        .iter()
        .try_fold(0u128, |v, &d| v.checked_mul(10)?.checked_add(u128::from(d)))
}

#[cfg(test)]
mod tests;
