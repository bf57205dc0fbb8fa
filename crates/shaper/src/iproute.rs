//! Every `ip` and `tc` (iproute2) the shaper runs, each behind a function
//! that names what it does. They act on the calling thread's network
//! namespace: the queues (crate::ingress_queue, crate::host_queue) enter a
//! pod's or the node's with crate::netns::run_in and decide what to build;
//! this module knows how iproute2 spells it.
//!
//! The htb queues are built and changed with `tc -batch` (one process for
//! the dozens of classes and FIFOs of a queue): the `*_line` functions
//! write a batch's lines and [`batch`] runs them. What is there is read as
//! `tc -json` prints it (crate::tc_json), classes through rtnetlink
//! (crate::tc_classes), interfaces with if_nameindex(3): never from tc's or
//! ip's text.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::abi::QUEUE_MAJOR;
use crate::ingress_queue::QueueError;
use crate::tc_classes;
use crate::tc_json::{self, Filter, Qdisc};

/// Whether a batch line adds a class or FIFO or changes one in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Add,
    Change,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Change => "change",
        }
    }
}

/// An interface: its index and name.
pub type Interface = (u32, String);

/// The handle of an interface's ingress qdisc, under which the redirecting
/// filters sit.
const INGRESS_HANDLE: &str = "ffff:";

// ---- ip

/// Makes an ifb device named `name` (`ip link add <name> type ifb`).
pub(crate) fn add_ifb(name: &str) -> Result<(), QueueError> {
    run("ip", &["link", "add", name, "type", "ifb"])
}

/// Sets the interface `name` up.
pub(crate) fn set_up(name: &str) -> Result<(), QueueError> {
    run("ip", &["link", "set", name, "up"])
}

/// Deletes the interface `name` (with its qdiscs, classes and filters).
pub(crate) fn delete_link(name: &str) -> Result<(), QueueError> {
    run("ip", &["link", "del", name])
}

/// The interfaces, with their indexes (a name can come back on another
/// interface, as veths of pods do), from if_nameindex(3) (nix), which asks
/// the kernel over a netlink socket of the calling thread's namespace.
pub(crate) fn links() -> Result<Vec<Interface>, QueueError> {
    let links = nix::net::if_::if_nameindex().map_err(|e| QueueError::Interfaces(e.into()))?;
    Ok(links
        .iter()
        .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
        .collect())
}

// ---- tc: an interface's ingress

/// Whether `dev` has an ingress qdisc. A tc that fails is an error, never
/// "no": a removal would then take the device a redirect points at away
/// with the redirect still in place.
pub(crate) fn has_ingress_qdisc(dev: &str) -> Result<bool, QueueError> {
    let qdiscs = tc_json(&format!("qdisc show dev {dev}"), tc_json::qdiscs)?;
    Ok(qdiscs.iter().any(|q| q.handle == INGRESS_HANDLE))
}

/// Puts an ingress qdisc on `dev`. It fails if one is there already (ours
/// from before, or another tool's), which callers leave alone: their filter
/// goes beside whatever it holds.
pub(crate) fn add_ingress_qdisc(dev: &str) -> Result<(), QueueError> {
    tc(&format!(
        "qdisc add dev {dev} handle {INGRESS_HANDLE} ingress"
    ))
    .map(drop)
}

/// Takes the ingress qdisc off `dev`.
fn delete_ingress_qdisc(dev: &str) -> Result<(), QueueError> {
    tc(&format!(
        "qdisc del dev {dev} handle {INGRESS_HANDLE} ingress"
    ))
    .map(drop)
}

/// The filters on `dev`'s ingress (an error if it has no ingress qdisc).
pub(crate) fn ingress_filters(dev: &str) -> Result<Vec<Filter>, QueueError> {
    tc_json(
        &format!("filter show dev {dev} parent {INGRESS_HANDLE}"),
        tc_json::filters,
    )
}

/// The filters at preference `pref` on `dev`'s ingress.
pub(crate) fn ingress_filters_at(dev: &str, pref: &str) -> Result<Vec<Filter>, QueueError> {
    tc_json(
        &format!("filter show dev {dev} parent {INGRESS_HANDLE} pref {pref}"),
        tc_json::filters,
    )
}

/// Deletes the filters at preference `pref` on `dev`'s ingress, and the
/// ingress qdisc too if they were its only filters (it stays if its
/// filters cannot be read).
pub(crate) fn remove_ingress_filter(dev: &str, pref: &str) -> Result<(), QueueError> {
    tc(&format!(
        "filter del dev {dev} parent {INGRESS_HANDLE} pref {pref}"
    ))?;
    if ingress_filters(dev).is_ok_and(|f| f.is_empty()) {
        let _ = delete_ingress_qdisc(dev);
    }
    Ok(())
}

