//! Retention and restore, with the real apiserver, kube-controller-manager,
//! MinIO and databases, and every pod in a real container on the real node.

mod support;

use chrono::{Duration as Days, Utc};
use std::time::Duration;
use support::bed::*;
use support::faultproxy::{self, FaultProxy};
use support::k8s::*;
use support::minio::*;
use support::operator::*;
use support::process::wait_for;
use support::steps::*;

use dbbackup_operator::api::Engine;
use kube::api::Api;

/// The date folder `days` before today (UTC).
fn days_ago(days: i64) -> String {
    (Utc::now() - Days::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

async fn put(minio: &Minio, key: &str) {
    put_object(minio, key, format!("-- {key}\n").into_bytes()).await;
}

/// Keys no retention policy of ours may touch: other names, other prefixes.
fn foreign_keys() -> Vec<String> {
    vec![
        format!("{}/datadump1.sql.bak", days_ago(30)),
        format!("{}/notes.txt", days_ago(30)),
        format!("other/{}/datadump1.sql", days_ago(30)),
    ]
}

/// Seeds dumps `days` ago (index 1 each) and the foreign keys.
async fn seed(minio: &Minio, days: &[i64]) -> Vec<String> {
    let mut ours = vec![];
    for d in days {
        let key = format!("{}/datadump1.sql", days_ago(*d));
        put(minio, &key).await;
        ours.push(key);
    }
    for key in foreign_keys() {
        put(minio, &key).await;
    }
    ours
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

fn pruned_lines(log: &[String]) -> Vec<String> {
    log.iter()
        .filter_map(|l| {
            l.split_once(",retention pruned ")
                .map(|(_, k)| k.to_string())
        })
        .collect()
}

#[tokio::test]
async fn keep_three_leaves_exactly_the_three_newest() {
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, "  retention:\n    keepLast: 3\n").await;
    let seeded = seed(&b.minio, &[10, 9, 8, 7]).await;

    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let first = format!("{}/datadump1.sql", today());
    let mut want = vec![first.clone(), seeded[2].clone(), seeded[3].clone()];
    want.extend(foreign_keys());
    assert_eq!(bucket_keys(&b.minio).await, sorted(want));
    let status = status_of(&b).await;
    assert_eq!(pruned_lines(&status.log), seeded[..2], "{:?}", status.log);

    backup_now(&b, &mut pods, "second", &mut vec![]).await;
    let second = format!("{}/datadump2.sql", today());
    let mut want = vec![first, second, seeded[3].clone()];
    want.extend(foreign_keys());
    assert_eq!(bucket_keys(&b.minio).await, sorted(want));
    let status = status_of(&b).await;
    assert_eq!(pruned_lines(&status.log), seeded[..3], "{:?}", status.log);
}

/// A dump that waited days for its upload is older than `maxAge` when it
/// lands; as the newest, it stays, and everything older goes.
#[tokio::test]
async fn max_age_never_deletes_the_newest() {
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, "  retention:\n    maxAge: 1d\n").await;
    let seeded = seed(&b.minio, &[9, 8]).await;
    let dumps = b.staging.join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let staged = dumps.join("datadump.sql");
    std::fs::write(&staged, "-- a dump from five days ago\n").unwrap();
    let five_days_ago = std::time::SystemTime::now() - Duration::from_secs(5 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(five_days_ago)
        .unwrap();

    let upload = run_job_from(&b, &mut pods, "orders-upload", "late-upload").await;
    assert_eq!(upload.exit_code, 0, "{}", upload.output);
    let newest = format!("{}/datadump1.sql", days_ago(5));
    let mut want = vec![newest.clone()];
    want.extend(foreign_keys());
    assert_eq!(bucket_keys(&b.minio).await, sorted(want));
    let status = wait_for("the upload in status", Duration::from_secs(30), || async {
        let s = status_of(&b).await;
        (s.last_upload_key.as_deref() == Some(newest.as_str())).then_some(s)
    })
    .await;
    assert_eq!(pruned_lines(&status.log), seeded[..2], "{:?}", status.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_prunes_nothing() {
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, "  retention:\n    keepLast: 1\n").await;
    let seeded = seed(&b.minio, &[3, 2, 1]).await;
    let proxy = FaultProxy::start(&b.minio.endpoint, faultproxy::fail_puts()).await;
    apply_bucket_secret(&b, BUCKET, &b.minio.secret_key, &proxy.endpoint);

    request_backup(&b, "failing");
    let dump = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(dump.exit_code, 0, "{}", dump.output);
    let upload = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_ne!(upload.exit_code, 0, "{}", upload.output);
    assert!(proxy.rejected() > 0);
    let mut want = seeded.clone();
    want.extend(foreign_keys());
    assert_eq!(bucket_keys(&b.minio).await, sorted(want.clone()));
    let status = wait_for(
        "the failed upload in status",
        Duration::from_secs(30),
        || async {
            let s = status_of(&b).await;
            s.log
                .last()
                .filter(|l| l.contains(",upload failed: "))
                .map(|_| s.clone())
        },
    )
    .await;
    assert!(pruned_lines(&status.log).is_empty(), "{:?}", status.log);
    assert!(
        b.staging.join("dumps/datadump.sql").exists()
            || b.staging.join("dumps/.uploading-datadump.sql").exists(),
        "the dump stays for the next run"
    );

    // The store recovers: the kept dump uploads, and only then retention runs.
    apply_bucket_secret(&b, BUCKET, &b.minio.secret_key, &b.minio.endpoint);
    let retry = run_job_from(&b, &mut pods, "orders-upload", "retry").await;
    assert_eq!(retry.exit_code, 0, "{}", retry.output);
    let mut want = vec![format!("{}/datadump1.sql", today())];
    want.extend(foreign_keys());
    assert_eq!(bucket_keys(&b.minio).await, sorted(want));
}

/// Where DeleteObjects is refused, every key goes one request at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bulk_delete_pruning_deletes_one_by_one() {
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, "  retention:\n    keepLast: 1\n").await;
    let seeded = seed(&b.minio, &[3, 2, 1]).await;
    let proxy = FaultProxy::start(&b.minio.endpoint, faultproxy::refuse_bulk_delete()).await;
    apply_bucket_secret(&b, BUCKET, &b.minio.secret_key, &proxy.endpoint);

    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    assert_eq!(proxy.rejected(), 1, "one bulk delete was tried");
    let mut want = vec![format!("{}/datadump1.sql", today())];
    want.extend(foreign_keys());
    assert_eq!(bucket_keys(&b.minio).await, sorted(want));
    let status = status_of(&b).await;
    let mut pruned = pruned_lines(&status.log);
    pruned.sort();
    assert_eq!(pruned, seeded, "{:?}", status.log);
}

// ---------------------------------------------------------------------------
// Restore.

use dbbackup_operator::api::{DatabaseRestore, RestorePhase};

async fn restore_latest_into_a_fresh_database(engine: Engine) {
    let (b, _op, mut pods) = ready_bed(engine, "").await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    // Only the second dump holds this row: a restore of the first would differ.
    b.db.query(
        "shop",
        "INSERT INTO products VALUES (201, 'Late product', 9.99)",
    );
    backup_now(&b, &mut pods, "second", &mut vec![]).await;
    let latest = status_of(&b).await.last_upload_key.unwrap();
    assert_eq!(latest, format!("{}/datadump2.sql", today()));

    apply_restore(&b, "back", "restored", false);
    let status = run_restore(&b, &mut pods, "back").await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert_eq!(status.key.as_deref(), Some(latest.as_str()));
    assert_eq!(restored(&status), ("True".into(), "Restored".into()));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert!(
        status.log[0].contains(&format!(",downloaded {latest} ("))
            && status.log[0].ends_with("checksum verified)"),
        "{:?}",
        status.log
    );
    assert!(
        status.log[1].ends_with(",database restore completed"),
        "{:?}",
        status.log
    );
    assert_eq!(b.db.fingerprint("restored"), b.db.fingerprint("shop"));
    assert!(kubectl(b.cp(), &["get", "dbr", "-n", &b.ns, "back"]).contains("Succeeded"));
}

#[tokio::test]
async fn restore_latest_into_a_fresh_mariadb_database() {
    restore_latest_into_a_fresh_database(Engine::Mariadb).await;
}

#[tokio::test]
async fn restore_latest_into_a_fresh_postgres_database() {
    restore_latest_into_a_fresh_database(Engine::Postgres).await;
}

/// Without `overwrite`, a database with tables is refused and left as it was;
/// with it, its content is replaced by the dump's.
async fn non_empty_target(engine: Engine) {
    let (b, _op, mut pods) = ready_bed(engine, "").await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let dumped = b.db.fingerprint("shop");
    b.db.query(
        "shop",
        "INSERT INTO products VALUES (202, 'After the dump', 1.00)",
    );
    let before = b.db.fingerprint("shop");
    assert_ne!(before, dumped);

    apply_restore(&b, "refused", "shop", false);
    let status = run_restore(&b, &mut pods, "refused").await;
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    assert_eq!(restored(&status), ("False".into(), "TargetNotEmpty".into()));
    let last = status.log.last().unwrap();
    assert!(
        last.contains(
            ",database restore failed: database shop already has 6 tables; set spec.overwrite: true"
        ),
        "{last}"
    );
    assert_eq!(b.db.fingerprint("shop"), before, "nothing changed");
    let warned = wait_events(
        &b.client,
        &b.ns,
        EventFilter {
            object: Some("refused"),
            reason: Some("TargetNotEmpty"),
            ..Default::default()
        },
        Duration::from_secs(10),
    )
    .await
    .remove(0);
    assert_eq!(warned.type_.as_deref(), Some("Warning"));

    apply_restore(&b, "replace", "shop", true);
    let status = run_restore(&b, &mut pods, "replace").await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert_eq!(
        b.db.fingerprint("shop"),
        dumped,
        "the dump's content, row 202 gone"
    );
}

#[tokio::test]
async fn non_empty_mariadb_target_needs_overwrite() {
    non_empty_target(Engine::Mariadb).await;
}

#[tokio::test]
async fn non_empty_postgres_target_needs_overwrite() {
    non_empty_target(Engine::Postgres).await;
}

/// The number of tables (and views) in the target `shop`.
fn table_count(b: &Bed) -> String {
    match b.engine {
        Engine::Postgres => b.db.query(
            "shop",
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'v') AND n.nspname = 'public'",
        ),
        _ => b.db.query(
            "shop",
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'shop'",
        ),
    }
}

