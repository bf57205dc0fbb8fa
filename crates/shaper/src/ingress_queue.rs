//! A queue in front of a pod that has a network namespace of its own.
//!
//! A cgroup program can only pass or drop what arrives, and a policer that
//! drops makes TCP senders retransmit and back off (docs/design/ingress.md: one
//! cubic flow reached 0.66-0.78 of its ingress limit). Where the pod has its
//! own network namespace, the daemon puts a queue in front of it: each of the
//! namespace's interfaces redirects what it receives (tc ingress, u32
//! match-all, mirred) to an ifb device, whose htb classes release it at the
//! limit. Small packets have a class of their own that goes first; bulk
//! packets wait in one of 16 short byte FIFOs, one per flow (the shaper's
//! flow classifier picks it), served in turn. Packets wait instead of being
//! dropped, flows share the limit equally, and the cgroup policer behind the
//! queue stays as the backstop (for traffic that does not cross those
//! interfaces, and if the queue is removed).
//!
//! It is built with iproute2's `ip` and `tc` (crate::iproute), run inside
//! the namespace; the ifb lives in the pod's namespace, so it survives the
//! daemon and goes away with the pod.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use aya::programs::ProgramInfo;

use crate::abi::{
    FLOW_CLASS_BASE, FLOW_QUEUES, FLOW_QUEUE_CAP_BYTES, FLOW_QUEUE_MIN_BYTES, FLOW_QUEUE_MIN_US,
    FLOW_QUEUE_US, SMALL_CLASS,
};
use crate::iproute::{self, HtbClass, Verb};
use crate::limits::DirectionLimit;
use crate::netns;
use crate::tc_json::{self, Filter};

/// The ifb device in each queued pod's namespace.
pub const IFB_NAME: &str = "podshaper-ifb";
/// Preference of the redirecting filter on each interface's ingress.
const FILTER_PREF: &str = "49";
/// The htb classes' burst is a quarter of the limit's and at least this
/// much. The policer behind the queue has the whole burst, so what the queue
/// releases never finds it empty (with equal bursts it dropped up to 0.4%);
/// and what the queue sends ahead of the rate (its burst, once, then it holds
/// the rate) leaves the policer's bucket at three quarters, above the half
/// under which it marks ECN flows. With half the burst here it sat at half:
/// 98% of an ECN flow's packets were marked, and at 10M the flows got 0.95 of
/// the limit (docs/design/ingress.md).
const MIN_HTB_BURST: u64 = 16 * 1024;
/// What each flow class may send per turn: as large as a packet can be
/// (GRO builds them up to 64 KiB). htb takes one packet from a class per
/// turn whatever the class's deficit, and only moves the turn on once the
/// deficit is spent, so with turns smaller than the packets flows shared by
/// packets, not bytes: at 10M, ECN flows that a mark had left sending
/// 2-segment packets got half of what flows sending 5-segment ones got
/// (Jain 0.94 over 16 flows, docs/design/ingress.md).
const FLOW_QUANTUM: u64 = 65_536;

/// The htb class ids (minor, hex as tc reads them) of one pod's queue: the
/// limit, small packets, bulk (the parent of the per-flow classes, `flows`
/// and the next `FLOW_QUEUES - 1`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassIds {
    pub root: u32,
    pub small: u32,
    pub bulk: u32,
    pub flows: u32,
}

impl ClassIds {
    /// The classes `offset` above those of a pod's own queue (the node's
    /// queue for hostNetwork pods puts each pod's subtree at an offset).
    pub const fn offset(offset: u32) -> Self {
        Self {
            root: offset + 0x1,
            small: offset + SMALL_CLASS,
            bulk: offset + 0x20,
            flows: offset + FLOW_CLASS_BASE,
        }
    }

    /// The per-flow classes' minor ids.
    pub fn flow_classes(&self) -> impl Iterator<Item = u32> {
        self.flows..self.flows + FLOW_QUEUES
    }
}

