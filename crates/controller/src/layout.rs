//! Where the kubelet makes a pod's cgroup, below its cgroup root (the
//! cgroup2 mount by default), for the pod's QoS class and each cgroup
//! driver: the paths the CgroupNotFound warning names. The daemon looks in
//! the same places (`podshaper_shaper::confine::pod_cgroup_candidates`; a
//! test keeps the two in step).

/// The pod's cgroup with the cgroupfs driver, then with the systemd
/// driver; for a pod without a known QoS class, those of every class.
pub fn expected_cgroups(uid: &str, qos_class: Option<&str>) -> Vec<String> {
    let classes: &[Option<&str>] = match qos_class {
        Some("Guaranteed") => &[None],
        Some("Burstable") => &[Some("burstable")],
        Some("BestEffort") => &[Some("besteffort")],
        _ => &[None, Some("burstable"), Some("besteffort")],
    };
    let underscored = uid.replace('-', "_");
    let mut out = Vec::with_capacity(classes.len() * 2);
    for qos in classes {
        match qos {
            None => {
                out.push(format!("kubepods/pod{uid}"));
                out.push(format!("kubepods.slice/kubepods-pod{underscored}.slice"));
            }
            Some(q) => {
                out.push(format!("kubepods/{q}/pod{uid}"));
                out.push(format!(
                    "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{underscored}.slice"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2a7e-1b2c-4d5e-8f90-0123456789ab";

    #[test]
    fn a_best_effort_pods_cgroup_for_each_driver() {
        assert_eq!(
            expected_cgroups(UID, Some("BestEffort")),
            [
                format!("kubepods/besteffort/pod{UID}"),
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f1c2a7e_1b2c_4d5e_8f90_0123456789ab.slice".to_string(),
            ]
        );
        assert_eq!(
            expected_cgroups(UID, Some("Guaranteed"))[0],
            format!("kubepods/pod{UID}")
        );
    }

    #[test]
    fn the_daemon_looks_in_the_same_places() {
        let daemon: Vec<String> = podshaper_shaper::confine::pod_cgroup_candidates(UID)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut ours = expected_cgroups(UID, None);
        let mut theirs = daemon.clone();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
        for qos in ["Guaranteed", "Burstable", "BestEffort"] {
            for p in expected_cgroups(UID, Some(qos)) {
                assert!(daemon.contains(&p), "{qos}: {p} not where the daemon looks");
            }
        }
    }
}
