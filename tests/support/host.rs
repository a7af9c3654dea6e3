//! What the real node changes on the host, and taking it back: the CNI
//! bridge, the kubelet's cgroups, the KUBE-* iptables chains, kernel settings,
//! the containers and shims of a node, and a lock that keeps to one node per
//! machine. A start first sweeps what a killed run left; a drop removes it all.

use super::node::{BRIDGE, CGROUP_ROOT, HIDDEN_PATHS, NODE_IP};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LOCK_FILE: &str = "/run/lock/dbbackup-node.lock";
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
        // SAFETY: flock on an fd we own; blocks until another node on this machine is gone.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        // What a killed run left (the lock says no live node owns it).
        sweep(None);
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|s| Some((*s, std::fs::read_to_string(sysctl_path(s)).ok()?)))
            .collect();
        let created_dirs = HIDDEN_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect::<Vec<_>>();
        for p in HIDDEN_PATHS {
            std::fs::create_dir_all(p).unwrap();
        }
        sh(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        sh(&["ip", "addr", "add", &format!("{NODE_IP}/16"), "dev", BRIDGE]);
        sh(&["ip", "link", "set", BRIDGE, "up"]);
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
        for d in &self.created_dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name)
}

/// Runs a host command, panicking with its output when it fails.
fn sh(args: &[&str]) -> String {
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

/// Every process in our cgroups, and every containerd shim serving a node of
/// ours (`containerd_dir`, or any when None), killed; then the cgroups, the
/// iptables chains and the bridge removed.
pub(crate) fn sweep(containerd_dir: Option<&Path>) {
    let marker = containerd_dir
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "/dbbackup-node-".into());
    for _ in 0..100 {
        let mut pids = cgroup_pids();
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
    remove_cgroups();
    remove_iptables_chains();
    if containerd_dir.is_none() {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    }
}

pub(crate) fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn cgroup_pids() -> Vec<i32> {
    let mut pids = vec![];
    for h in cgroup_hierarchies() {
        let root = h.join(CGROUP_ROOT);
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

fn remove_cgroups() {
    for h in cgroup_hierarchies() {
        let root = h.join(CGROUP_ROOT);
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
            let Ok(out) = Command::new(tool).args(["-w", "-t", table, "-S"]).output() else {
                continue;
            };
            let rules = String::from_utf8_lossy(&out.stdout).into_owned();
            for rule in rules.lines() {
                if let Some(spec) = rule.strip_prefix("-A ")
                    && !spec.starts_with("KUBE-")
                    && spec.contains(" -j KUBE-")
                {
                    let mut args = vec!["-w", "-t", table, "-D"];
                    args.extend(spec.split_whitespace());
                    let _ = Command::new(tool).args(&args).output();
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
                    let _ = Command::new(tool)
                        .args(["-w", "-t", table, verb, chain])
                        .output();
                }
            }
        }
    }
}

/// Everything of ours still on the host, as the suite's final check reads it.
pub fn leftovers() -> Vec<String> {
    let mut left = vec![];
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        left.push(format!("bridge {BRIDGE}"));
    }
    for h in cgroup_hierarchies() {
        if h.join(CGROUP_ROOT).exists() {
            left.push(format!("cgroup {}", h.join(CGROUP_ROOT).display()));
        }
    }
    for tool in ["iptables-save", "ip6tables-save"] {
        if let Ok(out) = Command::new(tool).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if l.contains("KUBE-") {
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
    left
}

/// The kubelet's cgroupRoot in every v1 hierarchy; cpuset needs its cpus and
/// mems before any task can join.
pub(crate) fn create_cgroup_root() {
    for h in cgroup_hierarchies() {
        if !h.join("cgroup.procs").exists() {
            continue;
        }
        let root = h.join(CGROUP_ROOT);
        std::fs::create_dir_all(&root).unwrap();
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                std::fs::write(root.join(f), v.trim()).unwrap();
            }
        }
    }
}
