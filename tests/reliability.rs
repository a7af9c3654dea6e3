//! The operator on a bad day, against the real apiserver: problems only a
//! reconcile can see, backoff on a broken resource, long names, and leader
//! election between two replicas of the chart's Deployment on the real node.

mod support;

use dbbackup_operator::api::DatabaseBackup;
use dbbackup_operator::names;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, ResourceQuota};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use std::time::{Duration, Instant};
use support::incluster::lease_holder;
use support::k8s::*;
use support::operator::*;
use support::process::wait_for;

/// Waits for a Warning Event with `reason` on the resource `name`.
async fn warning_event(client: &Client, ns: &str, name: &str, reason: &str) -> Event {
    let filter = EventFilter::warning(name, reason);
    wait_events(client, ns, filter, Duration::from_secs(30))
        .await
        .remove(0)
}

#[tokio::test]
async fn an_sse_c_key_that_is_not_32_bytes_is_reported_without_showing_it() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    let short = "c2hvcnQta2V5LXZhbHVl"; // base64 of 15 bytes
    create_secret(&client, "shop", "sse", &[("key", short)]).await;
    let _op = RunningOperator::start(&client);
    let mut manifest = backup_manifest("orders", "mariadb");
    manifest["spec"]["bucket"]["serverSideEncryption"] =
        serde_json::json!({"type": "SSE-C", "customerKeySecret": {"name": "sse"}});
    create_backup(&client, "shop", manifest).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let db = wait_ready(&backups, "orders", "False", "InvalidSSEKey").await;
    let ready = db.status.unwrap().conditions[0].clone();
    assert_eq!(
        ready.message,
        r#"secret "sse" key "key" is not an SSE-C key: 32 bytes, base64-encoded"#
    );
    let event = warning_event(&client, "shop", "orders", "InvalidSSEKey").await;
    assert!(!event.message.unwrap_or_default().contains(short));
}

#[tokio::test]
async fn age_recipients_that_are_no_public_keys_are_reported_by_line() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    let secret_looking =
        "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
    let text = format!("# created: today\n{secret_looking}\n");
    create_secret(&client, "shop", "age", &[("recipients", &text)]).await;
    let _op = RunningOperator::start(&client);
    let mut manifest = backup_manifest("orders", "mariadb");
    manifest["spec"]["encryption"] = serde_json::json!({"recipientsSecret": {"name": "age"}});
    create_backup(&client, "shop", manifest).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let db = wait_ready(&backups, "orders", "False", "InvalidAgeKey").await;
    assert_eq!(
        db.status.unwrap().conditions[0].message,
        r#"secret "age" key "recipients": line 1 of the recipients is not an age X25519 public key (age1…)"#
    );
    let event = warning_event(&client, "shop", "orders", "InvalidAgeKey").await;
    assert!(!event.message.unwrap_or_default().contains("AGE-SECRET-KEY"));
}

#[tokio::test]
async fn a_ca_bundle_that_is_not_pem_is_reported_and_heals_when_fixed() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    create_secret(&client, "shop", "s3-ca", &[("ca.crt", "not a certificate")]).await;
    let _op = RunningOperator::start(&client);
    let mut manifest = backup_manifest("orders", "mariadb");
    manifest["spec"]["bucket"]["caBundle"] = serde_json::json!({"name": "s3-ca"});
    create_backup(&client, "shop", manifest).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let db = wait_ready(&backups, "orders", "False", "InvalidCABundle").await;
    let ready = db.status.unwrap().conditions[0].clone();
    assert_eq!(
        ready.message,
        r#"secret "s3-ca" key "ca.crt" is not a PEM certificate bundle"#
    );
    let event = warning_event(&client, "shop", "orders", "InvalidCABundle").await;
    assert!(event.message.unwrap_or_default().contains("s3-ca"));
    assert!(
        Api::<CronJob>::namespaced(client.clone(), "shop")
            .get_opt("orders-dump")
            .await
            .unwrap()
            .is_none(),
        "children were applied for a broken spec"
    );

    // A real certificate, as a user would paste it: the resource heals by itself.
    let cert = rcgen::generate_simple_self_signed(vec!["minio.local".into()]).unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "shop");
    secrets
        .replace("s3-ca", &PostParams::default(), &{
            let mut s = secret("s3-ca", &[("ca.crt", &cert.cert.pem())]);
            s.metadata.resource_version = secrets.get("s3-ca").await.unwrap().resource_version();
            s
        })
        .await
        .unwrap();
    wait_ready(&backups, "orders", "True", "Reconciled").await;
}

