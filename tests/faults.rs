//! What goes wrong inside the jobs, on real MariaDB, PostgreSQL and MinIO:
//! each case fails with its own error text in the log, keeps what must be
//! kept, and never claims a success it did not have.

mod support;

use dbbackup_operator::api::{Compression, Engine};
use dbbackup_operator::jobresult::{JobResult, Outcome};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::faultproxy::{self, FaultProxy};
use support::minio::*;
use support::process::free_port;
use support::steps::*;
use support::stores::Server;
use support::*;

fn source(engine: Engine) -> (Database, Source) {
    let db = Database::with_shop(engine);
    let src = db.source("shop");
    (db, src)
}

/// Runs a dump that must fail, and returns its reported log line after
/// checking what a failed dump must leave behind: no dump, no partial file,
/// the line in the log file, exit status non-zero.
fn failed_dump(src: &Source, staging: &Staging) -> String {
    let run = run_dump(src, staging, Compression::None);
    assert!(!run.succeeded(), "the dump claimed success: {}", run.text());
    let result = run.result.clone().expect("a failed dump still reports");
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    assert!(
        staging.dumps().is_empty(),
        "a failed dump left {:?}",
        staging.dumps()
    );
    assert_eq!(staging.log_lines().last(), Some(&result.log));
    assert!(!run.text().contains(&src.password), "the password leaked");
    staging.assert_log_format();
    result.log
}

#[test]
fn unreachable_database_fails_the_dump_with_the_tools_error() {
    for engine in [Engine::Mariadb, Engine::Postgres] {
        let (_server, mut src) = source(engine);
        src.port = free_port();
        let line = failed_dump(&src, &Staging::new());
        let expected = match engine {
            Engine::Postgres => "Connection refused",
            _ => "Can't connect to server",
        };
        assert!(
            line.contains("database dump failed: dump tool exited with status")
                && line.contains(expected),
            "{engine:?}: {line}"
        );
    }
}

#[test]
fn missing_database_fails_the_dump_with_the_tools_error() {
    for engine in [Engine::Mariadb, Engine::Postgres] {
        let (_server, mut src) = source(engine);
        src.database = "no_such_db".into();
        let line = failed_dump(&src, &Staging::new());
        let expected = match engine {
            Engine::Postgres => r#"database "no_such_db" does not exist"#,
            _ => "Unknown database 'no_such_db'",
        };
        assert!(line.contains(expected), "{engine:?}: {line}");
    }
}

/// A staging volume of a few KiB: a tmpfs mounted over the staging folder.
struct TinyVolume<'a>(&'a Path);

impl<'a> TinyVolume<'a> {
    fn mount(dir: &'a Path, size: &str) -> TinyVolume<'a> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a small tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyVolume(dir)
    }
}

impl Drop for TinyVolume<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

/// A dump that does not fit says so with the volume's use and size, leaves
/// no partial file, and keeps the dump staged before it (not yet sent).
#[test]
fn a_full_disk_fails_the_dump_and_keeps_the_staged_one() {
    for engine in [Engine::Mariadb, Engine::Postgres] {
        let (_server, src) = source(engine);
        let staging = Staging::new();
        let _volume = TinyVolume::mount(staging.path(), "64k");
        let line = failed_dump(&src, &staging);
        assert!(
            line.contains("database dump failed: ")
                && line.contains("; staging volume full (")
                && line.ends_with("/64.0 KiB)"),
            "{engine:?}: {line}"
        );
        // Again, with an unsent dump of 16 KiB staged: it is kept as it was.
        let previous = vec![b'x'; 16 << 10];
        let staged = stage(&staging, &previous);
        let run = run_dump(&src, &staging, Compression::None);
        assert!(!run.succeeded(), "{}", run.text());
        let line = run.result.unwrap().log;
        assert!(line.contains("; staging volume full ("), "{line}");
        assert_eq!(std::fs::read(&staged).unwrap(), previous);
        assert_eq!(staging.dumps(), vec![staged], "a partial file was left");
    }
}

#[test]
fn the_database_killed_mid_dump_renames_nothing_and_uploads_nothing() {
    let mut db = Database::start(Engine::Mariadb);
    db.create_database("shop");
    // About 200 MB, so that the dump is still streaming when the server dies.
    db.query(
        "shop",
        "CREATE TABLE big (id INT PRIMARY KEY, body TEXT); \
         INSERT INTO big SELECT seq, REPEAT(MD5(seq), 32) FROM seq_1_to_200000;",
    );
    let src = db.source("shop");
    let staging = Staging::new();
    let (mut cmd, termlog) = dump_command(&src, &staging, Compression::None);
    let child = cmd.spawn().unwrap();
    process::wait_until("the dump to be streaming", Duration::from_secs(30), || {
        staging.dumps().iter().any(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".partial-")
                && std::fs::metadata(f).is_ok_and(|m| m.len() > 1024 * 1024)
        })
    });
    db.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the dump claimed success");
    let result = JobResult::parse(&std::fs::read_to_string(termlog).unwrap()).unwrap();
    assert_eq!(result.outcome, Outcome::Failed);
    assert!(
        result
            .log
            .contains("database dump failed: dump tool exited with status")
            && result.log.contains("Lost connection"),
        "{}",
        result.log
    );
    assert!(staging.dumps().is_empty(), "{:?}", staging.dumps());

    let minio = Minio::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(create_bucket(&minio));
    let up = run_upload(&minio, &staging, &UploadOpts::default());
    assert_eq!(up.result.unwrap().outcome, Outcome::Nothing);
    assert!(rt.block_on(bucket_keys(&minio)).is_empty());
}

