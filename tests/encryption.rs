//! Backups an attacker cannot read: dumps encrypted with age as they are
//! written, through the real dump tools, MinIO and the fetch step.

mod support;

use age::secrecy::ExposeSecret;
use dbbackup_operator::api::{Compression, Engine};
use dbbackup_operator::jobresult::JobResult;
use support::databases::Database;
use support::minio::*;
use support::steps::*;

/// Fetches `key` with `identity` (its secret text), as the restore pod would.
fn fetch(
    minio: &Minio,
    key: &str,
    identity: &str,
    dir: &std::path::Path,
) -> (bool, JobResult, std::path::PathBuf) {
    let (out, termlog) = (dir.join("restore.sql"), dir.join("termination-log"));
    let run = store_command(minio, "fetch")
        .arg(format!("--key={key}"))
        .arg(format!("--out={}", out.display()))
        .arg(format!("--termination-log={}", termlog.display()))
        .env("DBBACKUP_AGE_IDENTITY", identity)
        .output()
        .unwrap();
    let result = JobResult::parse(&std::fs::read_to_string(&termlog).unwrap()).unwrap();
    (run.status.success(), result, out)
}

async fn an_encrypted_round_trip(engine: Engine) {
    let db = Database::with_shop(engine);
    let minio = Minio::start();
    create_bucket(&minio).await;
    let identity = age::x25519::Identity::generate();
    let staging = Staging::new();
    let (mut dump, _) = dump_command(&db.source("shop"), &staging, Compression::Gzip);
    let out = dump
        .env("DBBACKUP_AGE_RECIPIENTS", identity.to_public().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_upload(&minio, &staging, &UploadOpts::default());
    assert!(run.succeeded(), "{}", run.text());
    let key = run.result.unwrap().key.unwrap();
    assert!(key.ends_with("/datadump1.sql.gz.age"), "{key}");
    // The object holds no row of the data.
    let object = get_object(&minio, &key).await;
    assert!(!object.windows(11).any(|w| w == b"example.com"));
    assert!(object.starts_with(b"age-encryption.org/v1"));

    let dir = tempfile::tempdir().unwrap();
    let secret = identity.to_string();
    let (ok, result, sql) = fetch(&minio, &key, secret.expose_secret(), dir.path());
    assert!(ok, "{}", result.log);
    db.restore_and_compare("restored", &std::fs::read(&sql).unwrap());

    // A wrong identity: a specific reason, and nothing left to load.
    std::fs::remove_file(&sql).unwrap();
    let stranger = age::x25519::Identity::generate().to_string();
    let (ok, result, sql) = fetch(&minio, &key, stranger.expose_secret(), dir.path());
    assert!(!ok);
    assert_eq!(
        result.reason.as_deref(),
        Some("DecryptionFailed"),
        "{}",
        result.log
    );
    assert!(!sql.exists());
    assert!(!result.log.contains("AGE-SECRET-KEY"), "{}", result.log);
}

#[tokio::test]
async fn an_encrypted_mariadb_round_trip_holds_no_plaintext() {
    an_encrypted_round_trip(Engine::Mariadb).await;
}

#[tokio::test]
async fn an_encrypted_postgres_round_trip_holds_no_plaintext() {
    an_encrypted_round_trip(Engine::Postgres).await;
}
