//! Benchmarks with printed figures, written to `bench/results.md`:
//!
//! 1. upload: our `upload` subcommand against boto3's `upload_file` and
//!    `aws s3 cp`, interleaved, on the loopback MinIO, with peak RSS;
//! 2. transfer: our `upload` and `fetch` against `mc cp` up and down
//!    (`bench/transfer.rs`);
//! 3. levels: zstd and gzip levels on dump-like SQL (`bench/levels.rs`);
//! 4. dump: the `dump` subcommand against a bare `mariadb-dump > file`, and
//!    with zstd against `mariadb-dump | zstd`;
//! 5. backup: dump and upload one after the other, and overlapped (an
//!    upload that follows the dump), against the bare dump and `mc cp`
//!    (`bench/backup.rs`; `BENCH_BACKUP_ROWS` rows of 1 KiB, default 1,000,000);
//! 6. large: on the real node, a database of `BENCH_LARGE_GIB` GiB of table
//!    data per engine (default 10) backed up, drilled and restored by the
//!    operator, against dd, the bare tools and `mc cp` (`bench/large.rs`);
//! 7. scale: the operator binary against the test-bed apiserver with 100,
//!    1,000 and 3,000 resources: convergence time, RSS, and the writes of a
//!    forced full resync, from the operator's own request counter.
//!
//! Run with `make bench` (which installs boto3 and awscli first), or
//! `cargo bench --bench bench` with `BENCH_PYTHON` pointing at a Python that
//! has both. `BENCH_SIZES` (MiB, default `256,2048,4096`; `BENCH_TRANSFER_SIZES` for transfer,
//! default `1024,4096`), `BENCH_REPS`
//! (default 5), `BENCH_SCALES` (default `100,1000,3000`) and `BENCH_ONLY`
//! (`upload`, `transfer`, `dump`, `backup`, `levels`, `verify`, `large` or `scale`) narrow a run; the report holds what ran.
//! `BENCH_STORES` (default `disk,tmpfs`) says where MinIO keeps its data for
//! the upload runs. `BENCH_UPLOAD_ARGS` adds flags to our uploader (tuning runs, e.g.
//! `--concurrency=8 --part-size-mib=16`).
//! Nothing here asserts a timing.

#[path = "bench/backup.rs"]
mod backup;
#[path = "bench/large.rs"]
mod large;
#[path = "bench/levels.rs"]
mod levels;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "bench/transfer.rs"]
mod transfer;

use dbbackup_operator::api::Compression;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::k8s::*;
use support::minio::*;
use support::operator::*;
use support::steps::*;
use support::*;

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().parse().expect("a number"))
        .collect()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One measured run: wall seconds, peak RSS in MiB, user + system CPU seconds.
struct Run {
    secs: f64,
    rss_mib: f64,
    cpu_secs: f64,
}

/// Runs `cmd` under GNU time; panics with its output if it fails.
fn timed(cmd: &Command) -> Run {
    let m = measure::run_measured(Path::new(cmd.get_program()), cmd);
    assert!(
        m.output.status.success(),
        "{:?} failed:\n{}{}",
        cmd.get_program(),
        String::from_utf8_lossy(&m.output.stdout),
        String::from_utf8_lossy(&m.output.stderr)
    );
    Run {
        secs: m.wall.as_secs_f64(),
        rss_mib: m.max_rss_kib as f64 / 1024.0,
        cpu_secs: m.cpu_secs,
    }
}

fn release_binary() -> PathBuf {
    // The bench profile builds the binary next to this benchmark.
    PathBuf::from(env!("CARGO_BIN_EXE_dbbackup-operator"))
}

