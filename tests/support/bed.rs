//! The end-to-end bed: a control plane with the controller manager, MinIO
//! with a bucket, a database loaded with the shop data, the Secrets a user
//! creates, and helpers to apply a backup and play kubelet for it.

use super::kubelet::{FakeKubelet, RanPod};
use super::operator::*;
use super::pipeline::*;
use super::*;
use dbbackup_operator::api::{DatabaseBackup, Engine};
use kube::Client;
use kube::api::Api;
use std::time::{Duration, Instant};

pub const NS: &str = "shop";

pub enum Db {
    Maria(MariaDb),
    Pg(Postgres),
}

impl Db {
    pub fn start(engine: Engine) -> Db {
        match engine {
            Engine::Postgres => {
                let pg = Postgres::start();
                load_shop_postgres(&pg, "shop");
                Db::Pg(pg)
            }
            _ => {
                let db = MariaDb::start();
                load_shop_mariadb(&db, "shop");
                Db::Maria(db)
            }
        }
    }

    /// Runs SQL in `database` as the backup user.
    pub fn exec(&self, database: &str, sql: &str) -> String {
        match self {
            Db::Maria(d) => d.query(database, sql),
            Db::Pg(p) => p.query(database, sql),
        }
    }

    /// Row counts and content checksums of the shop tables in `database`.
    pub fn fingerprint(&self, database: &str) -> Vec<(String, String)> {
        match self {
            Db::Maria(d) => fingerprint_mariadb(d, database),
            Db::Pg(p) => fingerprint_postgres(p, database),
        }
    }

    pub fn login(&self) -> (u16, String, String) {
        match self {
            Db::Maria(d) => (d.port, d.user.clone(), d.password.clone()),
            Db::Pg(p) => (p.port, p.user.clone(), p.password.clone()),
        }
    }

    pub fn restore_and_compare(&self, database: &str, sql: &[u8]) {
        match self {
            Db::Maria(d) => {
                restore_mariadb(d, database, sql);
                assert_eq!(
                    fingerprint_mariadb(d, database),
                    fingerprint_mariadb(d, "shop")
                );
            }
            Db::Pg(p) => {
                restore_postgres(p, database, sql);
                assert_eq!(
                    fingerprint_postgres(p, database),
                    fingerprint_postgres(p, "shop")
                );
            }
        }
    }
}

pub struct Bed {
    pub cp: ControlPlane,
    pub client: Client,
    pub minio: Minio,
    pub db: Db,
    pub engine: Engine,
}

pub async fn bed(engine: Engine) -> Bed {
    let cp = ControlPlane::with_controller_manager().await;
    let client = cp.client().await;
    install_crd(&client).await;
    create_namespace(&client, NS, &[]).await;
    let minio = Minio::start();
    create_bucket(&minio).await;
    let db = Db::start(engine);
    let (_, user, password) = db.login();
    create_secret(
        &client,
        NS,
        "db-creds",
        &[("username", &user), ("password", &password)],
    )
    .await;
    create_secret(
        &client,
        NS,
        "s3-creds",
        &[
            ("bucket", BUCKET),
            ("accessKeyId", &minio.access_key),
            ("secretAccessKey", &minio.secret_key),
            ("endpoint", &minio.endpoint),
        ],
    )
    .await;
    Bed {
        cp,
        client,
        minio,
        db,
        engine,
    }
}

pub fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let out = run_ok(cp.kubectl().args(args));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The DatabaseBackup a user writes, applied with the real kubectl.
pub fn apply_backup(b: &Bed) {
    apply_backup_with(b, "");
}

/// As `apply_backup`, with more spec fields (YAML indented as under `spec:`).
pub fn apply_backup_with(b: &Bed, more_spec: &str) {
    let (port, _, _) = b.db.login();
    let manifest = format!(
        r#"apiVersion: dbbackup.io/v1alpha1
kind: DatabaseBackup
metadata:
  name: orders
  namespace: {NS}
spec:
  database:
    engine: {engine}
    host: 127.0.0.1
    port: {port}
    name: shop
    credentialsSecret:
      name: db-creds
  # The kube-controller-manager runs the CronJobs here: schedules that never
  # fire during a test (the upload's default, every 5 minutes, would add a pod).
  schedule: "0 3 29 2 *"
  uploadSchedule: "0 3 29 2 *"
  bucket:
    secretRef:
      name: s3-creds
    prefix: ""
{more_spec}"#,
        engine = b.engine.as_str()
    );
    let path = b.cp.dir().join("orders.yaml");
    std::fs::write(&path, manifest).unwrap();
    kubectl(&b.cp, &["apply", "-f", path.to_str().unwrap()]);
}

