//! Strings for the differential check of the strict quantity parser against
//! Go's `resource.ParseQuantity`: mostly near-quantities built from the
//! grammar (sign, zeros, digits, point, fraction, suffix or exponent), then
//! mutated, plus fixed edge cases and random bytes.

use fastrand::Rng;

const SUFFIXES: [&str; 16] = [
    "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
];
/// Things operators write that are not quantities, and characters near the grammar.
const FOREIGN: [&str; 24] = [
    "i", "K", "mi", "b", "B", "bit", "kbit", "mbit", "mbps", "KB", "kb", "Kib", " ", "\t", "\n",
    "\r", "\u{a0}", "\u{200b}", "\u{ff11}", "\u{663}", "\u{b5}", "é", "_", ",",
];
const ALPHABET: &[u8] = b"0123456789.+-eEinumkKMGTPi xb_";

/// Inputs every run checks, before the random ones.
pub const EDGE_CASES: [&str; 40] = [
    "",
    "0",
    "+",
    "-",
    ".",
    "+.",
    "-.",
    "..",
    "Ki",
    "e",
    "E",
    "e3",
    ".e-9",
    ".e-10",
    "1.",
    "1.G",
    "1e",
    "1e+",
    "1e-",
    "1E",
    "1Ee3",
    "1e3M",
    " 1",
    "1 ",
    "1000",
    "999",
    "1k",
    "999.9999999999",
    "1P",
    "1000000000000001",
    "1.000000000000001P",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709552616",
    "-4Pi",
    "-3Ei",
    "999999999999999999G",
    "1e4294967299",
    "1e9223372036854775807",
    "1e9223372036854775808",
];

/// Exponents beyond this (after Go's truncation to 32 bits) make Go's parser
/// compute with powers of ten of that many digits unless the number takes its
/// int64 path: 0.13 s at 10^6, no answer within 20 s at 2^31 (`printf
/// 1234567890123456789e1000000 | xxd -p | quantity-oracle`). [`generate`]
/// keeps clear of those.
const GO_SLOW_EXPONENT: i64 = 100_000;

/// One input. Valid UTF-8 always: the annotations are Kubernetes strings.
pub fn generate(rng: &mut Rng) -> String {
    let mut s = match rng.u8(..100) {
        0..=79 => grammar(rng),
        80..=89 => {
            let mut s = grammar(rng);
            s.push_str(&grammar(rng));
            s
        }
        _ => (0..rng.usize(0..8))
            .map(|_| char::from(ALPHABET[rng.usize(..ALPHABET.len())]))
            .collect(),
    };
    for _ in 0..rng.usize(0..3).saturating_sub(1) {
        mutate(rng, &mut s);
    }
    if go_takes_minutes(&s) {
        return "1e100000".to_string();
    }
    s
}

fn grammar(rng: &mut Rng) -> String {
    let mut s = String::new();
    match rng.u8(..10) {
        0..=5 => {}
        6 | 7 => s.push('+'),
        _ => s.push('-'),
    }
    let zeros = match rng.u8(..10) {
        0..=6 => 0,
        7 | 8 => rng.usize(1..4),
        _ => rng.usize(4..30),
    };
    s.push_str(&"0".repeat(zeros));
    let int_len = match rng.u8(..20) {
        0..=2 => 0,
        3..=11 => rng.usize(1..5),
        12..=16 => rng.usize(5..19),
        17 | 18 => rng.usize(19..26),
        _ => rng.usize(26..400),
    };
    digits(rng, &mut s, int_len);
    if rng.u8(..10) < 4 {
        s.push('.');
        let frac_len = match rng.u8(..10) {
            0..=6 => rng.usize(0..6),
            7 | 8 => rng.usize(6..13),
            _ => rng.usize(13..40),
        };
        digits(rng, &mut s, frac_len);
    }
    match rng.u8(..20) {
        0..=11 => s.push_str(SUFFIXES[rng.usize(..SUFFIXES.len())]),
        12..=16 => s.push_str(&exponent(rng)),
        17 | 18 => {
            for _ in 0..rng.usize(1..4) {
                s.push(char::from(b"eEinumkKMGTP"[rng.usize(..12)]));
            }
            if rng.bool() {
                s.push(if rng.bool() { '+' } else { '-' });
                let len = rng.usize(0..3);
                digits(rng, &mut s, len);
            }
        }
        _ => s.push_str(FOREIGN[rng.usize(..FOREIGN.len())]),
    }
    s
}

fn digits(rng: &mut Rng, s: &mut String, len: usize) {
    // runs of 9s and 0s find carries and rounding edges
    let style = rng.u8(..4);
    for _ in 0..len {
        let d = match style {
            0 => b'9',
            1 if rng.bool() => b'0',
            _ => b'0' + rng.u8(..10),
        };
        s.push(char::from(d));
    }
}

fn exponent(rng: &mut Rng) -> String {
    let mark = if rng.bool() { 'e' } else { 'E' };
    let sign = ["", "+", "-"][rng.usize(..3)];
    let magnitude: u128 = match rng.u8(..20) {
        0..=13 => rng.u128(0..40),
        14 | 15 => rng.u128(40..100_000),
        // truncated to 32 bits by Go: k·2^32 + small
        16 | 17 => (u128::from(rng.u32(1..3_000_000)) << 32) + rng.u128(0..40),
        18 => rng.u128(2_147_483_600..2_147_483_700),
        // beyond int64: refused
        _ => rng.u128(9_223_372_036_854_775_800..9_223_372_036_854_775_900),
    };
    let zeros = if rng.u8(..10) == 0 { "00" } else { "" };
    format!("{mark}{sign}{zeros}{magnitude}")
}

fn mutate(rng: &mut Rng, s: &mut String) {
    let mut chars: Vec<char> = s.chars().collect();
    let at = rng.usize(..=chars.len());
    match rng.u8(..4) {
        0 if at < chars.len() => {
            chars.remove(at);
        }
        1 => {
            let f = FOREIGN[rng.usize(..FOREIGN.len())];
            chars.splice(at..at, f.chars());
        }
        2 if at < chars.len() => {
            let c = chars[at];
            chars.insert(at, c);
        }
        _ => chars.insert(at, char::from(ALPHABET[rng.usize(..ALPHABET.len())])),
    }
    *s = chars.into_iter().collect();
}

/// True for the strings Go's parser takes long over: an exponent (after
/// truncation to 32 bits) beyond [`GO_SLOW_EXPONENT`] on a number that leaves
/// the int64 path (more than 18 digits, a negative exponent, or zero).
fn go_takes_minutes(s: &str) -> bool {
    let Some(e_at) = s.rfind(['e', 'E']) else {
        return false;
    };
    let Ok(exponent) = s[e_at + 1..].parse::<i64>() else {
        return false;
    };
    let exponent = i64::from(exponent as i32);
    if exponent.abs() <= GO_SLOW_EXPONENT {
        return false;
    }
    let mantissa = &s[..e_at];
    let significant = mantissa
        .trim_start_matches(['+', '-'])
        .trim_start_matches('0')
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    let nonzero = mantissa.chars().any(|c| ('1'..='9').contains(&c));
    // (a whole part of zeros counts one digit in Go, none here: 17, not 18)
    exponent < 0 || significant > 17 || !nonzero
}