#[tokio::test]
async fn a_missing_storage_class_is_reported_and_heals_once_it_exists() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    let _op = RunningOperator::start(&client);
    let mut manifest = backup_manifest("orders", "postgres");
    manifest["spec"]["staging"] = serde_json::json!({"storageClassName": "fast-ssd"});
    create_backup(&client, "shop", manifest).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let db = wait_ready(&backups, "orders", "False", "StorageClassNotFound").await;
    assert_eq!(
        db.status.unwrap().conditions[0].message,
        r#"spec.staging.storageClassName: storage class "fast-ssd" does not exist"#
    );
    warning_event(&client, "shop", "orders", "StorageClassNotFound").await;

    let classes: Api<StorageClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &StorageClass {
                metadata: ObjectMeta {
                    name: Some("fast-ssd".into()),
                    ..Default::default()
                },
                provisioner: "example.com/ssd".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "shop")
        .get("orders-staging")
        .await
        .unwrap();
    assert_eq!(
        pvc.spec.unwrap().storage_class_name.as_deref(),
        Some("fast-ssd")
    );
}

#[tokio::test]
async fn sixty_three_character_names_give_valid_distinct_children() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    let _op = RunningOperator::start(&client);
    // Two names that differ only after the part a child name can keep.
    let stem = "a".repeat(61);
    let long = [format!("{stem}-1"), format!("{stem}-2")];
    assert_eq!(long[0].len(), 63);
    for name in &long {
        create_backup(&client, "shop", backup_manifest(name, "mariadb")).await;
    }
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "shop");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "shop");
    let mut children = vec![];
    for name in &long {
        wait_ready(&backups, name, "True", "Reconciled").await;
        for cj in [
            names::dump_cronjob_name(name),
            names::upload_cronjob_name(name),
        ] {
            assert!(cj.len() <= names::CRONJOB_NAME_MAX, "{cj}");
            let got = cronjobs.get(&cj).await.unwrap();
            let owner = &got.owner_references()[0];
            assert_eq!(&owner.name, name, "{cj} is owned by the wrong resource");
            children.push(cj);
        }
        let pvc = names::staging_pvc_name(name);
        assert!(pvc.len() <= names::DNS_LABEL_MAX, "{pvc}");
        assert_eq!(
            &pvcs.get(&pvc).await.unwrap().owner_references()[0].name,
            name
        );
        children.push(pvc);
    }
    let mut unique = children.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        children.len(),
        "colliding names: {children:?}"
    );
}

