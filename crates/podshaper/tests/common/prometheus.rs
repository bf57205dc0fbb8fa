//! A real Prometheus (Debian's `prometheus`, installed by scripts/setup.sh)
//! for one test: its own configuration, storage in a temporary directory and
//! a unique loopback port; stopped and its files removed when the test ends,
//! whether it passed or not. Queried over its HTTP API.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::kube::die_with_parent;
use crate::common::{unique_port, ChildGuard};

/// One scrape target: a job name, its ADDR:PORT, and the target labels the
/// Prometheus Operator would give it (deploy/monitoring/podmonitor.yaml).
pub struct Target<'a> {
    pub job: &'a str,
    pub addr: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
}

pub struct Prometheus {
    pub addr: String,
    // dropped after the process: ChildGuard stops it first
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second, with
    /// `honor_labels` as the PodMonitor sets it, and waits until it answers.
    pub fn start(targets: &[Target<'_>]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("podshaper-test-prometheus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a directory for Prometheus: {e}"));
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for t in targets {
            let _ = write!(
                config,
                "  - job_name: {}\n    honor_labels: true\n    static_configs:\n      - targets: ['{}']\n        labels:\n",
                t.job, t.addr
            );
            for (k, v) in t.labels {
                let _ = writeln!(config, "          {k}: '{v}'");
            }
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", unique_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("prometheus.log");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = match cmd.spawn() {
            Ok(c) => ChildGuard(Some(c)),
            Err(e) => panic!(
                "cannot start prometheus ({e}): scripts/setup.sh installs Debian's `prometheus`"
            ),
        };
        let p = Self {
            addr,
            child: Some(child),
            dir,
        };
        p.wait_until("Prometheus answers", Duration::from_secs(30), || {
            p.try_get("/-/ready", &[])
                .is_some_and(|(status, _)| status == 200)
        });
        p
    }

    /// Its log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits up to `timeout` for `check`; fails with Prometheus' log.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; Prometheus' log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// An instant query's result (`data.result`), evaluated at `time` (Unix
    /// seconds); fails unless the status is success and the result a vector.
    pub fn query(&self, expr: &str, time: f64) -> Vec<Value> {
        let time = format!("{time:.3}");
        let data = self.api("/api/v1/query", &[("query", expr), ("time", &time)]);
        assert_eq!(
            data["resultType"], "vector",
            "{expr}: not an instant vector: {data}"
        );
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The values of `label` on the series `selector` matches.
    pub fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let data = self.api(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", selector)],
        );
        data.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `data` of a successful API answer.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let (status, body) = self
            .try_get(path, params)
            .unwrap_or_else(|| panic!("Prometheus at {} does not answer", self.addr));
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path} {params:?}: not JSON ({e}): {body}"));
        assert!(
            status == 200 && answer["status"] == "success",
            "{path} {params:?}: HTTP {status}: {answer}"
        );
        answer["data"].clone()
    }

    /// `GET path?params` over HTTP/1.0 (so that the answer comes whole, not
    /// chunked): the status and the body, or None if nothing answered.
    fn try_get(&self, path: &str, params: &[(&str, &str)]) -> Option<(u16, String)> {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let mut stream = TcpStream::connect(&self.addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        write!(
            stream,
            "GET {path}?{query} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SIGTERM and wait, before the directory (its storage) goes
        self.child.take();
    }
}
