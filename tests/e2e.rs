//! From `kubectl apply` to an object in MinIO and back into a database, with
//! the real apiserver, kube-controller-manager (Job → Pod), the real kubectl,
//! real databases and MinIO, and every pod in a real container on the real node.

mod support;

use dbbackup_operator::api::{DatabaseBackup, Engine};
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::time::Duration;
use support::bed::*;
use support::incluster::HelmOperator;
use support::k8s::*;
use support::minio::*;
use support::operator::*;
use support::pods::{Pods, RanPod};
use support::process::wait_for;
use support::steps::*;

async fn end_to_end(engine: Engine) {
    let (b, op, mut pods) = ready_bed_in_cluster(engine, "").await;
    let mut latencies = vec![];
    let day = today();

    backup_now(&b, &mut pods, "first", &mut latencies).await;
    let status = status_of(&b).await;
    let key = format!("{day}/datadump1.sql");
    assert_eq!(status.last_upload_key.as_deref(), Some(key.as_str()));
    assert!(status.last_upload_time.is_some() && status.last_dump_time.is_some());
    assert_eq!(bucket_keys(&b.minio).await, std::slice::from_ref(&key));
    assert_eq!(
        status.last_upload_size,
        Some(get_object(&b.minio, &key).await.len() as i64)
    );
    b.db.restore_and_compare("restored", &get_object(&b.minio, &key).await);
    assert!(kubectl(b.cp(), &["get", "dbb", "-n", &b.ns]).contains(&key));
    assert_eq!(count(&status.log, "database dump completed"), 1);
    assert_eq!(count(&status.log, "file successfully uploaded"), 1);
    for c in ["DumpSucceeded", "UploadSucceeded"] {
        let cond = status.conditions.iter().find(|x| x.type_ == c).unwrap();
        assert_eq!(cond.status, "True", "{cond:?}");
    }
    let left: Vec<_> = b
        .staging
        .join("dumps")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    backup_now(&b, &mut pods, "second", &mut latencies).await;
    let status = status_of(&b).await;
    let second = format!("{day}/datadump2.sql");
    assert_eq!(status.last_upload_key.as_deref(), Some(second.as_str()));
    assert_eq!(bucket_keys(&b.minio).await, [key.clone(), second.clone()]);

    // An upload run with no dump, started the way a user would.
    let empty = run_job_from(&b, &mut pods, "orders-upload", "manual-upload").await;
    assert_eq!(empty.exit_code, 0, "{}", empty.output);
    latencies.push(status_latency(&b, &empty).await);
    let status = status_of(&b).await;
    assert!(
        status
            .log
            .last()
            .unwrap()
            .ends_with(",there is no file to upload"),
        "{:?}",
        status.log
    );
    assert_eq!(status.last_upload_key.as_deref(), Some(second.as_str()));
    assert_eq!(status.log.len(), 5, "{:?}", status.log);

    let reasons: Vec<String> = events(&b.client, &b.ns, EventFilter::on("orders"))
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["DumpCompleted", "Uploaded", "BackupRequested"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }

    // The operator's pod: Ready through its probe (helm waited for it), and
    // its /metrics answer on the pod's address.
    let op_pods = op.pods(&b.client).await;
    assert_eq!(op_pods.len(), 1);
    assert!(support::incluster::ready(&op_pods[0]));
    let reconciles = HelmOperator::metric(&op_pods[0], "dbbackup_reconciles_total");
    assert!(reconciles.is_some_and(|n| n >= 3), "{reconciles:?}");

    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    println!(
        "{engine:?}: status update latency after pod termination over {} pods: p50 {:?}, max {:?}",
        latencies.len(),
        p50,
        latencies.last().unwrap()
    );
    drop(op);
}

#[tokio::test]
async fn end_to_end_mariadb() {
    end_to_end(Engine::Mariadb).await;
}

#[tokio::test]
async fn end_to_end_postgres() {
    end_to_end(Engine::Postgres).await;
}

