//! Faults under a running daemon: pins removed by hand, a socket flooded with
//! garbage and with clients that never finish. Run as root.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pins_removed_under_the_daemon_are_put_back() {
    require_root!();
    let root = TestRoot::new("pins");
    let cg = root.make("pod");
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let path = cg.path().display().to_string();
    daemon.ok(&[
        "attach",
        "--cgroup",
        &path,
        "--egress",
        "30M",
        "--ingress",
        "20M",
    ]);
    let links = daemon.bpffs.join("links").join(cg.id().to_string());

    // One link pin, then all of the cgroup's, then a map's pin.
    fs::remove_file(links.join("egress")).expect("remove the egress link pin");
    wait_for("the egress link re-pinned", Duration::from_secs(15), || {
        links.join("egress").exists()
    });
    fs::remove_dir_all(&links).expect("remove the cgroup's link pins");
    wait_for("all links re-pinned", Duration::from_secs(15), || {
        ["egress", "ingress", "sockops"]
            .iter()
            .all(|l| links.join(l).exists())
    });
    let limits_pin = daemon.bpffs.join("maps").join("limits");
    fs::remove_file(&limits_pin).expect("remove the limits map pin");
    wait_for("the limits map re-pinned", Duration::from_secs(15), || {
        limits_pin.exists()
    });
    let log = fs::read_to_string(daemon.log_path()).unwrap_or_default();
    assert!(log.contains("pins were removed under the daemon"), "{log}");

    // The re-pinned map is the live one: a restarted daemon still knows the limits.
    daemon.kill9();
    daemon.restart();
    let list = daemon.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["egress_bps"].as_u64(), Some(30_000_000));
    assert_eq!(list[0]["ingress_bps"].as_u64(), Some(20_000_000));
    // ... and the kernel enforces them: the links point at the cgroup.
    let got = common::measure_with(&common::Limiter::Cgroup(&cg), &common::Flow::tcp(true));
    common::assert_ratio("egress after the pins were repaired", got, 30e6, 0.85, 1.05);
}

#[test]
fn garbage_and_stalled_clients_do_not_stall_the_daemon() {
    require_root!();
    let root = TestRoot::new("flood");
    let cg = root.make("pod");
    let daemon = TestDaemon::start(&root.path, &[]);
    let mut held = Vec::new();
    // 100 clients that connect and never speak, 100 that send half an HTTP/2
    // preface and stop, 200 that send garbage (and go away).
    for i in 0..400u32 {
        let mut s = UnixStream::connect(&daemon.socket).expect("connect");
        match i % 4 {
            0 => {}
            1 => {
                let _ = s.write_all(b"PRI * HTTP/2.0\r\n");
            }
            _ => {
                let garbage: Vec<u8> = (0..4096u32)
                    .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 13) as u8)
                    .collect();
                let _ = s.write_all(&garbage);
                continue;
            }
        }
        held.push(s);
    }
    // Meanwhile real clients are served, promptly.
    let start = Instant::now();
    let path = cg.path().display().to_string();
    daemon.ok(&["attach", "--cgroup", &path, "--egress", "10M"]);
    assert_eq!(daemon.list().len(), 1);
    daemon.ok(&["detach", "--cgroup", &path]);
    let took = start.elapsed();
    eprintln!("attach + list + detach beside 200 stalled clients: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(held);
    // Still up afterwards.
    assert!(daemon.list().is_empty());
}
