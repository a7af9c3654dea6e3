//! Runs the two steps the CronJobs run, on this machine: the operator binary's
//! `dump` (with the test bed's dump tools) and `upload` subcommands.

use super::databases::{MariaDb, Postgres, run_ok};
use super::minio::Minio;
use super::process::{bin, bin_dir};
use dbbackup_operator::api::{Compression, Engine};
use dbbackup_operator::jobresult::JobResult;
use dbbackup_operator::jobs::tool;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BUCKET: &str = "backups";

/// A database to dump: where it is and how to log in.
#[derive(Clone, Debug)]
pub struct Source {
    pub engine: Engine,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl Source {
    pub fn mariadb(db: &MariaDb, database: &str) -> Source {
        Source {
            engine: Engine::Mariadb,
            port: db.port,
            database: database.into(),
            user: db.user.clone(),
            password: db.password.clone(),
        }
    }

    pub fn postgres(pg: &Postgres, database: &str) -> Source {
        Source {
            engine: Engine::Postgres,
            port: pg.port,
            database: database.into(),
            user: pg.user.clone(),
            password: pg.password.clone(),
        }
    }
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

    /// The files in `dumps/`, but the two lock files (empty, and kept).
    pub fn dumps(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path().join("dumps"))
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.retain(|f| f.extension().is_none_or(|e| e != "lock"));
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

fn finish(mut cmd: Command, termlog: &Path) -> StepRun {
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
        .arg(format!("--database={}", src.database))
        .arg(format!("--compression={}", compression.as_str()))
        .arg(format!("--staging-dir={}", staging.path().display()))
        .arg(format!("--termination-log={}", termlog.display()))
        .arg("--time-zone=UTC")
        .env_clear()
        .env("PATH", path_env())
        .env("HOME", "/tmp")
        .env(tool::USER_ENV, &src.user)
        .env(tool::password_env(src.engine), &src.password);
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
    let mut cmd = Command::new(super::process::operator_bin());
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

/// Every key in the bucket, sorted.
pub async fn bucket_keys(minio: &Minio) -> Vec<String> {
    let s3 = minio.s3_client().await;
    let mut keys = vec![];
    let mut pages = s3.list_objects_v2().bucket(BUCKET).into_paginator().send();
    while let Some(page) = pages.next().await {
        keys.extend(
            page.unwrap()
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
    }
    keys.sort();
    keys
}

/// Asserts no multipart upload is left open in the bucket (every failure aborts its own).
pub async fn assert_no_pending_uploads(minio: &Minio) {
    let pending = minio
        .s3_client()
        .await
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert!(
        pending.uploads().is_empty(),
        "orphan multipart uploads: {:?}",
        pending.uploads()
    );
}

pub async fn create_bucket(minio: &Minio) {
    minio
        .s3_client()
        .await
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
}

pub async fn get_object(minio: &Minio, key: &str) -> Vec<u8> {
    let out = minio
        .s3_client()
        .await
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// Today's date folder in UTC, as the uploader names it for a dump made now.
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// A shop schema: six tables with foreign keys, a few thousand rows, and text
/// that tests quoting (quotes, backslashes, newlines, unicode, NULLs).
pub fn shop_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => POSTGRES_SHOP,
        Engine::Mariadb | Engine::Mysql => MARIADB_SHOP,
    }
}

const MARIADB_SHOP: &str = r#"
CREATE TABLE customers (id INT PRIMARY KEY, name TEXT NOT NULL, email TEXT);
CREATE TABLE addresses (id INT PRIMARY KEY, customer_id INT NOT NULL REFERENCES customers(id), street TEXT);
CREATE TABLE products (id INT PRIMARY KEY, title TEXT NOT NULL, price DECIMAL(10,2) NOT NULL);
CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT NOT NULL REFERENCES customers(id), note TEXT);
CREATE TABLE order_items (id INT PRIMARY KEY, order_id INT NOT NULL REFERENCES orders(id), product_id INT NOT NULL REFERENCES products(id), qty INT NOT NULL);
CREATE TABLE payments (id INT PRIMARY KEY, order_id INT NOT NULL REFERENCES orders(id), amount DECIMAL(10,2));
INSERT INTO customers SELECT seq, CONCAT('Customer ''', seq, ''' \\ é ✓'), IF(seq % 7 = 0, NULL, CONCAT('c', seq, '@example.com')) FROM seq_1_to_1000;
INSERT INTO addresses SELECT seq, seq, CONCAT('line one', CHAR(10), 'line two ', seq) FROM seq_1_to_1000;
INSERT INTO products SELECT seq, CONCAT('Product ', seq), seq * 1.25 FROM seq_1_to_200;
INSERT INTO orders SELECT seq, (seq % 1000) + 1, IF(seq % 3 = 0, NULL, CONCAT('note "', seq, '"')) FROM seq_1_to_2000;
INSERT INTO order_items SELECT seq, (seq % 2000) + 1, (seq % 200) + 1, (seq % 5) + 1 FROM seq_1_to_5000;
INSERT INTO payments SELECT seq, seq, seq * 2.5 FROM seq_1_to_2000;
"#;

const POSTGRES_SHOP: &str = r#"
CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE addresses (id integer PRIMARY KEY, customer_id integer NOT NULL REFERENCES customers(id), street text);
CREATE TABLE products (id integer PRIMARY KEY, title text NOT NULL, price numeric(10,2) NOT NULL);
CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL REFERENCES customers(id), note text);
CREATE TABLE order_items (id integer PRIMARY KEY, order_id integer NOT NULL REFERENCES orders(id), product_id integer NOT NULL REFERENCES products(id), qty integer NOT NULL);
CREATE TABLE payments (id integer PRIMARY KEY, order_id integer NOT NULL REFERENCES orders(id), amount numeric(10,2));
INSERT INTO customers SELECT s, 'Customer ''' || s || ''' \ é ✓', CASE WHEN s % 7 = 0 THEN NULL ELSE 'c' || s || '@example.com' END FROM generate_series(1, 1000) s;
INSERT INTO addresses SELECT s, s, 'line one' || chr(10) || 'line two ' || s FROM generate_series(1, 1000) s;
INSERT INTO products SELECT s, 'Product ' || s, s * 1.25 FROM generate_series(1, 200) s;
INSERT INTO orders SELECT s, (s % 1000) + 1, CASE WHEN s % 3 = 0 THEN NULL ELSE 'note "' || s || '"' END FROM generate_series(1, 2000) s;
INSERT INTO order_items SELECT s, (s % 2000) + 1, (s % 200) + 1, (s % 5) + 1 FROM generate_series(1, 5000) s;
INSERT INTO payments SELECT s, s, s * 2.5 FROM generate_series(1, 2000) s;
"#;

/// Creates `database` with the shop schema and data.
pub fn load_shop_mariadb(db: &MariaDb, database: &str) {
    db.create_database(database);
    db.query(database, shop_sql(Engine::Mariadb));
}

pub fn load_shop_postgres(pg: &Postgres, database: &str) {
    pg.create_database(database);
    pg.query(database, shop_sql(Engine::Postgres));
}

pub const SHOP_TABLES: [&str; 6] = [
    "customers",
    "addresses",
    "products",
    "orders",
    "order_items",
    "payments",
];

/// Row count and a content checksum per table, for comparing a restore with its source.
pub fn fingerprint_mariadb(db: &MariaDb, database: &str) -> Vec<(String, String)> {
    SHOP_TABLES
        .iter()
        .map(|t| {
            let count = db.query(database, &format!("SELECT COUNT(*) FROM {t}"));
            let sum = db.query(database, &format!("CHECKSUM TABLE {t} EXTENDED"));
            let sum = sum
                .split_whitespace()
                .last()
                .unwrap_or_default()
                .to_string();
            (t.to_string(), format!("{count}/{sum}"))
        })
        .collect()
}

pub fn fingerprint_postgres(pg: &Postgres, database: &str) -> Vec<(String, String)> {
    SHOP_TABLES
        .iter()
        .map(|t| {
            let v = pg.query(
                database,
                &format!("SELECT count(*) || '/' || md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM {t} x"),
            );
            (t.to_string(), v)
        })
        .collect()
}

/// Restores a plain SQL dump into `database` (created first).
pub fn restore_mariadb(db: &MariaDb, database: &str, sql: &[u8]) {
    db.create_database(database);
    let path = db.dir().join(format!("{database}.sql"));
    std::fs::write(&path, sql).unwrap();
    run_ok(
        db.client(database)
            .stdin(std::fs::File::open(&path).unwrap()),
    );
}

pub fn restore_postgres(pg: &Postgres, database: &str, sql: &[u8]) {
    pg.create_database(database);
    let path =
        std::env::temp_dir().join(format!("dbbackup-restore-{}-{database}.sql", rand_suffix()));
    std::fs::write(&path, sql).unwrap();
    let out = run_ok(pg.psql(database).arg("-f").arg(&path));
    let _ = std::fs::remove_file(&path);
    drop(out);
}