pub async fn status_of(client: &Client) -> dbbackup_operator::api::DatabaseBackupStatus {
    let api: Api<DatabaseBackup> = Api::namespaced(client.clone(), NS);
    api.get("orders").await.unwrap().status.unwrap_or_default()
}

/// Waits until the status reflects `pod` and returns how long that took after
/// the pod's terminated status reached the apiserver.
pub async fn status_latency(client: &Client, pod: &RanPod) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if status_of(client).await.processed_pods.contains(&pod.uid) {
            return pod.reported.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "status never reflected pod {}",
            pod.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A bed with the operator running and backup "orders" applied (with
/// `more_spec`) and Ready, and a kubelet for its pods.
pub async fn ready_bed(engine: Engine, more_spec: &str) -> (Bed, RunningOperator, FakeKubelet) {
    let b = bed(engine).await;
    let op = RunningOperator::start(&b.client);
    apply_backup_with(&b, more_spec);
    let backups: Api<DatabaseBackup> = Api::namespaced(b.client.clone(), NS);
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    let kubelet = FakeKubelet::new(&b.client, NS);
    (b, op, kubelet)
}

/// Asks for a backup now, as a user would.
pub fn request_backup(b: &Bed, token: &str) {
    kubectl(
        &b.cp,
        &[
            "annotate",
            "--overwrite",
            "-n",
            NS,
            "dbb",
            "orders",
            &format!("dbbackup.io/run-now={token}"),
        ],
    );
}

/// Asks for a backup now and plays kubelet for the dump and the chained upload.
pub async fn backup_now(
    b: &Bed,
    kubelet: &mut FakeKubelet,
    token: &str,
    latencies: &mut Vec<Duration>,
) {
    request_backup(b, token);
    let dump = kubelet.run_pods(1, Duration::from_secs(60)).await.remove(0);
    assert_eq!(
        (dump.step.as_str(), dump.exit_code),
        ("dump", 0),
        "{}",
        dump.output
    );
    latencies.push(status_latency(&b.client, &dump).await);
    let upload = kubelet.run_pods(1, Duration::from_secs(60)).await.remove(0);
    assert_eq!(
        (upload.step.as_str(), upload.exit_code),
        ("upload", 0),
        "{}",
        upload.output
    );
    latencies.push(status_latency(&b.client, &upload).await);
}

pub fn count(lines: &[String], message: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.ends_with(&format!(",{message}")))
        .count()
}

/// Starts a Job from `cronjob` with the real kubectl, as a user would, and
/// plays kubelet for its pod.
pub async fn run_job_from(b: &Bed, kubelet: &mut FakeKubelet, cronjob: &str, job: &str) -> RanPod {
    create_job_from(b, cronjob, job);
    kubelet.run_pods(1, Duration::from_secs(60)).await.remove(0)
}

/// `kubectl create job --from=cronjob/<cronjob> <job>`.
pub fn create_job_from(b: &Bed, cronjob: &str, job: &str) {
    kubectl(
        &b.cp,
        &[
            "create",
            "job",
            "-n",
            NS,
            &format!("--from=cronjob/{cronjob}"),
            job,
        ],
    );
}

/// Creates or replaces a Secret with the real kubectl, as a user fixing one would.
pub fn apply_secret(cp: &ControlPlane, name: &str, pairs: &[(&str, &str)]) {
    let mut secret = secret(name, pairs);
    secret.metadata.namespace = Some(NS.into());
    let path = cp.dir().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string(&secret).unwrap()).unwrap();
    kubectl(cp, &["apply", "-f", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
}

/// Replaces the bucket Secret "s3-creds" with kubectl, as a user would.
pub fn apply_bucket_secret(b: &Bed, bucket: &str, secret_key: &str, endpoint: &str) {
    apply_secret(
        &b.cp,
        "s3-creds",
        &[
            ("bucket", bucket),
            ("accessKeyId", &b.minio.access_key),
            ("secretAccessKey", secret_key),
            ("endpoint", endpoint),
        ],
    );
}
