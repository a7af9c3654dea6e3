//! Real PostgreSQL and MariaDB servers, each in its own temp dir on a free
//! loopback port. Both refuse to run as root, so as root they run as `nobody`.

use super::minio::random_token;
use super::process::{ServerProcess, bin, free_port, port_open_on, wait_until};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use tempfile::TempDir;

const NOBODY: u32 = 65534;

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A temp dir the server's user can enter, and a data dir it owns.
fn server_dirs(prefix: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chown_to_server_user(&data);
    (dir, data)
}

fn chown_to_server_user(path: &Path) {
    if running_as_root() {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

/// A server binary as the unprivileged user can reach it: the cache under
/// root's home is not traversable by `nobody`, the package's own path is.
fn server_bin(name: &str) -> PathBuf {
    std::fs::canonicalize(bin(name)).expect("resolve test-bed binary")
}

fn as_server_user(cmd: &mut Command) -> &mut Command {
    if running_as_root() {
        cmd.uid(NOBODY).gid(NOBODY).env("HOME", "/tmp");
    }
    cmd
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    // Program and args only: the environment may hold passwords.
    assert!(
        out.status.success(),
        "{:?} {:?} failed with {}:\nstdout: {}\nstderr: {}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Postgres {
    process: ServerProcess,
    /// Where it listens: loopback, or the node's address for pods.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    data: PathBuf,
    socket_dir: PathBuf,
    dir: TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        Self::start_on("127.0.0.1")
    }

    pub fn start_on(host: &str) -> Postgres {
        let (dir, data) = server_dirs("dbbackup-postgres-");
        let password = format!("pgPASS{}", random_token(24));
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        chown_to_server_user(&pwfile);
        run_ok(
            as_server_user(&mut Command::new(server_bin("initdb")))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
                .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        std::fs::remove_file(&pwfile).unwrap();
        // Clients from pods come from the node's subnet, not loopback; the
        // server listens only on `host` anyway.
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .unwrap();
        std::io::Write::write_all(&mut hba, b"host all all 0.0.0.0/0 scram-sha-256\n").unwrap();
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).unwrap();
        chown_to_server_user(&socket_dir);
        let port = free_port();
        let process = Self::spawn(dir.path(), &data, &socket_dir, host, port);
        let mut pg = Postgres {
            process,
            host: host.into(),
            port,
            user: "postgres".into(),
            password,
            data,
            socket_dir,
            dir,
        };
        pg.wait_ready();
        pg
    }

    fn spawn(dir: &Path, data: &Path, socket_dir: &Path, host: &str, port: u16) -> ServerProcess {
        let mut cmd = Command::new(server_bin("postgres"));
        as_server_user(&mut cmd)
            .arg("-D")
            .arg(data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg(format!("listen_addresses={host}"))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        // SIGQUIT: immediate shutdown, the postmaster takes its backends down with it.
        ServerProcess::spawn("postgres", cmd, dir, libc::SIGQUIT)
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        let host = self.host.clone();
        let process = &mut self.process;
        wait_until(
            "PostgreSQL to accept connections",
            Duration::from_secs(60),
            || {
                process.assert_running();
                port_open_on(&host, port)
                    && Command::new(bin("pg_isready"))
                        .args(["-h", &host, "-p", &port.to_string()])
                        .output()
                        .map(|o| o.status.success())
                        .unwrap_or(false)
            },
        );
    }

    /// psql against `database` as the superuser over TCP, password from the environment.
    pub fn psql(&self, database: &str) -> Command {
        let mut cmd = Command::new(bin("psql"));
        cmd.args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(["-U", &self.user, "-d", database])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t"])
            .env("PGPASSWORD", &self.password);
        cmd
    }

    /// Runs SQL and returns its trimmed, unaligned output.
    pub fn query(&self, database: &str, sql: &str) -> String {
        let out = run_ok(self.psql(database).arg("-c").arg(sql));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn create_database(&self, name: &str) {
        self.query("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills the postmaster at once, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn restart(&mut self) {
        self.process.stop();
        self.process = Self::spawn(
            self.dir.path(),
            &self.data,
            &self.socket_dir,
            &self.host,
            self.port,
        );
        self.wait_ready();
    }
}

pub struct MariaDb {
    process: ServerProcess,
    /// Where it listens: loopback, or the node's address for pods.
    pub host: String,
    pub port: u16,
    /// A non-root account with all privileges, reachable over TCP with a password.
    pub user: String,
    pub password: String,
    socket: PathBuf,
    dir: TempDir,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        Self::start_on("127.0.0.1")
    }

    pub fn start_on(host: &str) -> MariaDb {
        let (dir, data) = server_dirs("dbbackup-mariadb-");
        // Temporary tables in a directory of its own, not the shared /tmp.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        chown_to_server_user(&tmp);
        let install = || {
            let mut cmd = Command::new(server_bin("mariadb-install-db"));
            as_server_user(&mut cmd)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-test-db")
                .env("TMPDIR", &tmp);
            cmd
        };
        // Once in a warm CI run, four bootstraps at once lost a temporary
        // table ("Unknown table 'mysql.tmp_user_sys'"); a second try on an
        // empty data directory is what a person would do.
        if !install().output().is_ok_and(|o| o.status.success()) {
            std::fs::remove_dir_all(&data).unwrap();
            std::fs::create_dir(&data).unwrap();
            chown_to_server_user(&data);
            run_ok(&mut install());
        }
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        chown_to_server_user(&run_dir);
        let socket = run_dir.join("mysqld.sock");
        let port = free_port();
        let process = Self::spawn(dir.path(), &data, &socket, host, port);
        let mut db = MariaDb {
            process,
            host: host.into(),
            port,
            user: "backup".into(),
            password: format!("dbPASS{}", random_token(24)),
            socket,
            dir,
        };
        let socket = db.socket.clone();
        let process = &mut db.process;
        wait_until(
            "MariaDB to accept connections",
            Duration::from_secs(60),
            || {
                process.assert_running();
                port_open_on(host, port) && socket.exists()
            },
        );
        db.admin_sql(&format!(
            "CREATE USER '{u}'@'%' IDENTIFIED BY '{p}'; GRANT ALL ON *.* TO '{u}'@'%' WITH GRANT OPTION;",
            u = db.user,
            p = db.password
        ));
        db
    }

    fn spawn(dir: &Path, data: &Path, socket: &Path, host: &str, port: u16) -> ServerProcess {
        let mut cmd = Command::new(server_bin("mariadbd"));
        as_server_user(&mut cmd)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--bind-address={host}"))
            .arg(format!(
                "--pid-file={}",
                data.join("mariadbd.pid").display()
            ))
            .arg("--skip-name-resolve")
            .arg("--character-set-server=utf8mb4")
            .arg("--innodb-flush-log-at-trx-commit=0")
            .arg("--innodb-buffer-pool-size=64M");
        ServerProcess::spawn("mariadbd", cmd, dir, libc::SIGTERM)
    }

    /// Runs SQL as root over the server's socket (root has no network login).
    pub fn admin_sql(&self, sql: &str) -> String {
        let out = run_ok(
            Command::new(bin("mariadb"))
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-uroot", "-N", "-B", "-e", sql]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The mariadb client against `database` over TCP as the backup user,
    /// password from the environment (never in args).
    pub fn client(&self, database: &str) -> Command {
        let mut cmd = Command::new(bin("mariadb"));
        cmd.arg("--no-defaults")
            .args(["-h", &self.host, "-P", &self.port.to_string()])
            .args([
                "-u",
                &self.user,
                "-N",
                "-B",
                "--default-character-set=utf8mb4",
            ])
            .arg(database)
            .env("MYSQL_PWD", &self.password);
        cmd
    }

    /// Runs SQL as the backup user over TCP and returns its trimmed output.
    pub fn query(&self, database: &str, sql: &str) -> String {
        let out = run_ok(self.client(database).arg("-e").arg(sql));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn create_database(&self, name: &str) {
        self.admin_sql(&format!("CREATE DATABASE `{name}`"));
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
