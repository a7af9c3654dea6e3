//! Golden files and rules of the backup's children.

use super::*;
use crate::operator::pod::{assert_golden, database_port, secret_source};

fn fixture(engine: &str, extra: serde_json::Value) -> DatabaseBackup {
    let mut manifest = serde_json::json!({
        "apiVersion": "dbbackup.io/v1alpha1",
        "kind": "DatabaseBackup",
        "metadata": {
            "name": "orders",
            "namespace": "shop",
            "uid": "0b5c3a56-7f0e-4c43-9d0a-3c2b1e9f8a11"
        },
        "spec": {
            "database": {
                "engine": engine,
                "host": "db.shop.svc",
                "name": "orders",
                "credentialsSecret": { "name": "db-creds" }
            },
            "schedule": "0 3 * * *",
            "timeZone": "Europe/Paris",
            "bucket": { "secretRef": { "name": "s3-creds" } }
        }
    });
    json_merge(&mut manifest["spec"], extra);
    serde_json::from_value(manifest).unwrap()
}

fn json_merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn pod_of(cronjob: CronJob) -> PodSpec {
    cronjob
        .spec
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
}

fn settings() -> Settings {
    Settings {
        uploader_image: "ghcr.io/dbbackup-operator/dbbackup-operator:0.1.0".into(),
        notify_allowed: Default::default(),
        limit_ranged: Default::default(),
    }
}

fn children_yaml(db: &DatabaseBackup) -> String {
    [
        serde_yaml::to_string(&staging_pvc(db)).unwrap(),
        serde_yaml::to_string(&dump_cronjob(db, &settings())).unwrap(),
        serde_yaml::to_string(&upload_cronjob(db, &settings())).unwrap(),
    ]
    .join("---\n")
}

#[test]
fn golden_mariadb_children() {
    let db = fixture(
        "mariadb",
        serde_json::json!({
            "compression": "gzip",
            "bucket": { "endpoint": "http://minio.shop.svc:9000", "forcePathStyle": true },
            "staging": { "size": "5Gi", "storageClassName": "standard" }
        }),
    );
    assert_golden("mariadb-children.yaml", &children_yaml(&db));
}

#[test]
fn golden_postgres_children() {
    let db = fixture(
        "postgres",
        serde_json::json!({
            "bucket": { "name": "team-backups", "prefix": "", "region": "eu-west-3",
                        "caBundle": { "name": "corp-ca" } },
            "database": { "port": 6432 },
            "jobs": { "nodeSelector": { "disk": "ssd" } },
            "retention": { "keepLast": 7, "maxAge": "30d" }
        }),
    );
    assert_golden("postgres-children.yaml", &children_yaml(&db));
}

#[test]
fn default_prefix_is_namespace_and_name() {
    assert_eq!(
        key_prefix(&fixture("mariadb", serde_json::json!({}))),
        "shop/orders/"
    );
    let original = fixture("mariadb", serde_json::json!({"bucket": {"prefix": ""}}));
    assert_eq!(key_prefix(&original), "");
}

#[test]
fn ports_default_per_engine() {
    assert_eq!(
        database_port(
            &fixture("postgres", serde_json::json!({}))
                .spec
                .database
                .server()
        ),
        5432
    );
    assert_eq!(
        database_port(
            &fixture("mysql", serde_json::json!({}))
                .spec
                .database
                .server()
        ),
        3306
    );
    let custom = fixture("postgres", serde_json::json!({"database": {"port": 6432}}));
    assert_eq!(database_port(&custom.spec.database.server()), 6432);
}

#[test]
fn dollars_reach_the_container_as_written() {
    let db = fixture(
        "postgres",
        serde_json::json!({"database": {"name": "a$$b$(HOME)"}, "bucket": {"prefix": "p$(X)/"}}),
    );
    let dump = pod_of(dump_cronjob(&db, &settings()));
    let args = dump.containers[0].args.clone().unwrap();
    assert!(
        args.contains(&"--database=a$$$$b$$(HOME)".to_string()),
        "{args:?}"
    );
    let upload = pod_of(upload_cronjob(&db, &settings()));
    let args = upload.containers[0].args.clone().unwrap();
    assert!(args.contains(&"--prefix=p$$(X)/".to_string()), "{args:?}");
}

