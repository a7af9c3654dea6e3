//! What runs on a node beside the kubelet (containerd and the images it
//! serves to pods, kube-proxy), and once per cluster on the host (the
//! scheduler, CoreDNS, the default StorageClass).

use super::{HIDDEN_PATHS, NODE_IP, Node, PAUSE_IMAGE, PODS_CIDR, STORAGE_CLASS, node_env};
use crate::support::controlplane::ControlPlane;
use crate::support::process::{ServerProcess, bin, bin_dir, free_port, wait_until};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

impl Node {
    /// containerd in a private mount namespace, once it serves.
    // One function, long: the configuration it writes names the paths that
    // the mount namespace set up before exec hides, and both must agree.
    pub(super) fn start_containerd(&self) -> ServerProcess {
        let d = self.dir.path();
        let spec = &self.spec;
        self.write(
            "cni/net.d/10-dbbackup.conflist",
            &serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "dbbackup",
                "plugins": [{
                    "type": "bridge",
                    "bridge": spec.bridge,
                    // The single node's bridge already has NODE_IP: no
                    // gateway setup, and so no IP forwarding switched on by
                    // the plugin on the host. A node of several routes its
                    // pods from a bridge of its own namespace.
                    "isGateway": spec.netns.is_some(),
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": spec.pod_subnet, "gateway": spec.pod_gateway() }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": d.join("cni/ipam"),
                    }
                }]
            })
            .to_string(),
        );
        let config = self.write(
            "containerd/config.toml",
            &format!(
                r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE in this VM: without it every sandbox fails.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
"#,
                d = d.display(),
                sock = self.sock().display()
            ),
        );
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        node_env(&mut cmd)
            // Every registry request goes to a proxy that is not there: an
            // image that is not on the node fails to pull at once, with no
            // name lookup or connection beyond the machine.
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9");
        let hidden: Vec<std::ffi::CString> = HIDDEN_PATHS
            .iter()
            .map(|p| std::ffi::CString::new(*p).unwrap())
            .collect();
        // No name server for containerd and the kubelet either.
        let resolv = std::ffi::CString::new(self.resolv_conf().to_str().unwrap()).unwrap();
        let netns = self.spec.netns_file();
        // SAFETY: between fork and exec only async-signal-safe syscalls, on
        // strings and a file opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let none = c"none";
                if libc::mount(
                    none.as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for p in &hidden {
                    if libc::mount(
                        c"tmpfs".as_ptr(),
                        p.as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        c"mode=0755".as_ptr().cast(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::mount(
                    resolv.as_ptr(),
                    c"/etc/resolv.conf".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut p = ServerProcess::spawn("containerd", cmd, self.dir.path(), libc::SIGTERM);
        let sock = self.sock();
        wait_until("containerd to serve", Duration::from_secs(30), || {
            p.assert_running();
            sock.exists()
                && Command::new("ctr")
                    .arg("--address")
                    .arg(&sock)
                    .arg("version")
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
        });
        p
    }

    /// Imports every image archive the build script published.
    pub(super) fn import_images(&self) {
        let images = images_dir();
        for name in ["pause", "mariadb", "postgres", "operator"] {
            let archive = images.join(format!("{name}.tar"));
            assert!(
                archive.exists(),
                "image archive {} is missing: run `bash tests/testenv/install.sh` (and, for the operator, tests/run.sh)",
                archive.display()
            );
            let mut cmd = Command::new("ctr");
            cmd.arg("--address")
                .arg(self.sock())
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&archive);
            crate::support::run_ok(&mut cmd);
        }
    }

    pub(super) fn start_proxy(&self, containerd: u32) -> ServerProcess {
        let config = self.write(
            "kube-proxy.yaml",
            &format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kc}
hostnameOverride: {name}
bindAddress: {ip}
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
clusterCIDR: {PODS_CIDR}
nodePortAddresses: ["{ip}/32"]
# Leave the host's sysctls alone: no localhost NodePorts, no conntrack tuning.
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
oomScoreAdj: 0
"#,
                kc = self.kubeconfig.display(),
                healthz = free_port(),
                metrics = free_port(),
                name = self.spec.name,
                ip = self.spec.ip,
            ),
        );
        let mut cmd = Command::new(bin("kube-proxy"));
        cmd.arg(format!("--config={}", config.display()))
            .arg("--v=0");
        // Its rules go where the node's pods' packets pass.
        self.join_node(&mut cmd, containerd, false);
        ServerProcess::spawn("kube-proxy", cmd, self.dir.path(), libc::SIGTERM)
    }
}

