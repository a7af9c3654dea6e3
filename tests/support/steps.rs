//! Runs the two steps the CronJobs run, on this machine: the operator binary's
//! `dump` (with the test bed's dump tools) and `upload` subcommands, against a
//! staging folder that stands in for the PVC.

use super::minio::{BUCKET, Minio};
use super::process::{bin, bin_dir};
use dbbackup_operator::api::{Compression, Engine};
use dbbackup_operator::jobresult::JobResult;
use dbbackup_operator::names;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A database to dump: where it is and how to log in.
#[derive(Clone, Debug)]
pub struct Source {
    pub engine: Engine,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
}

/// Writes `size` bytes of incompressible-looking data without holding them in memory.
pub fn write_big_file(path: &Path, size: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1024 * 1024];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut written = 0;
    while written < size {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = (size - written).min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        written += n as u64;
    }
    f.flush().unwrap();
}

/// A staging folder, as the PVC would be, plus the termination logs of each run.
pub struct Staging {
    pub dir: tempfile::TempDir,
}

impl Staging {
    pub fn new() -> Staging {
        Staging {
            dir: tempfile::Builder::new()
                .prefix("dbbackup-staging-")
                .tempdir()
                .unwrap(),
        }
    }

    /// A staging folder on the file system of `parent` (its size sets the
    /// part size of an upload that follows a dump).
    pub fn new_in(parent: &Path) -> Staging {
        Staging {
            dir: tempfile::Builder::new()
                .prefix("dbbackup-staging-")
                .tempdir_in(parent)
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where a finished dump waits for the uploader, with its folder created.
    pub fn staged_dump(&self) -> PathBuf {
        let dumps = self.path().join("dumps");
        std::fs::create_dir_all(&dumps).unwrap();
        dumps.join("datadump.sql")
    }

    /// The staged dump an upload failed to send: where a failed upload
    /// leaves it (claimed, for the next upload to send first), or unclaimed.
    pub fn kept_dump(&self) -> PathBuf {
        let dumps = self.path().join("dumps");
        let claimed = dumps.join(".uploading-datadump.sql");
        if claimed.exists() {
            claimed
        } else {
            dumps.join("datadump.sql")
        }
    }

    /// The files in `dumps/`, but the two lock files (empty, and kept) and
    /// the checksum record of a dump not yet sent (removed by its upload).
    pub fn dumps(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path().join("dumps"))
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.retain(|f| {
            f.extension()
                .is_none_or(|e| e != "lock" && e != "crc64nvme")
        });
        files.sort();
        files
    }

    /// Every line of every log file, in file order.
    pub fn log_lines(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path().join("logs"))
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Asserts every log line has the original pipeline's shape.
    pub fn assert_log_format(&self) {
        let lines = self.log_lines();
        assert!(!lines.is_empty(), "no log lines");
        for line in lines {
            let bytes = line.as_bytes();
            let shape = line.len() > 20
                && bytes[..10].iter().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        *b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
                && bytes[10] == b','
                && bytes[11..19].iter().enumerate().all(|(i, b)| {
                    if i == 2 || i == 5 {
                        *b == b':'
                    } else {
                        b.is_ascii_digit()
                    }
                })
                && bytes[19] == b',';
            assert!(
                shape,
                "log line does not match ^\\d{{4}}-\\d{{2}}-\\d{{2}},\\d{{2}}:\\d{{2}}:\\d{{2}},.+$: {line:?}"
            );
        }
    }
}

/// What one step run printed and reported.
pub struct StepRun {
    pub output: Output,
    pub result: Option<JobResult>,
}

impl StepRun {
    pub fn succeeded(&self) -> bool {
        self.output.status.success()
    }