#[test]
fn no_container_runs_a_shell() {
    for engine in ["mariadb", "postgres", "mysql"] {
        let db = fixture(engine, serde_json::json!({}));
        for pod in [
            pod_of(dump_cronjob(&db, &settings())),
            pod_of(upload_cronjob(&db, &settings())),
        ] {
            for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
                let argv: Vec<&String> = c.command.iter().chain(&c.args).flatten().collect();
                assert!(
                    argv.iter().all(|a| !a.ends_with("sh") && *a != "-c"),
                    "{}: {argv:?}",
                    c.name
                );
            }
        }
    }
}

#[test]
fn user_affinity_replaces_the_dump_node_preference() {
    let db = fixture("mariadb", serde_json::json!({}));
    let pod = pod_of(upload_cronjob(&db, &settings()));
    assert!(pod.affinity.unwrap().pod_affinity.is_some());
    let db = fixture(
        "mariadb",
        serde_json::json!({"jobs": {"affinity": {"nodeAffinity": {}}}}),
    );
    let pod = pod_of(upload_cronjob(&db, &settings()));
    assert!(pod.affinity.unwrap().pod_affinity.is_none());
}

#[test]
fn encryption_hands_the_recipients_to_the_dump_step_from_their_secret() {
    let db = fixture(
        "postgres",
        serde_json::json!({"encryption": {"recipientsSecret": {"name": "age-keys"}}}),
    );
    let dump = pod_of(dump_cronjob(&db, &settings()));
    assert_eq!(
        secret_source(&dump.containers[0], "DBBACKUP_AGE_RECIPIENTS"),
        ("age-keys".into(), "recipients".into())
    );
    // The upload step needs no key: it sends what the volume holds.
    let upload = pod_of(upload_cronjob(&db, &settings()));
    assert!(
        upload.containers[0]
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "DBBACKUP_AGE_RECIPIENTS")
    );
}

/// The names of a container's variables, and those whose value is written
/// into the spec rather than read from a Secret.
fn env_of(c: &k8s_openapi::api::core::v1::Container) -> (Vec<&str>, Vec<&str>) {
    let env = c.env.as_deref().unwrap_or_default();
    let names = env.iter().map(|e| e.name.as_str()).collect();
    let literal = env
        .iter()
        .filter(|e| e.value.is_some())
        .map(|e| e.name.as_str())
        .collect();
    (names, literal)
}

#[test]
fn store_protections_reach_only_the_upload_and_keys_come_from_secrets() {
    let db = fixture(
        "postgres",
        serde_json::json!({
            "jobs": {"serviceAccountName": "backup-store"},
            "bucket": {
                "serverSideEncryption": {"type": "SSE-C", "customerKeySecret": {"name": "sse"}},
                "objectLock": {"mode": "COMPLIANCE", "days": 30},
                "pruneSecretRef": {"name": "pruner"},
                "webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/backups"}
            }
        }),
    );
    let upload = pod_of(upload_cronjob(&db, &settings()));
    let c = &upload.containers[0];
    let args = c.args.as_ref().unwrap();
    for flag in [
        "--sse=SSE-C",
        "--object-lock-mode=COMPLIANCE",
        "--object-lock-days=30",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag}: {args:?}");
    }
    let (names, literal) = env_of(c);
    for secret in [
        "DBBACKUP_SSE_CUSTOMER_KEY",
        "DBBACKUP_PRUNE_ACCESS_KEY_ID",
        "DBBACKUP_PRUNE_SECRET_ACCESS_KEY",
    ] {
        assert!(
            names.contains(&secret) && !literal.contains(&secret),
            "{secret}"
        );
    }
    // A web identity replaces the access keys; its token is mounted in this
    // container, with the default audience, and the pod has no API token.
    assert!(!names.contains(&"AWS_ACCESS_KEY_ID"), "{names:?}");
    assert!(literal.contains(&"AWS_ROLE_ARN") && literal.contains(&"AWS_WEB_IDENTITY_TOKEN_FILE"));
    assert_eq!(upload.service_account_name.as_deref(), Some("backup-store"));
    assert_eq!(upload.automount_service_account_token, Some(false));
    let token = upload
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s[0].service_account_token.clone())
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("sts.amazonaws.com"));
    assert!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "store-token")
    );

    // The dump pod talks to the database only: none of it.
    let dump = pod_of(dump_cronjob(&db, &settings()));
    assert!(dump.service_account_name.is_none());
    assert!(dump.volumes.iter().flatten().all(|v| v.projected.is_none()));
    for c in dump
        .containers
        .iter()
        .chain(dump.init_containers.iter().flatten())
    {
        let (names, _) = env_of(c);
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with("AWS_") && !n.contains("SSE")),
            "{names:?}"
        );
    }
}

