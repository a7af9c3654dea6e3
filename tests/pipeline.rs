//! The dump and upload steps on real MariaDB, PostgreSQL and MinIO: the
//! original pipeline's four cases, the round trip, key naming, races and faults.

mod support;

use dbbackup_operator::api::{Compression, Engine};
use dbbackup_operator::jobresult::Outcome;
use std::time::Duration;
use support::minio::*;
use support::steps::*;
use support::stores::Server;
use support::*;

fn dump_ok(src: &Source, staging: &Staging, compression: Compression) {
    let run = run_dump(src, staging, compression);
    assert!(
        run.succeeded(),
        "dump failed: {}{:?}",
        run.text(),
        run.result
    );
    let result = run.result.expect("dump wrote its termination log");
    assert_eq!(result.outcome, Outcome::Succeeded);
    assert!(
        result.log.ends_with(",database dump completed"),
        "{}",
        result.log
    );
}

fn upload_ok(minio: &Minio, staging: &Staging, opts: &UploadOpts) -> String {
    let run = run_upload(minio, staging, opts);
    assert!(run.succeeded(), "upload failed: {}", run.text());
    let result = run.result.expect("upload wrote its termination log");
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert!(result.log.ends_with(",file successfully uploaded"));
    result.key.unwrap()
}

// 1. Dump done, folder empty: the dump is stored.
fn dump_into_empty_folder(engine: Engine) {
    let server = Database::with_shop(engine);
    let staging = Staging::new();
    dump_ok(&server.source("shop"), &staging, Compression::None);
    let files = staging.dumps();
    assert_eq!(
        files,
        [staging.path().join("dumps/datadump.sql")],
        "only the dump, no .partial left"
    );
    let sql = std::fs::read_to_string(&files[0]).unwrap();
    assert!(sql.contains("CREATE TABLE") && sql.contains("order_items"));
    let lines = staging.log_lines();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].ends_with(",database dump completed"));
    staging.assert_log_format();
}

#[test]
fn contract_1_dump_into_empty_folder_mariadb() {
    dump_into_empty_folder(Engine::Mariadb);
}

#[test]
fn contract_1_dump_into_empty_folder_postgres() {
    dump_into_empty_folder(Engine::Postgres);
}

// 2. Dump done, folder holds one: it is replaced, and that is said: the
// replaced dump is never uploaded, so its run must not read as a plain success.
fn second_dump_replaces_the_first(engine: Engine) {
    let server = Database::with_shop(engine);
    let staging = Staging::new();
    let first = run_dump(&server.source("shop"), &staging, Compression::None);
    let first = first.result.unwrap();
    server.query(
        "shop",
        "INSERT INTO products VALUES (9999, 'Added later', 1.00)",
    );
    let second = run_dump(&server.source("shop"), &staging, Compression::None);
    assert!(second.succeeded(), "{}", second.text());
    let second = second.result.unwrap();
    let files = staging.dumps();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("Added later")
    );
    assert!(first.dumped.is_some());
    assert_eq!(second.replaced, first.dumped, "{second:?}");
    let lines = staging.log_lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[1].ends_with(",database dump completed"), "{lines:?}");
    // When the first was finished, to the second, in the original format.
    let finished = chrono::DateTime::parse_from_rfc3339(first.dumped.as_deref().unwrap()).unwrap();
    assert!(
        lines[2].ends_with(&format!(
            ",replaced an unsent dump from {}",
            finished.format("%Y-%m-%d %H:%M:%S")
        )),
        "{lines:?}"
    );
    assert_eq!(second.more_log, lines[2..]);
    staging.assert_log_format();
}

#[test]
fn contract_2_second_dump_replaces_the_first_mariadb() {
    second_dump_replaces_the_first(Engine::Mariadb);
}

#[test]
fn contract_2_second_dump_replaces_the_first_postgres() {
    second_dump_replaces_the_first(Engine::Postgres);
}

