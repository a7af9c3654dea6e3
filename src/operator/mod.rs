//! The reconcile loop: spec → children (server-side apply) → status.

pub mod applied;
pub mod checks;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod restore;
pub mod server;
pub mod status;

use crate::api::{DatabaseBackup, DatabaseRestore};
use crate::jobresult::{Outcome, Step};
use crate::names;
use crate::operator::metrics::Metrics;
use checks::{CheckError, Problem};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use resources::Settings;
use serde::Serialize;
use serde::de::DeserializeOwned;
use status::{Note, Observed, PodReport, READY};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{Instrument, info, info_span, warn};

/// The one field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "dbbackup-operator";

/// How often a healthy resource is looked at again without any event.
const RESYNC: Duration = Duration::from_secs(15 * 60);
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Reconciles in flight at once. Unbounded, a start with thousands of
/// resources holds all their requests at once, and the allocator keeps that
/// peak as resident memory for good.
const CONCURRENCY: u16 = 16;

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
    pub fn reason(&self) -> &str {
        match self {
            Error::Invalid(p) => p.reason,
            Error::Kube(_) => "APIError",
            Error::Apply { .. } => "ApplyFailed",
        }
    }
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Our children, and the Jobs and Pods of our CronJobs, kept current by
    /// the watches `run` drives.
    pods: Store<Pod>,
    jobs: Store<Job>,
    cronjobs: Store<PartialObjectMeta<CronJob>>,
    pvcs: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    writers: Mutex<Option<Writers>>,
    reporter: Reporter,
    /// Consecutive failures per resource, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<DatabaseBackup>, u32>>,
    pub(crate) restore_failures: Mutex<HashMap<ObjectRef<DatabaseRestore>, u32>>,
}

struct Writers {
    pods: Writer<Pod>,
    jobs: Writer<Job>,
    cronjobs: Writer<PartialObjectMeta<CronJob>>,
    pvcs: Writer<PartialObjectMeta<PersistentVolumeClaim>>,
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
        Context {
            client,
            settings,
            metrics,
            pods,
            jobs,
            cronjobs,
            pvcs,
            writers: Mutex::new(Some(Writers {
                pods: pod_writer,
                jobs: job_writer,
                cronjobs: cronjob_writer,
                pvcs: pvc_writer,
            })),
            reporter: Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
            failures: Mutex::new(HashMap::new()),
            restore_failures: Mutex::new(HashMap::new()),
        }
    }

    async fn publish<K>(&self, obj: &K, type_: EventType, reason: &str, note: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }
}

/// Exponential backoff: 2s, 4s, 8s … capped at 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(BACKOFF_MAX)
}

/// Server-side applies `obj`, unless the child's cached metadata shows that it
/// holds `obj` unchanged. Returns the child: the apiserver's answer, or `obj`
/// with the live metadata. `counts_generations`: the kind raises
/// `metadata.generation` on spec changes (CronJobs do, PVCs do not).
async fn apply<K>(
    api: Api<K>,
    obj: &K,
    cache: &Store<PartialObjectMeta<K>>,
    counts_generations: bool,
) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut desired = serde_json::to_value(obj).expect("a child serializes");
    applied::stamp(&mut desired);
    let key = ObjectRef::new(&name).within(obj.meta().namespace.as_deref().unwrap_or_default());
    match cache.get(&key) {
        Some(live) if applied::unchanged(&live.metadata, &desired) => {
            let mut child = obj.clone();
            *child.meta_mut() = live.metadata.clone();
            return Ok(child);
        }
        Some(_) => {}
        // A child we create starts at generation 1; recording that in the
        // same request saves a second write per child on a first rollout.
        None if counts_generations => applied::record_first_generation(&mut desired),
        None => {}
    }
    let failed = |source| Error::Apply {
        kind: K::kind(&Default::default()).to_string(),
        name: name.clone(),
        source,
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let child = api
        .patch(&name, &params, &Patch::Apply(&desired))
        .await
        .map_err(failed)?;
    match applied::generation_record(child.meta()) {
        None => Ok(child),
        // A metadata change leaves the generation as it is.
        Some(record) => api
            .patch(
                &name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&record),
            )
            .await
            .map_err(failed),
    }
}

