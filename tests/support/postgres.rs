//! A real PostgreSQL server in its own temp dir on a free port.

use super::minio::random_token;
use super::process::{
    ServerProcess, as_server_user, bin, chown_to_server_user, free_port, port_open_on, run_ok,
    server_bin, server_dirs, wait_until,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

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
        let netns = crate::support::node::netns_of(host);
        ServerProcess::spawn_in("postgres", cmd, dir, libc::SIGQUIT, netns)
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
