//! Leader election with a coordination.k8s.io Lease, so that of several
//! replicas exactly one reconciles. The Lease's resourceVersion makes every
//! takeover and renewal a compare-and-swap. Whether another holder's lease
//! ran out is judged by this replica's own clock, from when it last saw the
//! lease change (as client-go does), never by comparing its clock with the
//! holder's `renewTime`: clocks of two nodes may differ by more than a lease.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observed: Mutex<Observed>,
}

/// The lease record as last read, and when (by this replica's clock) it was
/// first read so.
#[derive(Default)]
struct Observed {
    last: Option<(LeaseSpec, Instant)>,
}

impl Observed {
    /// Takes the record read at `now`; returns how long it has not changed.
    fn see(&mut self, record: &LeaseSpec, now: Instant) -> Duration {
        match &self.last {
            Some((seen, since)) if seen == record => now.saturating_duration_since(*since),
            _ => {
                self.last = Some((record.clone(), now));
                Duration::ZERO
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: Mutex::new(Observed::default()),
        }
    }

    /// Takes the lease if it is free or expired, or renews it if ours.
    /// Returns whether we hold it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let seconds = self.duration.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(&self.identity);
        let held_for =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(1) as u64);
        let unchanged = self.observed.lock().unwrap().see(spec, Instant::now());
        let expired = unchanged >= held_for;
        if !ours && !expired && spec.holder_identity.is_some() {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(seconds);
        // replace carries the resourceVersion we read: a concurrent writer makes it fail.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the lease; returns when the request
    /// that took it was sent (the lease runs from no later than that).
    pub async fn acquire(&self) -> Instant {
        loop {
            let attempt = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return attempt;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot take the lease"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// How long a leader may go without a renewal before it stops: two
    /// thirds of the lease, so that it stops before any other replica may
    /// take the lease (client-go's 10 s of 15 s).
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// Renews the lease taken at `acquired` until it is lost or cannot be
    /// renewed within the renew deadline; returns then. After a success the
    /// next renewal is a third of the lease away; after a failure it is
    /// retried sooner, as client-go does, so one error costs no leadership.
    /// A renewal that hangs counts as failed once the deadline passes, so a
    /// leader cut off from the apiserver stops before a follower takes over.
    pub async fn hold(&self, acquired: Instant) {
        let retry = (self.duration / 15).max(Duration::from_millis(200));
        let mut renewed = acquired;
        let mut wait = self.duration / 3;
        loop {
            tokio::time::sleep(wait).await;
            // Counted from before the request: the lease says no later.
            let attempt = Instant::now();
            let left = self.renew_deadline().saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    renewed = attempt;
                    wait = self.duration / 3;
                    continue;
                }
                Ok(Ok(false)) => {
                    warn!(lease = %self.name, "lost the lease to another replica");
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "cannot renew the lease"),
                Err(_) => warn!(lease = %self.name, "the lease renewal hangs"),
            }
            if renewed.elapsed() >= self.renew_deadline() {
                warn!(lease = %self.name, "no renewal within the renew deadline");
                return;
            }
            wait = retry.min(self.renew_deadline().saturating_sub(renewed.elapsed()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed_at_second: i64) -> LeaseSpec {
        let at = k8s_openapi::jiff::Timestamp::from_second(renewed_at_second).unwrap();
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(at)),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    /// A renewTime hours behind this replica's clock (a leader whose clock
    /// lags) counts from when this replica first saw it, not from its value;
    /// each renewal the leader writes starts the count again.
    #[test]
    fn a_lease_runs_out_by_the_observers_clock_from_its_last_change() {
        let mut o = Observed::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let hours_ago = k8s_openapi::jiff::Timestamp::now().as_second() - 7200;
        assert_eq!(o.see(&record("a", hours_ago), t0), Duration::ZERO);
        assert_eq!(
            o.see(&record("a", hours_ago), at(10)),
            Duration::from_secs(10)
        );
        assert_eq!(o.see(&record("a", hours_ago + 10), at(10)), Duration::ZERO);
        assert_eq!(
            o.see(&record("a", hours_ago + 10), at(24)),
            Duration::from_secs(14)
        );
        assert_eq!(
            o.see(&record("a", hours_ago + 10), at(25)),
            Duration::from_secs(15)
        );
        // Another holder is a change too.
        assert_eq!(o.see(&record("b", hours_ago + 10), at(26)), Duration::ZERO);
    }
}
