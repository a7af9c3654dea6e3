//! The controller against a real kube-apiserver: children, drift, garbage
//! collection, Pod Security, admission, missing Secrets and idle resyncs.

mod support;

use dbbackup_operator::api::DatabaseBackup;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::time::Duration;
use support::k8s::*;
use support::operator::*;
use support::process::wait_for;
use support::*;

async fn get_cronjob(client: &Client, ns: &str, name: &str) -> Option<CronJob> {
    Api::<CronJob>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

/// The one container of a CronJob's pods.
fn container(cj: &CronJob) -> &k8s_openapi::api::core::v1::Container {
    let job = cj.spec.job_template.spec.as_ref().unwrap();
    &job.template.spec.as_ref().unwrap().containers[0]
}

#[tokio::test]
async fn valid_resource_gets_pvc_and_both_cronjobs() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    let _op = RunningOperator::start(&client);
    let db = create_backup(&client, "shop", backup_manifest("orders", "mariadb")).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let ready = wait_ready(&backups, "orders", "True", "Reconciled").await;
    assert_eq!(
        ready.status.as_ref().unwrap().observed_generation,
        ready.metadata.generation
    );

    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "shop")
        .get("orders-staging")
        .await
        .unwrap();
    let dump = get_cronjob(&client, "shop", "orders-dump").await.unwrap();
    let upload = get_cronjob(&client, "shop", "orders-upload").await.unwrap();

    for (meta, step) in [
        (&pvc.metadata, None),
        (&dump.metadata, Some("dump")),
        (&upload.metadata, Some("upload")),
    ] {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, db.uid().unwrap());
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.kind, "DatabaseBackup");
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "dbbackup-operator");
        assert_eq!(labels["dbbackup.io/backup"], "orders");
        assert_eq!(labels.get("dbbackup.io/step").map(String::as_str), step);
        // One field manager: it applies the object, and CronJobs also get an
        // update that records their generation, which owns nothing else.
        for entry in meta.managed_fields.iter().flatten() {
            assert_eq!(entry.manager.as_deref(), Some("dbbackup-operator"));
            if entry.operation.as_deref() == Some("Update") {
                assert!(step.is_some(), "a PVC has no generation to record");
                let owned = serde_json::to_value(&entry.fields_v1).unwrap();
                assert_eq!(
                    owned,
                    serde_json::json!({"f:metadata": {"f:annotations": {
                        "f:dbbackup.io/applied-generation": {}
                    }}}),
                );
            }
        }
        if step.is_some() {
            let annotations = meta.annotations.as_ref().unwrap();
            assert_eq!(
                annotations["dbbackup.io/applied-generation"],
                meta.generation.unwrap().to_string()
            );
        }
    }
    assert_eq!(
        pvc.spec.as_ref().unwrap().access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );

    for (cj, schedule) in [(&dump, "0 3 * * *"), (&upload, "*/5 * * * *")] {
        let spec = &cj.spec;
        assert_eq!(spec.schedule, schedule);
        assert_eq!(spec.time_zone.as_deref(), Some("UTC"));
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert!(spec.starting_deadline_seconds.is_some());
        let job = spec.job_template.spec.as_ref().unwrap();
        let pod = job.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert!(psc.fs_group.is_some());
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        // Credentials only through secretKeyRef; no value of theirs anywhere in the spec.
        let text = serde_json::to_string(cj).unwrap();
        assert!(
            !text.contains("dbPASSsample"),
            "DB password leaked into {}",
            cj.name_any()
        );
        assert!(
            !text.contains("s3SECRETsample"),
            "S3 secret leaked into {}",
            cj.name_any()
        );
    }
    let dump_container = container(&dump);
    assert_eq!(
        dump_container.image.as_deref(),
        Some("docker.io/library/mariadb:11.8")
    );
    assert_eq!(
        secret_ref(dump_container, "MYSQL_PWD"),
        ("db-creds", "password")
    );

    let upload_container = container(&upload);
    assert_eq!(upload_container.image.as_deref(), Some(UPLOADER_IMAGE));
    assert_eq!(upload_container.args.as_ref().unwrap()[0], "upload");
    assert_eq!(
        secret_ref(upload_container, "AWS_SECRET_ACCESS_KEY"),
        ("s3-creds", "secretAccessKey")
    );
}

/// The Secret and key the env variable `name` of `c` comes from.
fn secret_ref<'a>(c: &'a k8s_openapi::api::core::v1::Container, name: &str) -> (&'a str, &'a str) {
    let var = c.env.iter().flatten().find(|e| e.name == name).unwrap();
    let key_ref = var
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap();
    (key_ref.name.as_str(), key_ref.key.as_str())
}

