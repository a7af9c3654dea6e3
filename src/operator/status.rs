//! Conditions and status, computed without touching the API.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";

/// A condition as the reconciler sees it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Observed {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Observed {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Sets `observed` in `conditions`. The transition time only moves when the
/// status flips, so an unchanged condition compares equal and causes no write.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    observed: &Observed,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if observed.status { "True" } else { "False" };
    let existing = conditions.iter_mut().find(|c| c.type_ == observed.type_);
    let transition = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: observed.type_.to_string(),
        status: status.to_string(),
        reason: observed.reason.clone(),
        message: observed.message.clone(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    match existing {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time() {
        let mut conds = vec![];
        let ok = Observed::new(READY, true, "Reconciled", "ok");
        set_condition(&mut conds, &ok, Some(1), &at(100));
        let before = conds.clone();
        set_condition(&mut conds, &ok, Some(1), &at(200));
        assert_eq!(conds, before);
    }

    #[test]
    fn reason_change_without_flip_keeps_time_but_updates_reason() {
        let mut conds = vec![];
        set_condition(
            &mut conds,
            &Observed::new(READY, false, "SecretNotFound", "a"),
            Some(1),
            &at(100),
        );
        set_condition(
            &mut conds,
            &Observed::new(READY, false, "SecretKeyMissing", "b"),
            Some(1),
            &at(200),
        );
        assert_eq!(conds[0].reason, "SecretKeyMissing");
        assert_eq!(conds[0].last_transition_time, at(100));
    }

    #[test]
    fn flip_moves_transition_time() {
        let mut conds = vec![];
        set_condition(
            &mut conds,
            &Observed::new(READY, false, "SecretNotFound", "a"),
            Some(1),
            &at(100),
        );
        set_condition(
            &mut conds,
            &Observed::new(READY, true, "Reconciled", "ok"),
            Some(2),
            &at(200),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].status, "True");
        assert_eq!(conds[0].last_transition_time, at(200));
        assert_eq!(conds[0].observed_generation, Some(2));
    }
}

// ---------------------------------------------------------------------------
// Pod results → status.

use crate::api::DatabaseBackupStatus;
use crate::jobresult::{JobResult, Outcome, Step};
use crate::logline::LogLine;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

pub const DUMP_SUCCEEDED: &str = "DumpSucceeded";
pub const UPLOAD_SUCCEEDED: &str = "UploadSucceeded";
pub const STALE: &str = "Stale";
/// Log lines kept in status; older ones stay in the per-day files on the volume.
pub const LOG_LINES_KEPT: usize = 50;

/// What one finished pod of ours reported.
#[derive(Clone, Debug, PartialEq)]
pub struct PodReport {
    pub uid: String,
    pub step: Step,
    pub finished: Time,
    pub result: JobResult,
    /// Set on the pods of a "back up now" job.
    pub run_now: Option<String>,
    /// The UID of the Job the pod belongs to: once a pod of a Job is reported,
    /// that Job's own failure adds no second line.
    pub job: Option<String>,
}

pub fn to_chrono(t: &Time) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32)
        .unwrap_or_default()
}

/// The result of a step that could not report one itself.
pub fn failure(step: Step, finished: &Time, tz: chrono_tz::Tz, cause: &str) -> JobResult {
    let verb = match step {
        Step::Dump => "database dump failed",
        Step::Upload => "upload failed",
        Step::Fetch => "download failed",
        Step::Restore => "database restore failed",
    };
    let when = to_chrono(finished).with_timezone(&tz);
    JobResult::new(
        step,
        Outcome::Failed,
        LogLine::at(&when, &format!("{verb}: {cause}")).to_string(),
    )
}

