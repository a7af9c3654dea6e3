//! Several databases in one DatabaseBackup, and the restores users ask for:
//! one database out of many, and the newest dump taken before a time. Real
//! PostgreSQL, MinIO, apiserver and node; every pod in a real container.

mod support;

use dbbackup_operator::api::{DatabaseRestore, Engine, RestorePhase};
use kube::api::Api;
use support::bed::*;
use support::k8s::*;
use support::minio::*;
use support::operator::RunningOperator;
use support::pods::{Pods, RanPod};
use support::steps::*;

/// Asks for a backup now and returns its dump pod and the upload chained to it.
async fn run(b: &Bed, pods: &mut Pods, token: &str) -> (RanPod, RanPod) {
    request_backup(b, token);
    let mut ran = pods.finished(2, POD_TIMEOUT).await;
    ran.sort_by_key(|p| p.step != "dump");
    let upload = ran.pop().unwrap();
    let dump = ran.pop().unwrap();
    assert_eq!(
        (dump.step.as_str(), upload.step.as_str()),
        ("dump", "upload")
    );
    println!("dump:\n{}\nupload:\n{}", dump.output, upload.output);
    (dump, upload)
}

/// The series (first key segment) under which the bucket holds objects,
/// with how many each has.
async fn series(minio: &Minio) -> Vec<(String, usize)> {
    let mut found: Vec<(String, usize)> = vec![];
    for key in bucket_keys(minio).await {
        let first = key.split('/').next().unwrap().to_string();
        match found.iter_mut().find(|(s, _)| *s == first) {
            Some((_, n)) => *n += 1,
            None => found.push((first, 1)),
        }
    }
    found.sort();
    found
}

/// `all: true` on a server with four databases, one of which takes no
/// connections; a fifth created between the runs. The first run dumps and
/// uploads three, names the failed one in its condition, its log and
/// `status.databases`, and stores the roles; the second, after the failed
/// one is mended, all five, saying the new one appeared. Each has its own
/// series, and one database is restored from its series alone.
#[tokio::test]
async fn all_databases_each_in_its_series_one_failing_one_added_and_one_restored() {
    let b = bed(Engine::Postgres).await;
    let _op = RunningOperator::start_in(&b.client, &b.ns);
    for name in ["billing", "crm", "broken"] {
        b.db.load_shop(name);
    }
    b.db.query(
        "postgres",
        "ALTER DATABASE broken WITH ALLOW_CONNECTIONS false",
    );
    apply_backup_of(&b, "    all: true\n", "");
    wait_ready(&b.backups(), "orders", "True", "Reconciled").await;
    let mut pods = Pods::new(&b.client, &b.ns);
    let day = today();

    let (dump, upload) = run(&b, &mut pods, "first").await;
    assert_eq!((dump.exit_code, upload.exit_code), (1, 0));
    assert_eq!(
        series(&b.minio).await,
        [(".roles", 1), ("billing", 1), ("crm", 1), ("shop", 1)].map(|(s, n)| (s.to_string(), n))
    );
    let status = wait_orders(&b, "UploadSucceeded", Some("True"), "Uploaded", POD_TIMEOUT).await;
    let dumped = status
        .conditions
        .iter()
        .find(|c| c.type_ == "DumpSucceeded")
        .unwrap();
    assert_eq!(
        (dumped.status.as_str(), dumped.reason.as_str()),
        ("False", "SomeDumpsFailed")
    );
    assert!(
        dumped
            .message
            .starts_with("1 of 5 databases failed to dump: broken (")
            && dumped
                .message
                .contains("not currently accepting connections"),
        "{}",
        dumped.message
    );
    assert!(
        status
            .log
            .iter()
            .any(|l| l.contains(",database dump failed: broken: "))
    );
    assert_eq!(count(&status.log, "database dump completed: billing"), 1);
    let broken = status
        .databases
        .iter()
        .find(|d| d.name == "broken")
        .unwrap();
    assert!(broken.last_failure.is_some() && broken.last_upload_key.is_none());
    let shop = status.databases.iter().find(|d| d.name == "shop").unwrap();
    assert_eq!(
        shop.last_upload_key.as_deref(),
        Some(format!("shop/{day}/datadump1.sql").as_str())
    );
    let roles = get_object(&b.minio, &format!(".roles/{day}/datadump1.sql")).await;
    let roles = String::from_utf8_lossy(&roles);
    assert!(
        roles.contains("CREATE ROLE") && !roles.contains("SCRAM-SHA-256$"),
        "{roles}"
    );

    b.db.query(
        "postgres",
        "ALTER DATABASE broken WITH ALLOW_CONNECTIONS true",
    );
    b.db.load_shop("added");
    let (dump, upload) = run(&b, &mut pods, "second").await;
    assert_eq!((dump.exit_code, upload.exit_code), (0, 0));
    assert_eq!(
        series(&b.minio).await,
        [
            (".roles", 2),
            ("added", 1),
            ("billing", 2),
            ("broken", 1),
            ("crm", 2),
            ("shop", 2)
        ]
        .map(|(s, n)| (s.to_string(), n))
    );
    let status = wait_orders(
        &b,
        "DumpSucceeded",
        Some("True"),
        "DumpCompleted",
        POD_TIMEOUT,
    )
    .await;
    assert_eq!(
        count(
            &status.log,
            "database added appeared on the server: dumped from this run on"
        ),
        1
    );
    assert!(
        status.databases.iter().all(|d| d.last_failure.is_none()),
        "{:?}",
        status.databases
    );

    // One database out of the five: its own series' newest dump.
    apply_restore_with(
        &b,
        "one",
        "billing_back",
        false,
        "db-creds",
        "  database: billing\n",
    );
    let restore = run_restore(&b, &mut pods, "one").await;
    assert_eq!(restore.phase, Some(RestorePhase::Succeeded), "{restore:?}");
    assert_eq!(
        restore.key.as_deref(),
        Some(format!("billing/{day}/datadump2.sql").as_str())
    );
    assert_eq!(
        restore.key_reason.as_deref(),
        Some("the newest dump under \"billing/\"")
    );
    assert_eq!(
        b.db.fingerprint("billing_back"),
        b.db.fingerprint("billing")
    );

    // Without a database, "latest" of several is refused before any Job.
    apply_restore_with(&b, "which", "any", false, "db-creds", "");
    let api: Api<DatabaseRestore> = Api::namespaced(b.client.clone(), &b.ns);
    let refused = support::process::wait_for(
        "the restore to be refused",
        std::time::Duration::from_secs(30),
        || async {
            let s = api.get("which").await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.reason == "DatabaseNotChosen")
        },
    )
    .await;
    assert!(
        refused.message.contains("name the one to restore"),
        "{}",
        refused.message
    );
}

