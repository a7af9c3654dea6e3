//! Restores that stream: the dump goes from the store into the database as
//! it downloads, with no copy on the node, and nothing is committed before
//! the whole object checked out. Real node, MinIO and databases.

mod support;

use dbbackup_operator::api::{Engine, RestorePhase};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::bed::*;
use support::minio::*;
use support::node::bytes_under;
use support::process::wait_for;
use support::steps::*;

/// About 12 MiB of table data in `shop`, so the dump is larger than the
/// restore's scratch limit and than one 5 MiB part; with a view, a trigger
/// and a routine on it, which an overwrite must bring back.
fn fill(b: &Bed) {
    let table = match b.engine {
        Engine::Postgres => {
            "CREATE TABLE filler (id int PRIMARY KEY, pad text); INSERT INTO filler SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 12000) g"
        }
        _ => {
            "CREATE TABLE filler (id INT PRIMARY KEY, pad TEXT); INSERT INTO filler SELECT seq, REPEAT(MD5(seq), 32) FROM seq_1_to_12000"
        }
    };
    b.db.query("shop", table);
    b.db.query(
        "shop",
        "CREATE VIEW big_filler AS SELECT id FROM filler WHERE id > 100",
    );
    match b.engine {
        Engine::Postgres => {
            b.db.query("shop", "CREATE FUNCTION count_filler() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM filler'");
            b.db.query("shop", "CREATE FUNCTION pad_filler() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN NEW.pad := ''t:'' || NEW.pad; RETURN NEW; END'");
            b.db.query("shop", "CREATE TRIGGER filler_pad BEFORE INSERT ON filler FOR EACH ROW EXECUTE FUNCTION pad_filler()");
        }
        _ => {
            b.db.query(
                "shop",
                "CREATE PROCEDURE count_filler() SELECT COUNT(*) FROM filler",
            );
            b.db.query("shop", "CREATE TRIGGER filler_pad BEFORE INSERT ON filler FOR EACH ROW SET NEW.pad = CONCAT('t:', NEW.pad)");
        }
    }
}

/// The view, routine and trigger of `fill` work in `db`.
fn filler_objects_work(b: &Bed, db: &str) {
    assert_eq!(b.db.query(db, "SELECT count(*) FROM big_filler"), "11900");
    let counted = match b.engine {
        Engine::Postgres => b.db.query(db, "SELECT count_filler()"),
        _ => b.db.query(db, "CALL count_filler()"),
    };
    assert_eq!(counted, "12000");
    b.db.query(db, "INSERT INTO filler VALUES (20000, 'x')");
    assert_eq!(
        b.db.query(db, "SELECT pad FROM filler WHERE id = 20000"),
        "t:x"
    );
    b.db.query(db, "DELETE FROM filler WHERE id = 20000");
}

/// Tables (and views) in `db`, or None when it does not exist.
fn tables_in(b: &Bed, db: &str) -> Option<u64> {
    let (exists, count) = match b.engine {
        Engine::Postgres => (
            b.db.query(
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
            ),
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'v', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'".to_string(),
        ),
        _ => (
            b.db.query(
                "",
                &format!("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{db}'"),
            ),
            format!("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{db}'"),
        ),
    };
    (exists.trim() != "0").then(|| b.db.query(db, &count).trim().parse().unwrap())
}

/// MariaDB/MySQL: no shadow or trash database of `shop` is left.
fn assert_no_shadow_left(b: &Bed) {
    if b.engine != Engine::Postgres {
        let left = b.db.query(
            "",
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE 'shop\\_\\_dbbackup%'",
        );
        assert_eq!(left, "0", "a shadow or trash database is left");
    }
}