/// What a cluster runs once, on the host, for all its nodes.
pub struct ClusterServices {
    scheduler: ServerProcess,
    dns: ServerProcess,
}

impl ClusterServices {
    /// The scheduler and CoreDNS, the operator's image built, the default
    /// StorageClass; waits for the default ServiceAccount.
    pub async fn start(cp: &ControlPlane) -> ClusterServices {
        build_operator_image();
        let services = ClusterServices {
            scheduler: start_scheduler(cp),
            dns: start_dns(cp),
        };
        let client = cp.client().await;
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
        Api::<StorageClass>::all(client.clone())
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
        // Pods cannot be created in a namespace before its default ServiceAccount.
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        crate::support::process::wait_for(
            "the default ServiceAccount",
            Duration::from_secs(60),
            || async { sas.get_opt("default").await.ok().flatten() },
        )
        .await;
        services
    }

    pub fn pids(&self) -> Vec<u32> {
        vec![self.scheduler.pid(), self.dns.pid()]
    }

    pub fn assert_running(&mut self) {
        self.scheduler.assert_running();
        self.dns.assert_running();
    }
}

fn start_scheduler(cp: &ControlPlane) -> ServerProcess {
    let mut cmd = Command::new(bin("kube-scheduler"));
    cmd.args(cp.component_kubeconfigs())
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", free_port()))
        .arg("--v=0");
    ServerProcess::spawn("kube-scheduler", cmd, cp.dir(), libc::SIGTERM)
}

/// CoreDNS on the host's address on the test network, answering for
/// cluster.local only: no name outside the cluster resolves in a pod.
fn start_dns(cp: &ControlPlane) -> ServerProcess {
    let ready = free_port();
    let corefile = cp.dir().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            r#".:53 {{
    bind {NODE_IP}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kc}
        pods insecure
        ttl 5
    }}
    ready 127.0.0.1:{ready}
}}
"#,
            kc = cp.kubeconfig.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("coredns"));
    cmd.arg("-conf").arg(&corefile);
    let mut p = ServerProcess::spawn("coredns", cmd, cp.dir(), libc::SIGTERM);
    wait_until("CoreDNS to be ready", Duration::from_secs(60), || {
        p.assert_running();
        crate::support::process::http_get(ready, "/ready").is_some_and(|(code, _)| code == 200)
    });
    p
}

fn images_dir() -> PathBuf {
    bin_dir().parent().unwrap().join("images")
}

/// Builds (or finds, cached by the binary's hash) the operator image from the
/// release binary next to this test's debug binary.
pub fn build_operator_image() {
    let debug = crate::support::process::operator_bin();
    let release = debug
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("release/dbbackup-operator");
    let built = std::fs::metadata(&release)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "the operator image is built from the release binary, and {} is missing: run `cargo build --release` (tests/run.sh does)",
                release.display()
            )
        });
    // An image of older code would test that code in every pod.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    crate::support::host::walk_files(&src, &mut |f| {
        if let Ok(t) = std::fs::metadata(f).and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    });
    assert!(
        built >= newest,
        "{} is older than the sources in src/: run `cargo build --release` (tests/run.sh does)",
        release.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testenv/images/build.sh");
    crate::support::run_ok(
        Command::new("bash")
            .arg(script)
            .arg("operator")
            .arg(release),
    );
}
