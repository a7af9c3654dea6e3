//! A real MariaDB server in its own temp dir on a free port.

use super::minio::random_token;
use super::process::{
    ServerProcess, as_server_user, bin, chown_to_server_user, free_port, port_open_on, run_ok,
    server_bin, server_dirs, wait_until,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

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
        let netns = crate::support::node::netns_of(host);
        ServerProcess::spawn_in("mariadbd", cmd, dir, libc::SIGTERM, netns)
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
    /// A session holding a write lock on `table` for `seconds` (or until
    /// killed): a dump of it waits meanwhile.
    pub fn lock_table(&self, database: &str, table: &str, seconds: u32) -> std::process::Child {
        let mut lock = self.client(database);
        lock.arg("-e").arg(format!(
            "LOCK TABLES {table} WRITE; SELECT SLEEP({seconds})"
        ));
        lock.spawn().unwrap()
    }

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