/// Stages a small dump and returns its path.
fn stage(staging: &Staging, body: &[u8]) -> std::path::PathBuf {
    let dump = staging.staged_dump();
    std::fs::write(&dump, body).unwrap();
    dump
}

/// Upload options through `proxy`, in parts of 5 MiB (the least S3
/// allows), so that a few MiB make a multipart upload.
fn through(proxy: &FaultProxy) -> UploadOpts {
    UploadOpts {
        endpoint: Some(proxy.endpoint.clone()),
        extra_args: vec!["--part-size-mib=5".into()],
        ..Default::default()
    }
}

/// Runs an upload that must fail; checks the dump is kept and returns the line.
fn failed_upload(minio: &Minio, staging: &Staging, opts: &UploadOpts) -> String {
    let before = std::fs::read(staging.kept_dump()).unwrap();
    let run = run_upload(minio, staging, opts);
    let dump = staging.kept_dump();
    assert!(
        !run.succeeded(),
        "the upload claimed success: {}",
        run.text()
    );
    let result = run.result.clone().expect("a failed upload still reports");
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    assert!(result.log.contains(",upload failed: "), "{}", result.log);
    assert_eq!(
        std::fs::read(&dump).unwrap(),
        before,
        "the dump was not kept"
    );
    assert_eq!(staging.log_lines().last(), Some(&result.log));
    let everything = format!("{}{}", run.text(), result.log);
    assert!(
        !everything.contains(&minio.secret_key),
        "the secret key leaked"
    );
    result.log
}

#[tokio::test]
async fn a_missing_bucket_keeps_the_dump() {
    let minio = Minio::start();
    let staging = Staging::new();
    stage(&staging, b"select 1;\n");
    let line = failed_upload(&minio, &staging, &UploadOpts::default());
    assert!(line.contains("NoSuchBucket"), "{line}");
    // With createBucket the same run succeeds.
    let run = run_upload(
        &minio,
        &staging,
        &UploadOpts {
            extra_args: vec!["--create-bucket".into()],
            ..Default::default()
        },
    );
    assert!(run.succeeded(), "{}", run.text());
    assert_eq!(bucket_keys(&minio).await.len(), 1);
}

#[tokio::test]
async fn an_unknown_access_key_is_denied_and_keeps_the_dump() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    stage(&staging, b"select 1;\n");
    let run = {
        let (mut cmd, termlog) = upload_command(&minio, &staging, &UploadOpts::default());
        cmd.env("AWS_ACCESS_KEY_ID", "AKNOSUCHKEY0000000000");
        let out = cmd.output().unwrap();
        let result = JobResult::parse(&std::fs::read_to_string(termlog).unwrap()).unwrap();
        (out, result)
    };
    assert!(!run.0.status.success());
    assert_eq!(run.1.outcome, Outcome::Failed);
    assert!(
        run.1.log.contains("upload failed: InvalidAccessKeyId"),
        "{}",
        run.1.log
    );
    assert!(staging.kept_dump().exists());
    assert!(bucket_keys(&minio).await.is_empty());
}

#[tokio::test]
async fn an_unreachable_endpoint_keeps_the_dump() {
    let minio = Minio::start();
    let staging = Staging::new();
    stage(&staging, b"select 1;\n");
    let line = failed_upload(
        &minio,
        &staging,
        &UploadOpts {
            endpoint: Some(format!("http://127.0.0.1:{}", free_port())),
            ..Default::default()
        },
    );
    assert!(line.to_lowercase().contains("connect"), "{line}");
}