/// Samples the emptyDir volumes of restore `name`'s pod every 50 ms until
/// `stop`: the peak bytes of its scratch (all but the volume that carries
/// our binary), and of that volume (which shows the sampling sees them).
fn watch_scratch(
    b: &Bed,
    name: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let pods: Api<Pod> = Api::namespaced(b.client.clone(), &b.ns);
    let selector = format!("dbbackup.io/restore={name}");
    let cluster = b.cluster.clone();
    tokio::spawn(async move {
        let uid = wait_for("the restore pod", POD_TIMEOUT, || async {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .ok()?
                .items
                .first()?
                .uid()
        })
        .await;
        let dirs = cluster.node().empty_dirs(&uid);
        let (scratch, binary) = (AtomicU64::new(0), AtomicU64::new(0));
        while !stop.load(Ordering::Relaxed) {
            for volume in std::fs::read_dir(&dirs).into_iter().flatten().flatten() {
                let peak = match volume.file_name() == "dbbackup-binary" {
                    true => &binary,
                    false => &scratch,
                };
                peak.fetch_max(bytes_under(&volume.path()), Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (scratch.into_inner(), binary.into_inner())
    })
}

/// A dump larger than the restore's scratch limit restores with no copy on
/// the node; a dump whose bytes do not match the store's checksum, one cut
/// short, and one that holds nothing load nothing: a target with tables stays as it was, a fresh
/// one is left absent or empty, and the restore names why.
async fn a_streamed_restore_keeps_no_copy_and_commits_nothing_unproven(engine: Engine) {
    let (b, _op, mut pods) = ready_bed(engine, "").await;
    fill(&b);
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let key = status_of(&b).await.last_upload_key.unwrap();
    let dump = get_object(&b.minio, &key).await;
    assert!(dump.len() > 10 << 20, "a dump of {} bytes", dump.len());

    // Scratch limited to 4 MiB, a dump of 12: no copy of it on the node.
    let limit: u64 = 4 << 20;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = watch_scratch(&b, "whole", stop.clone());
    apply_restore_with(
        &b,
        "whole",
        "whole",
        false,
        "db-creds",
        "  scratchSize: 4Mi\n",
    );
    let status = run_restore(&b, &mut pods, "whole").await;
    stop.store(true, Ordering::Relaxed);
    let (peak, binary) = peak.await.unwrap();
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert!(
        binary > 1 << 20,
        "the sampling saw no volume ({binary} bytes)"
    );
    assert_eq!(b.db.fingerprint("whole"), b.db.fingerprint("shop"));
    let filler = |db: &str| b.db.query(db, "SELECT count(*) FROM filler");
    assert_eq!(filler("whole"), "12000");
    println!("restore pod scratch peak: {peak} bytes (limit {limit})");
    assert!(peak < limit, "the restore pod's scratch held {peak} bytes");

    let mismatch = format!("{}/datadump8.sql", today());
    put_parts(&b.minio, &mismatch, dump.chunks(6 << 20), 5 << 20).await;
    let cut = format!("{}/datadump9.sql.zst", today());
    let zst = zstd::encode_all(&dump[..], 3).unwrap();
    put_object(&b.minio, &cut, zst[..zst.len() / 2].to_vec()).await;

    // The target moves on from the dump: a load that committed would show.
    let dumped = b.db.fingerprint("shop");
    b.db.query(
        "shop",
        "INSERT INTO products VALUES (203, 'After the dump', 2.00)",
    );
    // An object that checks out but holds nothing: it must not empty the target.
    let empty = format!("{}/datadump7.sql", today());
    put_object(&b.minio, &empty, vec![]).await;
    let before = (
        b.db.fingerprint("shop"),
        tables_in(&b, "shop"),
        filler("shop"),
    );
    assert_ne!(before.0, dumped);
    for (name, key, reason) in [
        ("mismatch", &mismatch, "ChecksumMismatch"),
        ("cut", &cut, "CorruptDump"),
        ("empty", &empty, "CorruptDump"),
    ] {
        let spec = format!("  key: {key}\n");
        let over = format!("{name}-over");
        apply_restore_with(&b, &over, "shop", true, "db-creds", &spec);
        let status = run_restore(&b, &mut pods, &over).await;
        assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
        assert_eq!(restored(&status), ("False".into(), reason.into()));
        let last = status.log.last().unwrap();
        assert!(last.ends_with("; the target is unchanged"), "{last}");
        assert_eq!(
            (
                b.db.fingerprint("shop"),
                tables_in(&b, "shop"),
                filler("shop")
            ),
            before,
            "{name}: the target changed"
        );
        if engine != Engine::Postgres {
            assert_eq!(
                tables_in(&b, "shop__dbbackup_new"),
                None,
                "the shadow is gone"
            );
        }

        let fresh = format!("fresh_{name}");
        apply_restore_with(
            &b,
            &format!("{name}-fresh"),
            &fresh,
            false,
            "db-creds",
            &spec,
        );
        let status = run_restore(&b, &mut pods, &format!("{name}-fresh")).await;
        assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
        assert_eq!(restored(&status), ("False".into(), reason.into()));
        assert!(
            tables_in(&b, &fresh).unwrap_or(0) == 0,
            "{name}: the fresh target holds tables"
        );
    }

    // The whole dump over a changed target: its content, view, trigger and
    // routine are the dump's again, and nothing of the swap is left.
    b.db.query("shop", "DELETE FROM filler WHERE id > 6000");
    b.db.query("shop", "DROP VIEW big_filler");
    apply_restore_with(
        &b,
        "over",
        "shop",
        true,
        "db-creds",
        &format!("  key: {key}\n"),
    );
    let status = run_restore(&b, &mut pods, "over").await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert_eq!(b.db.fingerprint("shop"), dumped);
    assert_eq!(filler("shop"), "12000");
    filler_objects_work(&b, "shop");
    filler_objects_work(&b, "whole");
    assert_no_shadow_left(&b);
}

#[tokio::test]
async fn a_streamed_mariadb_restore_keeps_no_copy_and_commits_nothing_unproven() {
    a_streamed_restore_keeps_no_copy_and_commits_nothing_unproven(Engine::Mariadb).await;
}

#[tokio::test]
async fn a_streamed_postgres_restore_keeps_no_copy_and_commits_nothing_unproven() {
    a_streamed_restore_keeps_no_copy_and_commits_nothing_unproven(Engine::Postgres).await;
}

/// SIGKILLs the restore step (`load`) that loads into the database server
/// on `port`: the death no code of ours sees coming. How many it killed.
fn kill_load(port: u16) -> usize {
    let port = format!("--port={port}");
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) == Some(&&b"load"[..]) && args.contains(&port.as_bytes()) {
            let pid = entry.file_name().to_string_lossy().to_string();
            let ok = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success();
            killed += usize::from(ok);
        }
    }
    killed
}

/// A restore whose step is killed in the middle of the load (its download
/// stalled halfway at a proxy in front of the store, then SIGKILL) leaves
/// the target as it was: PostgreSQL never saw COMMIT, MariaDB/MySQL loaded
/// into the shadow only. The next restore runs as if nothing had happened
/// and leaves no shadow behind.
async fn a_restore_killed_mid_load_leaves_the_target_as_it_was(engine: Engine) {
    use dbbackup_operator::api::DatabaseRestore;
    use support::faultproxy::{self, FaultProxy};
    let (b, _op, mut pods) = ready_bed(engine, "").await;
    fill(&b);
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let key = status_of(&b).await.last_upload_key.unwrap();
    let size = get_object(&b.minio, &key).await.len() as u64;
    assert!(size > 10 << 20, "a dump of {size} bytes");
    let dumped = b.db.fingerprint("shop");
    b.db.query(
        "shop",
        "INSERT INTO products VALUES (203, 'After the dump', 2.00)",
    );
    let before = (b.db.fingerprint("shop"), tables_in(&b, "shop"));

    // The restore reaches the store through a proxy that holds every range
    // from 8 MiB on: the client gets the first 8 MiB, then waits.
    let proxy = FaultProxy::start(&b.minio.endpoint, faultproxy::refuse_nothing()).await;
    proxy.hold_ranges_from(8 << 20);
    apply_bucket_secret(&b, BUCKET, &b.minio.secret_key, &proxy.endpoint);
    let spec = format!("  key: {key}\n");
    apply_restore_with(&b, "killed", "shop", true, "db-creds", &spec);
    wait_for("the download to stall halfway", POD_TIMEOUT, || async {
        (proxy.held() > 0).then_some(())
    })
    .await;
    // The first 8 MiB are in the client by now (it loads at tens of MiB/s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(kill_load(b.db.login().0), 1, "no restore step to kill");
    proxy.release();

    let restores: Api<DatabaseRestore> = Api::namespaced(b.client.clone(), &b.ns);
    let status = wait_for("the killed restore to end", POD_TIMEOUT, || async {
        let s = restores.get("killed").await.ok()?.status?;
        s.phase.filter(|p| p.finished()).map(|_| s)
    })
    .await;
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    let pod = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(pod.step, "restore");
    // (PostgreSQL: reading waits for the dead client's transaction to end.)
    assert_eq!(
        (b.db.fingerprint("shop"), tables_in(&b, "shop")),
        before,
        "the killed restore changed the target"
    );

    apply_bucket_secret(&b, BUCKET, &b.minio.secret_key, &b.minio.endpoint);
    apply_restore_with(&b, "again", "shop", true, "db-creds", &spec);
    let status = run_restore(&b, &mut pods, "again").await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert_eq!(b.db.fingerprint("shop"), dumped);
    filler_objects_work(&b, "shop");
    assert_no_shadow_left(&b);
}

#[tokio::test]
async fn a_mariadb_restore_killed_mid_load_leaves_the_target_as_it_was() {
    a_restore_killed_mid_load_leaves_the_target_as_it_was(Engine::Mariadb).await;
}

#[tokio::test]
async fn a_postgres_restore_killed_mid_load_leaves_the_target_as_it_was() {
    a_restore_killed_mid_load_leaves_the_target_as_it_was(Engine::Postgres).await;
}
