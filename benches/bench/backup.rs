//! A whole backup, dump to proven object, on the steps themselves (no
//! node): the dump step and then the upload step, as a dump used to wait
//! for its upload, against the dump step with an upload that follows it
//! (`upload --follow-dump`, the upload the operator chains to a running
//! dump). References in the same rounds: the bare tool into a file on the
//! same disk, and `mc cp` of that file. The staging folder is on this
//! machine's disk; MinIO keeps its data on tmpfs, out of the measurement.

use super::support::minio::*;
use super::support::steps::*;
use super::support::*;
use super::{Goals, Run, env_list, median, process_cpu_secs, release_binary, timed};
use dbbackup_operator::api::{Compression, Engine};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// A MariaDB server whose database "shop" holds `rows` rows of 1 KiB.
fn database(rows: u64) -> Database {
    let db = Database::with_shop(Engine::Mariadb);
    db.query(
        "shop",
        &format!(
            "CREATE TABLE big (id INT PRIMARY KEY, body TEXT); \
             INSERT INTO big SELECT seq, REPEAT(MD5(seq), 32) FROM seq_1_to_{rows};"
        ),
    );
    db
}

/// The release binary running `cmd`'s subcommand and arguments.
fn released(cmd: &Command) -> Command {
    let mut ours = Command::new(release_binary());
    ours.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => ours.env(k, v),
            None => ours.env_remove(k),
        };
    }
    ours
}

pub async fn bench_backup(report: &mut String, goals: &mut Goals) {
    let rows = env_list("BENCH_BACKUP_ROWS", "1000000")[0];
    let reps = env_list("BENCH_REPS", "5")[0] as usize;
    super::assert_free_space(&std::env::temp_dir(), 3 * rows * 1100);
    let db = database(rows);
    let src = db.source("shop");
    let minio = Minio::start_in(Path::new("/dev/shm"), "127.0.0.1");
    create_bucket(&minio).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("bare.sql");
    let tools = [
        "bare dump to a file",
        "mc cp of that file",
        "dump, then upload",
        "dump with a following upload",
    ];
    let mut runs: Vec<Vec<Run>> = (0..tools.len()).map(|_| vec![]).collect();
    // The servers' CPU in each run: the database's and MinIO's.
    let mut servers: Vec<Vec<f64>> = (0..tools.len()).map(|_| vec![]).collect();
    let server_cpu = || process_cpu_secs(db.pid()) + process_cpu_secs(minio.pid());
    let mut upload_rss = vec![];
    let mut size = 0;
    for rep in 0..reps {
        for (i, tool) in tools.iter().enumerate() {
            let staging = Staging::new();
            let dump = || released(&dump_command(&src, &staging, Compression::None).0);
            let upload = |follow: bool| {
                let extra_args = match follow {
                    true => vec!["--follow-dump".into()],
                    false => vec![],
                };
                let opts = UploadOpts {
                    extra_args,
                    ..Default::default()
                };
                released(&upload_command(&minio, &staging, &opts).0)
            };
            let before = server_cpu();
            let run = match i {
                0 => {
                    let mut bare = Command::new("/bin/sh");
                    bare.arg("-c")
                        .arg(format!(
                            "mariadb-dump --host=127.0.0.1 --port={port} --user=\"$DB_USER\" --default-character-set=utf8mb4 --single-transaction --quick --routines --events --triggers -- shop > {out} && sync {out}",
                            port = src.port,
                            out = file.display()
                        ))
                        .env("PATH", format!("{}:/usr/bin:/bin", process::bin_dir().display()))
                        .env("DB_USER", &src.user)
                        .env("MYSQL_PWD", &src.password);
                    let run = timed(&bare);
                    size = std::fs::metadata(&file).unwrap().len();
                    run
                }
                1 => {
                    let key = format!("test/{BUCKET}/mc/{rep}.sql");
                    let run = timed(&minio.mc_command(&["cp", &file.display().to_string(), &key]));
                    std::fs::remove_file(&file).unwrap();
                    run
                }
                2 => {
                    let d = timed(&dump());
                    let u = timed(&upload(false));
                    upload_rss.push(u.rss_mib);
                    Run {
                        secs: d.secs + u.secs,
                        rss_mib: d.rss_mib.max(u.rss_mib),
                        cpu_secs: d.cpu_secs + u.cpu_secs,
                    }
                }
                _ => {
                    let start = std::time::Instant::now();
                    let (d, u) = std::thread::scope(|s| {
                        let u = s.spawn(|| timed(&upload(true)));
                        let d = timed(&dump());
                        (d, u.join().unwrap())
                    });
                    upload_rss.push(u.rss_mib);
                    Run {
                        secs: start.elapsed().as_secs_f64(),
                        rss_mib: d.rss_mib.max(u.rss_mib),
                        cpu_secs: d.cpu_secs + u.cpu_secs,
                    }
                }
            };
            if i >= 2 {
                assert!(
                    staging.dumps().is_empty(),
                    "{tool} left {:?}",
                    staging.dumps()
                );
            }
            servers[i].push(server_cpu() - before);
            println!(
                "backup {tool} run {}: {:.2} s, {:.2} s CPU, servers {:.2} s CPU",
                rep + 1,
                run.secs,
                run.cpu_secs,
                servers[i].last().unwrap()
            );
            runs[i].push(run);
        }
        super::empty_bucket(&minio).await;
        minio.purge_trash();
    }
    let med = |i: usize| median(&runs[i].iter().map(|r| r.secs).collect::<Vec<_>>());
    let reference = med(0).max(med(1));
    let ratio = med(3) / reference;
    goals.check(
        "backup wall: ≤ 1.15× max(bare dump to a file, mc cp of it)",
        format!("{ratio:.2}×"),
        ratio <= 1.15,
    );
    let peak = upload_rss.iter().copied().fold(0.0, f64::max);
    writeln!(
        report,
        "## Backup: dump and upload overlapped\n\n\
         MariaDB on loopback, {rows} rows of 1 KiB ({:.0} MiB dumped, uncompressed); the staging folder and the \
         bare dump's file on this machine's disk; MinIO's data on tmpfs. {reps} rounds of the four in turn, medians. \
         \"dump, then upload\" is the old path (a dump's upload started when it ended), \"with a following upload\" \
         the upload the operator now chains to a running dump: both steps started together, wall time until both ended \
         (the object proven by HEAD and the staged file deleted).\n\n\
         CPU is user + system time of the tools (ours: both steps), and of the two servers (mariadbd and MinIO, \
         from `/proc/<pid>/stat`); this machine has 2 cores.\n\n\
         | run | wall (median) | ÷ max(bare dump, mc cp) | CPU s (tools) | CPU s (servers) |\n| --- | --- | --- | --- | --- |",
        size as f64 / 1048576.0
    )
    .unwrap();
    for (i, tool) in tools.iter().enumerate() {
        let cpu = median(&runs[i].iter().map(|r| r.cpu_secs).collect::<Vec<_>>());
        writeln!(
            report,
            "| {tool} | {:.2} s | {:.2}× | {cpu:.2} | {:.2} |",
            med(i),
            med(i) / reference,
            median(&servers[i])
        )
        .unwrap();
    }
    writeln!(
        report,
        "\nPeak RSS of the upload step over all runs: {peak:.1} MiB.\n"
    )
    .unwrap();
}
