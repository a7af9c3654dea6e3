//! The end-to-end bed: a namespace of its own on the shared single-node
//! cluster, MinIO with a bucket and a database loaded with the shop data (both
//! on the node's address, where pods reach them), the Secrets a user creates,
//! the staging volume, and helpers to apply a backup and follow its pods.

use super::incluster::HelmOperator;
use super::k8s::*;
use super::minio::{BUCKET, MinioOpts, create_bucket};
use super::node::NODE_IP;
use super::operator::*;
use super::pods::{Pods, RanPod};
use super::process::{poll, wait_for};
use super::*;
use dbbackup_operator::api::{
    DatabaseBackup, DatabaseBackupStatus, DatabaseRestore, DatabaseRestoreStatus, Engine,
};
use kube::Client;
use kube::api::Api;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct Bed {
    pub cluster: Arc<Cluster>,
    /// This test's namespace; deleted, with everything in it, on drop.
    pub ns: String,
    pub client: Client,
    pub minio: Minio,
    pub db: Database,
    /// The database's address, as pods reach it.
    pub db_host: String,
    pub engine: Engine,
    /// The host directory behind the backup's staging volume.
    pub staging: PathBuf,
    _share: Share,
}

/// How a bed holds the shared cluster: alongside other tests, or alone.
pub enum Share {
    With(tokio::sync::OwnedRwLockReadGuard<()>),
    Alone(tokio::sync::OwnedRwLockWriteGuard<()>),
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Its pods stop with it; the cluster outlives the test.
        let _ = self
            .cluster
            .cp
            .kubectl()
            .args(["delete", "namespace", &self.ns, "--wait=false"])
            .output();
    }
}

pub async fn bed(engine: Engine) -> Bed {
    bed_in(engine, &[]).await
}

/// A bed whose namespace has `labels`.
pub async fn bed_in(engine: Engine, labels: &[(&str, &str)]) -> Bed {
    let cluster = Cluster::shared();
    let share = Share::With(cluster.share().await);
    make_bed(cluster, share, engine, labels).await
}

/// A bed for a test that disturbs the cluster: no other test runs meanwhile.
pub async fn bed_alone(engine: Engine) -> Bed {
    let cluster = Cluster::shared();
    let share = Share::Alone(cluster.exclusive().await);
    make_bed(cluster, share, engine, &[]).await
}

/// A bed whose MinIO is started as `opts` says, given the cluster.
pub async fn bed_with_minio(engine: Engine, opts: impl FnOnce(&Cluster) -> MinioOpts) -> Bed {
    let cluster = Cluster::shared();
    let share = Share::With(cluster.share().await);
    let opts = opts(&cluster);
    make_bed_with(cluster, share, engine, &[], opts, Where::default()).await
}

/// Where a bed's parts are on a cluster of several nodes (node indices).
#[derive(Default)]
pub struct Where {
    /// The node whose local volume backs the staging claim.
    pub staging: usize,
    /// The node the database runs on (its network); None: the host.
    pub database: Option<usize>,
    /// The test stops nodes: no other test uses the cluster meanwhile.
    pub alone: bool,
}

/// A bed on the binary's shared two-node cluster, its parts `at` nodes.
pub async fn bed_on_nodes(engine: Engine, at: Where) -> Bed {
    let cluster = Cluster::shared_of(2);
    let share = match at.alone {
        true => Share::Alone(cluster.exclusive().await),
        false => Share::With(cluster.share().await),
    };
    make_bed_with(cluster, share, engine, &[], MinioOpts::default(), at).await
}

async fn make_bed(
    cluster: Arc<Cluster>,
    share: Share,
    engine: Engine,
    labels: &[(&str, &str)],
) -> Bed {
    make_bed_with(
        cluster,
        share,
        engine,
        labels,
        MinioOpts::default(),
        Where::default(),
    )
    .await
}

async fn make_bed_with(
    cluster: Arc<Cluster>,
    share: Share,
    engine: Engine,
    labels: &[(&str, &str)],
    opts: MinioOpts,
    at: Where,
) -> Bed {
    let client = cluster.client().await;
    let ns = cluster.namespace_with("shop", labels).await;
    let staging = cluster.nodes[at.staging]
        .volume_for(&client, &ns, "orders-staging")
        .await;
    let minio = Minio::start_for_pods_with(opts);
    create_bucket(&minio).await;
    let db_host = at
        .database
        .map_or(NODE_IP.to_string(), |i| cluster.nodes[i].spec.ip.clone());
    let db = Database::with_shop_on(engine, &db_host);
    let (_, user, password) = db.login();
    create_secret(
        &client,
        &ns,
        "db-creds",
        &[("username", &user), ("password", &password)],
    )
    .await;
    create_secret(
        &client,
        &ns,
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
        cluster,
        ns,
        client,
        minio,
        db,
        db_host,
        engine,
        staging,
        _share: share,
    }
}

