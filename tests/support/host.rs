//! What the real node changes on the host, and taking it back: the CNI
//! bridge and the rule that keeps its packets on the machine, the kubelet's
//! cgroups, the KUBE-* iptables chains, kernel settings, the containers and
//! shims of a node and its directory, and a lock that keeps to one node per
//! machine. A start first sweeps what a killed run left; a drop removes it all.
//! The KUBE-* chains are taken to be ours: the host must not be a Kubernetes
//! node itself.

use super::node::{BRIDGE, CGROUP_ROOT, HIDDEN_PATHS, NODE_IP};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Locally administered, so it cannot be any real interface's.
const BRIDGE_MAC: &str = "02:db:b0:00:00:01";
const LOCK_FILE: &str = "/run/lock/dbbackup-node.lock";
/// The kernel settings as they were before the first node of a series, kept
/// until one is stopped cleanly: a killed run must not make the kubelet's
/// values the ones restored.
const SYSCTLS_FILE: &str = "/run/lock/dbbackup-node.sysctls";
/// Packets routed from the bridge to anywhere else are dropped, whatever the
/// host's IP forwarding: no pod reaches beyond the node.
const FORWARD_RULE: &[&str] = &[
    "FORWARD",
    "-i",
    BRIDGE,
    "!",
    "-o",
    BRIDGE,
    "-m",
    "comment",
    "--comment",
    "dbbackup-node: pods reach nothing beyond the node",
    "-j",
    "DROP",
];
/// Kernel settings the kubelet and kube-proxy may change; put back on drop.
const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
];

/// What the node changes on the host, claimed before the control plane
/// starts (which serves on the bridge's address) and given back on drop.
pub struct HostNetwork {
    sysctls: Vec<(&'static str, String)>,
    created_dirs: Vec<PathBuf>,
    _lock: File,
}

impl HostNetwork {
    pub fn up() -> HostNetwork {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the real node needs root (containerd, the kubelet, the bridge)"
        );
        std::fs::create_dir_all("/run/lock").unwrap();
        let lock = File::create(LOCK_FILE).unwrap();
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!(
                "waiting for the other node on this machine to stop (a demo? `make demo-down`)"
            );
            // SAFETY: as above; blocks until the other node is gone.
            assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        }
        // What a killed run left (the lock says no live node owns it).
        sweep(None);
        let sysctls = saved_sysctls();
        let created_dirs = HIDDEN_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect::<Vec<_>>();
        for p in HIDDEN_PATHS {
            std::fs::create_dir_all(p).unwrap();
        }
        // An address of its own: a bridge without one takes the lowest of
        // its ports', so a pod's going changes the gateway's MAC under the
        // pods still running, and their packets to the node (MinIO, the
        // databases) are lost until their ARP entries expire.
        sh(&[
            "ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
        ]);
        sh(&["ip", "addr", "add", &format!("{NODE_IP}/16"), "dev", BRIDGE]);
        sh(&["ip", "link", "set", BRIDGE, "up"]);
        let mut insert = vec!["iptables", "-w", "-I"];
        insert.extend(FORWARD_RULE);
        sh(&insert);
        HostNetwork {
            sysctls,
            created_dirs,
            _lock: lock,
        }
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        sweep(None);
        for (name, value) in &self.sysctls {
            let _ = std::fs::write(sysctl_path(name), value);
        }
        let _ = std::fs::remove_file(SYSCTLS_FILE);
        for d in &self.created_dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The settings saved before the first node since the last clean stop, or
/// now if there is none.
fn saved_sysctls() -> Vec<(&'static str, String)> {
    let saved: std::collections::HashMap<String, String> = std::fs::read_to_string(SYSCTLS_FILE)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let values: Vec<(&'static str, String)> = SYSCTLS
        .iter()
        .filter_map(|s| {
            let value = saved
                .get(*s)
                .cloned()
                .or_else(|| std::fs::read_to_string(sysctl_path(s)).ok())?;
            Some((*s, value))
        })
        .collect();
    let map: std::collections::HashMap<_, _> = values.iter().cloned().collect();
    std::fs::write(SYSCTLS_FILE, serde_json::to_string(&map).unwrap()).unwrap();
    values
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name)
}

/// Runs a host command, panicking with its output when it fails.
pub(crate) fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every process in a node's cgroups, and every containerd shim serving it,
/// killed; then its cgroups and the iptables chains removed. `node` is its
/// containerd directory and cgroup root; None sweeps every node of ours, the
/// bridge and the several-node networks too.
pub(crate) fn sweep(node: Option<(&Path, &str)>) {
    let (marker, cgroup_root) = match node {
        Some((dir, root)) => (dir.display().to_string(), root),
        None => ("/dbbackup-node-".into(), CGROUP_ROOT),
    };
    for _ in 0..100 {
        let mut pids = cgroup_pids(cgroup_root);
        pids.extend(shim_pids(&marker));
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid read from our own cgroups or a shim of ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    remove_cgroups(cgroup_root);
    remove_iptables_chains();
    if node.is_none() {
        super::node::sweep_networks();
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        let mut delete = vec!["-w", "-D"];
        delete.extend(FORWARD_RULE);
        while Command::new("iptables")
            .args(&delete)
            .output()
            .is_ok_and(|o| o.status.success())
        {}
        // The directories of nodes that were killed (a live one holds the lock).
        for e in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with("dbbackup-node-")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

pub(crate) fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn cgroup_pids(cgroup_root: &str) -> Vec<i32> {
    let mut pids = vec![];
    for h in cgroup_hierarchies() {
        let root = h.join(cgroup_root);
        if root.is_dir() {
            walk_dirs(&root, &mut |d| {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            });
        }
    }
    pids.sort();
    pids.dedup();
    pids
}

/// Calls `f` on every file below `dir`.
pub(crate) fn walk_files(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_files(&e.path(), f),
            Ok(_) => f(&e.path()),
            Err(_) => {}
        }
    }
}

/// Calls `f` on `dir` and every directory below it, deepest first.
fn walk_dirs(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk_dirs(&e.path(), f);
        }
    }
    f(dir);
}

