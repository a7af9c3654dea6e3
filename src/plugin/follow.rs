//! `backup --wait`: which upload sent the dump this request made. A run-now
//! may queue behind a scheduled dump; the first upload after the request is
//! then someone else's. The request's own dump pod (labelled with its run)
//! names its staged dump (`JobResult::dumped`); the upload that sent it, any
//! upload, says the same name. A newer dump that replaced ours before it was
//! sent says so (`replaced`), and is followed instead: it holds all ours did.

use super::Waiting;
use crate::api::DatabaseBackup;
use crate::jobresult::{Outcome, Step};
use crate::names;
use crate::operator::backup::{PodReport, pod_report};
use anyhow::{Context as _, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::HashSet;

/// Asks for a backup now, as the run-now annotation does, and with `wait`
/// prints each new log line until the upload of this request's own dump is
/// confirmed (not the first upload after it: that may be a scheduled dump's),
/// or the request's dump fails.
pub async fn backup(
    client: &Client,
    backups: &Api<DatabaseBackup>,
    db: &DatabaseBackup,
    wait: bool,
    timeout: u64,
) -> anyhow::Result<()> {
    let token = format!("kubectl-{}", chrono::Utc::now().format("%Y%m%dt%H%M%S%.3f"));
    let before = db.status.clone().unwrap_or_default();
    let patch = serde_json::json!({"metadata": {"annotations": {names::RUN_NOW: token}}});
    backups
        .patch(
            &db.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .context("cannot request the backup")?;
    println!("backup of {} requested ({token})", db.name_any());
    if !wait {
        return Ok(());
    }
    let ns = db.namespace().unwrap_or_default();
    let (pods, jobs): (Api<Pod>, Api<Job>) = (
        Api::namespaced(client.clone(), &ns),
        Api::namespaced(client.clone(), &ns),
    );
    let ours = ListParams::default().labels(&format!("{}={}", names::LABEL_BACKUP, db.name_any()));
    let run = names::run_now_id(&token);
    let tz = db.spec.time_zone.parse().unwrap_or(chrono_tz::UTC);
    // A Job that retries a failed pod may still succeed.
    let retried = db.spec.jobs.backoff_limit > 0;
    let mut seen: HashSet<String> = before.log.iter().cloned().collect();
    let waiting = Waiting::new(timeout);
    loop {
        let db = backups.get(&db.name_any()).await?;
        let status = db.status.unwrap_or_default();
        if status.last_run_now.as_ref() != Some(&token) {
            // The operator takes a request only while the backup is Ready.
            if let Some(c) = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")
            {
                bail!("the backup is not Ready ({}: {})", c.reason, c.message);
            }
        }
        for line in status.log.iter().filter(|l| seen.insert(l.to_string())) {
            println!("{line}");
        }
        let mine = |labels: &std::collections::BTreeMap<String, String>| {
            labels.get(names::RUN_NOW) == Some(&run)
        };
        let listed = pods.list(&ours).await?.items;
        let all: Vec<PodReport> = listed.iter().filter_map(|p| pod_report(p, tz)).collect();
        let run_pods: Vec<PodReport> = listed
            .iter()
            .filter(|p| mine(p.labels()))
            .filter_map(|p| pod_report(p, tz))
            .collect();
        let job_failed = jobs.list(&ours).await?.items.iter().any(|j| {
            mine(j.labels())
                && j.labels().get(names::LABEL_STEP).map(String::as_str) == Some("dump")
                && crate::operator::results::job_failure(j).is_some()
        });
        match progress(&run_pods, &all, retried, job_failed) {
            Progress::Uploaded { key, replaced } => {
                if replaced {
                    println!(
                        "a newer dump replaced this request's before it was sent; it holds all of it"
                    );
                }
                println!("uploaded {key}");
                return Ok(());
            }
            Progress::Failed(why) => bail!("the backup failed: {why}"),
            Progress::Waiting => waiting.tick().await?,
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Progress {
    Waiting,
    /// Our dump, or one that replaced it, stored under this key.
    Uploaded {
        key: String,
        replaced: bool,
    },
    Failed(String),
}

/// Where the request's dump stands, from the finished pods of the backup:
/// `run` those of the request's own Jobs, `all` every one (any run's dumps
/// and uploads). `retried`: a failed pod may still be followed by another
/// (the Job's backoff), unless the Job itself failed (`job_failed`).
pub fn progress(run: &[PodReport], all: &[PodReport], retried: bool, job_failed: bool) -> Progress {
    let finished = |step: Step, outcome: Outcome| {
        run.iter()
            .find(move |r| r.step == step && r.result.outcome == outcome)
    };
    let may_retry = retried && !job_failed;
    let Some(dump) = finished(Step::Dump, Outcome::Succeeded) else {
        return match finished(Step::Dump, Outcome::Failed) {
            Some(f) if !may_retry => Progress::Failed(f.result.message()),
            _ if job_failed => Progress::Failed("the dump job failed".into()),
            _ => Progress::Waiting,
        };
    };
    let Some(mut id) = dump.result.dumped.clone() else {
        // A dump step older than the name: only our own upload can tell.
        return match finished(Step::Upload, Outcome::Succeeded).and_then(|u| u.result.key.clone()) {
            Some(key) => Progress::Uploaded {
                key,
                replaced: false,
            },
            None => Progress::Waiting,
        };
    };
    let mut replaced = false;
    // Each replacement names the dump it replaced; follow the chain.
    for _ in 0..=all.len() {
        let sent = all.iter().find(|u| {
            u.step == Step::Upload
                && u.result.outcome == Outcome::Succeeded
                && u.result.dumped.as_ref() == Some(&id)
        });
        if let Some(key) = sent.and_then(|u| u.result.key.clone()) {
            return Progress::Uploaded { key, replaced };
        }
        let newer = all
            .iter()
            .find(|d| d.step == Step::Dump && d.result.replaced.as_ref() == Some(&id));
        match newer.and_then(|d| d.result.dumped.clone()) {
            Some(next) => {
                id = next;
                replaced = true;
            }
            None => break,
        }
    }
    // Our upload failed sending our dump (not a dump an earlier upload left).
    let ours_failed = run.iter().find(|u| {
        u.step == Step::Upload
            && u.result.outcome == Outcome::Failed
            && u.result.dumped.as_ref().is_none_or(|d| *d == id)
    });
    match ours_failed {
        Some(f) if !retried => Progress::Failed(f.result.message()),
        _ => Progress::Waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobresult::JobResult;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn report(step: Step, outcome: Outcome, dumped: &str, replaced: &str, key: &str) -> PodReport {
        let mut result = JobResult::new(step, outcome, "2026-12-04,03:00:00,x".into());
        result.dumped = (!dumped.is_empty()).then(|| dumped.into());
        result.replaced = (!replaced.is_empty()).then(|| replaced.into());
        result.key = (!key.is_empty()).then(|| key.into());
        PodReport {
            uid: format!("{step:?}{dumped}{key}"),
            step,
            finished: Time(k8s_openapi::jiff::Timestamp::now()),
            result,
            run_now: None,
            job: None,
            started: None,
            key: None,
        }
    }

    #[test]
    fn a_scheduled_upload_before_ours_is_not_ours() {
        let ours = report(Step::Dump, Outcome::Succeeded, "t2", "", "");
        let scheduled = report(
            Step::Upload,
            Outcome::Succeeded,
            "t1",
            "",
            "day/datadump1.sql",
        );
        let all = [scheduled.clone(), ours.clone()];
        assert_eq!(
            progress(std::slice::from_ref(&ours), &all, false, false),
            Progress::Waiting
        );
        let sent = report(
            Step::Upload,
            Outcome::Succeeded,
            "t2",
            "",
            "day/datadump2.sql",
        );
        let all = [scheduled, ours.clone(), sent];
        assert_eq!(
            progress(&[ours], &all, false, false),
            Progress::Uploaded {
                key: "day/datadump2.sql".into(),
                replaced: false
            }
        );
    }

    #[test]
    fn a_dump_replaced_before_its_upload_follows_the_newer_one() {
        let ours = report(Step::Dump, Outcome::Succeeded, "t1", "", "");
        let newer = report(Step::Dump, Outcome::Succeeded, "t2", "t1", "");
        let nothing = report(Step::Upload, Outcome::Nothing, "", "", "");
        let sent = report(
            Step::Upload,
            Outcome::Succeeded,
            "t2",
            "",
            "day/datadump1.sql",
        );
        let all = [ours.clone(), newer, sent];
        assert_eq!(
            progress(&[ours, nothing], &all, false, false),
            Progress::Uploaded {
                key: "day/datadump1.sql".into(),
                replaced: true
            }
        );
    }

    #[test]
    fn our_failed_dump_fails_unless_the_job_may_retry() {
        let failed = report(Step::Dump, Outcome::Failed, "", "", "");
        assert!(matches!(
            progress(std::slice::from_ref(&failed), &[], false, false),
            Progress::Failed(_)
        ));
        assert_eq!(
            progress(std::slice::from_ref(&failed), &[], true, false),
            Progress::Waiting
        );
        assert!(matches!(
            progress(&[failed], &[], true, true),
            Progress::Failed(_)
        ));
    }
}
