//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and,
//! optionally, kube-controller-manager, started the way envtest starts them.

use super::node::NODE_IP;
use super::pki::{Pki, kubeconfig_yaml, write_pki};
use super::process::{ServerProcess, bin, free_port, poll, port_open, port_open_on, wait_until};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

pub struct ControlPlane {
    // Field order is drop order: controller manager and apiserver stop before etcd,
    // and the directory goes last.
    controller_manager: Option<ServerProcess>,
    /// Behind a lock: a test restarts it through a shared cluster.
    apiserver: std::sync::Mutex<ServerProcess>,
    etcd: ServerProcess,
    apiserver_args: Vec<String>,
    /// Where the apiserver listens: loopback, or the node's address.
    host: &'static str,
    pub url: String,
    pub kubeconfig: PathBuf,
    dir: TempDir,
}

#[derive(Default, Clone, Copy)]
pub struct Options {
    /// Also run kube-controller-manager (garbage collector, CronJob and Job controllers).
    pub controller_manager: bool,
    /// Serve a real node (see `node.rs`): listen on its address, which pods
    /// reach, back the kubernetes Service, admit ServiceAccount tokens, and run
    /// the controllers Deployments and PersistentVolumes need.
    pub for_node: bool,
    /// Seconds without a kubelet's heartbeat before its node is NotReady
    /// (the controller manager's default, 50, when None).
    pub node_grace: Option<u32>,
}

impl ControlPlane {
    pub async fn start() -> ControlPlane {
        Self::start_with(Options::default()).await
    }

    pub async fn with_controller_manager() -> ControlPlane {
        Self::start_with(Options {
            controller_manager: true,
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(opts: Options) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("dbbackup-controlplane-")
            .tempdir()
            .unwrap();
        let pki = write_pki(dir.path());
        let (etcd, etcd_url) = start_etcd(dir.path());

        let port = free_port();
        let host = if opts.for_node { NODE_IP } else { "127.0.0.1" };
        let url = format!("https://{host}:{port}");
        let apiserver_args = apiserver_args(&opts, &etcd_url, host, port, dir.path(), &pki);
        let mut apiserver = spawn_apiserver(&apiserver_args, dir.path());

        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url, &pki)).unwrap();

        let mut cp = ControlPlane {
            controller_manager: None,
            apiserver: {
                // Wait outside the struct so a timeout still drops etcd through `etcd`.
                wait_until("kube-apiserver to listen", Duration::from_secs(60), || {
                    apiserver.assert_running();
                    port_open_on(host, port)
                });
                std::sync::Mutex::new(apiserver)
            },
            etcd,
            apiserver_args,
            host,
            url,
            kubeconfig,
            dir,
        };
        cp.wait_ready().await;
        if opts.controller_manager {
            cp.controller_manager = Some(cp.start_controller_manager(&opts, &pki));
        }
        cp
    }

    fn start_controller_manager(&self, opts: &Options, pki: &Pki) -> ServerProcess {
        let mut controllers = vec![
            // Garbage collection and the workload controllers the operator relies on.
            "garbage-collector-controller",
            "cronjob-controller",
            "job-controller",
            "serviceaccount-controller",
            "namespace-controller",
            // Quota usage, without which quota admission refuses every pod.
            "resourcequota-controller",
        ];
        if opts.for_node {
            controllers.extend([
                // helm's Deployment, PersistentVolumeClaims, Services, token volumes.
                "deployment-controller",
                "replicaset-controller",
                "persistentvolume-binder-controller",
                "persistentvolumeclaim-protection-controller",
                "persistentvolume-protection-controller",
                "endpointslice-controller",
                "endpointslice-mirroring-controller",
                "root-ca-certificate-publisher-controller",
                "pod-garbage-collector-controller",
                // Lifts the not-ready taint the kubelet registers with.
                "node-lifecycle-controller",
                // The disruptions a PodDisruptionBudget allows, which a
                // drain's evictions ask for (the chart's, above one replica).
                "disruption-controller",
            ]);
        }
        let mut kcm = Command::new(bin("kube-controller-manager"));
        kcm.args(self.component_kubeconfigs())
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg(format!(
                "--cert-dir={}",
                self.dir.path().join("kcm").display()
            ))
            .arg(format!("--controllers={}", controllers.join(",")))
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg("--use-service-account-credentials=false")
            .arg("--concurrent-gc-syncs=5")
            .arg("--v=0");
        if let Some(grace) = opts.node_grace {
            kcm.arg(format!("--node-monitor-grace-period={grace}s"));
        }
        ServerProcess::spawn(
            "kube-controller-manager",
            kcm,
            self.dir.path(),
            libc::SIGTERM,
        )
    }

