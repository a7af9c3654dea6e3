//! DatabaseRestore: one Job per restore, and its status from that Job's pod.
//!
//! The Job's init container (our image) downloads, verifies and decompresses
//! the dump onto a scratch volume; its main container (the database image)
//! loads it. Each writes a one-line JSON result to its termination log, as
//! the backup jobs do. A restore runs once: a finished one is never looked at again.

use super::checks::{self, CheckError, Problem};
use super::resources::{
    self, DUMP_UID, LABEL_MANAGED_BY, LABEL_STEP, MANAGED_BY, Settings, TERMINATION_LOG,
    UPLOAD_UID, ca_volume, container_security, plain_env, pod_security, store_args, store_env,
};
use super::status::{self, Observed};
use super::{Context, Error, write_status};
use crate::api::{
    BucketSpec, DatabaseBackup, DatabaseRestore, DatabaseRestoreStatus, RestorePhase,
};
use crate::jobresult::{JobResult, Outcome, Step};
use crate::names;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, EmptyDirVolumeSource, Pod, PodSpec, PodTemplateSpec,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// On a restore's Job and pod: the DatabaseRestore's name.
pub const LABEL_RESTORE: &str = "dbbackup.io/restore";
/// The condition a restore reports.
pub const RESTORED: &str = "Restored";
const WORK_MOUNT: &str = "/work";
const DUMP_FILE: &str = "/work/restore.sql";

/// Where the dump is: the bucket, and the prefix "latest" searches.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub bucket: BucketSpec,
    pub prefix: String,
}

/// The restore's Job: named after this resource's UID too, so that a restore
/// created again under the same name never takes an earlier one's Job (left
/// behind by `--cascade=orphan`) for its own.
pub fn job_name(r: &DatabaseRestore) -> String {
    let uid = r.metadata.uid.as_deref().unwrap_or_default();
    let suffix = format!("restore-{}", &uid[..uid.len().min(8)]);
    names::child_name(&r.name_any(), &suffix, names::DNS_LABEL_MAX)
}

fn labels(restore: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_RESTORE.to_string(), restore.to_string()),
        (LABEL_STEP.to_string(), "restore".to_string()),
    ])
}

/// The restore Job, built from the spec and its resolved source alone.
pub fn restore_job(r: &DatabaseRestore, source: &Source, settings: &Settings) -> Job {
    let spec = &r.spec;
    let name = r.name_any();
    let target = &spec.target;
    let engine = target.engine;
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    };
    let mut volumes = vec![
        Volume {
            name: "work".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: spec.scratch_size.clone().map(Quantity),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let mut fetch_mounts = vec![mount("work", WORK_MOUNT), mount("tmp", "/tmp")];
    if let Some(ca) = &source.bucket.ca_bundle {
        let (volume, mount) = ca_volume(ca);
        volumes.push(volume);
        fetch_mounts.push(mount);
    }

    let mut fetch_args = vec![
        "fetch".to_string(),
        format!("--key={}", spec.key),
        format!("--prefix={}", source.prefix),
        format!("--out={DUMP_FILE}"),
        format!("--termination-log={TERMINATION_LOG}"),
    ];
    fetch_args.extend(store_args(&source.bucket));
    let mut fetch_env = store_env(&source.bucket);
    fetch_env.push(plain_env("HOME", "/tmp"));
    let fetch = resources::literal(Container {
        name: "fetch".into(),
        image: Some(settings.uploader_image.clone()),
        args: Some(fetch_args),
        env: Some(fetch_env),
        volume_mounts: Some(fetch_mounts),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_user: Some(UPLOAD_UID),
            run_as_group: Some(UPLOAD_UID),
            ..container_security()
        }),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    });

    let (copy, binary_volume, binary_mount) =
        resources::binary_copy(settings, spec.resources.clone());
    volumes.push(binary_volume);
    let mut args = vec!["load".to_string()];
    args.extend(resources::database_args(target, &target.name));
    args.extend([
        format!("--file={DUMP_FILE}"),
        format!("--termination-log={TERMINATION_LOG}"),
    ]);
    if spec.overwrite {
        args.push("--overwrite".into());
    }
    let mut env = resources::credentials_env(target);
    env.extend(resources::client_home_env(engine));
    let load = resources::literal(Container {
        name: "restore".into(),
        image: Some(resources::database_image(target)),
        command: Some(vec![resources::BINARY.into()]),
        args: Some(args),
        env: Some(env),
        volume_mounts: Some(vec![
            mount("work", WORK_MOUNT),
            mount("tmp", "/tmp"),
            binary_mount,
        ]),
        resources: spec.resources.clone(),
        security_context: Some(container_security()),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    });

    let labels = labels(&name);
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(r)),
            namespace: r.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![
                r.controller_owner_ref(&())
                    .expect("a DatabaseRestore read from the API has a name and uid"),
            ]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // A half-done restore is not retried blindly: the next attempt is a new resource.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(spec.active_deadline_seconds),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security(DUMP_UID)),
                    init_containers: Some(vec![fetch, copy]),
                    containers: vec![load],
                    volumes: Some(volumes),
                    node_selector: spec.node_selector.clone(),
                    tolerations: spec.tolerations.clone(),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The bucket and prefix the spec points at, or what is missing.
