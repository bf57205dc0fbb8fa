//! Pods by UID: both cgroup drivers and every QoS class, and limits handed
//! over before the kubelet makes a pod's cgroup.

use std::thread;
use std::time::Duration;

use super::stderr_of;
use crate::common::daemon::{TestDaemon, TestRoot};

#[test]
fn pod_uids_resolve_for_both_cgroup_drivers_and_every_qos_class() {
    require_root!();
    let root = TestRoot::new("pods");
    let daemon = TestDaemon::start(&root.path, &[]);
    let uids = [
        "11111111-2222-4333-8444-555555555501",
        "11111111-2222-4333-8444-555555555502",
        "11111111-2222-4333-8444-555555555503",
        "11111111-2222-4333-8444-555555555504",
    ];
    let layouts = [
        format!(
            "kubepods.slice/kubepods-pod{}.slice",
            uids[0].replace('-', "_")
        ),
        format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uids[1].replace('-', "_")
        ),
        format!("kubepods/besteffort/pod{}", uids[2]),
        format!("kubepods/pod{}", uids[3]),
    ];
    for (uid, layout) in uids.iter().zip(&layouts) {
        let cgroup = root.make(layout);
        daemon.ok(&["attach", "--pod-uid", uid, "--egress", "20M"]);
        let status: serde_json::Value =
            serde_json::from_str(&daemon.ok(&["status", "--pod-uid", uid, "-o", "json"]))
                .expect("json");
        assert_eq!(status[0]["pod_uid"], *uid);
        assert_eq!(
            status[0]["cgroup"],
            cgroup.path().display().to_string().as_str()
        );
        assert_eq!(status[0]["egress_bps"], 20_000_000);
        assert_eq!(status[0]["ingress_bps"], serde_json::Value::Null);
        daemon.ok(&["detach", "--pod-uid", uid]);
    }
    let out = daemon.cli(&[
        "attach",
        "--pod-uid",
        "11111111-2222-4333-8444-555555555599",
        "--egress",
        "1M",
    ]);
    assert!(
        stderr_of(&out).contains("no cgroup for pod"),
        "{}",
        stderr_of(&out)
    );
}

/// Limits handed over before the kubelet makes a pod's cgroup are held by
/// pod UID and attached the moment the cgroup appears, before any process
/// can be put in it; a detach before then drops them. runc makes a pod's
/// cgroup2 directories in one go (`kubepods/besteffort/pod<uid>/<ctr>`),
/// so directories that did not exist when the daemon started are watched
/// as they come.
#[test]
fn limits_for_a_pod_whose_cgroup_is_still_to_come_hold_from_its_creation() {
    require_root!();
    let root = TestRoot::new("waiting");
    let daemon = TestDaemon::start(&root.path, &[]);
    let uid = "21111111-2222-4333-8444-555555555501";
    let out = daemon.ok(&[
        "attach",
        "--pod-uid",
        uid,
        "--egress",
        "10M",
        "--ingress",
        "5M",
        "--wait-for-cgroup",
    ]);
    assert!(out.contains("held until the cgroup of pod"), "{out}");
    let listed = daemon.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["waiting"], true);
    assert_eq!(listed[0]["pod_uid"], uid);
    assert_eq!(listed[0]["egress_bps"], 10_000_000);
    assert_eq!(listed[0]["cgroup"], "");
    let status = daemon.ok(&["status", "--pod-uid", uid]);
    assert!(
        status.contains("(waiting for the pod's cgroup)"),
        "{status}"
    );

    // a pod cgroup with its first container's, as runc makes them
    let made = std::time::Instant::now();
    let cgroup = root.make(&format!("kubepods/besteffort/pod{uid}/ctr"));
    let pod = cgroup.path().parent().expect("the pod's cgroup");
    let pod_id = std::fs::metadata(pod)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("pod cgroup");
    let links = daemon.bpffs.join("links").join(pod_id.to_string());
    while !links.exists() {
        assert!(
            made.elapsed() < Duration::from_secs(2),
            "the pod's cgroup was not attached within 2 s of its creation; daemon log:\n{}",
            std::fs::read_to_string(daemon.log_path()).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(1));
    }
    let attached_after = made.elapsed();
    let listed = daemon.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["waiting"], false);
    assert_eq!(listed[0]["cgroup"], pod.display().to_string().as_str());
    assert_eq!(listed[0]["egress_bps"], 10_000_000);
    assert_eq!(listed[0]["ingress_bps"], 5_000_000);
    eprintln!("attached {attached_after:?} after the cgroup was made");

    // held, then detached before its cgroup came: nothing is attached
    let other = "21111111-2222-4333-8444-555555555502";
    daemon.ok(&[
        "attach",
        "--pod-uid",
        other,
        "--egress",
        "1M",
        "--wait-for-cgroup",
    ]);
    daemon.ok(&["detach", "--pod-uid", other]);
    root.make(&format!("kubepods/burstable/pod{other}"));
    thread::sleep(Duration::from_millis(1500));
    let listed = daemon.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["pod_uid"], uid);

    // without --wait-for-cgroup a missing cgroup is still an error
    let out = daemon.cli(&[
        "attach",
        "--pod-uid",
        "21111111-2222-4333-8444-555555555503",
        "--egress",
        "1M",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("no cgroup for pod"),
        "{}",
        stderr_of(&out)
    );
}