    fn apiserver(&self) -> std::sync::MutexGuard<'_, ServerProcess> {
        self.apiserver.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn wait_ready(&self) {
        let client = self.client().await;
        let ready = poll(Duration::from_millis(100), Duration::from_secs(60), || {
            self.apiserver().assert_running();
            let client = &client;
            async move {
                let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
                let body = client.request_text(req).await.ok()?;
                (body.trim() == "ok").then_some(())
            }
        })
        .await;
        assert!(
            ready.is_some(),
            "kube-apiserver not ready after 60s; last output:\n{}",
            self.apiserver().log_tail()
        );
    }

    /// A client authenticated as cluster admin (system:masters).
    pub async fn client(&self) -> kube::Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// A command for the real kubectl, pointed at this control plane.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(bin("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// A command for the real helm, pointed at this control plane, with its
    /// caches kept in this control plane's directory.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(bin("helm"));
        let home = self.dir.path().join("helm");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.etcd.pid(), self.apiserver().pid()];
        pids.extend(self.controller_manager.as_ref().map(|p| p.pid()));
        pids
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The kubeconfig flags of a control-plane component (controller
    /// manager, scheduler): it talks, authenticates and authorizes as admin.
    pub fn component_kubeconfigs(&self) -> Vec<String> {
        [
            "kubeconfig",
            "authentication-kubeconfig",
            "authorization-kubeconfig",
        ]
        .iter()
        .map(|flag| format!("--{flag}={}", self.kubeconfig.display()))
        .collect()
    }

    /// The cluster CA's certificate (PEM file).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Restarts kube-apiserver on the same port and etcd data, as a crash or upgrade would.
    pub async fn restart_apiserver(&self) {
        {
            let mut apiserver = self.apiserver();
            apiserver.kill();
            *apiserver = spawn_apiserver(&self.apiserver_args, self.dir.path());
        }
        self.wait_ready().await;
    }
}

fn spawn_apiserver(args: &[String], dir: &Path) -> ServerProcess {
    let mut cmd = Command::new(bin("kube-apiserver"));
    cmd.args(args);
    ServerProcess::spawn("kube-apiserver", cmd, dir, libc::SIGTERM)
}

/// etcd on a free loopback port, once it listens, and its client URL.
fn start_etcd(dir: &Path) -> (ServerProcess, String) {
    let etcd_port = free_port();
    let peer_port = free_port();
    let mut etcd_cmd = Command::new(bin("etcd"));
    let client_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    etcd_cmd
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .arg("--unsafe-no-fsync=true")
        .arg("--log-level=warn");
    let mut etcd = ServerProcess::spawn("etcd", etcd_cmd, dir, libc::SIGTERM);
    wait_until("etcd to listen", Duration::from_secs(30), || {
        etcd.assert_running();
        port_open(etcd_port)
    });
    (etcd, client_url)
}

fn apiserver_args(
    opts: &Options,
    etcd_url: &str,
    host: &str,
    port: u16,
    dir: &Path,
    pki: &Pki,
) -> Vec<String> {
    let mut apiserver_args: Vec<String> = vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--bind-address={host}"),
        format!("--advertise-address={host}"),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", dir.display()),
        format!("--tls-cert-file={}", pki.serving_cert.display()),
        format!("--tls-private-key-file={}", pki.serving_key.display()),
        format!("--client-ca-file={}", pki.ca_cert.display()),
        format!("--service-account-key-file={}", pki.sa_pub.display()),
        format!(
            "--service-account-signing-key-file={}",
            pki.sa_key.display()
        ),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        // Where an OpenID client (MinIO, in the keyless tests) fetches the
        // token keys: this server, as the host reaches it.
        format!("--service-account-jwks-uri=https://{host}:{port}/openid/v1/jwks"),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--authorization-mode=RBAC".into(),
        "--allow-privileged=true".into(),
        "--v=0".into(),
    ];
    if opts.for_node {
        apiserver_args.extend([
            format!(
                "--kubelet-client-certificate={}",
                pki.admin_cert_file.display()
            ),
            format!("--kubelet-client-key={}", pki.admin_key_file.display()),
            // `kubectl logs` reaches the kubelet on the node's address.
            "--kubelet-preferred-address-types=InternalIP".into(),
        ]);
    } else {
        apiserver_args.extend([
            // Loopback may not back the kubernetes Service; nothing here needs it.
            "--endpoint-reconciler-type=none".into(),
            // As envtest: no ServiceAccount admission, since no kubelet mounts tokens here.
            "--disable-admission-plugins=ServiceAccount".into(),
        ]);
    }
    apiserver_args
}
