//! A restore's status from its Job and that Job's pod.

use crate::api::{DatabaseRestoreStatus, RestorePhase};
use crate::jobresult::{JobResult, Outcome, Step};
use crate::operator::conditions::{Observed, RESTORED};
use crate::operator::results::{exit_cause, failure, job_failure};
use crate::reasons;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What one container of the restore reported, and when it finished.
type Reported = (JobResult, Option<Time>);

/// The result a container reported, or a failure line for one that died without one.
fn container_result(c: &ContainerStatus, step: Step) -> Option<Reported> {
    let t = c.state.as_ref()?.terminated.as_ref()?;
    let result = t
        .message
        .as_deref()
        .and_then(JobResult::parse)
        .filter(|r| r.step == step)
        .or_else(|| {
            let finished = t.finished_at.clone()?;
            (t.exit_code != 0).then(|| failure(step, &finished, chrono_tz::UTC, &exit_cause(t)))
        })?;
    Some((result, t.finished_at.clone()))
}

/// The status the Job and its pod show, from `old` (which holds the start time).
pub fn observe(
    old: &DatabaseRestoreStatus,
    job: Option<&Job>,
    pod: Option<&Pod>,
) -> (DatabaseRestoreStatus, Observed) {
    let mut s = old.clone();
    s.start_time = s.start_time.clone().or_else(|| {
        job.and_then(|j| j.status.as_ref())
            .and_then(|st| st.start_time.clone())
    });
    let pod_status = pod.and_then(|p| p.status.as_ref());
    // Jobs made before restores streamed downloaded in a `fetch` init container.
    let fetched = pod_status
        .and_then(|st| st.init_container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "fetch"))
        .and_then(|c| container_result(c, Step::Fetch));
    let loaded = pod_status
        .and_then(|st| st.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| container_result(c, Step::Restore));
    s.log = fetched
        .iter()
        .chain(&loaded)
        .flat_map(|(r, _)| std::iter::once(&r.log).chain(&r.more_log))
        .cloned()
        .collect();
    if let Some((r, _)) = fetched
        .iter()
        .chain(&loaded)
        .rfind(|(r, _)| r.outcome == Outcome::Succeeded && r.key.is_some())
    {
        s.key = r.key.clone();
        s.key_reason = r.chosen.clone();
        s.size = r.size.map(|n| n as i64);
    }
    let observed = finished(&mut s, job, fetched, loaded).unwrap_or_else(|| {
        let (phase, reason, message) = match job {
            Some(_) => (
                RestorePhase::Running,
                reasons::RUNNING,
                "the restore job is running",
            ),
            None => (
                RestorePhase::Pending,
                reasons::PENDING,
                "the restore job is being created",
            ),
        };
        s.phase = Some(phase);
        Observed::new(RESTORED, false, reason, message)
    });
    (s, observed)
}

/// A restore whose locate Job (across namespaces) failed: Failed, as a
/// failed download is, with that Job's lines.
pub fn located_failure(
    old: &DatabaseRestoreStatus,
    r: &JobResult,
) -> (DatabaseRestoreStatus, Observed) {
    let mut s = old.clone();
    s.log = std::iter::once(&r.log)
        .chain(&r.more_log)
        .cloned()
        .collect();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let observed = finished(&mut s, None, Some((r.clone(), Some(now))), None)
        .expect("a failed step is an end");
    (s, observed)
}

/// The restore's end, if it ended: loaded, or the first step that failed,
/// or the Job's own failure (its deadline) when no step could say.
fn finished(
    s: &mut DatabaseRestoreStatus,
    job: Option<&Job>,
    fetched: Option<Reported>,
    loaded: Option<Reported>,
) -> Option<Observed> {
    if let Some((l, finished)) = &loaded
        && l.outcome == Outcome::Succeeded
    {
        s.phase = Some(RestorePhase::Succeeded);
        s.completion_time = finished.clone();
        let into = s.key.clone().unwrap_or_default();
        return Some(Observed::new(
            RESTORED,
            true,
            reasons::RESTORED,
            format!("restored {into}"),
        ));
    }
    let failed = fetched
        .filter(|(f, _)| f.outcome != Outcome::Succeeded)
        .map(|(r, t)| (r, reasons::DOWNLOAD_FAILED, t))
        .or(loaded.map(|(r, t)| (r, reasons::RESTORE_FAILED, t)));
    if let Some((r, default_reason, finished)) = failed {
        s.phase = Some(RestorePhase::Failed);
        s.completion_time = finished;
        let reason = known_reason(r.reason.as_deref()).unwrap_or(default_reason);
        return Some(Observed::new(RESTORED, false, reason, r.message()));
    }
    let (when, reason, cause) = job.and_then(job_failure)?;
    let r = failure(Step::Restore, &when, chrono_tz::UTC, &cause);
    s.log.push(r.log.clone());
    s.phase = Some(RestorePhase::Failed);
    s.completion_time = Some(when);
    let reason = match reason.as_deref() {
        Some(reasons::DEADLINE_EXCEEDED) => reasons::DEADLINE_EXCEEDED,
        _ => reasons::JOB_FAILED,
    };
    Some(Observed::new(RESTORED, false, reason, r.message()))
}

