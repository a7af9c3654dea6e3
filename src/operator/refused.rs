//! Jobs of ours whose pods the API server refuses to create.
//!
//! A ResourceQuota (or another admission rule) that refuses a Job's pod
//! leaves no mark on the Job: the Job controller records a Warning Event,
//! reason `FailedCreate`, on the Job and retries until the Job's deadline,
//! hours away. The operator watches those Events and says, within the
//! minute, what refused the pod.

use crate::reasons::{PODS_NOT_CREATED, QUOTA_EXCEEDED};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::runtime::watcher;

/// The Events the Job controller records when it cannot create a pod.
pub fn failed_create() -> watcher::Config {
    watcher::Config::default().fields("involvedObject.kind=Job,reason=FailedCreate")
}

/// Why `job` has no pod running, from its newest `FailedCreate` Event among
/// `events` that is newer than its newest pod among `pods`: the reason, and
/// a message that names the quota, if a quota refused it. None while a pod
/// of it runs, and once it has finished. A Job that retries a failed pod
/// (backoffLimit above 0) is refused again when its retry is.
pub fn refusal<'a>(
    job: &Job,
    events: impl IntoIterator<Item = &'a Event>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Option<(&'static str, String)> {
    let status = job.status.as_ref();
    let running = status.is_some_and(|s| {
        [s.active, s.ready, s.terminating]
            .into_iter()
            .any(|n| n.unwrap_or(0) > 0)
    });
    if running || super::results::finished(job) {
        return None;
    }
    let uid = job.uid()?;
    let newest_pod = pods
        .into_iter()
        .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
        .filter_map(|p| p.metadata.creation_timestamp.as_ref())
        .map(|t| t.0.as_nanosecond())
        .max();
    let newest = events
        .into_iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid.as_str()))
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .filter(|e| newest_pod.is_none_or(|p| when(e).is_some_and(|t| t > p)))
        .max_by_key(|e| when(e))?;
    let detail = newest.message.clone().unwrap_or_default();
    let job_name = job.name_any();
    Some(match quota_named(&detail) {
        Some(quota) => (
            QUOTA_EXCEEDED,
            format!(
                "job {job_name} cannot create its pod: ResourceQuota {quota:?} refuses it ({detail})"
            ),
        ),
        None => (
            PODS_NOT_CREATED,
            format!("job {job_name} cannot create its pod ({detail})"),
        ),
    })
}

/// When the Event last happened, by whichever clock its writer set.
fn when(e: &Event) -> Option<i128> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(|t| t.as_nanosecond())
}

/// The quota in the API server's refusal: "exceeded quota: NAME, requested:
/// …", "failed quota: NAME: must specify …", "status unknown for quota: NAME".
fn quota_named(message: &str) -> Option<&str> {
    [
        "exceeded quota: ",
        "failed quota: ",
        "status unknown for quota: ",
    ]
    .into_iter()
    .find_map(|marker| {
        let rest = &message[message.find(marker)? + marker.len()..];
        let end = rest.find([',', ':', ' ']).unwrap_or(rest.len());
        Some(&rest[..end]).filter(|name| !name.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "orders-dump-1", "uid": "u1" },
            "status": status
        }))
        .unwrap()
    }

    fn event(uid: &str, at: &str, message: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("e-{at}") },
            "involvedObject": { "kind": "Job", "name": "orders-dump-1", "uid": uid },
            "reason": "FailedCreate",
            "lastTimestamp": at,
            "message": message
        }))
        .unwrap()
    }

    const EXCEEDED: &str = r#"Error creating: pods "orders-dump-1-x" is forbidden: exceeded quota: tight, requested: requests.memory=128Mi, used: requests.memory=0, limited: requests.memory=1Mi"#;
    const UNSPECIFIED: &str = r#"Error creating: pods "orders-dump-1-x" is forbidden: failed quota: compute: must specify limits.cpu for: dump"#;

    #[test]
    fn a_refused_pod_names_the_quota_from_the_newest_event() {
        let events = [
            event("u1", "2026-12-05T10:00:00Z", UNSPECIFIED),
            event("u1", "2026-12-05T10:00:05Z", EXCEEDED),
            event("other", "2026-12-05T10:00:09Z", "admission webhook denied"),
        ];
        let (reason, message) = refusal(&job(serde_json::json!({})), &events, []).unwrap();
        assert_eq!(reason, QUOTA_EXCEEDED);
        assert!(
            message.starts_with(r#"job orders-dump-1 cannot create its pod: ResourceQuota "tight" refuses it (Error creating"#),
            "{message}"
        );
        let (_, message) = refusal(&job(serde_json::json!({})), &events[..1], []).unwrap();
        assert!(message.contains(r#"ResourceQuota "compute""#), "{message}");
    }

    #[test]
    fn another_refusal_is_said_as_it_is_and_a_job_with_a_pod_is_not_refused() {
        let denied = event(
            "u1",
            "2026-12-05T10:00:00Z",
            "admission webhook \"x\" denied",
        );
        let (reason, message) = refusal(&job(serde_json::json!({})), [&denied], []).unwrap();
        assert_eq!(reason, PODS_NOT_CREATED);
        assert_eq!(
            message,
            "job orders-dump-1 cannot create its pod (admission webhook \"x\" denied)"
        );
        assert_eq!(
            refusal(&job(serde_json::json!({"active": 1})), [&denied], []),
            None
        );
        let done = serde_json::json!({"conditions": [{"type": "Failed", "status": "True"}]});
        assert_eq!(refusal(&job(done), [&denied], []), None);
        assert_eq!(refusal(&job(serde_json::json!({})), [], []), None);
    }

    fn pod(owner: &str, created: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "orders-dump-1-x", "creationTimestamp": created,
                "ownerReferences": [{
                    "apiVersion": "batch/v1", "kind": "Job", "name": "orders-dump-1", "uid": owner
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_retry_refused_after_a_failed_pod_is_said_and_an_older_refusal_is_not() {
        let failed_once = job(serde_json::json!({"failed": 1}));
        let first = pod("u1", "2026-12-05T10:00:02Z");
        let before = event("u1", "2026-12-05T10:00:00Z", EXCEEDED);
        // Refused, then created: the refusal is over.
        assert_eq!(refusal(&failed_once, [&before], [&first]), None);
        // That pod failed, and the quota refuses its retry.
        let retry = event("u1", "2026-12-05T10:05:00Z", EXCEEDED);
        let (reason, _) = refusal(&failed_once, [&before, &retry], [&first]).unwrap();
        assert_eq!(reason, QUOTA_EXCEEDED);
        // Another Job's pod says nothing of this one.
        assert!(
            refusal(
                &failed_once,
                [&before],
                [&pod("u2", "2026-12-05T10:00:02Z")]
            )
            .is_some()
        );
    }
}