/// An overwrite restore whose load fails midway (a dump whose first
/// statements work and a later one fails) leaves the target as it was.
async fn a_failed_overwrite_leaves_the_target(engine: Engine) {
    let (b, _op, mut pods) = ready_bed(engine, "").await;
    let (before, tables) = (b.db.fingerprint("shop"), table_count(&b));
    let broken = "CREATE TABLE half (id INT);\nINSERT INTO half VALUES (1);\nSELECT no_such_function();\nCREATE TABLE never (id INT);\n";
    let key = format!("{}/datadump9.sql", today());
    b.minio
        .s3_client()
        .await
        .put_object()
        .bucket(BUCKET)
        .key(&key)
        .body(broken.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap();
    apply_restore(&b, "broken", "shop", true);
    let status = run_restore(&b, &mut pods, "broken").await;
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    assert_eq!(restored(&status), ("False".into(), "RestoreFailed".into()));
    let last = status.log.last().unwrap();
    assert!(
        last.contains("no_such_function") && last.ends_with("; the target is unchanged"),
        "{last}"
    );
    assert_eq!(b.db.fingerprint("shop"), before);
    assert_eq!(table_count(&b), tables, "no table of the failed load stays");
}

#[tokio::test]
async fn a_failed_overwrite_leaves_the_mariadb_target_as_it_was() {
    a_failed_overwrite_leaves_the_target(Engine::Mariadb).await;
}

#[tokio::test]
async fn a_failed_overwrite_leaves_the_postgres_target_as_it_was() {
    a_failed_overwrite_leaves_the_target(Engine::Postgres).await;
}

/// A role that is neither a superuser nor the one that dumped restores the
/// dump, views and triggers included: they become its own.
async fn a_restore_as_another_role(engine: Engine) {
    let (b, _op, mut pods) = ready_bed(engine, "").await;
    match engine {
        Engine::Postgres => {
            b.db.query(
                "shop",
                "CREATE VIEW big_orders AS SELECT * FROM orders WHERE id > 1000",
            );
            b.db.query(
                "postgres",
                "CREATE ROLE restorer LOGIN CREATEDB PASSWORD 'pw-restorer'",
            );
        }
        _ => {
            b.db.query(
                "shop",
                "CREATE VIEW big_orders AS SELECT * FROM orders WHERE id > 1000",
            );
            b.db.query(
                "shop",
                "CREATE TRIGGER same_price BEFORE INSERT ON products FOR EACH ROW SET NEW.price = NEW.price",
            );
            b.db.query(
                "shop",
                "CREATE USER 'restorer'@'%' IDENTIFIED BY 'pw-restorer'; GRANT ALL ON `restored`.* TO 'restorer'@'%'",
            );
        }
    }
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    apply_secret(
        &b,
        "restorer-creds",
        &[("username", "restorer"), ("password", "pw-restorer")],
    );
    apply_restore_as(&b, "as-restorer", "restored", false, "restorer-creds");
    let status = run_restore(&b, &mut pods, "as-restorer").await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert_eq!(b.db.fingerprint("restored"), b.db.fingerprint("shop"));
    assert_eq!(
        b.db.query("restored", "SELECT COUNT(*) FROM big_orders"),
        b.db.query("shop", "SELECT COUNT(*) FROM big_orders")
    );
}

#[tokio::test]
async fn a_second_non_superuser_role_restores_a_mariadb_dump() {
    a_restore_as_another_role(Engine::Mariadb).await;
}

#[tokio::test]
async fn a_second_non_superuser_role_restores_a_postgres_dump() {
    a_restore_as_another_role(Engine::Postgres).await;
}

/// A restore deleted with `--cascade=orphan` and created again under the same
/// name runs a Job of its own, and reports that Job's result, not the old one's.
#[tokio::test]
async fn a_restore_created_again_after_an_orphaning_delete_runs_its_own_job() {
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, "").await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    apply_restore(&b, "again", "first_copy", false);
    let status = run_restore(&b, &mut pods, "again").await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    kubectl(
        b.cp(),
        &["delete", "dbr", "-n", &b.ns, "again", "--cascade=orphan"],
    );
    // The same name, now into a database that has tables: its own Job must refuse.
    apply_restore(&b, "again", "shop", false);
    let status = run_restore(&b, &mut pods, "again").await;
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    assert_eq!(restored(&status), ("False".into(), "TargetNotEmpty".into()));
    let jobs = kubectl(
        b.cp(),
        &[
            "get",
            "jobs",
            "-n",
            &b.ns,
            "-l",
            "dbbackup.io/restore=again",
            "-o",
            "name",
        ],
    );
    assert_eq!(jobs.lines().count(), 2, "{jobs}");
}