fn python() -> String {
    std::env::var("BENCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn aws_cli() -> PathBuf {
    let py = PathBuf::from(python());
    let aws = py.with_file_name("aws");
    assert!(
        aws.exists(),
        "{} not found: `make bench` installs boto3 and awscli",
        aws.display()
    );
    aws
}

async fn empty_bucket(minio: &Minio) {
    let s3 = minio.s3_client().await;
    for key in bucket_keys(minio).await {
        s3.delete_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap();
    }
}

struct Row {
    label: String,
    values: Vec<String>,
}

/// The issue's goals, judged from this run's own figures.
#[derive(Default)]
struct Goals {
    rows: Vec<(String, String, bool)>,
}

impl Goals {
    fn check(&mut self, goal: &str, measured: String, met: bool) {
        self.rows.push((goal.to_string(), measured, met));
    }

    fn write(&self, report: &mut String) {
        if self.rows.is_empty() {
            return;
        }
        writeln!(
            report,
            "## Goals\n\nJudged by the benchmark from the figures above.\n\n| goal | measured | verdict |\n| --- | --- | --- |"
        )
        .unwrap();
        for (goal, measured, met) in &self.rows {
            let verdict = if *met { "met" } else { "not met" };
            writeln!(report, "| {goal} | {measured} | {verdict} |").unwrap();
        }
        writeln!(report).unwrap();
    }
}

/// Where MinIO keeps its data. On this machine's virtual disk every tool
/// runs at the disk's (varying) write speed, which hides the uploaders'
/// differences; on tmpfs the uploader and MinIO share only the CPU.
#[derive(Clone, Copy)]
enum StoreOn {
    Disk,
    Tmpfs,
}

impl StoreOn {
    fn all() -> Vec<StoreOn> {
        std::env::var("BENCH_STORES")
            .unwrap_or_else(|_| "disk,tmpfs".into())
            .split(',')
            .map(|s| match s.trim() {
                "disk" => StoreOn::Disk,
                "tmpfs" => StoreOn::Tmpfs,
                other => panic!("BENCH_STORES: unknown store {other:?} (disk, tmpfs)"),
            })
            .collect()
    }

    fn parent(self) -> PathBuf {
        match self {
            StoreOn::Disk => std::env::temp_dir(),
            StoreOn::Tmpfs => PathBuf::from("/dev/shm"),
        }
    }

    fn short(self) -> &'static str {
        match self {
            StoreOn::Disk => "disk",
            StoreOn::Tmpfs => "tmpfs",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            StoreOn::Disk => "MinIO's data on the machine's disk (the temp directory)",
            StoreOn::Tmpfs => {
                "MinIO's data on tmpfs (`/dev/shm`), so that the disk is out of the measurement"
            }
        }
    }
}

/// User plus system CPU seconds a process has used so far.
fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}

/// MinIO refuses writes when its drive runs low, midway through a run; say so first.
fn assert_free_space(dir: &Path, needed: u64) {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df printed no free space for {}", dir.display()));
    assert!(
        avail >= needed,
        "{} has {} MiB free; the upload runs need {} MiB (MinIO keeps a reserve too)",
        dir.display(),
        avail >> 20,
        needed >> 20
    );
}

