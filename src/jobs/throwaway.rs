//! A throwaway database server for a restore drill, started from the
//! image's own server binaries in a scratch directory. It listens on the
//! pod's loopback only, and its password is made here at random: it lives in
//! this process and in the environment of the clients it starts, and never
//! leaves the pod. Dropping it stops the server.

use super::tool::{Hidden, Server};
use crate::api::Engine;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The drill's login; the server knows no other but its superuser.
const USER: &str = "dbbackup";
/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Throwaway {
    pub server: Server,
    child: Child,
    log: PathBuf,
}

impl Throwaway {
    /// Initialises a data directory under `dir` and starts the server on it.
    pub fn start(engine: Engine, dir: &Path) -> Result<Throwaway, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let password = random_password()?;
        let port = free_port()?;
        let log = dir.join("server.log");
        let server = Server {
            engine,
            host: "127.0.0.1".into(),
            port,
            user: USER.into(),
            password: Some(Hidden(password.clone())),
        };
        let child = match engine {
            Engine::Postgres => start_postgres(dir, port, &password, &log)?,
            Engine::Mariadb | Engine::Mysql => start_mysql_family(engine, dir, port, &log)?,
        };
        let mut throwaway = Throwaway { server, child, log };
        throwaway.wait_ready(dir, &password)?;
        Ok(throwaway)
    }

    /// Waits until the server answers; MariaDB/MySQL then get our login.
    fn wait_ready(&mut self, dir: &Path, password: &str) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the drill's database server exited ({status}) before accepting connections: {}",
                    self.log_tail()
                ));
            }
            let ready = match self.server.engine {
                Engine::Postgres => self.server.query("postgres", "SELECT 1").is_ok(),
                Engine::Mariadb | Engine::Mysql => {
                    create_login(self.server.engine, dir, password).is_ok()
                }
            };
            if ready {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "the drill's database server did not accept connections within {} s: {}",
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last lines the server logged, for a message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        // SAFETY: kill on the PID of our own child, which we have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 32 characters from the kernel's random source.
fn random_password() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    getrandom(&mut bytes)?;
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| super::tool::cannot_run(&program, &e))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = out.stderr;
    text.extend_from_slice(&out.stdout);
    Err(format!(
        "cannot {what}: {}",
        super::tool::failed(&program, out.status, &text)
    ))
}

fn log_file(log: &Path) -> Result<(Stdio, Stdio), String> {
    let file =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let copy = file.try_clone().map_err(|e| e.to_string())?;
    Ok((Stdio::from(file), Stdio::from(copy)))
}

fn start_postgres(dir: &Path, port: u16, password: &str, log: &Path) -> Result<Child, String> {
    let data = dir.join("pgdata");
    let pwfile = dir.join(".pwfile");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)
            .map_err(|e| format!("cannot create {}: {e}", pwfile.display()))?;
        f.write_all(password.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let init = run(
        Command::new("initdb")
            .arg(format!("--pgdata={}", data.display()))
            .arg(format!("--username={USER}"))
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"]),
        "initialise the drill's PostgreSQL data directory",
    );
    let _ = std::fs::remove_file(&pwfile);
    init?;
    let (out, err) = log_file(log)?;
    Command::new("postgres")
        .arg("-D")
        .arg(&data)
        .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        // A drill's server is thrown away: durability would only cost time.
        .args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| super::tool::cannot_run("postgres", &e))
}

fn start_mysql_family(engine: Engine, dir: &Path, port: u16, log: &Path) -> Result<Child, String> {
    let data = dir.join("mysql");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let (install, server) = match engine {
        Engine::Mysql => (
            run(
                Command::new("mysqld")
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .arg("--initialize-insecure"),
                "initialise the drill's MySQL data directory",
            ),
            "mysqld",
        ),
        _ => (
            run(
                Command::new("mariadb-install-db")
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                    .env("TMPDIR", &tmp),
                "initialise the drill's MariaDB data directory",
            ),
            "mariadbd",
        ),
    };
    install?;
    let (out, err) = log_file(log)?;
    Command::new(server)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .arg(format!("--socket={}", socket(dir).display()))
        .arg(format!("--pid-file={}", dir.join("server.pid").display()))
        .arg(format!("--port={port}"))
        .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
        .args([
            "--character-set-server=utf8mb4",
            "--innodb-flush-log-at-trx-commit=0",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| super::tool::cannot_run(server, &e))
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("mysqld.sock")
}

/// Creates the drill's login as the passwordless superuser over the socket.
/// The statement, password included, goes through the client's stdin.
fn create_login(engine: Engine, dir: &Path, password: &str) -> Result<(), String> {
    let client = match engine {
        Engine::Mysql => "mysql",
        _ => "mariadb",
    };
    let mut child = Command::new(client)
        .arg("--no-defaults")
        .arg(format!("--socket={}", socket(dir).display()))
        .args(["--user=root", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| super::tool::cannot_run(client, &e))?;
    let sql = format!(
        "CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n\
         GRANT ALL ON *.* TO '{USER}'@'127.0.0.1';\n"
    );
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(sql.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(super::tool::failed(client, out.status, &out.stderr)),
    }
}