/// The applied CronJobs, as the apiserver returned them.
struct Children {
    dump: CronJob,
    upload: CronJob,
}

async fn apply_children(db: &DatabaseBackup, ctx: &Context) -> Result<Children, Error> {
    let ns = db.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    apply(pvcs, &resources::staging_pvc(db), &ctx.pvcs, false).await?;
    Ok(Children {
        dump: apply(
            cronjobs.clone(),
            &resources::dump_cronjob(db, &ctx.settings),
            &ctx.cronjobs,
            true,
        )
        .await?,
        upload: apply(
            cronjobs,
            &resources::upload_cronjob(db, &ctx.settings),
            &ctx.cronjobs,
            true,
        )
        .await?,
    })
}

/// Creates a Job from a CronJob's template; one that already exists is fine.
async fn start_job(ctx: &Context, cronjob: &CronJob, run: &str) -> Result<(), Error> {
    let job = resources::job_from_cronjob(cronjob, run);
    let jobs: Api<Job> =
        Api::namespaced(ctx.client.clone(), &cronjob.namespace().unwrap_or_default());
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => {
            info!(job = %job.name_any(), "started job");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// The resource a Pod or Job of ours belongs to: named by its `label`, in its namespace.
pub(crate) fn labelled_owner<K, O>(obj: &K, label: &str) -> Option<ObjectRef<O>>
where
    K: Resource,
    O: Resource<DynamicType = ()>,
{
    let name = obj.labels().get(label)?;
    Some(ObjectRef::new(name).within(&obj.namespace()?))
}

/// Finished pods and failed Jobs of this backup, from the operator's caches,
/// and the UIDs of all of them that still exist.
fn reports(db: &DatabaseBackup, ctx: &Context, tz: chrono_tz::Tz) -> (Vec<PodReport>, Vec<String>) {
    let key = Some(ObjectRef::from_obj(db));
    let pods: Vec<_> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| labelled_owner(&**p, resources::LABEL_BACKUP) == key)
        .collect();
    let jobs: Vec<_> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| labelled_owner(&**j, resources::LABEL_BACKUP) == key)
        .collect();
    let present = pods
        .iter()
        .filter_map(|p| p.uid())
        .chain(jobs.iter().filter_map(|j| j.uid()))
        .collect();
    // A pod stopped because its Job ran out of time reports the deadline, not
    // the signal that stopped it.
    let deadline_exceeded: HashMap<String, String> = jobs
        .iter()
        .filter(|j| status::deadline_exceeded(j))
        .filter_map(|j| {
            let seconds = j.spec.as_ref()?.active_deadline_seconds?;
            Some((
                j.uid()?,
                format!("job failed: DeadlineExceeded (activeDeadlineSeconds {seconds})"),
            ))
        })
        .collect();
    let reports = pods
        .iter()
        .filter_map(|p| status::pod_report(p, tz))
        .map(|mut r| {
            let cause = r.job.as_ref().and_then(|j| deadline_exceeded.get(j));
            if let (Some(cause), false) = (cause, r.result.outcome == Outcome::Succeeded) {
                r.result = status::failure(r.step, &r.finished, tz, cause);
            }
            r
        })
        .chain(jobs.iter().filter_map(|j| status::job_report(j, tz)))
        .collect();
    (reports, present)
}

