//! Cluster mode's answer to two controllers fighting: a coordination.k8s.io
//! Lease. Only the holder reconciles; the others keep their watch warm and
//! take over when the holder stops renewing. Writes go through the API
//! server's optimistic concurrency (the Lease's resourceVersion), so two
//! candidates can never both win the same term.
//!
//! Node mode needs none of this: each node's controller owns only its node.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This controller's name in the Lease (its pod name, or host name).
    pub identity: String,
    pub duration: Duration,
}

/// Whether this controller holds the lease, and until when.
pub struct Leadership {
    config: LeaseConfig,
    api: Api<Lease>,
    /// Leader until this instant (a margin before the lease runs out).
    until: Mutex<Option<Instant>>,
}

impl Leadership {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            until: Mutex::new(None),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.until
            .lock()
            .map(|u| u.is_some_and(|u| Instant::now() < u))
            .unwrap_or(false)
    }

    /// Tries to acquire or renew the lease every third of its duration.
    pub async fn keep(&self) {
        loop {
            let started = Instant::now();
            let was = self.is_leader();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    if let Ok(mut u) = self.until.lock() {
                        // Step down well before others may take over.
                        *u = Some(started + self.config.duration * 2 / 3);
                    }
                    if !was {
                        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "leading");
                    }
                }
                Ok(false) => {
                    if let Ok(mut u) = self.until.lock() {
                        *u = None;
                    }
                    if was {
                        tracing::warn!(lease = %self.config.name, "lost the lease");
                    }
                }
                // Keep `until` as it is: leadership runs out by itself.
                Err(e) => {
                    tracing::warn!(lease = %self.config.name, error = %e, "cannot renew the lease")
                }
            }
            tokio::time::sleep(self.config.duration / 3).await;
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = &self.config.identity;
        let seconds = i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let current = self.api.get_opt(&self.config.name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != *me {
            let held_for = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(seconds),
            ));
            let expired = spec
                .renew_time
                .as_ref()
                .is_none_or(|t| t.0 + held_for < now);
            if !holder.is_empty() && !expired {
                return Ok(false);
            }
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        // resourceVersion is kept from the read: a concurrent writer makes this fail.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
