//! The operator under test, run in-process against a real control plane, and
//! helpers to set up what a user would create with kubectl.

use super::k8s::create_secret;
use dbbackup_operator::api::DatabaseBackup;
use dbbackup_operator::operator::egress::Allowed;
use dbbackup_operator::operator::metrics::{Metrics, counting_client};
use dbbackup_operator::operator::{self, Context, Settings};
use kube::Client;
use kube::api::{Api, PostParams};
use std::sync::Arc;

pub const UPLOADER_IMAGE: &str = "registry.test/dbbackup-operator:test";

/// A controller running in this test process; stopped on drop.
pub struct RunningOperator {
    pub ctx: Arc<Context>,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningOperator {
    pub fn start(client: &Client) -> RunningOperator {
        Self::start_with(client, None, UPLOADER_IMAGE)
    }

    /// One that sends notifications to internal addresses only where
    /// `allowed` says (the others allow the loopback test receivers).
    pub fn start_allowing(client: &Client, allowed: &[&str]) -> RunningOperator {
        let allowed = allowed.iter().map(|n| n.parse().unwrap()).collect();
        Self::start_settings(client, None, UPLOADER_IMAGE, Allowed::new(allowed))
    }

    /// One that watches every namespace, its jobs in the node's image: a
    /// test that runs it holds the cluster alone (`bed_alone`).
    pub fn start_everywhere(client: &Client) -> RunningOperator {
        Self::start_with(client, None, super::node::OPERATOR_IMAGE)
    }

    /// One watching `namespace` only, as tests sharing a cluster need, whose
    /// upload pods run the real node's operator image.
    pub fn start_in(client: &Client, namespace: &str) -> RunningOperator {
        Self::start_with(client, Some(namespace.into()), super::node::OPERATOR_IMAGE)
    }

    fn start_with(
        client: &Client,
        namespace: Option<String>,
        uploader_image: &str,
    ) -> RunningOperator {
        let loopback = Allowed::new(vec!["127.0.0.0/8".parse().unwrap()]);
        Self::start_settings(client, namespace, uploader_image, loopback)
    }

    fn start_settings(
        client: &Client,
        namespace: Option<String>,
        uploader_image: &str,
        notify_allowed: Allowed,
    ) -> RunningOperator {
        // Operator logs go to the test's output (shown for failing tests).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .try_init();
        let metrics = Arc::new(Metrics::default());
        // Requests counted as the binary counts them.
        let client = counting_client(client.clone(), metrics.clone());
        let ctx = Arc::new(Context::new(
            client,
            Settings {
                uploader_image: uploader_image.into(),
                notify_allowed,
                limit_ranged: Default::default(),
            },
            metrics,
        ));
        let handle = tokio::spawn(operator::run(ctx.clone(), namespace));
        RunningOperator { ctx, handle }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A DatabaseBackup manifest as a user would write it.
pub fn backup_manifest(name: &str, engine: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "dbbackup.io/v1alpha1",
        "kind": "DatabaseBackup",
        "metadata": { "name": name },
        "spec": {
            "database": {
                "engine": engine,
                "host": "db.example.svc",
                "name": "shop",
                "credentialsSecret": { "name": "db-creds" }
            },
            "schedule": "0 3 * * *",
            "bucket": { "secretRef": { "name": "s3-creds" } }
        }
    })
}

pub async fn create_backup(
    client: &Client,
    ns: &str,
    manifest: serde_json::Value,
) -> DatabaseBackup {
    let api: Api<DatabaseBackup> = Api::namespaced(client.clone(), ns);
    let db: DatabaseBackup = serde_json::from_value(manifest).unwrap();
    api.create(&PostParams::default(), &db).await.unwrap()
}

/// The Secrets the sample manifest refers to, with distinctive values.
pub async fn create_sample_secrets(client: &Client, ns: &str) {
    create_secret(
        client,
        ns,
        "db-creds",
        &[
            ("username", "backup"),
            ("password", "dbPASSsample0123456789"),
        ],
    )
    .await;
    create_secret(
        client,
        ns,
        "s3-creds",
        &[
            ("bucket", "backups"),
            ("accessKeyId", "AKSAMPLE"),
            ("secretAccessKey", "s3SECRETsample0123456789"),
        ],
    )
    .await;
}

/// The real operator binary (`run`), as a process against a control plane,
/// with its output kept for scans and failure messages.
pub struct OperatorProcess {
    pub process: super::process::ServerProcess,
    pub port: u16,
    _logs: tempfile::TempDir,
}

impl OperatorProcess {
    pub fn start(
        cp: &super::ControlPlane,
        pod_name: &str,
        extra_args: &[String],
    ) -> OperatorProcess {
        Self::start_with_kubeconfig(&cp.kubeconfig, pod_name, extra_args)
    }

    pub fn start_with_kubeconfig(
        kubeconfig: &std::path::Path,
        pod_name: &str,
        extra_args: &[String],
    ) -> OperatorProcess {
        let port = super::process::free_port();
        let mut cmd = std::process::Command::new(super::process::operator_bin());
        cmd.arg("run")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(extra_args)
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", pod_name)
            .env("RUST_LOG", "info,kube=warn")
            .env("DBBACKUP_UPLOADER_IMAGE", super::node::OPERATOR_IMAGE);
        let logs = tempfile::tempdir().unwrap();
        let process =
            super::process::ServerProcess::spawn(pod_name, cmd, logs.path(), libc::SIGTERM);
        OperatorProcess {
            process,
            port,
            _logs: logs,
        }
    }

    /// `dbbackup_reconciles_total` from its /metrics, once it serves them.
    pub fn reconciles(&self) -> Option<u64> {
        let (_, body) = super::process::http_get(self.port, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix("dbbackup_reconciles_total "))?
            .trim()
            .parse()
            .ok()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}
