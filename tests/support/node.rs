//! A real node for the test bed: containerd, runc and the CNI plugins from
//! Debian; kubelet, kube-scheduler, kube-proxy and CoreDNS built from Go
//! modules; the images that `tests/testenv/images/build.sh` builds, imported
//! into containerd. Every pod the tests make runs in a real container.
//!
//! How it fits this kind of machine (root, cgroup v1, no CAP_SYS_RESOURCE):
//! - containerd and the kubelet share a private mount namespace, so every
//!   mount they make (snapshots, Secret tmpfs, network namespaces, volumes)
//!   ends with them; tmpfs over the fixed paths /run/netns, /run/containerd,
//!   /var/lib/cni and /var/log/containers keeps those off the host too.
//! - the node's address is the CNI bridge's: pods reach nothing on the host's
//!   127.0.0.1, so servers that pods use listen on `NODE_IP`. A FORWARD rule
//!   drops what pods send beyond the bridge, so no pod packet leaves the
//!   machine, and image pulls go to a proxy that is not there.
//! - one cluster on the machine at a time (a lock file), of one node or
//!   several (`node_net.rs`). Starting one first sweeps what a killed run
//!   left; dropping it removes every process, cgroup, iptables chain,
//!   network namespace, veth and the bridge, and restores the sysctls the
//!   kubelet sets.

use super::controlplane::ControlPlane;
pub use super::host::{HostNetwork, leftovers};
use services::build_operator_image;

#[path = "node_net.rs"]
mod net;
#[path = "node_services.rs"]
mod services;
use super::host::{create_cgroup_root, sweep};
use super::process::{ServerProcess, bin, bin_dir, free_port, poll, port_open_on, wait_until};
use k8s_openapi::api::core::v1::{Node as KubeNode, PersistentVolume, ServiceAccount};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
pub use net::{NodeSpec, netns_of, node_name, sweep_networks};
pub use services::{ClusterServices, build_operator_image as build_image};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The single node's name.
pub const NODE_NAME: &str = "dbbackup-node";
/// The test network's bridge. Its address is where pods find the host (the
/// control plane, MinIO, the databases); it is the single node's address
/// and the CNI bridge of its pods too.
pub const BRIDGE: &str = "dbb0";
pub const NODE_IP: &str = "10.88.0.1";
/// Every pod address, of one node or several (kube-proxy's clusterCIDR).
const PODS_CIDR: &str = "10.88.0.0/15";
/// The kubelets' cgroupRoot, in every cgroup v1 hierarchy (a node of
/// several has its own below it).
pub const CGROUP_ROOT: &str = "dbbackup-node";
/// The default StorageClass: local PersistentVolumes, bound once a pod is scheduled.
pub const STORAGE_CLASS: &str = "local";
/// Images the tests and the chart use; built by tests/testenv/images/build.sh.
pub const PAUSE_IMAGE: &str = "dbbackup.local/pause:1";
pub const MARIADB_IMAGE: &str = "dbbackup.local/mariadb:10.11";
pub const POSTGRES_IMAGE: &str = "dbbackup.local/postgres:15";
pub const OPERATOR_IMAGE: &str = "dbbackup.local/dbbackup-operator:dev";
/// Paths containerd and the kubelet write at fixed places: a tmpfs of the
/// private mount namespace covers each.
pub(crate) const HIDDEN_PATHS: &[&str] = &[
    "/run/netns",
    "/var/lib/cni",
    "/var/log/containers",
    // containerd 1.6 keeps shim sockets and runc state here, whatever its `state`.
    "/run/containerd",
];

pub struct Node {
    procs: Mutex<Procs>,
    kubeconfig: PathBuf,
    pub spec: NodeSpec,
    dir: TempDir,
}

/// A node's processes: none while it is stopped.
#[derive(Default)]
struct Procs {
    // Field order is drop order: the kubelet first, containerd last.
    kubelet: Option<ServerProcess>,
    proxy: Option<ServerProcess>,
    containerd: Option<ServerProcess>,
}