/// A resource that cannot be reconciled is retried on the backoff schedule
/// (2 s, 4 s, 8 s, …), not in a hot loop; the count comes from the
/// operator's own reconcile metric.
#[tokio::test]
async fn a_broken_resource_is_retried_with_backoff_not_in_a_loop() {
    let (_cp, client) = setup("shop").await;
    let op = RunningOperator::start(&client);
    create_backup(&client, "shop", backup_manifest("orders", "mariadb")).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    wait_ready(&backups, "orders", "False", "SecretNotFound").await;
    let start = op.metrics().reconciles();
    let window = Duration::from_secs(20);
    let began = Instant::now();
    tokio::time::sleep(window).await;
    let count = op.metrics().reconciles() - start;
    let failures = op.metrics().failures("SecretNotFound");
    println!(
        "broken resource: {count} reconciles in {:?} ({:.2}/s); {failures} SecretNotFound failures in all",
        began.elapsed(),
        count as f64 / began.elapsed().as_secs_f64()
    );
    // Attempts at 2, 4, 8, 16 s after the previous one: at most 4 fit in any
    // 20 s window once the first failure is in.
    assert!(
        count <= 4,
        "{count} reconciles in {window:?}: not backing off"
    );
    assert!(count >= 1, "the broken resource was not retried at all");
    // Nothing in between: status and Events are written once per change.
    let warnings = events(&client, "shop", EventFilter::reason("SecretNotFound")).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

/// Cross-namespace Secret references are impossible by construction: the
/// reference types have no namespace field, so kubectl's strict validation
/// refuses one, and a lax client's is pruned away before it is stored.
#[tokio::test]
async fn a_secret_reference_cannot_name_another_namespace() {
    let (cp, client) = setup("shop").await;
    for path in [["database", "credentialsSecret"], ["bucket", "secretRef"]] {
        let mut manifest = backup_manifest("other-ns", "mariadb");
        manifest["metadata"]["namespace"] = "shop".into();
        manifest["spec"][path[0]][path[1]]["namespace"] = "kube-system".into();
        let file = cp.dir().join("other-ns.json");
        std::fs::write(&file, manifest.to_string()).unwrap();
        let out = cp
            .kubectl()
            .args(["apply", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "kubectl accepted {path:?}.namespace");
        assert!(
            stderr.contains(&format!(
                r#"unknown field "spec.{}.{}.namespace""#,
                path[0], path[1]
            )),
            "{stderr}"
        );

        // Sent as is, without kubectl's client-side strictness.
        let raw: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            "shop",
            &ApiResource::erase::<DatabaseBackup>(&()),
        );
        let obj: DynamicObject = serde_json::from_value(manifest).unwrap();
        raw.create(&PostParams::default(), &obj).await.unwrap();
        let stored = raw.get("other-ns").await.unwrap();
        let reference = &stored.data["spec"][path[0]][path[1]];
        assert!(reference["name"].is_string(), "{reference}");
        assert!(reference.get("namespace").is_none(), "stored: {reference}");
        raw.delete("other-ns", &Default::default()).await.unwrap();
    }
}

/// A leader cut off from the apiserver (its connections hang, they do not
/// fail) stops reconciling, by exiting, before the follower takes the Lease:
/// its renewals have a deadline below the lease duration.
#[tokio::test]
async fn a_leader_whose_renewals_hang_stops_before_the_follower_takes_over() {
    let (cp, client) = setup("shop").await;
    let url: url_parts::Url = cp.url.parse().unwrap();
    let relay = support::tcpstall::StallingRelay::start(url.addr).await;
    let kubeconfig = cp.dir().join("kubeconfig-through-relay");
    let text = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    std::fs::write(
        &kubeconfig,
        text.replace(&cp.url, &format!("https://{}", relay.addr)),
    )
    .unwrap();
    let args = [
        "--leader-election".to_string(),
        "--lease-duration-seconds=6".to_string(),
        "--lease-namespace=shop".to_string(),
    ];
    let mut leader = OperatorProcess::start_with_kubeconfig(&kubeconfig, "leader", &args);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "shop");
    let holder = || lease_holder(&leases);
    wait_for(
        "the first replica to lead",
        Duration::from_secs(30),
        || async { (holder().await.as_deref() == Some("leader")).then_some(()) },
    )
    .await;
    let _follower = OperatorProcess::start(&cp, "follower", &args);
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.stall();
    let stalled = Instant::now();
    let mut stopped = None;
    let took_over = loop {
        if stopped.is_none() && leader.process.exited() {
            stopped = Some(stalled.elapsed());
        }
        if holder().await.as_deref() == Some("follower") {
            break stalled.elapsed();
        }
        assert!(stalled.elapsed() < Duration::from_secs(60), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("leader stopped after {stopped:?}, follower led after {took_over:?}");
    let stopped =
        stopped.unwrap_or_else(|| panic!("the cut-off leader still runs:\n{}", leader.log()));
    assert!(
        stopped < took_over,
        "stopped {stopped:?}, took over {took_over:?}"
    );
    assert!(
        leader
            .log()
            .contains("no renewal within the renew deadline"),
        "{}",
        leader.log()
    );
}

/// The address of an `https://host:port` URL.
mod url_parts {
    pub struct Url {
        pub addr: std::net::SocketAddr,
    }

    impl std::str::FromStr for Url {
        type Err = String;
        fn from_str(s: &str) -> Result<Url, String> {
            let hostport = s.trim_start_matches("https://").trim_end_matches('/');
            Ok(Url {
                addr: hostport.parse().map_err(|e| format!("{s}: {e}"))?,
            })
        }
    }
}

/// Namespace "shop" on a control plane whose Job and quota controllers run.
async fn setup_with_controllers() -> (support::ControlPlane, Client) {
    let opts = support::controlplane::Options {
        controller_manager: true,
        ..Default::default()
    };
    setup_with(opts, &["shop"]).await
}

/// A ResourceQuota with `hard` in `ns`, once its controller has counted the
/// namespace (before that, quota admission refuses every pod).
async fn create_quota(client: &Client, ns: &str, name: &str, hard: serde_json::Value) {
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let quota = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name }, "spec": { "hard": hard }
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    wait_for(
        "the quota to be counted",
        Duration::from_secs(30),
        || async {
            let q = quotas.get(name).await.ok()?;
            q.status?.used.map(|_| ())
        },
    )
    .await;
}

/// Backup "orders" in "shop", a dump asked for now, and the pod the Job
/// controller creates for it, once created.
async fn dump_pod_of_a_run_now(client: &Client) -> Pod {
    create_backup(client, "shop", backup_manifest("orders", "mariadb")).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    run_now(client, "shop", "orders").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let lp = kube::api::ListParams::default().labels("dbbackup.io/step=dump");
    wait_for("the dump pod", Duration::from_secs(60), || async {
        pods.list(&lp).await.ok()?.items.into_iter().next()
    })
    .await
}

/// Asks for a dump now, as `kubectl dbbackup backup` does.
async fn run_now(client: &Client, ns: &str, name: &str) {
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({ "metadata": { "annotations": { names::RUN_NOW: "now" } } });
    backups
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
}

/// Under a ResourceQuota on requests and no LimitRange, a pod whose
/// containers request nothing is refused at creation. Ours request a little
/// by default, so the Job controller creates the dump's pod.
#[tokio::test]
async fn a_quota_on_requests_admits_our_pods_without_a_limit_range() {
    let (_cp, client) = setup_with_controllers().await;
    create_sample_secrets(&client, "shop").await;
    let hard = serde_json::json!({
        "requests.cpu": "2", "requests.memory": "2Gi", "requests.ephemeral-storage": "10Gi"
    });
    create_quota(&client, "shop", "compute", hard).await;
    let _op = RunningOperator::start(&client);
    let pod = dump_pod_of_a_run_now(&client).await;
    let spec = pod.spec.unwrap();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let requests = c.resources.as_ref().and_then(|r| r.requests.clone());
        assert_eq!(
            requests.map(|r| r.into_keys().collect::<Vec<_>>()),
            Some(vec![
                "cpu".into(),
                "ephemeral-storage".into(),
                "memory".into()
            ]),
            "{}",
            c.name
        );
    }
    let failed = events(&client, "shop", EventFilter::reason("FailedCreate")).await;
    assert!(failed.is_empty(), "{failed:?}");
}

