//! The backup's status logic: reports of pods and Jobs, their folding into
//! the status, and staleness.

use super::reports::*;
use super::status::*;
use crate::api::DatabaseBackupStatus;
use crate::jobresult::Outcome;
use crate::operator::conditions::*;
use crate::operator::results::to_chrono;
use crate::reasons::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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
    let (notes, _) = record_reports(&mut status, r.clone(), &present, Some(1), &at(30));
    assert_eq!(notes.len(), 2);
    assert_eq!(status.log.len(), 2);
    assert!(status.log[0].ends_with("database dump completed"));
    assert_eq!(status.last_upload_key.as_deref(), Some("k1"));
    assert_eq!(status.last_upload_time, Some(at(20)));
    assert_eq!(status.last_dump_time, Some(at(10)));
    // The same pods again (a resync, a restart): nothing changes.
    let before = status.clone();
    let (notes, _) = record_reports(&mut status, r, &present, Some(1), &at(40));
    assert!(notes.is_empty());
    assert_eq!(status, before);
}

/// Failures and confirmed uploads become notices, named by their pod, once;
/// a completed dump tells the receivers nothing.
#[test]
fn failures_and_uploads_become_notices_once() {
    let failed = pod(
        "d2",
        "dump",
        "Failed",
        2,
        r#"{"step":"dump","outcome":"failed","log":"2025-11-25,04:00:00,database dump failed: access denied"}"#,
        30,
    );
    let pods = [upload_ok("u1", 20, "k1"), dump_ok("d1", 10), failed];
    let mut status = DatabaseBackupStatus::default();
    let (r, present) = reports(&pods);
    let (_, notices) = record_reports(&mut status, r.clone(), &present, Some(1), &at(40));
    let seen: Vec<_> = notices
        .iter()
        .map(|n| (n.event, n.id.as_str(), n.reason.as_str(), n.key.as_deref()))
        .collect();
    use crate::api::NotifyEvent::*;
    assert_eq!(
        seen,
        [
            (Success, "u1", UPLOADED, Some("k1")),
            (Failure, "d2", DUMP_FAILED, None)
        ]
    );
    assert_eq!(notices[1].message, "database dump failed: access denied");
    let (_, again) = record_reports(&mut status, r, &present, Some(1), &at(50));
    assert!(again.is_empty());
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

/// A pod whose init container was killed never ran its step: the line says
/// which container, and its own limit, instead of "unknown reason".
#[test]
fn a_failed_init_container_is_named_with_its_cause() {
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "uid": "x", "creationTimestamp": "2025-11-25T03:00:00Z",
                      "labels": { "dbbackup.io/step": "dump" } },
        "spec": {
            "initContainers": [{ "name": "copy-binary",
                                 "resources": {"limits": {"memory": "24Mi"}} }],
            "containers": [{ "name": "dump", "resources": {"limits": {"memory": "1Gi"}} }]
        },
        "status": {
            "phase": "Failed",
            "initContainerStatuses": [{
                "name": "copy-binary", "image": "", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } }
            }],
            "containerStatuses": [{
                "name": "dump", "image": "", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": { "waiting": { "reason": "PodInitializing" } }
            }]
        }
    }))
    .unwrap();
    let paris = chrono_tz::Tz::from_str("Europe/Paris").unwrap();
    assert_eq!(
        pod_report(&p, paris).unwrap().result.log,
        "2025-11-25,04:00:00,database dump failed: container \"copy-binary\": \
         out of memory (limit 24Mi)"
    );
    let mut p = p;
    let init = &mut p
        .status
        .as_mut()
        .unwrap()
        .init_container_statuses
        .as_mut()
        .unwrap()[0];
    let t = init.state.as_mut().unwrap().terminated.as_mut().unwrap();
    t.exit_code = 1;
    t.reason = Some("Error".into());
    assert_eq!(
        pod_report(&p, paris).unwrap().result.log,
        "2025-11-25,04:00:00,database dump failed: container \"copy-binary\": \
         container exited with code 1 (Error)"
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
    let (reason, o) = stuck(&waiting("upload", "CreateContainerError", "no such file")).unwrap();
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
    let (notes, _) = record_reports(&mut status, vec![r], &["x".into()], None, &at(1));
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
    let (notes, _) = record_reports(&mut status, r, &present, None, &at(6));
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
        (None, None),
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
        (Some(&created), None),
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
        (Some(&created), None),
        to_chrono(&time("2026-11-26T12:00:01Z")),
    );
    assert_eq!(
        (stale.status, stale.reason.as_str()),
        (true, "NoRecentUpload")
    );
}

