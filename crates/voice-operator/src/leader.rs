//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas are safe: only the
//! holder reconciles; the other waits, ready, and takes over when the Lease expires.
//!
//! The protocol is client-go's: read the Lease; take it if it is free, ours, or expired
//! (`renewTime + leaseDurationSeconds` in the past), writing with the read `resourceVersion`
//! so that two candidates cannot both win; renew every `lease_duration / 3`, retrying a failed
//! renewal every `lease_duration / 15`; give up leadership (and stop reconciling) when no
//! renewal succeeds within the renew deadline, two thirds of `lease_duration`. A standby takes
//! the Lease only once `lease_duration` has passed since the last renewal, so the old leader
//! has stopped a third of the lease duration before (15 s lease: 10 s deadline, 5 s margin,
//! as client-go's defaults).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

/// A candidate for leadership.
#[derive(Clone, Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

impl Elector {
    /// A candidate `identity` for the Lease `namespace/name`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
        }
    }

    /// Waits until this candidate holds the Lease; returns when the winning request was sent,
    /// which is when the Lease's `renewTime` says it was renewed.
    pub async fn acquire(&self) -> Instant {
        loop {
            let sent = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => return sent,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "leader election: cannot read or write the Lease")
                }
            }
            tokio::time::sleep(self.lease_duration / 5).await;
        }
    }

    /// Renews the Lease (acquired at `renewed`) until leadership is lost: another replica took
    /// it, or no renewal succeeded within the renew deadline ([`renew_deadline`]). A renewal
    /// that hangs is cut off at that deadline. Returns as soon as leadership is lost, a third
    /// of the lease duration before a standby may take the Lease over.
    pub async fn hold(&self, mut renewed: Instant) {
        let deadline = renew_deadline(self.lease_duration);
        let mut wait = self.lease_duration / 3;
        loop {
            tokio::time::sleep(wait).await;
            let sent = Instant::now();
            let Some(budget) = renewal_budget(renewed, sent, deadline) else {
                tracing::error!(lease = %self.name, "leader election: no renewal within the renew deadline");
                return;
            };
            match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    renewed = sent;
                    wait = self.lease_duration / 3;
                    continue;
                }
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.name, "leader election: another replica took the Lease");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election: renewal failed"),
                Err(_) => tracing::warn!("leader election: renewal timed out"),
            }
            // A failed renewal is retried sooner, while the deadline allows.
            wait = self.lease_duration / 15;
        }
    }

    /// Gives the Lease up (on graceful shutdown), so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(mut lease) = self.api.get(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(&self.identity) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                if let Err(e) = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    tracing::warn!(error = %e, "leader election: could not release the Lease");
                }
            }
        }
    }

    /// One round of the protocol: `Ok(true)` when we hold the Lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let secs = i32::try_from(self.lease_duration.as_secs()).unwrap_or(15);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
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
        let ours = spec.holder_identity.as_deref() == Some(&self.identity);
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(t)), Some(d)) => {
                now.as_millisecond() > t.as_millisecond() + i64::from(d) * 1000
            }
            _ => true,
        };
        if !(ours || free || expired) {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(secs);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// How long after its last successful renewal a leader gives up: two thirds of the lease
/// duration (client-go's defaults: 10 s of 15 s), so it stops before a standby may take over.
pub fn renew_deadline(lease_duration: Duration) -> Duration {
    lease_duration * 2 / 3
}

/// How long a renewal sent at `now` may take, when the last successful one was sent at
/// `renewed`: until the renew deadline; `None` once that has passed (leadership is lost).
pub fn renewal_budget(renewed: Instant, now: Instant, deadline: Duration) -> Option<Duration> {
    (renewed + deadline)
        .checked_duration_since(now)
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_stops_a_third_of_the_lease_before_a_standby_may_take_it() {
        let lease = Duration::from_secs(15);
        assert_eq!(renew_deadline(lease), Duration::from_secs(10));
        let renewed = Instant::now();
        let deadline = renew_deadline(lease);
        let at = |s| renewed + Duration::from_secs(s);
        assert_eq!(
            renewal_budget(renewed, at(5), deadline),
            Some(Duration::from_secs(5)),
            "a renewal at 5 s may take until 10 s"
        );
        assert_eq!(
            renewal_budget(renewed, at(9), deadline),
            Some(Duration::from_secs(1))
        );
        assert_eq!(renewal_budget(renewed, at(10), deadline), None);
        assert_eq!(renewal_budget(renewed, at(20), deadline), None);
    }
}
