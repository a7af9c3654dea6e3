//! The operator under test, run in-process against a real control plane, and
//! helpers to set up what a user would create with kubectl.

pub use super::process::wait_for;
use dbbackup_operator::api::DatabaseBackup;
use dbbackup_operator::controller::{self, Context, resources::Settings};
use dbbackup_operator::metrics::{Metrics, counting_client};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const UPLOADER_IMAGE: &str = "registry.test/dbbackup-operator:test";

/// Installs the checked-in CRDs from `crds/`, as `kubectl apply -f crds/` would, and
/// waits until they are established.
pub async fn install_crd(client: &Client) {
    for file in ["databasebackups.yaml", "databaserestores.yaml"] {
        let path = format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(path).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &crd).await.unwrap();
        let name = crd.name_any();
        let established = await_condition(crds, &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .expect("CRD established within 30s")
            .unwrap();
    }
}

/// A controller running in this test process; stopped on drop.
pub struct RunningOperator {
    pub ctx: Arc<Context>,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningOperator {
    pub fn start(client: &Client) -> RunningOperator {
        Self::start_with(client, None, UPLOADER_IMAGE)
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
            },
            metrics,
        ));
        let handle = tokio::spawn(controller::run(ctx.clone(), namespace));
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

/// A control plane with the CRD installed and namespace `ns` created.
pub async fn setup(ns: &str) -> (super::ControlPlane, Client) {
    let cp = super::ControlPlane::start().await;
    let client = cp.client().await;
    install_crd(&client).await;
    create_namespace(&client, ns, &[]).await;
    (cp, client)
}

pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

pub async fn create_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(&PostParams::default(), &secret(name, data))
        .await
        .unwrap();
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

/// Waits until the resource's Ready condition has `status` and returns the resource.
pub async fn wait_ready(
    api: &Api<DatabaseBackup>,
    name: &str,
    status: &str,
    reason: &str,
) -> DatabaseBackup {
    wait_for(
        &format!("{name} Ready={status} reason={reason}"),
        Duration::from_secs(60),
        || async {
            let db = api.get(name).await.ok()?;
            let ready = db
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?
                .clone();
            (ready.status == status && ready.reason == reason).then_some(db)
        },
    )
    .await
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