#[test]
fn a_drill_schedule_is_due_once_its_time_passed_and_says_when_next() {
    let nightly = crate::operator::checks::parse_schedule("0 3 * * *").unwrap();
    let since = time("2026-11-26T02:00:00Z");
    let at = |t: &str| to_chrono(&time(t));
    let (due, next) = super::drill_due(
        &nightly,
        chrono_tz::UTC,
        Some(&since),
        at("2026-11-26T02:59:00Z"),
    );
    assert!(!due);
    assert_eq!(next, Some(std::time::Duration::from_secs(61)));
    let (due, next) = super::drill_due(
        &nightly,
        chrono_tz::UTC,
        Some(&since),
        at("2026-11-26T03:00:30Z"),
    );
    assert!(due);
    assert_eq!(
        next,
        Some(std::time::Duration::from_secs(24 * 3600 - 30 + 1))
    );
    // Started at 03:00:30, the next is tomorrow's.
    let started = time("2026-11-26T03:00:30Z");
    let (due, _) = super::drill_due(
        &nightly,
        chrono_tz::UTC,
        Some(&started),
        at("2026-11-26T12:00:00Z"),
    );
    assert!(!due);
}

#[test]
fn the_catalog_holds_the_newest_uploads_first_bounded_and_marks_drills() {
    let mut status = DatabaseBackupStatus::default();
    let pods: Vec<Pod> = (0..25)
        .map(|i| upload_ok(&format!("u{i}"), 100 + i, &format!("k{i}")))
        .collect();
    let (r, present) = reports(&pods);
    record_reports(&mut status, r, &present, Some(1), &at(200));
    let keys: Vec<&str> = status.recent.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys.len(), crate::api::RECENT_KEPT);
    assert_eq!((keys[0], keys[19]), ("k24", "k5"));
    assert_eq!(status.recent[0].size, Some(10));
    assert_eq!(status.recent[0].time, Some(at(124)));
    // A drill's verdict lands on its entry.
    let drill = pod(
        "v1",
        "verify",
        "Succeeded",
        0,
        r#"{"step":"verify","outcome":"succeeded","key":"k23","tables":3,"log":"2026-11-25,03:10:00,backup verified k23 (3 tables)"}"#,
        300,
    );
    let (r, _) = reports(std::slice::from_ref(&drill));
    let mut present: Vec<String> = present;
    present.push("v1".into());
    record_reports(&mut status, r, &present, Some(1), &at(300));
    assert_eq!(status.recent[1].verified, Some(true));
    assert_eq!(status.recent[0].verified, None);
}

/// A failed drill is a verificationFailure notice, with the drilled key and
/// the drill's own reason; a passed one tells the receivers nothing.
#[test]
fn a_failed_drill_becomes_a_verification_failure_notice() {
    let mut status = DatabaseBackupStatus::default();
    let drills = [
        pod(
            "v1",
            "verify",
            "Succeeded",
            0,
            r#"{"step":"verify","outcome":"succeeded","key":"k1","tables":3,"log":"2026-11-25,03:10:00,backup verified k1 (3 tables)"}"#,
            10,
        ),
        pod(
            "v2",
            "verify",
            "Failed",
            1,
            r#"{"step":"verify","outcome":"failed","key":"k2","reason":"CheckFailed","log":"2026-11-25,04:10:00,verification failed: SELECT count(*) FROM orders returned 0, expected at least 1"}"#,
            20,
        ),
    ];
    let (r, present) = reports(&drills);
    let (_, notices) = record_reports(&mut status, r, &present, Some(1), &at(30));
    assert_eq!(notices.len(), 1, "{notices:?}");
    let n = &notices[0];
    assert_eq!(
        (n.event, n.id.as_str(), n.reason.as_str(), n.key.as_deref()),
        (
            crate::api::NotifyEvent::VerificationFailure,
            "v2",
            CHECK_FAILED,
            Some("k2")
        )
    );
    assert!(
        n.message.starts_with("verification failed:"),
        "{}",
        n.message
    );
}