// 3. The uploader finds a dump: uploads it, then deletes it.
async fn uploader_uploads_then_deletes(engine: Engine) {
    let server = Database::with_shop(engine);
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    dump_ok(&server.source("shop"), &staging, Compression::None);
    let local = std::fs::read(staging.path().join("dumps/datadump.sql")).unwrap();

    // The original layout: an empty prefix.
    let key = upload_ok(&minio, &staging, &UploadOpts::default());
    assert_eq!(key, format!("{}/datadump1.sql", today()));
    assert_eq!(bucket_keys(&minio).await, std::slice::from_ref(&key));
    assert_eq!(get_object(&minio, &key).await, local);
    assert!(
        staging.dumps().is_empty(),
        "dump not deleted: {:?}",
        staging.dumps()
    );
    let lines = staging.log_lines();
    assert!(
        lines[1].ends_with(",file successfully uploaded"),
        "{lines:?}"
    );
    staging.assert_log_format();
}

#[tokio::test]
async fn contract_3_uploader_uploads_then_deletes_mariadb() {
    uploader_uploads_then_deletes(Engine::Mariadb).await;
}

#[tokio::test]
async fn contract_3_uploader_uploads_then_deletes_postgres() {
    uploader_uploads_then_deletes(Engine::Postgres).await;
}

// 4. The uploader finds none: it logs and does nothing.
async fn nothing_to_upload(engine: Engine) {
    let server = Database::with_shop(engine);
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    dump_ok(&server.source("shop"), &staging, Compression::None);
    upload_ok(&minio, &staging, &UploadOpts::default());
    let before = bucket_keys(&minio).await;

    let run = run_upload(&minio, &staging, &UploadOpts::default());
    assert!(run.succeeded(), "{}", run.text());
    let result = run.result.unwrap();
    assert_eq!(result.outcome, Outcome::Nothing);
    assert!(result.log.ends_with(",there is no file to upload"));
    assert_eq!(bucket_keys(&minio).await, before, "nothing written");
    assert!(
        staging
            .log_lines()
            .last()
            .unwrap()
            .ends_with(",there is no file to upload")
    );
    staging.assert_log_format();
}

#[tokio::test]
async fn contract_4_no_dump_logs_and_does_nothing_mariadb() {
    nothing_to_upload(Engine::Mariadb).await;
}

#[tokio::test]
async fn contract_4_no_dump_logs_and_does_nothing_postgres() {
    nothing_to_upload(Engine::Postgres).await;
}

