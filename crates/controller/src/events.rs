//! Events on the pod: `BandwidthLimited` when a limit takes effect;
//! Warnings for an annotation that cannot be used (`InvalidBandwidth`), a
//! cgroup that has not appeared (`CgroupNotFound`) and limits the daemon
//! refused (`LimitRefused`). Published in the background, so an API server
//! that is slow or away never holds up the limits themselves; each Warning
//! is published once per cause, not every pass.

use std::collections::{HashMap, HashSet};
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
    /// Per pod UID, the invalid annotations already reported.
    reported: Mutex<HashMap<String, HashSet<Invalid>>>,
    /// Per pod UID, the other causes already reported.
    warned: Mutex<HashMap<String, HashSet<Cause>>>,
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
            reported: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashMap::new()),
        }
    }

    pub fn limited(&self, pod: &ObjectReference, limits: &Enforced) {
        let note = format!(
            "egress {}, ingress {}",
            describe(limits.egress),
            describe(limits.ingress)
        );
        self.publish(pod, EventType::Normal, BANDWIDTH_LIMITED, "Limit", note);
    }

    /// Reports `invalid` for the pod unless it was reported already.
    pub fn invalid(&self, uid: &str, pod: &ObjectReference, invalid: &Invalid) {
        let fresh = match self.reported.lock() {
            Ok(mut r) => r
                .entry(uid.to_string())
                .or_default()
                .insert(invalid.clone()),
            Err(_) => true,
        };
        if !fresh {
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
        if !self.fresh(uid, Cause::CgroupNotFound) {
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
        if !self.fresh(uid, Cause::Refused(reason.to_string())) {
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
        if let Ok(mut w) = self.warned.lock() {
            if let Some(set) = w.get_mut(uid) {
                set.retain(|c| !cause(c));
            }
        }
    }

    /// Whether `cause` is new for the pod (and remembers it).
    fn fresh(&self, uid: &str, cause: Cause) -> bool {
        match self.warned.lock() {
            Ok(mut w) => w.entry(uid.to_string()).or_default().insert(cause),
            Err(_) => true,
        }
    }

    /// Forgets what was reported for pods that are not in `live`.
    pub fn retain(&self, live: &HashSet<String>) {
        if let Ok(mut r) = self.reported.lock() {
            r.retain(|uid, _| live.contains(uid));
        }
        if let Ok(mut w) = self.warned.lock() {
            w.retain(|uid, _| live.contains(uid));
        }
    }

    /// Forgets a pod's reports whose annotation no longer has that value.
    pub fn retain_current(&self, uid: &str, current: &[&Invalid]) {
        if let Ok(mut r) = self.reported.lock() {
            if let Some(set) = r.get_mut(uid) {
                set.retain(|i| current.contains(&i));
            }
        }
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