async fn resolve_source(r: &DatabaseRestore, ctx: &Context) -> Result<Source, CheckError> {
    let ns = r.namespace().unwrap_or_default();
    let source = match (&r.spec.backup, &r.spec.bucket) {
        (Some(name), _) => {
            let backups: Api<DatabaseBackup> = Api::namespaced(ctx.client.clone(), &ns);
            let backup = backups.get_opt(name).await?.ok_or_else(|| {
                Problem::new(
                    "BackupNotFound",
                    format!("spec.backup: DatabaseBackup {name:?} not found in namespace {ns:?}"),
                )
            })?;
            Source {
                prefix: resources::key_prefix(&backup),
                bucket: backup.spec.bucket,
            }
        }
        (None, Some(bucket)) => Source {
            prefix: bucket.prefix.clone().unwrap_or_default(),
            bucket: bucket.clone(),
        },
        (None, None) => {
            return Err(Problem::new("NoSource", "set spec.backup or spec.bucket").into());
        }
    };
    checks::check_bucket(&ctx.client, &ns, &source.bucket).await?;
    checks::check_credentials(&ctx.client, &ns, &r.spec.target.credentials_secret).await?;
    Ok(source)
}

/// The result a container reported, or a failure line for one that died without one.
fn container_result(c: &ContainerStatus, step: Step) -> Option<(JobResult, Option<Time>)> {
    let t = c.state.as_ref()?.terminated.as_ref()?;
    let result = t
        .message
        .as_deref()
        .and_then(JobResult::parse)
        .filter(|r| r.step == step)
        .or_else(|| {
            let finished = t.finished_at.clone()?;
            (t.exit_code != 0)
                .then(|| status::failure(step, &finished, chrono_tz::UTC, &status::exit_cause(t)))
        })?;
    Some((result, t.finished_at.clone()))
}

/// The status the Job and its pod show, from `old` (which holds the start time).
pub fn observe(
    old: &DatabaseRestoreStatus,
    job: Option<&Job>,
    pod: Option<&Pod>,
) -> (DatabaseRestoreStatus, Observed) {
    let mut s = old.clone();
    s.start_time = s.start_time.clone().or_else(|| {
        job.and_then(|j| j.status.as_ref())
            .and_then(|st| st.start_time.clone())
    });
    let pod_status = pod.and_then(|p| p.status.as_ref());
    let fetched = pod_status
        .and_then(|st| st.init_container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| container_result(c, Step::Fetch));
    let loaded = pod_status
        .and_then(|st| st.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| container_result(c, Step::Restore));
    s.log.clear();
    let mut failed = None;
    if let Some((f, finished)) = &fetched {
        s.log.push(f.log.clone());
        if f.outcome == Outcome::Succeeded {
            s.key = f.key.clone();
            s.size = f.size.map(|n| n as i64);
        } else {
            failed = Some((f.clone(), "DownloadFailed", finished.clone()));
        }
    }
    if let Some((l, finished)) = &loaded {
        s.log.push(l.log.clone());
        if l.outcome == Outcome::Succeeded {
            s.phase = Some(RestorePhase::Succeeded);
            s.completion_time = finished.clone();
            let into = s.key.clone().unwrap_or_default();
            return (
                s,
                Observed::new(RESTORED, true, "Restored", format!("restored {into}")),
            );
        }
        failed = failed.or(Some((l.clone(), "RestoreFailed", finished.clone())));
    }
    if failed.is_none()
        && let Some((when, reason, cause)) = job.and_then(status::job_failure)
    {
        let r = status::failure(Step::Restore, &when, chrono_tz::UTC, &cause);
        s.log.push(r.log.clone());
        s.phase = Some(RestorePhase::Failed);
        s.completion_time = Some(when);
        let reason = match reason.as_deref() {
            Some("DeadlineExceeded") => "DeadlineExceeded",
            _ => "JobFailed",
        };
        return (s, Observed::new(RESTORED, false, reason, r.message()));
    }
    if let Some((r, default_reason, finished)) = failed {
        s.phase = Some(RestorePhase::Failed);
        s.completion_time = finished;
        let reason = known_reason(r.reason.as_deref()).unwrap_or(default_reason);
        return (s, Observed::new(RESTORED, false, reason, r.message()));
    }
    let (phase, reason, message) = match job {
        Some(_) => (
            RestorePhase::Running,
            "Running",
            "the restore job is running",
        ),
        None => (
            RestorePhase::Pending,
            "Pending",
            "the restore job is being created",
        ),
    };
    s.phase = Some(phase);
    (s, Observed::new(RESTORED, false, reason, message))
}

