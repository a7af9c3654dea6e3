//! From `kubectl apply` to an object in MinIO and back into a database, with
//! the real apiserver, kube-controller-manager (Job → Pod), the real kubectl,
//! real databases and MinIO, and a stand-in kubelet that runs each pod as its
//! spec says.

mod support;

use dbbackup_operator::api::{DatabaseBackup, Engine};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::time::{Duration, Instant};
use support::kubelet::{FakeKubelet, RanPod};
use support::operator::*;
use support::pipeline::*;
use support::*;

const NS: &str = "shop";

enum Db {
    Maria(MariaDb),
    Pg(Postgres),
}

impl Db {
    fn start(engine: Engine) -> Db {
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

    fn login(&self) -> (u16, String, String) {
        match self {
            Db::Maria(d) => (d.port, d.user.clone(), d.password.clone()),
            Db::Pg(p) => (p.port, p.user.clone(), p.password.clone()),
        }
    }

    fn restore_and_compare(&self, database: &str, sql: &[u8]) {
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

struct Bed {
    cp: ControlPlane,
    client: Client,
    minio: Minio,
    db: Db,
    engine: Engine,
}

async fn bed(engine: Engine) -> Bed {
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

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let out = run_ok(cp.kubectl().args(args));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The DatabaseBackup a user writes, applied with the real kubectl.
fn apply_backup(b: &Bed) {
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
  schedule: "0 3 * * *"
  bucket:
    secretRef:
      name: s3-creds
    prefix: ""
"#,
        engine = b.engine.as_str()
    );
    let path = b.cp.dir().join("orders.yaml");
    std::fs::write(&path, manifest).unwrap();
    kubectl(&b.cp, &["apply", "-f", path.to_str().unwrap()]);
}

async fn status_of(client: &Client) -> dbbackup_operator::api::DatabaseBackupStatus {
    let api: Api<DatabaseBackup> = Api::namespaced(client.clone(), NS);
    api.get("orders").await.unwrap().status.unwrap_or_default()
}

/// Waits until the status reflects `pod` and returns how long that took after
/// the pod's terminated status reached the apiserver.
async fn status_latency(client: &Client, pod: &RanPod) -> Duration {
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

/// Asks for a backup now and plays kubelet for the dump and the chained upload.
async fn backup_now(
    b: &Bed,
    kubelet: &mut FakeKubelet,
    token: &str,
    latencies: &mut Vec<Duration>,
) {
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

fn count(lines: &[String], message: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.ends_with(&format!(",{message}")))
        .count()
}

async fn end_to_end(engine: Engine) {
    let b = bed(engine).await;
    let op = RunningOperator::start(&b.client);
    apply_backup(&b);
    let backups: Api<DatabaseBackup> = Api::namespaced(b.client.clone(), NS);
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    let mut kubelet = FakeKubelet::new(&b.client, NS);
    let mut latencies = vec![];
    let day = today();

    backup_now(&b, &mut kubelet, "first", &mut latencies).await;
    let status = status_of(&b.client).await;
    let key = format!("{day}/datadump1.sql");
    assert_eq!(status.last_upload_key.as_deref(), Some(key.as_str()));
    assert!(status.last_upload_time.is_some() && status.last_dump_time.is_some());
    assert_eq!(bucket_keys(&b.minio).await, std::slice::from_ref(&key));
    assert_eq!(
        status.last_upload_size,
        Some(get_object(&b.minio, &key).await.len() as i64)
    );
    b.db.restore_and_compare("restored", &get_object(&b.minio, &key).await);
    assert!(kubectl(&b.cp, &["get", "dbb", "-n", NS]).contains(&key));
    assert_eq!(count(&status.log, "database dump completed"), 1);
    assert_eq!(count(&status.log, "file successfully uploaded"), 1);
    for c in ["DumpSucceeded", "UploadSucceeded"] {
        let cond = status.conditions.iter().find(|x| x.type_ == c).unwrap();
        assert_eq!(cond.status, "True", "{cond:?}");
    }
    assert!(
        kubelet
            .pvc_dir("orders-staging")
            .join("dumps")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );

    backup_now(&b, &mut kubelet, "second", &mut latencies).await;
    let status = status_of(&b.client).await;
    let second = format!("{day}/datadump2.sql");
    assert_eq!(status.last_upload_key.as_deref(), Some(second.as_str()));
    assert_eq!(bucket_keys(&b.minio).await, [key.clone(), second.clone()]);

    // An upload run with no dump, started the way a user would.
    kubectl(
        &b.cp,
        &[
            "create",
            "job",
            "-n",
            NS,
            "--from=cronjob/orders-upload",
            "manual-upload",
        ],
    );
    let empty = kubelet.run_pods(1, Duration::from_secs(60)).await.remove(0);
    assert_eq!(empty.exit_code, 0, "{}", empty.output);
    latencies.push(status_latency(&b.client, &empty).await);
    let status = status_of(&b.client).await;
    assert!(
        status
            .log
            .last()
            .unwrap()
            .ends_with(",there is no file to upload"),
        "{:?}",
        status.log
    );
    assert_eq!(status.last_upload_key.as_deref(), Some(second.as_str()));
    assert_eq!(status.log.len(), 5, "{:?}", status.log);

    let events: Api<Event> = Api::namespaced(b.client.clone(), NS);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("orders"))
        .filter_map(|e| e.reason.clone())
        .collect();
    for r in ["DumpCompleted", "Uploaded", "BackupRequested"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }

    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    println!(
        "{engine:?}: status update latency after pod termination over {} pods: p50 {:?}, max {:?}",
        latencies.len(),
        p50,
        latencies.last().unwrap()
    );
    drop(op);
}

#[tokio::test]
async fn end_to_end_mariadb() {
    end_to_end(Engine::Mariadb).await;
}

#[tokio::test]
async fn end_to_end_postgres() {
    end_to_end(Engine::Postgres).await;
}

/// Pods that finish while the operator is down are reported once it is back,
/// and a further restart repeats nothing.
#[tokio::test]
async fn operator_restart_neither_repeats_nor_loses_log_lines() {
    let b = bed(Engine::Mariadb).await;
    let op = RunningOperator::start(&b.client);
    apply_backup(&b);
    let backups: Api<DatabaseBackup> = Api::namespaced(b.client.clone(), NS);
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    let mut kubelet = FakeKubelet::new(&b.client, NS);
    let mut latencies = vec![];
    backup_now(&b, &mut kubelet, "first", &mut latencies).await;
    drop(op);

    // While the operator is down: a dump and an upload run and finish.
    kubectl(
        &b.cp,
        &[
            "create",
            "job",
            "-n",
            NS,
            "--from=cronjob/orders-dump",
            "while-down-dump",
        ],
    );
    let dump = kubelet.run_pods(1, Duration::from_secs(60)).await.remove(0);
    assert_eq!(dump.exit_code, 0, "{}", dump.output);
    kubectl(
        &b.cp,
        &[
            "create",
            "job",
            "-n",
            NS,
            "--from=cronjob/orders-upload",
            "while-down-upload",
        ],
    );
    let upload = kubelet.run_pods(1, Duration::from_secs(60)).await.remove(0);
    assert_eq!(upload.exit_code, 0, "{}", upload.output);
    assert_eq!(
        status_of(&b.client).await.log.len(),
        2,
        "nothing recorded while down"
    );

    let op = RunningOperator::start(&b.client);
    status_latency(&b.client, &upload).await;
    let status = status_of(&b.client).await;
    assert_eq!(
        count(&status.log, "database dump completed"),
        2,
        "{:?}",
        status.log
    );
    assert_eq!(
        count(&status.log, "file successfully uploaded"),
        2,
        "{:?}",
        status.log
    );
    assert_eq!(status.log.len(), 4);
    assert_eq!(
        status.last_upload_key,
        Some(format!("{}/datadump2.sql", today()))
    );
    drop(op);

    // Another restart, and a resync: the same four lines, in the same order.
    let op = RunningOperator::start(&b.client);
    wait_for(
        "the restarted operator to reconcile",
        Duration::from_secs(30),
        || async { (op.metrics().reconciles() >= 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status_of(&b.client).await.log, status.log);
    let db = backups.get("orders").await.unwrap();
    assert_eq!(
        db.annotations()
            .get("dbbackup.io/run-now")
            .map(String::as_str),
        Some("first")
    );
}