// The proxy serves from this runtime while the uploader runs as a blocking child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_rejects_checksums_still_gets_the_dump() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let proxy = FaultProxy::start(&minio.endpoint, faultproxy::reject_checksums()).await;

    // The store really refuses what the SDK sends by default…
    let default_client = minio.s3_client_at(&proxy.endpoint);
    let refused = default_client
        .put_object()
        .bucket(BUCKET)
        .key("probe")
        .body(b"x".to_vec().into())
        .send()
        .await;
    assert!(refused.is_err(), "the proxy let a default checksum through");
    assert_eq!(proxy.rejected(), 1);

    // …and ours, with a custom endpoint, sends none in one part, and in many
    // only the first request, which asks for CRC64/NVME: refused, the parts
    // carry Content-MD5 instead.
    for (size, refusals) in [(1024, 1), (20 * 1024 * 1024, 2)] {
        let staging = Staging::new();
        stage(&staging, &vec![b'x'; size]);
        let run = run_upload(&minio, &staging, &through(&proxy));
        assert!(run.succeeded(), "{size} bytes: {}", run.text());
        assert_eq!(proxy.rejected(), refusals, "{size} bytes: {}", run.text());
    }
    assert_eq!(bucket_keys(&minio).await.len(), 2);

    // With `profile: b2` nothing asks for a checksum the store refuses:
    // Content-MD5 and the MD5 ETag prove each upload.
    for size in [1024, 20 * 1024 * 1024] {
        let staging = Staging::new();
        let body = unrepeating(size, size as u64);
        stage(&staging, &body);
        let before = proxy.rejected();
        let mut opts = through(&proxy);
        opts.extra_args.push("--profile=b2".into());
        let run = run_upload(&minio, &staging, &opts);
        assert!(run.succeeded(), "{size} bytes: {}", run.text());
        assert_eq!(proxy.rejected(), before, "{size} bytes: {}", run.text());
        let result = run.result.unwrap();
        assert!(
            result.checksum.as_deref().unwrap().starts_with("etag:"),
            "{result:?}"
        );
        assert_eq!(get_object(&minio, &result.key.unwrap()).await, body);
    }
}

/// Cloudflare R2 refuses a part's CRC64/NVME (emulated): the upload fails
/// naming that and the profile to set, and keeps the dump; with
/// `profile: r2` the parts carry Content-MD5 and the MD5 ETag proves it.
// The proxy serves from this runtime while the uploader runs as a blocking child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refusing_part_checksums_names_the_r2_profile_which_proves_by_md5() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let proxy = FaultProxy::start(&minio.endpoint, faultproxy::refuse_part_checksums()).await;
    let staging = Staging::new();
    let body = unrepeating(12 * 1024 * 1024, 31);
    stage(&staging, &body);
    let line = failed_upload(&minio, &staging, &through(&proxy));
    assert!(
        line.contains("the store refuses a part's CRC64/NVME header, as Cloudflare R2 does: set spec.bucket.profile: r2"),
        "{line}"
    );
    assert!(bucket_keys(&minio).await.is_empty());

    let mut opts = through(&proxy);
    opts.extra_args.push("--profile=r2".into());
    let before = proxy.rejected();
    let run = run_upload(&minio, &staging, &opts);
    assert!(run.succeeded(), "{}", run.text());
    assert_eq!(proxy.rejected(), before, "{}", run.text());
    let result = run.result.unwrap();
    assert!(
        result.checksum.as_deref().unwrap().starts_with("etag:"),
        "{result:?}"
    );
    assert!(
        result.checksum.as_deref().unwrap().ends_with("-3"),
        "{result:?}"
    );
    assert_eq!(result.read_back, None, "{result:?}");
    assert_eq!(get_object(&minio, &result.key.unwrap()).await, body);
}

/// A store whose ETag is no MD5 (versitygw with data-integrity ETags, as
/// some stores have) proves nothing by it: where no CRC64/NVME is asked for
/// (`profile: b2`), the upload reads the object back, in one part and in
/// several, and says so.
#[tokio::test]
async fn a_store_whose_etag_is_no_md5_gets_the_dump_proven_by_reading_it_back() {
    let store = Minio::start_with_opts(MinioOpts {
        server: Server::Versitygw,
        env: vec![("VGW_DATA_INTEGRITY_ETAG".into(), "true".into())],
        ..Default::default()
    });
    create_bucket(&store).await;
    for size in [1024, 12 * 1024 * 1024] {
        let staging = Staging::new();
        let body = unrepeating(size, size as u64 + 7);
        stage(&staging, &body);
        let opts = UploadOpts {
            extra_args: vec!["--part-size-mib=5".into(), "--profile=b2".into()],
            ..Default::default()
        };
        let run = run_upload(&store, &staging, &opts);
        assert!(run.succeeded(), "{size} bytes: {}", run.text());
        let result = run.result.unwrap();
        let why = result.read_back.clone().unwrap_or_default();
        assert!(why.contains("is no MD5 of the object"), "{result:?}");
        assert!(
            result
                .more_log
                .iter()
                .any(|l| l.contains(",proven by reading it back: ")),
            "{result:?}"
        );
        assert_eq!(get_object(&store, &result.key.unwrap()).await, body);
    }
}

