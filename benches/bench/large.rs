//! A database of `BENCH_LARGE_GIB` GiB of table data (default 10) per engine,
//! backed up, drilled and restored by the operator on the real node, as a
//! user runs it: run-now to the proven object, the drill after the upload,
//! `kubectl apply` of a DatabaseRestore to `Succeeded`. In the same run, the
//! physical references: the volume read and written with `dd` (direct I/O),
//! the bare dump tool into /dev/null and (with zstd, as the backup) into a
//! file, `mc cp` of that file up and of our object down, and the bare load.
//! A sampler keeps the peak RSS of each of our processes (VmHWM) and the peak
//! scratch (emptyDir bytes) of each pod. Sized for this machine's disk: the
//! source, one loaded copy, the object and one file at a time.

use super::support::bed::*;
use super::support::k8s::wait_ready;
use super::support::minio::*;
use super::support::node::{NODE_IP, bytes_except, bytes_under};
use super::support::process::{bin_dir, wait_for};
use super::support::*;
use super::{Goals, Run, env_list, timed};
use dbbackup_operator::api::{DatabaseRestore, Engine, RestorePhase};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
/// Rows of about 1 KiB (1,024 hex digits): random, so zstd halves them, as
/// it does hashes and ids in real dumps, rather than folding them to nothing.
const ROWS_PER_GIB: u64 = 1 << 20;
/// How long one step of a large run may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

pub async fn bench_large(report: &mut String, goals: &mut Goals) {
    let gib = env_list("BENCH_LARGE_GIB", "10")[0];
    writeln!(
        report,
        "## Scale on the node: {gib} GiB of table data per engine\n\n\
         The operator, its pods on the real node (kubelet, containers), MinIO and the database on this machine's disk; \
         `compression: zstd` (level 3) and `verify: {{}}` on the DatabaseBackup, a DatabaseRestore into a fresh \
         database. One round per engine (20 to 25 minutes each at 10 GiB here). Backup: `dbbackup.io/run-now` to \
         `status.lastUploadKey` (the object proven by HEAD); drill: from there to `status.lastVerification`; restore: \
         `kubectl apply` to `Succeeded`. References in the same run: the volume with `dd` (4 MiB blocks, direct I/O), \
         the bare dump tool, `mc cp`, and the bare load (`zstd -dc file | mariadb`, or `| psql --single-transaction`: one transaction, as our \
         restore's `BEGIN` … `COMMIT`). Peak RSS is each of our processes' VmHWM, sampled every \
         250 ms; peak scratch is the bytes in a pod's emptyDir volumes (but the one carrying our binary), sampled every second, \
         and for the drill also those outside its throwaway server's data directory, where a copy of the dump would be.\n"
    )
    .unwrap();
    for engine in [Engine::Mariadb, Engine::Postgres] {
        super::assert_free_space(&std::env::temp_dir(), 4 * gib * GIB + 4 * GIB);
        one_engine(engine, gib, report, goals).await;
    }
}

/// The table `big`: `gib` GiB of random 1 KiB rows, built from one GiB
/// copied with new ids (zstd's window is far shorter than a GiB, so the
/// copies compress as the first does).
fn fill(db: &Database, gib: u64) {
    let base = ROWS_PER_GIB;
    let body = match db.engine() {
        Engine::Postgres => (0..32)
            .map(|i| format!("md5(g::text || '-{i}')"))
            .collect::<Vec<_>>()
            .join(" || "),
        _ => "HEX(RANDOM_BYTES(512))".into(),
    };
    let rows = match db.engine() {
        Engine::Postgres => format!("SELECT g, {body} FROM generate_series(1, {base}) g"),
        _ => format!("SELECT seq, {body} FROM seq_1_to_{base}"),
    };
    db.query(
        "shop",
        &format!("CREATE TABLE base (id INT PRIMARY KEY, body TEXT); INSERT INTO base {rows}"),
    );
    db.query(
        "shop",
        "CREATE TABLE big (id BIGINT PRIMARY KEY, body TEXT)",
    );
    for k in 0..gib {
        db.query(
            "shop",
            &format!("INSERT INTO big SELECT id + {}, body FROM base", k * base),
        );
    }
    db.query("shop", "DROP TABLE base");
}

