//! The one builder of the pods our Jobs run, used by the dump and upload
//! CronJobs (and the Jobs made from them) and by the restore Job: security
//! that passes the `restricted` Pod Security Standard, no API token, the
//! termination log the operator reads, argv and env that reach the step as
//! written, and the parts several steps share (our binary copied into the
//! database's image, the store's flags and Secret, the database's address).

use super::Settings;
use super::requests::Requests;
use crate::api::{BucketSpec, DatabaseSpec, Engine};
use crate::names;
use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

mod store;
pub(crate) use store::*;

pub const TERMINATION_LOG: &str = "/dev/termination-log";

pub(crate) const CA_MOUNT: &str = "/etc/dbbackup/ca";

/// Where the store's containers find the ServiceAccount token of a web identity.
pub(crate) const TOKEN_MOUNT: &str = "/var/run/secrets/dbbackup/store-token";

/// UID of the `postgres`, `mysql` and `mariadb` users in the official images.
pub(crate) const DUMP_UID: i64 = 999;

/// The distroless `nonroot` user our own image runs as.
pub(crate) const UPLOAD_UID: i64 = 65532;

/// Shared group of both pods, so the uploader may delete what the dump wrote.
const STAGING_GID: i64 = 65532;

/// Where the init container leaves our binary for the database image's container.
const BINARY_DIR: &str = "/dbbackup";

pub(crate) const BINARY: &str = "/dbbackup/dbbackup-operator";
/// Our image's CA store, copied beside the binary (`jobs::copy_image_roots`)
/// for a step that reaches the store from a database image.
pub(crate) const IMAGE_ROOTS: &str = "/dbbackup/ca-certificates.crt";

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
        secret_env(names::USER_ENV, &creds.name, &creds.username_key, false),
        secret_env(
            names::password_env(db.engine),
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

/// One step's container. Its argv and env reach the step as written
/// (`literal`), it runs as `container_security` allows, and it writes its
/// result to the termination log the operator reads.
pub(crate) struct StepContainer {
    pub name: &'static str,
    pub image: String,
    /// `BINARY` for our binary in the database's image; `None` runs our
    /// image's own entrypoint.
    pub command: Option<&'static str>,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub mounts: Vec<VolumeMount>,
    /// The spec's resources with our `requests` filled in.
    pub resources: ResourceRequirements,
}

impl StepContainer {
    pub fn build(self) -> Container {
        literal(Container {
            name: self.name.into(),
            image: Some(self.image),
            command: self.command.map(|c| vec![c.to_string()]),
            args: Some(self.args),
            env: Some(self.env),
            volume_mounts: Some(self.mounts),
            resources: Some(self.resources),
            security_context: Some(container_security()),
            termination_message_path: Some(TERMINATION_LOG.into()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        })
    }
}

/// A drill pod's volumes (the scratch volume `work` for the throwaway
/// server, bounded by `scratch`, a `/tmp`, and the `store_volumes`) and its
/// container's mounts.
pub(crate) fn drill_volumes(
    bucket: &BucketSpec,
    scratch: Option<String>,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![empty_dir("work", scratch), empty_dir("tmp", None)];
    let mut mounts = vec![mount("work", "/work"), mount("tmp", "/tmp")];
    let (store, store_mounts) = store_volumes(bucket);
    volumes.extend(store);
    mounts.extend(store_mounts);
    (volumes, mounts)
}

/// Where the user lets a Job's pod run.
#[derive(Default)]
pub(crate) struct Placement {
    pub node_selector: Option<BTreeMap<String, String>>,
    pub tolerations: Option<Vec<Toleration>>,
    pub affinity: Option<Affinity>,
    /// Whose identity the pod has; only pods that talk to the store get one.
    pub service_account: Option<String>,
}

/// The pod every Job of ours runs: never restarted in place, no API token
/// (the operator reads results from the termination log), no service links,
/// and the `restricted` security of `pod_security(uid)`.
pub(crate) fn job_pod(
    uid: i64,
    init_containers: Vec<Container>,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
    placement: Placement,
) -> PodSpec {
    PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        service_account_name: placement.service_account,
        enable_service_links: Some(false),
        security_context: Some(pod_security(uid)),
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        containers,
        volumes: Some(volumes),
        node_selector: placement.node_selector,
        tolerations: placement.tolerations,
        affinity: placement.affinity,
        ..Default::default()
    }
}

/// A Job's spec around `pod`, whose pods carry `labels`.
pub(crate) fn job_spec(
    labels: BTreeMap<String, String>,
    pod: PodSpec,
    backoff_limit: i32,
    active_deadline_seconds: i64,
) -> JobSpec {
    JobSpec {
        backoff_limit: Some(backoff_limit),
        active_deadline_seconds: Some(active_deadline_seconds),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(pod),
        },
        ..Default::default()
    }
}

pub(crate) fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

/// A scratch volume, bounded by `size_limit` if set.
pub(crate) fn empty_dir(name: &str, size_limit: Option<String>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: size_limit.map(Quantity),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A step our binary runs in the database's own image, with its tools and
/// without a shell: `<subcommand> --engine … --database … <flags>`, with the
/// credentials in its env.
pub(crate) struct DatabaseStep<'a> {
    pub name: &'static str,
    pub subcommand: &'static str,
    pub db: &'a DatabaseSpec,
    pub flags: Vec<String>,
    pub mounts: Vec<VolumeMount>,
    /// The spec's resources, if any.
    pub resources: Option<ResourceRequirements>,
    /// What the step requests of what those leave unnamed.
    pub requests: Requests,
}

impl DatabaseStep<'_> {
    /// The init container that copies our binary in, the step's container,
    /// and the volume that carries the binary between them.
    pub fn build(self, settings: &Settings) -> (Container, Container, Volume) {
        let (copy, volume, binary_mount) = binary_copy(settings, self.resources.as_ref());
        let mut mounts = self.mounts;
        mounts.push(binary_mount);
        let mut args = vec![self.subcommand.to_string()];
        args.extend(database_args(self.db));
        args.extend(self.flags);
        let mut env = credentials_env(self.db);
        env.extend(client_home_env(self.db.engine));
        let container = StepContainer {
            name: self.name,
            image: database_image(self.db),
            command: Some(BINARY),
            args,
            env,
            mounts,
            resources: self
                .requests
                .under(self.resources.as_ref(), &settings.limit_ranged),
        }
        .build();
        (copy, container, volume)
    }
}

/// The init container (our image) that copies our binary into an emptyDir,
/// that volume, and its mount for the container that runs it: the dump and
/// load steps run in the database's image with its tools, and no shell.
pub(crate) fn binary_copy(
    settings: &Settings,
    resources: Option<&ResourceRequirements>,
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
        resources: Some(Requests::helper().under(resources, &settings.limit_ranged)),
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

/// `--engine=… --host=… --port=… --database=…`: where a step's database
/// is (no `--database` for a dump that picks its databases itself).
fn database_args(db: &DatabaseSpec) -> Vec<String> {
    let mut args = vec![
        format!("--engine={}", db.engine.as_str()),
        format!("--host={}", db.host),
        format!("--port={}", database_port(db)),
    ];
    if !db.name.is_empty() {
        args.push(format!("--database={}", db.name));
    }
    args
}

#[cfg(test)]
/// The Secret and key container `c`'s variable `var` is read from; panics
/// when the variable is missing or written into the spec.
pub(crate) fn secret_source(c: &Container, var: &str) -> (String, String) {
    let env = c.env.iter().flatten().find(|e| e.name == var);
    let from = env
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{var} is not read from a Secret in {}", c.name));
    (from.name.clone(), from.key.clone())
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