impl Node {
    /// Starts the node against `cp` (started `for_node`, its cluster's
    /// services up) and waits until it is Ready with its images in containerd.
    pub async fn start(cp: &ControlPlane, spec: NodeSpec) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("dbbackup-node-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in [
            "containerd",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
            "pod-logs",
            "volumes",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("resolv.conf"), "").unwrap();
        spec.network_up();
        create_cgroup_root(&spec.cgroup_root);
        let node = Node {
            procs: Mutex::default(),
            kubeconfig: cp.kubeconfig.clone(),
            spec,
            dir,
        };
        node.start_processes(cp, true);
        node.wait_ready(cp).await;
        node
    }

    /// containerd (its images imported when `import`), kube-proxy, the kubelet.
    fn start_processes(&self, cp: &ControlPlane, import: bool) {
        let containerd = self.start_containerd();
        if import {
            self.import_images();
        }
        let pid = containerd.pid();
        let mut procs = self.procs.lock().unwrap();
        procs.containerd = Some(containerd);
        procs.proxy = Some(self.start_proxy(pid));
        procs.kubelet = Some(self.start_kubelet(cp, pid));
    }

    /// The node's machine lost: its kubelet, kube-proxy, containerd and
    /// every container killed at once, nothing told. Its disk (the local
    /// volumes, containerd's images) and its network stay, as a machine's
    /// that lost power.
    pub fn stop_hard(&self) {
        let mut guard = self.procs.lock().unwrap();
        let procs = &mut *guard;
        for p in [&mut procs.kubelet, &mut procs.proxy, &mut procs.containerd] {
            if let Some(mut p) = p.take() {
                p.kill();
            }
        }
        let containerd_dir = self.dir.path().join("containerd");
        sweep(Some((&containerd_dir, &self.spec.cgroup_root)));
    }

    /// A stopped node back: its processes started again on what it kept,
    /// and Ready.
    pub async fn start_again(&self, cp: &ControlPlane) {
        create_cgroup_root(&self.spec.cgroup_root);
        self.start_processes(cp, false);
        self.wait_ready(cp).await;
    }

    /// The network and mount namespaces of this node's containerd (`pid`),
    /// for a process of the node to join before it execs: it then sees the
    /// node's address and the mounts containerd's shims see.
    fn join_node(&self, cmd: &mut Command, pid: u32, mount: bool) {
        let mut kinds = vec![("net", libc::CLONE_NEWNET)];
        if mount {
            kinds.push(("mnt", libc::CLONE_NEWNS));
        }
        let files: Vec<(File, libc::c_int)> = kinds
            .into_iter()
            .map(|(ns, kind)| (File::open(format!("/proc/{pid}/ns/{ns}")).unwrap(), kind))
            .collect();
        // SAFETY: setns(2) on fds opened before the fork, kept open by the
        // closure, which the Command owns until it has spawned.
        unsafe {
            cmd.pre_exec(move || {
                for (file, kind) in &files {
                    if libc::setns(file.as_raw_fd(), *kind) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// An empty resolv.conf: for the node's own processes and, as the
    /// kubelet's base, for pods (no search domain or name server of the host).
    fn resolv_conf(&self) -> PathBuf {
        self.dir.path().join("resolv.conf")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd/containerd.sock")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    // Long for the kubelet's configuration file, which it reads whole.
    fn start_kubelet(&self, cp: &ControlPlane, containerd: u32) -> ServerProcess {
        let d = self.dir.path();
        let config = self.write(
            "kubelet.yaml",
            &format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://{sock}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
failCgroupV1: false
failSwapOn: false
clusterDNS: [{NODE_IP}]
clusterDomain: cluster.local
resolvConf: {resolv}
podLogsDir: {d}/pod-logs
enableControllerAttachDetach: false
serializeImagePulls: false
# The machine's disk may be nearly full: evict and collect images only at the very end.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
"#,
                port = free_port(),
                healthz = free_port(),
                ca = cp.ca_cert().display(),
                sock = self.sock().display(),
                resolv = self.resolv_conf().display(),
                d = d.display(),
                ip = self.spec.ip,
                cgroup_root = self.spec.cgroup_root,
            ),
        );
        let mut cmd = Command::new(bin("kubelet"));
        node_env(&mut cmd);
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--root-dir={}", d.join("kubelet").display()))
            .arg(format!("--cert-dir={}", d.join("kubelet/pki").display()))
            .arg(format!("--hostname-override={}", self.spec.name))
            .arg(format!("--node-ip={}", self.spec.ip))
            .arg("--v=0");
        // The kubelet mounts volumes where containerd's shims see them.
        self.join_node(&mut cmd, containerd, true);
        ServerProcess::spawn("kubelet", cmd, self.dir.path(), libc::SIGTERM)
    }

    async fn wait_ready(&self, cp: &ControlPlane) {
        let nodes: Api<KubeNode> = Api::all(cp.client().await);
        let name = &self.spec.name;
        let ready = poll(Duration::from_millis(200), Duration::from_secs(120), || {
            let mut guard = self.procs.lock().unwrap();
            let procs = &mut *guard;
            for p in [&mut procs.kubelet, &mut procs.proxy, &mut procs.containerd] {
                p.as_mut().unwrap().assert_running();
            }
            drop(guard);
            let nodes = &nodes;
            async move {
                // Ready, and schedulable: the not-ready taint lifted.
                let n = nodes.get_opt(name).await.ok().flatten()?;
                let kubelet = n
                    .status
                    .as_ref()?
                    .node_info
                    .as_ref()?
                    .kubelet_version
                    .clone();
                assert_eq!(
                    kubelet,
                    super::process::k8s_version(),
                    "the kubelet's version"
                );
                let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
                let conditions = n.status.and_then(|s| s.conditions).unwrap_or_default();
                let ready = conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                (taints.is_empty() && ready).then_some(())
            }
        })
        .await;
        assert!(
            ready.is_some(),
            "node {name} not Ready after 120s; kubelet:\n{}",
            self.procs
                .lock()
                .unwrap()
                .kubelet
                .as_ref()
                .unwrap()
                .log_tail()
        );
    }

    /// A local PersistentVolume reserved for claim `ns/claim`, and its host directory.
    pub async fn volume_for(&self, client: &kube::Client, ns: &str, claim: &str) -> PathBuf {
        let name = format!("{ns}-{claim}");
        let path = self.dir.path().join("volumes").join(&name);
        std::fs::create_dir_all(&path).unwrap();
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": { "name": name },
            "spec": {
                "capacity": { "storage": "100Gi" },
                "accessModes": ["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "claimRef": { "namespace": ns, "name": claim },
                "local": { "path": path },
                "nodeAffinity": { "required": { "nodeSelectorTerms": [{ "matchExpressions": [{
                    "key": "kubernetes.io/hostname", "operator": "In", "values": [self.spec.name]
                }]}]}}
            }
        }))
        .unwrap();
        Api::<PersistentVolume>::all(client.clone())
            .create(&PostParams::default(), &pv)
            .await
            .unwrap();
        path
    }

    /// Where the kubelet keeps pod `uid`'s emptyDir volumes, one directory each.
    pub fn empty_dirs(&self, uid: &str) -> PathBuf {
        self.dir
            .path()
            .join("kubelet/pods")
            .join(uid)
            .join("volumes/kubernetes.io~empty-dir")
    }

    pub fn kubelet_log(&self) -> String {
        let procs = self.procs.lock().unwrap();
        procs.kubelet.as_ref().map(|k| k.log()).unwrap_or_default()
    }

    pub fn pids(&self) -> Vec<u32> {
        let procs = self.procs.lock().unwrap();
        [&procs.kubelet, &procs.proxy, &procs.containerd]
            .into_iter()
            .flatten()
            .map(|p| p.pid())
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let procs = self.procs.get_mut().unwrap_or_else(|e| e.into_inner());
        // The kubelet first, so that it restarts nothing we then kill.
        drop(procs.kubelet.take());
        drop(procs.proxy.take());
        let node = (self.dir.path().join("containerd"), &self.spec.cgroup_root);
        // Containers and their shims, then containerd itself.
        sweep(Some((&node.0, node.1)));
        drop(procs.containerd.take());
        if self.spec.netns.is_none() {
            // Its rules are the host's; a node of several takes them with its namespace.
            let _ = Command::new(bin("kube-proxy")).arg("--cleanup").output();
        }
        sweep(Some((&node.0, node.1)));
        self.spec.network_down();
    }
}

/// The environment of containerd and the kubelet: the tools they call, and
/// nothing of the test's (no proxy settings, say).
fn node_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
}

/// True once something accepts connections on `NODE_IP:port`.
pub fn node_port_open(port: u16) -> bool {
    port_open_on(NODE_IP, port)
}

/// Bytes in `dir`'s files, recursively (0 once it is gone).
pub fn bytes_under(dir: &Path) -> u64 {
    bytes_except(dir, &[])
}

/// As `bytes_under`, leaving out the directories in `skip`.
pub fn bytes_except(dir: &Path, skip: &[PathBuf]) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| !skip.contains(&e.path()))
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_except(&e.path(), skip),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}