/// Why a container that wrote no result ended: its exit code and the kubelet's reason.
pub fn exit_cause(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> String {
    format!(
        "container exited with code {}{}",
        t.exit_code,
        t.reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

/// The report of a finished pod, or None while it runs. A pod that died without
/// writing its result (OOM, deadline, missing tool) still gets a failure line.
pub fn pod_report(pod: &Pod, tz: chrono_tz::Tz) -> Option<PodReport> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref()?;
    if phase != "Succeeded" && phase != "Failed" {
        return None;
    }
    let step = step_of(pod.labels())?;
    let terminated = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let finished = terminated
        .and_then(|t| t.finished_at.clone())
        .or_else(|| pod.metadata.deletion_timestamp.clone())
        .or_else(|| pod.metadata.creation_timestamp.clone())?;
    let parsed = terminated
        .and_then(|t| t.message.as_deref())
        .and_then(JobResult::parse)
        .filter(|r| r.step == step);
    // The kernel killed a process of the step: the step saw only a status 137.
    let oom = terminated.is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
    let parsed = match parsed {
        Some(r) if oom && r.outcome != Outcome::Succeeded => None,
        other => other,
    };
    let result = parsed.unwrap_or_else(|| {
        if oom {
            return failure(step, &finished, tz, &out_of_memory(pod));
        }
        let cause = match terminated {
            Some(t) => exit_cause(t),
            None => format!(
                "pod failed: {}",
                status
                    .reason
                    .clone()
                    .or(status.message.clone())
                    .unwrap_or_else(|| "unknown reason".into())
            ),
        };
        failure(step, &finished, tz, &cause)
    });
    Some(PodReport {
        uid: pod.uid()?,
        step,
        finished,
        result,
        run_now: pod.labels().get(super::resources::LABEL_RUN_NOW).cloned(),
        job: pod
            .owner_references()
            .iter()
            .find(|o| o.kind == "Job")
            .map(|o| o.uid.clone()),
    })
}

/// "out of memory (limit 64Mi)": the limit of the pod's container, if any.
fn out_of_memory(pod: &Pod) -> String {
    let limit = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| {
            c.resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("memory")
                .cloned()
        });
    match limit {
        Some(q) => format!("out of memory (limit {})", q.0),
        None => "out of memory (no memory limit set)".to_string(),
    }
}

/// Why a pod that has not finished cannot start by itself (an image that
/// cannot be pulled, a container the runtime cannot create), as the
/// condition of its step and the reason of its Event. The Job's deadline is
/// hours away; users learn now.
pub fn stuck(pod: &Pod) -> Option<(&'static str, Observed)> {
    let step = step_of(pod.labels())?;
    let status = pod.status.as_ref()?;
    if pod.metadata.deletion_timestamp.is_some()
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return None;
    }
    let (reason, what, detail) = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let (reason, what) = match w.reason.as_deref()? {
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => (
                    IMAGE_PULL_FAILED,
                    format!("image {:?} cannot be pulled", c.image),
                ),
                "CreateContainerError" | "CreateContainerConfigError" | "RunContainerError" => (
                    CONTAINER_NOT_STARTED,
                    format!("container {:?} cannot start", c.name),
                ),
                _ => return None,
            };
            let detail = [w.reason.clone(), w.message.clone()];
            Some((
                reason,
                what,
                detail.into_iter().flatten().collect::<Vec<_>>().join(": "),
            ))
        })?;
    let type_ = match step {
        Step::Upload => UPLOAD_SUCCEEDED,
        _ => DUMP_SUCCEEDED,
    };
    let message = format!("pod {} waits: {what} ({detail})", pod.name_any());
    Some((reason, Observed::new(type_, false, reason, message)))
}

/// True when `condition` already says what `stuck` says, but for the
/// kubelet's detail, which alternates while it backs off (ErrImagePull,
/// ImagePullBackOff): no status write and no Event for each alternation.
pub fn says_stuck(condition: &Condition, stuck: &Observed) -> bool {
    let gist = |m: &str| m.split(" (").next().unwrap_or_default().to_string();
    condition.status == "False"
        && condition.reason == stuck.reason
        && gist(&condition.message) == gist(&stuck.message)
}

/// Condition and Event reasons of a pod that cannot start.
pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
pub const CONTAINER_NOT_STARTED: &str = "ContainerNotStarted";

