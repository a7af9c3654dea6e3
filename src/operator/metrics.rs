//! Prometheus metrics of the controller, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackupLabel {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub namespace: String,
    pub name: String,
    pub step: String,
}

pub struct Metrics {
    pub registry: Registry,
    reconciles: Counter,
    failures: Family<ReasonLabel, Counter>,
    duration: Histogram,
    stale: Family<BackupLabel, Gauge>,
    requests: Family<VerbLabel, Counter>,
    verified_at: Family<BackupLabel, Gauge>,
    drill_seconds: Family<BackupLabel, Gauge>,
    drill_passed: Family<BackupLabel, Gauge>,
    uploaded_at: Family<BackupLabel, Gauge>,
    upload_bytes: Family<BackupLabel, Gauge>,
    step_seconds: Family<StepLabel, Gauge>,
    step_failures: Family<StepLabel, Counter>,
    /// The backups that have series, for `keep_only`.
    backups: Mutex<HashSet<BackupLabel>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dbbackup");
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            duration.clone(),
        );
        let stale = Family::<BackupLabel, Gauge>::default();
        registry.register(
            "backup_stale",
            "1 while a scheduled dump run of a DatabaseBackup, plus its grace, passed without a new upload",
            stale.clone(),
        );
        let requests = Family::<VerbLabel, Counter>::default();
        registry.register(
            "kube_requests",
            "Requests the operator sent to the Kubernetes API, by HTTP method",
            requests.clone(),
        );
        let verified_at = Family::<BackupLabel, Gauge>::default();
        registry.register(
            "last_verified_timestamp_seconds",
            "When the newest dump that passed its restore drill was verified (absent before the first)",
            verified_at.clone(),
        );
        let drill_seconds = Family::<BackupLabel, Gauge>::default();
        registry.register(
            "verify_duration_seconds",
            "How long the last restore drill took",
            drill_seconds.clone(),
        );
        let drill_passed = Family::<BackupLabel, Gauge>::default();
        registry.register(
            "verify_passed",
            "1 when the last restore drill passed, 0 when it failed",
            drill_passed.clone(),
        );
        let uploaded_at = Family::<BackupLabel, Gauge>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When the last confirmed upload of a DatabaseBackup finished (absent before the first)",
            uploaded_at.clone(),
        );
        let upload_bytes = Family::<BackupLabel, Gauge>::default();
        registry.register(
            "last_upload_bytes",
            "Size of the last confirmed upload",
            upload_bytes.clone(),
        );
        let step_seconds = Family::<StepLabel, Gauge>::default();
        registry.register(
            "step_duration_seconds",
            "How long the last finished pod of a step (dump, upload) ran",
            step_seconds.clone(),
        );
        let step_failures = Family::<StepLabel, Counter>::default();
        registry.register(
            "step_failures",
            "Pods of a step (dump, upload, verify) that failed",
            step_failures.clone(),
        );
        Metrics {
            registry,
            uploaded_at,
            upload_bytes,
            step_seconds,
            step_failures,
            reconciles,
            failures,
            duration,
            stale,
            requests,
            verified_at,
            drill_seconds,
            drill_passed,
            backups: Mutex::new(HashSet::new()),
        }
    }
}