/// Bytes of table `big` in `database` (rows and index), as the server counts them.
fn table_bytes(db: &Database, database: &str) -> u64 {
    if db.engine() != Engine::Postgres {
        // InnoDB's sizes in information_schema are estimates until analysed.
        db.query(database, "ANALYZE TABLE big");
    }
    let sql = match db.engine() {
        Engine::Postgres => "SELECT pg_total_relation_size('big')".to_string(),
        _ => format!(
            "SELECT data_length + index_length FROM information_schema.tables WHERE table_schema = '{database}' AND table_name = 'big'"
        ),
    };
    db.query(database, &sql).trim().parse().unwrap()
}

/// A shell command with the test bed's tools on PATH and the database's
/// password in the environment, as our steps pass it.
fn shell(db: &Database, script: &str) -> Command {
    let (_, user, password) = db.login();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -eo pipefail; {script}"))
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir().display()))
        .env("DB_USER", user)
        .env("MYSQL_PWD", &password)
        .env("PGPASSWORD", &password);
    cmd
}

/// The bare dump tool with the flags our dump step passes, writing to stdout.
fn bare_dump(db: &Database) -> String {
    let (port, _, _) = db.login();
    match db.engine() {
        Engine::Postgres => format!(
            "pg_dump --host={NODE_IP} --port={port} --username=\"$DB_USER\" --no-password --format=plain --no-owner --no-privileges --dbname=shop"
        ),
        _ => format!(
            "mariadb-dump --host={NODE_IP} --port={port} --user=\"$DB_USER\" --default-character-set=utf8mb4 --single-transaction --quick --routines --events --triggers -- shop"
        ),
    }
}

/// The bare load of SQL on stdin into `database`, in one transaction for PostgreSQL.
fn bare_load(db: &Database, database: &str) -> String {
    let (port, _, _) = db.login();
    match db.engine() {
        Engine::Postgres => format!(
            "psql --host={NODE_IP} --port={port} --username=\"$DB_USER\" --no-password --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --single-transaction --dbname={database} > /dev/null"
        ),
        _ => format!(
            "mariadb --host={NODE_IP} --port={port} --user=\"$DB_USER\" --default-character-set=utf8mb4 -- {database}"
        ),
    }
}

/// Peaks seen while the sampler ran: VmHWM KiB by our subcommand, and
/// emptyDir bytes by pod step: all of them, and those outside a drill's
/// server data directory (where a copy of the dump would be).
#[derive(Default)]
struct Peaks {
    rss_kib: BTreeMap<String, u64>,
    scratch: BTreeMap<String, (u64, u64)>,
}

/// The throwaway server's data directory in a drill's scratch (`--work-dir`
/// of `operator/backup/drill.rs` under the volume; `jobs/throwaway.rs`).
const SERVER_DATA: [&str; 2] = ["server/pgdata", "server/mysql"];

/// Our processes on this machine (the node's containers are its processes):
/// (subcommand, VmHWM KiB).
fn our_processes() -> Vec<(String, u64)> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // The job pods run it from our image or from the copy in a
        // database image; the bench (and the operator in it) is another binary.
        if args.len() < 2 || args[0].rsplit('/').next() != Some("dbbackup-operator") {
            continue;
        }
        let name = match args.iter().any(|a| a == "--follow-dump") {
            true => format!("{} (following)", args[1]),
            false => args[1].clone(),
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        if let Some(hwm) = hwm {
            found.push((name, hwm));
        }
    }
    found
}