/// A pod's own queue's classes.
const POD_CLASSES: ClassIds = ClassIds::offset(0);
/// The small packets' FIFO: 64 packets of 256 bytes.
const SMALL_QUEUE_BYTES: u64 = 16 * 1024;
/// Preference of the flow classifier on the htb root, after the two u32
/// filters that pick small packets.
const FLOW_FILTER_PREF: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot enter the pod's network namespace")]
    Enter(#[source] io::Error),
    #[error("cannot run {program} (is iproute2 installed?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("`{command}` printed what is not the JSON it prints")]
    Json {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot list the network interfaces")]
    Interfaces(#[source] io::Error),
    #[error("no network interface {name}")]
    Interface {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {what} of {dev} through rtnetlink")]
    Netlink {
        what: &'static str,
        dev: String,
        #[source]
        source: io::Error,
    },
    #[error("the flow classifier's pin path {0} cannot be passed to tc (it must be UTF-8, without spaces)")]
    ClassifierPath(String),
    #[error("the queue holds the limit, but its flow classifier (program {program}) is an older daemon's and was not replaced")]
    OlderClassifier {
        program: u32,
        #[source]
        source: Box<QueueError>,
    },
}

/// How many bytes each flow's FIFO holds for a limit.
///
/// Each flow's FIFO (abi::FLOW_QUEUE_*, shared with the BPF program, which
/// keeps receive windows within it) holds 10 ms at the whole rate (a lone
/// flow's added delay under load; with n flows each waits up to n times
/// this), at most 128 KiB, at least 2 ms at the rate and at least 16 KiB
/// (11 full-size packets). Measured with 16 cubic flows at 10 Mbit/s: 8 KiB
/// lost 11% of the rate, 16 KiB 1-3% (tc alone). With FIFOs of 0.5 ms at
/// the rate one BBR flow got 0.02-0.03 of 100 Mbit/s and 0.2-0.3 of
/// 1 Gbit/s (its probes overflowed the FIFO, and its policer detection then
/// held it at what got through); with 10 ms at 100M and 2 ms at 1G it gets
/// 0.995-0.998 (docs/design/ingress.md).
pub fn flow_queue_bytes(limit: &DirectionLimit) -> u64 {
    let at_rate = |us: u32| limit.rate.bytes_per_sec().saturating_mul(us.into()) / 1_000_000;
    at_rate(FLOW_QUEUE_US)
        .min(FLOW_QUEUE_CAP_BYTES.into())
        .max(at_rate(FLOW_QUEUE_MIN_US))
        .max(FLOW_QUEUE_MIN_BYTES.into())
}

/// A flow FIFO's drop line holds this long at the whole rate ...
const FIFO_DROP_US: u64 = 32_000;
/// ... and at least this many times the FIFO's depth ...
const FIFO_DROP_DEPTHS: u64 = 4;
/// ... and at most this many bytes (13 ms at 5 Gbit/s).
const FIFO_DROP_CAP_BYTES: u64 = 8 << 20;

/// How many bytes a flow's FIFO takes before it drops.
///
/// [`flow_queue_bytes`] is what a receive window counts on (the sockops
/// program keeps a receiving socket's window within 7/8 of it above the
/// path's bandwidth-delay product); the drop line is deeper, for what comes
/// in faster than the rate for a moment: a long path delivers a sender's
/// burst at once, as the lab's delay line does when it catches up. With the
/// drop line at the depth, one cubic flow at 1G behind 50 ms read 0.18-0.58
/// of the limit (the FIFO dropped whole GRO packets of 30 KB while the
/// window was under the path's product); at 4 MB it reads 0.999, 0.00%
/// resent, and 16 flows 0.996-0.997 with 0.48-0.69%
/// (docs/benchmarks-round-trips.md). The window keeps what stands in the
/// FIFO at the depth, so a queue's delay is the depth's; only bursts reach
/// the drop line.
pub fn flow_fifo_limit_bytes(limit: &DirectionLimit) -> u64 {
    let at_rate = limit.rate.bytes_per_sec().saturating_mul(FIFO_DROP_US) / 1_000_000;
    at_rate
        .max(flow_queue_bytes(limit).saturating_mul(FIFO_DROP_DEPTHS))
        .min(FIFO_DROP_CAP_BYTES)
}

/// Puts (or updates, live) the queue in front of the network namespace `ns`.
/// `flow_classifier` is where the shaper's flow classifier is pinned
/// ([`crate::Shaper::pin_flow_classifier`]). `adopting`: the queue may have
/// been built by another daemon (an older build's), whose classifier it then
/// gets replaced by the pinned one; a queue this daemon built or adopted
/// already runs it, and its live changes skip that check (a `tc filter show`).
pub fn install(
    ns: &File,
    limit: &DirectionLimit,
    flow_classifier: &Path,
    adopting: bool,
) -> Result<(), QueueError> {
    let classifier = flow_classifier
        .to_str()
        .filter(|p| !p.is_empty() && !p.contains(char::is_whitespace))
        .ok_or_else(|| QueueError::ClassifierPath(flow_classifier.display().to_string()))?;
    // read here: a pin is in bpffs, which entering the namespace leaves alone
    let pinned = adopting
        .then(|| {
            ProgramInfo::from_pin(flow_classifier)
                .map(|info| info.id())
                .map_err(|e| {
                    tracing::warn!(pin = %flow_classifier.display(), error = %e, "cannot read the flow classifier's pin: a queue's classifier is not checked");
                })
                .ok()
        })
        .flatten();
    netns::run_in(ns, || install_here(limit, classifier, pinned)).map_err(QueueError::Enter)?
}

/// Lets TCP shrink the receive windows it offered in `ns` (or not), as a
/// queue there does (`shrink_windows`): for a queue about to be built in
/// front of open connections, whose windows are clamped first.
pub fn let_windows_shrink(ns: &File, on: bool) -> Result<(), QueueError> {
    netns::run_in(ns, || shrink_windows(on)).map_err(QueueError::Enter)
}

/// Removes the queue from `ns`, if it has one.
pub fn remove(ns: &File) -> Result<(), QueueError> {
    netns::run_in(ns, remove_here).map_err(QueueError::Enter)?
}

/// Removes the queue from `ns` if its ifb is there; true if it was.
pub fn remove_if_present(ns: &File) -> Result<bool, QueueError> {
    netns::run_in(ns, || {
        if !interfaces()?.iter().any(|n| n == IFB_NAME) {
            return Ok(false);
        }
        remove_here().map(|()| true)
    })
    .map_err(QueueError::Enter)?
}

fn install_here(
    limit: &DirectionLimit,
    classifier: &str,
    pinned: Option<u32>,
) -> Result<(), QueueError> {
    let have = interfaces()?;
    if have.iter().any(|n| n == IFB_NAME) {
        // A live change: the classes' rates and the FIFOs' sizes, and the
        // classifier if an older daemon's program classifies.
        if iproute::batch(&classes(Verb::Change, limit)).is_ok() {
            redirect_interfaces(&have)?;
            shrink_windows(true);
            return match pinned {
                Some(pinned) => replace_older_classifier(classifier, pinned),
                None => Ok(()),
            };
        }
        // Not the queue we build (changed by hand, half made, or built by an
        // older daemon with another layout): start over.
        remove_here()?;
    }
    iproute::add_ifb(IFB_NAME)?;
    iproute::set_up(IFB_NAME)?;
    // what no filter classifies: the first flow's FIFO
    let mut commands = vec![iproute::htb_root_line(IFB_NAME, Some(FLOW_CLASS_BASE))];
    commands.extend(classes(Verb::Add, limit));
    // small packets: their own class
    commands.extend(iproute::small_packet_filter_lines(
        IFB_NAME,
        POD_CLASSES.small,
    ));
    // everything else: the flow's own FIFO
    commands.push(iproute::classifier_filter_line(
        IFB_NAME,
        FLOW_FILTER_PREF,
        classifier,
    ));
    if let Err(e) = iproute::batch(&commands) {
        // half a queue would pass for ours on the next change: none at all.
        // The ifb was made a moment ago and nothing redirects to it yet (that
        // comes next), so deleting it undoes everything, with no tc needed
        // (the tc that just failed may fail again).
        let _ = iproute::delete_link(IFB_NAME);
        return Err(e);
    }
    redirect_interfaces(&have)?;
    shrink_windows(true);
    Ok(())
}

/// net.ipv4.tcp_shrink_window (Linux 6.5), for the namespace the calling
/// thread is in. TCP never takes back a receive window it offered unless
/// this is on, and a connection open before the limit had offered its
/// sender megabytes (its buffer autotuned at the unlimited rate): the
/// clamp the sockops program sets then bounds only the windows still to
/// come, and until the sender has used up the old one it may keep more in
/// flight than its FIFO in the queue holds. With it on, the next ACK offers
/// the clamped window: sixteen open flows at 100M read 0.99-1.01 of the
/// limit each second (runs 0.996-0.998, five runs) where they read
/// 0.84-0.94 without it; four at 10M read runs of 0.969-0.996 (eight runs)
/// against 0.987-0.993 (three), the windows offered being tighter
/// (`cargo test -p podshaper --test root -- --nocapture
/// open_connections::ingress`). A window shrinks only where the clamp or the socket's free
/// buffer space is below what it offered. The sysctl is not one the kubelet
/// lets a pod set, so a queue's removal puts it back to the kernel's 0.
fn shrink_windows(on: bool) {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_shrink_window";
    match fs::write(PATH, if on { "1" } else { "0" }) {
        Ok(()) => {}
        // before 6.5: open connections keep the window they offered
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = PATH, error = %e, "cannot set: open connections keep the receive window they offered")
        }
    }
}

/// Puts the pinned flow classifier (program `pinned`) in place of the one on
/// the queue, if that is another program: tc holds the program a filter was
/// built with, so a queue built by an older daemon kept that daemon's
/// classifier after an upgrade, for as long as the pod lived. One `replace`
/// of the filter's handle: packets are classified by one program or the
/// other, never by none. If it fails, the older program goes on classifying
/// (the queue still holds the rate) and the error says so, so that the
/// caller tries again later.
fn replace_older_classifier(classifier: &str, pinned: u32) -> Result<(), QueueError> {
    let filters = iproute::queue_filters_at(IFB_NAME, FLOW_FILTER_PREF).ok();
    let Some((id, handle)) = filters.iter().flatten().find_map(Filter::bpf_program) else {
        return Ok(());
    };
    if id == pinned {
        return Ok(());
    }
    iproute::replace_classifier_filter(IFB_NAME, FLOW_FILTER_PREF, &handle, classifier).map_err(
        |e| QueueError::OlderClassifier {
            program: id,
            source: Box::new(e),
        },
    )?;
    tracing::info!(
        from = id,
        to = pinned,
        "the ingress queue's flow classifier replaced by this daemon's"
    );
    Ok(())
}

/// The program id and handle of the bpf filter in `tc -json filter show`
/// output (None without one, or for output that is not tc's JSON).
pub fn flow_filter(json: &str) -> Option<(u32, String)> {
    tc_json::filters(json)
        .ok()?
        .iter()
        .find_map(Filter::bpf_program)
}

/// The htb classes and FIFOs for `limit` (`verb`: add or change). Under the
/// class that holds the limit, small packets (pure ACKs, requests, replies:
/// IP length under 256 bytes) have a class of their own that goes first, so
/// they do not wait behind bulk packets; the bulk class is assured 9/10 of
/// the limit, so a flood of small packets cannot starve it. Its children,
/// one per flow FIFO, borrow all they send from it, up to the limit: htb
/// serves the borrowers with packets in turn (a quantum each, about a
/// millisecond at the rate), so flows share equally and what one leaves
/// unused goes to the others. Each is assured only a token 1/1000 of the
/// rate: htb lets a class send its assured rate, and bursts of it, whatever
/// its parents have left, so with equal parts of the bulk rate assured 16
/// flows at 10 Mbit/s got 0.88-0.90 of the limit.
fn classes(verb: Verb, limit: &DirectionLimit) -> Vec<String> {
    queue_classes(IFB_NAME, &POD_CLASSES, verb, limit)
}

/// [`classes`] on the ifb `dev`, under the ids `ids`.
pub(crate) fn queue_classes(
    dev: &str,
    ids: &ClassIds,
    verb: Verb,
    limit: &DirectionLimit,
) -> Vec<String> {
    let rate = limit.rate.bytes_per_sec().max(10);
    let small_rate = rate / 10;
    let bulk_rate = rate - small_rate;
    let flow_rate = (rate / 1000).max(125);
    let burst = (limit.burst.bytes() / 4).max(MIN_HTB_BURST);
    let flow_fifo = flow_fifo_limit_bytes(limit);
    let quantum = (rate / 1000).clamp(1514, 65535);
    let class = |id: u32, parent: u32, assured: u64, prio: u32| {
        // the assured rate's burst: a flow class's is one quantum, or the
        // 16 of them would let 16 bursts through past the limit at once
        // (the policer behind dropped 3.5% at 10 Mbit/s, 16 flows)
        let green = if parent == ids.bulk { quantum } else { burst };
        let turn = if parent == ids.bulk {
            FLOW_QUANTUM
        } else {
            quantum
        };
        let class = HtbClass {
            id,
            parent,
            assured,
            ceil: rate,
            burst: green,
            cburst: burst,
            prio,
            quantum: turn,
        };
        iproute::htb_class_line(verb, dev, &class)
    };
    let fifo = |id: u32, bytes: u64| iproute::bfifo_line(verb, dev, id, bytes);
    let mut commands = vec![
        class(ids.root, 0, rate, 0),
        class(ids.small, ids.root, small_rate, 0),
        class(ids.bulk, ids.root, bulk_rate, 1),
        fifo(ids.small, SMALL_QUEUE_BYTES),
    ];
    for id in ids.flow_classes() {
        commands.push(class(id, ids.bulk, flow_rate, 1));
        commands.push(fifo(id, flow_fifo));
    }
    commands
}

/// Sends what each interface receives through the ifb (once per interface).
fn redirect_interfaces(have: &[String]) -> Result<(), QueueError> {
    for dev in have.iter().filter(|n| is_pod_interface(n)) {
        if redirects_to_ifb(dev)? {
            continue;
        }
        // The ingress qdisc may be there already (ours from before, or
        // another tool's): our filter goes beside whatever it holds.
        let _ = iproute::add_ingress_qdisc(dev);
        iproute::add_redirect_all(dev, FILTER_PREF, IFB_NAME)?;
    }
    Ok(())
}

fn remove_here() -> Result<(), QueueError> {
    let have = interfaces()?;
    // Filters first: a redirect to a device that is gone drops packets.
    for dev in have.iter().filter(|n| is_pod_interface(n)) {
        if !redirects_to_ifb(dev)? {
            continue;
        }
        iproute::remove_ingress_filter(dev, FILTER_PREF)?;
    }
    if have.iter().any(|n| n == IFB_NAME) {
        iproute::delete_link(IFB_NAME)?;
    }
    shrink_windows(false);
    Ok(())
}

/// Whether an interface's received traffic is redirected to the queue. A
/// tc that fails is an error, never "no redirect": the removal would then
/// delete the ifb with the redirect still in place, and the redirect drops
/// every packet to a device that is gone (a test's failing tc found it).
fn redirects_to_ifb(dev: &str) -> Result<bool, QueueError> {
    if !iproute::has_ingress_qdisc(dev)? {
        return Ok(false);
    }
    Ok(iproute::ingress_filters(dev)?
        .iter()
        .any(|f| f.redirects_to(IFB_NAME)))
}

/// Interfaces whose received traffic goes through the queue: all but
/// loopback (the pod talking to itself) and the ifb. Names come from the
/// pod's namespace, so anything unusual is left alone rather than passed on.
pub(crate) fn is_pod_interface(name: &str) -> bool {
    name != "lo"
        && name != IFB_NAME
        && !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// The network interfaces of the calling thread's namespace.
pub(crate) fn interfaces() -> Result<Vec<String>, QueueError> {
    Ok(iproute::links()?
        .into_iter()
        .map(|(_, name)| name)
        .collect())
}

#[cfg(test)]
mod tests {
    use podshaper_rate::Rate;

    use super::*;

    #[test]
    fn leaves_odd_interface_names_alone() {
        assert!(is_pod_interface("eth0"));
        assert!(is_pod_interface("net1.100"));
        assert!(!is_pod_interface("lo"));
        assert!(!is_pod_interface(IFB_NAME));
        assert!(!is_pod_interface("-n"));
        assert!(!is_pod_interface("a b"));
        assert!(!is_pod_interface("x;y"));
    }

    #[test]
    fn a_flow_fifo_holds_10_ms_up_to_128_kib_but_2_ms_and_16_kib_at_least() {
        let limit = |s: &str| DirectionLimit::new(s.parse::<Rate>().expect("rate"), None);
        assert_eq!(flow_queue_bytes(&limit("10M")), 16 * 1024);
        assert_eq!(flow_queue_bytes(&limit("100M")), 125_000);
        assert_eq!(flow_queue_bytes(&limit("200M")), 128 * 1024);
        assert_eq!(flow_queue_bytes(&limit("1G")), 250_000);
        assert_eq!(flow_queue_bytes(&limit("5G")), 1_250_000);
    }

    #[test]
    fn a_flow_fifo_drops_beyond_32_ms_at_the_rate_4_depths_at_least_8_mib_at_most() {
        let limit = |s: &str| DirectionLimit::new(s.parse::<Rate>().expect("rate"), None);
        assert_eq!(flow_fifo_limit_bytes(&limit("10M")), 64 * 1024);
        assert_eq!(flow_fifo_limit_bytes(&limit("100M")), 500_000);
        assert_eq!(flow_fifo_limit_bytes(&limit("1G")), 4_000_000);
        assert_eq!(flow_fifo_limit_bytes(&limit("5G")), 8 << 20);
    }

    #[test]
    fn the_queue_bursts_a_quarter_of_the_limits_burst() {
        let root_class = |rate: &str| {
            let limit = DirectionLimit::new(rate.parse::<Rate>().expect("rate"), None);
            classes(Verb::Add, &limit).remove(0)
        };
        // 1G: 25 ms (3,125,000 bytes) / 4; 10M: the 128 KiB floor / 4
        assert!(root_class("1G").contains(" burst 781250 cburst 781250 "));
        assert!(root_class("10M").contains(" burst 32768 cburst 32768 "));
    }

    #[test]
    fn every_flow_class_has_a_fifo_under_the_bulk_class() {
        let limit = DirectionLimit::new("10M".parse::<Rate>().expect("rate"), None);
        let commands = classes(Verb::Add, &limit);
        assert_eq!(commands.len(), 4 + 2 * FLOW_QUEUES as usize);
        assert!(commands
            .iter()
            .any(|c| c.contains("parent 1:20 classid 1:100 ")));
        assert!(commands
            .iter()
            .any(|c| c.contains("parent 1:10f handle 10f: bfifo limit 65536")));
        // the root class hangs from the qdisc itself
        assert!(commands[0].contains("parent 1:0 classid 1:1 "));
    }

    #[test]
    fn reads_the_flow_filters_program_and_handle() {
        // iproute2 6.1's `tc -json filter show ... prio 3` of the filter the
        // queue gets (copied from this machine)
        let show = r#"[{"protocol":"all","kind":"bpf","chain":0},{"protocol":"all","kind":"bpf","chain":0,"options":{"handle":"0x1","bpf_name":"flow_class:[*fsobj]","not_in_hw":true,"prog":{"id":12386,"name":"podshaper_flow_","tag":"6da783f917437ba5","jited":1}}}]"#;
        assert_eq!(flow_filter(show), Some((12386, "0x1".to_string())));
        // nothing to replace: no filter, or output tc never prints
        assert_eq!(
            flow_filter(r#"[{"protocol":"all","kind":"bpf","chain":0}]"#),
            None
        );
        assert_eq!(
            flow_filter("filter protocol all bpf chain 0 handle 0x1 id 41"),
            None
        );
        assert_eq!(
            flow_filter(r#"[{"kind":"bpf","options":{"handle":"1;rm","prog":{"id":41}}}]"#),
            None
        );
    }
}