/// Records a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.duration,
        }
    }

    pub fn reconcile_failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one request to the Kubernetes API (watches count once, when opened).
    pub fn kube_request(&self, method: &http::Method) {
        self.requests
            .get_or_create(&VerbLabel {
                verb: method.as_str().to_string(),
            })
            .inc();
    }

    /// Requests that change something: every method but GET (watches included).
    pub fn kube_writes(&self) -> u64 {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|verb| {
                self.requests
                    .get_or_create(&VerbLabel {
                        verb: verb.to_string(),
                    })
                    .get()
            })
            .sum()
    }

    pub fn set_stale(&self, namespace: &str, name: &str, stale: bool) {
        self.stale
            .get_or_create(&self.backup(namespace, name))
            .set(i64::from(stale));
    }

    /// The label of a backup's series, which now has some.
    fn backup(&self, namespace: &str, name: &str) -> BackupLabel {
        let label = BackupLabel {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.backups.lock().unwrap().insert(label.clone());
        label
    }

    /// Drops the series of every backup `live` does not know: a deletion the
    /// watch missed, or a reconcile that wrote after it, leaves none for ever.
    pub fn keep_only(&self, live: impl Fn(&str, &str) -> bool) {
        let known: Vec<BackupLabel> = self.backups.lock().unwrap().iter().cloned().collect();
        for b in known.iter().filter(|b| !live(&b.namespace, &b.name)) {
            self.forget_backup(&b.namespace, &b.name);
        }
    }

    /// The last drill of a backup: its result and duration, and when a dump
    /// last passed (`verified_at`, seconds since the epoch, if one ever did).
    pub fn set_verification(
        &self,
        namespace: &str,
        name: &str,
        passed: bool,
        seconds: Option<i64>,
        verified_at: Option<i64>,
    ) {
        let label = self.backup(namespace, name);
        self.drill_passed
            .get_or_create(&label)
            .set(i64::from(passed));
        if let Some(seconds) = seconds {
            self.drill_seconds.get_or_create(&label).set(seconds);
        }
        if let Some(at) = verified_at {
            self.verified_at.get_or_create(&label).set(at);
        }
    }

    /// The last confirmed upload: when (seconds since the epoch) and its size.
    pub fn set_last_upload(&self, namespace: &str, name: &str, at: i64, bytes: Option<i64>) {
        let label = self.backup(namespace, name);
        self.uploaded_at.get_or_create(&label).set(at);
        if let Some(bytes) = bytes {
            self.upload_bytes.get_or_create(&label).set(bytes);
        }
    }

    /// A finished pod of `step`: how long it ran, and whether it failed.
    pub fn step_finished(
        &self,
        namespace: &str,
        name: &str,
        step: &str,
        seconds: Option<i64>,
        failed: bool,
    ) {
        self.backup(namespace, name);
        let label = StepLabel {
            namespace: namespace.to_string(),
            name: name.to_string(),
            step: step.to_string(),
        };
        if let Some(seconds) = seconds {
            self.step_seconds.get_or_create(&label).set(seconds);
        }
        if failed {
            self.step_failures.get_or_create(&label).inc();
        }
    }

    /// Drops a deleted backup's series, so that it is not reported stale for ever.
    pub fn forget_backup(&self, namespace: &str, name: &str) {
        let label = BackupLabel {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.backups.lock().unwrap().remove(&label);
        self.stale.remove(&label);
        self.verified_at.remove(&label);
        self.drill_seconds.remove(&label);
        self.drill_passed.remove(&label);
        self.uploaded_at.remove(&label);
        self.upload_bytes.remove(&label);
        for step in ["dump", "upload", "verify"] {
            let label = StepLabel {
                namespace: namespace.to_string(),
                name: name.to_string(),
                step: step.to_string(),
            };
            self.step_seconds.remove(&label);
            self.step_failures.remove(&label);
        }
    }

    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }

    pub fn failures(&self, reason: &str) -> u64 {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    /// The text exposition format, as served on /metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// `client`, with every request it sends counted in `metrics`, so that "an
/// idle resync writes nothing" can be read from /metrics.
pub fn counting_client(client: kube::Client, metrics: std::sync::Arc<Metrics>) -> kube::Client {
    let namespace = client.default_namespace().to_string();
    let counted = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        metrics.kube_request(req.method());
        let client = client.clone();
        async move { client.send(req).await }
    });
    kube::client::ClientBuilder::new(counted, namespace).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup whose deletion was missed loses its series at the next sweep;
    /// a live one keeps them.
    #[test]
    fn a_sweep_drops_the_series_of_backups_that_are_gone() {
        let m = Metrics::default();
        for name in ["gone", "live"] {
            m.set_stale("shop", name, true);
            m.set_last_upload("shop", name, 1_764_039_600, Some(10));
            m.step_finished("shop", name, "dump", Some(3), true);
        }
        m.keep_only(|ns, name| (ns, name) == ("shop", "live"));
        let text = m.encode();
        assert!(!text.contains(r#"name="gone""#), "{text}");
        assert!(
            text.contains(r#"dbbackup_backup_stale{namespace="shop",name="live"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"dbbackup_step_failures_total{namespace="shop",name="live",step="dump"} 1"#
            ),
            "{text}"
        );
    }
}
