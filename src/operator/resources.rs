//! Desired children of a `DatabaseBackup`, built from its spec alone.
//!
//! Pure functions: the same spec always gives the same objects, so they can be
//! server-side applied on every reconcile and golden-tested.

use crate::api::{BucketSpec, CaBundleRef, DatabaseBackup, DatabaseSpec, Engine};
use crate::jobs::tool;
use crate::names;
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodAffinity, PodAffinityTerm, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

pub const MANAGED_BY: &str = "dbbackup-operator";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_BACKUP: &str = "dbbackup.io/backup";
pub const LABEL_STEP: &str = "dbbackup.io/step";
/// On the jobs and pods of a "back up now" run: a hash of the request's token.
pub const LABEL_RUN_NOW: &str = "dbbackup.io/run-now";
/// Setting this annotation to a new value requests one backup now.
pub const RUN_NOW_ANNOTATION: &str = "dbbackup.io/run-now";

/// Where the staging volume is mounted in both pods.
pub const STAGING_MOUNT: &str = "/staging";
pub const TERMINATION_LOG: &str = "/dev/termination-log";
pub(crate) const CA_MOUNT: &str = "/etc/dbbackup/ca";

/// UID of the `postgres`, `mysql` and `mariadb` users in the official images.
pub(crate) const DUMP_UID: i64 = 999;
/// The distroless `nonroot` user our own image runs as.
pub(crate) const UPLOAD_UID: i64 = 65532;
/// Shared group of both pods, so the uploader may delete what the dump wrote.
const STAGING_GID: i64 = 65532;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Dump,
    Upload,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Dump => "dump",
            Step::Upload => "upload",
        }
    }
}

/// Operator-wide settings that shape the children.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of this operator, which runs the `upload` subcommand.
    pub uploader_image: String,
}

pub fn labels(owner: &str, step: Option<Step>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_BACKUP.to_string(), owner.to_string()),
    ]);
    if let Some(step) = step {
        labels.insert(LABEL_STEP.to_string(), step.as_str().to_string());
    }
    labels
}

fn child_meta(db: &DatabaseBackup, name: String, step: Option<Step>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: db.namespace(),
        labels: Some(labels(&db.name_any(), step)),
        owner_references: Some(vec![
            db.controller_owner_ref(&())
                .expect("a DatabaseBackup read from the API has a name and uid"),
        ]),
        ..Default::default()
    }
}

/// The object key prefix: `<namespace>/<name>/` unless the spec sets one.
pub fn key_prefix(db: &DatabaseBackup) -> String {
    match &db.spec.bucket.prefix {
        Some(prefix) => prefix.clone(),
        None => format!("{}/{}/", db.namespace().unwrap_or_default(), db.name_any()),
    }
}

pub fn database_port(db: &DatabaseSpec) -> u16 {
    db.port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| db.engine.default_port())
}

/// The image that runs the database's own tools.
pub(crate) fn database_image(db: &DatabaseSpec) -> String {
    db.image
        .clone()
        .unwrap_or_else(|| db.engine.default_image().to_string())
}

/// The user name and password, from the credentials Secret, where the tools read them.
pub(crate) fn credentials_env(db: &DatabaseSpec) -> Vec<EnvVar> {
    let creds = &db.credentials_secret;
    vec![
        secret_env(tool::USER_ENV, &creds.name, &creds.username_key, false),
        secret_env(
            tool::password_env(db.engine),
            &creds.name,
            &creds.password_key,
            false,
        ),
    ]
}

/// A writable HOME; the MariaDB/MySQL client then reads no option files from it.
pub(crate) fn client_home_env(engine: Engine) -> Vec<EnvVar> {
    let mut env = vec![plain_env("HOME", "/tmp")];
    if engine != Engine::Postgres {
        env.push(plain_env("MYSQL_HOME", "/tmp"));
    }
    env
}

