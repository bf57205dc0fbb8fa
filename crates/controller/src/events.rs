//! Events on the pod: `BandwidthLimited` when a limit takes effect;
//! Warnings for an annotation that cannot be used (`InvalidBandwidth`), a
//! cgroup that has not appeared (`CgroupNotFound`) and limits the daemon
//! refused (`LimitRefused`). Published in the background, so an API server
//! that is slow or away never holds up the limits themselves; each Warning
//! is published once per cause, not every pass.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use podshaper_rate::{human_decimal, MAX_RATE_BITS, MIN_RATE_BITS};

use crate::annotations::Invalid;
use crate::metrics::{ErrorKind, Metrics};
use crate::plan::Enforced;

pub const BANDWIDTH_LIMITED: &str = "BandwidthLimited";
pub const INVALID_BANDWIDTH: &str = "InvalidBandwidth";
pub const CGROUP_NOT_FOUND: &str = "CgroupNotFound";
pub const LIMIT_REFUSED: &str = "LimitRefused";

pub struct Events {
    client: kube::Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    /// The invalid annotations already reported.
    reported: Reported<Invalid>,
    /// The other causes already reported.
    warned: Reported<Cause>,
}

/// Per pod UID, the causes already reported: each is published once while
/// it lasts.
struct Reported<K>(Mutex<HashMap<String, HashSet<K>>>);

impl<K: Eq + Hash> Reported<K> {
    fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    /// Whether `cause` is new for the pod (and remembers it).
    fn fresh(&self, uid: &str, cause: K) -> bool {
        match self.0.lock() {
            Ok(mut r) => r.entry(uid.to_string()).or_default().insert(cause),
            Err(_) => true,
        }
    }

    /// Keeps the pod's causes for which `keep` holds: the others are over,
    /// and reported again should they return.
    fn keep(&self, uid: &str, keep: impl Fn(&K) -> bool) {
        if let Ok(mut r) = self.0.lock() {
            if let Some(set) = r.get_mut(uid) {
                set.retain(|c| keep(c));
            }
        }
    }

    /// Forgets pods that are not in `live`.
    fn retain(&self, live: &HashSet<String>) {
        if let Ok(mut r) = self.0.lock() {
            r.retain(|uid, _| live.contains(uid));
        }
    }
}

/// A Warning's cause, reported once while it lasts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cause {
    /// the pod's cgroup has not appeared
    CgroupNotFound,
    /// the daemon refused the limits, with this message
    Refused(String),
}

