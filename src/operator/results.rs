//! What finished pods and Jobs of ours tell: a step's result from its
//! termination message, or a failure line for one that could not write it.
//! Shared by backups and restores.

use crate::jobresult::{JobResult, Outcome, Step};
use crate::logline::LogLine;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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
        Step::Verify => "backup verification failed",
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

/// True once the Job completed or failed for good.
pub fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                matches!(c.type_.as_str(), "Complete" | "Failed" | "FailureTarget")
                    && c.status == "True"
            })
        })
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
