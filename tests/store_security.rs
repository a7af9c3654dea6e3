//! Backups an attacker cannot read or erase, at the store: server-side
//! encryption (SSE-C over TLS with a CA bundle, SSE-KMS and SSE-S3 with
//! MinIO's built-in KMS), Object Lock, and write-only upload credentials
//! with a second pair for pruning. The real upload and fetch steps against
//! a real MinIO.

mod support;

use aws_sdk_s3::types::ServerSideEncryption;
use support::minio::*;
use support::steps::*;
use support::stores::Server;

/// A dump's text with a row no encrypted byte may show.
const ROW: &[u8] = b"INSERT INTO orders VALUES (1, 'secret-row-4711@example.com');\n";

fn stage(staging: &Staging, copies: usize) {
    std::fs::write(staging.staged_dump(), ROW.repeat(copies)).unwrap();
}

/// The upload step against `minio` with `args` and `env` beyond its defaults.
fn upload(minio: &Minio, staging: &Staging, args: &[String], env: &[(&str, &str)]) -> StepRun {
    let opts = UploadOpts {
        prefix: "p/".into(),
        extra_args: args.to_vec(),
        ..Default::default()
    };
    let (mut cmd, termlog) = upload_command(minio, staging, &opts);
    cmd.envs(env.iter().copied());
    finish(cmd, &termlog)
}

/// The fetch step of a restore, with `args` and `env` beyond its defaults.
fn fetch(minio: &Minio, key: &str, args: &[String], env: &[(&str, &str)]) -> (StepRun, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (out, termlog) = (dir.path().join("restore.sql"), dir.path().join("termlog"));
    let mut cmd = store_command(minio, "fetch");
    cmd.arg(format!("--key={key}"))
        .arg(format!("--out={}", out.display()))
        .arg(format!("--termination-log={}", termlog.display()))
        .args(args)
        .envs(env.iter().copied());
    let run = finish(cmd, &termlog);
    let sql = std::fs::read(&out).unwrap_or_default();
    (run, sql)
}

/// The CA bundle flag for a TLS server, its file kept in `dir`.
fn ca_args(minio: &Minio, dir: &std::path::Path) -> Vec<String> {
    let path = dir.join("ca.crt");
    std::fs::write(&path, minio.ca_pem.as_ref().unwrap()).unwrap();
    vec![format!("--ca-bundle={}", path.display())]
}

/// A server over https (its CA in `Minio::ca_pem`) with the bucket.
async fn tls_minio() -> Minio {
    let minio = Minio::start_with_opts(MinioOpts {
        tls: true,
        ..Default::default()
    });
    create_bucket(&minio).await;
    minio
}

fn uploaded_key(run: &StepRun) -> String {
    assert!(run.succeeded(), "{}", run.text());
    run.result.as_ref().unwrap().key.clone().unwrap()
}

