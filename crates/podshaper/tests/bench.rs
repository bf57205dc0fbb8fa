//! `podshaper bench` end to end, on a small matrix. In its own test binary:
//! it measures rates, which other tests running beside it would disturb.

mod common;

#[test]
fn bench_compares_podshaper_with_tbf_and_no_limit() {
    let out = common::podshaper()
        .args([
            "bench",
            "--rates",
            "50M",
            "--flows",
            "1",
            "--directions",
            "egress",
        ])
        .args([
            "--mechanisms",
            "podshaper,tbf,none",
            "--udp",
            "true",
            "--seconds",
            "4",
            "--json",
        ])
        .output()
        .expect("run the bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows.len(), 6, "2 traffics x 3 mechanisms: {rows:?}");
    let ratio = |mechanism: &str, traffic: &str| -> f64 {
        rows.iter()
            .find(|r| r["mechanism"] == mechanism && r["traffic"] == traffic)
            .and_then(|r| r["achieved_ratio"].as_f64())
            .unwrap_or_else(|| panic!("no {mechanism} {traffic} row in {rows:?}"))
    };
    for mechanism in ["podshaper", "tbf"] {
        for traffic in ["tcp x1", "udp 4x"] {
            let r = ratio(mechanism, traffic);
            assert!((0.85..=1.05).contains(&r), "{mechanism} {traffic}: {r}");
        }
    }
    assert!(
        ratio("none", "tcp x1") > 5.0,
        "the unlimited baseline was limited"
    );
    let stale: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("ps-bench-"))
                .count()
        })
        .into_iter()
        .collect();
    assert_eq!(
        stale.iter().sum::<usize>(),
        0,
        "the bench left network namespaces"
    );
}