async fn round_trip(engine: Engine, compression: Compression, store: Server) {
    let server = Database::with_shop(engine);
    let minio = Minio::start_server(store);
    create_bucket(&minio).await;
    let staging = Staging::new();
    dump_ok(&server.source("shop"), &staging, compression);
    let opts = UploadOpts {
        prefix: "team/shop/".into(),
        ..Default::default()
    };
    let dumped: Vec<Vec<u8>> = std::fs::read_dir(staging.path().join("dumps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("datadump")
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(dumped.len(), 1);
    let key = upload_ok(&minio, &staging, &opts);
    let ext = match compression {
        Compression::None => "",
        Compression::Gzip => ".gz",
        Compression::Zstd => ".zst",
    };
    assert_eq!(key, format!("team/shop/{}/datadump1.sql{ext}", today()));

    let object = get_object(&minio, &key).await;
    assert!(object == dumped[0], "{key} is not the dump");
    let sql = match compression {
        Compression::None => object,
        Compression::Gzip | Compression::Zstd => {
            let tool = if compression == Compression::Gzip {
                "gzip"
            } else {
                "zstd"
            };
            let mut child = std::process::Command::new(tool)
                .args(["-d", "-c"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                stdin.write_all(&object).unwrap();
            });
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap();
            assert!(out.status.success(), "{tool} -d failed");
            out.stdout
        }
    };
    // The fetch step gives back the same SQL, its checksum verified.
    let dir = tempfile::tempdir().unwrap();
    let (ok, fetched) = run_fetch(&minio, &key, dir.path());
    assert!(ok, "{fetched:?}");
    assert!(
        std::fs::read(dir.path().join("restore.sql")).unwrap() == sql,
        "the fetched SQL differs"
    );
    server.restore("restored", &sql);
    let source = server.fingerprint("shop");
    assert_eq!(server.fingerprint("restored"), source);
    assert!(
        source
            .iter()
            .any(|(t, v)| t == "order_items" && v.starts_with("5000/"))
    );
}

#[tokio::test]
async fn round_trip_restores_identical_data_mariadb() {
    round_trip(Engine::Mariadb, Compression::None, Server::Minio).await;
}

#[tokio::test]
async fn round_trip_restores_identical_data_postgres() {
    round_trip(Engine::Postgres, Compression::None, Server::Minio).await;
}

#[tokio::test]
async fn round_trip_with_gzip_mariadb() {
    round_trip(Engine::Mariadb, Compression::Gzip, Server::Minio).await;
}

per_store!(round_trip_with_zstd_postgres, round_trip_zstd_postgres);
async fn round_trip_zstd_postgres(store: Server) {
    round_trip(Engine::Postgres, Compression::Zstd, store).await;
}

per_store!(
    three_dumps_on_one_date_get_three_indices_and_nothing_is_overwritten,
    three_dumps
);
async fn three_dumps(store: Server) {
    let server = Database::with_shop(Engine::Mariadb);
    let minio = Minio::start_server(store);
    create_bucket(&minio).await;
    let staging = Staging::new();
    let mut contents = vec![];
    for i in 1..=3 {
        server.query(
            "shop",
            &format!(
                "INSERT INTO products VALUES ({}, 'Run {i}', 1.00)",
                10_000 + i
            ),
        );
        dump_ok(&server.source("shop"), &staging, Compression::None);
        contents.push(std::fs::read(staging.path().join("dumps/datadump.sql")).unwrap());
        upload_ok(&minio, &staging, &UploadOpts::default());
    }
    let day = today();
    let keys = bucket_keys(&minio).await;
    assert_eq!(keys, [1, 2, 3].map(|i| format!("{day}/datadump{i}.sql")));
    for (i, content) in contents.iter().enumerate() {
        assert_eq!(
            &get_object(&minio, &keys[i]).await,
            content,
            "{} was overwritten",
            keys[i]
        );
    }
}

#[tokio::test]
async fn next_index_counts_past_the_first_thousand_keys() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let s3 = minio.s3_client().await;
    let day = today();
    // 1,005 existing dumps: more than one list page.
    let puts = (1..=1005).map(|i| {
        let s3 = s3.clone();
        let key = format!("{day}/datadump{i}.sql");
        async move {
            s3.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(b"x".to_vec().into())
                .send()
                .await
                .unwrap();
        }
    });
    futures::stream::iter(puts)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let staging = Staging::new();
    std::fs::write(staging.staged_dump(), "select 1;\n").unwrap();
    let key = upload_ok(&minio, &staging, &UploadOpts::default());
    assert_eq!(key, format!("{day}/datadump1006.sql"));
}

use futures::StreamExt;

per_store!(
    two_concurrent_uploaders_write_two_distinct_objects,
    two_concurrent_uploaders
);
async fn two_concurrent_uploaders(store: Server) {
    let minio = Minio::start_server(store);
    create_bucket(&minio).await;
    for round in 0..3 {
        let a = Staging::new();
        let b = Staging::new();
        for (s, body) in [(&a, "-- dump A\n"), (&b, "-- dump B\n")] {
            std::fs::create_dir_all(s.path().join("dumps")).unwrap();
            std::fs::write(s.path().join("dumps/datadump.sql"), body.repeat(1000)).unwrap();
        }
        let (mut ca, ta) = upload_command(&minio, &a, &UploadOpts::default());
        let (mut cb, tb) = upload_command(&minio, &b, &UploadOpts::default());
        let piped = std::process::Stdio::piped;
        let pa = ca.stdout(piped()).stderr(piped()).spawn().unwrap();
        let pb = cb.stdout(piped()).stderr(piped()).spawn().unwrap();
        let (oa, ob) = (
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        );
        assert!(
            oa.status.success(),
            "{}",
            String::from_utf8_lossy(&oa.stderr)
        );
        assert!(
            ob.status.success(),
            "{}",
            String::from_utf8_lossy(&ob.stderr)
        );
        // The store's own conditional writes kept them apart, not the
        // fallback's HEAD before each write.
        for out in [&oa, &ob] {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("uploading"), "no output read: {text}");
            assert!(!text.contains("store refuses If-None-Match"), "{text}");
            // The probe found it honoured, on PutObject and on completion.
            assert!(!text.contains("If-None-Match on"), "{text}");
        }
        let _ = (std::fs::remove_file(ta), std::fs::remove_file(tb));
        let keys = bucket_keys(&minio).await;
        assert_eq!(keys.len(), 2 * (round + 1), "{keys:?}");
    }
    // Every object holds exactly one of the two dumps, and both dumps are there each round.
    let keys = bucket_keys(&minio).await;
    let mut a_count = 0;
    for key in &keys {
        let body = String::from_utf8(get_object(&minio, key).await).unwrap();
        if body.starts_with("-- dump A") {
            a_count += 1;
        } else {
            assert!(body.starts_with("-- dump B"));
        }
    }
    assert_eq!(a_count, 3);
}

