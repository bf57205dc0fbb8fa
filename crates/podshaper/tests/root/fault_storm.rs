//! kill -9 of the daemon in the middle of a storm of attaches, updates and
//! detaches: after each restart no cgroup is half attached, and once all is
//! detached the kernel holds exactly what it held before. In a module of
//! its own, whose test runs beside no other module's (main.rs), as one test:
//! it counts every BPF program, map and link on the machine, which tests
//! running beside it would change.

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};
use podshaper_api::pb;

/// Attaches, updates and detaches random cgroups from `clients` connections
/// until `stop`; errors (the daemon is being killed) are counted, not fatal.
fn storm(
    runtime: &tokio::runtime::Runtime,
    address: &podshaper_api::DaemonAddress,
    cgroups: &[String],
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4u64)
        .map(|client_no| {
            let (address, cgroups, stop, done) = (
                address.clone(),
                cgroups.to_vec(),
                stop.clone(),
                done.clone(),
            );
            runtime.spawn(async move {
                let Ok(mut client) = podshaper_api::connect(&address, None).await else {
                    return;
                };
                let mut x = client_no * 7919 + 1;
                while !stop.load(Ordering::Relaxed) {
                    // a small LCG: no dependency for "random"
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let cg = &cgroups[(x >> 33) as usize % cgroups.len()];
                    let ok = if x % 3 == 0 {
                        client
                            .detach(pb::DetachRequest {
                                target: common::cgroup_target(cg),
                            })
                            .await
                            .is_ok()
                    } else {
                        let limit = |b| {
                            Some(pb::DirectionLimit {
                                bits_per_second: b,
                                burst_bytes: 0,
                            })
                        };
                        client
                            .attach(pb::AttachRequest {
                                target: common::cgroup_target(cg),
                                egress: limit(1_000_000 + (x % 1000) * 1000),
                                ingress: limit(2_000_000),
                                ..Default::default()
                            })
                            .await
                            .is_ok()
                    };
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else if podshaper_api::connect(&address, None).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

/// Every pinned attachment is whole (three links) and limited, and the daemon
/// lists exactly those.
fn assert_consistent(daemon: &TestDaemon) {
    let links = daemon.bpffs.join("links");
    let mut pinned = Vec::new();
    for entry in fs::read_dir(&links).expect("links dir").flatten() {
        let names: Vec<String> = fs::read_dir(entry.path())
            .expect("link dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            3,
            "half-attached {}: {names:?}",
            entry.path().display()
        );
        pinned.push(
            entry
                .file_name()
                .to_string_lossy()
                .parse::<u64>()
                .expect("id"),
        );
    }
    let mut listed: Vec<u64> = daemon
        .list()
        .iter()
        .map(|c| {
            assert!(c["egress_bps"].as_u64().is_some(), "no egress limit: {c}");
            assert_eq!(c["ingress_bps"].as_u64(), Some(2_000_000), "{c}");
            c["cgroup_id"].as_u64().expect("cgroup_id")
        })
        .collect();
    pinned.sort();
    listed.sort();
    assert_eq!(pinned, listed, "pins and the daemon's list disagree");
}

#[test]
fn daemon_killed_during_an_attach_storm_leaves_nothing_half_made_or_leaked() {
    require_root!();
    // the storm and the restarts keep both cores busy
    let _busy = common::busy_turn();
    let before = common::settled_kernel_objects();
    let root = TestRoot::new("storm");
    let cgroups: Vec<String> = (0..40)
        .map(|i| root.make(&format!("c{i}")).path().display().to_string())
        .collect();
    let mut daemon = TestDaemon::start(&root.path, &[]);
    let address: podshaper_api::DaemonAddress = daemon.address().parse().expect("address");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let done = Arc::new(AtomicUsize::new(0));
    for round in 0..5u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = storm(&runtime, &address, &cgroups, stop.clone(), done.clone());
        // kill at a different point of the storm each round
        std::thread::sleep(Duration::from_millis(150 + round * 170));
        daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = runtime.block_on(t);
        }
        daemon.restart();
        assert_consistent(&daemon);
        eprintln!(
            "round {round}: {} requests done so far, {} cgroups limited after the restart",
            done.load(Ordering::Relaxed),
            daemon.list().len()
        );
    }
    assert!(done.load(Ordering::Relaxed) > 50, "the storm hardly ran");

    // Remove everything; the kernel is back where it was.
    for c in daemon.list() {
        let path = c["cgroup"].as_str().expect("cgroup").to_string();
        daemon.ok(&["detach", "--cgroup", &path]);
    }
    drop(daemon);
    drop(root);
    common::assert_no_bpf_leak(before, "after removing everything");
}
