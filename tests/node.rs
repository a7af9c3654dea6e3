//! What only a real node shows: our pods in real containers under a real
//! kubelet (see tests/support/node.rs).

mod support;

use dbbackup_operator::api::DatabaseBackup;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use std::time::Duration;
use support::node::{MARIADB_IMAGE, NODE_IP};
use support::operator::RunningOperator;
use support::process::wait_for;
use support::*;

/// A Job's pod runs the dump tool from our Debian image as UID 999 under the
/// restricted profile, writes to a local volume through fsGroup, and its
/// termination message reaches the pod's status.
#[tokio::test]
async fn a_restricted_pod_runs_as_999_and_writes_a_local_volume_through_fs_group() {
    let cluster = Cluster::shared();
    let client = cluster.client().await;
    let ns = cluster.namespace("node").await;
    let dir = cluster.node().volume_for(&client, &ns, "data").await;
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "data" },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "1Gi" } }
        }
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "probe" },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": {
                    "runAsNonRoot": true, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 65532,
                    "seccompProfile": { "type": "RuntimeDefault" }
                },
                "containers": [{
                    "name": "probe",
                    "image": MARIADB_IMAGE,
                    "command": ["sh", "-c", "id >/data/id && exec mariadb-dump --version >/dev/termination-log"],
                    "securityContext": {
                        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        "capabilities": { "drop": ["ALL"] }
                    },
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }]
                }],
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }]
            }}
        }
    }))
    .unwrap();
    Api::<Job>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = wait_for(
        "the probe pod to finish",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels("job-name=probe"))
                .await
                .ok()?;
            let pod = list.items.into_iter().next()?;
            let phase = pod.status.as_ref()?.phase.clone()?;
            (phase == "Succeeded" || phase == "Failed").then_some(pod)
        },
    )
    .await;
    let status = pod.status.unwrap();
    let terminated = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"), "{terminated:?}");
    assert!(
        terminated
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("mariadb-dump"),
        "{terminated:?}"
    );
    let id = std::fs::read_to_string(dir.join("id")).unwrap();
    assert!(id.starts_with("uid=999(mysql) gid=999(mysql)"), "{id}");
    assert!(
        id.contains("65532"),
        "fsGroup is a supplementary group: {id}"
    );
}

// ---------------------------------------------------------------------------
// What a real node does to our pods, and what the resource then says.

use dbbackup_operator::api::Engine;
use std::os::unix::fs::MetadataExt;
use support::bed::*;
use support::k8s::{EventFilter, events, wait_events};