/// Redirects everything `dev` receives to the device `to` (u32 match-all,
/// mirred), at preference `pref` on its ingress.
pub(crate) fn add_redirect_all(dev: &str, pref: &str, to: &str) -> Result<(), QueueError> {
    tc(&format!(
        "filter add dev {dev} parent {INGRESS_HANDLE} pref {pref} protocol all u32 match u32 0 0 action mirred egress redirect dev {to}"
    ))
    .map(drop)
}

/// Has the BPF classifier pinned at `classifier` classify what `dev`
/// receives, and redirects what it classifies to the device `to`, at
/// preference `pref` on its ingress.
pub(crate) fn add_classified_redirect(
    dev: &str,
    pref: &str,
    classifier: &str,
    to: &str,
) -> Result<(), QueueError> {
    tc(&format!(
        "filter add {}",
        classified_redirect(dev, pref, classifier, to)
    ))
    .map(drop)
}

/// Puts the classifier pinned at `classifier` in place of the program of
/// the filter `handle` that [`add_classified_redirect`] made, in one
/// replace: packets are classified by one program or the other, never by
/// none.
pub(crate) fn replace_classified_redirect(
    dev: &str,
    pref: &str,
    handle: &str,
    classifier: &str,
    to: &str,
) -> Result<(), QueueError> {
    let target = format!("dev {dev} parent {INGRESS_HANDLE} pref {pref}");
    let spec = classified_redirect_spec(classifier, to);
    tc(&format!("filter replace {target} handle {handle} {spec}")).map(drop)
}

fn classified_redirect(dev: &str, pref: &str, classifier: &str, to: &str) -> String {
    let target = format!("dev {dev} parent {INGRESS_HANDLE} pref {pref}");
    format!("{target} {}", classified_redirect_spec(classifier, to))
}

fn classified_redirect_spec(classifier: &str, to: &str) -> String {
    format!("protocol all bpf object-pinned {classifier} action mirred egress redirect dev {to}")
}

// ---- tc: the htb queue on an ifb

/// The htb root qdisc of a queue on `dev`, sending what no filter
/// classifies to the class `default` (None: such packets are not queued).
/// stab: count IP bytes (the frame less its Ethernet header), and a GRO
/// packet once, as the cgroup programs count them.
pub(crate) fn htb_root_line(dev: &str, default: Option<u32>) -> String {
    let root = format!("qdisc add dev {dev} root handle {QUEUE_MAJOR:x}: stab overhead -14 htb");
    match default {
        Some(class) => format!("{root} default {class:x}"),
        None => root,
    }
}

/// Puts the htb root qdisc of [`htb_root_line`] on `dev`.
pub(crate) fn add_htb_root(dev: &str, default: Option<u32>) -> Result<(), QueueError> {
    tc(&htb_root_line(dev, default)).map(drop)
}

/// An htb class's rates and turns (tc's names in brackets).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HtbClass {
    /// the class's minor id, under `parent` (0: the qdisc itself)
    pub id: u32,
    pub parent: u32,
    /// what it may always send, bytes/s (rate)
    pub assured: u64,
    /// what it may send borrowing from its parent, bytes/s (ceil)
    pub ceil: u64,
    /// bytes it may send at once at the assured rate (burst)
    pub burst: u64,
    /// and at the ceiling (cburst)
    pub cburst: u64,
    /// lower goes first when borrowing (prio)
    pub prio: u32,
    /// bytes it sends per turn when borrowing (quantum)
    pub quantum: u64,
}

/// A batch line that adds or changes an htb class on `dev`.
pub(crate) fn htb_class_line(verb: Verb, dev: &str, class: &HtbClass) -> String {
    let HtbClass {
        id,
        parent,
        assured,
        ceil,
        burst,
        cburst,
        prio,
        quantum,
    } = *class;
    format!(
        "class {verb} dev {dev} parent {QUEUE_MAJOR:x}:{parent:x} classid {QUEUE_MAJOR:x}:{id:x} htb rate {assured}bps ceil {ceil}bps burst {burst} cburst {cburst} prio {prio} quantum {quantum}",
        verb = verb.as_str()
    )
}

/// A batch line that adds or changes the byte FIFO of `bytes` under the
/// class `class` on `dev` (its handle the class's minor id).
pub(crate) fn bfifo_line(verb: Verb, dev: &str, class: u32, bytes: u64) -> String {
    format!(
        "qdisc {verb} dev {dev} parent {QUEUE_MAJOR:x}:{class:x} handle {class:x}: bfifo limit {bytes}",
        verb = verb.as_str()
    )
}