#[tokio::test]
async fn sse_c_over_tls_with_a_ca_bundle_is_proven_restored_and_unreadable_without_the_key() {
    use base64::Engine as _;
    let minio = tls_minio().await;
    let dir = tempfile::tempdir().unwrap();
    let key_text = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let sse_env = [("DBBACKUP_SSE_CUSTOMER_KEY", key_text.as_str())];
    let mut args = ca_args(&minio, dir.path());
    args.push("--sse=SSE-C".into());

    // One single-part dump and one multipart dump (5 MiB parts).
    let staging = Staging::new();
    stage(&staging, 10);
    let small = uploaded_key(&upload(&minio, &staging, &args, &sse_env));
    stage(&staging, 12 * 1024 * 1024 / ROW.len());
    let mut multipart = args.clone();
    multipart.push("--part-size-mib=5".into());
    let run = upload(&minio, &staging, &multipart, &sse_env);
    let big = uploaded_key(&run);
    // The proof is the store's CRC64/NVME: an SSE-C ETag is no MD5.
    let proof = run.result.as_ref().unwrap().checksum.clone().unwrap();
    assert!(proof.starts_with("crc64nvme:"), "{proof}");
    assert!(staging.dumps().is_empty(), "both dumps sent and deleted");

    for key in [&small, &big] {
        // Unreadable without the key, even to the root user.
        let denied = minio
            .tls_client()
            .await
            .get_object()
            .bucket(BUCKET)
            .key(key.as_str())
            .send()
            .await;
        assert!(denied.is_err(), "{key} read without its SSE-C key");
        // The restore's download, with the key and the CA bundle.
        let (run, sql) = fetch(&minio, key, &args, &sse_env);
        assert!(run.succeeded(), "{}", run.text());
        assert!(sql.starts_with(ROW));
        let checksum = run.result.unwrap().checksum.unwrap();
        assert!(checksum.starts_with("crc64nvme:"), "{checksum}");
        // A download without the key names the store's refusal.
        let (run, _) = fetch(&minio, key, &args, &[]);
        assert!(!run.succeeded());
        assert!(run.text().contains("SSE-C needs its key"), "{}", run.text());
        let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let (run, sql) = fetch(&minio, key, &args, &[("DBBACKUP_SSE_CUSTOMER_KEY", &wrong)]);
        assert!(!run.succeeded() && sql.is_empty(), "{}", run.text());
    }
    assert!(
        !minio.disk_contains(b"secret-row-4711"),
        "plaintext on MinIO's disk"
    );
    // The key never reaches a log line or a result.
    for line in staging.log_lines() {
        assert!(!line.contains(&key_text), "{line}");
    }
}

#[tokio::test]
async fn an_sse_c_key_that_is_not_32_bytes_fails_the_upload_without_showing_it() {
    let minio = tls_minio().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = ca_args(&minio, dir.path());
    args.push("--sse=SSE-C".into());
    let staging = Staging::new();
    stage(&staging, 10);
    let run = upload(
        &minio,
        &staging,
        &args,
        &[("DBBACKUP_SSE_CUSTOMER_KEY", "too-short-key-text")],
    );
    assert!(!run.succeeded());
    assert!(run.text().contains("must be 32 bytes"), "{}", run.text());
    assert!(!run.text().contains("too-short-key-text"), "{}", run.text());
    assert_eq!(staging.dumps().len(), 1, "the dump is kept");
}

#[tokio::test]
async fn sse_kms_and_aes256_send_their_headers_and_the_proof_holds() {
    let minio = Minio::start_with_opts(MinioOpts {
        kms: true,
        ..Default::default()
    });
    create_bucket(&minio).await;
    let cases = [
        (
            vec![
                "--sse=aws:kms".to_string(),
                format!("--sse-kms-key-id={KMS_KEY}"),
            ],
            ServerSideEncryption::AwsKms,
        ),
        (
            vec!["--sse=AES256".to_string()],
            ServerSideEncryption::Aes256,
        ),
    ];
    for (args, expected) in cases {
        for (copies, extra) in [
            (10, None),
            (12 * 1024 * 1024 / ROW.len(), Some("--part-size-mib=5")),
        ] {
            let staging = Staging::new();
            stage(&staging, copies);
            let mut upload_args = args.clone();
            upload_args.extend(extra.map(str::to_string));
            let run = upload(&minio, &staging, &upload_args, &[]);
            let key = uploaded_key(&run);
            // A KMS ETag is no MD5: the store's CRC64/NVME is the proof.
            let proof = run.result.as_ref().unwrap().checksum.clone().unwrap();
            let kms = expected == ServerSideEncryption::AwsKms;
            assert!(!kms || proof.starts_with("crc64nvme:"), "{args:?}: {proof}");
            let head = head_object(&minio, &key).await;
            assert_eq!(head.server_side_encryption(), Some(&expected), "{args:?}");
            if expected == ServerSideEncryption::AwsKms {
                let id = head.ssekms_key_id().unwrap_or_default();
                assert!(id.ends_with(KMS_KEY), "{id}");
            }
            let (run, sql) = fetch(&minio, &key, &args, &[]);
            assert!(run.succeeded(), "{}", run.text());
            assert_eq!(sql.len(), ROW.len() * copies);
            assert!(
                run.result.unwrap().checksum.is_some(),
                "the download was checked"
            );
        }
    }
    assert!(
        !minio.disk_contains(b"secret-row-4711"),
        "plaintext on MinIO's disk"
    );
}