/// Uploads `parts` × 5 MiB of `byte` to `key` as a multipart upload, recording
/// `declared` as the part size the way our uploader does.
async fn put_multipart(minio: &Minio, key: &str, parts: usize, declared: usize, byte: u8) {
    let part = vec![byte; 5 << 20];
    put_parts(minio, key, std::iter::repeat_n(&part[..], parts), declared).await;
}

/// The restore's `fetch` step checks every byte against the store's ETag: an
/// object whose parts do not hash to it under its declared part size is
/// refused and leaves no file; the true layout passes.
#[tokio::test]
async fn fetch_refuses_an_object_that_does_not_match_its_etag() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    put_multipart(&minio, "p/2026-11-25/datadump1.sql", 2, 6 << 20, b'a').await;
    put_multipart(&minio, "p/2026-11-24/datadump1.sql", 2, 5 << 20, b'b').await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("restore.sql");
    let termlog = dir.path().join("termination-log");
    let fetch = |key: &str| {
        store_command(&minio, "fetch")
            .arg(format!("--key={key}"))
            .arg("--prefix=p/")
            .arg(format!("--out={}", out.display()))
            .arg(format!("--termination-log={}", termlog.display()))
            .output()
            .unwrap()
    };
    let result = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&termlog).unwrap()).unwrap()
    };

    // "latest" is the 11-25 object, whose declared part size is wrong.
    let run = fetch("latest");
    assert!(!run.status.success());
    let r = result();
    assert_eq!(r["reason"], "ChecksumMismatch", "{r}");
    assert!(
        r["log"]
            .as_str()
            .unwrap()
            .contains("download failed: p/2026-11-25/datadump1.sql does not match its checksum"),
        "{r}"
    );
    assert!(!out.exists(), "no file is left behind");

    let run = fetch("p/2026-11-24/datadump1.sql");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        result()["log"]
            .as_str()
            .unwrap()
            .ends_with("checksum verified)")
    );
    assert_eq!(std::fs::read(&out).unwrap(), vec![b'b'; 10 << 20]);

    let run = fetch("p/2026-11-23/datadump1.sql");
    assert!(!run.status.success());
    assert_eq!(result()["reason"], "ObjectNotFound");
}