/// The whole path once, with the operator installed by helm: a backup run
/// now, its chained upload, the drill after it, and a DatabaseRestore of
/// the dump into a new database on the node. tests/run.sh also runs it
/// against the oldest Kubernetes the chart claims.
#[tokio::test]
async fn backup_chained_upload_drill_and_restore_postgres() {
    use dbbackup_operator::api::RestorePhase;
    let verify = "  verify:\n    afterUpload: true\n    checks: [{query: \"SELECT count(*) FROM orders\", atLeast: 1}]\n";
    let (b, _op, mut pods) = ready_bed_in_cluster(Engine::Postgres, verify).await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let key = format!("{}/datadump1.sql", today());
    let drill = next_succeeded(&mut pods, "verify").await;
    println!("drill:\n{}", drill.output);
    let status = wait_orders(&b, "Verified", Some("True"), "Verified", POD_TIMEOUT).await;
    assert_eq!(status.last_verified_key.as_deref(), Some(key.as_str()));

    apply_restore(&b, "back", "restored", false);
    let restore = run_restore(&b, &mut pods, "back").await;
    assert_eq!(restore.phase, Some(RestorePhase::Succeeded), "{restore:?}");
    assert_eq!(restore.key.as_deref(), Some(key.as_str()));
    assert_eq!(b.db.fingerprint("restored"), b.db.fingerprint("shop"));
}