#[test]
fn a_service_account_alone_makes_the_access_keys_optional() {
    let db = fixture(
        "mariadb",
        serde_json::json!({"jobs": {"serviceAccountName": "irsa"}}),
    );
    let upload = pod_of(upload_cronjob(&db, &settings()));
    let key = upload.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "AWS_ACCESS_KEY_ID")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .unwrap();
    assert_eq!(key.optional, Some(true));
    // No token of ours: the webhook (IRSA, Pod Identity) injects its own.
    assert!(
        upload
            .volumes
            .iter()
            .flatten()
            .all(|v| v.projected.is_none())
    );
}

#[test]
fn a_drill_streams_the_dump_in_with_the_store_and_identity_and_keeps_no_copy() {
    let db = fixture(
        "postgres",
        serde_json::json!({"verify": {}, "encryption": {
            "recipientsSecret": {"name": "age-keys"},
            "identitySecret": {"name": "age-id"}
        }}),
    );
    let key = "shop/orders/2026-12-01/datadump1.sql.zst.age";
    let job = super::super::drill::verify_job(&db, &settings(), key, "run").unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let inits = pod.init_containers.unwrap();
    assert_eq!(inits.len(), 1, "only the binary's copy: no fetch");
    assert_eq!(inits[0].args.as_ref().unwrap()[0], "copy-binary");
    let verify = &pod.containers[0];
    let args = verify.args.clone().unwrap();
    for want in [format!("--key={key}"), "--prefix=shop/orders/".into()] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--file")), "{args:?}");
    assert_eq!(
        secret_source(verify, "DBBACKUP_AGE_IDENTITY").0,
        "age-id".to_string()
    );
    assert_eq!(
        secret_source(verify, "AWS_ACCESS_KEY_ID").0,
        "s3-creds".to_string()
    );
}

#[test]
fn a_drill_requests_its_scratch_and_is_bounded_by_it() {
    let ephemeral = |verify: serde_json::Value| {
        let db = fixture("mariadb", serde_json::json!({ "verify": verify }));
        let key = "shop/orders/2026-12-01/datadump1.sql";
        let job = super::super::drill::verify_job(&db, &settings(), key, "run").unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let requests = pod.containers[0]
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        let work = pod.volumes.unwrap().into_iter().find(|v| v.name == "work");
        let bound = work.unwrap().empty_dir.unwrap().size_limit.map(|q| q.0);
        (requests["ephemeral-storage"].0.clone(), bound)
    };
    assert_eq!(
        ephemeral(serde_json::json!({ "scratchSize": "40Gi" })),
        ("40Gi".to_string(), Some("40Gi".to_string()))
    );
    // Unset: the scheduler still sees a request; the volume is not bounded.
    assert_eq!(ephemeral(serde_json::json!({})), ("1Gi".to_string(), None));
}
