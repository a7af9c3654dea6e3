//! Restore drills: the `verify` step loads a dump into a throwaway server it
//! starts from the real server binaries, and checks it.

mod support;

use dbbackup_operator::api::Engine;
use dbbackup_operator::jobresult::Outcome;
use support::databases::Database;
use support::minio::{Minio, create_bucket, put_object};
use support::process::wait_for;
use support::steps::{Staging, run_dump, run_verify};
use support::stores::Server;

/// A MinIO holding a dump of the shop data, made by the dump step, at `key`.
async fn shop_dump(engine: Engine, key: &str) -> Minio {
    shop_dump_on(engine, key, Server::Minio).await
}

/// As `shop_dump`, on `server`.
async fn shop_dump_on(engine: Engine, key: &str, server: Server) -> Minio {
    let staging = Staging::new();
    let db = Database::with_shop(engine);
    let run = run_dump(&db.source("shop"), &staging, Default::default());
    assert!(run.succeeded(), "{}", run.text());
    store_on(key, &std::fs::read(staging.staged_dump()).unwrap(), server).await
}

/// A MinIO holding `data` at `key`.
async fn store(key: &str, data: &[u8]) -> Minio {
    store_on(key, data, Server::Minio).await
}

/// `server` holding `data` at `key`.
async fn store_on(key: &str, data: &[u8], server: Server) -> Minio {
    let minio = Minio::start_server(server);
    create_bucket(&minio).await;
    put_object(&minio, key, data.to_vec()).await;
    minio
}

async fn a_good_dump_is_verified_with_its_tables_and_checks(engine: Engine, server: Server) {
    let key = "shop/2026-11-26/datadump1.sql";
    let minio = shop_dump_on(engine, key, server).await;
    let run = run_verify(
        engine,
        &minio,
        key,
        &[
            r#"{"query":"SELECT count(*) FROM orders","atLeast":2000}"#,
            r#"{"query":"SELECT title FROM products WHERE id = 3","equals":"Product 3"}"#,
        ],
    );
    assert!(run.succeeded(), "{}", run.text());
    let r = run.result.expect("a result");
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(r.tables, Some(6));
    assert!(r.checks.iter().all(|c| c.passed), "{:?}", r.checks);
    assert_eq!(r.checks[0].got, "2000");
    assert!(
        r.log
            .ends_with("backup verified shop/2026-11-26/datadump1.sql (6 tables)"),
        "{}",
        r.log
    );
}

#[tokio::test]
async fn a_good_dump_is_verified_mariadb() {
    a_good_dump_is_verified_with_its_tables_and_checks(Engine::Mariadb, Server::Minio).await;
}

per_store!(a_good_dump_is_verified_postgres, verified_postgres);
async fn verified_postgres(server: Server) {
    a_good_dump_is_verified_with_its_tables_and_checks(Engine::Postgres, server).await;
}

async fn sql_that_fails_midway_is_not_restorable(engine: Engine) {
    let minio = store(
        "k/broken.sql",
        b"CREATE TABLE first_half (id INT PRIMARY KEY);\nINSERT INTO first_half VALUES (1);\nINSERT INTO no_such_table VALUES (2);\nCREATE TABLE never (id INT);\n",
    )
    .await;
    let run = run_verify(engine, &minio, "k/broken.sql", &[]);
    assert!(!run.succeeded(), "{}", run.text());
    let r = run.result.expect("a result");
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.reason.as_deref(), Some("NotRestorable"));
    assert!(r.message().contains("no_such_table"), "{}", r.log);
}

#[tokio::test]
async fn sql_that_fails_midway_is_not_restorable_mariadb() {
    sql_that_fails_midway_is_not_restorable(Engine::Mariadb).await;
}

#[tokio::test]
async fn sql_that_fails_midway_is_not_restorable_postgres() {
    sql_that_fails_midway_is_not_restorable(Engine::Postgres).await;
}

