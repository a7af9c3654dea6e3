//! On a cluster of two real nodes (`dbbackup-node-a` and `-b`), each a
//! kubelet, containerd and kube-proxy in a network namespace of its own
//! with an address and a pod subnet of its own: where our pods land
//! relative to the staging volume, and what the loss of a node does.

mod support;

use dbbackup_operator::api::Engine;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use std::time::Duration;
use support::bed::*;
use support::incluster::HelmOperator;
use support::k8s::wait_ready;
use support::minio::bucket_keys;
use support::pods::Pods;
use support::process::wait_for;
use support::steps::today;

const A: usize = 0;
const B: usize = 1;

/// The chart with 2 replicas, one per node, and leader election.
fn install_operator(b: &Bed) -> HelmOperator {
    HelmOperator::install_with(
        &b.cluster,
        &b.ns,
        &[
            "--set",
            "replicas=2",
            "--set",
            "leaderElection.leaseDurationSeconds=6",
            "--set-json",
            r#"affinity={"podAntiAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":[{"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"app.kubernetes.io/name":"dbbackup-operator"}}}]}}"#,
        ],
    )
}

/// A PostgreSQL bed on the two nodes, its parts `at` them, with the chart
/// installed (2 replicas, one per node) and its leader on node A.
async fn bed_with_leader_on_a(at: Where) -> (Bed, HelmOperator, String) {
    let b = bed_on_nodes(Engine::Postgres, at).await;
    let op = install_operator(&b);
    let leader = leader_on(&b, &op, A).await;
    (b, op, leader)
}