/// A dump uploaded now by `minio`'s upload step with `args`, `env`; its key.
fn upload_one(minio: &Minio, args: &[String], env: &[(&str, &str)]) -> (String, Vec<String>) {
    let staging = Staging::new();
    stage(&staging, 10);
    let run = upload(minio, &staging, args, env);
    (uploaded_key(&run), staging.log_lines())
}

per_store!(
    a_locked_dump_survives_retention_and_a_direct_delete_and_is_pruned_once_unlocked,
    locked_dump
);
async fn locked_dump(store: Server) {
    use aws_sdk_s3::primitives::DateTime;
    use aws_sdk_s3::types::{ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode};
    let minio = Minio::start_server(store);
    let s3 = minio.s3_client().await;
    s3.create_bucket()
        .bucket(BUCKET)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let args: Vec<String> = [
        "--object-lock-mode=GOVERNANCE",
        "--object-lock-days=1",
        "--keep-last=1",
    ]
    .map(String::from)
    .to_vec();
    let (first, _) = upload_one(&minio, &args, &[]);
    let head = head_object(&minio, &first).await;
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Governance));
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let day = chrono::Utc::now().timestamp() + 24 * 3600;
    assert!(
        (until - day).abs() < 120,
        "locked for a day: {until} vs {day}"
    );
    let version = head.version_id().unwrap().to_string();

    // A direct delete of the version is refused, even to the root user.
    let deleted = s3
        .delete_object()
        .bucket(BUCKET)
        .key(&first)
        .version_id(&version)
        .send()
        .await;
    assert!(deleted.is_err(), "a locked version was deleted");

    // Retention would prune the first dump, but leaves it while locked.
    let (second, log) = upload_one(&minio, &args, &[]);
    assert!(
        log.iter().any(|l| l.ends_with(&format!(
            "retention keeps {first}: locked until {}",
            chrono::DateTime::from_timestamp(until, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))),
        "{log:#?}"
    );
    s3.head_object()
        .bucket(BUCKET)
        .key(&first)
        .version_id(&version)
        .send()
        .await
        .unwrap();

    // Once the lock ends (shortened here, as GOVERNANCE lets its admin),
    // the next upload's retention prunes it: the version itself, not a
    // delete marker in front of it.
    let soon = chrono::Utc::now().timestamp() + 2;
    s3.put_object_retention()
        .bucket(BUCKET)
        .key(&first)
        .version_id(&version)
        .bypass_governance_retention(true)
        .retention(
            ObjectLockRetention::builder()
                .mode(ObjectLockRetentionMode::Governance)
                .retain_until_date(DateTime::from_secs(soon))
                .build(),
        )
        .send()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (third, log) = upload_one(&minio, &args, &[]);
    assert!(
        log.iter()
            .any(|l| l.ends_with(&format!("retention pruned {first}"))),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("retention keeps {second}: locked until"))),
        "{log:#?}"
    );
    let versions = s3
        .list_object_versions()
        .bucket(BUCKET)
        .prefix(&first)
        .send()
        .await
        .unwrap();
    assert!(
        versions.versions().is_empty() && versions.delete_markers().is_empty(),
        "{versions:?}"
    );
    assert_eq!(bucket_keys(&minio).await, [second, third]);
}

/// S3 actions an upload needs: write, list, read back, clean up its own
/// multipart uploads. No DeleteObject.
const WRITE_ONLY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
 "Action":["s3:PutObject","s3:GetObject","s3:ListBucket","s3:AbortMultipartUpload","s3:ListMultipartUploadParts","s3:ListBucketMultipartUploads"],
 "Resource":["arn:aws:s3:::backups","arn:aws:s3:::backups/*"]}]}"#;