pub(crate) fn shim_pids(marker: &str) -> Vec<i32> {
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("containerd-shim") && cmdline.contains(marker) {
            pids.push(pid);
        }
    }
    pids
}

fn remove_cgroups(cgroup_root: &str) {
    for h in cgroup_hierarchies() {
        let root = h.join(cgroup_root);
        if root.is_dir() {
            walk_dirs(&root, &mut |d| {
                // A cgroup is removed with rmdir; its files go with it.
                let _ = std::fs::remove_dir(d);
            });
        }
    }
}

/// The KUBE-* chains the kubelet and kube-proxy add, with the rules that jump to them.
fn remove_iptables_chains() {
    for tool in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle"] {
            let list = |args: &[&str]| {
                Command::new(tool)
                    .args(["-w", "-t", table])
                    .args(args)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            let rules = list(&["-S"]);
            // Jumps from the built-in chains go by position: their specs can
            // hold quoted comments that do not split back into arguments.
            for builtin in rules.lines().filter_map(|r| r.strip_prefix("-P ")) {
                let chain = builtin.split_whitespace().next().unwrap_or_default();
                let own = list(&["-S", chain]);
                let jumps: Vec<usize> = own
                    .lines()
                    .filter(|r| r.starts_with("-A "))
                    .enumerate()
                    .filter(|(_, r)| r.contains(" -j KUBE-"))
                    .map(|(i, _)| i + 1)
                    .collect();
                for n in jumps.into_iter().rev() {
                    list(&["-D", chain, &n.to_string()]);
                }
            }
            let chains: Vec<&str> = rules
                .lines()
                .filter_map(|r| r.strip_prefix("-N "))
                .filter(|c| c.starts_with("KUBE-"))
                .collect();
            // Emptied first: a chain still jumped to from another cannot go.
            for verb in ["-F", "-X"] {
                for chain in &chains {
                    list(&[verb, chain]);
                }
            }
        }
    }
}

/// Everything of ours still on the host, as the suite's final check reads it.
pub fn leftovers() -> Vec<String> {
    let mut left = vec![];
    for e in std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == BRIDGE || name.starts_with("dbbv-") {
            left.push(format!("link {name}"));
        }
    }
    for h in cgroup_hierarchies() {
        if h.join(CGROUP_ROOT).exists() {
            left.push(format!("cgroup {}", h.join(CGROUP_ROOT).display()));
        }
    }
    for tool in ["iptables-save", "ip6tables-save"] {
        if let Ok(out) = Command::new(tool).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if l.contains("KUBE-") || l.contains("dbbackup-node") {
                    left.push(format!("{tool}: {l}"));
                }
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mounts.lines().filter(|l| l.contains("dbbackup-node")) {
        left.push(format!("mount {l}"));
    }
    left.extend(
        shim_pids("/dbbackup-node-")
            .iter()
            .map(|p| format!("shim pid {p}")),
    );
    if Path::new(SYSCTLS_FILE).exists() {
        left.push(format!(
            "{SYSCTLS_FILE}: the kernel settings were not restored"
        ));
    }
    left
}

/// A kubelet's cgroupRoot (`a/b`: each level) in every v1 hierarchy; cpuset
/// needs its cpus and mems before any task can join. (cgroup v2 is not
/// supported here: see README, "Testing".)
pub(crate) fn create_cgroup_root(cgroup_root: &str) {
    for h in cgroup_hierarchies() {
        if !h.join("cgroup.procs").exists() {
            continue;
        }
        let mut parent = h.clone();
        for level in cgroup_root.split('/') {
            let dir = parent.join(level);
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
                    std::fs::write(dir.join(f), v.trim()).unwrap();
                }
            }
            parent = dir;
        }
    }
}