#[tokio::test]
async fn spec_edits_reach_children_and_deleted_children_come_back() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    let _op = RunningOperator::start(&client);
    create_backup(&client, "shop", backup_manifest("orders", "postgres")).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    wait_ready(&backups, "orders", "True", "Reconciled").await;

    let patch = serde_json::json!({"spec": {
        "schedule": "30 1 * * *",
        "suspend": true,
        "database": {"image": "registry.test/postgres:18"}
    }});
    backups
        .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for(
        "dump CronJob to follow the spec",
        Duration::from_secs(30),
        || async {
            let cj = get_cronjob(&client, "shop", "orders-dump").await?;
            let pod = cj.spec.job_template.spec.as_ref()?.template.spec.clone()?;
            (cj.spec.schedule == "30 1 * * *"
                && cj.spec.suspend == Some(true)
                && pod.containers[0].image.as_deref() == Some("registry.test/postgres:18"))
            .then_some(())
        },
    )
    .await;
    let upload = get_cronjob(&client, "shop", "orders-upload").await.unwrap();
    assert_eq!(upload.spec.suspend, Some(true), "suspend pauses both");

    // A hand edit of a child's spec, by another field manager, is undone.
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "shop");
    let hand_edit = serde_json::json!({"spec": {"schedule": "0 0 * * *", "suspend": false}});
    cronjobs
        .patch(
            "orders-dump",
            &PatchParams {
                field_manager: Some("someone".into()),
                ..Default::default()
            },
            &Patch::Merge(&hand_edit),
        )
        .await
        .unwrap();
    wait_for(
        "hand-edited dump CronJob to be repaired",
        Duration::from_secs(30),
        || async {
            let cj = get_cronjob(&client, "shop", "orders-dump").await?;
            (cj.spec.schedule == "30 1 * * *" && cj.spec.suspend == Some(true)).then_some(())
        },
    )
    .await;

    let old_uid = cronjobs.get("orders-upload").await.unwrap().uid();
    cronjobs
        .delete("orders-upload", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "deleted upload CronJob to be recreated",
        Duration::from_secs(30),
        || async {
            let cj = get_cronjob(&client, "shop", "orders-upload").await?;
            (cj.uid() != old_uid).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn deleting_the_resource_garbage_collects_its_children() {
    let (_cp, client) = setup_with(
        controlplane::Options {
            controller_manager: true,
            ..Default::default()
        },
        &["shop"],
    )
    .await;
    create_sample_secrets(&client, "shop").await;
    let _op = RunningOperator::start(&client);
    create_backup(&client, "shop", backup_manifest("orders", "mariadb")).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    wait_ready(&backups, "orders", "True", "Reconciled").await;

    backups
        .delete("orders", &DeleteParams::background())
        .await
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "shop");
    wait_for(
        "children to be garbage-collected",
        Duration::from_secs(60),
        || async {
            let left = get_cronjob(&client, "shop", "orders-dump").await.is_some()
            || get_cronjob(&client, "shop", "orders-upload").await.is_some()
            // The PVC may linger with its protection finalizer, but it is being deleted.
            || pvcs
                .get_opt("orders-staging")
                .await
                .unwrap()
                .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
            (!left).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn restricted_namespace_accepts_the_children_without_warnings() {
    let (cp, client) = setup_with(Default::default(), &[]).await;
    create_namespace(
        &client,
        "locked",
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/warn", "restricted"),
        ],
    )
    .await;
    create_sample_secrets(&client, "locked").await;
    let _op = RunningOperator::start(&client);
    for engine in ["mariadb", "postgres"] {
        create_backup(&client, "locked", backup_manifest(engine, engine)).await;
    }
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "locked");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "locked");
    for engine in ["mariadb", "postgres"] {
        wait_ready(&backups, engine, "True", "Reconciled").await;
        for step in ["dump", "upload"] {
            let name = format!("{engine}-{step}");
            let mut cj = get_cronjob(&client, "locked", &name).await.unwrap();
            // Re-submitting the CronJob through kubectl shows any PodSecurity warning.
            cj.metadata.managed_fields = None;
            cj.metadata.resource_version = None;
            let out = cp
                .kubectl()
                .args([
                    "apply",
                    "--dry-run=server",
                    "--server-side",
                    "--force-conflicts",
                ])
                .args([
                    "--field-manager=dbbackup-operator",
                    "-n",
                    "locked",
                    "-f",
                    "-",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map(|mut child| {
                    use std::io::Write;
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(serde_json::to_string(&cj).unwrap().as_bytes())
                        .unwrap();
                    child.wait_with_output().unwrap()
                })
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{name}: {stderr}");
            assert!(!stderr.contains("Warning"), "{name} warns: {stderr}");

            // Enforcement applies to Pods: one from the job template must be admitted.
            let template = cj.spec.job_template.spec.unwrap().template;
            let pod = Pod {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("{name}-probe")),
                    labels: template.metadata.and_then(|m| m.labels),
                    ..Default::default()
                },
                spec: template.spec,
                status: None,
            };
            pods.create(&PostParams::default(), &pod)
                .await
                .unwrap_or_else(|e| panic!("restricted namespace refused a {name} pod: {e}"));
        }
    }
}

/// Creates `manifest` and returns the apiserver's refusal.
async fn rejection(client: &Client, manifest: serde_json::Value) -> String {
    rejection_of::<DatabaseBackup>(client, manifest).await
}

/// The apiserver's 422 message for creating `manifest`, a `K`.
async fn rejection_of<K>(client: &Client, manifest: serde_json::Value) -> String
where
    K: kube::Resource<DynamicType = ()>,
{
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &kube::api::ApiResource::erase::<K>(&()),
    );
    let obj: kube::api::DynamicObject = serde_json::from_value(manifest).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => panic!("accepted: {obj:?}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn admission_rejects_bad_input_and_names_the_field() {
    let (_cp, client) = setup("shop").await;
    let with = |path: &[&str], value: serde_json::Value| {
        let mut m = backup_manifest("bad", "mariadb");
        let mut node = &mut m["spec"];
        for p in &path[..path.len() - 1] {
            node = &mut node[*p];
        }
        node[path[path.len() - 1]] = value;
        m
    };
    // A table: one case a line reads better than rustfmt's five.
    #[rustfmt::skip]
    let cases: [(&[&str], serde_json::Value, &str, &str); 38] = [
        (&["schedule"], serde_json::json!("not a cron"), "spec.schedule", "5-field cron"),
        (&["schedule"], serde_json::json!("0 0 3 * * *"), "spec.schedule", "seconds are not supported"),
        (&["schedule"], serde_json::json!("CRON_TZ=UTC 0 3 * * *"), "spec.schedule", "CRON_TZ"),
        (&["schedule"], serde_json::json!("61 * * * *"), "spec.schedule", "minute 0-59"),
        (&["uploadSchedule"], serde_json::json!("0 24 * * MON-FRI"), "spec.uploadSchedule", "hour 0-23"),
        (&["schedule"], serde_json::json!("0 3 32 * *"), "spec.schedule", "day of month 1-31"),
        (&["timeZone"], serde_json::json!("Mars/Olympus_Mons"), "spec.timeZone", ""),
        (&["database", "engine"], serde_json::json!("oracle"), "spec.database.engine", "Unsupported value"),
        (&["database", "port"], serde_json::json!(0), "spec.database.port", "greater than or equal to 1"),
        (&["database", "port"], serde_json::json!(70000), "spec.database.port", "less than or equal to 65535"),
        (&["database", "name"], serde_json::json!(""), "spec.database.name", ""),
        (&["database", "names"], serde_json::json!(["orders"]), "spec.database", "set exactly one of name, names and all: true"),
        (&["database", "all"], serde_json::json!(true), "spec.database", "set exactly one of name, names and all: true"),
        (&["database", "names"], serde_json::json!([]), "spec.database.names", "at least 1 items"),
        (&["database", "names"], serde_json::json!(["a", "a"]), "spec.database.names[1]", "Duplicate value"),
        (&["database", "names"], serde_json::json!([""]), "spec.database.names[0]", "at least 1 chars long"),
        (&["database", "exclude"], serde_json::json!(["*_test"]), "spec.database", "exclude applies only with all: true"),
        (&["database", "rolePasswords"], serde_json::json!(true), "spec.database", "rolePasswords applies only to a postgres backup of names or all: true"),
        (&["bucket", "name"], serde_json::json!("Not_A_Bucket"), "spec.bucket.name", "valid S3 bucket name"),
        (&["bucket", "prefix"], serde_json::json!("/abs/"), "spec.bucket.prefix", "must not start with '/'"),
        (&["bucket", "prefix"], serde_json::json!("backups"), "spec.bucket.prefix", "must end with '/' (or be empty)"),
        (&["bucket", "endpoint"], serde_json::json!("ftp://minio:9000"), "spec.bucket.endpoint", "must be an http:// or https:// URL"),
        (&["retention"], serde_json::json!({"maxAge": "30 days"}), "spec.retention.maxAge", "must be an age in days, hours or minutes"),
        (&["verify"], serde_json::json!({"checks": [{"query": "SELECT 1", "atLeast": 1, "equals": "1"}]}), "spec.verify.checks[0]", "set exactly one of atLeast and equals"),
        (&["staging"], serde_json::json!({"size": "lots"}), "spec.staging.size", "quantity"),
        (&["retention"], serde_json::json!({}), "spec.retention", "set at least one of keepLast, maxAge, keepDaily"),
        (&["retention"], serde_json::json!({"keepWeekly": 0}), "spec.retention.keepWeekly", "greater than or equal to 1"),
        (&["bucket", "serverSideEncryption"], serde_json::json!({"type": "SSE-C"}), "spec.bucket.serverSideEncryption", "type SSE-C needs customerKeySecret"),
        (&["bucket", "serverSideEncryption"], serde_json::json!({"type": "AES256", "kmsKeyId": "k"}), "spec.bucket.serverSideEncryption", "kmsKeyId is only for type aws:kms"),
        (&["bucket", "objectLock"], serde_json::json!({"mode": "FOREVER", "days": 1}), "spec.bucket.objectLock.mode", "Unsupported value"),
        (&["bucket", "objectLock"], serde_json::json!({"mode": "GOVERNANCE", "days": 0}), "spec.bucket.objectLock.days", "greater than or equal to 1"),
        (&["bucket"], serde_json::json!({"secretRef": {"name": "s3-creds"}, "endpoint": "http://minio:9000", "serverSideEncryption": {"type": "SSE-C", "customerKeySecret": {"name": "k"}}}), "spec.bucket", "the endpoint must be https://"),
        (&["bucket"], serde_json::json!({"secretRef": {"name": "s3-creds"}, "endpoint": "http://minio:9000", "webIdentity": {"roleArn": "arn:aws:iam::1:role/r"}}), "spec.bucket", "webIdentity sends the ServiceAccount token to the store: the endpoint must be https://"),
        (&["bucket"], serde_json::json!({"secretRef": {"name": "s3-creds"}, "webIdentity": {"roleArn": "arn:aws:iam::1:role/r", "audience": "https://kubernetes.default.svc.cluster.local"}}), "spec.bucket.webIdentity.audience", "must not be an audience of the Kubernetes API server"),
        (&["notify"], serde_json::json!([{"name": "ops", "type": "teams", "urlSecret": {"name": "h"}}]), "spec.notify[0].type", "Unsupported value"),
        (&["notify"], serde_json::json!([{"name": "Ops!", "type": "slack", "urlSecret": {"name": "h"}}]), "spec.notify[0].name", "should match"),
        (&["notify"], serde_json::json!([{"name": "ops", "type": "slack", "urlSecret": {"name": "h"}, "events": ["sometimes"]}]), "spec.notify[0].events[0]", "Unsupported value"),
        (&["notify"], serde_json::json!([{"name": "ops", "type": "slack", "urlSecret": {"name": "h"}}, {"name": "ops", "type": "webhook", "urlSecret": {"name": "h"}}]), "spec.notify[1]", "Duplicate value"),
    ];
    for (path, value, field, text) in cases {
        let message = rejection(&client, with(path, value)).await;
        assert!(message.contains(field), "{field}: {message}");
        assert!(message.contains(text), "{field}: {message}");
    }
    // Drills of encrypted dumps need the identity that decrypts them.
    let mut drilled = backup_manifest("bad", "mariadb");
    drilled["spec"]["encryption"] = serde_json::json!({"recipientsSecret": {"name": "age"}});
    drilled["spec"]["verify"] = serde_json::json!({});
    let message = rejection(&client, drilled).await;
    assert!(
        message.contains("need spec.encryption.identitySecret"),
        "{message}"
    );
    // A drill takes one database's dumps; several have no drill yet.
    let mut several = backup_manifest("bad", "postgres");
    several["spec"]["database"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    several["spec"]["database"]["all"] = true.into();
    several["spec"]["verify"] = serde_json::json!({});
    let message = rejection(&client, several).await;
    assert!(
        message.contains("drill one database's dumps: not yet with spec.database.names or all"),
        "{message}"
    );
    let mut long = backup_manifest(&"x".repeat(64), "mariadb");
    long["metadata"]["name"] = "x".repeat(64).into();
    assert!(
        rejection(&client, long)
            .await
            .contains("at most 63 characters")
    );
}

/// The DatabaseRestore's rules, each refused at admission and named: one
/// source, a key that is a dump, a positive scratch size, the bucket's own
/// rules, and no change once created.
#[tokio::test]
async fn restore_admission_rejects_bad_input_and_names_the_field() {
    use dbbackup_operator::api::DatabaseRestore;
    let (_cp, client) = setup("shop").await;
    let restore = |spec: serde_json::Value| {
        let mut m = serde_json::json!({
            "apiVersion": "dbbackup.io/v1alpha1",
            "kind": "DatabaseRestore",
            "metadata": { "name": "bad" },
            "spec": {
                "key": "latest",
                "target": {
                    "engine": "mariadb", "host": "db", "name": "shop",
                    "credentialsSecret": { "name": "db-creds" }
                }
            }
        });
        for (k, v) in spec.as_object().unwrap() {
            m["spec"][k] = v.clone();
        }
        m
    };
    let bucket = |more: serde_json::Value| {
        let mut b = serde_json::json!({ "secretRef": { "name": "s3-creds" } });
        for (k, v) in more.as_object().unwrap() {
            b[k] = v.clone();
        }
        serde_json::json!({ "bucket": b })
    };
    #[rustfmt::skip]
    let cases = [
        (restore(serde_json::json!({})), "spec", "set exactly one of backup and bucket"),
        (restore(serde_json::json!({"backup": "orders", "bucket": {"secretRef": {"name": "s3-creds"}}})), "spec", "set exactly one of backup and bucket"),
        (restore(serde_json::json!({"backup": "orders", "key": "2026-12-05/notes.txt"})), "spec.key", "must be \"latest\" or an object key ending in .sql"),
        (restore(serde_json::json!({"backup": "orders", "scratchSize": "0"})), "spec.scratchSize", "must be a positive quantity"),
        (restore(serde_json::json!({"backup": "orders", "before": "yesterday"})), "spec.before", "must be an RFC 3339 time with a zone"),
        (restore(serde_json::json!({"backup": "orders", "before": "2026-03-01T23:00:00"})), "spec.before", "must be an RFC 3339 time with a zone"),
        (restore(serde_json::json!({"backup": "orders", "before": "2026-03-01T23:00:00Z", "key": "2026-03-01/datadump1.sql"})), "spec", "before picks among the dumps: set it only with key \"latest\""),
        (restore(serde_json::json!({"backup": "orders", "database": "shop", "key": "2026-03-01/datadump1.sql"})), "spec", "database picks a series: set it only with key \"latest\""),
        (restore(serde_json::json!({"backup": "orders", "database": ""})), "spec.database", "at least 1 chars long"),
        (restore(serde_json::json!({"bucket": {"secretRef": {"name": "s3-creds"}}, "backupNamespace": "prod"})), "spec", "backupNamespace names the namespace of spec.backup: set backup too"),
        (restore(bucket(serde_json::json!({"name": "Not_A_Bucket"}))), "spec.bucket.name", "valid S3 bucket name"),
        (restore(bucket(serde_json::json!({"prefix": "/abs/"}))), "spec.bucket.prefix", "must not start with '/'"),
        (restore(bucket(serde_json::json!({"prefix": "abs"}))), "spec.bucket.prefix", "must end with '/'"),
        (restore(bucket(serde_json::json!({"endpoint": "minio:9000"}))), "spec.bucket.endpoint", "must be an http:// or https:// URL"),
        (restore(bucket(serde_json::json!({"serverSideEncryption": {"type": "SSE-C"}}))), "spec.bucket.serverSideEncryption", "type SSE-C needs customerKeySecret"),
        (restore(bucket(serde_json::json!({"serverSideEncryption": {"type": "AES256", "kmsKeyId": "k"}}))), "spec.bucket.serverSideEncryption", "kmsKeyId is only for type aws:kms"),
        (restore(bucket(serde_json::json!({"endpoint": "http://minio:9000", "serverSideEncryption": {"type": "SSE-C", "customerKeySecret": {"name": "k"}}}))), "spec.bucket", "SSE-C sends its key with every request"),
        (restore(bucket(serde_json::json!({"endpoint": "http://minio:9000", "webIdentity": {"roleArn": "arn:aws:iam::1:role/r"}}))), "spec.bucket", "webIdentity sends the ServiceAccount token"),
        (restore(bucket(serde_json::json!({"webIdentity": {"roleArn": "arn:aws:iam::1:role/r", "audience": "kubernetes.default.svc"}}))), "spec.bucket.webIdentity.audience", "must not be an audience of the Kubernetes API server"),
    ];
    for (manifest, field, text) in cases {
        let message = rejection_of::<DatabaseRestore>(&client, manifest).await;
        assert!(message.contains(field), "{field}: {message}");
        assert!(message.contains(text), "{field}: {message}");
    }
    // The grant that lets restores of other namespaces use a backup here.
    let grant = |spec: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "dbbackup.io/v1alpha1",
            "kind": "DatabaseRestoreGrant",
            "metadata": { "name": "g" },
            "spec": spec,
        })
    };
    #[rustfmt::skip]
    let cases = [
        (grant(serde_json::json!({"from": [], "to": [{"backup": "orders"}]})), "spec.from", "at least 1 items"),
        (grant(serde_json::json!({"from": [{"namespace": "staging"}], "to": []})), "spec.to", "at least 1 items"),
        (grant(serde_json::json!({"from": [{"namespace": "Not_A_Namespace"}], "to": [{"backup": "orders"}]})), "spec.from[0].namespace", "must be a namespace name"),
        (grant(serde_json::json!({"from": [{"namespace": "staging"}], "to": [{"backup": ""}]})), "spec.to[0].backup", "at least 1 chars long"),
        (grant(serde_json::json!({"from": [{"namespace": "staging"}]})), "spec.to", "Required value"),
    ];
    for (manifest, field, text) in cases {
        let message =
            rejection_of::<dbbackup_operator::api::DatabaseRestoreGrant>(&client, manifest).await;
        assert!(message.contains(field), "{field}: {message}");
        assert!(message.contains(text), "{field}: {message}");
    }
    // Once created, a restore stays as it was asked for.
    let api: Api<DatabaseRestore> = Api::namespaced(client.clone(), "shop");
    let good: DatabaseRestore =
        serde_json::from_value(restore(serde_json::json!({"backup": "orders"}))).unwrap();
    api.create(&PostParams::default(), &good).await.unwrap();
    let patch = serde_json::json!({"spec": {"key": "2026-12-05/datadump2.sql"}});
    let changed = api
        .patch("bad", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    match changed {
        Err(kube::Error::Api(status)) => assert!(
            status
                .message
                .contains("a restore cannot be changed once created"),
            "{status:?}"
        ),
        other => panic!("a changed restore was accepted: {other:?}"),
    }
}