/// A schedule suspended for days and resumed is not stale for the runs the
/// suspension skipped: runs count from the resume. While suspended, Stale is
/// False with reason Suspended.
#[test]
fn a_resumed_schedule_counts_runs_from_the_resume() {
    let hourly = crate::operator::checks::parse_schedule("0 * * * *").unwrap();
    let judge = |resumed: Option<&Time>, now: &str| {
        staleness(
            &hourly,
            chrono_tz::UTC,
            chrono::Duration::hours(6),
            Some(&time("2026-11-20T10:05:00Z")),
            (Some(&time("2026-11-01T00:00:00Z")), resumed),
            to_chrono(&time(now)),
        )
        .0
    };
    let resumed = time("2026-11-26T10:30:00Z");
    assert!(
        judge(None, "2026-11-26T10:31:00Z").status,
        "without the resume time"
    );
    assert!(!judge(Some(&resumed), "2026-11-26T10:31:00Z").status);
    assert!(!judge(Some(&resumed), "2026-11-26T11:59:00Z").status);
    let missed = judge(Some(&resumed), "2026-11-26T12:00:01Z");
    assert!(missed.status);
    assert!(
        missed.message.starts_with(
            "no upload has succeeded since the schedule was resumed at 2026-11-26T10:30:00Z"
        ),
        "{}",
        missed.message
    );
    // An upload after the resume counts as usual.
    let (after, _) = staleness(
        &hourly,
        chrono_tz::UTC,
        chrono::Duration::hours(6),
        Some(&time("2026-11-26T11:05:00Z")),
        (None, Some(&resumed)),
        to_chrono(&time("2026-11-26T12:30:00Z")),
    );
    assert!(!after.status);
    let s = suspended();
    assert_eq!((s.status, s.reason.as_str()), (false, "Suspended"));
}

/// A dump that replaced an unsent one shows its line in the status and a
/// Warning Event naming the replaced dump's finish.
#[test]
fn a_replacing_dump_says_what_it_replaced() {
    let replacing = pod(
        "p2",
        "dump",
        "Succeeded",
        0,
        r#"{"step":"dump","outcome":"succeeded","size":10,"log":"2026-11-25,03:00:05,database dump completed","more_log":["2026-11-25,03:00:05,replaced an unsent dump from 2026-11-25 03:00:01"],"dumped":"2026-11-25T03:00:05.2Z","replaced":"2026-11-25T03:00:01.1Z"}"#,
        5,
    );
    let mut status = DatabaseBackupStatus::default();
    let (r, present) = reports(&[dump_ok("p1", 1), replacing]);
    let (notes, _) = record_reports(&mut status, r, &present, None, &at(10));
    assert_eq!(
        status.log.last().unwrap(),
        "2026-11-25,03:00:05,replaced an unsent dump from 2026-11-25 03:00:01"
    );
    let replaced: Vec<_> = notes
        .iter()
        .filter(|n| n.reason == "DumpReplaced")
        .collect();
    assert_eq!(replaced.len(), 1, "{notes:?}");
    assert!(replaced[0].warning);
    assert!(replaced[0].message.contains("2026-11-25T03:00:01.1Z"));
}

/// An upload the store's checksum could not prove, but reading it back did,
/// counts as uploaded and says so with a Warning Event naming the key.
#[test]
fn an_upload_proven_by_reading_it_back_says_so() {
    let upload = pod(
        "p2",
        "upload",
        "Succeeded",
        0,
        r#"{"step":"upload","outcome":"succeeded","key":"2026-11-25/datadump1.sql","size":10,"log":"2026-11-25,03:01:00,file successfully uploaded","more_log":["2026-11-25,03:01:00,proven by reading it back: 2026-11-25/datadump1.sql: the store reports CRC64/NVME fXiUhg== for it, not sEQOqv5rit0="],"read_back":"the store reports CRC64/NVME fXiUhg== for it, not sEQOqv5rit0="}"#,
        5,
    );
    let mut status = DatabaseBackupStatus::default();
    let (r, present) = reports(&[dump_ok("p1", 1), upload]);
    let (notes, _) = record_reports(&mut status, r, &present, None, &at(10));
    assert_eq!(
        status.last_upload_key.as_deref(),
        Some("2026-11-25/datadump1.sql")
    );
    assert!(
        status
            .log
            .last()
            .unwrap()
            .contains(",proven by reading it back: ")
    );
    let read_back: Vec<_> = notes
        .iter()
        .filter(|n| n.reason == "ProvenByReadBack")
        .collect();
    assert_eq!(read_back.len(), 1, "{notes:?}");
    assert!(read_back[0].warning);
    assert!(
        read_back[0]
            .message
            .starts_with("2026-11-25/datadump1.sql was proven by reading it back: the store reports CRC64/NVME fXiUhg=="),
        "{}",
        read_back[0].message
    );
}

