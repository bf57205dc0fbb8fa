//! `podshaper doctor`: checks a node's prerequisites and says what is
//! missing and what that costs. Run it where the daemon runs (on the node,
//! or in the daemon's container: `kubectl exec ... -c daemon -- podshaper
//! doctor`). Exits non-zero if the daemon cannot limit here.

use std::fmt;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use podshaper_shaper::ingress_queue::QueueError;
use podshaper_shaper::{iproute, is_bpffs, netns, CgroupRoot, Shaper};
use serde::Deserialize;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The daemon's cgroup root, as it is given (default: the cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,
    /// The daemon's bpffs directory.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf/podshaper")]
    bpffs_dir: PathBuf,
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", default_value = podshaper_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where the node's CNI configuration is (to find the CNI bandwidth plugin).
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Check {
    level: Level,
    name: &'static str,
    detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{level:<4}  {:<18} {}", self.name, self.detail)
    }
}

fn check(level: Level, name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        level,
        name,
        detail: detail.into(),
    }
}

pub fn run(args: DoctorArgs) -> Result<ExitCode> {
    let mut checks = vec![kernel()];
    checks.push(btf());
    checks.push(cgroup2(args.cgroup_root.as_deref()));
    checks.push(bpffs(&args.bpffs_dir));
    checks.extend(shaper());
    checks.extend(queues());
    checks.push(network_namespace());
    checks.push(daemon(&args.socket));
    checks.extend(other_shapers(&args.cni_conf_dir));
    for c in &checks {
        println!("{c}");
    }
    Ok(match checks.iter().any(|c| c.level == Level::Fail) {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}

fn kernel() -> Check {
    use podshaper_shaper::kernel::{Release, ESSENTIAL};
    match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(r) => match Release::parse(&r) {
            // a vendor kernel may have what the shaper needs backported:
            // the load below is what decides
            Some(release) if release < ESSENTIAL => check(
                Level::Warn,
                "kernel",
                format!(
                    "{}: below Linux {ESSENTIAL}, where mainline first has all the shaper needs",
                    r.trim()
                ),
            ),
            _ => check(Level::Ok, "kernel", r.trim()),
        },
        Err(e) => check(Level::Warn, "kernel", format!("release unknown: {e}")),
    }
}

fn btf() -> Check {
    match Path::new("/sys/kernel/btf/vmlinux").exists() {
        true => check(Level::Ok, "kernel BTF", "/sys/kernel/btf/vmlinux"),
        false => check(
            Level::Warn,
            "kernel BTF",
            "missing (CONFIG_DEBUG_INFO_BTF): open sockets keep their pacing after a detach, and those opened before an ingress limit the kernel's delayed ACK",
        ),
    }
}

fn cgroup2(root: Option<&Path>) -> Check {
    match CgroupRoot::new(root) {
        Ok(r) => {
            let hybrid = fs::read_to_string("/proc/self/mountinfo")
                .is_ok_and(|m| m.lines().any(|l| l.contains(" - cgroup cgroup ")));
            let layout = if hybrid { "hybrid" } else { "unified" };
            check(
                Level::Ok,
                "cgroup2",
                format!(
                    "mounted at {} ({layout}); pods are looked for below {}",
                    r.mount().display(),
                    r.root().display()
                ),
            )
        }
        Err(e) => check(Level::Fail, "cgroup2", e.to_string()),
    }
}

fn bpffs(dir: &Path) -> Check {
    // the directory, or where it would be made
    let probe = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    match is_bpffs(probe) {
        Ok(true) => check(Level::Ok, "bpffs", format!("{} is on bpffs", probe.display())),
        Ok(false) => check(
            Level::Fail,
            "bpffs",
            format!(
                "{} is not on a bpf file system: limits could not outlive the daemon (mount -t bpf bpf /sys/fs/bpf)",
                dir.display()
            ),
        ),
        Err(e) => check(Level::Fail, "bpffs", format!("cannot check {}: {e}", probe.display())),
    }
}

/// Loads the shaper (nothing attached, nothing pinned) as the daemon would.
fn shaper() -> Vec<Check> {
    let shaper = match Shaper::load() {
        Ok(s) => s,
        Err(e) => {
            return vec![check(
                Level::Fail,
                "BPF shaper",
                format!("does not load: {}", podshaper_api::error_chain(&e)),
            )]
        }
    };
    let f = shaper.features();
    let mut out = vec![check(
        Level::Ok,
        "BPF shaper",
        "loads: egress and ingress limits hold",
    )];
    let optional = f.refinements();
    for (name, loaded, without) in optional {
        out.push(match loaded {
            true => check(Level::Ok, name, "on"),
            false => check(Level::Warn, name, format!("off: {without}")),
        });
    }
    out
}

/// What trying one qdisc or device gave: its name, and tc's or ip's error.
type Tried = (&'static str, Result<(), String>);

/// The qdiscs and devices the ingress queue is built from, tried in a
/// network namespace made for the check (it goes with the thread).
fn queues() -> Vec<Check> {
    let tried = std::thread::spawn(|| -> Result<Vec<Tried>, String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot make a network namespace to try them in: {e}"))?;
        let said = |e: QueueError| match e {
            QueueError::Spawn { program, source } => {
                format!("cannot run {program}: {source} (install iproute2)")
            }
            QueueError::Command { stderr, .. } => stderr,
            other => other.to_string(),
        };
        Ok(iproute::try_queue_parts()
            .into_iter()
            .map(|(name, tried)| (name, tried.map_err(said)))
            .collect())
    })
    .join();
    let tried = match tried {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return vec![check(Level::Warn, "ingress queue", e)],
        Err(_) => return vec![check(Level::Warn, "ingress queue", "the check panicked")],
    };
    tried
        .into_iter()
        .map(|(name, result)| match (name, result) {
            (_, Ok(())) => check(Level::Ok, name, "available"),
            ("fq", Err(e)) => check(
                Level::Ok,
                name,
                format!("not available ({e}): not needed (podshaper paces in TCP, not with fq)"),
            ),
            (_, Err(e)) => check(
                Level::Warn,
                name,
                format!(
                    "not available ({e}): no ingress queue, the cgroup policer alone holds ingress"
                ),
            ),
        })
        .collect()
}

fn network_namespace() -> Check {
    match netns::in_init_namespace() {
        Some(true) => check(Level::Ok, "network namespace", "the node's (that of PID 1)"),
        Some(false) => check(
            Level::Fail,
            "network namespace",
            "not the node's (that of PID 1): the daemon must run with hostNetwork: true and hostPID: true",
        ),
        None => check(
            Level::Warn,
            "network namespace",
            "cannot compare with PID 1's: /proc/1/ns/net cannot be opened (that needs CAP_SYS_PTRACE, the node's PID namespace, and no capability of PID 1's that this process lacks)",
        ),
    }
}

fn daemon(socket: &Path) -> Check {
    match UnixStream::connect(socket) {
        Ok(_) => check(
            Level::Ok,
            "daemon",
            format!("answers on {}", socket.display()),
        ),
        Err(e) => check(
            Level::Warn,
            "daemon",
            format!("nothing answers on {}: {e}", socket.display()),
        ),
    }
}

/// Another shaper on the same annotations limits the same pods twice.
fn other_shapers(cni_conf_dir: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let bandwidth_plugin: Vec<String> = fs::read_dir(cni_conf_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| fs::read_to_string(e.path()).is_ok_and(|c| has_cni_plugin(&c, "bandwidth")))
        .map(|e| e.path().display().to_string())
        .collect();
    if !bandwidth_plugin.is_empty() {
        out.push(check(
            Level::Warn,
            "CNI bandwidth",
            format!(
                "the CNI bandwidth plugin is in {}: it also reads the bandwidth annotations, and new pods get its tbf as well as podshaper's limit; remove it from the chain",
                bandwidth_plugin.join(", ")
            ),
        ));
    }
    if Path::new("/sys/fs/bpf/tc/globals/cilium_throttle").exists() {
        out.push(check(
            Level::Warn,
            "Cilium bandwidth",
            "Cilium's bandwidth manager is on (cilium_throttle is pinned): it also enforces kubernetes.io/egress-bandwidth, and kubernetes.io/ingress-bandwidth in the releases that read it; turn it off (bandwidthManager.enabled=false) or leave each annotation to one of them",
        ));
    }
    let tbf = iproute::qdiscs()
        .map(|qdiscs| qdiscs.iter().filter(|q| q.kind == "tbf").count())
        .unwrap_or(0);
    if tbf > 0 {
        out.push(check(
            Level::Warn,
            "tbf qdiscs",
            format!("{tbf} interface(s) of the node have a tbf qdisc (the CNI bandwidth plugin builds one per limited pod): those pods are limited twice"),
        ));
    }
    if out.is_empty() {
        out.push(check(
            Level::Ok,
            "other shapers",
            "none found (CNI bandwidth plugin, Cilium's bandwidth manager, tbf qdiscs)",
        ));
    }
    out
}

/// A CNI network configuration (`.conf`) or list (`.conflist`), as far as
/// the doctor reads it: the plugins' types.
#[derive(Debug, Default, Deserialize)]
struct CniConfig {
    #[serde(default, rename = "type")]
    plugin: Option<String>,
    #[serde(default)]
    plugins: Vec<CniConfig>,
}

/// Whether the CNI configuration `json` runs the plugin `plugin` (false for
/// a file that is not one).
fn has_cni_plugin(json: &str, plugin: &str) -> bool {
    fn runs(config: &CniConfig, plugin: &str) -> bool {
        config.plugin.as_deref() == Some(plugin) || config.plugins.iter().any(|p| runs(p, plugin))
    }
    serde_json::from_str::<CniConfig>(json).is_ok_and(|c| runs(&c, plugin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bandwidth_plugin_in_a_cni_list_or_configuration() {
        let list = r#"{"cniVersion": "0.4.0", "name": "k8s", "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}]}"#;
        assert!(has_cni_plugin(list, "bandwidth"));
        assert!(has_cni_plugin(list, "portmap"));
        // the IPAM plugin's type is no plugin of the chain's
        assert!(!has_cni_plugin(list, "host-local"));
        assert!(has_cni_plugin(
            r#"{"name": "x", "type": "bandwidth"}"#,
            "bandwidth"
        ));
        assert!(!has_cni_plugin(
            r#"{"name": "x", "type": "bridge"}"#,
            "bandwidth"
        ));
        assert!(!has_cni_plugin(
            r#"{"note": "\"type\":\"bandwidth\""}"#,
            "bandwidth"
        ));
        assert!(!has_cni_plugin("type: bandwidth", "bandwidth"));
    }
}