async fn bench_upload(report: &mut String, goals: &mut Goals, store: StoreOn) {
    let sizes = env_list("BENCH_SIZES", "256,2048,4096");
    let reps = env_list("BENCH_REPS", "5")[0] as usize;
    let largest = sizes.iter().max().copied().unwrap_or(0) << 20;
    assert_free_space(&store.parent(), 3 * largest);
    let minio = Minio::start_in(&store.parent(), "127.0.0.1");
    create_bucket(&minio).await;
    let work = tempfile::tempdir().unwrap();
    let tools = ["ours", "boto3", "awscli"];
    let mut rows = vec![];
    for size in sizes {
        let source = work.path().join(format!("dump-{size}.sql"));
        write_big_file(&source, size << 20);
        let mut secs = vec![vec![]; tools.len()];
        let mut rss = vec![vec![]; tools.len()];
        let mut cpu = vec![vec![]; tools.len()];
        let mut store_cpu = vec![vec![]; tools.len()];
        for rep in 0..reps {
            for (i, tool) in tools.iter().enumerate() {
                let staging = Staging::new();
                let dump = staging.staged_dump();
                std::fs::hard_link(&source, &dump).unwrap();
                let cmd = match *tool {
                    "ours" => {
                        let opts = UploadOpts {
                            extra_args: std::env::var("BENCH_UPLOAD_ARGS")
                                .map(|a| a.split_whitespace().map(str::to_string).collect())
                                .unwrap_or_default(),
                            ..Default::default()
                        };
                        let (ours, _) = upload_command(&minio, &staging, &opts);
                        let mut cmd = Command::new(release_binary());
                        cmd.args(ours.get_args());
                        for (k, v) in ours.get_envs() {
                            if let Some(v) = v {
                                cmd.env(k, v);
                            }
                        }
                        cmd
                    }
                    "boto3" => {
                        let mut cmd = Command::new(python());
                        cmd.arg("-c")
                            .arg(
                                "import boto3, sys\n\
                                 s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')\n\
                                 s3.upload_file(sys.argv[2], sys.argv[3], sys.argv[4])",
                            )
                            .arg(&minio.endpoint)
                            .arg(&dump)
                            .arg(BUCKET)
                            .arg(format!("boto3/{size}-{rep}.sql"));
                        cmd
                    }
                    _ => {
                        let mut cmd = Command::new(aws_cli());
                        cmd.args(["s3", "cp", "--only-show-errors", "--endpoint-url"])
                            .arg(&minio.endpoint)
                            .arg(&dump)
                            .arg(format!("s3://{BUCKET}/awscli/{size}-{rep}.sql"));
                        cmd
                    }
                };
                let mut cmd = cmd;
                cmd.env("AWS_ACCESS_KEY_ID", &minio.access_key)
                    .env("AWS_SECRET_ACCESS_KEY", &minio.secret_key)
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .env("HOME", work.path());
                let minio_before = process_cpu_secs(minio.pid());
                let run = timed(&cmd);
                let minio_cpu = process_cpu_secs(minio.pid()) - minio_before;
                println!(
                    "upload ({}) {size} MiB {tool} run {}: {:.2} s, {:.1} MiB RSS, {:.2} s CPU, MinIO {minio_cpu:.2} s CPU",
                    store.short(),
                    rep + 1,
                    run.secs,
                    run.rss_mib,
                    run.cpu_secs
                );
                store_cpu[i].push(minio_cpu);
                secs[i].push(run.secs);
                rss[i].push(run.rss_mib);
                cpu[i].push(run.cpu_secs);
                empty_bucket(&minio).await;
                minio.purge_trash();
            }
        }
        std::fs::remove_file(&source).unwrap();
        let med: Vec<f64> = secs.iter().map(|s| median(s)).collect();
        let mibps: Vec<f64> = med.iter().map(|m| size as f64 / m).collect();
        let cpu: Vec<f64> = cpu.iter().map(|c| median(c)).collect();
        let store_cpu: Vec<f64> = store_cpu.iter().map(|c| median(c)).collect();
        let peak: Vec<f64> = rss
            .iter()
            .map(|r| r.iter().cloned().fold(0.0, f64::max))
            .collect();
        let on = store.short();
        let (vs_boto3, vs_awscli) = (mibps[0] / mibps[1], mibps[0] / mibps[2]);
        goals.check(
            &format!("upload {size} MiB ({on}): ≥ 1.3× boto3"),
            format!("{vs_boto3:.2}×"),
            vs_boto3 >= 1.3,
        );
        goals.check(
            &format!("upload {size} MiB ({on}): ≥ 1.0× awscli"),
            format!("{vs_awscli:.2}×"),
            vs_awscli >= 1.0,
        );
        goals.check(
            &format!("uploader peak RSS at {size} MiB ({on}): ≤ 48 MiB"),
            format!("{:.1} MiB", peak[0]),
            peak[0] <= 48.0,
        );
        rows.push(Row {
            label: format!("{size} MiB"),
            values: vec![
                format!("{:.2} s ({:.0} MiB/s)", med[0], mibps[0]),
                format!("{:.2} s ({:.0} MiB/s)", med[1], mibps[1]),
                format!("{:.2} s ({:.0} MiB/s)", med[2], mibps[2]),
                format!("{vs_boto3:.2}×"),
                format!("{vs_awscli:.2}×"),
                format!("{:.1} / {:.1} / {:.1}", peak[0], peak[1], peak[2]),
                format!("{:.1} / {:.1} / {:.1}", cpu[0], cpu[1], cpu[2]),
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    store_cpu[0], store_cpu[1], store_cpu[2]
                ),
            ],
        });
    }
    writeln!(
        report,
        "## Upload to the loopback MinIO, {}\n\n{reps} interleaved runs of each tool per size (ours, boto3, awscli, ours, …); medians; \
         peak RSS is the largest over the runs, CPU is user + system time of the tool alone (`/usr/bin/time`), \
         MinIO CPU is the server's user + system time during the tool's run (`/proc/<pid>/stat`); the machine has 2 cores for both. \
         Ours: default settings (8 MiB parts or larger, 3 in flight, each part with its CRC64/NVME and the object's full CRC64/NVME \
         confirmed afterwards, unsigned payload). \
         boto3 `upload_file` and `aws s3 cp` with their default transfer settings.\n\n\
         | size | ours | boto3 | awscli | ours ÷ boto3 | ours ÷ awscli | peak RSS MiB (ours / boto3 / awscli) | CPU s (ours / boto3 / awscli) | MinIO CPU s (ours / boto3 / awscli) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        store.describe()
    )
    .unwrap();
    for r in rows {
        writeln!(report, "| {} | {} |", r.label, r.values.join(" | ")).unwrap();
    }
    writeln!(report).unwrap();
}

