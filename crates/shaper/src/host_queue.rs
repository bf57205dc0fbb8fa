//! The node's ingress queue for hostNetwork pods.
//!
//! A pod with a network namespace of its own gets a queue inside it
//! (crate::ingress_queue). A hostNetwork pod shares the node's namespace and
//! interfaces, so that queue cannot be built for it, and the cgroup policer
//! alone makes its TCP senders resend 13-70% of what they send and shares
//! its rate unevenly among its flows (docs/design/ingress.md). So, when the daemon
//! is asked to (`--host-ingress-queue`), the node's namespace gets one queue
//! for all of them:
//!
//! ```text
//! every interface of the node's namespace (lo too):
//!     tc qdisc ingress; bpf podshaper_host_class, action mirred egress
//!     redirect dev podshaper-host
//! podshaper-host: htb root 1:, stab overhead -14; per limited pod, at slot s
//!     (classes offset by s x HOST_SLOT_STRIDE), the classes of a pod's own
//!     queue: the limit, small packets, bulk and 16 per-flow FIFOs
//! ```
//!
//! The classifier (bpf/shaper.c) finds the socket each TCP or UDP packet is
//! for, and the limited cgroup above it; packets for any other socket (the
//! node's own traffic, forwarded traffic) do not match and go on as before,
//! having paid for one socket lookup. The filters are there only while at
//! least one hostNetwork pod has an ingress limit.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use aya::programs::ProgramInfo;

pub use crate::iproute::Interface;

use crate::abi::{HOST_SLOT_STRIDE, QUEUE_MAJOR};
use crate::ingress_queue::{is_pod_interface, queue_classes, ClassIds, QueueError};
use crate::iproute::{self, Verb};
use crate::limits::DirectionLimit;
use crate::netns;
use crate::tc_json::Filter;

/// The ifb device in the node's namespace.
pub const HOST_IFB_NAME: &str = "podshaper-host";
/// Preference of the classifying filter on each interface's ingress (a
/// pod's own queue uses 49, in the pod's namespace).
const FILTER_PREF: &str = "48";

/// The htb classes of the pod at `slot`.
fn slot_classes(slot: u32) -> ClassIds {
    ClassIds::offset(slot * HOST_SLOT_STRIDE)
}

/// Puts (or changes, live) the classes of the pod at `slot` in the node's
/// queue in `ns`, building the queue first if it is not there, and has
/// every interface of `ns` not in `redirected` classify what it receives
/// (adding them to it). `classifier` is where the host classifier is
/// pinned ([`crate::Shaper::pin_host_classifier`]).
pub fn install(
    ns: &File,
    slot: u32,
    limit: &DirectionLimit,
    classifier: &Path,
    redirected: &mut HashSet<Interface>,
) -> Result<(), QueueError> {
    let classifier = classifier_path(classifier)?;
    netns::run_in(ns, || -> Result<(), QueueError> {
        let mut have = interfaces()?;
        if !has_ifb(&have) {
            build_ifb()?;
            redirected.clear();
            have = interfaces()?;
        }
        let ids = slot_classes(slot);
        let classes = |verb| queue_classes(HOST_IFB_NAME, &ids, verb, limit);
        if !has_class(ids.root)? {
            iproute::batch(&classes(Verb::Add))?;
        } else if iproute::batch(&classes(Verb::Change)).is_err() {
            // not as we build them (changed by hand, half made): afresh
            delete_classes(&ids);
            iproute::batch(&classes(Verb::Add))?;
        }
        redirect_here(&have, classifier.0, classifier.1, redirected)
    })
    .map_err(QueueError::Enter)?
}

/// Has every interface of `ns` not in `redirected` classify what it
/// receives (interfaces come and go with the pods on the node): a sweep.
pub fn redirect_interfaces(
    ns: &File,
    classifier: &Path,
    redirected: &mut HashSet<Interface>,
) -> Result<(), QueueError> {
    let classifier = classifier_path(classifier)?;
    netns::run_in(ns, || {
        let have = interfaces()?;
        if !has_ifb(&have) {
            // nothing to redirect to: the next install builds it
            redirected.clear();
            return Ok(());
        }
        redirect_here(&have, classifier.0, classifier.1, redirected)
    })
    .map_err(QueueError::Enter)?
}

/// Removes the node's queue from `ns` whatever its slots; true if it was
/// there.
pub fn remove_all(ns: &File) -> Result<bool, QueueError> {
    let there = netns::run_in(ns, || interfaces().map(|have| has_ifb(&have)))
        .map_err(QueueError::Enter)??;
    if there {
        remove(ns, 0, true)?;
    }
    Ok(there)
}

/// Takes the classes of the pod at `slot` out of the node's queue in `ns`;
/// with `last`, the whole queue: the filters first (a redirect to a device
/// that is gone drops packets), then the ifb.
pub fn remove(ns: &File, slot: u32, last: bool) -> Result<(), QueueError> {
    netns::run_in(ns, || -> Result<(), QueueError> {
        let have = interfaces()?;
        if !has_ifb(&have) {
            return Ok(());
        }
        if last {
            for (_, dev) in have {
                if classifies(&dev)?.is_none() {
                    continue;
                }
                // the ingress qdisc too, if ours was its only filter
                iproute::remove_ingress_filter(&dev, FILTER_PREF)?;
            }
            return iproute::delete_link(HOST_IFB_NAME);
        }
        let ids = slot_classes(slot);
        delete_classes(&ids);
        if has_class(ids.root)? {
            return Err(QueueError::Command {
                command: format!(
                    "tc class del dev {HOST_IFB_NAME} classid {QUEUE_MAJOR:x}:{:x}",
                    ids.root
                ),
                stderr: "the pod's classes are still there".into(),
            });
        }
        Ok(())
    })
    .map_err(QueueError::Enter)?
}