/// Pods that finish while the operator is down are reported once it is back,
/// and a further restart repeats nothing.
#[tokio::test]
async fn operator_restart_neither_repeats_nor_loses_log_lines() {
    let (b, op, mut pods) = ready_bed_in_cluster(Engine::Mariadb, "").await;
    let mut latencies = vec![];
    backup_now(&b, &mut pods, "first", &mut latencies).await;
    op.scale(&b.client, 0).await;

    // While the operator is down: a dump and an upload run and finish.
    let dump = run_job_from(&b, &mut pods, "orders-dump", "while-down-dump").await;
    assert_eq!(dump.exit_code, 0, "{}", dump.output);
    let upload = run_job_from(&b, &mut pods, "orders-upload", "while-down-upload").await;
    assert_eq!(upload.exit_code, 0, "{}", upload.output);
    assert_eq!(
        status_of(&b).await.log.len(),
        2,
        "nothing recorded while down"
    );

    op.scale(&b.client, 1).await;
    status_latency(&b, &upload).await;
    let status = status_of(&b).await;
    assert_eq!(
        count(&status.log, "database dump completed"),
        2,
        "{:?}",
        status.log
    );
    assert_eq!(
        count(&status.log, "file successfully uploaded"),
        2,
        "{:?}",
        status.log
    );
    assert_eq!(status.log.len(), 4);
    assert_eq!(
        status.last_upload_key,
        Some(format!("{}/datadump2.sql", today()))
    );
    // Another restart, and a resync: the same four lines, in the same order.
    op.scale(&b.client, 0).await;
    op.scale(&b.client, 1).await;
    let pod = op.pods(&b.client).await.remove(0);
    wait_for(
        "the restarted operator to reconcile",
        Duration::from_secs(30),
        || async { HelmOperator::metric(&pod, "dbbackup_reconciles_total").filter(|n| *n >= 1) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status_of(&b).await.log, status.log);
    let backups: Api<DatabaseBackup> = Api::namespaced(b.client.clone(), &b.ns);
    let db = backups.get("orders").await.unwrap();
    assert_eq!(
        db.annotations()
            .get("dbbackup.io/run-now")
            .map(String::as_str),
        Some("first")
    );
}

/// Waits up to a minute for condition `type_` of "orders" to be `status` for `reason`.
async fn wait_condition(
    b: &Bed,
    type_: &str,
    status: &str,
    reason: &str,
) -> dbbackup_operator::api::DatabaseBackupStatus {
    wait_orders(b, type_, Some(status), reason, Duration::from_secs(60)).await
}

/// Waits until the newest line in status contains `needle`.
async fn wait_last_line(b: &Bed, needle: &str) {
    wait_for(
        &format!("a last status line with {needle:?}"),
        Duration::from_secs(60),
        || async {
            let s = status_of(b).await;
            s.log.last().filter(|l| l.contains(needle)).map(|_| ())
        },
    )
    .await
}

async fn event_reasons(b: &Bed) -> Vec<(String, String)> {
    events(&b.client, &b.ns, EventFilter::on("orders"))
        .await
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

/// Failed dumps, failed uploads and jobs that fail as a whole each show as a
/// condition, a Warning Event and a log line in status.
#[tokio::test]
async fn failures_show_as_conditions_events_and_log_lines() {
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, "").await;
    let (_, user, password) = b.db.login();

    // A wrong database password.
    apply_secret(
        &b,
        "db-creds",
        &[("username", &user), ("password", "wrong-password")],
    );
    let pod = run_job_from(&b, &mut pods, "orders-dump", "bad-password").await;
    assert_ne!(pod.exit_code, 0);
    let s = wait_condition(&b, "DumpSucceeded", "False", "DumpFailed").await;
    let line = s.log.last().unwrap();
    assert!(
        line.contains(",database dump failed: dump tool exited with status"),
        "{line}"
    );
    assert!(line.contains("Access denied"), "{line}");
    assert!(!line.contains("wrong-password"));

    // A missing bucket: the upload the good dump chains fails.
    apply_secret(
        &b,
        "db-creds",
        &[("username", &user), ("password", &password)],
    );
    apply_bucket_secret(&b, "no-such-bucket", &b.minio.secret_key, &b.minio.endpoint);
    assert_eq!(
        run_job_from(&b, &mut pods, "orders-dump", "good-dump")
            .await
            .exit_code,
        0
    );
    wait_condition(&b, "DumpSucceeded", "True", "DumpCompleted").await;
    let chained = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(chained.step, "upload");
    assert_ne!(chained.exit_code, 0, "{}", chained.output);
    let s = wait_condition(&b, "UploadSucceeded", "False", "UploadFailed").await;
    let line = s.log.last().unwrap();
    assert!(line.contains(",upload failed: NoSuchBucket"), "{line}");
    assert!(!line.contains(&b.minio.secret_key));
    assert!(
        b.staging.join("dumps/.uploading-datadump.sql").exists(),
        "dump kept, claimed, for the next upload to send first"
    );

    // A dump past its Job's deadline: tests/node.rs, on a real pod.
    let events = event_reasons(&b).await;
    for reason in ["DumpFailed", "UploadFailed"] {
        assert!(
            events.iter().any(|(t, r)| t == "Warning" && r == reason),
            "no Warning {reason} in {events:?}"
        );
    }
}

/// The operator killed in the middle of acting on a "back up now" request,
/// then the apiserver restarted: the restarted operator finishes the request
/// once, and the status holds each line once.
#[tokio::test]
async fn operator_killed_mid_reconcile_and_apiserver_restarted_converge() {
    let b = bed_alone(Engine::Mariadb).await;
    let op = RunningOperator::start_in(&b.client, &b.ns);
    apply_backup(&b);
    let backups: Api<DatabaseBackup> = Api::namespaced(b.client.clone(), &b.ns);
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    let mut pods = Pods::new(&b.client, &b.ns);
    backup_now(&b, &mut pods, "first", &mut vec![]).await;

    // Killed as soon as it created the Job, before it could record the request.
    let jobs: Api<Job> = Api::namespaced(b.client.clone(), &b.ns);
    let run_now_jobs = || async {
        jobs.list(&ListParams::default().labels("dbbackup.io/step=dump"))
            .await
            .unwrap()
            .items
            .len()
    };
    let before = run_now_jobs().await;
    // Every dump pod of the second request that ends, from a watch: a
    // second pod of the same Job is deleted by the Job controller once the
    // Job completed, and may be gone before `pods` lists it, though the
    // operator saw it finish and reported it.
    let succeeded = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let watch = tokio::spawn({
        use futures::StreamExt;
        let succeeded = succeeded.clone();
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(b.client.clone(), &b.ns);
        let selector = format!(
            "dbbackup.io/step=dump,dbbackup.io/run-now={}",
            dbbackup_operator::names::run_now_id("second")
        );
        // The watch outlives the apiserver restart: its errors are retried
        // with backoff, not the end of it (a pod ending after the restart
        // would go unseen).
        async move {
            use kube::runtime::WatchStreamExt;
            let pods = kube::runtime::watcher(
                api,
                kube::runtime::watcher::Config::default().labels(&selector),
            )
            .default_backoff()
            .applied_objects();
            let mut pods = std::pin::pin!(pods);
            while let Some(p) = pods.next().await {
                let Ok(p) = p else { continue };
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                if let Some(phase @ ("Succeeded" | "Failed")) = phase {
                    let ok = phase == "Succeeded";
                    let uid = p.uid().unwrap_or_default();
                    succeeded.lock().unwrap().insert((uid, ok));
                }
            }
        }
    });
    request_backup(&b, "second");
    wait_for("the second dump Job", Duration::from_secs(30), || async {
        (run_now_jobs().await > before).then_some(())
    })
    .await;
    drop(op);
    b.cluster.cp.restart_apiserver().await;

    let _op = RunningOperator::start_in(&b.client, &b.ns);
    // A pod create cut off by the restart can leave the Job controller with a
    // second pod for the same Job, running beside the first on the same volume:
    // the second waits for the first's lock, and both succeed; each pod is
    // reported once, and the Job chains one upload.
    let mut ran: Vec<RanPod> = vec![];
    while !ran.iter().any(|p| p.step == "upload") {
        ran.push(pods.finished(1, POD_TIMEOUT).await.remove(0));
    }
    let outcomes: Vec<_> = ran.iter().map(|p| (&p.step, p.exit_code)).collect();
    let dumps_ok = ran
        .iter()
        .filter(|p| p.step == "dump" && p.exit_code == 0)
        .count();
    let dumps = ran.iter().filter(|p| p.step == "dump").count();
    assert!(dumps_ok >= 1 && dumps_ok == dumps, "{outcomes:?}");
    let upload = ran.last().unwrap();
    assert_eq!(upload.exit_code, 0, "{}", upload.output);
    status_latency(&b, upload).await;
    let status = status_of(&b).await;
    assert_eq!(status.last_run_now.as_deref(), Some("second"));
    assert_eq!(run_now_jobs().await, before + 1, "the request ran twice");
    watch.abort();
    // A second pod deleted while it still ran ends Failed, unseen too.
    let ended = succeeded.lock().unwrap().clone();
    // A watch that died at the restart would see none and count nothing unseen.
    assert!(
        ended.iter().filter(|(_, ok)| *ok).count() >= dumps_ok,
        "the watch missed pods the operator reported: {ended:?}"
    );
    // The Job's own counts hold pods neither saw: one that ended and was
    // deleted while the watch was away at the restart.
    let job = jobs
        .list(&ListParams::default().labels(&format!(
            "dbbackup.io/step=dump,dbbackup.io/run-now={}",
            dbbackup_operator::names::run_now_id("second")
        )))
        .await
        .unwrap()
        .items
        .remove(0);
    let counted = |f: fn(&k8s_openapi::api::batch::v1::JobStatus) -> Option<i32>| {
        job.status.as_ref().and_then(f).unwrap_or(0) as usize
    };
    // Only its successes: a pod it counts as failed may never have run.
    let job_ok = counted(|s| s.succeeded);
    let watched_ok = ended.iter().filter(|(_, ok)| *ok).count();
    let ended_ok = watched_ok.max(job_ok);
    let unseen_ok = ended_ok.saturating_sub(dumps_ok);
    assert_eq!(
        count(&status.log, "database dump completed"),
        1 + dumps_ok + unseen_ok,
        "{:?}",
        status.log
    );
    assert_eq!(
        count(&status.log, "file successfully uploaded"),
        2,
        "{:?}",
        status.log
    );
    // A second pod that finished after the first, before the upload claimed
    // the first's dump, replaced it and says so in a line of its own.
    // The line names the replaced dump's time after the message.
    let replaced = status
        .log
        .iter()
        .filter(|l| l.contains(",replaced an unsent dump from "))
        .count();
    assert!(replaced < dumps_ok + unseen_ok, "{:?}", status.log);
    // Nothing else, each line once: the dump lines match the pods counted
    // above, the upload lines the two uploads. (The total, counted from the
    // pods seen by the follower, the watch and the Job, came out one short
    // of a correct log once in CI: they do not add up exactly across the
    // apiserver restart.)
    assert_eq!(
        status.log.len(),
        count(&status.log, "database dump completed")
            + count(&status.log, "file successfully uploaded")
            + replaced,
        "{:?}",
        status.log
    );
    assert_eq!(bucket_keys(&b.minio).await.len(), 2);
}

/// Everything the suite's chain produces, scanned for the secret values it
/// used: operator logs, pod output, the staging log files, status, Events and
/// the children's and pods' specs.
#[tokio::test]
async fn no_secret_value_appears_in_logs_status_events_or_specs() {
    let (b, operator, mut pods) = ready_bed_in_cluster(Engine::Mariadb, "").await;
    let mut outputs = vec![];
    let mut latencies = vec![];
    backup_now(&b, &mut pods, "first", &mut latencies).await;

    // Failures too: their error texts are where a secret would slip out.
    let (_, user, password) = b.db.login();
    let wrong_db = format!("dbWRONG{}", support::minio::random_token(20));
    let wrong_s3 = format!("s3WRONG{}", support::minio::random_token(20));
    apply_secret(
        &b,
        "db-creds",
        &[("username", &user), ("password", &wrong_db)],
    );
    outputs.push(run_job_from(&b, &mut pods, "orders-dump", "bad-dump").await);
    apply_secret(
        &b,
        "db-creds",
        &[("username", &user), ("password", &password)],
    );
    apply_bucket_secret(&b, BUCKET, &wrong_s3, &b.minio.endpoint);
    outputs.push(run_job_from(&b, &mut pods, "orders-dump", "good-dump").await);
    // The upload the good dump chains, with the wrong key.
    outputs.push(pods.finished(1, POD_TIMEOUT).await.remove(0));
    assert_eq!(
        outputs.iter().map(|p| p.exit_code == 0).collect::<Vec<_>>(),
        [false, true, false]
    );
    wait_last_line(&b, "upload failed: ").await;

    let mut scanned = vec![
        ("operator log", operator.logs()),
        (
            "status",
            serde_json::to_string(&status_of(&b).await).unwrap(),
        ),
        (
            "events",
            kubectl(b.cp(), &["get", "events", "-n", &b.ns, "-o", "yaml"]),
        ),
        (
            "objects",
            kubectl(
                b.cp(),
                &[
                    "get",
                    "dbb,cronjobs,jobs,pods,pvc",
                    "-n",
                    &b.ns,
                    "-o",
                    "yaml",
                ],
            ),
        ),
    ];
    for p in &outputs {
        scanned.push(("pod output", p.output.clone()));
    }
    let logs = b.staging.join("logs");
    for f in std::fs::read_dir(logs).unwrap() {
        scanned.push((
            "log file",
            std::fs::read_to_string(f.unwrap().path()).unwrap(),
        ));
    }
    // The scan reads what matters: the chain's own lines and objects are there.
    let all: String = scanned.iter().map(|(_, t)| t.as_str()).collect();
    for expected in [
        "file successfully uploaded",
        "database dump failed",
        "upload failed",
        "orders-dump",
        "secretKeyRef",
    ] {
        assert!(all.contains(expected), "the scan misses {expected:?}");
    }
    for secret in [&password, &b.minio.secret_key, &wrong_db, &wrong_s3] {
        assert!(secret.len() >= 20);
        for (what, text) in &scanned {
            assert!(
                !text.contains(secret.as_str()),
                "a secret value appears in the {what}:\n{text}"
            );
        }
    }
}