#[tokio::test]
async fn missing_secret_is_reported_and_heals_once_the_secret_appears() {
    let (_cp, client) = setup("shop").await;
    let _op = RunningOperator::start(&client);
    create_backup(&client, "shop", backup_manifest("orders", "mariadb")).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let db = wait_ready(&backups, "orders", "False", "SecretNotFound").await;
    let ready = &db.status.unwrap().conditions[0];
    assert_eq!(
        ready.message,
        r#"secret "db-creds" not found in namespace "shop""#
    );

    wait_events(
        &client,
        "shop",
        EventFilter::warning("orders", "SecretNotFound"),
        Duration::from_secs(30),
    )
    .await;

    // The Secret appears without its password key.
    create_secret(&client, "shop", "db-creds", &[("username", "backup")]).await;
    let db = wait_ready(&backups, "orders", "False", "SecretKeyMissing").await;
    assert_eq!(
        db.status.unwrap().conditions[0].message,
        r#"secret "db-creds" has no key "password""#
    );
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "shop")
        .delete("db-creds", &DeleteParams::default())
        .await
        .unwrap();
    create_sample_secrets(&client, "shop").await;
    // No user action on the DatabaseBackup: the retry with backoff picks it up.
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    assert!(get_cronjob(&client, "shop", "orders-dump").await.is_some());
}