/// A LimitRange that defaults memory below our default request and sets a
/// CPU minimum above ours: those two are left to it, as they were before our
/// defaults, so the pod is admitted with its values; ephemeral storage, which
/// it does not govern, keeps ours.
#[tokio::test]
async fn what_a_limit_range_governs_is_left_to_it_and_the_pod_is_admitted() {
    use k8s_openapi::api::core::v1::LimitRange;
    let (_cp, client) = setup_with_controllers().await;
    create_sample_secrets(&client, "shop").await;
    let ranges: Api<LimitRange> = Api::namespaced(client.clone(), "shop");
    let range = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "small" },
        "spec": { "limits": [{
            "type": "Container",
            "default": { "memory": "96Mi" },
            "min": { "cpu": "200m" },
            "defaultRequest": { "cpu": "200m" }
        }] }
    }))
    .unwrap();
    ranges.create(&PostParams::default(), &range).await.unwrap();
    let _op = RunningOperator::start(&client);
    let pod = dump_pod_of_a_run_now(&client).await;
    let dump = &pod.spec.unwrap().containers[0];
    let requests = dump.resources.clone().unwrap().requests.unwrap();
    assert_eq!(
        requests["memory"].0, "96Mi",
        "the LimitRange's, not our 128Mi"
    );
    assert_eq!(requests["cpu"].0, "200m", "the LimitRange's, not our 100m");
    assert_eq!(requests["ephemeral-storage"].0, "64Mi");
}