/// Condition reasons the restore containers may report.
fn known_reason(reason: Option<&str>) -> Option<&'static str> {
    const KNOWN: [&str; 8] = [
        "TargetNotEmpty",
        "ConnectionFailed",
        "RestoreFailed",
        "DownloadFailed",
        "ObjectNotFound",
        "NoDumpFound",
        "ChecksumMismatch",
        "CorruptDump",
    ];
    let reason = reason?;
    KNOWN.into_iter().find(|k| *k == reason)
}

pub async fn reconcile(r: Arc<DatabaseRestore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let old = r.status.clone().unwrap_or_default();
    if old.phase.is_some_and(RestorePhase::finished) {
        return Ok(Action::await_change());
    }
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = r.metadata.generation;

    // The source is looked up once, to create the Job; a Job that runs needs
    // nothing more from it, even if the Secrets change meanwhile.
    let job_key = ObjectRef::new(&job_name(&r)).within(&ns);
    // A restore started by a release that named the Job without the UID keeps
    // that Job: it must not run a second load.
    let legacy_key =
        ObjectRef::new(&names::child_name(&name, "restore", names::DNS_LABEL_MAX)).within(&ns);
    let ours = |j: &Job| {
        j.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == r.metadata.uid.as_ref())
    };
    let existing = ctx
        .jobs
        .get(&job_key)
        .or_else(|| ctx.jobs.get(&legacy_key).filter(|j| ours(j)));
    let job = match existing {
        Some(job) => Some(job),
        None => {
            let source = match resolve_source(&r, &ctx).await {
                Ok(source) => source,
                Err(CheckError::Kube(e)) => return Err(Error::Kube(e)),
                Err(CheckError::Problem(p)) => {
                    let mut new = old.clone();
                    new.observed_generation = generation;
                    new.phase = Some(RestorePhase::Pending);
                    let observed = Observed::new(RESTORED, false, p.reason, p.message.clone());
                    status::set_condition(&mut new.conditions, &observed, generation, &now);
                    if new != old {
                        write_status(&*r, &ctx, &new).await?;
                        ctx.publish(&*r, EventType::Warning, p.reason, &p.message)
                            .await;
                    }
                    return Err(Error::Invalid(p));
                }
            };
            let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
            let desired = restore_job(&r, &source, &ctx.settings);
            match jobs.create(&PostParams::default(), &desired).await {
                Ok(created) => {
                    info!(job = %created.name_any(), "started restore job");
                    Some(Arc::new(created))
                }
                // Created meanwhile (our cache lags): the apiserver has it.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    jobs.get_opt(&job_name(&r)).await?.map(Arc::new)
                }
                Err(e) => return Err(Error::Kube(e)),
            }
        }
    };
    ctx.restore_failures
        .lock()
        .unwrap()
        .remove(&ObjectRef::from_obj(&*r));
    // Only a pod of this restore's own Job (by UID) speaks for it.
    let job_uid = job.as_ref().and_then(|j| j.uid());
    let pod = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| super::labelled_owner(&**p, LABEL_RESTORE) == Some(ObjectRef::from_obj(&*r)))
        .filter(|p| {
            job_uid.is_some()
                && p.owner_references()
                    .iter()
                    .any(|o| o.kind == "Job" && Some(&o.uid) == job_uid.as_ref())
        })
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));

    let (mut new, observed) = observe(&old, job.as_deref(), pod.as_deref());
    new.observed_generation = generation;
    status::set_condition(&mut new.conditions, &observed, generation, &now);
    if new != old {
        write_status(&*r, &ctx, &new).await?;
        if new.phase != old.phase {
            let (type_, reason, message) = match new.phase {
                Some(RestorePhase::Succeeded) => (EventType::Normal, "Restored", observed.message),
                Some(RestorePhase::Failed) => (
                    EventType::Warning,
                    observed.reason.as_str(),
                    observed.message.clone(),
                ),
                Some(RestorePhase::Running) => (
                    EventType::Normal,
                    "RestoreStarted",
                    format!("started job {}", job_name(&r)),
                ),
                _ => (EventType::Normal, "Pending", observed.message),
            };
            ctx.publish(&*r, type_, reason, &message).await;
        }
    }
    Ok(match new.phase {
        Some(p) if p.finished() => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

pub fn error_policy(r: Arc<DatabaseRestore>, error: &Error, ctx: Arc<Context>) -> Action {
    super::backoff_after(&*r, error, &ctx, &ctx.restore_failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, PodStatus};

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn terminated(name: &str, exit: i32, message: &str, finished: i64) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: exit,
                    message: Some(message.into()),
                    finished_at: Some(at(finished)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(init: Option<ContainerStatus>, main: Option<ContainerStatus>) -> Pod {
        Pod {
            status: Some(PodStatus {
                init_container_statuses: init.map(|c| vec![c]),
                container_statuses: main.map(|c| vec![c]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const FETCHED: &str = r#"{"step":"fetch","outcome":"succeeded","key":"2026-11-25/datadump2.sql","size":42,"log":"2026-11-25,10:00:01,downloaded 2026-11-25/datadump2.sql (42 bytes, checksum verified)"}"#;

    fn job() -> Job {
        Job {
            status: Some(JobStatus {
                start_time: Some(at(100)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn success_records_key_times_and_both_lines() {
        let done = r#"{"step":"restore","outcome":"succeeded","reason":"","log":"2026-11-25,10:00:09,database restore completed"}"#;
        let p = pod(
            Some(terminated("fetch", 0, FETCHED, 101)),
            Some(terminated("restore", 0, done, 109)),
        );
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(s.phase, Some(RestorePhase::Succeeded));
        assert_eq!(s.key.as_deref(), Some("2026-11-25/datadump2.sql"));
        assert_eq!(s.size, Some(42));
        assert_eq!(
            (s.start_time, s.completion_time),
            (Some(at(100)), Some(at(109)))
        );
        assert_eq!(s.log.len(), 2);
        assert!(c.status);
    }

    #[test]
    fn the_load_steps_reason_becomes_the_condition_reason() {
        let refused = r#"{"step":"restore","outcome":"failed","reason":"TargetNotEmpty","log":"2026-11-25,10:00:02,database restore failed: database shop already has 6 tables; set spec.overwrite: true to replace its content"}"#;
        let p = pod(
            Some(terminated("fetch", 0, FETCHED, 101)),
            Some(terminated("restore", 1, refused, 102)),
        );
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(s.phase, Some(RestorePhase::Failed));
        assert_eq!((c.status, c.reason.as_str()), (false, "TargetNotEmpty"));
        assert!(
            c.message
                .starts_with("database restore failed: database shop")
        );
    }

    #[test]
    fn a_failed_download_stops_there() {
        let bad = r#"{"step":"fetch","outcome":"failed","reason":"ChecksumMismatch","log":"2026-11-25,10:00:01,download failed: k does not match its checksum"}"#;
        let p = pod(Some(terminated("fetch", 1, bad, 101)), None);
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(s.phase, Some(RestorePhase::Failed));
        assert_eq!(c.reason, "ChecksumMismatch");
        assert_eq!(s.key, None);
        // A container that died without a result still fails the restore, by exit code.
        let p = pod(Some(terminated("fetch", 137, "", 101)), None);
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&p));
        assert_eq!(
            (s.phase, c.reason.as_str()),
            (Some(RestorePhase::Failed), "DownloadFailed")
        );
        assert!(
            s.log[0].ends_with("download failed: container exited with code 137"),
            "{:?}",
            s.log
        );
        // Reasons are ours only: anything else is the step's generic one.
        let odd = bad.replace("ChecksumMismatch", "Whatever");
        let p = pod(Some(terminated("fetch", 1, &odd, 101)), None);
        assert_eq!(
            observe(&Default::default(), None, Some(&p)).1.reason,
            "DownloadFailed"
        );
    }

    #[test]
    fn a_job_past_its_deadline_fails_the_restore() {
        let mut j = job();
        j.status.as_mut().unwrap().conditions = Some(vec![JobCondition {
            type_: "Failed".into(),
            status: "True".into(),
            reason: Some("DeadlineExceeded".into()),
            message: Some("Job was active longer than specified deadline".into()),
            last_transition_time: Some(at(200)),
            ..Default::default()
        }]);
        let (s, c) = observe(&Default::default(), Some(&j), None);
        assert_eq!(
            (s.phase, c.reason.as_str()),
            (Some(RestorePhase::Failed), "DeadlineExceeded")
        );
        assert_eq!(s.completion_time, Some(at(200)));
    }

    #[test]
    fn pending_then_running() {
        let (s, c) = observe(&Default::default(), None, None);
        assert_eq!(
            (s.phase, c.reason.as_str()),
            (Some(RestorePhase::Pending), "Pending")
        );
        let (s, c) = observe(&Default::default(), Some(&job()), Some(&pod(None, None)));
        assert_eq!(
            (s.phase, c.reason.as_str()),
            (Some(RestorePhase::Running), "Running")
        );
        assert_eq!(s.start_time, Some(at(100)));
    }

    fn restore(extra: serde_json::Value) -> DatabaseRestore {
        let mut manifest = serde_json::json!({
            "apiVersion": "dbbackup.io/v1alpha1",
            "kind": "DatabaseRestore",
            "metadata": { "name": "back", "namespace": "shop", "uid": "5d2c0e0e-1f6b-4f55-9a51-0c7b0d7e4a21" },
            "spec": {
                "target": {
                    "engine": "postgres",
                    "host": "db.shop.svc",
                    "name": "orders_copy",
                    "credentialsSecret": { "name": "db-creds" }
                }
            }
        });
        for (k, v) in extra.as_object().unwrap() {
            manifest["spec"][k] = v.clone();
        }
        serde_json::from_value(manifest).unwrap()
    }

    #[test]
    fn golden_restore_job() {
        let r = restore(serde_json::json!({ "backup": "orders", "overwrite": true }));
        let bucket: BucketSpec = serde_json::from_value(serde_json::json!({
            "secretRef": { "name": "s3-creds" }, "caBundle": { "name": "ca" }, "endpoint": "http://minio:9000"
        }))
        .unwrap();
        let source = Source {
            bucket,
            prefix: "shop/orders/".into(),
        };
        let settings = Settings {
            uploader_image: "ghcr.io/dbbackup-operator/dbbackup-operator:0.1.0".into(),
        };
        let job = restore_job(&r, &source, &settings);
        resources::assert_golden("restore-job.yaml", &serde_yaml::to_string(&job).unwrap());
    }

    #[test]
    fn the_job_fetches_with_our_image_and_loads_with_the_database_image() {
        let r = restore(serde_json::json!({ "backup": "orders", "scratchSize": "20Gi" }));
        let bucket: BucketSpec =
            serde_json::from_value(serde_json::json!({ "secretRef": { "name": "s3-creds" }, "caBundle": { "name": "ca" } }))
                .unwrap();
        let source = Source {
            bucket,
            prefix: "shop/orders/".into(),
        };
        let settings = Settings {
            uploader_image: "ghcr.io/dbbackup-operator/dbbackup-operator:0.1.0".into(),
        };
        let job = restore_job(&r, &source, &settings);
        assert_eq!(job.metadata.name.as_deref(), Some("back-restore-5d2c0e0e"));
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        let fetch = &pod.init_containers.as_ref().unwrap()[0];
        let args = fetch.args.clone().unwrap();
        for want in [
            "fetch",
            "--key=latest",
            "--prefix=shop/orders/",
            "--out=/work/restore.sql",
            "--ca-bundle=/etc/dbbackup/ca/ca.crt",
        ] {
            assert!(args.contains(&want.to_string()), "{want} in {args:?}");
        }
        assert_eq!(fetch.image, Some(settings.uploader_image.clone()));
        let load = &pod.containers[0];
        assert_eq!(load.image.as_deref(), Some("docker.io/library/postgres:17"));
        let load_args = load.args.clone().unwrap();
        assert_eq!(load.command, Some(vec![resources::BINARY.to_string()]));
        assert_eq!(&load_args[..2], ["load", "--engine=postgres"]);
        assert!(load_args.contains(&"--file=/work/restore.sql".to_string()));
        let copy = &pod.init_containers.as_ref().unwrap()[1];
        assert_eq!(copy.args.clone().unwrap()[0], "copy-binary");
        let env: Vec<&str> = load.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert!(
            env.contains(&"PGPASSWORD") && env.contains(&"DB_USER"),
            "{env:?}"
        );
        assert!(
            load.env
                .iter()
                .flatten()
                .all(|e| e.value.as_deref().is_none_or(|v| !v.contains("secret")))
        );
        let work = &pod.volumes.unwrap()[0];
        assert_eq!(
            work.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("20Gi".into()))
        );
    }
}
