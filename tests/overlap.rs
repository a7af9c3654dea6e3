//! A backup's upload overlapped with its dump (`upload --follow-dump`), on
//! real MariaDB and MinIO: the upload sends the dump's file part by part
//! while the dump writes it, completes only once the dump put it in place,
//! and leaves nothing in the store of a dump that failed.
//!
//! The dump is held midway: it writes a large table, then waits on a write
//! lock another session holds on the next table (tables are dumped in name
//! order). The staging folder is on /dev/shm, whose size (not this disk's)
//! sets the part size, so parts go out within the first table.

mod support;

use dbbackup_operator::api::{Compression, Engine};
use dbbackup_operator::jobresult::{JobResult, Outcome};
use std::process::{Child, Stdio};
use std::time::Duration;
use support::minio::*;
use support::process::wait_for;
use support::steps::*;
use support::*;

/// Rows of 1 KiB in `a_big`: 32 MiB, 6 parts of 5 MiB and more.
const BIG_ROWS: u32 = 32 * 1024;

/// A MariaDB server with database "held": `a_big` (32 MiB), then `z_held`.
fn held_database() -> Database {
    let db = Database::start(Engine::Mariadb);
    db.create_database("held");
    db.query(
        "held",
        &format!(
            "CREATE TABLE a_big (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT); \
             INSERT INTO a_big (v) SELECT REPEAT(MD5(seq), 32) FROM seq_1_to_{BIG_ROWS}; \
             CREATE TABLE z_held (id INT PRIMARY KEY); INSERT INTO z_held VALUES (42);"
        ),
    );
    db
}

fn lock_held(db: &Database) -> Child {
    match db {
        Database::Maria(m) => m.lock_table("held", "z_held", 300),
        Database::Pg(_) => unreachable!("MariaDB holds the dump midway"),
    }
}

/// A step started in the background, and where its result will be.
struct Running {
    child: Child,
    termlog: std::path::PathBuf,
}

impl Running {
    fn start((mut cmd, termlog): (std::process::Command, std::path::PathBuf)) -> Running {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Running { child, termlog }
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn finish(self) -> StepRun {
        let Running { child, termlog } = self;
        let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let result = std::fs::read_to_string(&termlog)
            .ok()
            .and_then(|t| JobResult::parse(&t));
        StepRun { output, result }
    }
}

fn follower(minio: &Minio, staging: &Staging) -> Running {
    Running::start(upload_command(
        minio,
        staging,
        &UploadOpts {
            extra_args: vec!["--follow-dump".into(), "--part-size-mib=5".into()],
            ..Default::default()
        },
    ))
}

/// Waits until the store holds parts of a multipart upload; their count.
async fn parts_in_flight(minio: &Minio) -> usize {
    wait_for(
        "parts of the dump in the store",
        Duration::from_secs(60),
        || async { open_upload_parts(minio).await.filter(|n| *n >= 2) },
    )
    .await
}

/// Waits until the dump tool waits on the held table: it wrote `a_big`.
async fn dump_held(db: &Database) {
    wait_for(
        "the dump to wait on the held table",
        Duration::from_secs(60),
        || async {
            let waiting = db.query(
                "",
                "SELECT COUNT(*) FROM information_schema.processlist \
                 WHERE db = 'held' AND state LIKE 'Waiting for table%'",
            );
            (waiting.trim() != "0").then_some(())
        },
    )
    .await;
}

fn shm_staging() -> Staging {
    Staging::new_in(std::path::Path::new("/dev/shm"))
}

/// The held database, MinIO with its bucket, and staging on /dev/shm.
struct Bench {
    db: Database,
    minio: Minio,
    staging: Staging,
}

/// A dump held midway with its follower, parts of it in the store.
struct Held {
    lock: Child,
    dump: Running,
    upload: Running,
    parts: usize,
}

impl Bench {
    async fn new() -> Bench {
        let db = held_database();
        let minio = Minio::start();
        create_bucket(&minio).await;
        Bench {
            db,
            minio,
            staging: shm_staging(),
        }
    }