pub fn staging_pvc(db: &DatabaseBackup) -> PersistentVolumeClaim {
    let staging = &db.spec.staging;
    PersistentVolumeClaim {
        metadata: child_meta(db, names::staging_pvc_name(&db.name_any()), None),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(
                staging
                    .access_modes
                    .iter()
                    .map(|m| m.as_str().to_string())
                    .collect(),
            ),
            storage_class_name: staging.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(staging.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

pub(crate) fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container whose command, args and env values the kubelet passes on as
/// written. It expands `$(VAR)` and turns `$$` into `$` in those fields; every
/// `$` we put there (scripts, names from the spec) is meant literally.
pub(crate) fn literal(mut c: Container) -> Container {
    let escape = |s: &mut String| *s = s.replace('$', "$$");
    c.command.iter_mut().flatten().for_each(escape);
    c.args.iter_mut().flatten().for_each(escape);
    for e in c.env.iter_mut().flatten() {
        e.value.iter_mut().for_each(escape);
    }
    c
}

pub(crate) fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

/// Pod and container security that passes the `restricted` Pod Security Standard.
pub(crate) fn pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(STAGING_GID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn volumes(db: &DatabaseBackup, with_ca: bool) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "staging".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names::staging_pvc_name(&db.name_any()),
                read_only: None,
            }),
            ..Default::default()
        },
        // Scratch space, since the root filesystem is read-only.
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "staging".into(),
            mount_path: STAGING_MOUNT.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if let (true, Some(ca)) = (with_ca, &db.spec.bucket.ca_bundle) {
        let (volume, mount) = ca_volume(ca);
        volumes.push(volume);
        mounts.push(mount);
    }
    (volumes, mounts)
}

/// The CA bundle Secret as a volume, and its read-only mount at `CA_MOUNT`.
pub(crate) fn ca_volume(ca: &CaBundleRef) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: "ca-bundle".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(ca.name.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name: "ca-bundle".into(),
        mount_path: CA_MOUNT.into(),
        read_only: Some(true),
        ..Default::default()
    };
    (volume, mount)
}

fn cronjob(db: &DatabaseBackup, step: Step, schedule: &str, pod: PodSpec) -> CronJob {
    let jobs = &db.spec.jobs;
    let owner = db.name_any();
    let name = match step {
        Step::Dump => names::dump_cronjob_name(&owner),
        Step::Upload => names::upload_cronjob_name(&owner),
    };
    let pod_labels = labels(&owner, Some(step));
    CronJob {
        metadata: child_meta(db, name, Some(step)),
        spec: CronJobSpec {
            schedule: schedule.to_string(),
            time_zone: Some(db.spec.time_zone.clone()),
            suspend: Some(db.spec.suspend),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(jobs.starting_deadline_seconds),
            successful_jobs_history_limit: Some(jobs.successful_jobs_history_limit),
            failed_jobs_history_limit: Some(jobs.failed_jobs_history_limit),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels.clone()),
                    ..Default::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(jobs.backoff_limit),
                    active_deadline_seconds: Some(jobs.active_deadline_seconds),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(pod_labels),
                            ..Default::default()
                        }),
                        spec: Some(pod),
                    },
                    ..Default::default()
                }),
            },
        },
        status: None,
    }
}

fn base_pod(db: &DatabaseBackup, uid: i64, container: Container, volumes: Vec<Volume>) -> PodSpec {
    let jobs = &db.spec.jobs;
    PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security(uid)),
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: jobs.node_selector.clone(),
        tolerations: jobs.tolerations.clone(),
        affinity: jobs.affinity.clone(),
        ..Default::default()
    }
}

/// Where the init container leaves our binary for the database image's container.
const BINARY_DIR: &str = "/dbbackup";
pub(crate) const BINARY: &str = "/dbbackup/dbbackup-operator";

