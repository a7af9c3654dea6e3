//! The operator: watches DatabaseBackups and DatabaseRestores and reconciles
//! each into its children and status.

pub mod apiserver;
pub mod applied;
pub mod backup;
pub mod checks;
pub mod conditions;
pub mod egress;
mod exposure;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod pod;
pub(crate) mod refused;
mod requests;
pub mod restore;
pub mod results;
pub mod server;

use crate::api::{DatabaseBackup, DatabaseRestore};
use crate::{names, reasons};
use apiserver::{api, labelled_owner, log_controller_error, watch};
use checks::{CheckError, Problem};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, LimitRange, PersistentVolumeClaim, Pod};
use kube::api::PartialObjectMeta;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::{Instrument, info, info_span};

/// Reconciles in flight at once. Unbounded, a start with thousands of
/// resources holds all their requests at once, and the allocator keeps that
/// peak as resident memory for good.
const CONCURRENCY: u16 = 16;

/// Operator-wide settings that shape the children.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of this operator, which runs the upload and fetch steps and
    /// brings our binary into the database's image.
    pub uploader_image: String,
    /// Internal networks notifications may still go to.
    pub notify_allowed: egress::Allowed,
    /// The resources a LimitRange governs in the namespace of the objects
    /// being built (`Context::settings_in`): our default requests leave them.
    pub limit_ranged: std::collections::BTreeSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource itself needs fixing; retried with backoff so it heals by itself
    /// once, say, the missing Secret appears.
    #[error(transparent)]
    Invalid(#[from] Problem),
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot apply {kind} {name:?}: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    /// The resource changed after the reconcile read it: reconciled again.
    #[error("the resource changed since it was read")]
    Stale,
}

impl From<CheckError> for Error {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Problem(p) => Error::Invalid(p),
            CheckError::Kube(k) => Error::Kube(k),
        }
    }
}

impl Error {
    /// Label for the failure metric, and the Ready reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Invalid(p) => p.reason,
            Error::Kube(_) => reasons::API_ERROR,
            Error::Apply { .. } => reasons::APPLY_FAILED,
            Error::Stale => reasons::STALE_READ,
        }
    }
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Our children, and the Jobs and Pods of our CronJobs, kept current by
    /// the watches `run` drives.
    pub(crate) pods: Store<Pod>,
    pub(crate) jobs: Store<Job>,
    pub(crate) cronjobs: Store<PartialObjectMeta<CronJob>>,
    pub(crate) pvcs: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    /// Jobs' `FailedCreate` Events: pods the API server refused (`refused`).
    pub(crate) refusals: Store<Event>,
    pub(crate) limit_ranges: Store<LimitRange>,
    writers: Mutex<Option<Writers>>,
    pub(crate) reporter: Reporter,
    /// Delivers notifications off the reconcile path.
    pub(crate) notifier: Arc<notify::Notifier>,
    /// Consecutive failures per resource, for exponential backoff.
    pub(crate) failures: Mutex<HashMap<ObjectRef<DatabaseBackup>, u32>>,
    pub(crate) restore_failures: Mutex<HashMap<ObjectRef<DatabaseRestore>, u32>>,
    /// The age key each restore across namespaces has its URLs sealed to,
    /// by restore UID, until they are read.
    pub(crate) locate_keys: Mutex<HashMap<String, age::x25519::Identity>>,
}

impl Context {
    /// The settings for the children of `owner`, in its namespace.
    pub(crate) fn settings_for(&self, owner: &impl ResourceExt) -> Settings {
        self.settings_in(&owner.namespace().unwrap_or_default())
    }

    /// The settings for objects in namespace `ns`: with the resources its
    /// LimitRanges govern.
    pub(crate) fn settings_in(&self, ns: &str) -> Settings {
        let ranges = self.limit_ranges.state();
        let here = ranges
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(ns));
        Settings {
            limit_ranged: requests::governed_by(here.map(|r| &**r)),
            ..self.settings.clone()
        }
    }
}