#[tokio::test]
async fn minio_stopped_mid_upload_keeps_the_dump_and_the_next_run_uploads_it_once() {
    let mut minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    let dump = staging.staged_dump();
    write_big_file(&dump, 600 * 1024 * 1024);
    let (mut cmd, _termlog) = upload_command(
        &minio,
        &staging,
        &UploadOpts {
            // Slow enough to be caught in the middle.
            extra_args: vec!["--concurrency=1".into(), "--part-size-mib=5".into()],
            ..Default::default()
        },
    );
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    support::process::wait_for(
        "a multipart upload in progress",
        Duration::from_secs(30),
        || async { open_upload_parts(&minio).await },
    )
    .await;
    minio.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the upload claimed success with MinIO down"
    );
    assert!(
        staging.kept_dump().exists(),
        "the dump was deleted although the upload failed"
    );
    let last = staging.log_lines().pop().unwrap();
    assert!(last.contains(",upload failed: "), "{last}");

    minio.restart();
    let key = upload_ok(&minio, &staging, &UploadOpts::default());
    assert_eq!(
        bucket_keys(&minio).await,
        std::slice::from_ref(&key),
        "uploaded exactly once"
    );
    let head = head_object(&minio, &key).await;
    assert_eq!(head.content_length(), Some(600 * 1024 * 1024));
    assert!(!dump.exists() && !staging.kept_dump().exists());
    // The interrupted run's multipart upload was aborted by the next run.
    assert_no_pending_uploads(&minio).await;
    staging.assert_log_format();
}

/// The release build of the operator, next to the debug one the tests use.
fn release_binary() -> std::path::PathBuf {
    let debug = std::path::Path::new(env!("CARGO_BIN_EXE_dbbackup-operator"));
    let release = debug
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("release/dbbackup-operator");
    assert!(
        release.exists(),
        "{} is missing: run `cargo build --release` (tests/run.sh does)",
        release.display()
    );
    release
}

#[tokio::test]
async fn wrong_s3_credentials_keep_the_dump_and_leak_nothing() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = Staging::new();
    std::fs::write(staging.staged_dump(), "select 1;\n").unwrap();
    let wrong = format!("s3WRONGSECRET{}", support::minio::random_token(20));
    let run = run_upload(
        &minio,
        &staging,
        &UploadOpts {
            secret_key: Some(wrong.clone()),
            ..Default::default()
        },
    );
    assert!(!run.succeeded());
    let result = run.result.clone().unwrap();
    assert_eq!(result.outcome, Outcome::Failed);
    assert!(
        result.log.contains("SignatureDoesNotMatch"),
        "{}",
        result.log
    );
    assert!(staging.kept_dump().exists());
    assert!(bucket_keys(&minio).await.is_empty());
    let everything = format!(
        "{}{}{:?}",
        run.text(),
        staging.log_lines().join("\n"),
        result
    );
    for secret in [&wrong, &minio.secret_key] {
        assert!(
            !everything.contains(secret.as_str()),
            "a secret leaked: {everything}"
        );
    }
    staging.assert_log_format();
}