/// A quota that refuses the dump's pod and the restore's: each says so
/// within a minute, naming the quota, in its condition and a Warning Event,
/// not hours later at the Job's deadline.
#[tokio::test]
async fn a_pod_refused_by_a_quota_is_said_naming_the_quota_within_a_minute() {
    use dbbackup_operator::api::DatabaseRestore;
    let (_cp, client) = setup_with_controllers().await;
    create_sample_secrets(&client, "shop").await;
    create_quota(
        &client,
        "shop",
        "tight",
        serde_json::json!({ "requests.memory": "1Mi" }),
    )
    .await;
    let _op = RunningOperator::start(&client);
    create_backup(&client, "shop", backup_manifest("orders", "mariadb")).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    run_now(&client, "shop", "orders").await;
    let minute = Duration::from_secs(60);
    let db = wait_condition(
        &backups,
        "orders",
        "DumpSucceeded",
        Some("False"),
        "QuotaExceeded",
        minute,
    )
    .await;
    let condition = db
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "DumpSucceeded");
    let message = condition.unwrap().message;
    assert!(
        message.contains(r#"cannot create its pod: ResourceQuota "tight" refuses it"#),
        "{message}"
    );
    let event = warning_event(&client, "shop", "orders", "QuotaExceeded").await;
    assert!(event.message.unwrap().contains(r#"ResourceQuota "tight""#));

    let restore = serde_json::json!({
        "apiVersion": "dbbackup.io/v1alpha1",
        "kind": "DatabaseRestore",
        "metadata": { "name": "back" },
        "spec": {
            "backup": "orders",
            "target": {
                "engine": "mariadb", "host": "db", "name": "shop",
                "credentialsSecret": { "name": "db-creds" }
            }
        }
    });
    let restores: Api<DatabaseRestore> = Api::namespaced(client.clone(), "shop");
    let restore: DatabaseRestore = serde_json::from_value(restore).unwrap();
    restores
        .create(&PostParams::default(), &restore)
        .await
        .unwrap();
    let r = wait_condition(
        &restores,
        "back",
        "Restored",
        Some("False"),
        "QuotaExceeded",
        minute,
    )
    .await;
    let message = &r.status.unwrap().conditions[0].message;
    assert!(
        message.contains(r#"ResourceQuota "tight" refuses it"#),
        "{message}"
    );
    warning_event(&client, "shop", "back", "QuotaExceeded").await;
}
