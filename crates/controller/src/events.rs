//! Events on the pod: `BandwidthLimited` when a limit takes effect,
//! `InvalidBandwidth` for an annotation that cannot be used. Published in the
//! background, so an API server that is slow or away never holds up the
//! limits themselves; an invalid value is reported once, not every resync.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use podshaper_rate::{human_decimal, MAX_RATE_BITS, MIN_RATE_BITS};

use crate::annotations::Invalid;
use crate::plan::Enforced;

pub const BANDWIDTH_LIMITED: &str = "BandwidthLimited";
pub const INVALID_BANDWIDTH: &str = "InvalidBandwidth";

pub struct Events {
    client: kube::Client,
    reporter: Reporter,
    /// Per pod UID, the invalid annotations already reported.
    reported: Mutex<HashMap<String, HashSet<Invalid>>>,
}

impl Events {
    pub fn new(client: kube::Client, instance: String) -> Self {
        let reporter = Reporter {
            controller: "podshaper".into(),
            instance: Some(instance),
        };
        Self {
            client,
            reporter,
            reported: Mutex::new(HashMap::new()),
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

    /// Forgets what was reported for pods that are not in `live`.
    pub fn retain(&self, live: &HashSet<String>) {
        if let Ok(mut r) = self.reported.lock() {
            r.retain(|uid, _| live.contains(uid));
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
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &pod).await {
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
