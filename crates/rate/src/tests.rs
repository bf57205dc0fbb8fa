use super::*;

fn rate(s: &str) -> u64 {
    match s.parse::<Rate>() {
        Ok(r) => r.bits_per_sec(),
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn size(s: &str) -> u64 {
    match s.parse::<ByteSize>() {
        Ok(r) => r.bytes(),
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

#[test]
fn kubernetes_decimal_units_are_bits() {
    assert_eq!(rate("1000"), 1_000);
    assert_eq!(rate("500k"), 500_000);
    assert_eq!(rate("10M"), 10_000_000);
    assert_eq!(rate("1G"), 1_000_000_000);
    assert_eq!(rate("2T"), 2_000_000_000_000);
    assert_eq!(rate("1P"), 1_000_000_000_000_000);
    assert_eq!(rate("1.5M"), 1_500_000);
    assert_eq!(rate("0.5G"), 500_000_000);
    assert_eq!(rate("+10M"), 10_000_000);
    assert_eq!(rate(" 10M "), 10_000_000);
}

#[test]
fn kubernetes_binary_units_are_bits() {
    assert_eq!(rate("1Ki"), 1_024);
    assert_eq!(rate("2Mi"), 2 * 1_048_576);
    assert_eq!(rate("1Gi"), 1 << 30);
    assert_eq!(rate("1Ti"), 1 << 40);
    assert_eq!(rate("1.5Ki"), 1_536);
}

#[test]
fn kubernetes_exponents() {
    assert_eq!(rate("1e6"), 1_000_000);
    assert_eq!(rate("1E6"), 1_000_000);
    assert_eq!(rate("2.5e+3"), 2_500);
    assert_eq!(rate("1e15"), MAX_RATE_BITS);
    assert_eq!(rate("1500000e-3"), 1_500);
}

#[test]
fn milli_is_milli() {
    assert_eq!(rate("1000000m"), 1_000);
    let err = "10m".parse::<Rate>().expect_err("10m is 0.01 bit/s");
    let msg = err.to_string();
    assert!(msg.contains("\"10m\""), "{msg}");
    assert!(msg.contains("0.01 bit/s"), "{msg}");
    assert!(msg.contains("did you mean 'M'"), "{msg}");
}

#[test]
fn tc_bit_units() {
    assert_eq!(rate("1000bit"), 1_000);
    assert_eq!(rate("500kbit"), 500_000);
    assert_eq!(rate("10mbit"), 10_000_000);
    assert_eq!(rate("10Mbit"), 10_000_000);
    assert_eq!(rate("1gbit"), 1_000_000_000);
    assert_eq!(rate("1GBIT"), 1_000_000_000);
    assert_eq!(rate("2tbit"), 2_000_000_000_000);
    assert_eq!(rate("1kibit"), 1_024);
    assert_eq!(rate("1mibit"), 1 << 20);
    assert_eq!(rate("1gibit"), 1 << 30);
    assert_eq!(rate("1tibit"), 1 << 40);
}

#[test]
fn tc_byte_units_are_eight_bits() {
    assert_eq!(rate("1000bps"), 8_000);
    assert_eq!(rate("125kbps"), 1_000_000);
    assert_eq!(rate("10mbps"), 80_000_000);
    assert_eq!(rate("1gbps"), 8_000_000_000);
    assert_eq!(rate("1tbps"), 8_000_000_000_000);
    assert_eq!(rate("1kibps"), 8_192);
    assert_eq!(rate("1mibps"), 8 << 20);
    assert_eq!(rate("1gibps"), 8 << 30);
    assert_eq!(rate("1tibps"), 8 << 40);
}

#[test]
fn bounds_are_the_kubelets() {
    assert_eq!(rate("1k"), MIN_RATE_BITS);
    assert_eq!(rate("1P"), MAX_RATE_BITS);
    for bad in [
        "999",
        "0",
        "0.9k",
        "1001T",
        "2P",
        "1E",
        "1.0000001P",
        "1Ei",
        "1e16",
        "1e-3",
    ] {
        match bad.parse::<Rate>() {
            Err(ParseError::RateOutOfBounds { value, .. }) => assert_eq!(value, bad),
            other => panic!("{bad:?}: expected out of bounds, got {other:?}"),
        }
    }
    let msg = "2P".parse::<Rate>().expect_err("2P").to_string();
    assert!(
        msg.contains("\"2P\"") && msg.contains("2000000000000000 bit/s"),
        "{msg}"
    );
    assert!(msg.contains("1k..=1P"), "{msg}");
    assert!(Rate::from_bits_per_sec(999).is_err());
    assert!(Rate::from_bits_per_sec(MAX_RATE_BITS + 1).is_err());
    assert_eq!(
        Rate::from_bits_per_sec(1_000).map(Rate::bits_per_sec),
        Ok(1_000)
    );
}

#[test]
fn malformed_rates_are_refused_with_the_value_named() {
    let malformed = [
        "",
        " ",
        "M",
        "k10",
        "ten",
        "10 M",
        "10\tM",
        "-10M",
        "--1",
        "1..5M",
        "1.2.3M",
        "10MM",
        "10Mx",
        "10mbitx",
        "10bits",
        "10kbits",
        "10Kbps!",
        "10%",
        "10M/s",
        "0x10",
        "1e",
        "1e+",
        "1eM",
        "1e99",
        "1e-99",
        "10 mbit",
        "∞",
        "10Ｍ",
        "1_000",
        "1,000",
        "10pbit",
        "10qbit",
        "12345678901234567890123456789012345",
        ".",
        "+",
        "e6",
        "NaN",
        "inf",
        "10\0M",
        "10M\n10M",
        "1e-2147483648mbit",
    ];
    assert!(malformed.len() >= 30);
    for bad in malformed {
        let err = match bad.parse::<Rate>() {
            Ok(r) => panic!("{bad:?} should be refused, parsed as {r:?}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{bad:?}")),
            "error for {bad:?} does not name it: {msg}"
        );
        assert!(!msg.contains('\n'), "error is more than one line: {msg:?}");
    }
}

#[test]
fn rates_print_in_units_people_read() {
    assert_eq!(rate_of("100M").to_string(), "100Mbit/s");
    assert_eq!(rate_of("1.5G").to_string(), "1.5Gbit/s");
    assert_eq!(rate_of("1000").to_string(), "1kbit/s");
    assert_eq!(rate_of("1234567").to_string(), "1.23Mbit/s");
    assert_eq!(rate_of("1P").to_string(), "1Pbit/s");
}

#[test]
fn printed_rates_parse_back_approximately() {
    for s in ["1k", "10M", "100M", "1G", "5G", "1P", "123456789"] {
        let r = rate(s);
        let printed = Rate(r).to_string();
        let back = rate(printed.trim_end_matches("bit/s"));
        let error = back.abs_diff(r) as f64 / r as f64;
        assert!(error < 0.01, "{s} -> {printed} -> {back}");
    }
}

#[test]
fn sizes() {
    assert_eq!(size("65536"), 65_536);
    assert_eq!(size("64Ki"), 65_536);
    assert_eq!(size("1Mi"), 1 << 20);
    assert_eq!(size("1Gi"), 1 << 30);
    assert_eq!(size("100k"), 100_000);
    assert_eq!(size("1M"), 1_000_000);
    assert_eq!(size("64kb"), 65_536);
    assert_eq!(size("64K"), 65_536);
    assert_eq!(size("2mb"), 2 << 20);
    assert_eq!(size("1gb"), 1 << 30);
    assert_eq!(size("4096b"), 4_096);
    for bad in [
        "", "1k", "4095", "2Gi", "-1Mi", "1Mbit", "abc", "1.5.5k", "1 Mi",
    ] {
        let err = bad.parse::<ByteSize>().expect_err(bad).to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
    assert_eq!(ByteSize(65_536).to_string(), "64KiB");
    assert_eq!(ByteSize(1_500_000).to_string(), "1.4MiB");
    assert_eq!(ByteSize(1 << 30).to_string(), "1GiB");
}

#[test]
fn default_burst_is_25ms_with_a_floor() {
    assert_eq!(
        rate_of("10M").default_burst().bytes(),
        DEFAULT_MIN_BURST_BYTES
    );
    assert_eq!(rate_of("1G").default_burst().bytes(), 125_000_000 / 40);
    assert_eq!(rate_of("1P").default_burst().bytes(), MAX_BURST_BYTES);
}

fn rate_of(s: &str) -> Rate {
    match s.parse() {
        Ok(r) => r,
        Err(e) => panic!("{s}: {e}"),
    }
}

#[test]
fn the_cli_reads_quantities_as_kubernetes_plus_tc_units_and_whitespace() {
    // the same value as the kubelet's Value(): a fraction rounds up
    assert_eq!(rate("1000.5"), 1_001);
    assert_eq!(
        Rate::from_kubernetes("1000.5").map(Rate::bits_per_sec),
        Ok(1_001)
    );
    assert_eq!(rate("1.G"), 1_000_000_000);
    // the CLI's extras, which the annotations refuse
    for extra in [" 10M", "10M ", "10mbit", "10mbps", "1e3mbit"] {
        assert!(extra.parse::<Rate>().is_ok(), "{extra:?}");
        assert!(Rate::from_kubernetes(extra).is_err(), "{extra:?}");
    }
    // refused by both: not a quantity and not a tc rate
    for bad in ["1e3M", "10MM", "10 M"] {
        assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        assert!(Rate::from_kubernetes(bad).is_err(), "{bad:?}");
    }
    // values the kubelet accepts only because Value() wraps around an int64:
    // the annotations follow the kubelet, the CLI refuses them
    for (wrapped, kubelet) in [("-4Pi", 6_917_529_028), ("18446744073709552616", 1_000)] {
        assert_eq!(
            Rate::from_kubernetes(wrapped).map(Rate::bits_per_sec),
            Ok(kubelet)
        );
        assert!(wrapped.parse::<Rate>().is_err(), "{wrapped:?}");
    }
    // sizes: tc's 1024-based units beside quantities of bytes
    assert_eq!(size("64kb"), 65_536);
    assert_eq!(size("64k"), 64_000);
    assert!(ByteSize::from_kubernetes("64kb").is_err());
    assert_eq!(
        ByteSize::from_kubernetes("64k").map(ByteSize::bytes),
        Ok(64_000)
    );
}