/// The files in the staging `dumps/`, but the (empty, kept) lock files.
fn staged_files(b: &Bed) -> Vec<String> {
    std::fs::read_dir(b.staging.join("dumps"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

/// An image that is not on the node and cannot be pulled: the resource says
/// so within a minute, instead of waiting hours for the Job's deadline.
#[tokio::test]
async fn a_database_image_that_cannot_be_pulled_is_reported_within_a_minute() {
    let (b, _op, _pods) = ready_bed(Engine::Mariadb, "").await;
    let image = "dbbackup.local/mariadb:no-such-tag";
    patch_backup(
        &b,
        &format!(r#"{{"spec":{{"database":{{"image":"{image}"}}}}}}"#),
    );
    request_backup(&b, "pull");
    let s = wait_orders(
        &b,
        "DumpSucceeded",
        None,
        "ImagePullFailed",
        Duration::from_secs(60),
    )
    .await;
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "DumpSucceeded")
        .unwrap();
    assert_eq!(c.status, "False");
    assert!(c.message.contains(image), "{}", c.message);
    // The Event follows the status write that records it.
    let events = wait_events(
        &b.client,
        &b.ns,
        EventFilter::warning("orders", "ImagePullFailed"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(image)
    );
}

/// A dump whose tool the kernel kills for memory says "out of memory" and
/// the limit, not a bare exit code, and leaves no partial file.
#[tokio::test]
async fn a_dump_killed_for_memory_says_out_of_memory_and_leaves_nothing() {
    let (b, _op, mut pods) = ready_bed(
        Engine::Mariadb,
        "  jobs:\n    resources:\n      limits:\n        memory: 24Mi\n",
    )
    .await;
    // One 12 MiB row: the dump tool holds it, and its escaped copy, at once.
    b.db.query(
        "shop",
        "CREATE TABLE blobs (b LONGBLOB); INSERT INTO blobs VALUES (REPEAT('x', 12582912))",
    );
    request_backup(&b, "oom");
    let dump = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_ne!(dump.exit_code, 0, "{}", dump.output);
    let s = wait_orders(
        &b,
        "DumpSucceeded",
        None,
        "DumpFailed",
        Duration::from_secs(30),
    )
    .await;
    let line = s.log.last().unwrap();
    assert!(
        line.ends_with(",database dump failed: out of memory (limit 24Mi)"),
        "{line}"
    );
    assert_eq!(staged_files(&b), Vec::<String>::new());
}

/// A dump still running at the Job's deadline is stopped: one line, one
/// Event, and nothing left on the staging volume.
#[tokio::test]
async fn a_dump_past_its_deadline_reports_once_and_leaves_nothing() {
    let (b, _op, _pods) = ready_bed(Engine::Mariadb, "").await;
    // A session holding a write lock: the dump waits for it past the deadline.
    let Database::Maria(db) = &b.db else {
        unreachable!()
    };
    let mut holder = db.lock_table("shop", "orders", 120);
    // The resource's deadline is a minute at least; a Job of ours, shortened.
    create_job_from(&b, "orders-dump", "slow");
    kubectl(
        b.cp(),
        &[
            "patch",
            "job",
            "slow",
            "-n",
            &b.ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"activeDeadlineSeconds":8}}"#,
        ],
    );
    let s = wait_for("the deadline line", Duration::from_secs(90), || async {
        let s = status_of(&b).await;
        s.log
            .iter()
            .any(|l| l.contains(",database dump failed: job failed: DeadlineExceeded"))
            .then_some(s)
    })
    .await;
    // Whatever else arrives (the stopped pod, the Job) adds nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s2 = status_of(&b).await;
    let _ = holder.kill();
    let _ = holder.wait();
    let failed: Vec<_> = s2
        .log
        .iter()
        .filter(|l| l.contains("dump failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", s.log);
    assert!(
        failed[0].ends_with("job failed: DeadlineExceeded (activeDeadlineSeconds 8)"),
        "{failed:?}"
    );
    let warnings = events(
        &b.client,
        &b.ns,
        EventFilter::warning("orders", "DumpFailed"),
    )
    .await;
    let said: Vec<_> = warnings
        .iter()
        .map(|e| (&e.message, e.count, &e.metadata.creation_timestamp))
        .collect();
    assert_eq!(warnings.len(), 1, "{said:?}");
    assert_eq!(staged_files(&b), Vec::<String>::new());
}

/// In a namespace that enforces the restricted Pod Security Standard, the
/// dump, the chained and scheduled uploads, and a restore all run to success.
#[tokio::test]
async fn a_restricted_namespace_runs_every_pod_of_ours() {
    let b = bed_in(
        Engine::Postgres,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let (b, _op, mut pods) = ready(b, "").await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let idle = run_job_from(&b, &mut pods, "orders-upload", "scheduled").await;
    assert_eq!(idle.exit_code, 0, "{}", idle.output);
    apply_restore(&b, "back", "restored", false);
    next_succeeded(&mut pods, "restore").await;
    assert_eq!(b.db.fingerprint("restored"), b.db.fingerprint("shop"));
}

/// The dump pod (UID 999) and the upload pod it chains (UID 65532) share the
/// staging volume, a local PersistentVolume, through the pods' fsGroup: the
/// upload appends to the log file the dump created, and deletes its dump.
#[tokio::test]
async fn dump_and_upload_pods_share_the_local_volume_through_fs_group() {
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, "").await;
    let dump = run_job_from(&b, &mut pods, "orders-dump", "by-999").await;
    assert_eq!(dump.exit_code, 0, "{}", dump.output);
    let upload = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(
        (upload.step.as_str(), upload.exit_code),
        ("upload", 0),
        "{}",
        upload.output
    );
    // The chain's delay, for the note (no goal is asserted in a test).
    let api: Api<Pod> = Api::namespaced(b.client.clone(), &b.ns);
    let state = |pod: Pod| pod.status?.container_statuses?.remove(0).state?.terminated;
    let ended = state(api.get(&dump.name).await.unwrap())
        .unwrap()
        .finished_at
        .unwrap();
    let started = state(api.get(&upload.name).await.unwrap())
        .unwrap()
        .started_at
        .unwrap();
    println!(
        "chain delay: dump container ended {} -> upload container started {} ({} s)",
        ended.0,
        started.0,
        started.0.as_second() - ended.0.as_second()
    );
    let log = b
        .staging
        .join(format!("logs/{}.txt", support::steps::today()));
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (999, 65532));
    assert_eq!(
        meta.mode() & 0o777,
        0o660,
        "group-writable, nothing for others"
    );
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(lines.contains(",database dump completed\n"), "{lines}");
    assert!(lines.contains(",file successfully uploaded\n"), "{lines}");
    assert!(
        staged_files(&b).is_empty(),
        "the upload pod deleted what the dump pod wrote: {:?}",
        staged_files(&b)
    );
    assert_eq!(support::minio::bucket_keys(&b.minio).await.len(), 1);
}

/// The pods' gateway (the bridge) keeps its MAC address as pods come and go:
/// a bridge that took its ports' lowest lost the node for the running pods
/// whenever the pod owning that address went (a restore pod once waited two
/// minutes for its database this way).
#[test]
fn the_pods_gateway_keeps_its_address_when_a_lower_one_joins_and_leaves() {
    let _cluster = Cluster::shared();
    let address = || std::fs::read_to_string(format!("/sys/class/net/{}/address", node::BRIDGE));
    let before = address().unwrap();
    let run = |args: &[&str]| {
        run_ok(std::process::Command::new("ip").args(args));
    };
    let (port, peer) = ("dbbt-low", "dbbt-low-peer");
    run(&[
        "link",
        "add",
        port,
        "address",
        "00:00:00:00:00:01",
        "type",
        "veth",
        "peer",
        "name",
        peer,
    ]);
    run(&["link", "set", port, "master", node::BRIDGE, "up"]);
    let joined = address().unwrap();
    run(&["link", "del", port]);
    assert_eq!((joined, address().unwrap()), (before.clone(), before));
}

/// Database names users have, and ones that would run a command or read a
/// variable if any shell or the kubelet's `$(VAR)` expansion saw them.
const AWKWARD_NAMES: [&str; 9] = [
    "a$(touch /staging/pwned)b",
    "a`id`b",
    "a$x",
    "a$$b",
    "$(DB_USER)",
    "o'brien",
    "-dash",
    "x=y",
    "fác-2026",
];

/// Creates database `name` with one table holding `name` itself.
fn create_named(db: &Database, name: &str) {
    match db {
        Database::Maria(d) => {
            let ident = format!("`{}`", name.replace('`', "``"));
            let value = name.replace('\\', "\\\\").replace('\'', "''");
            d.query(
                "information_schema",
                &format!(
                    "CREATE DATABASE {ident}; CREATE TABLE {ident}.t (note TEXT); INSERT INTO {ident}.t VALUES ('{value}')"
                ),
            );
        }
        Database::Pg(p) => {
            p.query(
                "postgres",
                &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
            );
            let value = name.replace('\'', "''");
            p.query(
                &pg_conninfo(name),
                &format!("CREATE TABLE t (note text); INSERT INTO t VALUES ('{value}')"),
            );
        }
    }
}

/// What database `name` holds in its table, or None once it is gone.
fn named_content(db: &Database, name: &str) -> String {
    match db {
        Database::Maria(d) => d.query(
            "information_schema",
            &format!("SELECT note FROM `{}`.t", name.replace('`', "``")),
        ),
        Database::Pg(p) => p.query(&pg_conninfo(name), "SELECT note FROM t"),
    }
}

fn drop_named(db: &Database, name: &str) {
    match db {
        Database::Maria(d) => {
            d.query(
                "information_schema",
                &format!("DROP DATABASE `{}`", name.replace('`', "``")),
            );
        }
        Database::Pg(p) => {
            p.query(
                "postgres",
                &format!("DROP DATABASE \"{}\"", name.replace('"', "\"\"")),
            );
        }
    }
}

/// A libpq connection string naming `database`, so psql takes it as a name.
fn pg_conninfo(database: &str) -> String {
    format!(
        "dbname='{}'",
        database.replace('\\', r"\\").replace('\'', r"\'")
    )
}

async fn awkward_names_round_trip(engine: Engine) {
    use dbbackup_operator::api::{DatabaseRestore, RestorePhase};
    let b = bed(engine).await;
    let _op = RunningOperator::start_in(&b.client, &b.ns);
    let (port, _, password) = b.db.login();
    let mut volumes = vec![];
    for (i, name) in AWKWARD_NAMES.iter().enumerate() {
        create_named(&b.db, name);
        let backup = format!("n{i}");
        let claim = format!("{backup}-staging");
        volumes.push(b.cluster.node().volume_for(&b.client, &b.ns, &claim).await);
        let manifest = serde_json::json!({
            "apiVersion": "dbbackup.io/v1alpha1",
            "kind": "DatabaseBackup",
            "metadata": { "name": backup, "namespace": b.ns,
                          "annotations": { "dbbackup.io/run-now": "first" } },
            "spec": {
                "database": { "engine": engine.as_str(), "host": NODE_IP, "port": port,
                              "image": b.db.image(), "name": name,
                              "credentialsSecret": { "name": "db-creds" } },
                "schedule": "0 3 29 2 *",
                "uploadSchedule": "0 3 29 2 *",
                "bucket": { "secretRef": { "name": "s3-creds" } }
            }
        });
        let path = b.dir().join(format!("{backup}.json"));
        std::fs::write(&path, manifest.to_string()).unwrap();
        kubectl(b.cp(), &["apply", "-f", path.to_str().unwrap()]);
    }
    let backups: Api<DatabaseBackup> = Api::namespaced(b.client.clone(), &b.ns);
    for i in 0..AWKWARD_NAMES.len() {
        let name = format!("n{i}");
        wait_for(&format!("{name}'s upload"), POD_TIMEOUT * 2, || async {
            let db = backups.get(&name).await.ok()?;
            db.status?.last_upload_key
        })
        .await;
    }
    for (i, name) in AWKWARD_NAMES.iter().enumerate() {
        drop_named(&b.db, name);
        let manifest = serde_json::json!({
            "apiVersion": "dbbackup.io/v1alpha1",
            "kind": "DatabaseRestore",
            "metadata": { "name": format!("r{i}"), "namespace": b.ns },
            "spec": {
                "backup": format!("n{i}"),
                "key": "latest",
                "target": { "engine": engine.as_str(), "host": NODE_IP, "port": port,
                            "image": b.db.image(), "name": name,
                            "credentialsSecret": { "name": "db-creds" } }
            }
        });
        let path = b.dir().join(format!("r{i}.json"));
        std::fs::write(&path, manifest.to_string()).unwrap();
        kubectl(b.cp(), &["apply", "-f", path.to_str().unwrap()]);
    }
    let restores: Api<DatabaseRestore> = Api::namespaced(b.client.clone(), &b.ns);
    for (i, name) in AWKWARD_NAMES.iter().enumerate() {
        let status = wait_for(&format!("restore of {name}"), POD_TIMEOUT * 2, || async {
            let s = restores.get(&format!("r{i}")).await.ok()?.status?;
            s.phase.is_some_and(RestorePhase::finished).then_some(s)
        })
        .await;
        assert_eq!(
            status.phase,
            Some(RestorePhase::Succeeded),
            "{name}: {status:?}"
        );
        assert_eq!(named_content(&b.db, name), *name, "round trip of {name}");
    }
    for v in &volumes {
        assert!(!v.join("pwned").exists(), "a name ran a command");
    }
    let everything = kubectl(
        b.cp(),
        &[
            "get",
            "dbb,databaserestores,events,jobs,pods",
            "-n",
            &b.ns,
            "-o",
            "yaml",
        ],
    );
    assert!(
        !everything.contains(&password),
        "the database password leaked"
    );
}

/// Each awkward name goes through dump, upload and restore under its own
/// name on the real node (whose kubelet does the `$(VAR)` expansion): nothing
/// runs, nothing is expanded, no secret shows.
#[tokio::test]
async fn awkward_database_names_round_trip_on_mariadb() {
    awkward_names_round_trip(Engine::Mariadb).await;
}

#[tokio::test]
async fn awkward_database_names_round_trip_on_postgres() {
    awkward_names_round_trip(Engine::Postgres).await;
}

/// Two run-now requests 0.1 s apart, three rounds: each completed dump is
/// accounted for, either uploaded or replaced by the next one before an
/// upload claimed it, and a replacement says so in the log, in the original
/// format, with a Warning Event. (Whether a round replaces depends on timing;
/// `pipeline.rs` `contract_2_…` makes a replacement every time.)
#[tokio::test]
async fn run_now_twice_at_once_every_completed_dump_is_uploaded_or_said_replaced() {
    let (b, _op, _pods) = bed::ready_bed(dbbackup_operator::api::Engine::Mariadb, "").await;
    let accounted = |log: &[String]| {
        let replaced = log
            .iter()
            .filter(|l| l.contains(",replaced an unsent dump from "))
            .count();
        let n = |m: &str| bed::count(log, m);
        (
            n("database dump completed"),
            n("file successfully uploaded") + replaced,
            replaced,
        )
    };
    let mut log = vec![];
    for round in 1..=3 {
        bed::request_backup(&b, &format!("a{round}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        bed::request_backup(&b, &format!("b{round}"));
        // Both dumps done, and every one of them uploaded or said replaced.
        let deadline = std::time::Instant::now() + bed::POD_TIMEOUT;
        loop {
            log = bed::status_of(&b).await.log;
            let (completed, sent_or_replaced, _) = accounted(&log);
            if completed == 2 * round && sent_or_replaced == completed {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: a completed dump neither uploaded nor said replaced: {log:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let (_, _, replaced) = accounted(&log);
    let events = events(
        &b.client,
        &b.ns,
        EventFilter::warning("orders", "DumpReplaced"),
    )
    .await;
    assert_eq!(events.len(), replaced, "{events:?}");
    println!("{replaced} of 6 dumps were replaced before an upload claimed them");
}

/// A dump that runs long gets, once its tool has run for 15 s, the upload
/// that follows its file while it is written; that upload sends the dump
/// once it is in place, and it is the only upload: the dump's success starts
/// no second one.
#[tokio::test]
async fn a_long_dump_is_sent_by_the_upload_that_followed_it() {
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, "").await;
    let Database::Maria(m) = &b.db else {
        unreachable!("a MariaDB bed")
    };
    let mut lock = m.lock_table("shop", "orders", 300);
    create_job_from(&b, "orders-dump", "long");
    let api: Api<Pod> = Api::namespaced(b.client.clone(), &b.ns);
    let step = |p: &Pod, s: &str| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("dbbackup.io/step"))
            == Some(&s.to_string())
    };
    let follows = |p: &Pod| {
        p.spec.as_ref().is_some_and(|s| {
            s.containers[0]
                .args
                .iter()
                .flatten()
                .any(|a| a == "--follow-dump")
        })
    };
    let follower = wait_for(
        "an upload that follows the held dump",
        Duration::from_secs(120),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?.items;
            let dump_runs = list.iter().any(|p| {
                step(p, "dump")
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            });
            let follower = list.iter().find(|p| step(p, "upload") && follows(p))?;
            dump_runs.then(|| follower.name_any())
        },
    )
    .await;
    let _ = lock.kill();
    let _ = lock.wait();
    let dump = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(
        (dump.step.as_str(), dump.exit_code),
        ("dump", 0),
        "{}",
        dump.output
    );
    let upload = pods.finished(1, POD_TIMEOUT).await.remove(0);
    assert_eq!(upload.name, follower);
    assert_eq!(upload.exit_code, 0, "{}", upload.output);
    let key = format!("{}/datadump1.sql", support::steps::today());
    wait_for(
        "the upload in the status",
        Duration::from_secs(60),
        || async {
            let status = status_of(&b).await;
            (status.last_upload_key.as_deref() == Some(key.as_str())).then_some(())
        },
    )
    .await;
    // The dump's success, seen by now, started no second upload.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let uploads = api.list(&ListParams::default()).await.unwrap().items;
    let uploads: Vec<_> = uploads.iter().filter(|p| step(p, "upload")).collect();
    assert_eq!(
        uploads.len(),
        1,
        "{:?}",
        uploads.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    assert_eq!(support::minio::bucket_keys(&b.minio).await, [key]);
    assert!(staged_files(&b).is_empty(), "{:?}", staged_files(&b));
}
