//! The DatabaseBackup reconciler: check the spec and its references, apply
//! the children, start what was asked for, fold the finished pods into the
//! status, judge staleness, and publish what changed.

mod children;
mod drill;
mod observe;
mod pass;
mod reports;
mod several;
mod staging;
mod status;
#[cfg(test)]
mod tests;

pub use children::{
    chained_upload, dump_cronjob, job_from_cronjob, key_prefix, labels, staging_pvc, upload_cronjob,
};
pub use reports::{PodReport, job_report, pod_report, stuck};
pub use status::{LOG_LINES_KEPT, record_reports, staleness};

use observe::{follower, reports, running_dumps, started_dumps, stuck_steps, upload_started_since};
use pass::Pass;

use super::apiserver::{apply, backoff_after, create_job, labelled_owner, write_status_if_current};
use super::conditions::{self, Observed, READY};
use super::metrics::BackupId;
use super::{Context, Error, checks, results};
use crate::api::{DatabaseBackup, DatabaseBackupStatus};
use crate::jobresult::{Outcome, Step};
use crate::{names, reasons};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// How often a healthy resource is looked at again without any event.
const RESYNC: Duration = Duration::from_secs(15 * 60);
/// How often a backup whose staging node is not Ready is looked at again:
/// its return may show in no pod of ours.
const NODE_RECHECK: Duration = Duration::from_secs(30);

pub async fn reconcile(db: Arc<DatabaseBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let mut applied = check_and_apply(&db, &ctx).await;
    let old = db.status.clone().unwrap_or_default();
    let mut pass = Pass::new(&db, &old, ready(&applied));
    let (reports, present) = reports(&db, &ctx, pass.tz);
    let chained = uploads_to_chain(&db, &ctx, &reports, &pass.status);
    publish_steps(&db, &ctx, &reports, &old);
    pass.record(reports, &present);
    let mut follow_due = None;
    if let Ok(children) = &mut applied {
        // A drill that passed in this pass protects its dump from the next
        // upload at once: status writes start no reconcile of their own.
        if pass.status.last_verified_key != old.last_verified_key {
            let mut now = (*db).clone();
            now.status = Some(pass.status.clone());
            children.upload = apply_upload(&now, &ctx).await?;
        }
        run_now(&db, &ctx, &children.dump, &mut pass).await?;
        let (following, due) = running_dumps(&db, &ctx);
        follow_due = due;
        for run in &chained {
            create_job(&ctx, &chained_upload(&children.upload, run, None), "job").await?;
        }
        for (run, pod) in &following {
            let job = chained_upload(&children.upload, run, Some(pod));
            create_job(&ctx, &job, "job").await?;
        }
    }
    let mut next_drill = None;
    if applied.is_ok() {
        next_drill = start_drill(&db, &ctx, &mut pass).await?;
    }
    pass.record_stuck(stuck_steps(&db, &ctx));
    let node_down = pass.judge_staging_node(staging::staging_node(&db, &ctx).await);
    pass.notices.extend(started_dumps(&db, &ctx));
    publish_verification(&db, &ctx, &pass.status);
    publish_upload(&db, &ctx, &pass.status);
    let recheck = pass.judge_staleness(&db, &ctx, &old);
    let recheck = next_drill.map_or(recheck, |due| recheck.min(due));
    let recheck = follow_due.map_or(recheck, |due| recheck.min(due));
    let recheck = match node_down {
        true => recheck.min(NODE_RECHECK),
        false => recheck,
    };
    let urls = pass.judge_notifications(&db, &ctx).await;
    let notices = std::mem::take(&mut pass.notices);
    publish(&db, &ctx, &old, pass).await?;
    // Only once the status that records them is written: a failed write
    // finds them again in the next pass, and nothing goes out twice.
    ctx.notifier
        .send(&ObjectRef::from_obj(&*db), &db.spec.notify, &urls, &notices);
    applied?;
    ctx.failures
        .lock()
        .unwrap()
        .remove(&ObjectRef::from_obj(&*db));
    Ok(Action::requeue(recheck))
}

pub fn error_policy(db: Arc<DatabaseBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_after(&*db, error, &ctx, &ctx.failures)
}

/// The applied CronJobs, as the apiserver returned them.
struct Children {
    dump: CronJob,
    upload: CronJob,
}

async fn check_and_apply(db: &DatabaseBackup, ctx: &Context) -> Result<Children, Error> {
    checks::validate_spec(db)?;
    checks::check_references(db, &ctx.client).await?;
    let ns = db.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    apply(pvcs, &staging_pvc(db), &ctx.pvcs, false).await?;
    let dump = dump_cronjob(db, &ctx.settings_for(db));
    Ok(Children {
        dump: apply(cronjobs, &dump, &ctx.cronjobs, true).await?,
        upload: apply_upload(db, ctx).await?,
    })
}