/// A store that ignores `If-None-Match` (emulated: a conditional write
/// replaces what was there) is found out by the probe object, said in a
/// warning, and every key is checked before it is written instead; with a
/// profile that trusts the store (`minio`) no probe is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_ignoring_if_none_match_is_found_out_and_each_key_checked_first() {
    for (on_put, what) in [(true, "PutObject"), (false, "CompleteMultipartUpload")] {
        let minio = Minio::start();
        create_bucket(&minio).await;
        let rule = faultproxy::ignore_if_none_match(minio.s3_client().await, on_put);
        let proxy = FaultProxy::start(&minio.endpoint, rule).await;
        let mut bodies = vec![];
        for round in 0..2 {
            let staging = Staging::new();
            let body = unrepeating(6 * 1024 * 1024 + round, 41 + round as u64);
            stage(&staging, &body);
            let run = run_upload(&minio, &staging, &through(&proxy));
            assert!(run.succeeded(), "{}", run.text());
            let said =
                format!("the store ignores If-None-Match on {what} (a conditional write replaced ");
            assert!(run.text().contains(&said), "{}", run.text());
            let checked = "the key is free (checked: the store's If-None-Match is not relied on)";
            assert!(run.text().contains(checked), "{}", run.text());
            bodies.push((run.result.unwrap().key.unwrap(), body));
        }
        for (key, body) in &bodies {
            assert_eq!(
                &get_object(&minio, key).await,
                body,
                "{key} was overwritten"
            );
        }
        let probe = dbbackup_operator::jobs::conditional::PROBE;
        let all = all_bucket_keys(&minio).await;
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all.iter().any(|k| k.ends_with(probe)), "{all:?}");
        assert_no_pending_uploads(&minio).await;
    }

    // A profile that trusts the store writes no probe and checks nothing.
    let other = Minio::start();
    create_bucket(&other).await;
    let staging = Staging::new();
    stage(&staging, b"select 1;\n");
    let opts = UploadOpts {
        extra_args: vec!["--profile=minio".into()],
        ..Default::default()
    };
    let run = run_upload(&other, &staging, &opts);
    assert!(run.succeeded(), "{}", run.text());
    assert_eq!(all_bucket_keys(&other).await.len(), 1);
}

/// OVH and Scality refuse `aws-chunked` bodies with a trailing checksum
/// (emulated): no upload of ours sends one, in one part or many, whatever
/// the profile of a store with an endpoint.
// The proxy serves from this runtime while the uploader runs as a blocking child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refusing_trailers_gets_every_checksum_as_a_header() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let proxy = FaultProxy::start(&minio.endpoint, faultproxy::refuse_trailers()).await;
    for profile in ["generic", "minio", "r2", "b2", "ceph", "seaweedfs"] {
        for size in [1024, 12 * 1024 * 1024] {
            let staging = Staging::new();
            let body = unrepeating(size, size as u64 + 1);
            stage(&staging, &body);
            let mut opts = through(&proxy);
            opts.extra_args.push(format!("--profile={profile}"));
            let run = run_upload(&minio, &staging, &opts);
            assert!(run.succeeded(), "{profile}, {size} bytes: {}", run.text());
            let key = run.result.unwrap().key.unwrap();
            assert_eq!(get_object(&minio, &key).await, body, "{profile}");
        }
    }
    assert_eq!(proxy.rejected(), 0);
}

/// A store that keeps a wrong CRC64/NVME for the right bytes (moto's server
/// reports a 4-byte value) does not stop backups: the upload reads the
/// object back, proves it by the bytes, says so in its log and result, and
/// only then deletes the dump; in two parts and in four.
// The proxy serves from this runtime while the uploader runs as a blocking child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_reporting_a_wrong_checksum_gets_the_dump_proven_by_reading_it_back() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let proxy = FaultProxy::start(&minio.endpoint, faultproxy::wrong_stored_checksum()).await;
    // Multipart: a single put is proven by its MD5 ETag, which the store computes.
    for (i, size) in [6 * 1024 * 1024, 20 * 1024 * 1024].into_iter().enumerate() {
        let staging = Staging::new();
        let body = unrepeating(size, 7 + i as u64);
        stage(&staging, &body);
        let run = run_upload(&minio, &staging, &through(&proxy));
        assert!(run.succeeded(), "{size} bytes: {}", run.text());
        let result = run.result.clone().unwrap();
        let key = result.key.clone().unwrap();
        let why = result
            .read_back
            .clone()
            .expect("the result says it read back");
        assert!(why.contains(faultproxy::MOTO_CRC), "{why}");
        assert!(
            result.more_log[0].ends_with(&format!(",proven by reading it back: {key}: {why}")),
            "{:?}",
            result.more_log
        );
        assert!(
            run.text().contains("reading the object back"),
            "{}",
            run.text()
        );
        assert_eq!(get_object(&minio, &key).await, body, "{size} bytes");
        assert!(staging.dumps().is_empty(), "{:?}", staging.dumps());
    }
    assert!(
        proxy.rejected() >= 2,
        "the proxy never reported a wrong checksum"
    );
}

