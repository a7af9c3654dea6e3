//! Several pods on one staging volume, as real concurrent processes (the
//! operator binary's `dump` and `upload`, real MariaDB and MinIO): every
//! dump that reported success is in the bucket exactly once or still staged,
//! no object is a prefix of a dump, and every reported success is true.
//! Each case repeats, so that the windows between steps are hit. The async
//! tests run on two threads: their bodies block on the steps while the proxy
//! serves the upload.

mod support;

use dbbackup_operator::api::Compression;
use dbbackup_operator::jobresult::{JobResult, Outcome};
use std::process::Child;
use std::time::Duration;
use support::faultproxy::{self, FaultProxy};
use support::minio::*;
use support::steps::*;
use support::*;

/// Waits for a step started with `spawn`, and its result.
fn finish(child: Child, termlog: &std::path::Path) -> (bool, JobResult) {
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result = std::fs::read_to_string(termlog)
        .ok()
        .and_then(|t| JobResult::parse(&t))
        .unwrap_or_else(|| panic!("no result: {text}"));
    let _ = std::fs::remove_file(termlog);
    (out.status.success(), result)
}

fn spawn_dump(src: &Source, staging: &Staging) -> (Child, std::path::PathBuf) {
    let (mut cmd, termlog) = dump_command(src, staging, Compression::None);
    (cmd.spawn().unwrap(), termlog)
}

fn spawn_upload(minio: &Minio, staging: &Staging, endpoint: &str) -> (Child, std::path::PathBuf) {
    let opts = UploadOpts {
        endpoint: Some(endpoint.to_string()),
        ..Default::default()
    };
    let (mut cmd, termlog) = upload_command(minio, staging, &opts);
    (cmd.spawn().unwrap(), termlog)
}

/// A whole mariadb-dump output ends with this line.
fn whole(dump: &[u8]) -> bool {
    String::from_utf8_lossy(dump)
        .trim_end()
        .lines()
        .last()
        .is_some_and(|l| l.starts_with("-- Dump completed"))
}

/// Three dumps at once on one volume, three times: each waits for the one
/// before, each success is a whole dump, and one whole dump stays staged.
#[test]
fn dumps_at_once_on_one_volume_queue_and_each_success_is_whole() {
    let db = Database::with_shop(dbbackup_operator::api::Engine::Mariadb);
    let src = db.source("shop");
    let staging = Staging::new();
    for round in 0..3 {
        let runs: Vec<_> = (0..3).map(|_| spawn_dump(&src, &staging)).collect();
        for (child, termlog) in runs {
            let (ok, result) = finish(child, &termlog);
            assert!(
                ok && result.outcome == Outcome::Succeeded,
                "round {round}: {result:?}"
            );
        }
        let files = staging.dumps();
        assert_eq!(
            files,
            [staging.path().join("dumps/datadump.sql")],
            "round {round}"
        );
        assert!(whole(&std::fs::read(&files[0]).unwrap()), "round {round}");
    }
    let completed = staging
        .log_lines()
        .iter()
        .filter(|l| l.ends_with(",database dump completed"))
        .count();
    assert_eq!(completed, 9);
}

/// A dump that finishes while an upload sends the previous one is neither
/// deleted nor mixed in: the upload sends exactly what it claimed, and the
/// next upload sends the new dump. The proxy stalls the upload's writes so
/// that the dump lands mid-upload; one round lets them race unstalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_finished_during_an_upload_is_kept_for_the_next_upload() {
    let db = Database::with_shop(dbbackup_operator::api::Engine::Mariadb);
    let src = db.source("shop");
    let minio = Minio::start();
    create_bucket(&minio).await;
    let proxy = FaultProxy::start(&minio.endpoint, faultproxy::refuse_nothing()).await;
    let staging = Staging::new();
    let mut sent = vec![];
    for round in 0..3 {
        db.query(
            "shop",
            &format!("INSERT INTO products VALUES ({}, 'round', 1)", 1000 + round),
        );
        let run = run_dump(&src, &staging, Compression::None);
        assert!(run.succeeded(), "{}", run.text());
        let first = std::fs::read(staging.path().join("dumps/datadump.sql")).unwrap();
        let stall = round < 2;
        if stall {
            proxy.hold_puts();
        }
        let held_before = proxy.held();
        let (upload, termlog) = spawn_upload(&minio, &staging, &proxy.endpoint);
        if stall {
            process::wait_until("the upload to be sending", Duration::from_secs(30), || {
                proxy.held() > held_before
            });
        }
        db.query(
            "shop",
            &format!("INSERT INTO products VALUES ({}, 'mid', 1)", 2000 + round),
        );
        let second = run_dump(&src, &staging, Compression::None);
        assert!(second.succeeded(), "{}", second.text());
        proxy.release();
        let (ok, result) = tokio::task::spawn_blocking(move || finish(upload, &termlog))
            .await
            .unwrap();
        assert!(ok && result.outcome == Outcome::Succeeded, "{result:?}");
        let key = result.key.unwrap();
        assert_eq!(
            get_object(&minio, &key).await,
            first,
            "round {round}: {key}"
        );
        sent.push(first);
        let staged = std::fs::read(staging.path().join("dumps/datadump.sql"))
            .expect("the dump finished mid-upload is still staged");
        assert!(whole(&staged));
        let next = run_upload(&minio, &staging, &UploadOpts::default());
        let key = next.result.clone().unwrap().key.unwrap();
        assert_eq!(get_object(&minio, &key).await, staged, "round {round}");
        sent.push(staged);
        assert_eq!(staging.dumps(), Vec::<std::path::PathBuf>::new());
    }
    let keys = bucket_keys(&minio).await;
    assert_eq!(keys.len(), sent.len(), "{keys:?}");
    for (key, dump) in keys.iter().zip(&sent) {
        let object = get_object(&minio, key).await;
        assert!(whole(&object) && &object == dump, "{key}");
    }
}

