//! The restore drill's Job, built from the backup and the key to drill alone.
//!
//! Its init container brings our binary into the database image; its main
//! container runs `verify`, which starts a throwaway server from that image's
//! binaries, streams the dump into it as it downloads (checked on the way, no
//! copy on the node) and runs the checks. The pod gets neither the production
//! database's address nor its credentials: it cannot contact it.

use super::children::{key_prefix, labels};
use crate::api::DatabaseBackup;
use crate::jobresult::Step;
use crate::names;
use crate::operator::Settings;
use crate::operator::pod::{self, BINARY, DUMP_UID, Placement, StepContainer, TERMINATION_LOG};
use crate::operator::requests::Requests;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

/// The throwaway server's data, on the scratch volume.
const SERVER_DIR: &str = "/work/server";
/// How long a finished drill's Job stays for the operator to read.
const KEEP_FINISHED_SECONDS: i32 = 24 * 3600;

/// The drill of `key`, named after `run` (the key, or the key and the time
/// of a scheduled drill), or None when the backup asks for no drills.
pub fn verify_job(db: &DatabaseBackup, settings: &Settings, key: &str, run: &str) -> Option<Job> {
    let verify = db.spec.verify.as_ref()?;
    let spec = &db.spec;
    // The scratch holds the throwaway server's data only: the dump streams in.
    let (mut volumes, mut mounts) = pod::drill_volumes(&spec.bucket, verify.scratch_size.clone());
    let (copy, binary, binary_mount) = pod::binary_copy(settings, verify.resources.as_ref());
    volumes.push(binary);
    let mut args = vec![
        "verify".to_string(),
        format!("--engine={}", spec.database.engine.as_str()),
        format!("--key={key}"),
        format!("--prefix={}", key_prefix(db)),
        format!("--work-dir={SERVER_DIR}"),
        format!("--termination-log={TERMINATION_LOG}"),
        format!("--time-zone={}", spec.time_zone),
    ];
    args.extend(pod::download_args(&spec.bucket));
    args.extend(verify.checks.iter().map(|c| {
        format!(
            "--check={}",
            serde_json::to_string(c).expect("a check serializes")
        )
    }));
    mounts.push(binary_mount);
    let identity = spec
        .encryption
        .as_ref()
        .and_then(|e| e.identity_secret.as_ref());
    let mut env = pod::download_env(
        &spec.bucket,
        spec.jobs.service_account_name.is_some(),
        identity,
    );
    env.push(pod::plain_env("HOME", "/tmp"));
    let drill = StepContainer {
        name: "verify",
        image: verify
            .image
            .clone()
            .unwrap_or_else(|| pod::database_image(&spec.database.server())),
        command: Some(BINARY),
        args,
        env,
        mounts,
        resources: Requests::drill(verify.scratch_size.as_deref())
            .under(verify.resources.as_ref(), &settings.limit_ranged),
    }
    .build();
    let placement = Placement {
        node_selector: spec.jobs.node_selector.clone(),
        tolerations: spec.jobs.tolerations.clone(),
        affinity: None,
        service_account: spec.jobs.service_account_name.clone(),
    };
    let pod = pod::job_pod(DUMP_UID, vec![copy], vec![drill], volumes, placement);
    let owner = db.name_any();
    let labels = labels(&owner, Some(Step::Verify));
    let mut job_spec = pod::job_spec(labels.clone(), pod, 0, verify.active_deadline_seconds);
    job_spec.ttl_seconds_after_finished = Some(KEEP_FINISHED_SECONDS);
    if let Some(meta) = job_spec.template.metadata.as_mut() {
        meta.annotations =
            Some([(names::VERIFY_KEY_ANNOTATION.to_string(), key.to_string())].into());
    }
    Some(Job {
        metadata: ObjectMeta {
            name: Some(names::verify_job_name(&owner, run)),
            namespace: db.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![
                db.controller_owner_ref(&())
                    .expect("a DatabaseBackup read from the API has a name and uid"),
            ]),
            ..Default::default()
        },
        spec: Some(job_spec),
        status: None,
    })
}
