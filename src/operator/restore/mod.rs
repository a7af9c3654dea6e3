//! The DatabaseRestore reconciler: one Job per restore, and its status from
//! that Job's pod. A restore runs once: a finished one is never looked at
//! again, and one that started never starts again. The status says Running
//! before the Job is created, so a Job that vanishes before its result was
//! seen (deleted, a TTL, while the operator was down) ends the restore as
//! Failed instead of loading the dump a second time over what came since.

mod across;
mod job;
mod status;

pub use job::{Source, job_name, restore_job};
pub use status::observe;

use super::apiserver::{backoff_after, create_job, labelled_owner, write_status};
use super::checks::{self, CheckError, Problem};
use super::conditions::{self, Observed, RESTORED};
use super::refused::refusal;
use super::{Context, Error, backup};
use crate::api::{DatabaseBackup, DatabaseRestore, DatabaseRestoreStatus, LATEST, RestorePhase};
use crate::{names, reasons};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

pub async fn reconcile(r: Arc<DatabaseRestore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let old = r.status.clone().unwrap_or_default();
    let uid = r.metadata.uid.clone().unwrap_or_default();
    if old.phase.is_some_and(RestorePhase::finished) {
        across::forget(&ctx, &uid);
        return Ok(Action::await_change());
    }
    let job = match existing_job(&r, &ctx) {
        Some(job) => Some(job),
        None if old.phase == Some(RestorePhase::Running) => match live_job(&r, &ctx).await? {
            Some(job) => Some(job),
            None => return vanished(&r, &ctx, &old).await,
        },
        None => match start(&r, &ctx, &old).await? {
            Started::Job(Some(job)) => Some(job),
            // Its name was taken, and the Job is gone again: it may have run.
            Started::Job(None) => return vanished(&r, &ctx, &old).await,
            Started::Locating(namespace) => {
                let mut new = old.clone();
                new.phase = Some(RestorePhase::Pending);
                let message = format!("a locate job in namespace {namespace:?} picks the dump");
                let observed = Observed::new(RESTORED, false, reasons::LOCATING, message);
                publish(&r, &ctx, &old, new, observed).await?;
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            Started::LocateFailed(result) => {
                let (new, observed) = status::located_failure(&old, &result);
                return publish(&r, &ctx, &old, new, observed).await;
            }
        },
    };
    ctx.restore_failures
        .lock()
        .unwrap()
        .remove(&ObjectRef::from_obj(&*r));
    if job.is_some() {
        across::forget(&ctx, &uid);
    }
    let pod = job_pod(&r, &ctx, job.as_deref());
    let (new, observed) = observe(&old, job.as_deref(), pod.as_deref());
    let refused = job
        .as_deref()
        .filter(|_| pod.is_none())
        .and_then(|job| refused(&ctx, &old, job));
    let Some((refused, new_refusal)) = refused else {
        return publish(&r, &ctx, &old, new, observed).await;
    };
    let action = publish(&r, &ctx, &old, new, refused.clone()).await?;
    if new_refusal {
        ctx.publish(&*r, EventType::Warning, &refused.reason, &refused.message)
            .await;
    }
    Ok(action)
}

/// Why the restore's Job cannot create its pod (a quota), as the Restored
/// condition, and whether that is new (an Event says it once). A refusal
/// already said keeps its words, though the quota's figures move.
fn refused(ctx: &Context, old: &DatabaseRestoreStatus, job: &Job) -> Option<(Observed, bool)> {
    let events = ctx.refusals.state();
    let pods = ctx.pods.state();
    let (reason, message) = refusal(job, events.iter().map(|e| &**e), pods.iter().map(|p| &**p))?;
    let refused = Observed::new(RESTORED, false, reason, message);
    match conditions::find(&old.conditions, RESTORED) {
        Some(c) if conditions::says_stuck(c, &refused) => Some((
            Observed::new(RESTORED, false, &c.reason, c.message.clone()),
            false,
        )),
        _ => Some((refused, true)),
    }
}

pub fn error_policy(r: Arc<DatabaseRestore>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_after(&*r, error, &ctx, &ctx.restore_failures)
}

/// This restore's Job, from the cache. A restore started by a release that
/// named the Job without the UID keeps that Job: it must not run a second load.
fn existing_job(r: &DatabaseRestore, ctx: &Context) -> Option<Arc<Job>> {
    let ns = r.namespace().unwrap_or_default();
    let key = ObjectRef::new(&job_name(r)).within(&ns);
    let legacy = ObjectRef::new(&names::legacy_restore_job_name(&r.name_any())).within(&ns);
    let ours = |j: &Job| {
        j.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == r.metadata.uid.as_ref())
    };
    ctx.jobs
        .get(&key)
        .or_else(|| ctx.jobs.get(&legacy).filter(|j| ours(j)))
}

