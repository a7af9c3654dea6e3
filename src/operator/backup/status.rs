//! A backup's status from its reports: log lines, last dump and upload,
//! conditions, and whether uploads are stale. Computed without the API.

use super::reports::PodReport;
use crate::api::NotifyEvent;
use crate::api::{CatalogEntry, DatabaseBackupStatus, RECENT_KEPT, Verification};
use crate::jobresult::{Outcome, Step};
use crate::operator::conditions::{
    DUMP_SUCCEEDED, DUMPS_PROVEN, Note, Observed, STALE, UPLOAD_SUCCEEDED, VERIFIED, set_condition,
};
use crate::operator::notify::Notice;
use crate::operator::results::to_chrono;
use crate::reasons;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Log lines kept in status; older ones stay in the per-day files on the volume.
pub const LOG_LINES_KEPT: usize = 50;

/// Folds new pod reports into the status: log lines (oldest first, bounded),
/// last dump and upload, conditions. Each pod counts once: its UID is recorded
/// in the same write as its lines, so a restart neither repeats nor loses any.
/// Returns the Events to publish and the notices to send.
pub fn record_reports(
    status: &mut DatabaseBackupStatus,
    mut reports: Vec<PodReport>,
    present: &[String],
    generation: Option<i64>,
    now: &Time,
) -> (Vec<Note>, Vec<Notice>) {
    // Pods and Jobs that no longer exist cannot be reported again.
    status.processed_pods.retain(|uid| present.contains(uid));
    let covered: Vec<String> = reports.iter().filter_map(|r| r.job.clone()).collect();
    reports.retain(|r| !status.processed_pods.contains(&r.uid) && !covered.contains(&r.uid));
    reports.sort_by(|a, b| a.finished.0.cmp(&b.finished.0).then(a.uid.cmp(&b.uid)));
    let mut notes = vec![];
    let mut notices = vec![];
    for r in reports {
        status.processed_pods.push(r.uid.clone());
        if let Some(job) = &r.job
            && !status.processed_pods.contains(job)
        {
            status.processed_pods.push(job.clone());
        }
        status.log.push(r.result.log.clone());
        status.log.extend(r.result.more_log.iter().cloned());
        if let Some(replaced) = r.result.replaced.as_ref().filter(|_| r.step == Step::Dump) {
            // The original pipeline's rule, said: the replaced dump's run
            // completed, and its dump will never be uploaded.
            notes.push(Note {
                warning: true,
                reason: reasons::DUMP_REPLACED.into(),
                message: format!(
                    "a newer dump replaced the unsent dump finished at {replaced}; only the newer one is uploaded"
                ),
            });
        }
        if let Some(why) = r
            .result
            .read_back
            .as_ref()
            .filter(|_| r.step == Step::Upload)
        {
            // Proven, but not by the store: say so, since every upload to
            // this store now costs a second read of the whole object.
            notes.push(Note {
                warning: true,
                reason: reasons::PROVEN_BY_READ_BACK.into(),
                message: format!(
                    "{} was proven by reading it back: {why}; the store's checksums cannot be trusted",
                    r.result.key.as_deref().unwrap_or("the upload")
                ),
            });
        }
        if let Some(stuck) = r.result.stuck.as_ref().filter(|_| r.step == Step::Upload) {
            // Newer dumps flow, but one is not backed up: a person should know.
            notes.push(Note {
                warning: true,
                reason: reasons::DUMP_STUCK.into(),
                message: stuck.clone(),
            });
            notices.push(Notice {
                event: NotifyEvent::Failure,
                id: format!("{}-stuck", r.uid),
                reason: reasons::DUMP_STUCK.into(),
                message: stuck.clone(),
                key: None,
                time: r.finished.clone(),
            });
        }
        for (name, replaced) in super::several::replaced(&r) {
            notes.push(Note {
                warning: true,
                reason: reasons::DUMP_REPLACED.into(),
                message: format!(
                    "a newer dump of {name} replaced its unsent dump finished at {replaced}; only the newer one is uploaded"
                ),
            });
        }
        super::several::record(status, &r);
        for (key, size) in super::several::uploaded(&r) {
            catalog(status, key, size, &r);
        }
        if let Some(proven) = dumps_proven(&r) {
            set_condition(&mut status.conditions, &proven, generation, now);
        }
        if let Some(observed) = observed(&r, status) {
            set_condition(&mut status.conditions, &observed, generation, now);
            if let Some(event) = notify_event(&observed) {
                notices.push(Notice {
                    event,
                    id: r.uid.clone(),
                    reason: observed.reason.clone(),
                    message: observed.message.clone(),
                    key: r.result.key.clone().or_else(|| r.key.clone()),
                    time: r.finished.clone(),
                });
            }
            notes.push(Note {
                warning: !observed.status,
                reason: observed.reason.clone(),
                message: observed.message,
            });
        }
    }
    let excess = status.log.len().saturating_sub(LOG_LINES_KEPT);
    status.log.drain(..excess);
    (notes, notices)
}

