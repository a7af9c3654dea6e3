//! What the finished pods and failed Jobs of a backup report, and which of
//! its pods cannot start.

use crate::jobresult::{JobResult, Outcome, Step};
use crate::names;
use crate::operator::conditions::{DUMP_SUCCEEDED, Observed, UPLOAD_SUCCEEDED, VERIFIED};
use crate::operator::refused;
use crate::operator::results::{exit_cause, failure, job_failure};
use crate::reasons::{CONTAINER_NOT_STARTED, IMAGE_PULL_FAILED};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

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
    /// When the pod started (a drill's duration counts from here).
    pub started: Option<Time>,
    /// The object a drill's pod drilled.
    pub key: Option<String>,
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
            return failure(step, &finished, tz, &out_of_memory(pod, None));
        }
        let cause = match terminated {
            Some(t) => exit_cause(t),
            None => init_failure(pod).unwrap_or_else(|| {
                format!(
                    "pod failed: {}",
                    status
                        .reason
                        .clone()
                        .or(status.message.clone())
                        .unwrap_or_else(|| "unknown reason".into())
                )
            }),
        };
        failure(step, &finished, tz, &cause)
    });
    let result = match (step, terminated) {
        // A drill whose download failed (checksum, missing object) says why.
        (Step::Verify, None) => fetch_failure(pod).unwrap_or(result),
        _ => result,
    };
    Some(PodReport {
        uid: pod.uid()?,
        step,
        finished,
        result,
        run_now: pod.labels().get(names::RUN_NOW).cloned(),
        job: pod
            .owner_references()
            .iter()
            .find(|o| o.kind == "Job")
            .map(|o| o.uid.clone()),
        started: status.start_time.clone(),
        key: pod.annotations().get(names::VERIFY_KEY_ANNOTATION).cloned(),
    })
}

/// The failure a pod's `fetch` init container reported, as its step's.
fn fetch_failure(pod: &Pod) -> Option<JobResult> {
    let init = pod.status.as_ref()?.init_container_statuses.as_ref()?;
    let t = init.first()?.state.as_ref()?.terminated.as_ref()?;
    let mut r = JobResult::parse(t.message.as_deref()?)?;
    (r.step == Step::Fetch && r.outcome == Outcome::Failed).then(|| {
        r.step = Step::Verify;
        r
    })
}

/// Why an init container failed, so the step never started: "container
/// \"copy-binary\": out of memory (limit 24Mi)" rather than an unknown reason.
fn init_failure(pod: &Pod) -> Option<String> {
    let (name, t) = pod
        .status
        .as_ref()?
        .init_container_statuses
        .iter()
        .flatten()
        .find_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            (t.exit_code != 0).then_some((&c.name, t))
        })?;
    let cause = match t.reason.as_deref() {
        Some("OOMKilled") => out_of_memory(pod, Some(name)),
        _ => exit_cause(t),
    };
    Some(format!("container {name:?}: {cause}"))
}

/// "out of memory (limit 64Mi)": the limit of the init container `init`, or
/// else of the pod's container, if any.
fn out_of_memory(pod: &Pod, init: Option<&str>) -> String {
    let limit = pod
        .spec
        .as_ref()
        .and_then(|s| match init {
            Some(name) => s.init_containers.iter().flatten().find(|c| c.name == name),
            None => s.containers.first(),
        })
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
    let message = format!("pod {} waits: {what} ({detail})", pod.name_any());
    Some((
        reason,
        Observed::new(condition_of(step), false, reason, message),
    ))
}

/// Why a Job of ours that has not finished cannot create its pod (a quota,
/// `refused::refusal`), as the condition of its step.
pub fn refused<'a>(
    job: &Job,
    events: impl IntoIterator<Item = &'a Event>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Option<(&'static str, Observed)> {
    let step = step_of(job.labels())?;
    let (reason, message) = refused::refusal(job, events, pods)?;
    Some((
        reason,
        Observed::new(condition_of(step), false, reason, message),
    ))
}

/// The condition that says how the step's runs went.
fn condition_of(step: Step) -> &'static str {
    match step {
        Step::Upload => UPLOAD_SUCCEEDED,
        Step::Verify => VERIFIED,
        _ => DUMP_SUCCEEDED,
    }
}

/// The backup step a pod or Job of ours runs, from its label.
fn step_of(labels: &std::collections::BTreeMap<String, String>) -> Option<Step> {
    let label = labels.get(names::LABEL_STEP)?;
    [Step::Dump, Step::Upload, Step::Verify]
        .into_iter()
        .find(|s| s.as_str() == label)
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
        started: None,
        key: None,
    })
}