/// How far `start` got.
enum Started {
    /// The Job, or None when its name was taken and it is gone again.
    Job(Option<Arc<Job>>),
    /// A backup in this other namespace: its locate Job runs there.
    Locating(String),
    /// That locate Job failed, saying why.
    LocateFailed(Box<crate::jobresult::JobResult>),
}

/// Creates the Job. The source is looked up once, for this: a Job that runs
/// needs nothing more from it, even if the Secrets change meanwhile. A source
/// that cannot be resolved leaves the restore Pending, with the reason.
async fn start(
    r: &DatabaseRestore,
    ctx: &Context,
    old: &DatabaseRestoreStatus,
) -> Result<Started, Error> {
    let mut source = match resolve_source(r, ctx).await {
        Ok(source) => source,
        Err(CheckError::Kube(e)) => return Err(Error::Kube(e)),
        Err(CheckError::Problem(p)) => {
            let mut new = old.clone();
            new.observed_generation = r.metadata.generation;
            new.phase = Some(RestorePhase::Pending);
            let observed = Observed::new(RESTORED, false, p.reason, p.message.clone());
            conditions::set_condition(
                &mut new.conditions,
                &observed,
                new.observed_generation,
                &now(),
            );
            if new != *old {
                write_status(r, ctx, &new).await?;
                ctx.publish(r, EventType::Warning, p.reason, &p.message)
                    .await;
            }
            return Err(Error::Invalid(p));
        }
    };
    if let Some(across) = source.across.clone() {
        match across::locate(r, ctx, &source, &across).await? {
            across::Locating::Found(located) => source.located = Some(located),
            across::Locating::Waiting => return Ok(Started::Locating(across.namespace)),
            across::Locating::Failed(result) => return Ok(Started::LocateFailed(result)),
        }
    }
    let desired = restore_job(r, &source, &ctx.settings_for(r));
    // Said before the Job exists: from here on the restore never starts again.
    let mut starting = old.clone();
    starting.phase = Some(RestorePhase::Running);
    write_status(r, ctx, &starting).await?;
    match create_job(ctx, &desired, "restore job").await {
        Ok(Some(created)) => Ok(Started::Job(Some(Arc::new(created)))),
        // Created meanwhile (our cache lags): the apiserver has it.
        Ok(None) => live_job(r, ctx).await.map(Started::Job),
        Err(e) => {
            // Not created: the restore has not started after all.
            if live_job(r, ctx).await.ok().flatten().is_none() {
                let _ = write_status(r, ctx, old).await;
            }
            Err(e)
        }
    }
}

/// This restore's Job as the apiserver has it now (the cache may lag).
async fn live_job(r: &DatabaseRestore, ctx: &Context) -> Result<Option<Arc<Job>>, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &r.namespace().unwrap_or_default());
    Ok(jobs.get_opt(&job_name(r)).await?.map(Arc::new))
}

/// A restore that started and whose Job is gone, its result unseen: Failed,
/// never run again.
async fn vanished(
    r: &DatabaseRestore,
    ctx: &Context,
    old: &DatabaseRestoreStatus,
) -> Result<Action, Error> {
    let mut new = old.clone();
    new.phase = Some(RestorePhase::Failed);
    new.completion_time = Some(now());
    let observed = Observed::new(
        RESTORED,
        false,
        reasons::JOB_DISAPPEARED,
        format!(
            "job {} is gone and its result was never seen (deleted, removed by a TTL, or its \
             creation failed after the restore was marked started); a restore that may have \
             started is never run again: create a new DatabaseRestore to restore again",
            job_name(r)
        ),
    );
    publish(r, ctx, old, new, observed).await
}