struct Writers {
    pods: Writer<Pod>,
    jobs: Writer<Job>,
    cronjobs: Writer<PartialObjectMeta<CronJob>>,
    pvcs: Writer<PartialObjectMeta<PersistentVolumeClaim>>,
    refusals: Writer<Event>,
    limit_ranges: Writer<LimitRange>,
    /// Backups whose notification outcome changed, to reconcile.
    notified: Option<futures::channel::mpsc::UnboundedReceiver<ObjectRef<DatabaseBackup>>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let (pods, pod_writer) = reflector::store_shared(1024);
        let (jobs, job_writer) = reflector::store_shared(1024);
        // Looked up by name only; their events reach the controller through
        // `owns`, which, unlike a shared store's subscription, also sees deletions.
        // Metadata only: whether a child is ours, unchanged, shows there (see
        // `applied`), and whole CronJobs were most of the operator's memory.
        let (cronjobs, cronjob_writer) = reflector::store();
        let (pvcs, pvc_writer) = reflector::store();
        let (refusals, refusal_writer) = reflector::store_shared(256);
        let (limit_ranges, limit_range_writer) = reflector::store();
        let (notifier, notified) =
            notify::Notifier::new(notify::Retry::default(), settings.notify_allowed.clone());
        Context {
            client,
            settings,
            metrics,
            pods,
            jobs,
            cronjobs,
            pvcs,
            refusals,
            limit_ranges,
            writers: Mutex::new(Some(Writers {
                pods: pod_writer,
                jobs: job_writer,
                cronjobs: cronjob_writer,
                pvcs: pvc_writer,
                refusals: refusal_writer,
                limit_ranges: limit_range_writer,
                notified: Some(notified),
            })),
            reporter: Reporter {
                controller: names::MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
            notifier,
            failures: Mutex::new(HashMap::new()),
            restore_failures: Mutex::new(HashMap::new()),
            locate_keys: Mutex::new(HashMap::new()),
        }
    }
}

/// Runs both controllers until shutdown. They share the caches of our Pods
/// and Jobs, and start once every cache holds its first list.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let ns = namespace.as_deref();
    let mut writers = ctx
        .writers
        .lock()
        .unwrap()
        .take()
        .expect("a Context runs one controller");
    let notified = writers.notified.take().expect("taken once");
    let backups = backup_controller(&ctx, ns, &writers, notified);
    let restores = restore_controller(&ctx, ns, &writers);
    let caches = drive_caches(&ctx.client, ns, writers);
    // Results count only once every cache holds its first list, so a restart
    // never mistakes a not-yet-listed pod for a gone one. The wait is here, once:
    // awaited inside concurrent reconciles, a second waiter was seen never to wake.
    let stores = (
        ctx.pods.clone(),
        ctx.jobs.clone(),
        ctx.cronjobs.clone(),
        ctx.pvcs.clone(),
        ctx.limit_ranges.clone(),
    );
    let controllers = async move {
        let _ = stores.0.wait_until_ready().await;
        let _ = stores.1.wait_until_ready().await;
        let _ = stores.2.wait_until_ready().await;
        let _ = stores.3.wait_until_ready().await;
        // Else the first reconciles would build pods without knowing them.
        let _ = stores.4.wait_until_ready().await;
        futures::future::join(backups, restores).await
    };
    // The caches live exactly as long as the controllers.
    tokio::select! {
        _ = controllers => {}
        _ = caches => {}
    }
    info!("controller stopped");
}

/// Only the children we manage: our Pods, Jobs, CronJobs and PVCs.
fn ours() -> watcher::Config {
    watcher::Config::default().labels(&format!("{}={}", names::LABEL_MANAGED_BY, names::MANAGER))
}

/// Each cache driven by its own watch, so that the controllers can wait for
/// all first lists.
async fn drive_caches(client: &Client, ns: Option<&str>, writers: Writers) {
    let children = ours();
    // Not awaited before the controllers start: refusals only add a condition.
    let refusals = drive(
        "FailedCreate events",
        watch(api::<Event>(client, ns), &refused::failed_create()).reflect_shared(writers.refusals),
    );
    let limit_ranges = drive(
        "limit ranges",
        watch(api::<LimitRange>(client, ns), &Default::default()).reflect(writers.limit_ranges),
    );
    let children = futures::future::join4(
        watch(api::<Pod>(client, ns), &children)
            .reflect_shared(writers.pods)
            .for_each(|_| async {}),
        watch(api::<Job>(client, ns), &children)
            .reflect_shared(writers.jobs)
            .for_each(|_| async {}),
        watch(api::<PartialObjectMeta<CronJob>>(client, ns), &children)
            .reflect(writers.cronjobs)
            .for_each(|_| async {}),
        watch(
            api::<PartialObjectMeta<PersistentVolumeClaim>>(client, ns),
            &children,
        )
        .reflect(writers.pvcs)
        .for_each(|_| async {}),
    );
    futures::future::join3(children, refusals, limit_ranges).await;
}

/// Drives a cache's watch, saying why it fails (RBAC, say), which would
/// otherwise leave the cache empty without a word.
async fn drive<T>(
    what: &'static str,
    watch: impl futures::Stream<Item = Result<T, watcher::Error>>,
) {
    watch
        .for_each(|event| async move {
            if let Err(e) = event {
                tracing::warn!(cache = what, error = %e, "watch failed, retrying");
            }
        })
        .await
}