/// Samples until `stop`; returns the peaks.
fn sample(b: &Bed, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Peaks> {
    let pods: Api<Pod> = Api::namespaced(b.client.clone(), &b.ns);
    let cluster = b.cluster.clone();
    tokio::spawn(async move {
        let mut peaks = Peaks::default();
        let mut tick = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (name, hwm) in our_processes() {
                let peak = peaks.rss_kib.entry(name).or_default();
                *peak = (*peak).max(hwm);
            }
            if tick.is_multiple_of(4) {
                for pod in pods
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    let labels = pod.labels();
                    let step = labels
                        .get("dbbackup.io/step")
                        .cloned()
                        .or_else(|| {
                            labels
                                .contains_key("dbbackup.io/restore")
                                .then(|| "restore".into())
                        })
                        .unwrap_or_else(|| pod.name_any());
                    let dirs = cluster.node().empty_dirs(&pod.uid().unwrap_or_default());
                    let (mut used, mut outside) = (0, 0);
                    for v in std::fs::read_dir(&dirs).into_iter().flatten().flatten() {
                        if v.file_name() == "dbbackup-binary" {
                            continue;
                        }
                        let data: Vec<_> = SERVER_DATA.iter().map(|d| v.path().join(d)).collect();
                        let elsewhere = bytes_except(&v.path(), &data);
                        used += elsewhere + data.iter().map(|d| bytes_under(d)).sum::<u64>();
                        outside += elsewhere;
                    }
                    let peak = peaks.scratch.entry(step).or_default();
                    *peak = (peak.0.max(used), peak.1.max(outside));
                }
            }
            tick += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peaks
    })
}

/// A wall time alone: for steps of ours that run in pods, whose memory the
/// sampler keeps.
fn since(t: Instant) -> Run {
    Run {
        secs: t.elapsed().as_secs_f64(),
        rss_mib: 0.0,
        cpu_secs: 0.0,
    }
}

/// One engine's round; appends its table and goals.
async fn one_engine(engine: Engine, gib: u64, report: &mut String, goals: &mut Goals) {
    let b = bed(engine).await;
    let started = Instant::now();
    fill(&b.db, gib);
    let source_bytes = table_bytes(&b.db, "shop");
    println!(
        "large {}: {:.1} GiB in table big after {:.0} s",
        engine.as_str(),
        source_bytes as f64 / GIB as f64,
        started.elapsed().as_secs_f64()
    );
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("dump.sql.zst");
    let volume = b.staging.join("dd-probe");
    let mut rows: Vec<(String, Run)> = vec![];
    let mut step = |name: &str, run: Run| {
        println!("large {} {name}: {:.1} s", engine.as_str(), run.secs);
        rows.push((name.to_string(), run));
    };
    let dd_bytes = gib.min(4) * GIB;
    let dd = (dd_bytes / (4 << 20)).to_string();
    step(
        "volume write (dd, direct)",
        timed(Command::new("dd").args([
            "if=/dev/zero",
            &format!("of={}", volume.display()),
            "bs=4M",
            &format!("count={dd}"),
            "oflag=direct",
            "conv=fsync",
            "status=none",
        ])),
    );
    step(
        "volume read (dd, direct)",
        timed(Command::new("dd").args([
            &format!("if={}", volume.display()),
            "of=/dev/null",
            "bs=4M",
            "iflag=direct",
            "status=none",
        ])),
    );
    std::fs::remove_file(&volume).unwrap();
    let dump = bare_dump(&b.db);
    step(
        "bare dump into /dev/null",
        timed(&shell(&b.db, &format!("{dump} > /dev/null"))),
    );
    let out = file.display();
    step(
        "bare dump | zstd -3 into a file",
        timed(&shell(
            &b.db,
            &format!("{dump} | zstd -q -3 -c > {out} && sync {out}"),
        )),
    );
    let dump_bytes = std::fs::metadata(&file).unwrap().len();
    let mc_key = format!("test/{BUCKET}/mc/dump.sql.zst");
    step(
        "mc cp of that file up",
        timed(&b.minio.mc_command(&["cp", &out.to_string(), &mc_key])),
    );
    run_ok(&mut b.minio.mc_command(&["rm", &mc_key]));
    std::fs::remove_file(&file).unwrap();
    b.minio.purge_trash();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(&b, stop.clone());
    let _op = super::support::operator::RunningOperator::start_in(&b.client, &b.ns);
    apply_backup_with(&b, "  compression: zstd\n  verify: {}\n");
    wait_ready(&b.backups(), "orders", "True", "Reconciled").await;
    let t = Instant::now();
    request_backup(&b, "large");
    let key = wait_for("the proven object", STEP_TIMEOUT, || async {
        status_of(&b).await.last_upload_key
    })
    .await;
    step("backup (ours)", since(t));
    let t = Instant::now();
    let drilled = wait_for("the drill", STEP_TIMEOUT, || async {
        status_of(&b)
            .await
            .last_verification
            .filter(|v| v.key.as_ref() == Some(&key))
    })
    .await;
    assert!(drilled.passed, "the drill failed: {drilled:?}");
    step("drill (ours)", since(t));
    step(
        "mc cp of our object down",
        timed(
            &b.minio
                .mc_command(&["cp", &format!("test/{BUCKET}/{key}"), &out.to_string()]),
        ),
    );
    b.db.create_database("bare");
    step(
        "bare load (zstd -dc | client)",
        timed(&shell(
            &b.db,
            &format!("zstd -q -dc {out} | {}", bare_load(&b.db, "bare")),
        )),
    );
    assert_eq!(count(&b.db, "bare"), count(&b.db, "shop"));
    drop_database(&b.db, "bare");
    std::fs::remove_file(&file).unwrap();

    let t = Instant::now();
    apply_restore(&b, &key);
    let restores: Api<DatabaseRestore> = Api::namespaced(b.client.clone(), &b.ns);
    let status = wait_for("the restore", STEP_TIMEOUT, || async {
        let s = restores.get("large").await.ok()?.status?;
        s.phase.is_some_and(RestorePhase::finished).then_some(s)
    })
    .await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    step("restore (ours)", since(t));
    assert_eq!(count(&b.db, "restored"), count(&b.db, "shop"));
    drop_database(&b.db, "restored");
    stop.store(true, Ordering::Relaxed);
    let peaks = sampler.await.unwrap();
    write_engine(
        report,
        goals,
        engine,
        Sizes {
            source: source_bytes,
            dump: dump_bytes,
            dd: dd_bytes,
        },
        &rows,
        &peaks,
    );
}