/// The init container (our image) that copies our binary into an emptyDir,
/// that volume, and its mount for the container that runs it: the dump and
/// load steps run in the database's image with its tools, and no shell.
pub(crate) fn binary_copy(
    settings: &Settings,
    resources: Option<ResourceRequirements>,
) -> (Container, Volume, VolumeMount) {
    let mount = VolumeMount {
        name: "dbbackup-binary".into(),
        mount_path: BINARY_DIR.into(),
        ..Default::default()
    };
    let init = Container {
        name: "copy-binary".into(),
        image: Some(settings.uploader_image.clone()),
        args: Some(vec!["copy-binary".into(), format!("--to={BINARY}")]),
        volume_mounts: Some(vec![mount.clone()]),
        resources,
        security_context: Some(container_security()),
        ..Default::default()
    };
    let volume = Volume {
        name: "dbbackup-binary".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    (init, volume, mount)
}

/// `--engine=… --host=… --port=… --database=…`: where a step's database is.
pub(crate) fn database_args(db: &DatabaseSpec, database: &str) -> Vec<String> {
    vec![
        format!("--engine={}", db.engine.as_str()),
        format!("--host={}", db.host),
        format!("--port={}", database_port(db)),
        format!("--database={database}"),
    ]
}

pub fn dump_cronjob(db: &DatabaseBackup, settings: &Settings) -> CronJob {
    let spec = &db.spec;
    let engine = spec.database.engine;
    let (mut volumes, mut mounts) = volumes(db, false);
    let (copy, binary_volume, binary_mount) = binary_copy(settings, spec.jobs.resources.clone());
    volumes.push(binary_volume);
    mounts.push(binary_mount);
    let mut args = vec!["dump".to_string()];
    args.extend(database_args(&spec.database, &spec.database.name));
    args.extend([
        format!("--compression={}", spec.compression.as_str()),
        format!("--staging-dir={STAGING_MOUNT}"),
        format!("--termination-log={TERMINATION_LOG}"),
        format!("--time-zone={}", spec.time_zone),
    ]);
    let mut env = credentials_env(&spec.database);
    env.extend(client_home_env(engine));
    let container = literal(Container {
        name: "dump".into(),
        image: Some(database_image(&spec.database)),
        command: Some(vec![BINARY.into()]),
        args: Some(args),
        env: Some(env),
        volume_mounts: Some(mounts),
        resources: spec.jobs.resources.clone(),
        security_context: Some(container_security()),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    });
    let mut pod = base_pod(db, DUMP_UID, container, volumes);
    pod.init_containers = Some(vec![copy]);
    cronjob(db, Step::Dump, &spec.schedule, pod)
}

/// Flags of the store: addressing and CA bundle (mounted at `CA_MOUNT`).
pub(crate) fn store_args(bucket: &BucketSpec) -> Vec<String> {
    let mut args = vec![];
    if let Some(path_style) = bucket.force_path_style {
        args.push(format!("--force-path-style={path_style}"));
    }
    if let Some(ca) = &bucket.ca_bundle {
        args.push(format!("--ca-bundle={CA_MOUNT}/{}", ca.key));
    }
    args
}

/// Bucket, credentials, endpoint and region, from the spec or the bucket Secret.
pub(crate) fn store_env(bucket: &BucketSpec) -> Vec<EnvVar> {
    let secret = &bucket.secret_ref;
    vec![
        match &bucket.name {
            Some(name) => plain_env("DBBACKUP_BUCKET", name),
            None => secret_env("DBBACKUP_BUCKET", &secret.name, &secret.bucket_key, false),
        },
        secret_env(
            "AWS_ACCESS_KEY_ID",
            &secret.name,
            &secret.access_key_id_key,
            false,
        ),
        secret_env(
            "AWS_SECRET_ACCESS_KEY",
            &secret.name,
            &secret.secret_access_key_key,
            false,
        ),
        match &bucket.endpoint {
            Some(url) => plain_env("DBBACKUP_ENDPOINT", url),
            None => secret_env(
                "DBBACKUP_ENDPOINT",
                &secret.name,
                &secret.endpoint_key,
                true,
            ),
        },
        match &bucket.region {
            Some(region) => plain_env("AWS_REGION", region),
            None => secret_env("AWS_REGION", &secret.name, &secret.region_key, true),
        },
    ]
}

pub fn upload_cronjob(db: &DatabaseBackup, settings: &Settings) -> CronJob {
    let spec = &db.spec;
    let bucket = &spec.bucket;
    let mut args = vec![
        "upload".to_string(),
        format!("--staging-dir={STAGING_MOUNT}"),
        format!("--termination-log={TERMINATION_LOG}"),
        format!("--prefix={}", key_prefix(db)),
        format!("--time-zone={}", spec.time_zone),
    ];
    args.extend(store_args(bucket));
    if bucket.create_bucket {
        args.push("--create-bucket".into());
    }
    if let Some(retention) = &spec.retention {
        if let Some(n) = retention.keep_last {
            args.push(format!("--keep-last={n}"));
        }
        if let Some(age) = &retention.max_age {
            args.push(format!("--max-age={age}"));
        }
    }
    let mut env = store_env(bucket);
    env.push(plain_env("HOME", "/tmp"));
    let (volumes, mounts) = volumes(db, true);
    let container = literal(Container {
        name: "upload".into(),
        image: Some(settings.uploader_image.clone()),
        args: Some(args),
        env: Some(env),
        volume_mounts: Some(mounts),
        resources: spec.jobs.resources.clone(),
        security_context: Some(container_security()),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    });
    let mut pod = base_pod(db, UPLOAD_UID, container, volumes);
    if pod.affinity.is_none() {
        pod.affinity = Some(prefer_dump_node(&db.name_any()));
    }
    cronjob(db, Step::Upload, &spec.upload_schedule, pod)
}

/// A Job from `cronjob`'s template, as `kubectl create job --from=cronjob/…`
/// makes it: owned by the CronJob, so its history limits clean it up. The name
/// and the run-now label derive from `run` (a hash), so creating it twice is a no-op.
pub fn job_from_cronjob(cronjob: &CronJob, run: &str) -> Job {
    let cj_name = cronjob.name_any();
    let name = format!("{cj_name}-now-{run}");
    let mut spec = cronjob.spec.job_template.spec.clone().unwrap_or_default();
    let mut labels = cronjob
        .spec
        .job_template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(LABEL_RUN_NOW.into(), run.into());
    let pod_meta = spec.template.metadata.get_or_insert_with(Default::default);
    pod_meta
        .labels
        .get_or_insert_with(Default::default)
        .insert(LABEL_RUN_NOW.into(), run.into());
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: cronjob.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "cronjob.kubernetes.io/instantiate".to_string(),
                "manual".to_string(),
            )])),
            owner_references: cronjob.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// With a ReadWriteOnce volume, an upload pod on another node than a running
/// dump pod would hit Multi-Attach; prefer the dump pod's node.
fn prefer_dump_node(owner: &str) -> Affinity {
    Affinity {
        pod_affinity: Some(PodAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(labels(owner, Some(Step::Dump))),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
/// Compares with `tests/golden/<name>`; `UPDATE_GOLDEN=1` rewrites it.
pub(crate) fn assert_golden(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{path} missing: run with UPDATE_GOLDEN=1"));
    assert!(
        expected == actual,
        "{name} differs from the golden file; review and rerun with UPDATE_GOLDEN=1\n{actual}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
            database_port(&fixture("postgres", serde_json::json!({})).spec.database),
            5432
        );
        assert_eq!(
            database_port(&fixture("mysql", serde_json::json!({})).spec.database),
            3306
        );
        let custom = fixture("postgres", serde_json::json!({"database": {"port": 6432}}));
        assert_eq!(database_port(&custom.spec.database), 6432);
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
}
