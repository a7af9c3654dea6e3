//! Backups an attacker cannot read or erase, at the store: server-side
//! encryption (SSE-C over TLS with a CA bundle, SSE-KMS and SSE-S3 with
//! MinIO's built-in KMS), Object Lock, and write-only upload credentials
//! with a second pair for pruning. The real upload and fetch steps against
//! a real MinIO.

mod support;

use aws_sdk_s3::types::ServerSideEncryption;
use support::minio::*;
use support::steps::*;

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

async fn create_tls_bucket(minio: &Minio, locked: bool) {
    minio
        .tls_client()
        .await
        .create_bucket()
        .bucket(BUCKET)
        .object_lock_enabled_for_bucket(locked)
        .send()
        .await
        .unwrap();
}

fn uploaded_key(run: &StepRun) -> String {
    assert!(run.succeeded(), "{}", run.text());
    run.result.as_ref().unwrap().key.clone().unwrap()
}

#[tokio::test]
async fn sse_c_over_tls_with_a_ca_bundle_is_proven_restored_and_unreadable_without_the_key() {
    use base64::Engine as _;
    let minio = Minio::start_with_opts(MinioOpts {
        tls: true,
        ..Default::default()
    });
    create_tls_bucket(&minio, false).await;
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
    let minio = Minio::start_with_opts(MinioOpts {
        tls: true,
        ..Default::default()
    });
    create_tls_bucket(&minio, false).await;
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
    let s3 = minio.s3_client().await;
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
            let head = s3
                .head_object()
                .bucket(BUCKET)
                .key(&key)
                .send()
                .await
                .unwrap();
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