/// Three dumps on two dates in Asia/Tokyo, staged with their finish times
/// and sent by the real upload step: `before` picks by the dump time each
/// object records, so a time just after Tokyo's midnight takes the dump of
/// the day before, not the newer date folder's.
#[tokio::test]
async fn restore_before_picks_the_newest_dump_taken_by_then_across_a_zone_boundary() {
    let (b, _op, mut pods) = ready_bed(Engine::Postgres, "  timeZone: Asia/Tokyo\n").await;
    let staging = Staging::new();
    for (marker, at) in [
        ("one", "2026-03-01T14:50:00Z"),
        ("two", "2026-03-01T15:10:00Z"),
        ("three", "2026-03-01T16:00:00Z"),
    ] {
        let dump = staging.staged_dump();
        let sql =
            format!("CREATE TABLE marker (v text);\nINSERT INTO marker VALUES ('{marker}');\n");
        std::fs::write(&dump, sql).unwrap();
        let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&dump)
            .unwrap()
            .set_modified(at.into())
            .unwrap();
        let mut cmd = store_command(&b.minio, "upload");
        let termlog = staging.path().join("termination-log");
        cmd.arg(format!("--staging-dir={}", staging.path().display()))
            .arg(format!("--termination-log={}", termlog.display()))
            .arg("--time-zone=Asia/Tokyo");
        let ran = finish(cmd, &termlog);
        assert!(ran.succeeded(), "{}", ran.text());
    }
    assert_eq!(
        bucket_keys(&b.minio).await,
        [
            "2026-03-01/datadump1.sql",
            "2026-03-02/datadump1.sql",
            "2026-03-02/datadump2.sql"
        ]
    );
    // The dump time, recorded by the upload: here the staged file's finish.
    let meta = head_object(&b.minio, "2026-03-02/datadump1.sql").await;
    assert_eq!(
        meta.metadata()
            .and_then(|m| m.get("dbbackup-dumped-at"))
            .map(String::as_str),
        Some("2026-03-01T15:10:00.000000000Z")
    );

    for (name, before, key, marker) in [
        (
            "just-after-midnight",
            "2026-03-02T00:05:00+09:00",
            "2026-03-01/datadump1.sql",
            "one",
        ),
        (
            "between",
            "2026-03-01T15:30:00Z",
            "2026-03-02/datadump1.sql",
            "two",
        ),
    ] {
        let target = name.replace('-', "_");
        apply_restore_with(
            &b,
            name,
            &target,
            false,
            "db-creds",
            &format!("  before: \"{before}\"\n"),
        );
        let restore = run_restore(&b, &mut pods, name).await;
        assert_eq!(restore.phase, Some(RestorePhase::Succeeded), "{restore:?}");
        assert_eq!(restore.key.as_deref(), Some(key), "{before}");
        let reason = restore.key_reason.unwrap_or_default();
        assert!(reason.contains("taken at or before"), "{reason}");
        assert_eq!(b.db.query(&target, "SELECT v FROM marker"), marker);
    }
}

