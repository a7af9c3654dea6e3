//! Desired children of a `DatabaseBackup`, built from its spec alone.
//!
//! Pure functions: the same spec always gives the same objects, so they can be
//! server-side applied on every reconcile and golden-tested.

use crate::api::DatabaseBackup;
use crate::jobresult::Step;
use crate::names;
use crate::operator::Settings;
use crate::operator::pod::{
    self, DUMP_UID, DatabaseStep, Placement, StepContainer, TERMINATION_LOG, UPLOAD_UID,
};
use crate::operator::requests::Requests;
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Affinity, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodAffinity, PodAffinityTerm, PodSpec, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Where the staging volume is mounted in both pods.
pub const STAGING_MOUNT: &str = "/staging";

pub fn labels(owner: &str, step: Option<Step>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            names::LABEL_MANAGED_BY.to_string(),
            names::MANAGER.to_string(),
        ),
        (names::LABEL_BACKUP.to_string(), owner.to_string()),
        (names::LABEL_INSTANCE.to_string(), owner.to_string()),
    ]);
    if let Some(step) = step {
        labels.insert(names::LABEL_STEP.to_string(), step.as_str().to_string());
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

/// The staging volume and a scratch `/tmp` (the root filesystem is
/// read-only), and the `store_volumes` when `with_store`.
fn volumes(db: &DatabaseBackup, with_store: bool) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "staging".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names::staging_pvc_name(&db.name_any()),
                read_only: None,
            }),
            ..Default::default()
        },
        pod::empty_dir("tmp", None),
    ];
    let mut mounts = vec![
        pod::mount("staging", STAGING_MOUNT),
        pod::mount("tmp", "/tmp"),
    ];
    if with_store {
        let (store, store_mounts) = pod::store_volumes(&db.spec.bucket);
        volumes.extend(store);
        mounts.extend(store_mounts);
    }
    (volumes, mounts)
}

fn placement(db: &DatabaseBackup) -> Placement {
    let jobs = &db.spec.jobs;
    Placement {
        node_selector: jobs.node_selector.clone(),
        tolerations: jobs.tolerations.clone(),
        affinity: jobs.affinity.clone(),
        service_account: None,
    }
}

fn cronjob(db: &DatabaseBackup, step: Step, name: String, schedule: &str, pod: PodSpec) -> CronJob {
    let jobs = &db.spec.jobs;
    let pod_labels = labels(&db.name_any(), Some(step));
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
                spec: Some(pod::job_spec(
                    pod_labels,
                    pod,
                    jobs.backoff_limit,
                    jobs.active_deadline_seconds,
                )),
            },
        },
        status: None,
    }
}

pub fn dump_cronjob(db: &DatabaseBackup, settings: &Settings) -> CronJob {
    let spec = &db.spec;
    let (mut volumes, mounts) = volumes(db, false);
    let mut flags = vec![
        format!("--compression={}", spec.compression.as_str()),
        format!("--staging-dir={STAGING_MOUNT}"),
        format!("--termination-log={TERMINATION_LOG}"),
        format!("--time-zone={}", spec.time_zone),
    ];
    flags.extend(selection_flags(&spec.database));
    let (copy, mut dump, binary) = DatabaseStep {
        name: "dump",
        subcommand: "dump",
        db: &spec.database.server(),
        flags,
        mounts,
        resources: spec.jobs.resources.clone(),
        requests: Requests::database_step(),
    }
    .build(settings);
    if let Some(encryption) = &spec.encryption {
        let secret = &encryption.recipients_secret;
        let env = pod::secret_env(names::AGE_RECIPIENTS_ENV, &secret.name, &secret.key, false);
        dump.env.get_or_insert_with(Vec::new).push(env);
    }
    volumes.push(binary);
    let pod = pod::job_pod(DUMP_UID, vec![copy], vec![dump], volumes, placement(db));
    let name = names::dump_cronjob_name(&db.name_any());
    cronjob(db, Step::Dump, name, &spec.schedule, pod)
}