/// The pin path as tc takes it, and the pinned program's id (None if it
/// cannot be read: filters of another program are then left as they are).
fn classifier_path(pin: &Path) -> Result<(&str, Option<u32>), QueueError> {
    let path = pin
        .to_str()
        .filter(|p| !p.is_empty() && !p.contains(char::is_whitespace))
        .ok_or_else(|| QueueError::ClassifierPath(pin.display().to_string()))?;
    // read here: a pin is in bpffs, which entering the namespace leaves alone
    let id = ProgramInfo::from_pin(pin).map(|info| info.id()).ok();
    Ok((path, id))
}

/// Whether the node's queue has the class `minor`.
fn has_class(minor: u32) -> Result<bool, QueueError> {
    iproute::has_class(HOST_IFB_NAME, minor)
}

fn has_ifb(have: &[Interface]) -> bool {
    have.iter().any(|(_, n)| n == HOST_IFB_NAME)
}

fn build_ifb() -> Result<(), QueueError> {
    iproute::add_ifb(HOST_IFB_NAME)?;
    let built = iproute::set_up(HOST_IFB_NAME).and_then(|()| {
        // IP bytes, as the cgroup programs count them. No default class:
        // only classified packets come here, each with its class.
        iproute::add_htb_root(HOST_IFB_NAME, None)
    });
    if let Err(e) = built {
        let _ = iproute::delete_link(HOST_IFB_NAME);
        return Err(e);
    }
    Ok(())
}

/// Deletes a pod's classes, leaves first (htb keeps a class with
/// children); classes that are not there are no error.
fn delete_classes(ids: &ClassIds) {
    let leaves = ids.flow_classes().chain([ids.small, ids.bulk, ids.root]);
    for id in leaves {
        let _ = iproute::delete_class(HOST_IFB_NAME, id);
    }
}

fn redirect_here(
    have: &[Interface],
    classifier: &str,
    pinned: Option<u32>,
    redirected: &mut HashSet<Interface>,
) -> Result<(), QueueError> {
    redirected.retain(|i| have.contains(i));
    for interface in have.iter().cloned() {
        let dev = &interface.1;
        if dev == HOST_IFB_NAME || redirected.contains(&interface) {
            continue;
        }
        // loopback too: a hostNetwork pod's peers on the node reach it there
        if dev != "lo" && !is_pod_interface(dev) {
            continue;
        }
        match classifies(dev)? {
            // an older daemon's program (tc holds the one a filter was
            // built with): this one's takes over, in one replace
            Some(Some((id, handle))) if pinned.is_some_and(|p| p != id) => {
                iproute::replace_classified_redirect(
                    dev,
                    FILTER_PREF,
                    &handle,
                    classifier,
                    HOST_IFB_NAME,
                )?;
            }
            Some(_) => {}
            None => {
                // the ingress qdisc may be there already (another tool's):
                // our filter goes beside whatever it holds
                let _ = iproute::add_ingress_qdisc(dev);
                iproute::add_classified_redirect(dev, FILTER_PREF, classifier, HOST_IFB_NAME)?;
            }
        }
        redirected.insert(interface);
    }
    Ok(())
}

/// Whether an interface's ingress has our filter, and if so its program id
/// and handle (None if `tc -json` does not show them). A tc that fails is
/// an error, never "no filter" (see ingress_queue's `redirects_to_ifb`).
#[allow(clippy::type_complexity)]
fn classifies(dev: &str) -> Result<Option<Option<(u32, String)>>, QueueError> {
    if !iproute::has_ingress_qdisc(dev)? {
        return Ok(None);
    }
    let filters = iproute::ingress_filters_at(dev, FILTER_PREF)?;
    if !filters.iter().any(|f| f.redirects_to(HOST_IFB_NAME)) {
        return Ok(None);
    }
    Ok(Some(filters.iter().find_map(Filter::bpf_program)))
}

/// The interfaces of the calling thread's namespace, with their indexes
/// (a name can come back on another interface, as veths of pods do).
fn interfaces() -> Result<Vec<Interface>, QueueError> {
    iproute::links()
}

#[cfg(test)]
mod tests {
    use podshaper_rate::Rate;

    use super::*;
    use crate::abi::HOST_SLOTS;

    #[test]
    fn each_slot_has_classes_of_its_own_within_16_bits() {
        let first = slot_classes(1);
        assert_eq!((first.root, first.small, first.bulk), (0x201, 0x210, 0x220));
        assert_eq!(first.flow_classes().next(), Some(0x300));
        let last = slot_classes(HOST_SLOTS);
        assert_eq!(last.flow_classes().last(), Some(0xff0f));
        // slot 0 would be a pod's own queue's ids, which the node's never has
        let limit = DirectionLimit::new("10M".parse::<Rate>().expect("rate"), None);
        let commands = queue_classes(HOST_IFB_NAME, &slot_classes(2), Verb::Add, &limit);
        assert!(commands[0].contains("parent 1:0 classid 1:401 "));
        assert!(commands
            .iter()
            .any(|c| c.contains("parent 1:420 classid 1:500 ")));
    }
}