/// MariaDB with the shop data and about 300 MB of rows more, in table `big`.
fn big_mariadb() -> Database {
    let db = Database::with_shop(dbbackup_operator::api::Engine::Mariadb);
    db.query(
        "shop",
        "CREATE TABLE big (id INT PRIMARY KEY, body TEXT); \
         INSERT INTO big SELECT seq, REPEAT(MD5(seq), 32) FROM seq_1_to_300000;",
    );
    db
}

fn bench_dump(report: &mut String, goals: &mut Goals) {
    let reps = env_list("BENCH_REPS", "5")[0] as usize;
    let db = big_mariadb();
    let src = db.source("shop");
    let work = tempfile::tempdir().unwrap();
    writeln!(
        report,
        "## Dump step\n\nThe `dump` subcommand (the tool run with an argv, compression in process, \
         a partial file of its own, fsync, rename, log line, termination message) against the bare \
         tool with the same flags, MariaDB on loopback, {reps} interleaved runs, medians.\n\n\
         | compression | size | ours | bare | ratio | goal |\n| --- | --- | --- | --- | --- | --- |"
    )
    .unwrap();
    // (compression, the bare command's tail, goal): zstd in process against
    // the tool piped to the zstd CLI at the same level (3).
    let cases = [
        (Compression::None, "> {out}", 1.05),
        (Compression::Zstd, "| zstd -q -3 -c > {out}", 1.0),
    ];
    for (compression, tail, goal) in cases {
        let (mut ours_secs, mut bare_secs) = (vec![], vec![]);
        let mut size = 0;
        let name = format!("datadump.sql{}", compression.extension());
        for rep in 0..reps {
            let staging = Staging::new();
            let (cmd, _) = dump_command(&src, &staging, compression);
            let s = timed(&cmd).secs;
            size = std::fs::metadata(staging.path().join("dumps").join(&name))
                .unwrap()
                .len();
            ours_secs.push(s);
            let out = work.path().join(&name);
            let tail = tail.replace("{out}", &out.display().to_string());
            let mut bare = Command::new("/bin/sh");
            bare.arg("-c")
                .arg(format!(
                    "mariadb-dump --host=127.0.0.1 --port={} --user=\"$DB_USER\" --default-character-set=utf8mb4 --single-transaction --quick --routines --events --triggers -- shop {tail}",
                    src.port
                ))
                .env("PATH", format!("{}:/usr/bin:/bin", process::bin_dir().display()))
                .env("DB_USER", &src.user)
                .env("MYSQL_PWD", &src.password);
            let b = timed(&bare).secs;
            bare_secs.push(b);
            println!(
                "dump {} run {}: ours {s:.2} s, bare {b:.2} s",
                compression.as_str(),
                rep + 1
            );
        }
        let (o, b) = (median(&ours_secs), median(&bare_secs));
        // `|` escaped: the name sits in Markdown table cells.
        let bare_name =
            format!("`mariadb-dump {}`", tail.replace("{out}", "file")).replace('|', "\\|");
        goals.check(
            &format!(
                "dump step, {}: ≤ {goal:.2}× {bare_name}",
                compression.as_str()
            ),
            format!("{:.3}×", o / b),
            o / b <= goal,
        );
        writeln!(
            report,
            "| {} | {:.0} MiB | {o:.2} s | {b:.2} s ({bare_name}) | {:.3}× | ≤ {goal:.2}× |",
            compression.as_str(),
            size as f64 / 1048576.0,
            o / b
        )
        .unwrap();
    }
    writeln!(report).unwrap();
}