/// A DatabaseRestore `name` of backup "orders" into `target` of a MariaDB
/// no pod reaches (for tests with a control plane only).
fn restore_of_orders(name: &str, target: &str, overwrite: bool) -> DatabaseRestore {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "dbbackup.io/v1alpha1",
        "kind": "DatabaseRestore",
        "metadata": { "name": name },
        "spec": {
            "backup": "orders",
            "overwrite": overwrite,
            "target": {
                "engine": "mariadb",
                "host": "db.example.svc",
                "name": target,
                "credentialsSecret": { "name": "db-creds" }
            }
        }
    }))
    .unwrap()
}

/// A restore naming a DatabaseBackup that does not exist waits, says why in
/// its condition and an Event, and starts once the backup appears. (No pod
/// runs: a control plane of its own is enough.)
#[tokio::test]
async fn a_restore_of_a_missing_backup_waits_and_says_why() {
    const NS: &str = "shop";
    let (_cp, client) = setup(NS).await;
    create_sample_secrets(&client, NS).await;
    let _op = RunningOperator::start(&client);
    let restore = restore_of_orders("orphan", "copy", false);
    let api: Api<DatabaseRestore> = Api::namespaced(client.clone(), NS);
    api.create(&Default::default(), &restore).await.unwrap();
    let status = wait_condition(
        &api,
        "orphan",
        "Restored",
        None,
        "BackupNotFound",
        Duration::from_secs(30),
    )
    .await
    .status
    .unwrap();
    assert_eq!(status.phase, Some(RestorePhase::Pending));
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Restored")
        .unwrap();
    assert_eq!(
        c.message,
        r#"spec.backup: DatabaseBackup "orders" not found in namespace "shop""#
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), NS);
    assert!(
        jobs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    create_backup(&client, NS, backup_manifest("orders", "mariadb")).await;
    wait_for("the restore job", Duration::from_secs(60), || async {
        let list = jobs
            .list(&kube::api::ListParams::default().labels("dbbackup.io/restore=orphan"))
            .await
            .ok()?;
        list.items.into_iter().next()
    })
    .await;
}