    /// stdout and stderr together, for secret scans and failure messages.
    pub fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

fn path_env() -> String {
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub fn finish(mut cmd: Command, termlog: &Path) -> StepRun {
    let output = cmd.output().unwrap();
    let result = std::fs::read_to_string(termlog)
        .ok()
        .and_then(|t| JobResult::parse(&t));
    let _ = std::fs::remove_file(termlog);
    StepRun { output, result }
}

/// The dump CronJob's step, the operator binary's `dump` subcommand, against
/// `src` with the test bed's dump tools, and the path of its termination log.
pub fn dump_command(
    src: &Source,
    staging: &Staging,
    compression: Compression,
) -> (Command, PathBuf) {
    // Fails loudly here if the test bed lacks the dump tool.
    bin(if src.engine == Engine::Postgres {
        "pg_dump"
    } else {
        "mariadb-dump"
    });
    let termlog = staging
        .path()
        .with_extension(format!("dump-termination-log-{}", rand_suffix()));
    let mut cmd = Command::new(super::process::operator_bin());
    cmd.arg("dump")
        .arg(format!("--engine={}", src.engine.as_str()))
        .arg("--host=127.0.0.1")
        .arg(format!("--port={}", src.port))
        .args((!src.database.is_empty()).then(|| format!("--database={}", src.database)))
        .arg(format!("--compression={}", compression.as_str()))
        .arg(format!("--staging-dir={}", staging.path().display()))
        .arg(format!("--termination-log={}", termlog.display()))
        .arg("--time-zone=UTC")
        .env_clear()
        .env("PATH", path_env())
        .env("HOME", "/tmp")
        .env(names::USER_ENV, &src.user)
        .env(names::password_env(src.engine), &src.password);
    (cmd, termlog)
}

/// Runs the dump CronJob's step against `src`.
pub fn run_dump(src: &Source, staging: &Staging, compression: Compression) -> StepRun {
    let (cmd, termlog) = dump_command(src, staging, compression);
    finish(cmd, &termlog)
}

/// Options of one upload run.
#[derive(Clone, Debug, Default)]
pub struct UploadOpts {
    pub prefix: String,
    pub secret_key: Option<String>,
    pub extra_args: Vec<String>,
    pub endpoint: Option<String>,
}

pub fn upload_command(minio: &Minio, staging: &Staging, opts: &UploadOpts) -> (Command, PathBuf) {
    let termlog = staging
        .path()
        .with_extension(format!("upload-termination-log-{}", rand_suffix()));
    let mut cmd = store_command(minio, "upload");
    cmd.arg(format!("--staging-dir={}", staging.path().display()))
        .arg(format!("--termination-log={}", termlog.display()))
        .arg(format!("--prefix={}", opts.prefix))
        .arg("--time-zone=UTC")
        .args(&opts.extra_args);
    if let Some(endpoint) = &opts.endpoint {
        cmd.env("DBBACKUP_ENDPOINT", endpoint);
    }
    if let Some(key) = &opts.secret_key {
        cmd.env("AWS_SECRET_ACCESS_KEY", key);
    }
    (cmd, termlog)
}

/// The operator binary's `subcommand` with the environment its job pods get
/// for `minio`'s bucket (bucket, endpoint, keys), and nothing else.
pub fn store_command(minio: &Minio, subcommand: &str) -> Command {
    store_command_of(&super::process::operator_bin(), minio, subcommand)
}

/// As `store_command`, running the operator binary at `program`.
pub fn store_command_of(program: &Path, minio: &Minio, subcommand: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg(subcommand)
        .env_clear()
        .env("PATH", path_env())
        .env("HOME", "/tmp")
        .env("DBBACKUP_BUCKET", BUCKET)
        .env("DBBACKUP_ENDPOINT", &minio.endpoint)
        .env("AWS_ACCESS_KEY_ID", &minio.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &minio.secret_key)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

fn rand_suffix() -> String {
    super::minio::random_token(8)
}

/// Runs the upload CronJob's command against `minio`.
pub fn run_upload(minio: &Minio, staging: &Staging, opts: &UploadOpts) -> StepRun {
    let (cmd, termlog) = upload_command(minio, staging, opts);
    finish(cmd, &termlog)
}

/// Today's date folder in UTC, as the uploader names it for a dump made now.
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// The verify Job's drill step, the operator binary's `verify` subcommand,
/// on object `key` of `minio` (streamed in as the pod does), with the server
/// binaries of the test bed and `checks` as JSON. It runs as the
/// unprivileged server user, as it does in the database image, in a scratch
/// directory of its own.
pub fn run_verify(engine: Engine, minio: &Minio, key: &str, checks: &[&str]) -> StepRun {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::Builder::new()
        .prefix("dbbackup-drill-")
        .tempdir()
        .unwrap();
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    super::process::chown_to_server_user(&work);
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let termlog = scratch.path().join("termination-log");
    // The package paths of the server and its client: the test bed's links
    // sit under root's home, which the server user cannot traverse.
    let tools: &[&str] = match engine {
        Engine::Postgres => &["initdb", "postgres", "psql"],
        Engine::Mariadb | Engine::Mysql => &["mariadb-install-db", "mariadbd", "mariadb"],
    };
    let mut dirs: Vec<String> = tools
        .iter()
        .map(|t| {
            let path = super::process::server_bin(t);
            path.parent().unwrap().display().to_string()
        })
        .collect();
    dirs.dedup();
    // The binary too: cargo's target directory is under root's home.
    let binary = scratch.path().join("dbbackup-operator");
    std::fs::copy(super::process::operator_bin(), &binary).unwrap();
    let mut cmd = store_command_of(&binary, minio, "verify");
    cmd.arg(format!("--engine={}", engine.as_str()))
        .arg(format!("--key={key}"))
        .arg(format!("--work-dir={}", work.display()))
        .arg(format!("--termination-log={}", termlog.display()))
        .args(checks.iter().map(|c| format!("--check={c}")))
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", dirs.join(":")),
        );
    super::process::as_server_user(&mut cmd);
    finish(cmd, &termlog)
}

/// Runs the `fetch` step of `key` from `minio` into `dir`/restore.sql;
/// its exit status and result.
pub fn run_fetch(minio: &Minio, key: &str, dir: &Path) -> (bool, JobResult) {
    let (out, termlog) = (dir.join("restore.sql"), dir.join("termination-log"));
    let run = store_command(minio, "fetch")
        .arg(format!("--key={key}"))
        .arg(format!("--out={}", out.display()))
        .arg(format!("--termination-log={}", termlog.display()))
        .output()
        .unwrap();
    let result = JobResult::parse(&std::fs::read_to_string(&termlog).unwrap()).unwrap();
    (run.status.success(), result)
}