/// Where the store's checksum and the bytes read back are both wrong, the
/// upload is not proven: it fails naming both, the dump is kept, and the
/// unproven object is deleted, so nothing ever counts it as a backup.
// The proxy serves from this runtime while the uploader runs as a blocking child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_checksum_and_bytes_are_both_wrong_fails_the_upload_and_keeps_the_dump() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let every = Arc::new(std::sync::Mutex::new(Some(String::new())));
    let proxy =
        FaultProxy::start(&minio.endpoint, faultproxy::wrong_checksum_and_bytes(every)).await;
    let staging = Staging::new();
    stage(&staging, &unrepeating(12 * 1024 * 1024, 3));
    let line = failed_upload(&minio, &staging, &through(&proxy));
    assert!(
        line.contains(&format!(
            "the store reports CRC64/NVME {} for it",
            faultproxy::MOTO_CRC
        )) && line.contains(", and the object read back has ")
            && line.ends_with("; the unproven object was deleted"),
        "{line}"
    );
    assert!(
        bucket_keys(&minio).await.is_empty(),
        "an unproven object stayed"
    );
}

/// A proof the store does not answer (HEAD fails) says nothing of the
/// object: the upload fails and keeps the dump, but deletes nothing and
/// counts nothing towards setting the dump aside.
// The proxy serves from this runtime while the uploader runs as a blocking child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_the_store_does_not_answer_deletes_nothing_and_counts_nothing() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let proxy = FaultProxy::start(&minio.endpoint, faultproxy::fail_heads()).await;
    let staging = Staging::new();
    stage(&staging, &unrepeating(6 * 1024 * 1024, 5));
    for _ in 0..3 {
        let line = failed_upload(&minio, &staging, &through(&proxy));
        assert!(line.contains("cannot confirm the upload of "), "{line}");
        assert!(
            !line.contains("unproven object") && !line.contains("stuck"),
            "{line}"
        );
    }
    // Each object stays, marked unproven beside it.
    let keys = bucket_keys(&minio).await;
    let objects: Vec<_> = keys.iter().filter(|k| !k.ends_with(".unproven")).collect();
    assert_eq!(objects.len(), 3, "an object was deleted: {keys:?}");
    for key in objects {
        assert!(keys.contains(&format!("{key}.unproven")), "{keys:?}");
    }
    let counted = staging.dumps().into_iter().any(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".unproven-")
    });
    assert!(!counted, "{:?}", staging.dumps());
}

per_store!(
    /// An unproven object is no backup: with `keepLast: 2`, two objects the
    /// store never proved (marked unproven), newer than the last proven dump,
    /// neither count nor push it out; retention leaves them alone.
    keep_last_counts_no_unproven_object_and_keeps_the_proven_dump,
    keep_last_beside_unproven
);
async fn keep_last_beside_unproven(store: Server) {
    let minio = Minio::start_server(store);
    create_bucket(&minio).await;
    let keep_two = |mut opts: UploadOpts| {
        opts.extra_args.push("--keep-last=2".into());
        opts
    };
    let staging = Staging::new();
    let first = unrepeating(6 * 1024 * 1024, 21);
    stage(&staging, &first);
    let run = run_upload(&minio, &staging, &keep_two(UploadOpts::default()));
    assert!(run.succeeded(), "{}", run.text());
    let proven = run.result.unwrap().key.unwrap();

    let proxy = FaultProxy::start(&minio.endpoint, faultproxy::fail_heads()).await;
    let second = unrepeating(6 * 1024 * 1024, 22);
    stage(&staging, &second);
    for _ in 0..2 {
        let line = failed_upload(&minio, &staging, &keep_two(through(&proxy)));
        assert!(
            line.contains(".unproven, and counts as no backup"),
            "{line}"
        );
    }
    let unproven: Vec<String> = bucket_keys(&minio)
        .await
        .into_iter()
        .filter(|k| *k != proven && !k.ends_with(".unproven"))
        .collect();
    assert_eq!(unproven.len(), 2, "{unproven:?}");

    // The store answers again: the same dump is sent and proven, and
    // retention keeps the two proven dumps.
    let run = run_upload(&minio, &staging, &keep_two(UploadOpts::default()));
    assert!(run.succeeded(), "{}", run.text());
    let newest = run.result.unwrap().key.unwrap();
    let left = bucket_keys(&minio).await;
    assert!(
        left.contains(&proven),
        "the proven dump was pruned: {left:?}"
    );
    assert_eq!(get_object(&minio, &proven).await, first);
    assert_eq!(get_object(&minio, &newest).await, second);
    for key in &unproven {
        assert!(
            left.contains(key),
            "retention pruned an unproven object: {left:?}"
        );
    }
    assert_eq!(left.len(), 2 + 2 * unproven.len(), "{left:?}");
}