#[tokio::test]
async fn a_failing_check_names_its_query_what_it_got_and_what_was_expected() {
    let minio = shop_dump(Engine::Postgres, "k/datadump1.sql").await;
    let run = run_verify(
        Engine::Postgres,
        &minio,
        "k/datadump1.sql",
        &[
            r#"{"query":"SELECT count(*) FROM customers","atLeast":1}"#,
            r#"{"query":"SELECT count(*) FROM orders","atLeast":1000000}"#,
        ],
    );
    assert!(!run.succeeded(), "{}", run.text());
    let r = run.result.expect("a result");
    assert_eq!(r.reason.as_deref(), Some("CheckFailed"));
    assert_eq!(r.tables, Some(6));
    let failed = &r.checks[1];
    assert!(!failed.passed);
    assert_eq!(
        (
            failed.query.as_str(),
            failed.got.as_str(),
            failed.expected.as_str()
        ),
        ("SELECT count(*) FROM orders", "2000", "at least 1000000")
    );
    assert!(
        r.message().contains(
            r#"check "SELECT count(*) FROM orders" returned "2000", expected at least 1000000"#
        ),
        "{}",
        r.log
    );
}

// On the real node: drills the operator starts after uploads.

use std::time::Duration;
use support::bed::*;
use support::k8s::{EventFilter, wait_events};
use support::minio::{BUCKET, bucket_keys};
use support::receiver::Receiver;

const DRILL_TIMEOUT: Duration = Duration::from_secs(120);

/// `spec.verify` with drills after each upload and `checks` (YAML flow list).
fn verify_spec(checks: &str) -> String {
    format!("  verify:\n    afterUpload: true\n    checks: {checks}\n")
}