impl Events {
    pub fn new(client: kube::Client, instance: String, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: "podshaper".into(),
            instance: Some(instance),
        };
        Self {
            client,
            reporter,
            metrics,
            reported: Reported::new(),
            warned: Reported::new(),
        }
    }

    /// `origin` says where the limits come from (the pod's annotations or
    /// a BandwidthPolicy).
    pub fn limited(&self, pod: &ObjectReference, limits: &Enforced, origin: &str) {
        let note = format!(
            "egress {}, ingress {} ({origin})",
            describe(limits.egress),
            describe(limits.ingress)
        );
        self.publish(pod, EventType::Normal, BANDWIDTH_LIMITED, "Limit", note);
    }

    /// Reports `invalid` for the pod unless it was reported already.
    pub fn invalid(&self, uid: &str, pod: &ObjectReference, invalid: &Invalid) {
        if !self.reported.fresh(uid, invalid.clone()) {
            return;
        }
        tracing::warn!(pod = ?pod.name, %invalid, "invalid bandwidth annotation; the limit in force stays");
        let note = format!(
            "{invalid} (accepted: rates {} to {} bit/s, bursts 4Ki to 1Gi bytes); \
             the limit in force, if any, stays",
            human_decimal(MIN_RATE_BITS),
            human_decimal(MAX_RATE_BITS)
        );
        self.publish(pod, EventType::Warning, INVALID_BANDWIDTH, "Validate", note);
    }

    /// Reports that the pod's cgroup has not appeared after `waited`,
    /// naming where the kubelet makes it, unless that was reported already.
    pub fn cgroup_not_found(
        &self,
        uid: &str,
        pod: &ObjectReference,
        waited: Duration,
        expected: &[String],
    ) {
        if !self.warned.fresh(uid, Cause::CgroupNotFound) {
            return;
        }
        tracing::warn!(pod = ?pod.name, waited_s = waited.as_secs(), ?expected, "the pod's cgroup has not appeared; its limits are held until it does");
        let note = format!(
            "no cgroup for the pod after {} s: its limits are held until the kubelet makes {} \
             (below the kubelet's cgroup root; the daemon attaches them the moment it appears)",
            waited.as_secs(),
            expected.join(" or ")
        );
        self.publish(pod, EventType::Warning, CGROUP_NOT_FOUND, "Attach", note);
    }

    /// Reports that the daemon refused the pod's limits, with its reason,
    /// unless that reason was reported already.
    pub fn refused(&self, uid: &str, pod: &ObjectReference, limits: &Enforced, reason: &str) {
        if !self.warned.fresh(uid, Cause::Refused(reason.to_string())) {
            return;
        }
        let note = format!(
            "the node's daemon refused egress {}, ingress {}: {reason}",
            describe(limits.egress),
            describe(limits.ingress)
        );
        self.publish(pod, EventType::Warning, LIMIT_REFUSED, "Attach", note);
    }

    /// The cause is over (the cgroup appeared, the limits were taken): a
    /// later return of it is reported again.
    pub fn resolved(&self, uid: &str, cause: impl Fn(&Cause) -> bool) {
        self.warned.keep(uid, |c| !cause(c));
    }

    /// Forgets what was reported for pods that are not in `live`.
    pub fn retain(&self, live: &HashSet<String>) {
        self.reported.retain(live);
        self.warned.retain(live);
    }

    /// Forgets a pod's reports whose annotation no longer has that value.
    pub fn retain_current(&self, uid: &str, current: &[&Invalid]) {
        self.reported.keep(uid, |i| current.contains(&i));
    }

    fn publish(
        &self,
        pod: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        // A recorder of its own: kube's would fold a new limit into the
        // series of the previous BandwidthLimited event, keeping its old note.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let pod = pod.clone();
        let metrics = self.metrics.clone();
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &pod).await {
                metrics.error(ErrorKind::Event);
                tracing::warn!(pod = ?pod.name, reason = %event.reason, error = %e, "cannot publish event");
            }
        });
    }
}

fn describe(d: Option<podshaper_api::pb::DirectionLimit>) -> String {
    match d {
        None => "unlimited".into(),
        Some(d) => format!(
            "{}bit/s (burst {} bytes)",
            human_decimal(d.bits_per_second),
            d.burst_bytes
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_reported_once_while_it_lasts() {
        let r: Reported<Cause> = Reported::new();
        assert!(r.fresh("a", Cause::CgroupNotFound));
        assert!(!r.fresh("a", Cause::CgroupNotFound), "a second pass");
        assert!(r.fresh("b", Cause::CgroupNotFound), "another pod");
        assert!(r.fresh("a", Cause::Refused("nested".into())));
        assert!(
            r.fresh("a", Cause::Refused("outside".into())),
            "another reason"
        );
        assert!(!r.fresh("a", Cause::Refused("nested".into())));
        // the cgroup appeared: the refusals stay reported
        r.keep("a", |c| *c != Cause::CgroupNotFound);
        assert!(!r.fresh("a", Cause::Refused("nested".into())));
        assert!(r.fresh("a", Cause::CgroupNotFound), "it returned");
    }

    #[test]
    fn a_gone_pod_is_forgotten() {
        let r: Reported<Cause> = Reported::new();
        assert!(r.fresh("a", Cause::CgroupNotFound));
        assert!(r.fresh("b", Cause::CgroupNotFound));
        r.retain(&HashSet::from(["b".to_string()]));
        assert!(r.fresh("a", Cause::CgroupNotFound));
        assert!(!r.fresh("b", Cause::CgroupNotFound));
    }
}
