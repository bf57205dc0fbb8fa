//! The number part of a quantity, kept exact (no floating point).

use std::fmt;

/// Longest digit string accepted; more is a typo, not a rate.
const MAX_DIGITS: usize = 30;
/// Largest decimal exponent accepted (`1e40`).
const MAX_EXPONENT: i32 = 40;

/// Why the number part of a quantity is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("it is empty")]
    Empty,
    #[error("it contains whitespace")]
    Whitespace,
    #[error("it is negative")]
    Negative,
    #[error("it does not start with a number")]
    NoDigits,
    #[error("it has more than {MAX_DIGITS} digits")]
    TooManyDigits,
    #[error("it has more than one decimal point")]
    TwoPoints,
    #[error("its exponent is missing digits or beyond ±{MAX_EXPONENT}")]
    BadExponent,
    #[error("its unit {0:?} contains characters that are not letters")]
    BadUnit(String),
}

/// An exact decimal: `digits × 10^exp10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    digits: u128,
    exp10: i32,
}

/// Splits `"1.5Mi"` into `(1.5, "Mi")`, `"1e6"` into `(1000000, "")`.
pub fn split(input: &str) -> Result<(Decimal, &str), NumberError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(NumberError::Empty);
    }
    if s.chars().any(char::is_whitespace) {
        return Err(NumberError::Whitespace);
    }
    if s.starts_with('-') {
        return Err(NumberError::Negative);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let bytes = s.as_bytes();
    let mut digits: u128 = 0;
    let mut count = 0usize;
    let mut exp10: i32 = 0;
    let mut seen_point = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b @ b'0'..=b'9' => {
                count += 1;
                if count > MAX_DIGITS {
                    return Err(NumberError::TooManyDigits);
                }
                digits = digits * 10 + u128::from(b - b'0');
                if seen_point {
                    exp10 -= 1;
                }
            }
            b'.' if seen_point => return Err(NumberError::TwoPoints),
            b'.' => seen_point = true,
            _ => break,
        }
        i += 1;
    }
    if count == 0 {
        return Err(NumberError::NoDigits);
    }
    // A decimal exponent (`1e6`, `2E-3`); a bare `E` is the exa suffix.
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        let rest = &s[i + 1..];
        let unsigned = rest.strip_prefix(['+', '-']).unwrap_or(rest);
        if unsigned.starts_with(|c: char| c.is_ascii_digit()) {
            let end = rest
                .char_indices()
                .skip(1)
                .find(|(_, c)| !c.is_ascii_digit())
                .map_or(rest.len(), |(n, _)| n);
            let exponent: i32 = rest[..end].parse().map_err(|_| NumberError::BadExponent)?;
            if exponent.unsigned_abs() > MAX_EXPONENT.unsigned_abs() {
                return Err(NumberError::BadExponent);
            }
            exp10 += exponent;
            i += 1 + end;
        } else if !rest.is_empty() {
            // "1e" followed by letters is not a unit we know either way
            if bytes[i] == b'e' {
                return Err(NumberError::BadExponent);
            }
        }
    }
    let unit = &s[i..];
    if !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(NumberError::BadUnit(unit.to_string()));
    }
    Ok((Decimal { digits, exp10 }, unit))
}

impl Decimal {
    /// `self × numerator / denominator`, where denominator is a power of ten.
    pub fn scale(self, numerator: u128, denominator: u128) -> Decimal {
        let mut exp10 = self.exp10;
        let mut d = denominator;
        while d > 1 {
            d /= 10;
            exp10 -= 1;
        }
        match self.digits.checked_mul(numerator) {
            Some(digits) => Decimal { digits, exp10 },
            // Too large to hold exactly: keep the magnitude, which is all a
            // bounds check and an error message need.
            None => Decimal {
                digits: u128::MAX / 10,
                exp10: exp10 + 10,
            },
        }
    }

    /// The value rounded up to a whole number (as Kubernetes' `Value()`
    /// rounds), or None when that does not fit in a u64.
    pub fn ceil(self) -> Option<u64> {
        let value = if self.exp10 >= 0 {
            let pow = 10u128.checked_pow(self.exp10.unsigned_abs())?;
            self.digits.checked_mul(pow)?
        } else {
            match 10u128.checked_pow(self.exp10.unsigned_abs()) {
                Some(pow) => self.digits.div_ceil(pow),
                None => u128::from(self.digits != 0),
            }
        };
        u64::try_from(value).ok()
    }
}

impl fmt::Display for Decimal {
    /// The exact value in plain notation: `1500000`, `0.001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.digits.to_string();
        if self.digits == 0 {
            return write!(f, "0");
        }
        if self.exp10 >= 0 {
            return write!(
                f,
                "{digits}{}",
                "0".repeat(self.exp10.unsigned_abs() as usize)
            );
        }
        let frac = self.exp10.unsigned_abs() as usize;
        let padded = if digits.len() <= frac {
            format!("{}{digits}", "0".repeat(frac - digits.len() + 1))
        } else {
            digits
        };
        let (int, dec) = padded.split_at(padded.len() - frac);
        let dec = dec.trim_end_matches('0');
        if dec.is_empty() {
            write!(f, "{int}")
        } else {
            write!(f, "{int}.{dec}")
        }
    }
}