/// A dump the store never proves (its bytes read back wrong) does not stop
/// backups: after 3 unproven uploads in a row it is moved aside and kept,
/// the newer dump is sent while it stays unproven (the result says which
/// dump is stuck), and once the store proves it, it is sent too. Every
/// object left is byte-identical to its dump; nothing unproven stays.
// The proxy serves from this runtime while the uploader runs as a blocking child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_never_proven_is_set_aside_and_newer_dumps_still_go() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let yesterday = chrono::Utc::now() - chrono::Duration::days(1);
    let old_folder = format!("{}/", yesterday.format("%Y-%m-%d"));
    let flip = Arc::new(std::sync::Mutex::new(Some(old_folder.clone())));
    let rule = faultproxy::wrong_checksum_and_bytes(flip.clone());
    let proxy = FaultProxy::start(&minio.endpoint, rule).await;
    let opts = through(&proxy);
    let staging = Staging::new();
    // Dump A, finished yesterday: its objects go to yesterday's folder,
    // whose reads the store corrupts.
    let a = unrepeating(12 * 1024 * 1024, 11);
    let staged = stage(&staging, &a);
    let finished = std::time::SystemTime::from(yesterday);
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(finished)
        .unwrap();
    for attempt in 1..=3 {
        let run = run_upload(&minio, &staging, &opts);
        assert!(!run.succeeded(), "attempt {attempt}: {}", run.text());
        let line = run.result.clone().unwrap().log;
        assert!(line.contains(", and the object read back has "), "{line}");
        assert_eq!(
            line.contains("the dump is stuck after 3 unproven uploads in a row"),
            attempt == 3,
            "attempt {attempt}: {line}"
        );
    }
    let aside: Vec<_> = staging
        .dumps()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".stuck-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", staging.dumps());
    assert_eq!(std::fs::read(&aside[0]).unwrap(), a);
    assert!(bucket_keys(&minio).await.is_empty());

    // Dump B, today: sent, while A is tried again and stays aside.
    let b = unrepeating(6 * 1024 * 1024, 12);
    stage(&staging, &b);
    let run = run_upload(&minio, &staging, &opts);
    assert!(run.succeeded(), "{}", run.text());
    let result = run.result.clone().unwrap();
    let today_b = result.key.clone().unwrap();
    assert!(!today_b.starts_with(&old_folder), "{today_b}");
    assert!(
        result
            .log
            .contains(",a stuck dump is still unproven (finished "),
        "{result:?}"
    );
    let stuck = result
        .stuck
        .clone()
        .expect("the result names the stuck dump");
    assert!(stuck.starts_with("1 unproven dump(s) kept"), "{stuck}");
    assert_eq!(bucket_keys(&minio).await, std::slice::from_ref(&today_b));
    assert_eq!(get_object(&minio, &today_b).await, b);
    assert!(aside[0].exists());

    // The store proves A now: it goes with the next dump, C.
    *flip.lock().unwrap() = None;
    let c = unrepeating(6 * 1024 * 1024, 13);
    stage(&staging, &c);
    let run = run_upload(&minio, &staging, &opts);
    assert!(run.succeeded(), "{}", run.text());
    let result = run.result.clone().unwrap();
    assert_eq!(result.stuck, None, "{result:?}");
    let a_key = format!("{old_folder}datadump1.sql");
    assert_eq!(get_object(&minio, &a_key).await, a);
    assert_eq!(get_object(&minio, result.key.as_ref().unwrap()).await, c);
    assert_eq!(bucket_keys(&minio).await.len(), 3);
    assert!(staging.dumps().is_empty(), "{:?}", staging.dumps());
}

// The proxy serves from this runtime while the uploader runs as a blocking child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_in_the_middle_of_a_multipart_upload_keeps_the_dump_and_aborts() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let proxy = FaultProxy::start(&minio.endpoint, faultproxy::fail_part(3)).await;
    let staging = Staging::new();
    let body: Vec<u8> = (0..40 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let dump = stage(&staging, &body);
    let line = failed_upload(
        &minio,
        &staging,
        &UploadOpts {
            endpoint: Some(proxy.endpoint.clone()),
            extra_args: vec!["--part-size-mib=5".into(), "--concurrency=1".into()],
            ..Default::default()
        },
    );
    assert!(line.contains("InternalError"), "{line}");
    assert!(proxy.rejected() >= 1);
    assert_no_pending_uploads(&minio).await;
    assert!(bucket_keys(&minio).await.is_empty(), "no object on failure");

    // The store recovers: the next run uploads the kept dump, once.
    let run = run_upload(&minio, &staging, &UploadOpts::default());
    assert!(run.succeeded(), "{}", run.text());
    let keys = bucket_keys(&minio).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(get_object(&minio, &keys[0]).await, body);
    assert!(!dump.exists());
}