/// A dump moved aside after failed proofs is the upload's failure reason;
/// a later upload that sent a newer dump while one stays stuck says so with
/// a Warning Event and a failure notification.
#[test]
fn a_stuck_dump_is_reported_when_set_aside_and_while_it_stays() {
    let set_aside = pod(
        "p2",
        "upload",
        "Failed",
        1,
        r#"{"step":"upload","outcome":"failed","log":"2026-11-25,03:01:00,upload failed: upload of 2026-11-25/datadump1.sql not confirmed: x; the unproven object was deleted; the dump is stuck after 3 unproven uploads in a row: kept as /staging/dumps/.stuck-2026-11-25T03:00:00Z-datadump.sql, tried again before each newer dump, which is sent"}"#,
        5,
    );
    let later = pod(
        "p3",
        "upload",
        "Succeeded",
        0,
        r#"{"step":"upload","outcome":"succeeded","key":"2026-11-26/datadump1.sql","size":10,"log":"2026-11-26,03:01:00,file successfully uploaded","stuck":"1 unproven dump(s) kept on the staging volume, finished 2026-11-25T03:00:00Z; they are sent once the store proves them"}"#,
        9,
    );
    let mut status = DatabaseBackupStatus::default();
    let (r, present) = reports(&[set_aside]);
    let (notes, _) = record_reports(&mut status, r, &present, None, &at(6));
    assert!(
        notes.iter().any(|n| n.reason == "DumpStuck" && n.warning),
        "{notes:?}"
    );
    let (r, present) = reports(&[later]);
    let (notes, notices) = record_reports(&mut status, r, &present, None, &at(10));
    let stuck: Vec<_> = notes.iter().filter(|n| n.reason == "DumpStuck").collect();
    assert_eq!(stuck.len(), 1, "{notes:?}");
    assert!(stuck[0].message.contains("finished 2026-11-25T03:00:00Z"));
    assert!(
        notices
            .iter()
            .any(|n| n.reason == "DumpStuck" && n.event == crate::api::NotifyEvent::Failure),
        "{notices:?}"
    );
    assert_eq!(
        status.last_upload_key.as_deref(),
        Some("2026-11-26/datadump1.sql")
    );
    // The standing condition names the stuck dump until an upload finds none.
    let proven = |status: &DatabaseBackupStatus| {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "DumpsProven")
            .unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    };
    let (state, reason, message) = proven(&status);
    assert_eq!((state.as_str(), reason.as_str()), ("False", "DumpStuck"));
    assert!(
        message.contains("finished 2026-11-25T03:00:00Z"),
        "{message}"
    );
    let all_sent = pod(
        "p4",
        "upload",
        "Succeeded",
        0,
        r#"{"step":"upload","outcome":"succeeded","key":"2026-11-27/datadump1.sql","size":10,"log":"2026-11-27,03:01:00,file successfully uploaded"}"#,
        13,
    );
    let (r, present) = reports(&[all_sent]);
    record_reports(&mut status, r, &present, None, &at(14));
    let (state, reason, _) = proven(&status);
    assert_eq!((state.as_str(), reason.as_str()), ("True", "AllProven"));
}

/// A dump that ran out of staging space says, in its condition, what size
/// would have fitted: from the last dump's size, or that none is known yet.
#[test]
fn a_full_staging_volume_is_answered_with_the_size_that_fits() {
    let full = |uid: &str, t: i64| {
        pod(
            uid,
            "dump",
            "Failed",
            1,
            r#"{"step":"dump","outcome":"failed","log":"2026-11-25,04:00:00,database dump failed: cannot write the dump: No space left on device (os error 28); staging volume full (1.0 GiB/1.0 GiB)"}"#,
            t,
        )
    };
    let dump_condition = |status: &DatabaseBackupStatus| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "DumpSucceeded")
            .map(|c| c.message.clone())
            .unwrap()
    };
    let mut status = DatabaseBackupStatus::default();
    let (r, present) = reports(&[full("d1", 10)]);
    record_reports(&mut status, r, &present, Some(1), &at(20));
    let message = dump_condition(&status);
    assert!(
        message.contains("staging volume full (1.0 GiB/1.0 GiB)")
            && message.contains("No dump has completed yet"),
        "{message}"
    );

    status.last_upload_size = Some(600 << 20);
    let (r, present) = reports(&[full("d1", 10), full("d2", 30)]);
    record_reports(&mut status, r, &present, Some(1), &at(40));
    let message = dump_condition(&status);
    assert!(
        message.contains("The last dump was 600 MiB")
            && message.contains("spec.staging.size to at least 1.3 GiB"),
        "{message}"
    );
}