fn ready(applied: &Result<Children, Error>) -> Observed {
    match applied {
        Ok(_) => Observed::new(READY, true, reasons::RECONCILED, "children are up to date"),
        Err(Error::Invalid(p)) => Observed::new(READY, false, p.reason, p.message.clone()),
        Err(e) => Observed::new(READY, false, e.reason(), e.to_string()),
    }
}

/// A new "back up now" token starts one dump Job, once.
async fn run_now(
    db: &DatabaseBackup,
    ctx: &Context,
    dump: &CronJob,
    pass: &mut Pass,
) -> Result<(), Error> {
    let Some(token) = db
        .annotations()
        .get(names::RUN_NOW)
        .filter(|t| pass.status.last_run_now.as_ref() != Some(*t))
    else {
        return Ok(());
    };
    create_job(
        ctx,
        &job_from_cronjob(dump, &names::run_now_id(token)),
        "job",
    )
    .await?;
    pass.status.last_run_now = Some(token.clone());
    pass.note(
        false,
        reasons::BACKUP_REQUESTED,
        format!("started a dump for run-now request {token:?}"),
    );
    Ok(())
}

/// No dump waits for the upload schedule: each success starts its upload
/// (one per Job, even if the Job ran a second pod), unless the upload that
/// followed it while it ran sent it or still runs. The upload CronJob stays
/// as the retry and the original pipeline's poller. Returns the runs to
/// start an upload Job for.
fn uploads_to_chain(
    db: &DatabaseBackup,
    ctx: &Context,
    reports: &[PodReport],
    status: &DatabaseBackupStatus,
) -> Vec<String> {
    reports
        .iter()
        .filter(|r| {
            r.step == Step::Dump
                && (r.result.outcome == Outcome::Succeeded || !dumps_of(r).is_empty())
                && !status.processed_pods.contains(&r.uid)
                && !upload_started_since(db, ctx, &r.uid, &r.finished)
        })
        // Sent already by an upload that followed it (or another), or about
        // to be by the one following it still.
        .filter(|r| !sent(reports, r) && !following(db, ctx, r))
        .map(|r| {
            r.run_now
                .clone()
                .unwrap_or_else(|| names::run_now_id(r.job.as_deref().unwrap_or(&r.uid)))
        })
        .collect()
}

/// The dumps a report names as made (dump) or sent (upload): its own, or
/// with several databases each one's that went well. A run of several in
/// which some failed still made the others'.
fn dumps_of(r: &PodReport) -> Vec<&String> {
    let own = r
        .result
        .dumped
        .iter()
        .filter(|_| r.result.outcome == Outcome::Succeeded);
    let each = r
        .result
        .databases
        .iter()
        .filter(|d| d.outcome == Outcome::Succeeded);
    own.chain(each.filter_map(|d| d.dumped.as_ref())).collect()
}

/// Whether uploads' results name every dump of `dump`.
fn sent(reports: &[PodReport], dump: &PodReport) -> bool {
    let uploaded: Vec<&String> = reports
        .iter()
        .filter(|r| r.step == Step::Upload)
        .flat_map(dumps_of)
        .collect();
    let made = dumps_of(dump);
    !made.is_empty() && made.iter().all(|d| uploaded.contains(d))
}

/// Whether the upload that followed the dump pod of `dump` still runs: it
/// sends that dump, and every dump that runs or waits after it.
fn following(db: &DatabaseBackup, ctx: &Context, dump: &PodReport) -> bool {
    let run = dump
        .run_now
        .clone()
        .unwrap_or_else(|| names::run_now_id(dump.job.as_deref().unwrap_or(&dump.uid)));
    follower(db, ctx, &run, &dump.uid).is_some_and(|job| !super::results::finished(&job))
}

/// Applies the upload CronJob as built from `db`, status included: its
/// `--keep-verified` comes from `status.lastVerifiedKey`.
async fn apply_upload(db: &DatabaseBackup, ctx: &Context) -> Result<CronJob, Error> {
    let cronjobs: Api<CronJob> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let upload = upload_cronjob(db, &ctx.settings_for(db));
    apply(cronjobs, &upload, &ctx.cronjobs, true).await
}

/// Drills the newest upload: once after its upload (`afterUpload`), and
/// again whenever `schedule` comes due. One drill of a backup runs at a time:
/// a newer upload, or a due schedule, waits for the running one. Returns when
/// the schedule is next due.
async fn start_drill(
    db: &DatabaseBackup,
    ctx: &Context,
    pass: &mut Pass,
) -> Result<Option<Duration>, Error> {
    let Some(verify) = &db.spec.verify else {
        return Ok(None);
    };
    let status = &pass.status;
    let (due, next) = match verify.schedule.as_deref().map(checks::parse_schedule) {
        Some(Ok(schedule)) => {
            let since = status
                .last_scheduled_drill
                .as_ref()
                .or(db.metadata.creation_timestamp.as_ref());
            drill_due(&schedule, pass.tz, since, chrono::Utc::now())
        }
        _ => (false, None),
    };
    let Some(key) = status.last_upload_key.clone() else {
        return Ok(next);
    };
    let drilled = status
        .last_verification
        .as_ref()
        .and_then(|v| v.key.as_ref());
    let after_upload = verify.after_upload && drilled != Some(&key);
    if !(after_upload || due) || drill_running(db, ctx) {
        return Ok(next);
    }
    // A scheduled drill of a dump drilled before needs a Job name of its own.
    let run = match due {
        true => format!("{key}@{}", chrono::Utc::now().timestamp()),
        false => key.clone(),
    };
    if let Some(job) = drill::verify_job(db, &ctx.settings_for(db), &key, &run) {
        create_job(ctx, &job, "restore drill").await?;
    }
    if due {
        pass.status.last_scheduled_drill = Some(pass.now.clone());
    }
    Ok(next)
}