async fn a_dump_is_drilled_after_its_upload(engine: Engine) {
    let spec = verify_spec(r#"[{query: "SELECT count(*) FROM orders", atLeast: 1}]"#);
    let (b, _op, mut pods) = ready_bed(engine, &spec).await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let drill = next_succeeded(&mut pods, "verify").await;
    println!("drill output:\n{}", drill.output);
    let status = wait_orders(&b, "Verified", Some("True"), "Verified", DRILL_TIMEOUT).await;
    let key = status.last_upload_key.clone().unwrap();
    let v = status.last_verification.clone().unwrap();
    assert_eq!(v.key.as_deref(), Some(key.as_str()));
    assert!(v.passed);
    assert_eq!(v.tables, Some(6));
    assert_eq!(
        (
            v.checks[0].passed,
            v.checks[0].got.as_str(),
            v.checks[0].expected.as_str()
        ),
        (true, "2000", "at least 1")
    );
    assert!(v.duration_seconds.is_some_and(|s| s >= 0), "{v:?}");
    assert_eq!(status.last_verified_key.as_deref(), Some(key.as_str()));
    assert_eq!(
        count(&status.log, &format!("backup verified {key} (6 tables)")),
        1
    );
    // kubectl get dbb shows when the last dump was verified.
    let table = kubectl(b.cp(), &["get", "dbb", "-n", &b.ns, "orders"]);
    assert!(
        table.lines().next().unwrap().contains("VERIFIED"),
        "{table}"
    );
}

#[tokio::test]
async fn a_mariadb_dump_is_drilled_after_its_upload() {
    a_dump_is_drilled_after_its_upload(Engine::Mariadb).await;
}

#[tokio::test]
async fn a_postgres_dump_is_drilled_after_its_upload() {
    a_dump_is_drilled_after_its_upload(Engine::Postgres).await;
}

/// Connections the MariaDB server accepted so far, this query's own included.
fn connections(db: &Database) -> u64 {
    db.query("shop", "SHOW GLOBAL STATUS LIKE 'Connections'")
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_object_that_fails_midway_is_not_restorable_and_production_is_never_contacted() {
    let (b, op, mut pods) = ready_bed(Engine::Mariadb, "").await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let key = status_of(&b).await.last_upload_key.unwrap();
    // The object replaced by SQL that fails midway, under our naming.
    let client = b.minio.s3_client().await;
    client
        .put_object()
        .bucket(BUCKET)
        .key(&key)
        .body(
            b"CREATE TABLE half (id INT);\nINSERT INTO half VALUES (1);\nINSERT INTO missing_table VALUES (2);\n"
                .to_vec()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let before = connections(&b.db);
    apply_backup_with(&b, &verify_spec("[]"));
    let drill = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(
        (drill.step.as_str(), drill.exit_code),
        ("verify", 1),
        "{}",
        drill.output
    );
    let status = wait_orders(
        &b,
        "Verified",
        Some("False"),
        "NotRestorable",
        DRILL_TIMEOUT,
    )
    .await;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Verified")
        .unwrap();
    assert!(
        condition.message.contains("missing_table"),
        "{}",
        condition.message
    );
    assert!(!status.last_verification.unwrap().passed);
    assert_eq!(status.last_verified_key, None);
    let warned = wait_events(
        &b.client,
        &b.ns,
        EventFilter::warning("orders", "NotRestorable"),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        warned[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("missing_table")
    );
    let metrics = op.metrics().encode();
    assert!(
        metrics.contains(&format!(
            "dbbackup_verify_passed{{namespace=\"{}\",name=\"orders\"}} 0",
            b.ns
        )),
        "{metrics}"
    );
    // Only this count's own connection reached the production server.
    assert_eq!(connections(&b.db), before + 1);
}

#[tokio::test]
async fn a_failing_check_says_what_it_got_and_what_was_expected() {
    let spec = verify_spec(r#"[{query: "SELECT count(*) FROM orders", atLeast: 1000000}]"#);
    // A webhook with its default events: the failed drill reaches it, once.
    let hook = Receiver::start(&[]).await;
    let b = bed(Engine::Postgres).await;
    apply_secret(&b, "hooks", &[("url", &format!("{}/hook", hook.url))]);
    let notify = "  notify:\n  - {name: ops, type: webhook, urlSecret: {name: hooks}}\n";
    let (b, _op, mut pods) = ready(b, &format!("{spec}{notify}")).await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let drill = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(drill.step, "verify", "{}", drill.output);
    let status = wait_orders(&b, "Verified", Some("False"), "CheckFailed", DRILL_TIMEOUT).await;
    let got = hook.exactly(1, "the drill's message").await;
    let m: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(
        (m["event"].as_str(), m["reason"].as_str()),
        (Some("verificationFailure"), Some("CheckFailed"))
    );
    assert_eq!(m["key"], status.last_upload_key.clone().unwrap());
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Verified")
        .unwrap();
    assert!(
        condition.message.contains(
            r#"check "SELECT count(*) FROM orders" returned "2000", expected at least 1000000"#
        ),
        "{}",
        condition.message
    );
    let check = &status.last_verification.unwrap().checks[0];
    assert_eq!((check.got.as_str(), check.passed), ("2000", false));
}

#[tokio::test]
async fn retention_keeps_the_newest_verified_dump_when_a_newer_one_fails_its_drill() {
    let spec = format!(
        "  retention:\n    keepLast: 1\n{}",
        verify_spec(r#"[{query: "SELECT count(*) FROM products", equals: "200"}]"#)
    );
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, &spec).await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    next_succeeded(&mut pods, "verify").await;
    let status = wait_orders(&b, "Verified", Some("True"), "Verified", DRILL_TIMEOUT).await;
    let verified = status.last_verified_key.unwrap();
    // The upload CronJob learns which dump to keep before the next upload.
    wait_for(
        "the upload CronJob to keep the verified dump",
        Duration::from_secs(30),
        || async {
            let cj = kubectl(
                b.cp(),
                &["get", "cronjob", "-n", &b.ns, "orders-upload", "-o", "yaml"],
            );
            cj.contains(&format!("--keep-verified={verified}"))
                .then_some(())
        },
    )
    .await;
    // The next dump fails its check: products gains a row.
    b.db.query(
        "shop",
        "INSERT INTO products VALUES (201, 'Late product', 9.99)",
    );
    backup_now(&b, &mut pods, "second", &mut vec![]).await;
    let newer = status_of(&b).await.last_upload_key.unwrap();
    assert_ne!(newer, verified);
    let drill = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(
        (drill.step.as_str(), drill.exit_code),
        ("verify", 1),
        "{}",
        drill.output
    );
    wait_orders(&b, "Verified", Some("False"), "CheckFailed", DRILL_TIMEOUT).await;
    let keys = bucket_keys(&b.minio).await;
    assert!(keys.contains(&verified), "{keys:?}");
    assert!(keys.contains(&newer), "{keys:?}");
}

#[tokio::test]
async fn a_scheduled_drill_drills_the_newest_dump() {
    let spec = "  verify:\n    afterUpload: false\n    schedule: \"* * * * *\"\n";
    let (b, _op, mut pods) = ready_bed(Engine::Postgres, spec).await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    // No drill after the upload; the next minute starts one.
    let drill = pods.finished(1, Duration::from_secs(150)).await.remove(0);
    assert_eq!(
        (drill.step.as_str(), drill.exit_code),
        ("verify", 0),
        "{}",
        drill.output
    );
    let status = wait_orders(&b, "Verified", Some("True"), "Verified", DRILL_TIMEOUT).await;
    assert!(status.last_scheduled_drill.is_some(), "{status:?}");
    assert_eq!(status.last_verified_key, status.last_upload_key);
}