/// The per-backup metrics follow the status: absent before the first upload,
/// then the upload's time and size and each step's duration; a failed pod
/// counts once; all of them leave with the resource.
#[tokio::test]
async fn the_metrics_follow_uploads_and_failures_and_leave_with_the_resource() {
    let (b, op, mut pods) = ready_bed(Engine::Mariadb, "").await;
    let series = |name: &str, extra: &str| {
        format!("{name}{{namespace=\"{}\",name=\"orders\"{extra}}}", b.ns)
    };
    let metrics = || op.metrics().encode();
    let success = series("dbbackup_last_success_timestamp_seconds", "");
    assert!(
        !metrics().contains(&success),
        "a timestamp before the first upload"
    );

    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let status = status_of(&b).await;
    let at = status.last_upload_time.unwrap().0.as_second();
    let bytes = status.last_upload_size.unwrap();
    wait_for("the upload's metrics", Duration::from_secs(30), || async {
        let text = metrics();
        (text.contains(&format!("{success} {at}"))
            && text.contains(&format!(
                "{} {bytes}",
                series("dbbackup_last_upload_bytes", "")
            ))
            && text.contains(&series("dbbackup_step_duration_seconds", ",step=\"dump\""))
            && text.contains(&series(
                "dbbackup_step_duration_seconds",
                ",step=\"upload\"",
            )))
        .then_some(())
    })
    .await;
    assert_eq!(status.recent.len(), 1, "{:?}", status.recent);
    assert_eq!(status.recent[0].size, Some(bytes));

    // A wrong secret key: the next upload fails, and counts once.
    apply_bucket_secret(&b, BUCKET, "not-the-secret", &b.minio.endpoint);
    request_backup(&b, "second");
    next_succeeded(&mut pods, "dump").await;
    let failed = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(failed.step, "upload");
    let failures = series("dbbackup_step_failures_total", ",step=\"upload\"");
    wait_for("the failure's count", Duration::from_secs(30), || async {
        metrics().contains(&format!("{failures} 1")).then_some(())
    })
    .await;

    b.backups()
        .delete("orders", &Default::default())
        .await
        .unwrap();
    wait_for("the series to go", Duration::from_secs(30), || async {
        let text = metrics();
        (!text.contains(&success) && !text.contains(&failures)).then_some(())
    })
    .await;
}