/// Which databases the dump step takes, when not the one `--database`.
fn selection_flags(database: &crate::api::BackupDatabaseSpec) -> Vec<String> {
    use crate::api::Selection;
    let mut flags = match database.selection() {
        Selection::One(_) => vec![],
        Selection::Names(names) => names.iter().map(|n| format!("--each={n}")).collect(),
        Selection::All { exclude } => std::iter::once("--all-databases".to_string())
            .chain(exclude.iter().map(|p| format!("--exclude={p}")))
            .collect(),
    };
    if database.role_passwords == Some(true) {
        flags.push("--role-passwords".into());
    }
    flags
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
    args.extend(pod::store_args(bucket));
    if bucket.create_bucket {
        args.push("--create-bucket".into());
    }
    if spec.database.is_several() {
        args.push("--databases".into());
    }
    if let Some(retention) = &spec.retention {
        if let Some(n) = retention.keep_last {
            args.push(format!("--keep-last={n}"));
        }
        if let Some(age) = &retention.max_age {
            args.push(format!("--max-age={age}"));
        }
        let tiers = [
            ("daily", retention.keep_daily),
            ("weekly", retention.keep_weekly),
            ("monthly", retention.keep_monthly),
            ("yearly", retention.keep_yearly),
        ];
        for (tier, n) in tiers {
            if let Some(n) = n {
                args.push(format!("--keep-{tier}={n}"));
            }
        }
        let verified = db
            .status
            .as_ref()
            .and_then(|s| s.last_verified_key.as_ref());
        if let (Some(_), Some(key)) = (&spec.verify, verified) {
            args.push(format!("--keep-verified={key}"));
        }
    }
    if let Some(lock) = &bucket.object_lock {
        args.push(format!("--object-lock-mode={}", lock.mode.as_str()));
        args.push(format!("--object-lock-days={}", lock.days));
    }
    let mut env = pod::store_env(bucket, spec.jobs.service_account_name.is_some());
    if let Some(prune) = &bucket.prune_secret_ref {
        env.extend([
            pod::secret_env(
                names::PRUNE_ACCESS_KEY_ENV,
                &prune.name,
                &prune.access_key_id_key,
                false,
            ),
            pod::secret_env(
                names::PRUNE_SECRET_KEY_ENV,
                &prune.name,
                &prune.secret_access_key_key,
                false,
            ),
        ]);
    }
    env.push(pod::plain_env("HOME", "/tmp"));
    let (volumes, mounts) = volumes(db, true);
    let upload = StepContainer {
        name: "upload",
        image: settings.uploader_image.clone(),
        command: None,
        args,
        env,
        mounts,
        resources: Requests::step().under(spec.jobs.resources.as_ref(), &settings.limit_ranged),
    }
    .build();
    let mut placement = placement(db);
    placement.affinity = placement
        .affinity
        .or_else(|| Some(prefer_dump_node(&db.name_any())));
    placement.service_account = spec.jobs.service_account_name.clone();
    let pod = pod::job_pod(UPLOAD_UID, vec![], vec![upload], volumes, placement);
    let name = names::upload_cronjob_name(&db.name_any());
    cronjob(db, Step::Upload, name, &spec.upload_schedule, pod)
}

/// A Job from `cronjob`'s template, as `kubectl create job --from=cronjob/…`
/// makes it: owned by the CronJob, so its history limits clean it up. The name
/// and the run-now label derive from `run` (a hash), so creating it twice is a no-op.
pub fn job_from_cronjob(cronjob: &CronJob, run: &str) -> Job {
    let mut spec = cronjob.spec.job_template.spec.clone().unwrap_or_default();
    let mut labels = cronjob
        .spec
        .job_template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(names::RUN_NOW.into(), run.into());
    let pod_meta = spec.template.metadata.get_or_insert_with(Default::default);
    pod_meta
        .labels
        .get_or_insert_with(Default::default)
        .insert(names::RUN_NOW.into(), run.into());
    Job {
        metadata: ObjectMeta {
            name: Some(names::run_job_name(&cronjob.name_any(), run)),
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

/// The upload Job chained to one dump run: it sends the staged dump, or
/// follows the dump while it is written (`upload --follow-dump`). `follows`:
/// the dump pod it was started beside, which names it (`names::follower_id`);
/// else it is named by the run, as the upload after a dump's success is.
pub fn chained_upload(upload: &CronJob, run: &str, follows: Option<&str>) -> Job {
    let mut job = job_from_cronjob(upload, run);
    if let Some(pod) = follows {
        let id = names::follower_id(run, pod);
        job.metadata.name = Some(names::run_job_name(&upload.name_any(), &id));
    }
    let pod = job.spec.as_mut().and_then(|s| s.template.spec.as_mut());
    if let Some(container) = pod.and_then(|p| p.containers.first_mut()) {
        container
            .args
            .get_or_insert_with(Vec::new)
            .push("--follow-dump".into());
    }
    job
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
                        // Not the instance label, which dump pods of an
                        // older release's template lack.
                        label_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([
                                (names::LABEL_BACKUP.to_string(), owner.to_string()),
                                (
                                    names::LABEL_STEP.to_string(),
                                    Step::Dump.as_str().to_string(),
                                ),
                            ])),
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
#[path = "children_tests.rs"]
mod tests;