/// Whether the drill schedule came due since `since`, and how long until it
/// is due next.
fn drill_due(
    schedule: &croner::Cron,
    tz: chrono_tz::Tz,
    since: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: chrono::DateTime<chrono::Utc>,
) -> (bool, Option<Duration>) {
    let since = since.map(results::to_chrono).unwrap_or(now);
    let Ok(run) = schedule.find_next_occurrence(&since.with_timezone(&tz), false) else {
        return (false, None);
    };
    let run = run.with_timezone(&chrono::Utc);
    if run <= now {
        let next = schedule
            .find_next_occurrence(&now.with_timezone(&tz), false)
            .ok()
            .and_then(|n| (n.with_timezone(&chrono::Utc) - now).to_std().ok());
        return (true, next.map(|d| d + Duration::from_secs(1)));
    }
    (
        false,
        (run - now)
            .to_std()
            .ok()
            .map(|d| d + Duration::from_secs(1)),
    )
}

/// Whether a drill Job of this backup has not finished yet.
fn drill_running(db: &DatabaseBackup, ctx: &Context) -> bool {
    let key = Some(ObjectRef::from_obj(db));
    ctx.jobs.state().iter().any(|j| {
        labelled_owner(&**j, names::LABEL_BACKUP) == key
            && j.labels().get(names::LABEL_STEP).map(String::as_str) == Some(Step::Verify.as_str())
            && j.status
                .as_ref()
                .is_none_or(|s| s.completion_time.is_none() && s.failed.unwrap_or(0) == 0)
    })
}

/// The last drill's metrics, from the status that records it.
/// The metrics of pods this status has not reflected yet: each step's last
/// duration, and its failures.
fn publish_steps(
    db: &DatabaseBackup,
    ctx: &Context,
    reports: &[PodReport],
    old: &DatabaseBackupStatus,
) {
    let new = reports
        .iter()
        .filter(|r| !old.processed_pods.contains(&r.uid));
    for r in new {
        if r.step == Step::Upload && r.result.outcome == Outcome::Nothing {
            continue;
        }
        let seconds = r
            .started
            .as_ref()
            .map(|s| r.finished.0.as_second() - s.0.as_second());
        ctx.metrics.step_finished(
            &BackupId::of(db),
            r.step.as_str(),
            seconds,
            r.result.outcome == Outcome::Failed,
        );
    }
}

/// The last confirmed upload, from the status (absent before the first).
fn publish_upload(db: &DatabaseBackup, ctx: &Context, status: &DatabaseBackupStatus) {
    if let Some(at) = &status.last_upload_time {
        ctx.metrics
            .set_last_upload(&BackupId::of(db), at.0.as_second(), status.last_upload_size);
    }
}

fn publish_verification(db: &DatabaseBackup, ctx: &Context, status: &DatabaseBackupStatus) {
    let Some(last) = &status.last_verification else {
        return;
    };
    ctx.metrics.set_verification(
        &BackupId::of(db),
        last.passed,
        last.duration_seconds,
        status.last_verified_time.as_ref().map(|t| t.0.as_second()),
    );
}

/// Writes the status if it changed, then its Events: a Ready change, and
/// what this pass noted.
async fn publish(
    db: &DatabaseBackup,
    ctx: &Context,
    old: &DatabaseBackupStatus,
    mut pass: Pass,
) -> Result<(), Error> {
    if pass.status == *old {
        return Ok(());
    }
    write_status_if_current(db, ctx, &pass.status).await?;
    let ready = pass.ready.clone();
    let was = conditions::find(&old.conditions, READY);
    if was.is_none_or(|c| c.reason != ready.reason || (c.status == "True") != ready.status) {
        let message = match ready.status {
            true => ready.message.clone(),
            false => format!("{}: {}", ready.reason, ready.message),
        };
        pass.note(!ready.status, &ready.reason, message);
    }
    for note in &pass.notes {
        let type_ = match note.warning {
            true => EventType::Warning,
            false => EventType::Normal,
        };
        ctx.publish(db, type_, &note.reason, &note.message).await;
    }
    Ok(())
}