/// Three uploads at once on one staged dump, five times: one sends it, the
/// others wait and find nothing; each dump is in the bucket exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_at_once_send_each_dump_exactly_once() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    let mut dumps = vec![];
    for round in 0..5 {
        let body = format!("-- round {round}\n").repeat(200_000).into_bytes();
        std::fs::write(staging.staged_dump(), &body).unwrap();
        dumps.push(body);
        let runs: Vec<_> = (0..3)
            .map(|_| spawn_upload(&minio, &staging, &minio.endpoint))
            .collect();
        let outcomes = tokio::task::spawn_blocking(move || {
            runs.into_iter()
                .map(|(c, t)| finish(c, &t))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert!(
            outcomes.iter().all(|(ok, _)| *ok),
            "round {round}: {outcomes:?}"
        );
        let sent: Vec<_> = outcomes
            .iter()
            .filter(|(_, r)| r.outcome == Outcome::Succeeded)
            .collect();
        assert_eq!(sent.len(), 1, "round {round}: {outcomes:?}");
    }
    let keys = bucket_keys(&minio).await;
    assert_eq!(keys.len(), dumps.len(), "{keys:?}");
    for (key, body) in keys.iter().zip(&dumps) {
        assert_eq!(&get_object(&minio, key).await, body, "{key}");
    }
}

/// An upload killed after the store confirmed its dump but before it deleted
/// it leaves the claim and a `.sent-` marker naming the object (the state
/// is made here as that kill leaves it): the next upload deletes the dump
/// without sending it again. A marker whose object is gone sends the dump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_the_store_confirmed_before_a_kill_is_not_sent_again() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    let body = b"-- confirmed\n".repeat(1000);
    std::fs::write(staging.staged_dump(), &body).unwrap();
    let first = run_upload(&minio, &staging, &UploadOpts::default());
    let key = first.result.unwrap().key.unwrap();
    let dumps = staging.path().join("dumps");
    std::fs::write(dumps.join(".uploading-datadump.sql"), &body).unwrap();
    std::fs::write(dumps.join(".sent-datadump.sql"), &key).unwrap();
    let again = run_upload(&minio, &staging, &UploadOpts::default());
    let result = again.result.clone().unwrap();
    assert_eq!(
        (result.outcome, result.key.as_deref()),
        (Outcome::Succeeded, Some(key.as_str())),
        "{}",
        again.text()
    );
    assert_eq!(
        bucket_keys(&minio).await,
        std::slice::from_ref(&key),
        "sent once"
    );
    assert_eq!(staging.dumps(), Vec::<std::path::PathBuf>::new());

    std::fs::write(dumps.join(".uploading-datadump.sql"), &body).unwrap();
    std::fs::write(dumps.join(".sent-datadump.sql"), "2000-01-01/gone.sql").unwrap();
    let sent = run_upload(&minio, &staging, &UploadOpts::default());
    assert!(sent.succeeded(), "{}", sent.text());
    assert_eq!(bucket_keys(&minio).await.len(), 2);
    assert_eq!(staging.dumps(), Vec::<std::path::PathBuf>::new());
}

/// An upload killed after it deleted its dump but before its `.sent-` marker
/// leaves that marker, naming an object the store holds. A new dump staged
/// beside it is a different dump: it is uploaded under a new key, not
/// deleted as if it were the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_sent_marker_does_not_stand_for_a_new_dump() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    std::fs::write(staging.staged_dump(), b"-- yesterday\n".repeat(1000)).unwrap();
    let old = run_upload(&minio, &staging, &UploadOpts::default());
    let old_key = old.result.unwrap().key.unwrap();
    let dumps = staging.path().join("dumps");
    std::fs::write(dumps.join(".sent-datadump.sql"), &old_key).unwrap();
    let body = b"-- today\n".repeat(1000);
    std::fs::write(staging.staged_dump(), &body).unwrap();
    let new = run_upload(&minio, &staging, &UploadOpts::default());
    let result = new.result.clone().unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded, "{}", new.text());
    let key = result.key.unwrap();
    assert_ne!(key, old_key, "the new dump was taken for the old one");
    assert_eq!(get_object(&minio, &key).await, body);
    assert_eq!(bucket_keys(&minio).await.len(), 2);
    assert_eq!(staging.dumps(), Vec::<std::path::PathBuf>::new());
}