    /// Starts a dump of "held" and a follower, and waits until parts of the
    /// dump are in the store.
    async fn hold(&self) -> Held {
        let lock = lock_held(&self.db);
        let dump = Running::start(dump_command(
            &self.db.source("held"),
            &self.staging,
            Compression::None,
        ));
        let upload = follower(&self.minio, &self.staging);
        let parts = parts_in_flight(&self.minio).await;
        Held {
            lock,
            dump,
            upload,
            parts,
        }
    }
}

impl Held {
    fn release(&mut self) {
        let _ = self.lock.kill();
        let _ = self.lock.wait();
    }
}

#[tokio::test]
async fn an_upload_follows_its_dump_and_completes_once_the_dump_is_in_place() {
    let bench = Bench::new().await;
    let mut held = bench.hold().await;
    let Bench { db, minio, staging } = &bench;
    dump_held(db).await;
    assert!(
        held.dump.still_running(),
        "the dump ended before its upload started: nothing overlapped"
    );
    assert!(
        bucket_keys(minio).await.is_empty(),
        "an object exists before its dump was in place"
    );
    held.release();
    let Held {
        dump,
        upload,
        parts,
        ..
    } = held;
    let dumped = dump.finish().await;
    assert!(dumped.succeeded(), "dump failed: {}", dumped.text());
    let uploaded = upload.finish().await;
    assert!(uploaded.succeeded(), "upload failed: {}", uploaded.text());
    let (d, u) = (dumped.result.unwrap(), uploaded.result.clone().unwrap());
    assert_eq!(u.outcome, Outcome::Succeeded, "{u:?}");
    assert_eq!(u.dumped, d.dumped, "the upload names another dump");
    let key = u.key.clone().unwrap();
    assert_eq!(key, format!("{}/datadump1.sql", today()));
    assert!(
        uploaded
            .text()
            .contains("uploading while the dump is written"),
        "{}",
        uploaded.text()
    );
    // The whole dump, the held table last, proven by the store's CRC.
    let object = get_object(minio, &key).await;
    assert!(
        object.len() > (BIG_ROWS as usize) * 1024,
        "{}",
        object.len()
    );
    assert_eq!(Some(object.len() as u64), d.size);
    assert!(
        object.windows(24).any(|w| w == b"INSERT INTO `z_held` VAL"),
        "the held table is missing"
    );
    assert!(u.checksum.unwrap().starts_with("crc64nvme:"));
    assert!(
        parts >= 2,
        "{parts} parts were sent while the dump was held"
    );
    // Only then was the staged file deleted, and nothing is left behind.
    assert!(staging.dumps().is_empty(), "{:?}", staging.dumps());
    assert_no_pending_uploads(minio).await;
    staging.assert_log_format();
}

/// A run of two databases (`dump --each`) and one upload chained to it
/// (`upload --databases --follow-dump`), as real concurrent processes: the
/// upload follows the first database's dump while it is held midway, then
/// sends the second's once it is in place, each under its own series, and
/// ends only after the run ended.
#[tokio::test]
async fn an_upload_follows_a_run_of_several_databases_each_to_its_series() {
    let bench = Bench::new().await;
    let Bench { db, minio, staging } = &bench;
    db.create_database("second");
    db.query(
        "second",
        "CREATE TABLE t (v INT); INSERT INTO t VALUES (7);",
    );
    let lock = lock_held(db);
    let (mut cmd, termlog) = dump_command(&db.source(""), staging, Compression::None);
    cmd.args(["--each=held", "--each=second"]);
    let mut dump = Running::start((cmd, termlog));
    let upload = Running::start(upload_command(
        minio,
        staging,
        &UploadOpts {
            extra_args: ["--databases", "--follow-dump", "--part-size-mib=5"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    ));
    let parts = parts_in_flight(minio).await;
    dump_held(db).await;
    assert!(
        dump.still_running(),
        "the run ended before its upload followed it"
    );
    let mut held = Held {
        lock,
        dump,
        upload,
        parts,
    };
    held.release();
    let dumped = held.dump.finish().await;
    assert!(dumped.succeeded(), "dump failed: {}", dumped.text());
    let uploaded = held.upload.finish().await;
    assert!(uploaded.succeeded(), "upload failed: {}", uploaded.text());
    assert!(
        uploaded
            .text()
            .contains("uploading while the dump is written"),
        "{}",
        uploaded.text()
    );
    let (d, u) = (dumped.result.unwrap(), uploaded.result.unwrap());
    let day = today();
    assert_eq!(
        bucket_keys(minio).await,
        [
            format!("held/{day}/datadump1.sql"),
            format!("second/{day}/datadump1.sql")
        ]
    );
    // Each database's upload names its dump, as one database's does.
    for name in ["held", "second"] {
        let made = d.databases.iter().find(|x| x.name == name).unwrap();
        let sent = u.databases.iter().find(|x| x.name == name).unwrap();
        assert_eq!(
            (sent.outcome, &sent.dumped),
            (Outcome::Succeeded, &made.dumped),
            "{name}"
        );
        let object = get_object(minio, sent.key.as_deref().unwrap()).await;
        assert_eq!(Some(object.len() as u64), made.size, "{name}");
    }
    let held_object = get_object(minio, &format!("held/{day}/datadump1.sql")).await;
    assert!(
        held_object
            .windows(24)
            .any(|w| w == b"INSERT INTO `z_held` VAL")
    );
    for name in ["held", "second"] {
        let left = std::fs::read_dir(staging.path().join("databases").join(name).join("dumps"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock"))
            .collect::<Vec<_>>();
        assert!(left.is_empty(), "{name}: {left:?}");
    }
    assert_no_pending_uploads(minio).await;
    staging.assert_log_format();
}

/// A SIGTERM (deadline, pod deleted) in the middle of a run of several
/// stops the dump running, starts no other, removes its partial file, and
/// still names every database: the first's dump in place, the others not
/// dumped.
#[tokio::test]
async fn a_run_of_several_stopped_midway_says_what_ended_before() {
    let bench = Bench::new().await;
    let Bench { db, staging, .. } = &bench;
    db.create_database("first");
    db.query("first", "CREATE TABLE t (v INT); INSERT INTO t VALUES (1);");
    db.create_database("third");
    let lock = lock_held(db);
    let (mut cmd, termlog) = dump_command(&db.source(""), staging, Compression::None);
    cmd.args(["--each=first", "--each=held", "--each=third"]);
    let dump = Running::start((cmd, termlog));
    dump_held(db).await;
    // SAFETY: signals the dump step we started.
    unsafe { libc::kill(dump.child.id() as i32, libc::SIGTERM) };
    let stopped = dump.finish().await;
    let mut lock = lock;
    let _ = lock.kill();
    let _ = lock.wait();
    assert!(!stopped.succeeded(), "{}", stopped.text());
    let result = stopped.result.expect("a result even when stopped");
    let names: Vec<(&str, Outcome)> = result
        .databases
        .iter()
        .map(|d| (d.name.as_str(), d.outcome))
        .collect();
    assert_eq!(
        names,
        [
            ("first", Outcome::Succeeded),
            ("held", Outcome::Failed),
            ("third", Outcome::Failed)
        ]
    );
    let third = result.databases.iter().find(|d| d.name == "third").unwrap();
    assert!(
        third
            .error
            .as_deref()
            .unwrap()
            .contains("stopped by SIGTERM"),
        "{third:?}"
    );
    let staged = |name: &str| staging.path().join("databases").join(name).join("dumps");
    assert!(staged("first").join("datadump.sql").exists());
    let held: Vec<String> = std::fs::read_dir(staged("held"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(held.is_empty(), "{held:?}");
    assert!(!staging.path().join("databases/third").exists());
}

#[tokio::test]
async fn a_dump_that_fails_midway_leaves_nothing_in_the_store() {
    let bench = Bench::new().await;
    let Bench { db, minio, .. } = &bench;

    // 1. The dump tool's connection is killed: the dump fails and removes
    //    its file.
    let mut held = bench.hold().await;
    dump_held(db).await;
    db.query(
        "",
        "SELECT CONCAT('KILL ', id) FROM information_schema.processlist \
         WHERE db = 'held' AND state LIKE 'Waiting for table%' INTO @k; \
         EXECUTE IMMEDIATE @k",
    );
    held.release();
    let dumped = held.dump.finish().await;
    assert!(!dumped.succeeded(), "the dump survived its connection");
    let uploaded = held.upload.finish().await;
    assert!(uploaded.succeeded(), "{}", uploaded.text());
    assert_eq!(uploaded.result.unwrap().outcome, Outcome::Nothing);
    assert!(bucket_keys(minio).await.is_empty());
    assert_no_pending_uploads(minio).await;

    // 2. The dump step is killed outright: its file stays, it grows no more,
    //    and the dump lock is free.
    let mut held = bench.hold().await;
    held.dump.child.kill().unwrap();
    let _ = held.dump.child.wait();
    held.release();
    let uploaded = held.upload.finish().await;
    assert!(uploaded.succeeded(), "{}", uploaded.text());
    assert_eq!(uploaded.result.unwrap().outcome, Outcome::Nothing);
    assert!(bucket_keys(minio).await.is_empty());
    assert_no_pending_uploads(minio).await;
}

#[tokio::test]
async fn an_upload_that_fails_while_its_dump_runs_leaves_the_dump_for_the_next() {
    let bench = Bench::new().await;
    let Bench { minio, staging, .. } = &bench;
    let mut held = bench.hold().await;
    held.upload.child.kill().unwrap();
    let _ = held.upload.child.wait();
    held.release();
    let dumped = held.dump.finish().await;
    assert!(dumped.succeeded(), "dump failed: {}", dumped.text());
    assert!(
        staging
            .dumps()
            .contains(&staging.path().join("dumps/datadump.sql")),
        "the dump is staged for the next upload: {:?}",
        staging.dumps()
    );
    // The next upload sends it once and aborts the killed one's parts.
    let next = run_upload(minio, staging, &UploadOpts::default());
    assert!(next.succeeded(), "{}", next.text());
    let key = next.result.unwrap().key.unwrap();
    assert_eq!(bucket_keys(minio).await, [key]);
    assert_no_pending_uploads(minio).await;
    assert!(staging.dumps().is_empty());
}

/// What the upload read while the file grew must be what the dump wrote: a
/// file whose first part changed after it was sent (as a reader on a network
/// file system may see a region before its bytes arrive) is sent whole
/// from its file instead, never completed from the parts read early.
#[tokio::test]
async fn bytes_read_while_the_dump_was_written_are_checked_against_its_record() {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let minio = Minio::start();
    create_bucket(&minio).await;
    let staging = shm_staging();
    let dumps = staging.path().join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    // A dump of our own making: it holds the dump lock and writes its file.
    let lock = std::fs::File::create(dumps.join(".dump.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let partial = dumps.join(".partial-1-2-0-datadump.sql");
    let mut file = std::fs::File::create(&partial).unwrap();
    let mib = 1024 * 1024;
    file.write_all(&vec![b'a'; 12 * mib]).unwrap();
    let upload = follower(&minio, &staging);
    parts_in_flight(&minio).await;
    file.write_all_at(&vec![b'b'; mib], 0).unwrap();
    file.write_all(&vec![b'c'; mib]).unwrap();
    file.sync_all().unwrap();
    let whole = std::fs::read(&partial).unwrap();
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &whole);
    std::fs::write(
        dumps.join(".partial-1-2-0-datadump.sql.crc64nvme"),
        format!("{} {crc:016x}\n", whole.len()),
    )
    .unwrap();
    std::fs::rename(&partial, dumps.join("datadump.sql")).unwrap();
    drop(lock);
    let uploaded = upload.finish().await;
    assert!(uploaded.succeeded(), "{}", uploaded.text());
    assert!(
        uploaded.text().contains("are not the dump's"),
        "{}",
        uploaded.text()
    );
    let key = uploaded.result.unwrap().key.unwrap();
    assert!(
        get_object(&minio, &key).await == whole,
        "the object is not the dump as written"
    );
    assert_no_pending_uploads(&minio).await;
}
