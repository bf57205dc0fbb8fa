//! What the daemon serves beside its API: metrics and health over HTTP, and
//! the API over mutual TLS.

use super::{stderr_of, Cleanup};
use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::unique_port;

#[test]
fn metrics_and_health_are_served() {
    require_root!();
    let root = TestRoot::new("metrics");
    let port = unique_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = TestDaemon::start(&root.path, &["--metrics-addr", &addr]);
    let app = root.make("app").path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &app, "--egress", "30M"]);
    let body = http_get(&addr, "/metrics");
    assert!(
        body.contains(&format!(
            "podshaper_limit_bits_per_second{{cgroup=\"{app}\",direction=\"egress\"}} 30000000"
        )),
        "{body}"
    );
    for name in [
        "podshaper_bytes_total",
        "podshaper_packets_total",
        "podshaper_dropped_packets_total",
        "podshaper_marked_packets_total",
    ] {
        assert!(
            body.contains(&format!("{name}{{cgroup=\"{app}\",direction=\"ingress\"}}")),
            "{name} missing:\n{body}"
        );
    }
    assert!(http_get(&addr, "/healthz").contains("ok"));
    assert!(http_get(&addr, "/readyz").contains("ready"));
}

fn http_get(addr: &str, path: &str) -> String {
    let (status, answer) = common::http_get(addr, path);
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

#[test]
fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    require_root!();
    let root = TestRoot::new("tls");
    let dir = std::env::temp_dir().join(format!("podshaper-test-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tls dir");
    let _cleanup = Cleanup(dir.clone());
    let certs = common::tls::write_test_pki(&dir);
    let port = unique_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = TestDaemon::start(
        &root.path,
        &[
            "--listen",
            &listen,
            "--tls-cert",
            &certs.server_cert,
            "--tls-key",
            &certs.server_key,
            "--client-ca",
            &certs.ca,
        ],
    );
    let app = root.make("app").path().display().to_string();
    let https = format!("https://{listen}");
    let with = |cert: &str, key: &str, args: &[&str]| {
        common::podshaper()
            .args(args)
            .args([
                "--daemon",
                &https,
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--tls-ca",
                &certs.ca,
            ])
            .env_remove("PODSHAPER_TLS_CERT")
            .output()
            .expect("run")
    };
    let out = with(
        &certs.client_cert,
        &certs.client_key,
        &["attach", "--cgroup", &app, "--egress", "10M"],
    );
    assert!(
        out.status.success(),
        "a client signed by the CA was refused: {}",
        stderr_of(&out)
    );
    let out = with(
        &certs.client_cert,
        &certs.client_key,
        &["list", "-o", "json"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&app));

    let out = with(&certs.rogue_cert, &certs.rogue_key, &["list"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a client from another CA was admitted"
    );
    let out = common::podshaper()
        .args(["list", "--daemon", &https])
        .env_remove("PODSHAPER_TLS_CERT")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a client without a certificate was admitted"
    );
    assert!(
        stderr_of(&out).contains("needs a client certificate"),
        "{}",
        stderr_of(&out)
    );
    // and a TLS client that does not present one is refused by the server
    let refused = std::process::Command::new("curl")
        .args([
            "-sk",
            "--http2",
            &format!("https://{listen}/"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .output();
    if let Ok(o) = refused {
        assert_ne!(String::from_utf8_lossy(&o.stdout), "200");
    }
    assert_eq!(daemon.list().len(), 1);
}