/// A restore whose Job vanished before its result was seen (deleted by
/// hand, or by a TTL, while the operator was down) is never started again:
/// with `overwrite` a second load would wipe what was written since. It
/// ends Failed, says why, and no new Job appears. (No pod runs: a control
/// plane of its own is enough.)
#[tokio::test]
async fn a_started_restore_whose_job_vanished_fails_and_never_runs_again() {
    use k8s_openapi::api::batch::v1::Job;
    const NS: &str = "shop";
    let (_cp, client) = setup(NS).await;
    create_sample_secrets(&client, NS).await;
    create_backup(&client, NS, backup_manifest("orders", "mariadb")).await;
    let op = RunningOperator::start(&client);
    let restore = restore_of_orders("once", "shop", true);
    let api: Api<DatabaseRestore> = Api::namespaced(client.clone(), NS);
    api.create(&Default::default(), &restore).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let labelled = kube::api::ListParams::default().labels("dbbackup.io/restore=once");
    wait_condition(
        &api,
        "once",
        "Restored",
        None,
        "Running",
        Duration::from_secs(60),
    )
    .await;
    drop(op);
    let job = jobs.list(&labelled).await.unwrap().items.remove(0);
    jobs.delete(
        &job.metadata.name.unwrap(),
        &kube::api::DeleteParams::background(),
    )
    .await
    .unwrap();
    wait_for("the job to go", Duration::from_secs(30), || async {
        jobs.list(&labelled)
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;

    let _op = RunningOperator::start(&client);
    let status = wait_condition(
        &api,
        "once",
        "Restored",
        Some("False"),
        "JobDisappeared",
        Duration::from_secs(60),
    )
    .await
    .status
    .unwrap();
    assert_eq!(status.phase, Some(RestorePhase::Failed));
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Restored")
        .unwrap();
    assert!(c.message.contains("is never run again"), "{}", c.message);
    wait_events(
        &client,
        NS,
        EventFilter::warning("once", "JobDisappeared"),
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        jobs.list(&labelled).await.unwrap().items.is_empty(),
        "the restore ran again"
    );
}
