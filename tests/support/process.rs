//! Child processes that cannot outlive the test that started them.

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Directory holding the test-bed binaries that `tests/testenv/install.sh` installs.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("DBBACKUP_TESTENV_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            Path::new(&home).join(".cache/dbbackup-operator/bin")
        }
    }
}

/// The operator binary cargo built with the tests. Examples (the demo's
/// cluster) get no CARGO_BIN_EXE_*: theirs sits one directory below it.
pub fn operator_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_dbbackup-operator") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("the running executable's path");
            exe.parent()
                .and_then(Path::parent)
                .expect("an example under target/<profile>/examples")
                .join("dbbackup-operator")
        }
    }
}

/// The Kubernetes version the tests run against: the test bed's default,
/// or `DBBACKUP_K8S_VERSION` (tests/run.sh runs a subset against the
/// oldest version the chart claims).
pub fn k8s_version() -> String {
    std::env::var("DBBACKUP_K8S_VERSION").unwrap_or_else(|_| DEFAULT_K8S_VERSION.into())
}

pub const DEFAULT_K8S_VERSION: &str = "v1.37.2";

/// Kubernetes' own commands, built once per version (etcd is one for all).
const K8S_COMMANDS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// Path of one test-bed binary. A missing binary fails the test loudly: the
/// test bed is part of the project, never optional.
pub fn bin(name: &str) -> PathBuf {
    let version = k8s_version();
    let path = match K8S_COMMANDS.contains(&name) && version != DEFAULT_K8S_VERSION {
        true => bin_dir().join(format!("k8s-{version}")).join(name),
        false => bin_dir().join(name),
    };
    assert!(
        path.exists(),
        "test-bed binary {} is missing: run `bash tests/testenv/install.sh` first",
        path.display()
    );
    path
}

/// A free TCP port on loopback for a server to bind. Ports come from below
/// the kernel's ephemeral range, which the outgoing connections of the tests
/// draw from (an apiserver client once took etcd's port between this check
/// and etcd's bind), and this process never hands out one port twice.
/// `DBBACKUP_TEST_PORTS=FIRST-LAST` narrows the range: tests/run.sh gives
/// each of the test lanes it runs at once a range of its own, so no two
/// processes check and bind one port at the same moment.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let (first, last) = match std::env::var("DBBACKUP_TEST_PORTS") {
        Ok(range) => range
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .filter(|(a, b)| a < b && *b < ephemeral)
            .unwrap_or_else(|| {
                panic!("DBBACKUP_TEST_PORTS={range}: want FIRST-LAST below {ephemeral}")
            }),
        Err(_) => (10_000, ephemeral - 1),
    };
    let span = (last + 1).saturating_sub(first).max(1);
    // Test binaries running at once start at different places.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = (first + NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {first} and {last}");
}

/// Forks `cmd` from one thread that lives as long as the test process.
/// PR_SET_PDEATHSIG fires when the thread that forked a child ends, and a
/// test's thread ends before a server shared by the whole test binary should.
/// With `netns`, the thread forks from inside that network namespace (and
/// goes back to its own): setns(2) in the child would come after `uid`.
fn spawn_from_keeper(cmd: Command, netns: Option<File>) -> std::io::Result<Child> {
    use std::sync::mpsc::{Sender, channel};
    use std::sync::{Mutex, OnceLock};
    type Request = (Command, Option<File>, Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = channel::<Request>();
        std::thread::Builder::new()
            .name("process-keeper".into())
            .spawn(move || {
                let own = File::open("/proc/thread-self/ns/net").expect("own network namespace");
                for (mut cmd, netns, reply) in rx {
                    let Some(netns) = netns else {
                        let _ = reply.send(cmd.spawn());
                        continue;
                    };
                    let _ = reply.send(set_netns(&netns).and_then(|_| cmd.spawn()));
                    set_netns(&own).expect("back to the keeper's own network namespace");
                }
            })
            .expect("start the process keeper thread");
        Mutex::new(tx)
    });
    let (tx, rx) = channel();
    keeper
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, netns, tx))
        .expect("the process keeper thread runs");
    rx.recv().expect("the process keeper thread answers")
}

/// Moves the calling thread into network namespace `netns`.
fn set_netns(netns: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on an open namespace file; it changes this thread only.
    match unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// A server process killed (and reaped) on drop, including when the test panics.
/// It is also started with PR_SET_PDEATHSIG, so an aborted test binary takes it down too.
pub struct ServerProcess {
    pub name: String,
    child: Child,
    stop_signal: i32,
    log_path: PathBuf,
}

impl ServerProcess {
    /// Starts `cmd` with stdout and stderr sent to `<log_dir>/<name>.log`.
    /// `stop_signal` is what asks it to stop (SIGQUIT for PostgreSQL, so that the
    /// postmaster takes its backends down with it).
    pub fn spawn(name: &str, cmd: Command, log_dir: &Path, stop_signal: i32) -> Self {
        Self::spawn_in(name, cmd, log_dir, stop_signal, None)
    }

    /// As `spawn`, in network namespace `netns` (a node's, when None the test's).
    pub fn spawn_in(
        name: &str,
        mut cmd: Command,
        log_dir: &Path,
        stop_signal: i32,
        netns: Option<File>,
    ) -> Self {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = File::create(&log_path).expect("create server log file");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let program = cmd.get_program().to_owned();
        let child = spawn_from_keeper(cmd, netns)
            .unwrap_or_else(|e| panic!("failed to start {name} ({program:?}): {e}"));
        ServerProcess {
            name: name.to_string(),
            child,
            stop_signal,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's output so far, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process has ended.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Panics with the log tail when the process has already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early with {status}; last output:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// Stops the process: its stop signal first, SIGKILL after a grace period.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, self.stop_signal);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every `interval` until it yields a value; None once
/// `timeout` has passed. The one polling loop: `wait_for` and `wait_until`
/// are it with a panic, and callers that add the server's log to the panic,
/// or measure a latency, use it directly.
pub async fn poll<T, F, Fut>(interval: Duration, timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Polls `check` until it yields a value, panicking with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(Duration::from_millis(100), timeout, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// `wait_for` for code outside a runtime: servers start from plain
/// `#[test]`s, and within async tests they block as the rest of their start does.
/// Runs the future `f` makes to its end on a thread and runtime of its own:
/// a synchronous check (`wait_until`) may then ask an async client, whatever
/// runtime its caller is in.
pub fn on_own_runtime<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap()
}

pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// True once something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    port_open_on("127.0.0.1", port)
}

/// True once something accepts TCP connections on `host`:`port`.
pub fn port_open_on(host: &str, port: u16) -> bool {
    std::net::TcpStream::connect((host, port)).is_ok()
}

/// A plain HTTP GET on 127.0.0.1:`port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_on("127.0.0.1", port, path)
}

/// A plain HTTP GET on `host`:`port`: the status code and the body.
pub fn http_get_on(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    // A pod's address can vanish with its pod: give up after two seconds.
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Database servers refuse to run as root, so as root they run as `nobody`.
const NOBODY: u32 = 65534;

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A temp dir the server's user can enter, and a data dir it owns.
pub fn server_dirs(prefix: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chown_to_server_user(&data);
    (dir, data)
}

pub fn chown_to_server_user(path: &Path) {
    if running_as_root() {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

/// A server binary as the unprivileged user can reach it: the cache under
/// root's home is not traversable by `nobody`, the package's own path is.
pub fn server_bin(name: &str) -> PathBuf {
    std::fs::canonicalize(bin(name)).expect("resolve test-bed binary")
}

pub fn as_server_user(cmd: &mut Command) -> &mut Command {
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
