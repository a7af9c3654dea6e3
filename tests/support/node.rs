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
//! - one node on the machine at a time (a lock file). Starting one first
//!   sweeps what a killed run left; dropping it removes every process,
//!   cgroup, iptables chain, the bridge, and restores the sysctls the kubelet
//!   sets.

use super::controlplane::ControlPlane;
pub use super::host::{HostNetwork, leftovers};
use services::build_operator_image;

#[path = "node_services.rs"]
mod services;
use super::host::{create_cgroup_root, sweep};
use super::process::{ServerProcess, bin, bin_dir, free_port, poll, port_open_on, wait_until};
use k8s_openapi::api::core::v1::{Node as KubeNode, PersistentVolume, ServiceAccount};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const NODE_NAME: &str = "dbbackup-node";
/// The CNI bridge; its address is the node's, and where pods find the host.
pub const BRIDGE: &str = "dbb0";
pub const NODE_IP: &str = "10.88.0.1";
const POD_SUBNET: &str = "10.88.0.0/16";
/// The kubelet's cgroupRoot, in every cgroup v1 hierarchy.
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
    // Field order is drop order: the kubelet first, containerd last.
    kubelet: Option<ServerProcess>,
    proxy: Option<ServerProcess>,
    scheduler: Option<ServerProcess>,
    dns: Option<ServerProcess>,
    containerd: Option<ServerProcess>,
    kubeconfig: PathBuf,
    dir: TempDir,
}

impl Node {
    /// Starts the node against `cp` (started `for_node`) and waits until it is
    /// Ready, its images are in containerd, and the default StorageClass exists.
    pub async fn start(cp: &ControlPlane) -> Node {
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
        create_cgroup_root();
        let mut node = Node {
            kubelet: None,
            proxy: None,
            scheduler: None,
            dns: None,
            containerd: None,
            kubeconfig: cp.kubeconfig.clone(),
            dir,
        };
        node.containerd = Some(node.start_containerd());
        build_operator_image();
        node.import_images();
        node.scheduler = Some(node.start_scheduler(cp));
        node.proxy = Some(node.start_proxy());
        node.dns = Some(node.start_dns());
        node.kubelet = Some(node.start_kubelet(cp));
        node.wait_ready(cp).await;
        node
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
    fn start_kubelet(&self, cp: &ControlPlane) -> ServerProcess {
        let d = self.dir.path();
        let config = self.write(
            "kubelet.yaml",
            &format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
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
cgroupRoot: /{CGROUP_ROOT}
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
            ),
        );
        let mut cmd = Command::new(bin("kubelet"));
        node_env(&mut cmd);
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--root-dir={}", d.join("kubelet").display()))
            .arg(format!("--cert-dir={}", d.join("kubelet/pki").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={NODE_IP}"))
            .arg("--v=0");
        // The kubelet mounts volumes where containerd's shims see them: in
        // containerd's mount namespace.
        let ns = File::open(format!(
            "/proc/{}/ns/mnt",
            self.containerd.as_ref().unwrap().pid()
        ))
        .unwrap();
        let fd = ns.as_raw_fd();
        // SAFETY: setns(2) on an fd opened before the fork; kept open by `ns`.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let p = ServerProcess::spawn("kubelet", cmd, self.dir.path(), libc::SIGTERM);
        drop(ns);
        p
    }

    async fn wait_ready(&mut self, cp: &ControlPlane) {
        let client = cp.client().await;
        let nodes: Api<KubeNode> = Api::all(client.clone());
        let processes = [&mut self.kubelet, &mut self.proxy, &mut self.scheduler];
        let mut processes: Vec<&mut ServerProcess> = processes.into_iter().flatten().collect();
        let ready = poll(Duration::from_millis(200), Duration::from_secs(120), || {
            processes.iter_mut().for_each(|p| p.assert_running());
            let nodes = &nodes;
            async move {
                // Ready, and schedulable: the not-ready taint lifted.
                let n = nodes.get_opt(NODE_NAME).await.ok().flatten()?;
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
            "node {NODE_NAME} not Ready after 120s; kubelet:\n{}",
            self.kubelet.as_ref().unwrap().log_tail()
        );
        let classes: Api<StorageClass> = Api::all(client.clone());
        let class: StorageClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": { "storageclass.kubernetes.io/is-default-class": "true" }
            },
            "provisioner": "kubernetes.io/no-provisioner",
            // hostPath volumes ignore fsGroup; local ones, bound at scheduling, do not.
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Retain"
        }))
        .unwrap();
        classes
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
        // Pods cannot be created in a namespace before its default ServiceAccount.
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        super::process::wait_for(
            "the default ServiceAccount",
            Duration::from_secs(60),
            || async { sas.get_opt("default").await.ok().flatten() },
        )
        .await;
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
                    "key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]
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
        self.kubelet.as_ref().map(|k| k.log()).unwrap_or_default()
    }

    pub fn pids(&self) -> Vec<u32> {
        [
            &self.kubelet,
            &self.proxy,
            &self.scheduler,
            &self.dns,
            &self.containerd,
        ]
        .into_iter()
        .flatten()
        .map(|p| p.pid())
        .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The kubelet first, so that it restarts nothing we then kill.
        for p in [
            &mut self.kubelet,
            &mut self.scheduler,
            &mut self.proxy,
            &mut self.dns,
        ] {
            drop(p.take());
        }
        let containerd_dir = self.dir.path().join("containerd");
        // Containers and their shims, then containerd itself.
        sweep(Some(&containerd_dir));
        drop(self.containerd.take());
        let _ = Command::new(bin("kube-proxy")).arg("--cleanup").output();
        sweep(Some(&containerd_dir));
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
