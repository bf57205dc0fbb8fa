//! BandwidthPolicy: namespace defaults for the pods a selector picks, with
//! the CRD from deploy/ on the real API server. A policy limits pods live,
//! a pod's annotation wins over it, conflicting policies give the lowest
//! value and say so in their status, a bad value is named in the status and
//! changes nothing, and each node writes its own entry of the status (in
//! cluster mode the acting replica writes them all); a controller started
//! before the CRD takes policies once it is installed.

use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{unique_ns, wait_for, SimNode, CONVERGE, EGRESS};
use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::kube::ApiServer;
use crate::common::{podshaper, ChildGuard};

const CRD: &str = "crd/bandwidthpolicies.podshaper.io";

/// The CRD as deployed, installed (idempotently) and established.
fn install_crd(api: &ApiServer) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/bandwidthpolicy-crd.yaml");
    api.kubectl_ok(&["apply", "-f", &path.display().to_string()]);
    api.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        CRD,
    ]);
}

/// Creates or replaces a policy (`spec` lines in YAML, indented by four).
fn apply_policy(api: &ApiServer, ns: &str, name: &str, spec: &str) {
    let manifest = format!(
        "apiVersion: podshaper.io/v1alpha1\nkind: BandwidthPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    );
    api.kubectl_stdin(&["apply", "-f", "-"], &manifest);
}

fn policy(api: &ApiServer, ns: &str, name: &str) -> Value {
    let out = api.kubectl_ok(&[
        "get",
        "bandwidthpolicy",
        name,
        "-n",
        ns,
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("policy {ns}/{name}: {e}: {out}"))
}

/// The policy's status entry for `node`, if any.
fn entry(api: &ApiServer, ns: &str, name: &str, node: &str) -> Option<Value> {
    policy(api, ns, name)["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
        .cloned()
}

/// The field managers of a policy.
fn managers(api: &ApiServer, ns: &str, name: &str) -> Vec<String> {
    policy(api, ns, name)["metadata"]["managedFields"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|f| f["manager"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the controller's ServiceAccount may `verb` `resource` (with
/// `extra` arguments such as a subresource) in every namespace.
fn controller_can(api: &ApiServer, verb: &str, resource: &str, extra: &[&str]) -> bool {
    let sa = format!(
        "system:serviceaccount:{}:{}",
        common::kube::CONTROLLER_SA_NAMESPACE,
        common::kube::CONTROLLER_SA
    );
    let mut args = vec!["auth", "can-i", verb, resource, "--as", &sa, "-A"];
    args.extend_from_slice(extra);
    let out = api.kubectl(&args);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn the_controller_may_read_policies_and_write_only_their_status() {
    require_root!();
    let api = ApiServer::start();
    install_crd(&api);
    let policies = "bandwidthpolicies.podshaper.io";
    for verb in ["get", "list", "watch"] {
        assert!(controller_can(&api, verb, policies, &[]), "{verb}");
    }
    assert!(controller_can(
        &api,
        "patch",
        policies,
        &["--subresource=status"]
    ));
    for verb in ["create", "update", "patch", "delete"] {
        assert!(!controller_can(&api, verb, policies, &[]), "{verb}");
    }
    assert!(!controller_can(
        &api,
        "update",
        policies,
        &["--subresource=status"]
    ));
}

#[test]
fn a_policy_limits_pods_live_and_a_pods_annotation_wins() {
    require_root!();
    let api = ApiServer::start();
    install_crd(&api);
    let ns = unique_ns("policy");
    api.create_namespace(&ns);
    let mut n1 = SimNode::start(&api, "node-1");
    let web = [("app", "web")];
    let a = api.create_labeled_pod(&ns, "a", "node-1", &web, &[]);
    let b = api.create_labeled_pod(&ns, "b", "node-1", &web, &[(EGRESS, "50M")]);
    let db = api.create_labeled_pod(&ns, "db", "node-1", &[("app", "db")], &[]);
    for uid in [&a, &b, &db] {
        n1.make_pod_cgroup(uid);
    }
    let spec = |egress: &str| {
        format!(
            "  podSelector:\n    matchLabels: {{app: web}}\n  egressBandwidth: {egress}\n  ingressBandwidth: 20M\n  egressBurst: 256Ki\n"
        )
    };
    apply_policy(&api, &ns, "web", &spec("10M"));
    wait_for("a limited by the policy", CONVERGE, Some(&n1), || {
        n1.limits(&a) == Some((Some(10_000_000), Some(20_000_000)))
    });
    // the annotation wins for egress; ingress still comes from the policy
    wait_for(
        "b: annotation egress, policy ingress",
        CONVERGE,
        Some(&n1),
        || n1.limits(&b) == Some((Some(50_000_000), Some(20_000_000))),
    );
    // the policy's burst too
    let listed = n1
        .daemon
        .list()
        .into_iter()
        .find(|c| c["pod_uid"].as_str() == Some(a.as_str()))
        .expect("a listed");
    assert_eq!(listed["burst_bytes"].as_u64(), Some(256 * 1024), "{listed}");
    assert!(n1.limits(&db).is_none(), "db is not selected");
    wait_for(
        "BandwidthLimited naming the policy",
        CONVERGE,
        Some(&n1),
        || {
            api.events(&ns, "a").iter().any(|(t, r, n)| {
                t == "Normal" && r == "BandwidthLimited" && n.contains("BandwidthPolicy web")
            })
        },
    );
    // the status lists the governed pods of the node
    wait_for("the status lists a and b", CONVERGE, Some(&n1), || {
        entry(&api, &ns, "web", "node-1").is_some_and(|e| strings(&e["pods"]) == ["a", "b"])
    });

    // a restarted controller waits for its policy cache: nothing is lifted
    n1.kill9_controller();
    n1.start_controller();
    thread::sleep(Duration::from_secs(4));
    assert_eq!(n1.limits(&a), Some((Some(10_000_000), Some(20_000_000))));
    assert!(
        !n1.controller_log().contains("limits removed"),
        "{}",
        n1.controller_log()
    );

    // changed live
    apply_policy(&api, &ns, "web", &spec("30M"));
    wait_for("a follows the policy to 30M", CONVERGE, Some(&n1), || {
        n1.limits(&a) == Some((Some(30_000_000), Some(20_000_000)))
    });
    assert_eq!(n1.limits(&b), Some((Some(50_000_000), Some(20_000_000))));

    // removed: unlimited, as removing an annotation is; b keeps its own
    api.kubectl_ok(&["delete", "bandwidthpolicy", "web", "-n", &ns]);
    wait_for(
        "a unlimited once the policy is gone",
        CONVERGE,
        Some(&n1),
        || n1.limits(&a).is_none(),
    );
    wait_for("b keeps its annotation", CONVERGE, Some(&n1), || {
        n1.limits(&b) == Some((Some(50_000_000), None))
    });
}

#[test]
fn conflicting_policies_give_the_lowest_and_both_statuses_say_so() {
    require_root!();
    let api = ApiServer::start();
    install_crd(&api);
    let ns = unique_ns("policy-conflict");
    api.create_namespace(&ns);
    let n1 = SimNode::start(&api, "node-1");
    let p = api.create_labeled_pod(&ns, "p", "node-1", &[("tier", "batch")], &[]);
    n1.make_pod_cgroup(&p);
    apply_policy(
        &api,
        &ns,
        "loose",
        "  podSelector: {}\n  egressBandwidth: 50M\n",
    );
    apply_policy(
        &api,
        &ns,
        "strict",
        "  podSelector:\n    matchLabels: {tier: batch}\n  egressBandwidth: 5M\n",
    );
    wait_for("the lower ceiling in force", CONVERGE, Some(&n1), || {
        n1.limits(&p) == Some((Some(5_000_000), None))
    });
    let expected = "egressBandwidth: loose asks 50M, strict asks 5M; the lowest, 5M, is in force";
    for name in ["loose", "strict"] {
        wait_for(
            &format!("{name}'s status names the conflict"),
            CONVERGE,
            Some(&n1),
            || {
                entry(&api, &ns, name, "node-1")
                    .is_some_and(|e| strings(&e["conflicts"]) == [expected])
            },
        );
    }
    // the conflict ends with the stricter policy
    api.kubectl_ok(&["delete", "bandwidthpolicy", "strict", "-n", &ns]);
    wait_for("the remaining policy in force", CONVERGE, Some(&n1), || {
        n1.limits(&p) == Some((Some(50_000_000), None))
    });
    wait_for("no conflict left", CONVERGE, Some(&n1), || {
        entry(&api, &ns, "loose", "node-1").is_some_and(|e| strings(&e["conflicts"]).is_empty())
    });
}

#[test]
fn a_bad_policy_value_is_named_in_its_status_and_changes_nothing() {
    require_root!();
    let api = ApiServer::start();
    install_crd(&api);
    let ns = unique_ns("policy-bad");
    api.create_namespace(&ns);
    let n1 = SimNode::start(&api, "node-1");
    let p = api.create_pod(&ns, "p", "node-1", &[]);
    n1.make_pod_cgroup(&p);
    apply_policy(
        &api,
        &ns,
        "all",
        "  podSelector: {}\n  egressBandwidth: 10M\n",
    );
    wait_for("p limited", CONVERGE, Some(&n1), || {
        n1.limits(&p) == Some((Some(10_000_000), None))
    });
    for bad in ["fast", "2P", "500"] {
        apply_policy(
            &api,
            &ns,
            "all",
            &format!("  podSelector: {{}}\n  egressBandwidth: \"{bad}\"\n"),
        );
        wait_for("the status names the value", CONVERGE, Some(&n1), || {
            entry(&api, &ns, "all", "node-1").is_some_and(|e| {
                strings(&e["errors"]).iter().any(|m| {
                    m.contains(&format!("egressBandwidth={bad:?}"))
                        && m.contains("1k")
                        && m.contains("1P")
                })
            })
        });
        // a few passes (resync 3 s): what was in force stays
        thread::sleep(Duration::from_secs(4));
        assert_eq!(n1.limits(&p), Some((Some(10_000_000), None)), "{bad}");
    }
    apply_policy(
        &api,
        &ns,
        "all",
        "  podSelector: {}\n  egressBandwidth: 20M\n",
    );
    wait_for("a good value again", CONVERGE, Some(&n1), || {
        n1.limits(&p) == Some((Some(20_000_000), None))
    });
    wait_for("the error is gone", CONVERGE, Some(&n1), || {
        entry(&api, &ns, "all", "node-1").is_some_and(|e| strings(&e["errors"]).is_empty())
    });
}

#[test]
fn each_node_writes_its_own_entry_of_the_status() {
    require_root!();
    let api = ApiServer::start();
    install_crd(&api);
    let ns = unique_ns("policy-nodes");
    api.create_namespace(&ns);
    let n1 = SimNode::start(&api, "node-1");
    let n2 = SimNode::start(&api, "node-2");
    let a = api.create_pod(&ns, "a", "node-1", &[]);
    let b = api.create_pod(&ns, "b", "node-2", &[]);
    let c = api.create_pod(&ns, "c", "node-2", &[]);
    n1.make_pod_cgroup(&a);
    n2.make_pod_cgroup(&b);
    n2.make_pod_cgroup(&c);
    apply_policy(
        &api,
        &ns,
        "all",
        "  podSelector: {}\n  ingressBandwidth: 8M\n",
    );
    wait_for("every pod limited", CONVERGE, Some(&n2), || {
        n1.limits(&a) == Some((None, Some(8_000_000)))
            && n2.limits(&b) == Some((None, Some(8_000_000)))
            && n2.limits(&c) == Some((None, Some(8_000_000)))
    });
    wait_for("one entry per node", CONVERGE, Some(&n2), || {
        entry(&api, &ns, "all", "node-1").is_some_and(|e| strings(&e["pods"]) == ["a"])
            && entry(&api, &ns, "all", "node-2").is_some_and(|e| strings(&e["pods"]) == ["b", "c"])
    });
    // each entry has its node's field manager
    let managers = managers(&api, &ns, "all");
    for node in ["node-1", "node-2"] {
        let manager = format!("podshaper-controller/{node}");
        assert!(managers.contains(&manager), "{manager} not in {managers:?}");
    }
    // node-2's pods go: its entry goes, node-1's stays
    api.delete_pod(&ns, "b");
    api.delete_pod(&ns, "c");
    wait_for("node-2's entry removed", CONVERGE, Some(&n2), || {
        entry(&api, &ns, "all", "node-2").is_none()
    });
    assert!(
        entry(&api, &ns, "all", "node-1").is_some_and(|e| strings(&e["pods"]) == ["a"]),
        "{}",
        policy(&api, &ns, "all")["status"]
    );
}

#[test]
fn policies_apply_once_the_crd_is_installed_after_the_controller() {
    require_root!();
    let api = ApiServer::start();
    let ns = unique_ns("policy-late");
    api.create_namespace(&ns);
    let n1 = SimNode::start(&api, "node-1");
    // without the CRD, annotations still become limits
    let annotated = api.create_pod(&ns, "annotated", "node-1", &[(EGRESS, "10M")]);
    let plain = api.create_pod(&ns, "plain", "node-1", &[]);
    n1.make_pod_cgroup(&annotated);
    n1.make_pod_cgroup(&plain);
    wait_for("the annotated pod limited", CONVERGE, Some(&n1), || {
        n1.limits(&annotated) == Some((Some(10_000_000), None))
    });
    install_crd(&api);
    apply_policy(
        &api,
        &ns,
        "all",
        "  podSelector: {}\n  egressBandwidth: 3M\n",
    );
    // the watch's backoff retries the list; a minute covers its longest wait
    wait_for(
        "the policy in force once the CRD exists",
        Duration::from_secs(60),
        Some(&n1),
        || n1.limits(&plain) == Some((Some(3_000_000), None)),
    );
    assert_eq!(n1.limits(&annotated), Some((Some(10_000_000), None)));
    assert!(
        n1.controller_log()
            .matches("BandwidthPolicy CRD is not installed")
            .count()
            == 1,
        "{}",
        n1.controller_log()
    );
}

/// Cluster mode: the acting replica writes every node's entry, each under
/// that node's field manager, as the node controllers would.
#[test]
fn in_cluster_mode_the_acting_replica_writes_each_nodes_entry() {
    require_root!();
    let api = ApiServer::start();
    install_crd(&api);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    api.kubectl_ok(&[
        "apply",
        "-f",
        &deploy.join("cluster-mode-rbac.yaml").display().to_string(),
    ]);
    let ns = unique_ns("policy-cluster");
    api.create_namespace(&ns);
    let pki_dir = api.dir.join("daemon-pki");
    std::fs::create_dir_all(&pki_dir).expect("mkdir pki");
    let pki = common::tls::write_test_pki_for(&pki_dir, &["127.0.0.2", "127.0.0.3"]);
    let port = common::unique_port().to_string();
    let mut nodes = Vec::new();
    for (name, ip) in [("node-1", "127.0.0.2"), ("node-2", "127.0.0.3")] {
        api.create_node(name, ip);
        let root = TestRoot::new(name);
        let listen = format!("{ip}:{port}");
        let daemon = TestDaemon::start(
            &root.path,
            &[
                "--listen",
                &listen,
                "--tls-cert",
                &pki.server_cert,
                "--tls-key",
                &pki.server_key,
                "--client-ca",
                &pki.ca,
            ],
        );
        nodes.push((root, daemon));
    }
    let log = api.dir.join("controller-cluster.log");
    let mut cmd = podshaper();
    cmd.args(["controller", "--daemon-port", &port, "--resync", "3"])
        .args(["--tls-cert", &pki.client_cert, "--tls-key", &pki.client_key])
        .args(["--tls-ca", &pki.ca, "--identity", "replica-1"])
        .args(["--lease-namespace", common::kube::CONTROLLER_SA_NAMESPACE])
        .arg("--kubeconfig")
        .arg(&api.controller_kubeconfig)
        .env("PODSHAPER_LOG", "info,podshaper_controller=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let _controller = ChildGuard::spawn(&mut cmd);
    let a = api.create_pod(&ns, "a", "node-1", &[]);
    let b = api.create_pod(&ns, "b", "node-2", &[]);
    nodes[0].0.make(&SimNode::pod_cgroup_path(&a));
    nodes[1].0.make(&SimNode::pod_cgroup_path(&b));
    apply_policy(
        &api,
        &ns,
        "all",
        "  podSelector: {}\n  egressBandwidth: 7M\n",
    );
    let limited = |daemon: &TestDaemon, uid: &str| {
        daemon
            .list()
            .into_iter()
            .any(|c| c["pod_uid"].as_str() == Some(uid) && c["egress_bps"] == 7_000_000)
    };
    let deadline = Instant::now() + CONVERGE;
    while !(limited(&nodes[0].1, &a)
        && limited(&nodes[1].1, &b)
        && entry(&api, &ns, "all", "node-1").is_some_and(|e| strings(&e["pods"]) == ["a"])
        && entry(&api, &ns, "all", "node-2").is_some_and(|e| strings(&e["pods"]) == ["b"]))
    {
        assert!(
            Instant::now() < deadline,
            "not limited, or no entries: {}\n{}",
            policy(&api, &ns, "all")["status"],
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let managers = managers(&api, &ns, "all");
    for node in ["node-1", "node-2"] {
        let manager = format!("podshaper-controller/{node}");
        assert!(managers.contains(&manager), "{manager} not in {managers:?}");
    }
}