impl Bed {
    /// The DatabaseBackups of this test's namespace.
    pub fn backups(&self) -> Api<DatabaseBackup> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn cp(&self) -> &ControlPlane {
        &self.cluster.cp
    }

    /// A directory of this test's own for manifests.
    pub fn dir(&self) -> PathBuf {
        let dir = self.cluster.cp.dir().join(&self.ns);
        std::fs::create_dir_all(&dir).unwrap();
        dir
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
    apply_backup_of(b, "    name: shop\n", more_spec);
}

/// As `apply_backup_with`, the databases chosen by `selection` (YAML
/// indented as under `spec.database:`) instead of `name: shop`.
pub fn apply_backup_of(b: &Bed, selection: &str, more_spec: &str) {
    let (port, _, _) = b.db.login();
    let manifest = format!(
        r#"apiVersion: dbbackup.io/v1alpha1
kind: DatabaseBackup
metadata:
  name: orders
  namespace: {ns}
spec:
  database:
    engine: {engine}
    host: {host}
    port: {port}
    image: {image}
{selection}    credentialsSecret:
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
        ns = b.ns,
        host = b.db_host,
        engine = b.engine.as_str(),
        image = b.db.image(),
    );
    let path = b.dir().join("orders.yaml");
    std::fs::write(&path, manifest).unwrap();
    kubectl(b.cp(), &["apply", "-f", path.to_str().unwrap()]);
}

pub async fn status_of(b: &Bed) -> DatabaseBackupStatus {
    b.backups()
        .get("orders")
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

/// Waits until the status reflects `pod` and returns how long that took after
/// the pod's terminated status reached the apiserver.
pub async fn status_latency(b: &Bed, pod: &RanPod) -> Duration {
    // Polled finely: the time it returns is a measurement.
    let seen = poll(
        Duration::from_millis(10),
        Duration::from_secs(30),
        || async {
            status_of(b)
                .await
                .processed_pods
                .contains(&pod.uid)
                .then_some(())
        },
    )
    .await;
    assert!(seen.is_some(), "status never reflected pod {}", pod.name);
    pod.reported.elapsed()
}

/// Waits until condition `type_` of backup "orders" has `reason` (and
/// `status`, when given), and returns the backup's status.
pub async fn wait_orders(
    b: &Bed,
    type_: &str,
    status: Option<&str>,
    reason: &str,
    within: Duration,
) -> DatabaseBackupStatus {
    wait_condition(&b.backups(), "orders", type_, status, reason, within)
        .await
        .status
        .unwrap_or_default()
}

/// A bed with the operator running and backup "orders" applied (with
/// `more_spec`) and Ready, and its pods to follow.
pub async fn ready_bed(engine: Engine, more_spec: &str) -> (Bed, RunningOperator, Pods) {
    ready(bed(engine).await, more_spec).await
}

/// As `ready_bed`, with the operator as users run it: `helm install` of the
/// chart, a pod on the node with its own ServiceAccount, watching the bed's namespace.
pub async fn ready_bed_in_cluster(engine: Engine, more_spec: &str) -> (Bed, HelmOperator, Pods) {
    let b = bed(engine).await;
    let op = HelmOperator::install(&b.cluster, &b.ns, &[]);
    with_orders(b, op, more_spec).await
}

/// Starts the operator on `b` and applies backup "orders" with `more_spec`.
pub async fn ready(b: Bed, more_spec: &str) -> (Bed, RunningOperator, Pods) {
    let op = RunningOperator::start_in(&b.client, &b.ns);
    with_orders(b, op, more_spec).await
}

/// Applies backup "orders" with `more_spec` for the running `op`, and waits
/// until it is Ready.
async fn with_orders<Op>(b: Bed, op: Op, more_spec: &str) -> (Bed, Op, Pods) {
    apply_backup_with(&b, more_spec);
    wait_ready(&b.backups(), "orders", "True", "Reconciled").await;
    let pods = Pods::new(&b.client, &b.ns);
    (b, op, pods)
}

/// How long a pod of ours may take on the node, from its Job to its end.
pub const POD_TIMEOUT: Duration = Duration::from_secs(180);

/// Asks for a backup now, as a user would.
pub fn request_backup(b: &Bed, token: &str) {
    kubectl(
        b.cp(),
        &[
            "annotate",
            "--overwrite",
            "-n",
            &b.ns,
            "dbb",
            "orders",
            &format!("dbbackup.io/run-now={token}"),
        ],
    );
}

/// Waits for the next pod of ours, which must be of `step` and succeed.
pub async fn next_succeeded(pods: &mut Pods, step: &str) -> RanPod {
    let pod = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(
        (pod.step.as_str(), pod.exit_code),
        (step, 0),
        "{}",
        pod.output
    );
    pod
}

/// Asks for a backup now and waits for the dump and the chained upload.
pub async fn backup_now(b: &Bed, pods: &mut Pods, token: &str, latencies: &mut Vec<Duration>) {
    request_backup(b, token);
    let dump = next_succeeded(pods, "dump").await;
    latencies.push(status_latency(b, &dump).await);
    let upload = next_succeeded(pods, "upload").await;
    latencies.push(status_latency(b, &upload).await);
}

pub fn count(lines: &[String], message: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.ends_with(&format!(",{message}")))
        .count()
}

/// Starts a Job from `cronjob` with the real kubectl, as a user would, and
/// waits for its pod to finish.
pub async fn run_job_from(b: &Bed, pods: &mut Pods, cronjob: &str, job: &str) -> RanPod {
    create_job_from(b, cronjob, job);
    pods.finished(1, POD_TIMEOUT).await.remove(0)
}

/// `kubectl create job --from=cronjob/<cronjob> <job>`.
/// Merge-patches backup "orders" with `patch` (JSON), as a user would.
pub fn patch_backup(b: &Bed, patch: &str) {
    kubectl(
        b.cp(),
        &[
            "patch",
            "dbb",
            "orders",
            "-n",
            &b.ns,
            "--type=merge",
            "-p",
            patch,
        ],
    );
}

pub fn create_job_from(b: &Bed, cronjob: &str, job: &str) {
    kubectl(
        b.cp(),
        &[
            "create",
            "job",
            "-n",
            &b.ns,
            &format!("--from=cronjob/{cronjob}"),
            job,
        ],
    );
}

/// A DatabaseRestore of the newest dump of backup "orders", applied with kubectl.
pub fn apply_restore(b: &Bed, name: &str, target: &str, overwrite: bool) {
    apply_restore_as(b, name, target, overwrite, "db-creds");
}

/// As `apply_restore`, logging in with the credentials in Secret `credentials`.
pub fn apply_restore_as(b: &Bed, name: &str, target: &str, overwrite: bool, credentials: &str) {
    apply_restore_with(b, name, target, overwrite, credentials, "");
}

/// As `apply_restore_as`, with more spec fields (YAML indented as under
/// `spec:`); a `key:` among them replaces `latest`.
pub fn apply_restore_with(
    b: &Bed,
    name: &str,
    target: &str,
    overwrite: bool,
    credentials: &str,
    more_spec: &str,
) {
    let (port, _, _) = b.db.login();
    let manifest = format!(
        r#"apiVersion: dbbackup.io/v1alpha1
kind: DatabaseRestore
metadata:
  name: {name}
  namespace: {ns}
spec:
  backup: orders
{latest}  target:
    engine: {engine}
    host: {host}
    port: {port}
    image: {image}
    name: {target}
    credentialsSecret:
      name: {credentials}
  overwrite: {overwrite}
{more_spec}"#,
        ns = b.ns,
        latest = match more_spec.lines().any(|l| l.starts_with("  key:")) {
            true => "",
            false => "  key: latest\n",
        },
        host = b.db_host,
        image = b.db.image(),
        engine = b.engine.as_str()
    );
    let path = b.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, manifest).unwrap();
    kubectl(b.cp(), &["apply", "-f", path.to_str().unwrap()]);
}