/// The standing word on stuck dumps an upload's report gives: False while
/// one is kept back (set aside now, or still), True once an upload found
/// none; a failed upload that says nothing of them changes nothing.
fn dumps_proven(r: &PodReport) -> Option<Observed> {
    if r.step != Step::Upload {
        return None;
    }
    let message = r.result.message();
    let set_aside = (r.result.outcome == Outcome::Failed
        && message.contains(crate::logline::STUCK))
    .then_some(message);
    match (r.result.stuck.clone().or(set_aside), r.result.outcome) {
        (Some(stuck), _) => Some(Observed::new(
            DUMPS_PROVEN,
            false,
            reasons::DUMP_STUCK,
            stuck,
        )),
        (None, Outcome::Succeeded) => Some(Observed::new(
            DUMPS_PROVEN,
            true,
            reasons::ALL_PROVEN,
            "no dump is kept back unproven",
        )),
        (None, _) => None,
    }
}

/// What a report's condition tells the notification targets, if anything.
fn notify_event(observed: &Observed) -> Option<NotifyEvent> {
    match (observed.type_, observed.status) {
        (DUMP_SUCCEEDED | UPLOAD_SUCCEEDED, false) => Some(NotifyEvent::Failure),
        (UPLOAD_SUCCEEDED, true) => Some(NotifyEvent::Success),
        (VERIFIED, false) => Some(NotifyEvent::VerificationFailure),
        _ => None,
    }
}

/// The condition a report sets (its Event says the same), and the last dump
/// or upload it records. An upload that found nothing sets no condition.
fn observed(r: &PodReport, status: &mut DatabaseBackupStatus) -> Option<Observed> {
    let message = super::several::summary(r).unwrap_or_else(|| r.result.message());
    let (type_, succeeded, reason, message) = match (r.step, r.result.outcome) {
        (Step::Dump, Outcome::Succeeded) => {
            status.last_dump_time = Some(r.finished.clone());
            (DUMP_SUCCEEDED, true, reasons::DUMP_COMPLETED, message)
        }
        (Step::Dump, _) => {
            let message = match message.contains(crate::logline::STAGING_FULL) {
                true => format!("{message}. {}", staging_hint(status.last_upload_size)),
                false => message,
            };
            let reason = match r.result.reason.as_deref() {
                Some(reasons::SOME_DUMPS_FAILED) => reasons::SOME_DUMPS_FAILED,
                _ => reasons::DUMP_FAILED,
            };
            (DUMP_SUCCEEDED, false, reason, message)
        }
        (Step::Upload, Outcome::Succeeded) => {
            status.last_upload_key = r.result.key.clone();
            status.last_upload_time = Some(r.finished.clone());
            status.last_upload_size = r.result.size.map(|s| s as i64);
            let key = r.result.key.clone().unwrap_or_default();
            catalog(status, &key, r.result.size, r);
            let message = match r.result.databases.is_empty() {
                true => format!("uploaded {key}"),
                false => message,
            };
            (UPLOAD_SUCCEEDED, true, reasons::UPLOADED, message)
        }
        (Step::Upload, Outcome::Failed) => {
            let reason = match message.contains(crate::logline::STUCK) {
                true => reasons::DUMP_STUCK,
                false => reasons::UPLOAD_FAILED,
            };
            (UPLOAD_SUCCEEDED, false, reason, message)
        }
        (Step::Verify, outcome) => return Some(drilled(r, outcome, status)),
        (Step::Upload, Outcome::Nothing) | (Step::Fetch | Step::Restore, _) => return None,
    };
    Some(Observed::new(type_, succeeded, reason, message))
}

/// What staging size would have fitted, from the last dump's size: the
/// volume holds a dump not yet sent and the next one beside it.
pub fn staging_hint(last_dump: Option<i64>) -> String {
    use crate::logline::human_size;
    match last_dump.and_then(|s| u64::try_from(s).ok()) {
        Some(last) => format!(
            "The last dump was {}; the staging volume holds an unsent dump and the next one, so set spec.staging.size to at least {} (twice that, plus a tenth for growth)",
            human_size(last),
            human_size(last * 2 + last / 5)
        ),
        None => "No dump has completed yet: set spec.staging.size above twice the size of the database's dump".to_string(),
    }
}