#[tokio::test]
async fn a_forced_resync_after_convergence_writes_nothing() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    let first = RunningOperator::start(&client);
    for name in ["orders", "users"] {
        create_backup(&client, "shop", backup_manifest(name, "postgres")).await;
    }
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    for name in ["orders", "users"] {
        wait_ready(&backups, name, "True", "Reconciled").await;
    }
    // Let the watch events of our own writes settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(first);

    let versions = |client: Client| async move {
        let mut v = vec![];
        for db in Api::<DatabaseBackup>::namespaced(client.clone(), "shop")
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            v.push((db.name_any(), db.resource_version()));
        }
        for cj in Api::<CronJob>::namespaced(client.clone(), "shop")
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            v.push((cj.name_any(), cj.resource_version()));
        }
        for pvc in Api::<PersistentVolumeClaim>::namespaced(client.clone(), "shop")
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            v.push((pvc.name_any(), pvc.resource_version()));
        }
        v
    };
    let before = versions(client.clone()).await;
    assert_eq!(before.len(), 2 + 4 + 2);

    // A fresh controller reconciles everything it finds: a full resync.
    let second = RunningOperator::start(&client);
    wait_for(
        "the second controller to reconcile both",
        Duration::from_secs(30),
        || async { (second.metrics().reconciles() >= 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        versions(client.clone()).await,
        before,
        "a resync wrote something"
    );
    assert_eq!(second.metrics().failures("APIError"), 0);
    // Not even a no-op apply: the cached children already hold the desired state.
    assert_eq!(
        second.metrics().kube_writes(),
        0,
        "a resync sent write requests"
    );
}

#[tokio::test]
async fn a_scheduled_run_without_an_upload_makes_it_stale_and_deletion_drops_the_metric() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    // A Slack target with its default events: the staleness reaches it, once.
    let chat = receiver::Receiver::start(&[]).await;
    create_secret(&client, "shop", "hooks", &[("url", &chat.url)]).await;
    let op = RunningOperator::start(&client);
    let mut manifest = backup_manifest("orders", "mariadb");
    manifest["spec"]["schedule"] = "* * * * *".into();
    manifest["spec"]["notify"] =
        serde_json::json!([{"name": "ops", "type": "slack", "urlSecret": {"name": "hooks"}}]);
    create_backup(&client, "shop", manifest).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let stale_status = |db: &DatabaseBackup| {
        db.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Stale")
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let db = wait_ready(&backups, "orders", "True", "Reconciled").await;
    assert_eq!(
        stale_status(&db),
        Some(("False".into(), "UploadsCurrent".into()))
    );
    // Every minute, no upload: stale once the first run and its grace (until
    // the next run) passed, with no user action.
    wait_for("Stale=True", Duration::from_secs(150), || async {
        let db = backups.get("orders").await.ok()?;
        (stale_status(&db) == Some(("True".into(), "NoRecentUpload".into()))).then_some(())
    })
    .await;
    wait_events(
        &client,
        "shop",
        EventFilter::reason("BackupStale"),
        Duration::from_secs(10),
    )
    .await;
    let got = chat.exactly(1, "the stale message").await;
    let text: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert!(
        text["text"].as_str().unwrap().starts_with(
            "DatabaseBackup shop/orders: no upload has succeeded since the resource was created"
        ),
        "{text}"
    );
    let series = r#"dbbackup_backup_stale{namespace="shop",name="orders"} 1"#;
    assert!(
        op.metrics().encode().contains(series),
        "{}",
        op.metrics().encode()
    );
    backups.delete("orders", &Default::default()).await.unwrap();
    wait_for(
        "the stale series to go",
        Duration::from_secs(30),
        || async { (!op.metrics().encode().contains(r#"name="orders""#)).then_some(()) },
    )
    .await;
}

/// Creates pod `name` of backup "orders" for `step`, finished as the
/// operator sees a finished pod, with `message` as its result (no node runs
/// it: the test makes it as the kubelet would report it).
async fn finished_pod(
    pods: &Api<Pod>,
    name: &str,
    step: &str,
    message: &str,
    annotations: serde_json::Value,
) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "dbbackup-operator",
                "dbbackup.io/backup": "orders",
                "dbbackup.io/step": step
            },
            "annotations": annotations
        },
        "spec": {
            "nodeName": "nowhere",
            "containers": [{"name": step, "image": "registry.test/none"}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = serde_json::json!({"status": {
        "phase": "Succeeded",
        "startTime": "2026-12-01T03:09:00Z",
        "containerStatuses": [{
            "name": step, "image": "registry.test/none", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"terminated": {
                "exitCode": 0, "reason": "Completed", "message": message,
                "startedAt": "2026-12-01T03:09:00Z", "finishedAt": "2026-12-01T03:10:00Z"
            }}
        }]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// A drill that passes protects its dump from retention at once: an upload
/// started in the same reconcile that records the drill (the chained upload
/// of a dump that finished meanwhile) already carries `--keep-verified`
/// with the key, as does the upload CronJob; a status write starts no
/// reconcile by itself, so waiting for the next one would leave the dump
/// prunable. Both pods finish while the operator is down, so that one
/// reconcile sees both.
#[tokio::test]
async fn a_passed_drill_protects_its_dump_in_the_upload_started_with_it() {
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    let op = RunningOperator::start(&client);
    let mut manifest = backup_manifest("orders", "mariadb");
    manifest["spec"]["verify"] = serde_json::json!({"afterUpload": true});
    manifest["spec"]["retention"] = serde_json::json!({"keepLast": 3});
    create_backup(&client, "shop", manifest).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    wait_ready(&backups, "orders", "True", "Reconciled").await;
    drop(op);

    let key = "shop/orders/2026-12-01/datadump1.sql";
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let drilled = format!(
        r#"{{"step":"verify","outcome":"succeeded","key":"{key}","tables":3,"log":"2026-12-01,03:10:00,backup verified {key} (3 tables)"}}"#
    );
    let annotations = serde_json::json!({"dbbackup.io/verify-key": key});
    finished_pod(&pods, "orders-verify-1", "verify", &drilled, annotations).await;
    let dumped = r#"{"step":"dump","outcome":"succeeded","size":10,"log":"2026-12-01,03:10:00,database dump completed"}"#;
    finished_pod(
        &pods,
        "orders-dump-2",
        "dump",
        dumped,
        serde_json::json!({}),
    )
    .await;

    let _op = RunningOperator::start(&client);
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), "shop");
    let uploads = ListParams::default().labels("dbbackup.io/step=upload");
    let job = wait_for("the chained upload", Duration::from_secs(30), || async {
        jobs.list(&uploads).await.ok()?.items.into_iter().next()
    })
    .await;
    let flag = format!("--keep-verified={key}");
    let args = |pod: &k8s_openapi::api::core::v1::PodSpec| {
        pod.containers[0].args.clone().unwrap_or_default()
    };
    let job_args = args(job.spec.unwrap().template.spec.as_ref().unwrap());
    assert!(job_args.contains(&flag), "{job_args:?}");
    let cj = get_cronjob(&client, "shop", "orders-upload").await.unwrap();
    assert!(container(&cj).args.iter().flatten().any(|a| *a == flag));
}

/// Whether `stored` holds everything `sent` sets, value for value: an
/// apiserver drops fields it does not know without an error.
fn missing_in(sent: &serde_json::Value, stored: &serde_json::Value, path: &str) -> Vec<String> {
    use serde_json::Value;
    match (sent, stored) {
        (Value::Object(s), Value::Object(t)) => s
            .iter()
            .flat_map(|(k, v)| match t.get(k) {
                Some(w) => missing_in(v, w, &format!("{path}.{k}")),
                None if v.is_null() => vec![],
                None => vec![format!("{path}.{k}")],
            })
            .collect(),
        (Value::Array(s), Value::Array(t)) if s.len() == t.len() => s
            .iter()
            .zip(t)
            .enumerate()
            .flat_map(|(i, (v, w))| missing_in(v, w, &format!("{path}[{i}]")))
            .collect(),
        _ if sent == stored => vec![],
        _ => vec![format!("{path}: sent {sent}, stored {stored}")],
    }
}

/// Every field the operator sets on its children (the staging claim, both
/// CronJobs, a Job started from one) is what the apiserver stores: none is
/// dropped as unknown. tests/run.sh also runs it against the oldest
/// Kubernetes the chart claims, where newer fields would be.
#[tokio::test]
async fn the_apiserver_keeps_every_field_the_operator_sends() {
    use dbbackup_operator::operator::backup::{
        dump_cronjob, job_from_cronjob, staging_pvc, upload_cronjob,
    };
    use k8s_openapi::api::batch::v1::Job;
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    let op = RunningOperator::start(&client);
    let mut manifest = backup_manifest("orders", "postgres");
    // The fields of the newest APIs the children use, set.
    manifest["spec"]["timeZone"] = "Europe/Paris".into();
    manifest["spec"]["verify"] = serde_json::json!({ "afterUpload": true });
    manifest["spec"]["jobs"] = serde_json::json!({
        "nodeSelector": { "kubernetes.io/os": "linux" },
        "resources": { "limits": { "memory": "256Mi" } }
    });
    create_backup(&client, "shop", manifest).await;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let db = wait_ready(&backups, "orders", "True", "Reconciled").await;
    let settings = &op.ctx.settings;
    let dump = dump_cronjob(&db, settings);
    let job = job_from_cronjob(&dump, "fields");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "shop");
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    let pairs = [
        (
            serde_json::to_value(staging_pvc(&db)).unwrap(),
            serde_json::to_value(
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), "shop")
                    .get("orders-staging")
                    .await
                    .unwrap(),
            )
            .unwrap(),
        ),
        (
            serde_json::to_value(&dump).unwrap(),
            serde_json::to_value(get_cronjob(&client, "shop", "orders-dump").await.unwrap())
                .unwrap(),
        ),
        (
            serde_json::to_value(upload_cronjob(&db, settings)).unwrap(),
            serde_json::to_value(get_cronjob(&client, "shop", "orders-upload").await.unwrap())
                .unwrap(),
        ),
        (
            serde_json::to_value(&job).unwrap(),
            serde_json::to_value(&created).unwrap(),
        ),
    ];
    for (sent, stored) in pairs {
        let missing = missing_in(&sent["spec"], &stored["spec"], "spec");
        assert!(missing.is_empty(), "{} dropped: {missing:#?}", sent["kind"]);
    }
}

/// A status write from a copy older than the resource (a reconcile on a
/// cache that lags the last write) is refused, so nothing it records (a log
/// line, an Event) is recorded twice; from the current copy it is written.
#[tokio::test]
async fn a_status_write_from_a_stale_copy_is_refused() {
    use dbbackup_operator::api::DatabaseBackupStatus;
    use dbbackup_operator::operator::Error;
    use dbbackup_operator::operator::apiserver::write_status_if_current;
    let (_cp, client) = setup("shop").await;
    create_sample_secrets(&client, "shop").await;
    // A context, and no controller that would write the status meanwhile.
    let settings = dbbackup_operator::operator::Settings {
        uploader_image: UPLOADER_IMAGE.into(),
        notify_allowed: Default::default(),
        limit_ranged: Default::default(),
    };
    let metrics = std::sync::Arc::new(Default::default());
    let ctx = dbbackup_operator::operator::Context::new(client.clone(), settings, metrics);
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let stale = create_backup(&client, "shop", backup_manifest("orders", "mariadb")).await;
    let patch = serde_json::json!({ "metadata": { "annotations": { "touched": "yes" } } });
    backups
        .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let status = DatabaseBackupStatus {
        log: vec!["2026-12-05,10:00:00,database dump completed".into()],
        ..Default::default()
    };
    let refused = write_status_if_current(&stale, &ctx, &status).await;
    assert!(matches!(refused, Err(Error::Stale)), "{refused:?}");
    assert!(
        backups
            .get("orders")
            .await
            .unwrap()
            .status
            .is_none_or(|s| s.log.is_empty())
    );
    let current = backups.get("orders").await.unwrap();
    write_status_if_current(&current, &ctx, &status)
        .await
        .unwrap();
    let written = backups.get("orders").await.unwrap().status.unwrap();
    assert_eq!(written.log, status.log);
}