fn backup_controller(
    ctx: &Arc<Context>,
    ns: Option<&str>,
    writers: &Writers,
    notified: futures::channel::mpsc::UnboundedReceiver<ObjectRef<DatabaseBackup>>,
) -> impl Future<Output = ()> + use<> {
    let client = &ctx.client;
    // Status writes bump resourceVersion but not generation; reconciling on them
    // would only redo work. Annotations pass, for the "back up now" trigger.
    let (reader, writer) = reflector::store();
    let metrics = ctx.metrics.clone();
    let notifier = ctx.notifier.clone();
    let triggers = watch(
        api::<DatabaseBackup>(client, ns),
        &watcher::Config::default(),
    )
    .reflect(writer)
    .inspect(move |event| {
        if let Ok(watcher::Event::Delete(db)) = event {
            metrics.forget_backup(&metrics::BackupId::of(db));
            notifier.forget(&ObjectRef::from_obj(db));
        }
    })
    .applied_objects()
    .predicate_filter(
        predicates::generation.combine(predicates::annotations),
        Default::default(),
    );
    fn to_backup<K: Resource>(obj: Arc<K>) -> Option<ObjectRef<DatabaseBackup>> {
        labelled_owner(&*obj, names::LABEL_BACKUP)
    }
    let jobs = ctx.jobs.clone();
    let refused_backup =
        move |e: Arc<Event>| labelled_owner(&*refused_job(&jobs, &e)?, names::LABEL_BACKUP);
    let sweep = sweep_forgotten(reader.clone(), ctx.metrics.clone(), ctx.notifier.clone());
    // Pods and Jobs of our CronJobs map back to their DatabaseBackup by label.
    let controller = Controller::for_stream(triggers, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .owns(api::<PartialObjectMeta<CronJob>>(client, ns), ours())
        .owns(api::<PartialObjectMeta<PersistentVolumeClaim>>(client, ns), ours())
        .watches_shared_stream(writers.pods.subscribe().expect("a shared store"), to_backup::<Pod>)
        .watches_shared_stream(writers.jobs.subscribe().expect("a shared store"), to_backup::<Job>)
        .watches_shared_stream(writers.refusals.subscribe().expect("a shared store"), refused_backup)
        .reconcile_on(notified)
        .shutdown_on_signal()
        .run(
            |db, ctx| {
                let span = info_span!("reconcile", namespace = db.namespace().unwrap_or_default(), name = %db.name_any());
                backup::reconcile(db, ctx).instrument(span)
            },
            backup::error_policy,
            ctx.clone(),
        )
        .for_each(log_controller_error);
    async move {
        futures::pin_mut!(controller, sweep);
        futures::future::select(controller, sweep).await;
    }
}

/// How often the state kept per backup outside the cluster (metrics,
/// notification targets) is checked against the backups that exist.
const SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Drops the metrics and notification state of backups that are gone, which
/// a Delete event missed across a watch restart (or a reconcile that wrote
/// after it) would leave for ever.
async fn sweep_forgotten(
    backups: reflector::Store<DatabaseBackup>,
    metrics: Arc<metrics::Metrics>,
    notifier: Arc<notify::Notifier>,
) {
    let _ = backups.wait_until_ready().await;
    loop {
        tokio::time::sleep(SWEEP).await;
        let live: std::collections::HashSet<ObjectRef<DatabaseBackup>> = backups
            .state()
            .iter()
            .map(|b| ObjectRef::from_obj(&**b))
            .collect();
        metrics.keep_only(|ns, name| live.contains(&ObjectRef::new(name).within(ns)));
        notifier.keep_only(|key| live.contains(key));
    }
}

fn restore_controller(
    ctx: &Arc<Context>,
    ns: Option<&str>,
    writers: &Writers,
) -> impl Future<Output = ()> + use<> {
    fn to_restore<K: Resource>(obj: Arc<K>) -> Option<ObjectRef<DatabaseRestore>> {
        labelled_owner(&*obj, names::LABEL_RESTORE)
    }
    let jobs = ctx.jobs.clone();
    let refused_restore =
        move |e: Arc<Event>| labelled_owner(&*refused_job(&jobs, &e)?, names::LABEL_RESTORE);
    Controller::new(api::<DatabaseRestore>(&ctx.client, ns), Default::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .watches_shared_stream(writers.jobs.subscribe().expect("a shared store"), to_restore::<Job>)
        .watches_shared_stream(writers.pods.subscribe().expect("a shared store"), to_restore::<Pod>)
        .watches_shared_stream(writers.refusals.subscribe().expect("a shared store"), refused_restore)
        .shutdown_on_signal()
        .run(
            |r, ctx| {
                let span = info_span!("restore", namespace = r.namespace().unwrap_or_default(), name = %r.name_any());
                restore::reconcile(r, ctx).instrument(span)
            },
            restore::error_policy,
            ctx.clone(),
        )
        .for_each(log_controller_error)
}

/// The Job of ours an Event of a refused pod is about.
fn refused_job(jobs: &Store<Job>, event: &Event) -> Option<Arc<Job>> {
    let o = &event.involved_object;
    let job = jobs.get(&ObjectRef::new(o.name.as_deref()?).within(o.namespace.as_deref()?))?;
    (job.metadata.uid == o.uid).then_some(job)
}