/// Even at trace level, the uploader's own logs and the SDK's show no
/// credential: they travel Secret → environment → the SDK's credential
/// provider, whose Debug output is redacted.
#[tokio::test]
async fn the_uploader_logs_no_credential_even_at_trace_level() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    stage(&staging, &vec![b'x'; 12 * 1024 * 1024]);
    let (mut cmd, _termlog) = upload_command(&minio, &staging, &UploadOpts::default());
    let out = cmd.env("RUST_LOG", "trace").output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // The scan reads a real trace: requests, signing and responses are in it.
    assert!(
        text.contains("UploadPart") && text.contains("authorization"),
        "{}",
        &text[..text.len().min(2000)]
    );
    assert!(
        !text.contains(&minio.secret_key),
        "the secret key is in the trace"
    );
}

/// `fetch` refuses a zstd object cut inside a frame (which zstd's own stream
/// reader takes for whole), and a part-size metadata value S3 cannot have
/// (0 once looped for ever), each with its reason.
#[tokio::test]
async fn fetch_refuses_a_truncated_zstd_object_and_an_impossible_part_size() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let s3 = minio.s3_client().await;
    let sql = b"INSERT INTO t VALUES (1);\n".repeat(10_000);
    let zst = zstd::encode_all(&sql[..], 3).unwrap();
    let put = |key: &'static str, body: Vec<u8>, part_size: Option<&'static str>| {
        let mut req = s3.put_object().bucket(BUCKET).key(key).body(body.into());
        if let Some(p) = part_size {
            req = req.metadata("dbbackup-part-size", p);
        }
        req.send()
    };
    put(
        "2026-11-25/datadump1.sql.zst",
        zst[..zst.len() - 7].to_vec(),
        None,
    )
    .await
    .unwrap();
    put("2026-11-25/datadump2.sql.zst", zst.clone(), None)
        .await
        .unwrap();
    for p in ["0", "1"] {
        put("2026-11-25/datadump3.sql", sql.clone(), Some(p))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ok, r) = run_fetch(&minio, "2026-11-25/datadump3.sql", dir.path());
        assert!(!ok);
        assert_eq!(r.reason.as_deref(), Some("CorruptDump"), "{r:?}");
        assert!(r.log.contains("not between 5 MiB and 5 GiB"), "{}", r.log);
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, r) = run_fetch(&minio, "2026-11-25/datadump1.sql.zst", dir.path());
    assert!(!ok, "{r:?}");
    assert!(r.log.contains("truncated"), "{}", r.log);
    assert!(
        !dir.path().join("restore.sql").exists(),
        "no file is left behind"
    );
    let (ok, r) = run_fetch(&minio, "2026-11-25/datadump2.sql.zst", dir.path());
    assert!(ok, "{r:?}");
    assert_eq!(std::fs::read(dir.path().join("restore.sql")).unwrap(), sql);
}

/// The job reads the bucket name the way the operator's check does: a
/// trailing newline (a Secret made with `echo`) is not part of it.
#[tokio::test]
async fn a_bucket_name_with_a_trailing_newline_is_the_bucket() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    stage(&staging, b"select 1;\n");
    let (mut cmd, termlog) = upload_command(&minio, &staging, &UploadOpts::default());
    let out = cmd
        .env("DBBACKUP_BUCKET", format!("{BUCKET}\n"))
        .output()
        .unwrap();
    let result = JobResult::parse(&std::fs::read_to_string(termlog).unwrap()).unwrap();
    assert!(out.status.success(), "{result:?}");
    assert_eq!(bucket_keys(&minio).await.len(), 1);
}

/// A CA bundle that is not PEM fails the upload with a message that says so,
/// not with an unknown issuer, and keeps the dump.
#[tokio::test]
async fn a_ca_bundle_that_is_not_pem_fails_the_upload_saying_so() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    stage(&staging, b"select 1;\n");
    let ca = staging.path().with_extension("ca.crt");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let line = failed_upload(
        &minio,
        &staging,
        &UploadOpts {
            extra_args: vec![format!("--ca-bundle={}", ca.display())],
            ..Default::default()
        },
    );
    assert!(
        line.contains("holds no well-formed PEM certificate"),
        "{line}"
    );
}