/// Batch lines of two filters, at preferences 1 and 2 on the queue's root
/// on `dev`, that send IPv4 packets of a total length and IPv6 packets of
/// a payload length under 256 bytes to the class `class`.
pub(crate) fn small_packet_filter_lines(dev: &str, class: u32) -> [String; 2] {
    [
        format!(
            "filter add dev {dev} parent {QUEUE_MAJOR:x}: prio 1 protocol ip u32 match u16 0 0xff00 at 2 flowid {QUEUE_MAJOR:x}:{class:x}"
        ),
        format!(
            "filter add dev {dev} parent {QUEUE_MAJOR:x}: prio 2 protocol ipv6 u32 match u16 0 0xff00 at 4 flowid {QUEUE_MAJOR:x}:{class:x}"
        ),
    ]
}

/// A batch line of the filter, at preference `prio` on the queue's root on
/// `dev`, whose BPF program (pinned at `classifier`) picks each packet's
/// class.
pub(crate) fn classifier_filter_line(dev: &str, prio: u32, classifier: &str) -> String {
    format!(
        "filter add dev {dev} parent {QUEUE_MAJOR:x}: prio {prio} protocol all bpf object-pinned {classifier}"
    )
}

/// The filters at preference `prio` on the queue's root on `dev`.
pub(crate) fn queue_filters_at(dev: &str, prio: u32) -> Result<Vec<Filter>, QueueError> {
    tc_json(
        &format!("filter show dev {dev} parent {QUEUE_MAJOR:x}: prio {prio}"),
        tc_json::filters,
    )
}

/// Puts the program pinned at `classifier` in place of that of the filter
/// `handle` at preference `prio` on the queue's root on `dev`, in one
/// replace (run as a batch).
pub(crate) fn replace_classifier_filter(
    dev: &str,
    prio: u32,
    handle: &str,
    classifier: &str,
) -> Result<(), QueueError> {
    batch(&[format!(
        "filter replace dev {dev} parent {QUEUE_MAJOR:x}: prio {prio} handle {handle} protocol all bpf object-pinned {classifier}"
    )])
}

/// Whether the queue on `dev` has the class `minor` (read through
/// rtnetlink: crate::tc_classes).
pub(crate) fn has_class(dev: &str, minor: u32) -> Result<bool, QueueError> {
    let (Ok(major), Ok(minor)) = (u16::try_from(QUEUE_MAJOR), u16::try_from(minor)) else {
        return Ok(false);
    };
    Ok(tc_classes::class_handles(dev)?.contains(&(major, minor)))
}

/// Deletes the class `minor` of the queue on `dev`.
pub(crate) fn delete_class(dev: &str, minor: u32) -> Result<(), QueueError> {
    tc(&format!(
        "class del dev {dev} classid {QUEUE_MAJOR:x}:{minor:x}"
    ))
    .map(drop)
}

// ---- what `podshaper doctor` tries

/// Tries each qdisc and device the queues are built from, in the calling
/// thread's network namespace (one made to try them in: what they make is
/// left there): an ifb device, an htb root and an ingress qdisc on `lo`,
/// and fq in place of the htb. Each one's name, and what iproute2 said if
/// it failed.
pub fn try_queue_parts() -> Vec<(&'static str, Result<(), QueueError>)> {
    vec![
        (
            "ifb",
            run("ip", &["link", "add", "doctor-ifb", "type", "ifb"]),
        ),
        (
            "htb",
            run(
                "tc",
                &["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb"],
            ),
        ),
        (
            "ingress qdisc",
            run(
                "tc",
                &["qdisc", "add", "dev", "lo", "handle", "ffff:", "ingress"],
            ),
        ),
        (
            "fq",
            run("tc", &["qdisc", "replace", "dev", "lo", "root", "fq"]),
        ),
    ]
}

/// Every qdisc of the calling thread's network namespace.
pub fn qdiscs() -> Result<Vec<Qdisc>, QueueError> {
    tc_json("qdisc show", tc_json::qdiscs)
}

// ---- running them

/// One tc command, its output. Words are split on whitespace: interface
/// names in it have passed crate::ingress_queue's `is_pod_interface`,
/// which admits none.
fn tc(command: &str) -> Result<String, QueueError> {
    output("tc", &command.split_whitespace().collect::<Vec<_>>())
}

/// One `tc -json` command (words split as in [`tc`]), its output read by
/// `read` (a crate::tc_json function).
fn tc_json<T>(
    command: &str,
    read: fn(&str) -> Result<T, serde_json::Error>,
) -> Result<T, QueueError> {
    let json = tc(&format!("-json {command}"))?;
    read(&json).map_err(|source| QueueError::Json {
        command: format!("tc -json {command}"),
        source,
    })
}

fn run(program: &'static str, args: &[&str]) -> Result<(), QueueError> {
    output(program, args).map(|_| ())
}