fn step_of(labels: &std::collections::BTreeMap<String, String>) -> Option<Step> {
    match labels.get(super::resources::LABEL_STEP)?.as_str() {
        "dump" => Some(Step::Dump),
        "upload" => Some(Step::Upload),
        _ => None,
    }
}

/// When and why a Job failed as a whole (deadline exceeded, pods deleted):
/// its Failed condition's time, reason, and "job failed: <reason>: <message>".
pub fn job_failure(job: &Job) -> Option<(Time, Option<String>, String)> {
    let failed = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")?;
    let finished = failed
        .last_transition_time
        .clone()
        .or_else(|| job.metadata.creation_timestamp.clone())?;
    let cause = match (&failed.reason, &failed.message) {
        (Some(r), Some(m)) => format!("job failed: {r}: {m}"),
        (Some(r), None) => format!("job failed: {r}"),
        _ => "job failed".to_string(),
    };
    Some((finished, failed.reason.clone(), cause))
}

/// True once the Job is out of time: its FailureTarget condition says so
/// before the Job controller stops its pods.
pub fn deadline_exceeded(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                (c.type_ == "Failed" || c.type_ == "FailureTarget")
                    && c.status == "True"
                    && c.reason.as_deref() == Some("DeadlineExceeded")
            })
        })
}

/// A Job that failed as a whole reports itself, in case none of its pods can.
pub fn job_report(job: &Job, tz: chrono_tz::Tz) -> Option<PodReport> {
    let step = step_of(job.labels())?;
    let (finished, _, cause) = job_failure(job)?;
    Some(PodReport {
        uid: job.uid()?,
        step,
        result: failure(step, &finished, tz, &cause),
        finished,
        run_now: None,
        job: None,
    })
}