/// `len` bytes that repeat nowhere at a range's distance, so that a range
/// from the wrong place or object would not pass for the right one.
fn unrepeating(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A pause after the first byte of a download: `read_first` says it was
/// read, and the rest is read once `go` is sent.
struct Pause {
    read_first: std::sync::mpsc::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
}

/// Starts a download of `key` through `client` and reads it on a blocking
/// thread, with `pause` after its first byte; the SQL read, or the failure
/// that stopped it.
fn read_object(
    client: aws_sdk_s3::Client,
    key: &'static str,
    pause: Option<Pause>,
) -> tokio::task::JoinHandle<Result<(Vec<u8>, String), String>> {
    use dbbackup_operator::jobs::{download, store::Sse, stream::Sql};
    use std::io::Read as _;
    tokio::spawn(async move {
        let raw = download::start(&client, &Sse::None, BUCKET, key)
            .await
            .map_err(|f| f.message)?;
        tokio::task::spawn_blocking(move || {
            let mut sql = Sql::open(raw, key, None).map_err(|f| f.message)?;
            let mut out = vec![];
            if let Some(pause) = pause {
                out.resize(1, 0);
                sql.reader.read_exact(&mut out).unwrap();
                pause.read_first.send(()).unwrap();
                pause.go.recv().unwrap();
            }
            sql.reader
                .read_to_end(&mut out)
                .map_err(|e| sql.failure(&e).message)?;
            let proven = sql.proven().map_err(|f| f.message)?;
            Ok((out, proven.downloaded(key)))
        })
        .await
        .unwrap()
    })
}

/// A download is many ranged GETs in flight at once, in order. An object of
/// many ranges comes back whole and proven by its CRC64/NVME; a range whose
/// connection drops halfway is fetched again; and an object replaced while
/// the download runs fails it ("changed") instead of splicing two versions.
#[tokio::test]
async fn a_ranged_download_comes_whole_retries_a_range_and_never_splices_two_objects() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let s3 = minio.s3_client().await;
    let put = |key: &'static str, body: Vec<u8>| {
        s3.put_object()
            .bucket(BUCKET)
            .key(key)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme)
            .body(body.into())
            .send()
    };
    let key = "2026-11-25/datadump1.sql";
    let first = unrepeating(100 << 20, 1);
    put(key, first.clone()).await.unwrap();

    // The first response for the range at 16 MiB is cut halfway; its retry
    // asks for the rest of that range only, and passes.
    let asked = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let seen = asked.clone();
    let rule: faultproxy::Rule = Arc::new(move |req| {
        let (start, end) = req
            .headers
            .get("range")
            .and_then(|r| r.to_str().ok()?.strip_prefix("bytes=")?.split_once('-'))
            .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))?;
        let mut seen = seen.lock().unwrap();
        seen.push((start, end));
        (start == 16 << 20 && seen.iter().filter(|r| r.0 == 16 << 20).count() == 1)
            .then_some((http::StatusCode::OK, faultproxy::CUT_BODY))
    });
    let proxy = FaultProxy::start(&minio.endpoint, rule).await;
    let whole = read_object(minio.s3_client_at(&proxy.endpoint), key, None);
    let (got, line) = whole.await.unwrap().unwrap();
    assert!(got == first, "the object came back changed");
    assert!(line.contains("CRC64/NVME checksum verified"), "{line}");
    let asked = asked.lock().unwrap().clone();
    let cut_end = asked.iter().find(|r| r.0 == 16 << 20).unwrap().1;
    let tries: Vec<_> = asked.iter().filter(|r| r.1 == cut_end).collect();
    assert_eq!(tries.len(), 2, "the range was not retried once: {asked:?}");
    assert!(
        tries[1].0 > 16 << 20,
        "the retry asked again for bytes it had: {asked:?}"
    );

    // Replaced after the first byte was read: later ranges must not come
    // from the new object.
    let (go, wait) = std::sync::mpsc::channel();
    let (read_first, first_read) = std::sync::mpsc::channel();
    let pause = Pause {
        read_first,
        go: wait,
    };
    let reading = read_object(s3.clone(), key, Some(pause));
    tokio::task::spawn_blocking(move || first_read.recv().unwrap())
        .await
        .unwrap();
    put(key, unrepeating(100 << 20, 2)).await.unwrap();
    go.send(()).unwrap();
    let e = reading.await.unwrap().unwrap_err();
    assert!(e.contains("changed or went while it downloaded"), "{e}");
}

/// A store (or a proxy before it) that ignores Range would send the whole
/// object for every range: the download refuses at the first answer, names
/// why, and holds none of it.
#[tokio::test]
async fn a_store_that_ignores_range_fails_the_download_and_says_so() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let key = "2026-11-25/datadump1.sql";
    put_object(&minio, key, unrepeating(20 << 20, 3)).await;
    let rule: faultproxy::Rule = Arc::new(|req| {
        req.headers
            .contains_key("range")
            .then_some((http::StatusCode::OK, faultproxy::IGNORE_RANGE))
    });
    let proxy = FaultProxy::start(&minio.endpoint, rule).await;
    let e = read_object(minio.s3_client_at(&proxy.endpoint), key, None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.contains("it does not honour Range"), "{e}");
    assert!(proxy.rejected() >= 1);
}