/// The bucket and prefix the spec points at, or what is missing.
async fn resolve_source(r: &DatabaseRestore, ctx: &Context) -> Result<Source, CheckError> {
    let ns = r.namespace().unwrap_or_default();
    let source = match (&r.spec.backup, &r.spec.bucket) {
        (Some(name), _) => {
            let from = r
                .spec
                .backup_namespace
                .clone()
                .unwrap_or_else(|| ns.clone());
            if from != ns {
                across::check_grant(ctx, &ns, &from, name).await?;
            }
            let backups: Api<DatabaseBackup> = Api::namespaced(ctx.client.clone(), &from);
            let backup = backups.get_opt(name).await?.ok_or_else(|| {
                Problem::new(
                    reasons::BACKUP_NOT_FOUND,
                    format!("spec.backup: DatabaseBackup {name:?} not found in namespace {from:?}"),
                )
            })?;
            if backup.spec.database.is_several()
                && r.spec.database.is_none()
                && r.spec.key == LATEST
            {
                return Err(Problem::new(
                    reasons::DATABASE_NOT_CHOSEN,
                    format!(
                        "spec.database: DatabaseBackup {name:?} dumps several databases; name the one to restore"
                    ),
                )
                .into());
            }
            if from != ns {
                across::source(r, &backup, ctx).await?
            } else {
                Source {
                    prefix: database_prefix(backup::key_prefix(&backup), r),
                    service_account: r
                        .spec
                        .service_account_name
                        .clone()
                        .or(backup.spec.jobs.service_account_name),
                    bucket: backup.spec.bucket,
                    across: None,
                    located: None,
                }
            }
        }
        (None, Some(bucket)) => Source {
            prefix: database_prefix(bucket.prefix.clone().unwrap_or_default(), r),
            bucket: bucket.clone(),
            service_account: r.spec.service_account_name.clone(),
            across: None,
            located: None,
        },
        (None, None) => {
            return Err(Problem::new(reasons::NO_SOURCE, "set spec.backup or spec.bucket").into());
        }
    };
    let keys_optional = source.service_account.is_some();
    if source.across.is_none() {
        checks::check_bucket(&ctx.client, &ns, &source.bucket, keys_optional).await?;
    }
    if let Some(identity) = &r.spec.identity_secret {
        checks::check_age_identity(&ctx.client, &ns, identity).await?;
    }
    checks::check_credentials(&ctx.client, &ns, &r.spec.target.credentials_secret).await?;
    Ok(source)
}

/// The prefix "latest" searches: the backup's, or with spec.database that
/// database's series in it.
pub(super) fn database_prefix(prefix: String, r: &DatabaseRestore) -> String {
    match &r.spec.database {
        Some(database) => names::database_prefix(&prefix, database),
        None => prefix,
    }
}

/// The newest pod of this restore's own Job (by UID): only it speaks for the restore.
fn job_pod(r: &DatabaseRestore, ctx: &Context, job: Option<&Job>) -> Option<Arc<Pod>> {
    let job_uid = job.and_then(|j| j.uid())?;
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| labelled_owner(&**p, names::LABEL_RESTORE) == Some(ObjectRef::from_obj(r)))
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.kind == "Job" && o.uid == job_uid)
        })
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
}

/// Writes the status if it changed, with an Event when the phase moved, and
/// says when to look again.
async fn publish(
    r: &DatabaseRestore,
    ctx: &Context,
    old: &DatabaseRestoreStatus,
    mut new: DatabaseRestoreStatus,
    observed: Observed,
) -> Result<Action, Error> {
    let generation = r.metadata.generation;
    new.observed_generation = generation;
    conditions::set_condition(&mut new.conditions, &observed, generation, &now());
    if new != *old {
        write_status(r, ctx, &new).await?;
        if new.phase != old.phase {
            let (type_, reason, message) = match new.phase {
                Some(RestorePhase::Succeeded) => {
                    (EventType::Normal, reasons::RESTORED, observed.message)
                }
                Some(RestorePhase::Failed) => (
                    EventType::Warning,
                    observed.reason.as_str(),
                    observed.message.clone(),
                ),
                Some(RestorePhase::Running) => (
                    EventType::Normal,
                    reasons::RESTORE_STARTED,
                    format!("started job {}", job_name(r)),
                ),
                _ => (EventType::Normal, reasons::PENDING, observed.message),
            };
            ctx.publish(r, type_, reason, &message).await;
        }
    }
    Ok(match new.phase {
        Some(p) if p.finished() => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
