//! Attach/detach cycles leave the kernel as they found it. In a module of
//! its own, whose test runs beside no other module's (main.rs), as one test:
//! it counts every BPF program, map and link on the machine, which other
//! tests running beside it would change.

use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};
use podshaper_api::pb;

fn attach_request(cgroup: &str, egress_bits: u64) -> pb::AttachRequest {
    pb::AttachRequest {
        target: common::cgroup_target(cgroup),
        egress: Some(pb::DirectionLimit {
            bits_per_second: egress_bits,
            burst_bytes: 0,
        }),
        ingress: Some(pb::DirectionLimit {
            bits_per_second: 5_000_000,
            burst_bytes: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn attach_detach_cycles_and_concurrent_clients_leak_nothing() {
    require_root!();
    // 300 cycles and 100 clients keep both cores busy
    let _busy = common::busy_turn();
    let root = TestRoot::new("cycles");
    let cgroups: Vec<String> = (0..100)
        .map(|i| root.make(&format!("c{i}")).path().display().to_string())
        .collect();
    let daemon = TestDaemon::start(&root.path, &[]);
    let address: podshaper_api::DaemonAddress = daemon.address().parse().expect("address");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let before = common::settled_kernel_objects();
    let pins_before = std::fs::read_dir(&daemon.bpffs)
        .map(|d| d.count())
        .unwrap_or(0);

    // 300 cycles of attach (with an update every other time) and detach
    runtime.block_on(async {
        let mut client = podshaper_api::connect(&address, None)
            .await
            .expect("connect");
        for i in 0..300usize {
            let cg = &cgroups[i % 3];
            client
                .attach(attach_request(cg, 10_000_000 + i as u64 * 1_000_000))
                .await
                .unwrap_or_else(|e| panic!("attach {i}: {e}"));
            if i % 2 == 0 {
                client
                    .attach(attach_request(cg, 7_000_000))
                    .await
                    .unwrap_or_else(|e| panic!("update {i}: {e}"));
            }
            client
                .detach(pb::DetachRequest {
                    target: common::cgroup_target(cg),
                })
                .await
                .unwrap_or_else(|e| panic!("detach {i}: {e}"));
        }
    });
    common::assert_no_bpf_leak(before, "300 cycles");
    assert_eq!(
        std::fs::read_dir(daemon.bpffs.join("links"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    assert_eq!(
        std::fs::read_dir(&daemon.bpffs)
            .map(|d| d.count())
            .unwrap_or(0),
        pins_before
    );

    // 100 clients at once, each on its own connection, attaching and detaching
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for cg in cgroups.clone() {
            let address = address.clone();
            tasks.spawn(async move {
                let mut client = podshaper_api::connect(&address, None)
                    .await
                    .expect("connect");
                for _ in 0..2 {
                    client.attach(attach_request(&cg, 10_000_000)).await?;
                    client
                        .detach(pb::DetachRequest {
                            target: common::cgroup_target(&cg),
                        })
                        .await?;
                }
                Ok::<_, tonic::Status>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("client task")
                .unwrap_or_else(|e| panic!("a concurrent client failed: {e}"));
        }
    });
    assert!(daemon.list().is_empty());
    common::assert_no_bpf_leak(before, "concurrent clients");
}