#[tokio::test]
async fn wrong_db_password_leaves_no_file_and_uploads_nothing() {
    for engine in [Engine::Mariadb, Engine::Postgres] {
        let server = Database::with_shop(engine);
        let minio = Minio::start();
        create_bucket(&minio).await;
        let staging = Staging::new();
        let mut src = server.source("shop");
        let real = src.password.clone();
        src.password = "not-the-password".into();
        let run = run_dump(&src, &staging, Compression::Gzip);
        assert!(
            !run.succeeded(),
            "{engine:?} dump succeeded with a wrong password"
        );
        let result = run.result.clone().expect("a failed dump still reports");
        assert_eq!(result.outcome, Outcome::Failed);
        assert!(
            result
                .log
                .contains("database dump failed: dump tool exited with status"),
            "{}",
            result.log
        );
        assert!(
            staging.dumps().is_empty(),
            "{engine:?} left {:?}",
            staging.dumps()
        );
        assert!(!run.text().contains(&real));
        let up = run_upload(&minio, &staging, &UploadOpts::default());
        assert_eq!(up.result.unwrap().outcome, Outcome::Nothing);
        assert!(bucket_keys(&minio).await.is_empty());
        staging.assert_log_format();
    }
}

/// Parts are read from the file as they are sent, never held whole: the
/// uploader's peak memory stays flat whatever the part size and the number
/// of parts in flight (with 64 MiB parts, 8 in flight, holding them would
/// take over 500 MiB).
#[tokio::test]
async fn a_one_gib_upload_keeps_flat_memory_whatever_the_part_size_and_concurrency() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let size = 1024 * 1024 * 1024;
    let source = Staging::new();
    write_big_file(&source.staged_dump(), size);
    for tuning in [vec![], vec!["--part-size-mib=64", "--concurrency=8"]] {
        let staging = Staging::new();
        std::fs::copy(source.staged_dump(), staging.staged_dump()).unwrap();
        let opts = UploadOpts {
            extra_args: tuning.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let (cmd, termlog) = upload_command(&minio, &staging, &opts);
        // Memory is a property of the shipped (release) binary; tests/run.sh builds it.
        let support::measure::Measured {
            output: out,
            max_rss_kib: kib,
            ..
        } = support::measure::run_measured(&release_binary(), &cmd);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(termlog);
        println!(
            "uploader peak RSS for a 1 GiB dump with {tuning:?}: {:.1} MiB",
            kib as f64 / 1024.0
        );
        assert!(
            kib <= 48 * 1024,
            "{tuning:?}: peak RSS {kib} KiB exceeds 48 MiB"
        );
    }
    let s3 = minio.s3_client().await;
    for key in bucket_keys(&minio).await {
        let head = s3
            .head_object()
            .bucket(BUCKET)
            .key(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(head.content_length(), Some(size as i64));
    }
    assert_eq!(bucket_keys(&minio).await.len(), 2);
}

per_store!(
    /// MinIO, like S3, keeps a full-object CRC64/NVME of a multipart upload when
    /// asked; the uploader sends each part's and the whole object's, and the
    /// store's figure is the one a download can check.
    a_multipart_upload_carries_the_full_object_crc64nvme,
    multipart_crc64nvme
);
async fn multipart_crc64nvme(store: Server) {
    use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
    let minio = Minio::start_server(store);
    create_bucket(&minio).await;
    let staging = Staging::new();
    let dump = staging.staged_dump();
    write_big_file(&dump, 23 * 1024 * 1024);
    let expected = dbbackup_operator::jobs::proof::crc64nvme_base64(crc_fast::checksum(
        crc_fast::CrcAlgorithm::Crc64Nvme,
        &std::fs::read(&dump).unwrap(),
    ));
    let run = run_upload(
        &minio,
        &staging,
        &UploadOpts {
            extra_args: vec!["--part-size-mib=5".into()],
            ..Default::default()
        },
    );
    assert!(run.succeeded(), "upload failed: {}", run.text());
    let result = run.result.expect("upload wrote its termination log");
    // The job reports the checksum the store confirmed.
    assert_eq!(result.checksum, Some(format!("crc64nvme:{expected}")));
    let key = result.key.unwrap();
    let head = minio
        .s3_client()
        .await
        .head_object()
        .bucket(BUCKET)
        .key(&key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.checksum_crc64_nvme(), Some(expected.as_str()));
    assert_eq!(head.checksum_type(), Some(&ChecksumType::FullObject));
    assert!(
        head.e_tag().unwrap().ends_with("-5\""),
        "{:?}",
        head.e_tag()
    );
}

per_store!(
    /// Forty daily dumps, 2025-01-01 to 2025-02-09, each uploaded by the real
    /// upload step with a calendar policy; what stays is exactly the union of the
    /// tiers. (The dump's modification time names its date folder.)
    gfs_retention_over_40_days_of_dumps_keeps_exactly_the_daily_weekly_and_monthly_ones,
    gfs_retention
);
async fn gfs_retention(store: Server) {
    let minio = Minio::start_server(store);
    create_bucket(&minio).await;
    let opts = UploadOpts {
        prefix: "p/".into(),
        extra_args: ["--keep-daily=7", "--keep-weekly=4", "--keep-monthly=2"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let first = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    for day in first.iter_days().take(40) {
        let staging = Staging::new();
        let dump = staging.staged_dump();
        std::fs::write(&dump, format!("-- dump of {day}\n")).unwrap();
        let noon = day.and_hms_opt(12, 0, 0).unwrap().and_utc();
        std::fs::File::options()
            .write(true)
            .open(&dump)
            .unwrap()
            .set_modified(noon.into())
            .unwrap();
        let key = upload_ok(&minio, &staging, &opts);
        assert_eq!(key, format!("p/{day}/datadump1.sql"));
    }
    let kept: Vec<String> = [
        // Monthly: January's newest (Feb's is daily).
        "01-31", // Weekly: the Sundays ending ISO weeks 3, 4, 5 (week 6's is daily).
        "01-19", "01-26", "02-02", // Daily: the newest seven days.
        "02-03", "02-04", "02-05", "02-06", "02-07", "02-08", "02-09",
    ]
    .iter()
    .map(|d| format!("p/2025-{d}/datadump1.sql"))
    .collect();
    let mut expected = kept.clone();
    expected.sort();
    assert_eq!(bucket_keys(&minio).await, expected);
    for key in &kept {
        let day = &key["p/".len()..key.len() - "/datadump1.sql".len()];
        let body = get_object(&minio, key).await;
        assert_eq!(body, format!("-- dump of {day}\n").into_bytes(), "{key}");
    }
}

/// A volume switched between one database and several loses no dump: an
/// upload, with `--databases` or without, sends the dump in the volume's
/// own folder under the prefix and each database's under its series.
#[tokio::test]
async fn a_volume_switched_between_one_and_several_databases_keeps_every_dump() {
    let minio = Minio::start();
    create_bucket(&minio).await;
    let day = today();
    for several in [false, true] {
        let staging = Staging::new();
        std::fs::write(staging.staged_dump(), "-- the one database\n").unwrap();
        let shop = staging.path().join("databases/shop/dumps");
        std::fs::create_dir_all(&shop).unwrap();
        std::fs::write(shop.join("datadump.sql"), "-- shop\n").unwrap();
        let prefix = format!("{several}/");
        let opts = UploadOpts {
            prefix: prefix.clone(),
            extra_args: several
                .then(|| "--databases".to_string())
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let run = run_upload(&minio, &staging, &opts);
        assert!(run.succeeded(), "{}", run.text());
        let keys: Vec<String> = bucket_keys(&minio)
            .await
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        assert_eq!(
            keys,
            [
                format!("{prefix}{day}/datadump1.sql"),
                format!("{prefix}shop/{day}/datadump1.sql")
            ],
            "--databases: {several}"
        );
        assert!(staging.dumps().is_empty() && !shop.join("datadump.sql").exists());
    }
}