fn count(db: &Database, database: &str) -> String {
    db.query(database, "SELECT count(*) FROM big")
}

fn drop_database(db: &Database, database: &str) {
    let sql = format!("DROP DATABASE {database}");
    match db.engine() {
        Engine::Postgres => db.query("postgres", &sql),
        _ => db.query("", &sql),
    };
}

/// `kubectl apply` of DatabaseRestore "large": `key` into the fresh database "restored".
fn apply_restore(b: &Bed, key: &str) {
    let (port, _, _) = b.db.login();
    let manifest = serde_json::json!({
        "apiVersion": "dbbackup.io/v1alpha1",
        "kind": "DatabaseRestore",
        "metadata": { "name": "large", "namespace": b.ns },
        "spec": {
            "backup": "orders",
            "key": key,
            "target": { "engine": b.engine.as_str(), "host": NODE_IP, "port": port,
                        "image": b.db.image(), "name": "restored",
                        "credentialsSecret": { "name": "db-creds" } }
        }
    });
    let path = b.dir().join("large-restore.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    kubectl(b.cp(), &["apply", "-f", path.to_str().unwrap()]);
}

/// Bytes of the source table, the zstd dump and each `dd` run.
struct Sizes {
    source: u64,
    dump: u64,
    dd: u64,
}

fn write_engine(
    report: &mut String,
    goals: &mut Goals,
    engine: Engine,
    sizes: Sizes,
    rows: &[(String, Run)],
    peaks: &Peaks,
) {
    let Sizes {
        source: source_bytes,
        dump: dump_bytes,
        dd: dd_bytes,
    } = sizes;
    let secs = |name: &str| {
        rows.iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.secs)
            .unwrap()
    };
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let backup_ref = secs("bare dump | zstd -3 into a file").max(secs("mc cp of that file up"));
    let restore_ref = secs("bare load (zstd -dc | client)") + secs("mc cp of our object down");
    let versus = |name: &str| match name {
        "backup (ours)" => format!(
            "{:.2}× max(bare dump into a file, mc cp up)",
            secs(name) / backup_ref
        ),
        "restore (ours)" => format!("{:.2}× (bare load + mc cp down)", secs(name) / restore_ref),
        "drill (ours)" => format!(
            "{:.2}× the bare load",
            secs(name) / secs("bare load (zstd -dc | client)")
        ),
        n if n.starts_with("volume") => format!("{:.0} MiB/s", mib(dd_bytes) / secs(name)),
        _ => String::new(),
    };
    writeln!(
        report,
        "### {}\n\nTable `big`: {:.1} GiB (rows and primary key, as the server counts them); the zstd dump: {:.0} MiB.\n\n\
         | step | wall | against the reference | peak RSS MiB |\n| --- | --- | --- | --- |",
        engine.as_str(),
        source_bytes as f64 / GIB as f64,
        mib(dump_bytes)
    )
    .unwrap();
    let ours = |name: &str| -> Vec<&str> {
        match name {
            "backup (ours)" => vec!["dump", "upload", "upload (following)"],
            "drill (ours)" => vec!["verify"],
            "restore (ours)" => vec!["load"],
            _ => vec![],
        }
    };
    for (name, run) in rows {
        let rss = match ours(name).as_slice() {
            [] => format!("{:.1}", run.rss_mib),
            subs => subs
                .iter()
                .filter_map(|s| {
                    peaks
                        .rss_kib
                        .get(*s)
                        .map(|k| format!("{s} {:.1}", *k as f64 / 1024.0))
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        writeln!(
            report,
            "| {} | {:.1} s | {} | {rss} |",
            name.replace('|', "\\|"),
            run.secs,
            versus(name)
        )
        .unwrap();
    }
    writeln!(
        report,
        "\nPeak scratch (emptyDir) by pod: {}.\n",
        peaks
            .scratch
            .iter()
            .map(|(s, (b, _))| format!("{s} {:.0} MiB", mib(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .unwrap();
    let e = engine.as_str();
    let backup = secs("backup (ours)") / backup_ref;
    goals.check(
        &format!("{e} backup wall at scale: ≤ 1.15× max(bare dump into a file, mc cp up)"),
        format!("{backup:.2}×"),
        backup <= 1.15,
    );
    let restore = secs("restore (ours)") / restore_ref;
    goals.check(
        &format!("{e} restore wall at scale: ≤ 1.15× (bare load + mc cp down)"),
        format!("{restore:.2}×"),
        restore <= 1.15,
    );
    let (scratch, _) = peaks.scratch.get("restore").copied().unwrap_or_default();
    goals.check(
        &format!("{e} restore pod scratch at scale: ≤ 512 MiB"),
        format!("{:.0} MiB", mib(scratch)),
        scratch <= 512 << 20,
    );
    let (drill, outside) = peaks.scratch.get("verify").copied().unwrap_or_default();
    goals.check(
        &format!("{e} drill scratch at scale: no copy of the dump (outside the throwaway server's data directory ≤ 512 MiB)"),
        format!(
            "{:.0} MiB outside, {:.0} MiB in all (table {:.0} MiB on disk, dump {:.0} MiB)",
            mib(outside),
            mib(drill),
            mib(source_bytes),
            mib(dump_bytes)
        ),
        drill > 0 && outside <= 512 << 20,
    );
    for sub in ["upload", "upload (following)", "load"] {
        if let Some(k) = peaks.rss_kib.get(sub) {
            let m = *k as f64 / 1024.0;
            goals.check(
                &format!("{e} {sub} step peak RSS at scale: ≤ 48 MiB"),
                format!("{m:.1} MiB"),
                m <= 48.0,
            );
        }
    }
}