/// What pruning needs: list, read the lock, delete.
const PRUNE: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
 "Action":["s3:ListBucket","s3:GetObject","s3:DeleteObject"],
 "Resource":["arn:aws:s3:::backups","arn:aws:s3:::backups/*"]}]}"#;

#[tokio::test]
async fn write_only_upload_credentials_upload_and_prune_with_the_second_secret() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let (writer, writer_secret) = minio.add_user("writer", WRITE_ONLY);
    let (pruner, pruner_secret) = minio.add_user("pruner", PRUNE);
    let as_writer = [
        ("AWS_ACCESS_KEY_ID", writer.as_str()),
        ("AWS_SECRET_ACCESS_KEY", writer_secret.as_str()),
    ];
    // The policy holds: the writer cannot delete.
    let (first, _) = upload_one(&minio, &["--keep-last=1".into()], &as_writer);
    let denied = minio
        .client_as(&writer, &writer_secret)
        .await
        .delete_object()
        .bucket(BUCKET)
        .key(&first)
        .send()
        .await;
    assert!(denied.is_err(), "the write-only user deleted an object");

    // Without a prune Secret: the upload succeeds, and pruning says why it cannot.
    let (second, log) = upload_one(&minio, &["--keep-last=1".into()], &as_writer);
    let line = log
        .iter()
        .find(|l| l.contains(&format!("retention cannot prune {first}: AccessDenied")))
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert!(line.contains("spec.bucket.pruneSecretRef"), "{line}");
    assert!(
        log.iter()
            .any(|l| l.ends_with("file successfully uploaded")),
        "{log:#?}"
    );

    // With the second pair, retention prunes; the upload still used the first.
    let mut env = as_writer.to_vec();
    env.extend([
        ("DBBACKUP_PRUNE_ACCESS_KEY_ID", pruner.as_str()),
        ("DBBACKUP_PRUNE_SECRET_ACCESS_KEY", pruner_secret.as_str()),
    ]);
    let (third, log) = upload_one(&minio, &["--keep-last=1".into()], &env);
    for key in [&first, &second] {
        assert!(
            log.iter()
                .any(|l| l.ends_with(&format!("retention pruned {key}"))),
            "{log:#?}"
        );
    }
    assert_eq!(bucket_keys(&minio).await, [third]);
    for line in log {
        assert!(
            !line.contains(&pruner_secret) && !line.contains(&writer_secret),
            "{line}"
        );
    }
}