/// A restore drill of a ~300 MiB MariaDB dump (the `verify` step: a
/// throwaway server started, the dump streamed in from MinIO, the tables
/// counted, one check) against the restore's own `load` step streaming the
/// same dump into a fresh database on a running server.
async fn bench_verify(report: &mut String) {
    let reps = env_list("BENCH_REPS", "5")[0].min(3) as usize;
    let db = big_mariadb();
    let src = db.source("shop");
    let staging = Staging::new();
    let run = run_dump(&src, &staging, Compression::None);
    assert!(run.succeeded(), "{}", run.text());
    let dump = staging.staged_dump();
    let size = std::fs::metadata(&dump).unwrap().len();
    let work = tempfile::tempdir().unwrap();
    let minio = Minio::start();
    create_bucket(&minio).await;
    let key = "bench/datadump1.sql";
    put_object(&minio, key, std::fs::read(&dump).unwrap()).await;
    let (mut drill_secs, mut load_secs) = (vec![], vec![]);
    for rep in 0..reps {
        let start = Instant::now();
        let drill = run_verify(
            src.engine,
            &minio,
            key,
            &[r#"{"query":"SELECT count(*) FROM big","atLeast":300000}"#],
        );
        let d = start.elapsed().as_secs_f64();
        assert!(drill.succeeded(), "{}", drill.text());
        drill_secs.push(d);
        let mut load = store_command(&minio, "load");
        load.arg("--engine=mariadb")
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", src.port))
            .arg(format!("--database=restored{rep}"))
            .arg(format!("--key={key}"))
            .arg(format!(
                "--termination-log={}",
                work.path().join("termination-log").display()
            ))
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", process::bin_dir().display()),
            )
            .env(dbbackup_operator::names::USER_ENV, &src.user)
            .env("MYSQL_PWD", &src.password);
        let l = timed(&load).secs;
        load_secs.push(l);
        println!("verify run {}: drill {d:.1} s, restore {l:.1} s", rep + 1);
    }
    let (d, l) = (median(&drill_secs), median(&load_secs));
    writeln!(
        report,
        "## Restore drill\n\nThe `verify` step on a {:.0} MiB MariaDB dump: a throwaway server \
         initialised and started from the server binaries, the dump loaded, its tables counted, \
         one check; against the restore's `load` step loading the same dump into a fresh database \
         of a running server. {reps} runs each, interleaved, medians.\n\n\
         | dump | drill | restore (`load`) | drill / restore |\n| --- | --- | --- | --- |\n\
         | {:.0} MiB | {d:.1} s | {l:.1} s | {:.2}× |\n",
        size as f64 / 1048576.0,
        size as f64 / 1048576.0,
        d / l
    )
    .unwrap();
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = process::http_get(port, "/metrics")?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

fn writes(port: u16) -> f64 {
    ["POST", "PUT", "PATCH", "DELETE"]
        .iter()
        .map(|v| {
            metric(
                port,
                &format!("dbbackup_kube_requests_total{{verb=\"{v}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib / 1024.0
}

async fn converged(client: &Client, total: usize) -> bool {
    let backups: Api<dbbackup_operator::DatabaseBackup> = Api::all(client.clone());
    let ready = backups
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|db| {
            db.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count();
    if ready < total {
        return false;
    }
    let cronjobs = Api::<CronJob>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let pvcs = Api::<PersistentVolumeClaim>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    cronjobs + pvcs == 3 * total
}

async fn bench_scale(report: &mut String, goals: &mut Goals) {
    let scales = env_list("BENCH_SCALES", "100,1000,3000");
    writeln!(
        report,
        "## Operator scale\n\nThe release operator binary against the test-bed kube-apiserver (same machine), resources spread over 10 \
         namespaces and created before the operator starts. Converged: every resource `Ready=True` and all 3 children per \
         resource exist. Resync: a second operator process started on the converged state reconciles every resource; its writes \
         are POST/PUT/PATCH/DELETE requests from its own `dbbackup_kube_requests_total`.\n\n\
         | resources | converged after | operator RSS after convergence | reconciles in resync | writes in resync |\n\
         | --- | --- | --- | --- | --- |"
    )
    .unwrap();
    for total in scales {
        let total = total as usize;
        let (cp, client) = setup_with(Default::default(), &[]).await;
        for n in 0..10 {
            let ns = format!("team-{n}");
            create_namespace(&client, &ns, &[]).await;
            create_sample_secrets(&client, &ns).await;
        }
        let api =
            |ns: &str| Api::<dbbackup_operator::DatabaseBackup>::namespaced(client.clone(), ns);
        for i in 0..total {
            let ns = format!("team-{}", i % 10);
            let db: dbbackup_operator::DatabaseBackup =
                serde_json::from_value(backup_manifest(&format!("db-{i}"), "postgres")).unwrap();
            api(&ns).create(&PostParams::default(), &db).await.unwrap();
        }
        let start = Instant::now();
        let mut op = OperatorProcess::start(&cp, "operator-0", &[]);
        while !converged(&client, total).await {
            op.process.assert_running();
            assert!(start.elapsed() < Duration::from_secs(900), "not converged");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let took = start.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_mib(op.process.pid());
        op.kill();

        let resync = OperatorProcess::start(&cp, "operator-1", &[]);
        let began = Instant::now();
        while metric(resync.port, "dbbackup_reconciles_total").unwrap_or(0.0) < total as f64 {
            assert!(began.elapsed() < Duration::from_secs(900), "resync stalled");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let reconciles = metric(resync.port, "dbbackup_reconciles_total").unwrap_or(0.0);
        let w = writes(resync.port) as u64;
        println!(
            "scale {total}: converged in {took:.1?}, RSS {rss:.1} MiB; resync {reconciles} reconciles, {w} writes"
        );
        if total == 1000 {
            goals.check(
                "1,000 resources: converged < 60 s",
                format!("{:.1} s", took.as_secs_f64()),
                took < Duration::from_secs(60),
            );
            goals.check(
                "1,000 resources: operator RSS ≤ 64 MiB",
                format!("{rss:.1} MiB"),
                rss <= 64.0,
            );
        }
        goals.check(
            &format!("{total} resources: writes in a forced full resync = 0"),
            w.to_string(),
            w == 0,
        );
        writeln!(
            report,
            "| {total} | {:.1} s | {rss:.1} MiB | {reconciles} | {w} |",
            took.as_secs_f64()
        )
        .unwrap();
        drop(resync);
    }
    writeln!(report).unwrap();
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string))
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores ({cpu}), {}",
        mem.replace("MemTotal:", "memory")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary
    // without it, and must not start a half-hour benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/bench.rs runs under `cargo bench` (or `make bench`) only");
        return;
    }
    let only = std::env::var("BENCH_ONLY").ok();
    let wants = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let mut report = format!(
        "# Benchmarks\n\nMachine: {}. Date: {}.\nReproduce: `make bench` (or `cargo bench --bench bench`; see `benches/bench.rs`).\n\n",
        machine(),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    let mut goals = Goals::default();
    if wants("upload") {
        for store in StoreOn::all() {
            bench_upload(&mut report, &mut goals, store).await;
        }
    }
    if wants("transfer") {
        transfer::bench_transfer(&mut report, &mut goals).await;
    }
    if wants("dump") {
        bench_dump(&mut report, &mut goals);
    }
    if wants("backup") {
        backup::bench_backup(&mut report, &mut goals).await;
    }
    if wants("levels") {
        levels::bench_levels(&mut report, &mut goals);
    }
    if wants("verify") {
        bench_verify(&mut report).await;
    }
    if wants("large") {
        large::bench_large(&mut report, &mut goals).await;
    }
    if wants("scale") {
        bench_scale(&mut report, &mut goals).await;
    }
    goals.write(&mut report);
    println!("\n{report}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results.md");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &report).unwrap();
    println!("written to {}", path.display());
}
