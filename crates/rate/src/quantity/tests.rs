//! Corner cases of ParseQuantity and Value(), each answer as Go's parser
//! gives it (`scripts/quantity-oracle`, Kubernetes v1.20.2).

use super::*;

fn value(s: &str) -> i64 {
    match parse_quantity(s) {
        Ok(q) => q.value(),
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn refused(s: &str) -> QuantityError {
    match parse_quantity(s) {
        Ok(q) => panic!("{s:?} should be refused, got {}", q.value()),
        Err(e) => e,
    }
}

#[test]
fn whitespace_and_an_exponent_before_a_suffix_are_refused() {
    assert_eq!(refused(" 1"), QuantityError::FormatWrong);
    assert_eq!(refused("1 "), QuantityError::FormatWrong);
    assert_eq!(refused("1e3M"), QuantityError::FormatWrong);
    assert_eq!(refused("１"), QuantityError::FormatWrong);
    assert_eq!(refused(""), QuantityError::FormatWrong);
    assert_eq!(refused("1e"), QuantityError::Suffix);
    assert_eq!(refused("1e9223372036854775808"), QuantityError::Suffix);
    assert_eq!(refused(".e-10"), QuantityError::Numeric);
}

#[test]
fn a_sign_a_point_or_a_suffix_alone_is_zero() {
    for s in ["+", "-", ".", "Ki", ".e-9", "-0", "000"] {
        assert_eq!(value(s), 0, "{s:?}");
    }
}

#[test]
fn value_rounds_a_fraction_up() {
    assert_eq!(value("1000.000000001"), 1001);
    assert_eq!(value("10m"), 1);
    assert_eq!(value("1000000m"), 1000);
    assert_eq!(value("0.0000000001Ki"), 1);
    assert_eq!(value("1.5Ki"), 1536);
    assert_eq!(value("1.G"), 1_000_000_000);
    assert_eq!(value("1e+3"), 1000);
}

#[test]
fn exponents_are_truncated_to_32_bits() {
    assert_eq!(value("1e4294967299"), 1000);
}

#[test]
fn values_beyond_int64_wrap_as_in_go() {
    assert_eq!(value("18446744073709552616"), 1000);
    assert_eq!(value("-4Pi"), 6_917_529_028);
    assert_eq!(value("999999999999999999G"), -6_930_898_828_444_486_144);
    assert_eq!(value("9Ei"), i64::MAX);
    assert_eq!(value("1E"), 1_000_000_000_000_000_000);
}

#[test]
fn huge_exponents_answer_at_once() {
    // Go's parser gives no answer within 20 s for the first three (it
    // computes with 10^(2^31)); the value it works towards is a multiple of
    // 2^64, which is 0 in an int64.
    assert_eq!(value("1234567890123456789e2147483647"), 0);
    assert_eq!(value("1e2147483648"), 0);
    assert_eq!(value("1e-2147483648"), 0);
    assert_eq!(value("1e-2000000000"), 1);
}

#[test]
fn exact_values_are_plain_decimals_up_to_a_length() {
    let exact = |s: &str| parse_quantity(s).ok().and_then(|q| q.exact(40));
    assert_eq!(exact("1.5Ki").as_deref(), Some("1536"));
    assert_eq!(exact("0.00000012345").as_deref(), Some("0.000000124"));
    assert_eq!(exact("-10m").as_deref(), Some("-0.01"));
    assert_eq!(exact("9Ei").as_deref(), Some("9223372036854775807"));
    assert_eq!(exact(&"9".repeat(41)), None);
    assert_eq!(exact("1e41"), None);
}