/// Whether an upload pod of this backup started after the dump pod `dump`
/// ended: it took whatever dump was staged, so that dump needs no upload of
/// its own (a dump finished while the operator was down, then an upload).
/// Both times come from the kubelet of the dump's node, so only upload pods
/// on that node count, and only strictly later seconds: when in doubt, chain.
fn upload_started_since(db: &DatabaseBackup, ctx: &Context, dump: &str, ended: &Time) -> bool {
    let key = Some(ObjectRef::from_obj(db));
    let pods = ctx.pods.state();
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let Some(dump_node) = pods
        .iter()
        .find(|p| p.uid().as_deref() == Some(dump))
        .and_then(|p| node(p))
    else {
        return false;
    };
    let started = |p: &Pod| {
        let state = p
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .state
            .as_ref()?;
        state
            .running
            .as_ref()
            .and_then(|r| r.started_at.clone())
            .or_else(|| state.terminated.as_ref()?.started_at.clone())
    };
    pods.iter().any(|p| {
        labelled_owner(&**p, resources::LABEL_BACKUP) == key
            && p.labels().get(resources::LABEL_STEP).map(String::as_str)
                == Some(resources::Step::Upload.as_str())
            && node(p).as_ref() == Some(&dump_node)
            && started(p).is_some_and(|t| t.0.as_second() > ended.0.as_second())
    })
}

/// Pods of this backup that cannot start, as the conditions of their steps.
fn stuck_pods(db: &DatabaseBackup, ctx: &Context) -> Vec<(&'static str, Observed)> {
    let key = Some(ObjectRef::from_obj(db));
    ctx.pods
        .state()
        .iter()
        .filter(|p| labelled_owner(&***p, resources::LABEL_BACKUP) == key)
        .filter_map(|p| status::stuck(p))
        .collect()
}

async fn reconcile(db: Arc<DatabaseBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let outcome = async {
        checks::validate_spec(&db)?;
        checks::check_references(&db, &ctx.client).await?;
        apply_children(&db, &ctx).await
    }
    .await;

    let generation = db.metadata.generation;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let tz: chrono_tz::Tz = db.spec.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let old = db.status.clone().unwrap_or_default();
    let mut new = old.clone();
    new.observed_generation = generation;
    let ready = match &outcome {
        Ok(_) => Observed::new(READY, true, "Reconciled", "children are up to date"),
        Err(Error::Invalid(p)) => Observed::new(READY, false, p.reason, p.message.clone()),
        Err(e) => Observed::new(READY, false, e.reason(), e.to_string()),
    };
    status::set_condition(&mut new.conditions, &ready, generation, &now);

    let mut notes = vec![];
    let (reports, present) = reports(&db, &ctx, tz);
    if let Ok(children) = &outcome {
        let token = db.annotations().get(resources::RUN_NOW_ANNOTATION);
        if let Some(token) = token.filter(|t| new.last_run_now.as_ref() != Some(*t)) {
            start_job(&ctx, &children.dump, &names::run_now_id(token)).await?;
            new.last_run_now = Some(token.clone());
            notes.push(Note {
                warning: false,
                reason: "BackupRequested",
                message: format!("started a dump for run-now request {token:?}"),
            });
        }
        // No dump waits for the upload schedule: each success starts its
        // upload (one per Job, even if the Job ran a second pod). The upload
        // CronJob stays as the retry and the original pipeline's poller.
        for r in &reports {
            let chained = r.step == Step::Dump
                && r.result.outcome == Outcome::Succeeded
                && !new.processed_pods.contains(&r.uid)
                && !upload_started_since(&db, &ctx, &r.uid, &r.finished);
            if chained {
                let run = r
                    .run_now
                    .clone()
                    .unwrap_or_else(|| names::run_now_id(r.job.as_deref().unwrap_or(&r.uid)));
                start_job(&ctx, &children.upload, &run).await?;
            }
        }
    }
    notes.extend(status::record_reports(
        &mut new, reports, &present, generation, &now,
    ));
    for (reason, stuck) in stuck_pods(&db, &ctx) {
        let known = status::find(&new.conditions, stuck.type_)
            .is_some_and(|c| status::says_stuck(c, &stuck));
        if !known {
            notes.push(Note {
                warning: true,
                reason,
                message: stuck.message.clone(),
            });
            status::set_condition(&mut new.conditions, &stuck, generation, &now);
        }
    }

    let mut recheck = RESYNC;
    if let Ok(schedule) = checks::parse_schedule(&db.spec.schedule) {
        let jobs = &db.spec.jobs;
        let max_run = chrono::Duration::seconds(
            jobs.starting_deadline_seconds + 2 * jobs.active_deadline_seconds,
        );
        let (stale, due) = status::staleness(
            &schedule,
            tz,
            max_run,
            new.last_upload_time.as_ref(),
            db.metadata.creation_timestamp.as_ref(),
            chrono::Utc::now(),
        );
        let was_stale =
            status::find(&old.conditions, status::STALE).is_some_and(|c| c.status == "True");
        if stale.status && !was_stale {
            notes.push(Note {
                warning: true,
                reason: "BackupStale",
                message: stale.message.clone(),
            });
        }
        status::set_condition(&mut new.conditions, &stale, generation, &now);
        ctx.metrics.set_stale(
            &db.namespace().unwrap_or_default(),
            &db.name_any(),
            stale.status,
        );
        if let Some(due) = due {
            recheck = recheck.min(due + Duration::from_secs(1));
        }
    }

    if new != old {
        write_status(&*db, &ctx, &new).await?;
        let was = status::find(&old.conditions, READY);
        if was.is_none_or(|c| c.reason != ready.reason || (c.status == "True") != ready.status) {
            notes.push(Note {
                warning: !ready.status,
                reason: if ready.status {
                    "Reconciled"
                } else {
                    "NotReady"
                },
                message: if ready.status {
                    ready.message.clone()
                } else {
                    format!("{}: {}", ready.reason, ready.message)
                },
            });
        }
        for note in &notes {
            let type_ = if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let reason = if note.reason == "NotReady" {
                ready.reason.as_str()
            } else {
                note.reason
            };
            ctx.publish(&*db, type_, reason, &note.message).await;
        }
    }

    let key = ObjectRef::from_obj(&*db);
    match outcome {
        Ok(_) => {
            ctx.failures.lock().unwrap().remove(&key);
            Ok(Action::requeue(recheck))
        }
        Err(e) => Err(e),
    }
}