/// A restore in one namespace of a backup in another: refused while no
/// DatabaseRestoreGrant there allows it (its condition names the grant it
/// needs), run once one does, through URLs a locate Job signed there (the
/// restore pod holds none of that namespace's credentials), and refused
/// again for the next restore once the grant is deleted.
#[tokio::test]
async fn a_restore_across_namespaces_needs_a_grant_there() {
    use dbbackup_operator::api::DatabaseRestoreGrant;
    use kube::api::{DeleteParams, PostParams};
    let b = bed_alone(Engine::Postgres).await;
    let _op = RunningOperator::start_everywhere(&b.client);
    apply_backup(&b);
    wait_ready(&b.backups(), "orders", "True", "Reconciled").await;
    let mut pods = Pods::new(&b.client, &b.ns);
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let key = format!("{}/datadump1.sql", today());

    let other = b.cluster.namespace("other").await;
    let (_, user, password) = b.db.login();
    create_secret(
        &b.client,
        &other,
        "db-creds",
        &[("username", &user), ("password", &password)],
    )
    .await;
    let restores: Api<DatabaseRestore> = Api::namespaced(b.client.clone(), &other);
    let restore = |name: &str, target: &str, more: &str| {
        let (port, _, _) = b.db.login();
        let manifest = format!(
            "apiVersion: dbbackup.io/v1alpha1\nkind: DatabaseRestore\nmetadata:\n  name: {name}\n  namespace: {other}\n\
             spec:\n  backup: orders\n  backupNamespace: {from}\n{more}  target:\n    engine: postgres\n    host: {host}\n    \
             port: {port}\n    image: {image}\n    name: {target}\n    credentialsSecret:\n      name: db-creds\n",
            from = b.ns,
            host = b.db_host,
            image = b.db.image(),
        );
        let path = b.dir().join(format!("{name}.yaml"));
        std::fs::write(&path, manifest).unwrap();
        kubectl(b.cp(), &["apply", "-f", path.to_str().unwrap()]);
    };
    let refused = |name: &'static str, reason: &'static str| {
        let restores = restores.clone();
        async move {
            let r = wait_condition(
                &restores,
                name,
                "Restored",
                Some("False"),
                reason,
                POD_TIMEOUT,
            );
            let status = r.await.status.unwrap();
            let c = status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Restored");
            c.unwrap().message
        }
    };

    restore("across", "across_copy", "");
    let message = refused("across", "GrantMissing").await;
    assert!(
        message.contains(&format!(
            "no DatabaseRestoreGrant in namespace \"{}\"",
            b.ns
        )) && message.contains(&format!(
            "from: [{{namespace: {other}}}] and to: [{{backup: orders}}]"
        )),
        "{message}"
    );

    let grants: Api<DatabaseRestoreGrant> = Api::namespaced(b.client.clone(), &b.ns);
    let grant: DatabaseRestoreGrant = serde_json::from_value(serde_json::json!({
        "apiVersion": "dbbackup.io/v1alpha1",
        "kind": "DatabaseRestoreGrant",
        "metadata": { "name": "let-other-restore" },
        "spec": { "from": [{ "namespace": other }], "to": [{ "backup": "orders" }] }
    }))
    .unwrap();
    grants.create(&PostParams::default(), &grant).await.unwrap();
    let mut other_pods = Pods::new(&b.client, &other);
    let ran = other_pods.finished(1, POD_TIMEOUT).await.remove(0);
    println!("restore pod:\n{}", ran.output);
    assert_eq!(
        (ran.step.as_str(), ran.exit_code),
        ("restore", 0),
        "{}",
        ran.output
    );
    let status = wait_condition(
        &restores,
        "across",
        "Restored",
        Some("True"),
        "Restored",
        POD_TIMEOUT,
    )
    .await
    .status
    .unwrap();
    assert_eq!(status.key.as_deref(), Some(key.as_str()));
    assert_eq!(
        status.key_reason.as_deref(),
        Some("the newest dump under \"\"")
    );
    assert_eq!(b.db.fingerprint("across_copy"), b.db.fingerprint("shop"));
    // The restore pod got no Secret of the backup's namespace, and no key.
    let job = kubectl(b.cp(), &["get", "jobs", "-n", &other, "-o", "json"]);
    assert!(
        !job.contains("s3-creds") && !job.contains("AWS_SECRET_ACCESS_KEY"),
        "{job}"
    );
    assert!(
        !job.contains(&b.minio.secret_key),
        "the store's key reached the other namespace"
    );

    // A key named outright must be one of this backup's dumps.
    restore(
        "outside",
        "outside",
        "  key: shop/orders/2026-03-01/datadump1.sql\n",
    );
    let message = refused("outside", "NotAcrossNamespaces").await;
    let only = "the grant admits the dumps of DatabaseBackup \"orders\" alone";
    assert!(message.contains(only), "{message}");

    grants
        .delete("let-other-restore", &DeleteParams::default())
        .await
        .unwrap();
    restore("again", "again_copy", "");
    let message = refused("again", "GrantMissing").await;
    assert!(message.contains("no DatabaseRestoreGrant"), "{message}");
    kubectl(b.cp(), &["delete", "namespace", &other, "--wait=false"]);
}
