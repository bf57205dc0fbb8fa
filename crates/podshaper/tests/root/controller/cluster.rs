//! Cluster mode, with the deploy/ manifests: the manifests pass a
//! server-side dry run, and replicas that share a Lease reach each node's
//! daemon over mutual TLS.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use super::{unique_ns, SimNode, CONVERGE, EGRESS};
use crate::common;
use crate::common::daemon::{TestDaemon, TestRoot};
use crate::common::kube::ApiServer;
use crate::common::{podshaper, ChildGuard};

#[test]
fn deploy_manifests_pass_a_server_side_dry_run() {
    require_root!();
    let api = ApiServer::start();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    // namespace.yaml and rbac.yaml are applied for real by the harness (the
    // controller runs with exactly that RBAC); the rest is checked by the
    // API server's validation and admission without being stored.
    let kustomization = deploy.display().to_string();
    let out = api.kubectl_ok(&["apply", "--dry-run=server", "-k", &kustomization]);
    eprintln!("{out}");
    for object in [
        "namespace/podshaper-system",
        "customresourcedefinition.apiextensions.k8s.io/bandwidthpolicies.podshaper.io",
        "serviceaccount/podshaper",
        "clusterrole.rbac.authorization.k8s.io/podshaper-controller",
        "daemonset.apps/podshaper",
    ] {
        assert!(out.contains(object), "{object} not in deploy/: {out}");
    }
    assert!(out.contains("(server dry run)"), "{out}");
    let path = deploy.join("cluster-mode-rbac.yaml").display().to_string();
    let out = api.kubectl_ok(&["apply", "--dry-run=server", "-f", &path]);
    assert!(
        out.contains("(server dry run)"),
        "cluster-mode-rbac.yaml: {out}"
    );
    // The controller's account can do what node mode needs, and no more.
    let can = |verb: &str, resource: &str| {
        let sa = format!(
            "system:serviceaccount:{}:{}",
            common::kube::CONTROLLER_SA_NAMESPACE,
            common::kube::CONTROLLER_SA
        );
        let out = api.kubectl(&["auth", "can-i", verb, resource, "--as", &sa, "-A"]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("watch", "pods"));
    assert!(can("create", "events.events.k8s.io"));
    assert!(!can("update", "pods"));
    assert!(!can("delete", "pods"));
    assert!(!can("get", "secrets"));
}

/// Cluster mode: no --node; the controller watches every pod and reaches each
/// node's daemon at the Node's InternalIP over mutual TLS. Two replicas share
/// a Lease: one acts, the other takes over when it dies.
#[test]
fn cluster_mode_reaches_daemons_over_mtls_and_one_replica_acts() {
    require_root!();
    let api = ApiServer::start();
    api.kubectl_ok(&[
        "apply",
        "-f",
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/cluster-mode-rbac.yaml")
            .display()
            .to_string(),
    ]);
    let ns = unique_ns("cluster");
    api.create_namespace(&ns);
    let pki_dir = api.dir.join("daemon-pki");
    fs::create_dir_all(&pki_dir).expect("mkdir pki");
    // Two nodes on one machine: two loopback addresses, one port.
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
    let start_replica = |identity: &str| {
        let log = api.dir.join(format!("controller-{identity}.log"));
        let file = fs::File::create(&log).expect("log file");
        let mut cmd = podshaper();
        cmd.args(["controller", "--daemon-port", &port, "--resync", "3"])
            .args(["--tls-cert", &pki.client_cert, "--tls-key", &pki.client_key])
            .args(["--tls-ca", &pki.ca, "--identity", identity])
            .args(["--lease-namespace", common::kube::CONTROLLER_SA_NAMESPACE])
            .arg("--kubeconfig")
            .arg(&api.controller_kubeconfig)
            .env("PODSHAPER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file);
        (ChildGuard::spawn(&mut cmd), log)
    };
    let (first, first_log) = start_replica("replica-1");
    thread::sleep(Duration::from_secs(2));
    let (_second, second_log) = start_replica("replica-2");

    let limits = |daemon: &TestDaemon, uid: &str| {
        daemon
            .list()
            .into_iter()
            .find(|c| c["pod_uid"].as_str() == Some(uid))
            .map(|c| c["egress_bps"].as_u64())
    };
    let a = api.create_pod(&ns, "a", "node-1", &[(EGRESS, "10M")]);
    let b = api.create_pod(&ns, "b", "node-2", &[(EGRESS, "20M")]);
    nodes[0].0.make(&SimNode::pod_cgroup_path(&a));
    nodes[1].0.make(&SimNode::pod_cgroup_path(&b));
    let logs = || {
        format!(
            "replica-1:\n{}\nreplica-2:\n{}",
            fs::read_to_string(&first_log).unwrap_or_default(),
            fs::read_to_string(&second_log).unwrap_or_default()
        )
    };
    let deadline = Instant::now() + CONVERGE;
    while !(limits(&nodes[0].1, &a) == Some(Some(10_000_000))
        && limits(&nodes[1].1, &b) == Some(Some(20_000_000)))
    {
        assert!(
            Instant::now() < deadline,
            "not limited over mTLS\n{}",
            logs()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Exactly one replica leads.
    let leading = |log: &PathBuf| {
        fs::read_to_string(log)
            .unwrap_or_default()
            .contains("leading")
    };
    assert!(leading(&first_log) && !leading(&second_log), "{}", logs());

    // The leader dies; the other takes over once the lease runs out (15 s).
    first.kill9();
    api.annotate(&ns, "a", &[(EGRESS, Some("30M"))]);
    let deadline = Instant::now() + Duration::from_secs(45);
    while limits(&nodes[0].1, &a) != Some(Some(30_000_000)) {
        assert!(Instant::now() < deadline, "no takeover\n{}", logs());
        thread::sleep(Duration::from_millis(200));
    }
    assert!(leading(&second_log), "{}", logs());
}