/// Writes `status` through the status subresource of `obj`, with our field manager.
async fn write_status<K>(obj: &K, ctx: &Context, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Counts the failure and requeues with backoff by the resource's consecutive failures.
fn backoff_after<K>(
    obj: &K,
    error: &Error,
    ctx: &Context,
    failures: &Mutex<HashMap<ObjectRef<K>, u32>>,
) -> Action
where
    K: Resource<DynamicType = ()>,
{
    ctx.metrics.reconcile_failed(error.reason());
    let mut failures = failures.lock().unwrap();
    let attempt = failures.entry(ObjectRef::from_obj(obj)).or_insert(0);
    *attempt += 1;
    let delay = backoff(*attempt);
    warn!(kind = %K::kind(&()), name = %obj.name_any(), namespace = ?obj.namespace(), reason = error.reason(), %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn error_policy(db: Arc<DatabaseBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_after(&*db, error, &ctx, &ctx.failures)
}

/// Logs what a controller's stream yields other than a reconcile error
/// (those are logged by the error policies).
async fn log_controller_error<K, E>(
    result: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E, watcher::Error>>,
) where
    K: Resource,
    E: std::error::Error + 'static,
{
    match result {
        Ok(_) | Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
        Err(other) => warn!(error = %other, "controller error"),
    }
}

/// Where the controller looks: the whole cluster, or one namespace.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The objects `config` selects, without their managedFields, which the
/// operator never reads and which would double the memory of its caches.
fn watch<K>(
    api: Api<K>,
    config: &watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(api, config.clone())
        .default_backoff()
        .modify(|obj| obj.managed_fields_mut().clear())
}

/// Runs the controller until the stream ends (shutdown).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let backups = api::<DatabaseBackup>(&client, ns);
    let children = watcher::Config::default().labels(&format!(
        "{}={}",
        resources::LABEL_MANAGED_BY,
        resources::MANAGED_BY
    ));

    // Status writes bump resourceVersion but not generation; reconciling on them
    // would only redo work. Annotations pass, for the "back up now" trigger.
    let (reader, writer) = reflector::store();
    let metrics = ctx.metrics.clone();
    let triggers = watch(backups, &watcher::Config::default())
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(db)) = event {
                metrics.forget_backup(&db.namespace().unwrap_or_default(), &db.name_any());
            }
        })
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            Default::default(),
        );

    // Our children, and the Pods and Jobs of our CronJobs (mapped back to their
    // DatabaseBackup by label). Each cache is driven by its own watch, so that
    // the controller can start once all have their first list.
    let writers = ctx
        .writers
        .lock()
        .unwrap()
        .take()
        .expect("a Context runs one controller");
    let pod_events = writers.pods.subscribe().expect("a shared store");
    let job_events = writers.jobs.subscribe().expect("a shared store");
    let restore_pod_events = writers.pods.subscribe().expect("a shared store");
    let restore_job_events = writers.jobs.subscribe().expect("a shared store");
    let caches = futures::future::join4(
        watch(api::<Pod>(&client, ns), &children)
            .reflect_shared(writers.pods)
            .for_each(|_| async {}),
        watch(api::<Job>(&client, ns), &children)
            .reflect_shared(writers.jobs)
            .for_each(|_| async {}),
        watch(api::<PartialObjectMeta<CronJob>>(&client, ns), &children)
            .reflect(writers.cronjobs)
            .for_each(|_| async {}),
        watch(
            api::<PartialObjectMeta<PersistentVolumeClaim>>(&client, ns),
            &children,
        )
        .reflect(writers.pvcs)
        .for_each(|_| async {}),
    );
    fn to_backup<K: Resource>(obj: Arc<K>) -> Option<ObjectRef<DatabaseBackup>> {
        labelled_owner(&*obj, resources::LABEL_BACKUP)
    }

    // Results count only once both caches hold their first list, so a restart
    // never mistakes a not-yet-listed pod for a gone one. The wait is here, once:
    // awaited inside concurrent reconciles, a second waiter was seen never to wake.
    let stores = (
        ctx.pods.clone(),
        ctx.jobs.clone(),
        ctx.cronjobs.clone(),
        ctx.pvcs.clone(),
    );
    let ready = async move {
        let _ = stores.0.wait_until_ready().await;
        let _ = stores.1.wait_until_ready().await;
        let _ = stores.2.wait_until_ready().await;
        let _ = stores.3.wait_until_ready().await;
    };
    let controller = Controller::for_stream(triggers, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .owns(api::<PartialObjectMeta<CronJob>>(&client, ns), children.clone())
        .owns(api::<PartialObjectMeta<PersistentVolumeClaim>>(&client, ns), children)
        .watches_shared_stream(pod_events, to_backup::<Pod>)
        .watches_shared_stream(job_events, to_backup::<Job>)
        .shutdown_on_signal()
        .run(
            |db, ctx| {
                let span = info_span!("reconcile", namespace = db.namespace().unwrap_or_default(), name = %db.name_any());
                reconcile(db, ctx).instrument(span)
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(log_controller_error);
    fn to_restore<K: Resource>(obj: Arc<K>) -> Option<ObjectRef<DatabaseRestore>> {
        labelled_owner(&*obj, restore::LABEL_RESTORE)
    }
    let restores = Controller::new(api::<DatabaseRestore>(&client, ns), Default::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .watches_shared_stream(restore_job_events, to_restore::<Job>)
        .watches_shared_stream(restore_pod_events, to_restore::<Pod>)
        .shutdown_on_signal()
        .run(
            |r, ctx| {
                let span = info_span!("restore", namespace = r.namespace().unwrap_or_default(), name = %r.name_any());
                restore::reconcile(r, ctx).instrument(span)
            },
            restore::error_policy,
            ctx.clone(),
        )
        .for_each(log_controller_error);
    let controller = async {
        ready.await;
        futures::future::join(controller, restores).await
    };
    // The caches live exactly as long as the controller.
    tokio::select! {
        _ = controller => {}
        _ = caches => {}
    }
    info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(20), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
