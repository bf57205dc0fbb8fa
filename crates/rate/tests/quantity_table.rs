//! apimachinery's own ParseQuantity table (TestQuantityParse of Kubernetes
//! v1.20.2's quantity_test.go, evaluated by Go into
//! `fixtures/apimachinery-quantity-table.tsv` by `scripts/quantity-table.sh`)
//! run against the strict parser: every valid case parses to the table's
//! expected exact value and to the `Value()` Go's parser gives it, every
//! invalid case is refused, and the bandwidth annotations' verdict follows the
//! kubelet's bounds.

use podshaper_rate::quantity::parse_quantity;
use podshaper_rate::{Rate, MAX_RATE_BITS, MIN_RATE_BITS};

const TABLE: &str = include_str!("fixtures/apimachinery-quantity-table.tsv");

fn unhex(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("fixture hex"))
        .collect();
    String::from_utf8(bytes).expect("fixture inputs are UTF-8")
}

/// inf.Dec's String() keeps the trailing zeros of its scale; compare values.
fn normalize(exact: &str) -> String {
    let exact = match exact.split_once('.') {
        Some((int, frac)) if !frac.trim_end_matches('0').is_empty() => {
            format!("{int}.{}", frac.trim_end_matches('0'))
        }
        Some((int, _)) => int.to_string(),
        None => exact.to_string(),
    };
    if exact == "-0" {
        "0".to_string()
    } else {
        exact
    }
}

#[test]
fn apimachinery_quantity_table_parses_as_go_expects() {
    let (mut valid, mut invalid) = (0, 0);
    for line in TABLE.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split('\t').collect();
        let input = unhex(fields[1]);
        match fields[0] {
            "valid" => {
                let (exact, value) = (fields[4], fields[5]);
                let value: i64 = value.parse().expect("fixture Value()");
                // "-4Pi" is one: its Value() wraps to 6917529028, as in Go
                let q = parse_quantity(&input)
                    .unwrap_or_else(|e| panic!("{input:?} is valid in apimachinery: {e}"));
                assert_eq!(q.value(), value, "Value() of {input:?}");
                assert_eq!(
                    q.exact(100).as_deref(),
                    Some(normalize(exact).as_str()),
                    "exact value of {input:?}"
                );
                let in_bounds = (MIN_RATE_BITS as i64..=MAX_RATE_BITS as i64).contains(&value);
                match Rate::from_kubernetes(&input) {
                    Ok(r) => {
                        assert!(in_bounds, "{input:?} accepted out of bounds");
                        assert_eq!(r.bits_per_sec() as i64, value, "{input:?}");
                    }
                    Err(e) => assert!(!in_bounds, "{input:?} refused in bounds: {e}"),
                }
                valid += 1;
            }
            "invalid" => {
                assert!(
                    parse_quantity(&input).is_err(),
                    "{input:?} is invalid in apimachinery"
                );
                assert!(Rate::from_kubernetes(&input).is_err(), "{input:?}");
                invalid += 1;
            }
            other => panic!("fixture line of unknown kind {other:?}: {line}"),
        }
    }
    assert_eq!((valid, invalid), (288, 12), "cases in the fixture");
}