/// Waits for the restore pod and then for the status to show its end.
pub async fn run_restore(b: &Bed, pods: &mut Pods, name: &str) -> DatabaseRestoreStatus {
    let pod = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(pod.step, "restore");
    let api: Api<DatabaseRestore> = Api::namespaced(b.client.clone(), &b.ns);
    let status = wait_for("the restore to finish", Duration::from_secs(30), || async {
        let s = api.get(name).await.ok()?.status?;
        s.phase.filter(|p| p.finished()).map(|_| s)
    })
    .await;
    println!("restore pod output:\n{}", pod.output);
    status
}

pub fn restored(status: &DatabaseRestoreStatus) -> (String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Restored")
        .expect("a Restored condition");
    (c.status.clone(), c.reason.clone())
}

/// Creates or replaces a Secret with the real kubectl, as a user fixing one would.
pub fn apply_secret(b: &Bed, name: &str, pairs: &[(&str, &str)]) {
    let mut secret = secret(name, pairs);
    secret.metadata.namespace = Some(b.ns.clone());
    let path = b.dir().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string(&secret).unwrap()).unwrap();
    kubectl(b.cp(), &["apply", "-f", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
}

/// Replaces the bucket Secret "s3-creds" with kubectl, as a user would.
pub fn apply_bucket_secret(b: &Bed, bucket: &str, secret_key: &str, endpoint: &str) {
    apply_secret(
        b,
        "s3-creds",
        &[
            ("bucket", bucket),
            ("accessKeyId", &b.minio.access_key),
            ("secretAccessKey", secret_key),
            ("endpoint", endpoint),
        ],
    );
}