fn output(program: &'static str, args: &[&str]) -> Result<String, QueueError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| QueueError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(QueueError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs tc batch lines in one process; fails on the first that fails.
pub(crate) fn batch(lines: &[String]) -> Result<(), QueueError> {
    let failed = |stderr: String| QueueError::Command {
        command: format!("tc -batch: {}", lines.join("; ")),
        stderr,
    };
    let spawn_error = |source| QueueError::Spawn {
        program: "tc",
        source,
    };
    let mut child = Command::new("tc")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all((lines.join("\n") + "\n").as_bytes())
            .map_err(spawn_error)?;
    }
    let out = child.wait_with_output().map_err(spawn_error)?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of a network namespace of its own, which goes
    /// with the thread (and everything made in it). None where this process
    /// may not make one (no CAP_SYS_ADMIN): the test then says so and passes.
    fn in_new_namespace<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(move || {
            match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => Some(f()),
                Err(e) => {
                    eprintln!("skipped: cannot make a network namespace ({e}); run as root");
                    None
                }
            }
        })
        .join()
        .expect("the test's thread")
    }

    #[test]
    fn reads_interfaces_qdiscs_filters_and_classes_from_the_kernel() {
        in_new_namespace(|| {
            let ifb = "psq-test-ifb";
            assert_eq!(links().expect("links"), [(1, "lo".to_string())]);
            add_ifb(ifb).expect("ifb");
            set_up(ifb).expect("up");
            let have = links().expect("links");
            assert!(have.iter().any(|(i, n)| n == ifb && *i > 1), "{have:?}");

            // a pod queue's htb root, classes and FIFOs, as the queue builds
            // them (one batch), at 10 Mbit/s
            let ids = crate::ingress_queue::ClassIds::offset(0);
            let limit = crate::DirectionLimit::new(
                "10M".parse::<podshaper_rate::Rate>().expect("rate"),
                None,
            );
            let mut lines = vec![htb_root_line(ifb, None)];
            lines.extend(crate::ingress_queue::queue_classes(
                ifb,
                &ids,
                Verb::Add,
                &limit,
            ));
            batch(&lines).expect("the queue's classes");
            for minor in [ids.root, ids.small, ids.bulk]
                .into_iter()
                .chain(ids.flow_classes())
            {
                assert!(has_class(ifb, minor).expect("classes"), "{minor:x}");
            }
            let class = HtbClass {
                id: 0x1000,
                parent: 0,
                assured: 125_000,
                ceil: 125_000,
                burst: 16_384,
                cburst: 16_384,
                prio: 0,
                quantum: 1_514,
            };
            assert!(!has_class(ifb, 0x1000).expect("classes"));
            batch(&[htb_class_line(Verb::Add, ifb, &class)]).expect("class");
            assert!(has_class(ifb, 0x1000).expect("classes"));
            assert!(!has_class(ifb, 0x1001).expect("classes"));
            assert!(!has_class(ifb, 0x1_0001).expect("beyond 16 bits"));
            assert!(has_class("psq-no-such-dev", 0x1).is_err());
            let all = qdiscs().expect("qdiscs");
            assert!(
                all.iter()
                    .any(|q| q.kind == "htb" && q.handle == "1:" && q.dev.as_deref() == Some(ifb)),
                "{all:?}"
            );

            // an ingress redirect to the ifb, and its removal with the qdisc
            assert!(!has_ingress_qdisc("lo").expect("qdiscs of lo"));
            add_ingress_qdisc("lo").expect("ingress");
            assert!(has_ingress_qdisc("lo").expect("qdiscs of lo"));
            assert!(ingress_filters("lo").expect("filters").is_empty());
            add_redirect_all("lo", "49", ifb).expect("redirect");
            for filters in [ingress_filters("lo"), ingress_filters_at("lo", "49")] {
                let filters = filters.expect("filters");
                assert!(filters.iter().any(|f| f.redirects_to(ifb)), "{filters:?}");
                assert!(filters.iter().all(|f| f.bpf_program().is_none()));
            }
            assert!(ingress_filters_at("lo", "50").expect("filters").is_empty());
            remove_ingress_filter("lo", "49").expect("removal");
            assert!(!has_ingress_qdisc("lo").expect("qdiscs of lo"));
            assert!(has_ingress_qdisc("psq-no-such-dev").is_err());
        });
    }

    #[test]
    fn a_queue_root_sends_what_is_not_classified_to_its_default_class_if_it_has_one() {
        assert_eq!(
            htb_root_line("ifb0", Some(0x100)),
            "qdisc add dev ifb0 root handle 1: stab overhead -14 htb default 100"
        );
        assert_eq!(
            htb_root_line("ifb0", None),
            "qdisc add dev ifb0 root handle 1: stab overhead -14 htb"
        );
    }
}