// The proxy serves from this runtime while the uploader runs as a blocking child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_crc64nvme_gets_no_kms_dump_it_cannot_prove_and_the_dump_stays() {
    use support::faultproxy::{self, FaultProxy};
    let minio = Minio::start_with_opts(MinioOpts {
        kms: true,
        ..Default::default()
    });
    create_bucket(&minio).await;
    let proxy = FaultProxy::start(&minio.endpoint, faultproxy::reject_checksums()).await;
    // Multipart: the store ignores CRC64/NVME, and a KMS ETag proves nothing.
    let staging = Staging::new();
    stage(&staging, 12 * 1024 * 1024 / ROW.len());
    let opts = UploadOpts {
        prefix: "p/".into(),
        endpoint: Some(proxy.endpoint.clone()),
        extra_args: ["--sse=aws:kms", "--part-size-mib=5"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let run = run_upload(&minio, &staging, &opts);
    assert!(!run.succeeded());
    assert!(
        run.text()
            .contains("the only proof of an upload under SSE-KMS or SSE-C"),
        "{}",
        run.text()
    );
    assert_eq!(staging.dumps().len(), 1, "the dump is kept");
    assert!(bucket_keys(&minio).await.is_empty());
    assert_no_pending_uploads(&minio).await;
}

/// A restore across namespaces reads through URLs its locate step signed:
/// the fetch step, with no key, endpoint or Secret at all, downloads the
/// object through them (a 12 MiB multipart object, ranged GETs) and proves
/// it by its MD5 ETag; a URL whose signature is altered is refused by the
/// store; a key outside the backup's prefix is never signed.
#[tokio::test]
async fn a_presigned_object_downloads_without_any_credentials_and_is_proven() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    stage(&staging, 12 * 1024 * 1024 / ROW.len());
    let key = uploaded_key(&upload(
        &minio,
        &staging,
        &["--part-size-mib=5".into()],
        &[],
    ));

    let dir = tempfile::tempdir().unwrap();
    let termlog = dir.path().join("locate-termlog");
    let mut cmd = store_command(&minio, "locate");
    let operator = age::x25519::Identity::generate();
    cmd.args(["--key=latest", "--prefix=p/", "--expires-seconds=600"])
        .arg(format!("--seal-to={}", operator.to_public()))
        .arg(format!("--termination-log={}", termlog.display()));
    let located = finish(cmd, &termlog);
    assert!(located.succeeded(), "{}", located.text());
    // The termination message, which whoever reads the pod reads, holds
    // the URLs sealed to the operator's key alone.
    let message = serde_json::to_string(located.result.as_ref().unwrap()).unwrap();
    assert!(
        !message.contains("X-Amz-Signature") && !message.contains("http"),
        "{message}"
    );
    let located = located.result.unwrap();
    assert_eq!(located.key.as_deref(), Some(key.as_str()));
    let sealed = located.sealed.unwrap();
    let urls = dbbackup_operator::jobs::presigned::open(&sealed, &operator).unwrap();

    let fetch_with = |urls: &dbbackup_operator::jobresult::Presigned| {
        let (out, termlog) = (
            dir.path().join("restore.sql"),
            dir.path().join("fetch-termlog"),
        );
        let _ = std::fs::remove_file(&out);
        let mut cmd = std::process::Command::new(support::process::operator_bin());
        cmd.arg("fetch")
            .arg(format!("--key={}", urls.key))
            .arg(format!("--out={}", out.display()))
            .arg(format!("--termination-log={}", termlog.display()))
            .env_clear()
            .env("HOME", "/tmp")
            .env("DBBACKUP_BUCKET", &urls.bucket)
            .env("DBBACKUP_PRESIGNED", serde_json::to_string(urls).unwrap());
        (
            finish(cmd, &termlog),
            std::fs::read(&out).unwrap_or_default(),
        )
    };
    let (run, sql) = fetch_with(&urls);
    assert!(run.succeeded(), "{}", run.text());
    assert!(
        sql == ROW.repeat(12 * 1024 * 1024 / ROW.len()),
        "{} bytes",
        sql.len()
    );
    // Proven by the object's MD5 ETag, recomputed over every byte: no
    // checksum mode is signed into the URLs, so the store reports no CRC.
    let etag = head_object(&minio, &key)
        .await
        .e_tag()
        .unwrap()
        .trim_matches('"')
        .to_string();
    let checksum = run.result.unwrap().checksum.unwrap();
    assert_eq!(checksum, format!("etag:{etag}"));

    // A key named outright must be one of the dumps under the prefix the
    // grant admits.
    let mut cmd = store_command(&minio, "locate");
    cmd.args([&format!("--key={key}"), "--prefix=q/"])
        .arg(format!("--seal-to={}", operator.to_public()))
        .arg(format!("--termination-log={}", termlog.display()));
    let outside = finish(cmd, &termlog);
    assert!(!outside.succeeded(), "{}", outside.text());
    assert!(
        outside.text().contains("is not one of the backup's dumps"),
        "{}",
        outside.text()
    );

    let mut forged = urls.clone();
    forged.get = forged.get.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    forged.head = forged.head.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    let (run, _) = fetch_with(&forged);
    assert!(!run.succeeded(), "{}", run.text());
}