/// An Event to publish once the status that records it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Folds new pod reports into the status: log lines (oldest first, bounded),
/// last dump and upload, conditions. Each pod counts once: its UID is recorded
/// in the same write as its lines, so a restart neither repeats nor loses any.
pub fn record_reports(
    status: &mut DatabaseBackupStatus,
    mut reports: Vec<PodReport>,
    present: &[String],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Note> {
    // Pods and Jobs that no longer exist cannot be reported again.
    status.processed_pods.retain(|uid| present.contains(uid));
    let covered: Vec<String> = reports.iter().filter_map(|r| r.job.clone()).collect();
    reports.retain(|r| !status.processed_pods.contains(&r.uid) && !covered.contains(&r.uid));
    reports.sort_by(|a, b| a.finished.0.cmp(&b.finished.0).then(a.uid.cmp(&b.uid)));
    let mut notes = vec![];
    for r in reports {
        status.processed_pods.push(r.uid.clone());
        if let Some(job) = &r.job
            && !status.processed_pods.contains(job)
        {
            status.processed_pods.push(job.clone());
        }
        status.log.push(r.result.log.clone());
        status.log.extend(r.result.more_log.iter().cloned());
        let message = r.result.message();
        let (type_, observed, note) = match (r.step, r.result.outcome) {
            (Step::Dump, Outcome::Succeeded) => {
                status.last_dump_time = Some(r.finished.clone());
                (
                    DUMP_SUCCEEDED,
                    Observed::new(DUMP_SUCCEEDED, true, "DumpCompleted", message.clone()),
                    Note {
                        warning: false,
                        reason: "DumpCompleted",
                        message,
                    },
                )
            }
            (Step::Dump, _) => (
                DUMP_SUCCEEDED,
                Observed::new(DUMP_SUCCEEDED, false, "DumpFailed", message.clone()),
                Note {
                    warning: true,
                    reason: "DumpFailed",
                    message,
                },
            ),
            (Step::Upload, Outcome::Succeeded) => {
                status.last_upload_key = r.result.key.clone();
                status.last_upload_time = Some(r.finished.clone());
                status.last_upload_size = r.result.size.map(|s| s as i64);
                let key = r.result.key.clone().unwrap_or_default();
                (
                    UPLOAD_SUCCEEDED,
                    Observed::new(
                        UPLOAD_SUCCEEDED,
                        true,
                        "Uploaded",
                        format!("uploaded {key}"),
                    ),
                    Note {
                        warning: false,
                        reason: "Uploaded",
                        message: format!("uploaded {key}"),
                    },
                )
            }
            (Step::Upload, Outcome::Nothing) => continue,
            (Step::Fetch | Step::Restore, _) => continue,
            (Step::Upload, Outcome::Failed) => (
                UPLOAD_SUCCEEDED,
                Observed::new(UPLOAD_SUCCEEDED, false, "UploadFailed", message.clone()),
                Note {
                    warning: true,
                    reason: "UploadFailed",
                    message,
                },
            ),
        };
        debug_assert_eq!(type_, observed.type_);
        set_condition(&mut status.conditions, &observed, generation, now);
        notes.push(note);
    }
    let excess = status.log.len().saturating_sub(LOG_LINES_KEPT);
    status.log.drain(..excess);
    notes
}

/// Stale when a scheduled dump run passed, plus its grace, without a new
/// upload: the first run after the last upload (or the creation), in the
/// schedule's time zone. Its grace is the time its Jobs may take
/// (`max_run`), but no longer than until the run after it. Also returns when
/// to look again.
pub fn staleness(
    schedule: &croner::Cron,
    tz: chrono_tz::Tz,
    max_run: chrono::Duration,
    last_upload: Option<&Time>,
    created: Option<&Time>,
    now: chrono::DateTime<chrono::Utc>,
) -> (Observed, Option<std::time::Duration>) {
    let since = last_upload.or(created).map(to_chrono).unwrap_or(now);
    let current = || {
        Observed::new(
            STALE,
            false,
            "UploadsCurrent",
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
    let what = match last_upload {
        Some(_) => format!(
            "the last successful upload was at {}",
            since.format("%Y-%m-%dT%H:%M:%SZ")
        ),
        None => "no upload has succeeded since the resource was created".to_string(),
    };
    let o = Observed::new(
        STALE,
        true,
        "NoRecentUpload",
        format!(
            "{what}; the dump scheduled for {} should have been uploaded by {}",
            run.format("%Y-%m-%dT%H:%M:%S%:z"),
            deadline.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    );
    (o, None)
}

#[cfg(test)]
mod report_tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use std::str::FromStr;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn pod(uid: &str, step: &str, phase: &str, exit: i32, message: &str, finished: i64) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.labels = Some([("dbbackup.io/step".to_string(), step.to_string())].into());
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: Some(vec![ContainerStatus {
                name: step.into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: exit,
                        message: Some(message.into()),
                        finished_at: Some(at(finished)),
                        reason: Some(
                            match exit {
                                0 => "Completed",
                                137 => "OOMKilled",
                                _ => "Error",
                            }
                            .into(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn dump_ok(uid: &str, t: i64) -> Pod {
        pod(
            uid,
            "dump",
            "Succeeded",
            0,
            r#"{"step":"dump","outcome":"succeeded","size":10,"log":"2026-11-25,03:00:00,database dump completed"}"#,
            t,
        )
    }

    fn upload_ok(uid: &str, t: i64, key: &str) -> Pod {
        let msg = format!(
            r#"{{"step":"upload","outcome":"succeeded","key":"{key}","size":10,"log":"2026-11-25,03:05:00,file successfully uploaded"}}"#
        );
        pod(uid, "upload", "Succeeded", 0, &msg, t)
    }

    fn reports(pods: &[Pod]) -> (Vec<PodReport>, Vec<String>) {
        let r = pods
            .iter()
            .filter_map(|p| pod_report(p, chrono_tz::UTC))
            .collect();
        let uids = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        (r, uids)
    }

    #[test]
    fn running_pods_are_not_reported() {
        let mut p = dump_ok("a", 1);
        p.status.as_mut().unwrap().phase = Some("Running".into());
        assert_eq!(pod_report(&p, chrono_tz::UTC), None);
    }

    #[test]
    fn each_pod_counts_once_in_finish_order() {
        let pods = [upload_ok("u1", 20, "k1"), dump_ok("d1", 10)];
        let mut status = DatabaseBackupStatus::default();
        let (r, present) = reports(&pods);
        let notes = record_reports(&mut status, r.clone(), &present, Some(1), &at(30));
        assert_eq!(notes.len(), 2);
        assert_eq!(status.log.len(), 2);
        assert!(status.log[0].ends_with("database dump completed"));
        assert_eq!(status.last_upload_key.as_deref(), Some("k1"));
        assert_eq!(status.last_upload_time, Some(at(20)));
        assert_eq!(status.last_dump_time, Some(at(10)));
        // The same pods again (a resync, a restart): nothing changes.
        let before = status.clone();
        let notes = record_reports(&mut status, r, &present, Some(1), &at(40));
        assert!(notes.is_empty());
        assert_eq!(status, before);
    }

    #[test]
    fn gone_pods_leave_the_processed_list() {
        let mut status = DatabaseBackupStatus::default();
        let (r, present) = reports(&[dump_ok("d1", 10)]);
        record_reports(&mut status, r, &present, None, &at(11));
        assert_eq!(status.processed_pods, ["d1"]);
        record_reports(&mut status, vec![], &[], None, &at(12));
        assert!(status.processed_pods.is_empty());
        assert_eq!(status.log.len(), 1, "the line stays");
    }

    #[test]
    fn an_oom_kill_names_the_memory_limit_over_the_steps_own_result() {
        let mut p = pod(
            "x",
            "dump",
            "Failed",
            137,
            r#"{"step":"dump","outcome":"failed","log":"2025-11-25,04:00:00,database dump failed: dump tool exited with status 137"}"#,
            1_764_039_600,
        );
        let paris = chrono_tz::Tz::from_str("Europe/Paris").unwrap();
        let r = pod_report(&p, paris).unwrap();
        assert_eq!(
            r.result.log,
            "2025-11-25,04:00:00,database dump failed: out of memory (no memory limit set)"
        );
        p.spec = Some(
            serde_json::from_value(serde_json::json!({"containers": [{
                "name": "dump", "resources": {"limits": {"memory": "24Mi"}}
            }]}))
            .unwrap(),
        );
        let r = pod_report(&p, paris).unwrap();
        assert_eq!(
            r.result.log,
            "2025-11-25,04:00:00,database dump failed: out of memory (limit 24Mi)"
        );
    }

    fn waiting(step: &str, reason: &str, message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "orders-dump-1-x", "labels": { "dbbackup.io/step": step } },
            "status": { "phase": "Pending", "containerStatuses": [{
                "name": step, "image": "dbbackup.local/mariadb:nope", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": reason, "message": message } }
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_that_cannot_pull_its_image_is_stuck_with_the_image_named() {
        let (reason, o) = stuck(&waiting(
            "dump",
            "ImagePullBackOff",
            "Back-off pulling image",
        ))
        .unwrap();
        assert_eq!(reason, IMAGE_PULL_FAILED);
        assert_eq!(
            (o.type_, o.status, o.reason.as_str()),
            (DUMP_SUCCEEDED, false, IMAGE_PULL_FAILED)
        );
        assert_eq!(
            o.message,
            r#"pod orders-dump-1-x waits: image "dbbackup.local/mariadb:nope" cannot be pulled (ImagePullBackOff: Back-off pulling image)"#
        );
        // The kubelet's alternating detail is the same news.
        let (_, again) = stuck(&waiting("dump", "ErrImagePull", "dial tcp: refused")).unwrap();
        let mut conditions = vec![];
        set_condition(&mut conditions, &o, None, &at(1));
        assert!(says_stuck(&conditions[0], &again));
        let (reason, o) =
            stuck(&waiting("upload", "CreateContainerError", "no such file")).unwrap();
        assert_eq!((reason, o.type_), (CONTAINER_NOT_STARTED, UPLOAD_SUCCEEDED));
        assert!(!says_stuck(&conditions[0], &o));
        // Waiting for a reason that passes by itself is not stuck, nor is a finished pod.
        assert_eq!(stuck(&waiting("dump", "ContainerCreating", "")), None);
        let mut done = waiting("dump", "ErrImagePull", "");
        done.status.as_mut().unwrap().phase = Some("Failed".into());
        assert_eq!(stuck(&done), None);
    }

    #[test]
    fn a_pod_without_a_result_still_reports_its_failure() {
        let p = pod("x", "dump", "Failed", 1, "", 1_764_039_600);
        let r = pod_report(&p, chrono_tz::Tz::from_str("Europe/Paris").unwrap()).unwrap();
        assert_eq!(r.result.outcome, Outcome::Failed);
        assert_eq!(
            r.result.log,
            "2025-11-25,04:00:00,database dump failed: container exited with code 1 (Error)"
        );
        let mut status = DatabaseBackupStatus::default();
        let notes = record_reports(&mut status, vec![r], &["x".into()], None, &at(1));
        assert!(notes[0].warning);
        let c = find(&status.conditions, DUMP_SUCCEEDED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "DumpFailed")
        );
    }

    #[test]
    fn nothing_to_upload_logs_without_touching_conditions() {
        let p = pod(
            "n",
            "upload",
            "Succeeded",
            0,
            r#"{"step":"upload","outcome":"nothing","log":"2026-11-25,03:05:00,there is no file to upload"}"#,
            5,
        );
        let mut status = DatabaseBackupStatus::default();
        let (r, present) = reports(&[p]);
        let notes = record_reports(&mut status, r, &present, None, &at(6));
        assert!(notes.is_empty());
        assert!(status.conditions.is_empty());
        assert_eq!(
            status.log,
            ["2026-11-25,03:05:00,there is no file to upload"]
        );
    }

    fn failed_job(uid: &str, reason: &str) -> Job {
        use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
        let mut j = Job::default();
        j.metadata.uid = Some(uid.into());
        j.metadata.labels = Some([("dbbackup.io/step".to_string(), "dump".to_string())].into());
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some("Job was active longer than specified deadline".into()),
                last_transition_time: Some(at(1_764_039_600)),
                ..Default::default()
            }]),
            ..Default::default()
        });
        j
    }

    #[test]
    fn a_job_that_failed_without_a_pod_report_reports_itself() {
        let r = job_report(&failed_job("j1", "DeadlineExceeded"), chrono_tz::UTC).unwrap();
        assert_eq!(
            r.result.log,
            "2025-11-25,03:00:00,database dump failed: job failed: DeadlineExceeded: Job was active longer than specified deadline"
        );
        let mut status = DatabaseBackupStatus::default();
        record_reports(&mut status, vec![r.clone()], &["j1".into()], None, &at(2));
        assert_eq!(status.log.len(), 1);
        record_reports(&mut status, vec![r], &["j1".into()], None, &at(3));
        assert_eq!(status.log.len(), 1, "once");
    }

    #[test]
    fn a_job_whose_pod_reported_adds_no_second_line() {
        let mut p = pod("p1", "dump", "Failed", 2, "", 10);
        p.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "Job".into(),
                uid: "j1".into(),
                ..Default::default()
            },
        ]);
        let pod_r = pod_report(&p, chrono_tz::UTC).unwrap();
        let job_r = job_report(&failed_job("j1", "BackoffLimitExceeded"), chrono_tz::UTC).unwrap();
        let present = vec!["p1".to_string(), "j1".to_string()];
        // In one batch, and in a later one after the pod was recorded.
        let mut status = DatabaseBackupStatus::default();
        record_reports(
            &mut status,
            vec![job_r.clone(), pod_r.clone()],
            &present,
            None,
            &at(20),
        );
        assert_eq!(status.log.len(), 1, "{:?}", status.log);
        let mut status = DatabaseBackupStatus::default();
        record_reports(&mut status, vec![pod_r], &present, None, &at(20));
        record_reports(&mut status, vec![job_r], &present, None, &at(21));
        assert_eq!(status.log.len(), 1, "{:?}", status.log);
    }

    #[test]
    fn log_keeps_the_newest_lines() {
        let pods: Vec<Pod> = (0..60).map(|i| dump_ok(&format!("p{i:02}"), i)).collect();
        let mut status = DatabaseBackupStatus::default();
        let (r, present) = reports(&pods);
        record_reports(&mut status, r, &present, None, &at(100));
        assert_eq!(status.log.len(), LOG_LINES_KEPT);
        assert_eq!(status.processed_pods.len(), 60);
    }

    fn time(rfc3339: &str) -> Time {
        Time(rfc3339.parse().unwrap())
    }

    fn stale_at(schedule: &str, tz: &str, uploaded: &str, now: &str) -> bool {
        let schedule = crate::operator::checks::parse_schedule(schedule).unwrap();
        let now = to_chrono(&time(now));
        let (o, _) = staleness(
            &schedule,
            tz.parse().unwrap(),
            chrono::Duration::minutes(65),
            Some(&time(uploaded)),
            None,
            now,
        );
        o.status
    }

    #[test]
    fn a_weekday_schedule_is_not_stale_over_the_weekend() {
        let weekdays = ("0 3 * * 1-5", "Europe/Paris");
        // Friday 2026-11-27 03:00 Paris (02:00Z) uploaded at 02:05Z.
        let friday = "2026-11-27T02:05:00Z";
        for now in [
            "2026-11-28T12:00:00Z",
            "2026-11-29T23:00:00Z",
            "2026-11-30T03:00:00Z",
        ] {
            assert!(!stale_at(weekdays.0, weekdays.1, friday, now), "{now}");
        }
        // Monday's run (02:00Z) missed: stale once its grace (65 min) passed.
        assert!(stale_at(
            weekdays.0,
            weekdays.1,
            friday,
            "2026-11-30T03:06:00Z"
        ));
    }

    #[test]
    fn hourly_in_office_hours_is_not_stale_at_night() {
        let office = ("0 9-17 * * *", "UTC");
        let last = "2026-11-26T17:02:00Z";
        for now in [
            "2026-11-26T20:00:00Z",
            "2026-11-27T08:59:00Z",
            "2026-11-27T09:30:00Z",
        ] {
            assert!(!stale_at(office.0, office.1, last, now), "{now}");
        }
        // 09:00's run missed: the grace ends at the next run, 10:00.
        assert!(stale_at(office.0, office.1, last, "2026-11-27T10:00:01Z"));
        // In the day an upload each hour keeps it current.
        assert!(!stale_at(
            office.0,
            office.1,
            "2026-11-27T10:01:00Z",
            "2026-11-27T11:30:00Z"
        ));
        assert!(stale_at(
            office.0,
            office.1,
            "2026-11-27T10:01:00Z",
            "2026-11-27T12:00:01Z"
        ));
    }

    #[test]
    fn staleness_counts_from_creation_and_says_when_to_look_again() {
        let hourly = crate::operator::checks::parse_schedule("0 * * * *").unwrap();
        let created = time("2026-11-26T10:30:00Z");
        let (fresh, due) = staleness(
            &hourly,
            chrono_tz::UTC,
            chrono::Duration::hours(6),
            None,
            Some(&created),
            to_chrono(&time("2026-11-26T11:30:00Z")),
        );
        assert!(!fresh.status);
        // The 11:00 run may take until 12:00, when the next one starts.
        assert_eq!(due, Some(std::time::Duration::from_secs(30 * 60)));
        let (stale, _) = staleness(
            &hourly,
            chrono_tz::UTC,
            chrono::Duration::hours(6),
            None,
            Some(&created),
            to_chrono(&time("2026-11-26T12:00:01Z")),
        );
        assert_eq!(
            (stale.status, stale.reason.as_str()),
            (true, "NoRecentUpload")
        );
    }
}
