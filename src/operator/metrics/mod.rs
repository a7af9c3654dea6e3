//! Prometheus metrics of the controller, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The backup a series belongs to. Its UID tells a deleted backup, whose
/// in-flight reconcile may still write, from a new one of the same name.
pub struct BackupId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl BackupId {
    pub fn of(obj: &impl kube::Resource) -> Self {
        BackupId {
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
            uid: obj.meta().uid.clone().unwrap_or_default(),
        }
    }

    fn label(&self) -> BackupLabel {
        BackupLabel {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// How long a deleted backup's UID is remembered: longer than any reconcile
/// that started before the deletion can still run.
const GONE_FOR: Duration = Duration::from_secs(600);

/// The backups that have series, and those deleted lately, by UID.
#[derive(Default)]
struct Known {
    live: HashSet<BackupLabel>,
    gone: HashMap<String, Instant>,
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
    /// Held while a backup's series are written or dropped, so that a
    /// deletion and a late write cannot interleave.
    known: Mutex<Known>,
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
            known: Mutex::default(),
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

    pub fn set_stale(&self, id: &BackupId, stale: bool) {
        self.write(id, |label| {
            self.stale.get_or_create(label).set(i64::from(stale));
        });
    }

    /// Writes a backup's series, unless it was deleted: a reconcile that
    /// started before the deletion must not bring them back.
    fn write(&self, id: &BackupId, write: impl FnOnce(&BackupLabel)) {
        let mut known = self.known.lock().unwrap();
        if known.gone.contains_key(&id.uid) {
            return;
        }
        let label = id.label();
        known.live.insert(label.clone());
        write(&label);
    }

    /// Drops the series of every backup `live` does not know (a deletion the
    /// watch missed leaves none for ever), and forgets old deletions.
    pub fn keep_only(&self, live: impl Fn(&str, &str) -> bool) {
        let mut known = self.known.lock().unwrap();
        known.gone.retain(|_, at| at.elapsed() < GONE_FOR);
        let dead: Vec<BackupLabel> = known
            .live
            .iter()
            .filter(|b| !live(&b.namespace, &b.name))
            .cloned()
            .collect();
        for label in dead {
            known.live.remove(&label);
            self.remove_series(&label);
        }
    }

    /// The last drill of a backup: its result and duration, and when a dump
    /// last passed (`verified_at`, seconds since the epoch, if one ever did).
    pub fn set_verification(
        &self,
        id: &BackupId,
        passed: bool,
        seconds: Option<i64>,
        verified_at: Option<i64>,
    ) {
        self.write(id, |label| {
            self.drill_passed
                .get_or_create(label)
                .set(i64::from(passed));
            if let Some(seconds) = seconds {
                self.drill_seconds.get_or_create(label).set(seconds);
            }
            if let Some(at) = verified_at {
                self.verified_at.get_or_create(label).set(at);
            }
        });
    }

    /// The last confirmed upload: when (seconds since the epoch) and its size.
    pub fn set_last_upload(&self, id: &BackupId, at: i64, bytes: Option<i64>) {
        self.write(id, |label| {
            self.uploaded_at.get_or_create(label).set(at);
            if let Some(bytes) = bytes {
                self.upload_bytes.get_or_create(label).set(bytes);
            }
        });
    }

    /// A finished pod of `step`: how long it ran, and whether it failed.
    pub fn step_finished(&self, id: &BackupId, step: &str, seconds: Option<i64>, failed: bool) {
        self.write(id, |backup| {
            let label = StepLabel {
                namespace: backup.namespace.clone(),
                name: backup.name.clone(),
                step: step.to_string(),
            };
            if let Some(seconds) = seconds {
                self.step_seconds.get_or_create(&label).set(seconds);
            }
            if failed {
                self.step_failures.get_or_create(&label).inc();
            }
        });
    }

    /// Drops a deleted backup's series, so that it is not reported stale for
    /// ever, and keeps them from coming back.
    pub fn forget_backup(&self, id: &BackupId) {
        let mut known = self.known.lock().unwrap();
        known.gone.insert(id.uid.clone(), Instant::now());
        let label = id.label();
        known.live.remove(&label);
        self.remove_series(&label);
    }

    fn remove_series(&self, label: &BackupLabel) {
        let (namespace, name) = (&label.namespace, &label.name);
        self.stale.remove(label);
        self.verified_at.remove(label);
        self.drill_seconds.remove(label);
        self.drill_passed.remove(label);
        self.uploaded_at.remove(label);
        self.upload_bytes.remove(label);
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
mod tests;