/// The node each of the operator's pods runs on, by pod name.
async fn operator_nodes(b: &Bed, op: &HelmOperator) -> Vec<(String, String)> {
    op.pods(&b.client)
        .await
        .iter()
        .map(|p| (p.name_any(), node_of(p)))
        .collect()
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

async fn lease_holder(b: &Bed) -> Option<String> {
    support::incluster::lease_holder(&Api::namespaced(b.client.clone(), &b.ns)).await
}

/// Makes the replica on node `i` the leader: the other, if it leads, is
/// deleted (it hands the Lease over as it stops) and comes back as follower.
async fn leader_on(b: &Bed, op: &HelmOperator, i: usize) -> String {
    let node = &b.cluster.nodes[i].spec.name;
    wait_for(
        "the leader on its node",
        Duration::from_secs(120),
        || async {
            let holder = lease_holder(b).await?;
            let pods = operator_nodes(b, op).await;
            let (_, holder_node) = pods.iter().find(|(p, _)| *p == holder)?;
            if holder_node == node {
                return Some(holder);
            }
            op.kubectl(&["delete", "pod", &holder, "--wait=false"]);
            tokio::time::sleep(Duration::from_secs(2)).await;
            None
        },
    )
    .await
}

/// The staging volume is a local volume on node B; the database (its server
/// on A's network) and the operator's leader are on node A. Every pod that
/// mounts the staging claim (the run-now dump, its chained upload, a run of
/// the upload CronJob) runs on B; the drill, which streams from the store
/// and mounts no staging volume, runs on either; and the backup succeeds.
#[tokio::test]
async fn every_pod_with_the_staging_volume_runs_on_its_node_and_the_backup_succeeds() {
    let (b, op, leader) = bed_with_leader_on_a(Where {
        staging: B,
        database: Some(A),
        alone: false,
    })
    .await;
    let (node_a, node_b) = (
        b.cluster.nodes[A].spec.name.clone(),
        b.cluster.nodes[B].spec.name.clone(),
    );
    let mut on: Vec<String> = operator_nodes(&b, &op)
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    on.sort();
    assert_eq!(on, [node_a.clone(), node_b.clone()], "one replica per node");
    println!("leader {leader} on {node_a}");

    apply_backup_with(
        &b,
        "  verify:\n    afterUpload: true\n    checks: [{query: \"SELECT count(*) FROM orders\", atLeast: 1}]\n",
    );
    wait_ready(&b.backups(), "orders", "True", "Reconciled").await;
    let mut pods = Pods::new(&b.client, &b.ns);
    request_backup(&b, "first");
    let dump = next_succeeded(&mut pods, "dump").await;
    let upload = next_succeeded(&mut pods, "upload").await;
    let drill = next_succeeded(&mut pods, "verify").await;
    let key = format!("{}/datadump1.sql", today());
    wait_orders(&b, "Verified", Some("True"), "Verified", POD_TIMEOUT).await;
    let status = status_of(&b).await;
    assert_eq!(status.last_upload_key.as_deref(), Some(key.as_str()));
    assert_eq!(bucket_keys(&b.minio).await, std::slice::from_ref(&key));

    let cron_upload = run_job_from(&b, &mut pods, "orders-upload", "manual-upload").await;
    assert_eq!(cron_upload.exit_code, 0, "{}", cron_upload.output);
    for pod in [&dump, &upload, &cron_upload] {
        assert_eq!(pod.node, node_b, "{} ran on {}", pod.name, pod.node);
    }
    println!("drill ran on {}", drill.node);
    assert!([&node_a, &node_b].contains(&&drill.node));
    // The leader did not move: the work above was its.
    assert_eq!(lease_holder(&b).await.as_deref(), Some(leader.as_str()));
}

/// Holds an exclusive lock on table `orders` in an open transaction, so a
/// dump that starts waits in the middle of its work until `release`.
struct TableLock(std::process::Child);

impl TableLock {
    fn take(db: &support::Database) -> TableLock {
        use std::io::Write;
        let support::Database::Pg(pg) = db else {
            panic!("the table lock is PostgreSQL's")
        };
        let mut child = pg
            .psql("shop")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE;\n")
            .unwrap();
        stdin.flush().unwrap();
        TableLock(child)
    }

    fn release(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Dump Jobs of backup "orders" so far.
async fn dump_jobs(b: &Bed) -> Vec<String> {
    use k8s_openapi::api::batch::v1::Job;
    Api::<Job>::namespaced(b.client.clone(), &b.ns)
        .list(&kube::api::ListParams::default().labels("dbbackup.io/step=dump"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect()
}

/// Node B, holding the staging volume, stops hard (its kubelet, containerd
/// and containers killed) while a scheduled dump runs there. Within two
/// minutes the backup names the node it waits for (StagingNodeReady=False,
/// NodeNotReady, and a Warning Event), reports no success for the lost run,
/// and starts no storm of Jobs meanwhile; once B is back the next scheduled
/// run dumps and uploads.
#[tokio::test]
async fn a_staging_node_lost_mid_dump_is_named_and_the_next_run_after_it_returns_succeeds() {
    use support::k8s::{EventFilter, wait_events};
    let (b, _op, _) = bed_with_leader_on_a(Where {
        staging: B,
        database: None,
        alone: true,
    })
    .await;
    let node_b = b.cluster.nodes[B].spec.name.clone();
    let lock = TableLock::take(&b.db);
    apply_backup(&b);
    wait_ready(&b.backups(), "orders", "True", "Reconciled").await;
    patch_backup(&b, r#"{"spec":{"schedule":"* * * * *"}}"#);
    let lost = wait_for("a scheduled dump running on B", POD_TIMEOUT, || async {
        let pods = Api::<Pod>::namespaced(b.client.clone(), &b.ns)
            .list(&kube::api::ListParams::default().labels("dbbackup.io/step=dump"))
            .await
            .ok()?;
        pods.items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    assert_eq!(node_of(&lost), node_b);
    // Into its dump: waiting on the lock.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let jobs_before = dump_jobs(&b).await;
    b.cluster.nodes[B].stop_hard();
    let stopped = std::time::Instant::now();
    let status = wait_orders(
        &b,
        "StagingNodeReady",
        Some("False"),
        "NodeNotReady",
        Duration::from_secs(120),
    )
    .await;
    println!("StagingNodeReady=False after {:?}", stopped.elapsed());
    let said = status
        .conditions
        .iter()
        .find(|c| c.type_ == "StagingNodeReady")
        .unwrap()
        .message
        .clone();
    assert!(
        said.contains(&format!("on node {node_b}, which is not Ready")),
        "{said}"
    );
    let warned = wait_events(
        &b.client,
        &b.ns,
        EventFilter::warning("orders", "NodeNotReady"),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        warned[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(&node_b)
    );
    // While B is away: over a minute of schedules, and no storm of Jobs.
    let away = Duration::from_secs(65);
    tokio::time::sleep(away.saturating_sub(stopped.elapsed())).await;
    let jobs_away = dump_jobs(&b).await;
    assert!(
        jobs_away.len() <= jobs_before.len() + 1,
        "{jobs_before:?} then {jobs_away:?}"
    );
    let status = status_of(&b).await;
    assert_eq!(status.last_upload_key, None);
    assert_eq!(
        count(&status.log, "database dump completed"),
        0,
        "{:?}",
        status.log
    );

    lock.release();
    b.cluster.nodes[B].start_again(&b.cluster.cp).await;
    let back = std::time::Instant::now();
    let key = format!("{}/datadump1.sql", today());
    wait_for(
        "the next scheduled run's upload",
        Duration::from_secs(240),
        || async {
            let s = status_of(&b).await;
            (s.last_upload_key.as_deref() == Some(key.as_str())).then_some(())
        },
    )
    .await;
    println!("uploaded {:?} after B came back", back.elapsed());
    assert_eq!(bucket_keys(&b.minio).await, [key]);
    wait_orders(
        &b,
        "StagingNodeReady",
        Some("True"),
        "NodeReady",
        Duration::from_secs(60),
    )
    .await;
    let status = status_of(&b).await;
    assert_eq!(
        count(&status.log, "database dump completed"),
        1,
        "{:?}",
        status.log
    );
    // The lost run's pod never succeeded: another run's dump was sent.
    let pods = Api::<Pod>::namespaced(b.client.clone(), &b.ns)
        .list(&kube::api::ListParams::default().labels("dbbackup.io/step=dump"))
        .await
        .unwrap()
        .items;
    let phases: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.clone());
            (p.name_any(), phase.unwrap_or_default())
        })
        .collect();
    println!("dump pods: {phases:?}");
    assert!(
        phases
            .iter()
            .all(|(name, phase)| *name != lost.name_any() || phase != "Succeeded"),
        "{phases:?}"
    );
}

/// The node of the operator's leader stops hard: the follower on the
/// other node takes the Lease once it runs out (within the lease duration
/// of the last renewal it saw, plus one of its polls) and reconciles; the
/// Lease's holders are the old leader, then the new one, never back.
#[tokio::test]
async fn the_leaders_node_lost_the_follower_takes_over_within_the_lease() {
    use support::operator::{backup_manifest, create_backup};
    let (b, _op, leader) = bed_with_leader_on_a(Where {
        staging: B,
        database: None,
        alone: true,
    })
    .await;
    let leases = Api::<Lease>::namespaced(b.client.clone(), &b.ns);
    let transitions = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0)
    };
    let before = transitions(&leases.get("dbbackup-operator").await.unwrap());

    b.cluster.nodes[A].stop_hard();
    let stopped = std::time::Instant::now();
    let mut holders = vec![leader.clone()];
    let mut took = None;
    while stopped.elapsed() < Duration::from_secs(30) {
        let holder = lease_holder(&b).await.unwrap_or_default();
        if holders.last() != Some(&holder) {
            took.get_or_insert(stopped.elapsed());
            holders.push(holder);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = took.expect("no replica took the Lease");
    println!("the follower took the Lease {took:?} after the leader's node stopped");
    // Lease 6 s; a follower polls every third of it.
    assert!(took <= Duration::from_secs(6 + 2 + 1), "{took:?}");
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert_ne!(holders[1], leader);
    let after = transitions(&leases.get("dbbackup-operator").await.unwrap());
    assert_eq!(after, before + 1);
    // The new leader reconciles.
    create_backup(&b.client, &b.ns, backup_manifest("users", "postgres")).await;
    wait_ready(&b.backups(), "users", "True", "Reconciled").await;

    b.cluster.nodes[A].start_again(&b.cluster.cp).await;
    assert_eq!(lease_holder(&b).await.as_ref(), Some(&holders[1]));
}

/// The files on the staging volume: dumps, claims and checksum records
/// (not the empty lock files, which stay).
fn staged(b: &Bed) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(b.staging.join("dumps"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Node B, holding the staging volume, is drained (`kubectl drain`) while
/// the chained upload's PUT is held at the store: the evicted upload leaves
/// its claim on the dump as it was; once B is uncordoned the next upload
/// takes that claim and sends the dump, once: one object, and it restores.
#[tokio::test]
async fn a_drained_staging_node_keeps_the_dump_and_the_next_upload_sends_it_once() {
    use support::faultproxy::{self, FaultProxy};
    use support::minio::{BUCKET, get_object};
    let (b, _op, _) = bed_with_leader_on_a(Where {
        staging: B,
        database: None,
        alone: true,
    })
    .await;
    let node_b = b.cluster.nodes[B].spec.name.clone();
    let proxy = FaultProxy::start(&b.minio.endpoint, faultproxy::refuse_nothing()).await;
    apply_bucket_secret(&b, BUCKET, &b.minio.secret_key, &proxy.endpoint);
    proxy.hold_puts();
    apply_backup(&b);
    wait_ready(&b.backups(), "orders", "True", "Reconciled").await;
    let mut pods = Pods::new(&b.client, &b.ns);
    request_backup(&b, "before-drain");
    let dump = next_succeeded(&mut pods, "dump").await;
    assert_eq!(dump.node, node_b);
    wait_for("the upload's PUT held", POD_TIMEOUT, || async {
        (proxy.held() > 0).then_some(())
    })
    .await;
    // The upload holds its claim on the dump while its PUT waits.
    let dumped = staged(&b);
    assert!(
        dumped.contains(&".uploading-datadump.sql".into()),
        "{dumped:?}"
    );

    kubectl(
        b.cp(),
        &[
            "drain",
            &node_b,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
        ],
    );
    // Drained: the evicted upload's pod is gone (its Job, with no retries, failed).
    wait_for("the evicted upload gone", POD_TIMEOUT, || async {
        let left = Api::<Pod>::namespaced(b.client.clone(), &b.ns)
            .list(&kube::api::ListParams::default().labels("dbbackup.io/step=upload"))
            .await
            .ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        staged(&b),
        dumped,
        "the evicted upload took the dump with it"
    );
    // The store as it is, without the held PUTs: they never reach it.
    apply_bucket_secret(&b, BUCKET, &b.minio.secret_key, &b.minio.endpoint);
    drop(proxy);
    assert_eq!(bucket_keys(&b.minio).await, Vec::<String>::new());

    // Back: the next upload (the upload CronJob's, run now) sends the dump.
    kubectl(b.cp(), &["uncordon", &node_b]);
    let upload = run_job_from(&b, &mut pods, "orders-upload", "after-drain").await;
    assert_eq!(
        (upload.exit_code, upload.node.as_str()),
        (0, node_b.as_str()),
        "{}",
        upload.output
    );
    let key = format!("{}/datadump1.sql", today());
    assert_eq!(bucket_keys(&b.minio).await, std::slice::from_ref(&key));
    assert!(staged(&b).is_empty(), "{:?}", staged(&b));
    wait_for(
        "the status to show the upload",
        Duration::from_secs(30),
        || async {
            let s = status_of(&b).await;
            (s.last_upload_key.as_deref() == Some(key.as_str())).then_some(())
        },
    )
    .await;
    let sent = get_object(&b.minio, &key).await;
    b.db.restore_and_compare("restored", &sent);
}

/// The database, on node A's network, refuses what comes from node B's pods
/// (a rule in B's namespace) after a backup dumped on B. A restore placed
/// on A (`nodeSelector`) runs there and restores: it mounts no staging
/// volume, so nothing ties it to B.
#[tokio::test]
async fn a_restore_runs_where_its_database_is_reachable_not_where_the_staging_volume_is() {
    use dbbackup_operator::api::RestorePhase;
    let b = bed_on_nodes(
        Engine::Postgres,
        Where {
            staging: B,
            database: Some(A),
            alone: false,
        },
    )
    .await;
    let (node_a, node_b) = (
        b.cluster.nodes[A].spec.clone(),
        b.cluster.nodes[B].spec.clone(),
    );
    let _op = install_operator(&b);
    apply_backup(&b);
    wait_ready(&b.backups(), "orders", "True", "Reconciled").await;
    let mut pods = Pods::new(&b.client, &b.ns);
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let first = b.db.fingerprint("shop");

    let (port, _, _) = b.db.login();
    let _refused = RefuseFrom::node(&node_b, &node_a.ip, port);
    let on = |node: &str| format!("  nodeSelector:\n    kubernetes.io/hostname: {node}\n");
    // From B the database is out of reach: the rule holds.
    apply_restore_with(
        &b,
        "from-b",
        "unreached",
        false,
        "db-creds",
        &on(&node_b.name),
    );
    let status = run_restore(&b, &mut pods, "from-b").await;
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    assert_eq!(
        restored(&status),
        ("False".into(), "ConnectionFailed".into())
    );

    apply_restore_with(&b, "back", "restored", false, "db-creds", &on(&node_a.name));
    let status = run_restore(&b, &mut pods, "back").await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert_eq!(b.db.fingerprint("restored"), first);
}

/// A rule in a node's network namespace that refuses its pods' connections
/// to `ip:port`; removed on drop.
struct RefuseFrom {
    netns: String,
    rule: Vec<String>,
}

impl RefuseFrom {
    fn node(node: &support::node::NodeSpec, ip: &str, port: u16) -> RefuseFrom {
        let rule: Vec<String> = [
            "FORWARD",
            "-d",
            ip,
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
        ]
        .into_iter()
        .map(String::from)
        .chain(["-j", "REJECT"].map(String::from))
        .collect();
        let netns = node.netns.clone().unwrap();
        let refuse = RefuseFrom { netns, rule };
        refuse.iptables("-I");
        refuse
    }

    fn iptables(&self, verb: &str) {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "iptables", "-w", verb])
            .args(&self.rule);
        support::run_ok(&mut cmd);
    }
}

impl Drop for RefuseFrom {
    fn drop(&mut self) {
        self.iptables("-D");
    }
}

/// Two replicas of the chart's Deployment on the real nodes: only the Lease
/// holder reconciles, and when its pod is killed another takes over.
#[tokio::test]
async fn only_the_leader_reconciles_and_the_other_takes_over_when_it_dies() {
    use dbbackup_operator::api::DatabaseBackup;
    use support::incluster::kill_pod;
    use support::operator::{backup_manifest, create_backup, create_sample_secrets};
    let cluster = support::Cluster::shared_of(2);
    let _share = cluster.share().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("leader").await;
    create_sample_secrets(&client, &ns).await;
    let lease = Duration::from_secs(6);
    let op = HelmOperator::install(
        &cluster,
        &ns,
        &["replicas=2", "leaderElection.leaseDurationSeconds=6"],
    );
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), &ns);
    create_backup(&client, &ns, backup_manifest("orders", "mariadb")).await;
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = || support::incluster::lease_holder(&leases);
    let leader_name = holder().await.expect("a Lease holder");
    let (leader, follower): (Vec<_>, Vec<_>) = op
        .pods(&client)
        .await
        .into_iter()
        .partition(|p| p.name_any() == leader_name);
    let (leader, follower) = (&leader[0], &follower[0]);

    // While the leader lives, the follower does nothing, even with work to do.
    create_backup(&client, &ns, backup_manifest("users", "mariadb")).await;
    wait_ready(&backups, "users", "True", "Reconciled").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reconciles = |pod| HelmOperator::metric(pod, "dbbackup_reconciles_total");
    assert!(reconciles(leader).unwrap() >= 2);
    assert_eq!(reconciles(follower), Some(0), "the follower reconciled");

    // The leader's pod dies without releasing the lease.
    kill_pod(&cluster, &ns, &leader_name);
    wait_for(
        "the leader's process to stop",
        Duration::from_secs(60),
        || async { reconciles(leader).is_none().then_some(()) },
    )
    .await;
    let died = std::time::Instant::now();
    create_backup(&client, &ns, backup_manifest("payments", "mariadb")).await;
    wait_ready(&backups, "payments", "True", "Reconciled").await;
    let takeover = died.elapsed();
    println!("takeover after the leader's pod died: {takeover:?} (lease {lease:?})");
    // The follower, or the pod the Deployment started in the leader's place:
    // whichever took the Lease first reconciles now.
    let new_leader = holder().await.expect("a Lease holder");
    assert_ne!(new_leader, leader_name);
    let pod = op
        .pods(&client)
        .await
        .into_iter()
        .find(|p| p.name_any() == new_leader)
        .expect("the new leader's pod");
    assert!(reconciles(&pod).unwrap() >= 1);
    // The others retry every lease/3, so one holds the lease at most one
    // retry period after it expired; reconciling takes well under a second.
    assert!(
        takeover < lease + lease / 3 + Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
    // Its pods stop with it; the cluster outlives the test.
    op.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