/// A reason a restore container reported, if it is one of ours.
fn known_reason(reason: Option<&str>) -> Option<&'static str> {
    let reason = reason?;
    reasons::RESTORE_STEP_FAILURES
        .into_iter()
        .find(|k| *k == reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, PodStatus};

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn terminated(name: &str, exit: i32, message: &str, finished: i64) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: exit,
                    message: Some(message.into()),
                    finished_at: Some(at(finished)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(init: Option<ContainerStatus>, main: Option<ContainerStatus>) -> Pod {
        Pod {
            status: Some(PodStatus {
                init_container_statuses: init.map(|c| vec![c]),
                container_statuses: main.map(|c| vec![c]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const FETCHED: &str = r#"{"step":"fetch","outcome":"succeeded","key":"2026-11-25/datadump2.sql","size":42,"log":"2026-11-25,10:00:01,downloaded 2026-11-25/datadump2.sql (42 bytes, checksum verified)"}"#;

    fn job() -> Job {
        Job {
            status: Some(JobStatus {
                start_time: Some(at(100)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn success_records_key_times_and_both_lines() {
        let done = r#"{"step":"restore","outcome":"succeeded","key":"2026-11-25/datadump2.sql","size":42,"log":"2026-11-25,10:00:08,downloaded 2026-11-25/datadump2.sql (42 bytes, checksum verified)","more_log":["2026-11-25,10:00:09,database restore completed"]}"#;
        let p = pod(None, Some(terminated("restore", 0, done, 109)));
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(s.phase, Some(RestorePhase::Succeeded));
        assert_eq!(s.key.as_deref(), Some("2026-11-25/datadump2.sql"));
        assert_eq!(s.size, Some(42));
        assert_eq!(
            (s.start_time, s.completion_time),
            (Some(at(100)), Some(at(109)))
        );
        assert_eq!(s.log.len(), 2, "{:?}", s.log);
        assert!(s.log[1].ends_with(",database restore completed"));
        assert!(c.status);
        // A Job of before: its fetch init container's result, then the load's.
        let loaded = r#"{"step":"restore","outcome":"succeeded","log":"2026-11-25,10:00:09,database restore completed"}"#;
        let p = pod(
            Some(terminated("fetch", 0, FETCHED, 101)),
            Some(terminated("restore", 0, loaded, 109)),
        );
        let (s, _) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(s.key.as_deref(), Some("2026-11-25/datadump2.sql"));
        assert_eq!(s.log.len(), 2);
    }

    #[test]
    fn a_dump_that_does_not_check_out_names_why() {
        let bad = r#"{"step":"restore","outcome":"failed","reason":"ChecksumMismatch","log":"2026-11-25,10:00:01,database restore failed: k does not match its checksum; the target is unchanged"}"#;
        let p = pod(None, Some(terminated("restore", 1, bad, 101)));
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(s.phase, Some(RestorePhase::Failed));
        assert_eq!(c.reason, "ChecksumMismatch");
        assert_eq!(s.key, None);
    }

    #[test]
    fn the_load_steps_reason_becomes_the_condition_reason() {
        let refused = r#"{"step":"restore","outcome":"failed","reason":"TargetNotEmpty","log":"2026-11-25,10:00:02,database restore failed: database shop already has 6 tables; set spec.overwrite: true to replace its content"}"#;
        let p = pod(
            Some(terminated("fetch", 0, FETCHED, 101)),
            Some(terminated("restore", 1, refused, 102)),
        );
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(s.phase, Some(RestorePhase::Failed));
        assert_eq!((c.status, c.reason.as_str()), (false, "TargetNotEmpty"));
        assert!(
            c.message
                .starts_with("database restore failed: database shop")
        );
    }

    #[test]
    fn a_failed_download_stops_there() {
        let bad = r#"{"step":"fetch","outcome":"failed","reason":"ChecksumMismatch","log":"2026-11-25,10:00:01,download failed: k does not match its checksum"}"#;
        let p = pod(Some(terminated("fetch", 1, bad, 101)), None);
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(s.phase, Some(RestorePhase::Failed));
        assert_eq!(c.reason, "ChecksumMismatch");
        assert_eq!(s.key, None);
        // A container that died without a result still fails the restore, by exit code.
        let p = pod(Some(terminated("fetch", 137, "", 101)), None);
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(
            (s.phase, c.reason.as_str()),
            (Some(RestorePhase::Failed), "DownloadFailed")
        );
        assert!(
            s.log[0].ends_with("download failed: container exited with code 137"),
            "{:?}",
            s.log
        );
        // Reasons are ours only: anything else is the step's generic one.
        let odd = bad.replace("ChecksumMismatch", "Whatever");
        let p = pod(Some(terminated("fetch", 1, &odd, 101)), None);
        assert_eq!(
            observe(&Default::default(), None, Some(&p)).1.reason,
            "DownloadFailed"
        );
    }

    #[test]
    fn a_job_past_its_deadline_fails_the_restore() {
        let mut j = job();
        j.status.as_mut().unwrap().conditions = Some(vec![JobCondition {
            type_: "Failed".into(),
            status: "True".into(),
            reason: Some("DeadlineExceeded".into()),
            message: Some("Job was active longer than specified deadline".into()),
            last_transition_time: Some(at(200)),
            ..Default::default()
        }]);
        let (s, c) = observe(&Default::default(), Some(&j), None);
        assert_eq!(
            (s.phase, c.reason.as_str()),
            (Some(RestorePhase::Failed), "DeadlineExceeded")
        );
        assert_eq!(s.completion_time, Some(at(200)));
    }

    #[test]
    fn pending_then_running() {
        let (s, c) = observe(&Default::default(), None, None);
        assert_eq!(
            (s.phase, c.reason.as_str()),
            (Some(RestorePhase::Pending), "Pending")
        );
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&pod(None, None)));
        assert_eq!(
            (s.phase, c.reason.as_str()),
            (Some(RestorePhase::Running), "Running")
        );
        assert_eq!(s.start_time, Some(at(100)));
    }
}
