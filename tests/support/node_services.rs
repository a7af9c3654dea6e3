//! What runs on the node beside the kubelet: containerd and the images it
//! serves to pods, the scheduler, kube-proxy and CoreDNS.

use super::{BRIDGE, HIDDEN_PATHS, NODE_IP, NODE_NAME, Node, PAUSE_IMAGE, POD_SUBNET, node_env};
use crate::support::controlplane::ControlPlane;
use crate::support::process::{ServerProcess, bin, bin_dir, free_port, wait_until};
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
        self.write(
            "cni/net.d/10-dbbackup.conflist",
            &serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "dbbackup",
                "plugins": [{
                    "type": "bridge",
                    "bridge": BRIDGE,
                    // The bridge already has NODE_IP; no gateway setup and
                    // so no IP forwarding switched on by the plugin.
                    "isGateway": false,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": POD_SUBNET, "gateway": NODE_IP }]],
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
        // SAFETY: between fork and exec only async-signal-safe syscalls, on
        // strings allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
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

    pub(super) fn start_scheduler(&self, cp: &ControlPlane) -> ServerProcess {
        let mut cmd = Command::new(bin("kube-scheduler"));
        cmd.args(cp.component_kubeconfigs())
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg("--v=0");
        ServerProcess::spawn("kube-scheduler", cmd, self.dir.path(), libc::SIGTERM)
    }

    pub(super) fn start_proxy(&self) -> ServerProcess {
        let config = self.write(
            "kube-proxy.yaml",
            &format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kc}
hostnameOverride: {NODE_NAME}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
clusterCIDR: {POD_SUBNET}
nodePortAddresses: ["{NODE_IP}/32"]
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
            ),
        );
        let mut cmd = Command::new(bin("kube-proxy"));
        cmd.arg(format!("--config={}", config.display()))
            .arg("--v=0");
        ServerProcess::spawn("kube-proxy", cmd, self.dir.path(), libc::SIGTERM)
    }

    /// CoreDNS on the node's address, answering for cluster.local only:
    /// no name outside the cluster resolves in a pod.
    pub(super) fn start_dns(&self) -> ServerProcess {
        let ready = free_port();
        let corefile = self.write(
            "Corefile",
            &format!(
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
                kc = self.kubeconfig.display()
            ),
        );
        let mut cmd = Command::new(bin("coredns"));
        cmd.arg("-conf").arg(&corefile);
        let mut p = ServerProcess::spawn("coredns", cmd, self.dir.path(), libc::SIGTERM);
        wait_until("CoreDNS to be ready", Duration::from_secs(60), || {
            p.assert_running();
            crate::support::process::http_get(ready, "/ready").is_some_and(|(code, _)| code == 200)
        });
        p
    }
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
