//! `podshaper bench` end to end, on a small matrix. In its own test binary:
//! it measures rates, which other tests running beside it would disturb.

mod common;

#[test]
fn bench_compares_podshaper_with_tbf_and_no_limit() {
    let dir = std::env::temp_dir().join(format!("podshaper-test-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let plot = dir.join("change.png");
    let mut command = common::podshaper();
    command
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
            "--plot",
        ])
        .arg(&plot)
        .arg("--json");
    let out = common::output_in_turn(&mut command);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let plotted = std::fs::read(&plot).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(plotted.starts_with(b"\x89PNG"), "no PNG written");
    let rows = report["cells"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 6, "2 traffics x 3 mechanisms: {rows:?}");
    // the extra columns: latency beside TCP, the kernel's BPF statistics
    let tcp = |m: &str| {
        rows.iter()
            .find(|r| r["mechanism"] == m && r["traffic"] == "tcp x1")
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        tcp("podshaper")["rtt_p99_ms"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{rows:?}"
    );
    assert!(
        tcp("tbf")["rtt_p99_ms"].as_f64().is_some_and(|v| v > 0.0),
        "{rows:?}"
    );
    // the shaper's run time, and beside it that of a program that does
    // nothing on the same packets (which cannot cost more than the shaper)
    let shaper_ns = tcp("podshaper")["bpf_ns_per_packet"].as_f64();
    let empty_ns = tcp("podshaper")["bpf_empty_ns_per_packet"].as_f64();
    assert!(
        shaper_ns
            .zip(empty_ns)
            .is_some_and(|(s, e)| e > 0.0 && s > e),
        "{rows:?}"
    );
    // the sockops program ran on the sender's ACKs, and only for podshaper
    let sockops = |m: &str| tcp(m)["bpf_sockops_runs"].as_u64();
    assert!(
        sockops("podshaper").is_some_and(|runs| runs > 0)
            && tcp("podshaper")["bpf_sockops_ns_per_run"]
                .as_f64()
                .is_some_and(|ns| ns > 0.0),
        "{rows:?}"
    );
    assert_eq!(sockops("tbf"), None, "{rows:?}");
    // limit halved mid-flow: podshaper and tbf (none has no limit to change)
    let changes = report["limit_changes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(changes.len(), 2, "{changes:?}");
    let podshaper_change = changes
        .iter()
        .find(|c| c["mechanism"] == "podshaper")
        .and_then(|c| c["change_to_effect_ms"].as_f64());
    assert!(
        podshaper_change.is_some_and(|ms| ms < 1000.0),
        "podshaper's new limit did not take hold: {changes:?}"
    );
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