/// Puts a confirmed upload first in `recent`, once, and keeps it bounded.
fn catalog(status: &mut DatabaseBackupStatus, key: &str, size: Option<u64>, r: &PodReport) {
    status.recent.retain(|e| e.key != key);
    status.recent.insert(
        0,
        CatalogEntry {
            key: key.to_string(),
            size: size.map(|s| s as i64),
            time: Some(r.finished.clone()),
            // The result's checksum is its last object's.
            checksum: r
                .result
                .checksum
                .clone()
                .filter(|_| r.result.key.as_deref() == Some(key)),
            verified: None,
        },
    );
    status.recent.truncate(RECENT_KEPT);
}

/// Records a drill in `lastVerification` (and, when it passed, as the newest
/// verified dump); its Verified condition.
fn drilled(r: &PodReport, outcome: Outcome, status: &mut DatabaseBackupStatus) -> Observed {
    let passed = outcome == Outcome::Succeeded;
    let key = r.result.key.clone().or_else(|| r.key.clone());
    let duration = r
        .started
        .as_ref()
        .map(|s| r.finished.0.as_second() - s.0.as_second());
    status.last_verification = Some(Verification {
        key: key.clone(),
        time: Some(r.finished.clone()),
        passed,
        duration_seconds: duration,
        tables: r.result.tables.map(|n| n as i64),
        checks: r.result.checks.clone(),
    });
    let key = key.unwrap_or_default();
    if let Some(entry) = status.recent.iter_mut().find(|e| e.key == key) {
        entry.verified = Some(passed);
    }
    if !passed {
        let reason = r
            .result
            .reason
            .as_deref()
            .and_then(|given| {
                reasons::VERIFY_STEP_FAILURES
                    .into_iter()
                    .find(|k| *k == given)
            })
            .unwrap_or(reasons::DRILL_FAILED);
        return Observed::new(VERIFIED, false, reason, r.result.message());
    }
    status.last_verified_key = Some(key.clone());
    status.last_verified_time = Some(r.finished.clone());
    let tables = r.result.tables.unwrap_or_default();
    Observed::new(
        VERIFIED,
        true,
        reasons::VERIFIED,
        format!("verified {key} ({tables} tables)"),
    )
}

/// Stale is False while the schedule is suspended: no run is due, so none
/// can be missed.
pub fn suspended() -> Observed {
    Observed::new(
        STALE,
        false,
        reasons::SUSPENDED,
        "spec.suspend is true: no dump is scheduled",
    )
}

/// Stale when a scheduled dump run passed, plus its grace, without a new
/// upload: the first run after the last upload (or the creation, or the
/// resume of a suspended schedule, whichever is latest), in the schedule's
/// time zone. Its grace is the time its Jobs may take (`max_run`), but no
/// longer than until the run after it. Also returns when to look again.
pub fn staleness(
    schedule: &croner::Cron,
    tz: chrono_tz::Tz,
    max_run: chrono::Duration,
    last_upload: Option<&Time>,
    (created, resumed): (Option<&Time>, Option<&Time>),
    now: chrono::DateTime<chrono::Utc>,
) -> (Observed, Option<std::time::Duration>) {
    let resumed = resumed
        .map(to_chrono)
        .filter(|r| last_upload.is_none_or(|u| to_chrono(u) < *r));
    let since = resumed
        .or(last_upload.or(created).map(to_chrono))
        .unwrap_or(now);
    let current = || {
        Observed::new(
            STALE,
            false,
            reasons::UPLOADS_CURRENT,
            "a recent upload exists or is not yet due",
        )
    };
    let Ok(run) = schedule.find_next_occurrence(&since.with_timezone(&tz), false) else {
        return (current(), None);
    };
    let grace = schedule
        .find_next_occurrence(&run, false)
        .map_or(max_run, |next| (next - run).min(max_run));
    let deadline = run.with_timezone(&chrono::Utc) + grace;
    if now < deadline {
        return (current(), (deadline - now).to_std().ok());
    }
    let what = match (resumed, last_upload) {
        (Some(r), _) => format!(
            "no upload has succeeded since the schedule was resumed at {}",
            r.format("%Y-%m-%dT%H:%M:%SZ")
        ),
        (None, Some(_)) => format!(
            "the last successful upload was at {}",
            since.format("%Y-%m-%dT%H:%M:%SZ")
        ),
        (None, None) => "no upload has succeeded since the resource was created".to_string(),
    };
    let o = Observed::new(
        STALE,
        true,
        reasons::NO_RECENT_UPLOAD,
        format!(
            "{what}; the dump scheduled for {} should have been uploaded by {}",
            run.format("%Y-%m-%dT%H:%M:%S%:z"),
            deadline.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    );
    (o, None)
}
