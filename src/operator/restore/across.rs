//! A restore of a DatabaseBackup in another namespace.
//!
//! Allowed only while a DatabaseRestoreGrant there admits the restore's
//! namespace and names the backup; checked when the restore starts. The
//! store's credentials stay in their namespace: a locate Job runs there with
//! the backup's own Secret refs, picks the object as any restore would, and
//! reports presigned URLs of it alone, valid for the restore's deadline,
//! sealed to a key the operator holds in memory for this restore (so no
//! reader of that pod gets them). The restore pod reads through them, with
//! no credentials of that namespace.

use super::job::{Across, Located, Source};
use crate::api::{DatabaseBackup, DatabaseRestore, DatabaseRestoreGrant, IdentitySecretRef};
use crate::jobresult::{JobResult, Outcome, Step};
use crate::jobs::presigned;
use crate::names;
use crate::operator::checks::{self, CheckError, Problem};
use crate::operator::pod::{self, Placement, StepContainer, TERMINATION_LOG, UPLOAD_UID};
use crate::operator::requests::Requests;
use crate::operator::{Context, Error, Settings, backup};
use crate::reasons;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};

/// The label that ties a locate Job and its pod to their restore (its UID).
const LABEL_LOCATE: &str = "dbbackup.io/locate";
/// The label naming the key a locate Job seals its URLs to.
const LABEL_SEAL: &str = "dbbackup.io/locate-key";
/// How long a finished locate Job stays: its URLs are read once.
const KEEP_FINISHED_SECONDS: i32 = 600;

/// Whether a grant in `from` lets restores of `ns` use backup `backup`.
pub async fn check_grant(
    ctx: &Context,
    ns: &str,
    from: &str,
    backup: &str,
) -> Result<(), CheckError> {
    let grants: Api<DatabaseRestoreGrant> = Api::namespaced(ctx.client.clone(), from);
    let missing = |why: String| Problem::new(reasons::GRANT_MISSING, why).into();
    match grants.list(&ListParams::default()).await {
        Ok(list) if list.items.iter().any(|g| g.allows(ns, backup)) => Ok(()),
        Ok(_) => Err(missing(format!(
            "no DatabaseRestoreGrant in namespace {from:?} lets restores of namespace {ns:?} use \
             DatabaseBackup {backup:?}: one there needs from: [{{namespace: {ns}}}] and to: [{{backup: {backup}}}]"
        ))),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(missing(format!(
            "the operator may not read DatabaseRestoreGrants in namespace {from:?}: installed \
             with watchNamespace, it restores within that namespace only"
        ))),
        Err(e) => Err(CheckError::Kube(e)),
    }
}

/// The source of a restore of `backup`, in another namespace: what can go
/// through a URL is checked there.
pub async fn source(
    r: &DatabaseRestore,
    backup: &DatabaseBackup,
    ctx: &Context,
) -> Result<Source, CheckError> {
    let bucket = &backup.spec.bucket;
    let refuse = |what: &str| {
        Problem::new(
            reasons::NOT_ACROSS_NAMESPACES,
            format!("spec.backupNamespace: {what}: restore it in its own namespace"),
        )
    };
    use crate::api::SseType;
    match bucket.server_side_encryption.as_ref().map(|s| s.kind) {
        Some(SseType::Customer) => {
            return Err(refuse(
                "an SSE-C dump cannot be read through a URL without its key travelling with it",
            )
            .into());
        }
        // The proof through a URL is the MD5 ETag, which SSE-KMS does not keep.
        Some(SseType::AwsKms) => {
            return Err(refuse("an SSE-KMS dump cannot be proven through a URL").into());
        }
        Some(SseType::Aes256) | None => {}
    }
    if bucket.ca_bundle.is_some() || bucket.web_identity.is_some() {
        return Err(refuse(
            "a store with a CA bundle or web identity is not yet reached through URLs",
        )
        .into());
    }
    // Either shape: a volume switched between one database and several
    // holds dumps of both.
    let prefix = backup::key_prefix(backup);
    let ours = |several| names::is_dump_key(&prefix, &r.spec.key, several);
    if r.spec.key != crate::api::LATEST && !ours(false) && !ours(true) {
        return Err(Problem::new(
            reasons::NOT_ACROSS_NAMESPACES,
            format!(
                "spec.key: the grant admits the dumps of DatabaseBackup {:?} alone, under {prefix:?}; this is none of them",
                backup.name_any()
            ),
        )
        .into());
    }
    let from = backup.namespace().unwrap_or_default();
    let account = backup.spec.jobs.service_account_name.clone();
    checks::check_bucket(&ctx.client, &from, bucket, account.is_some()).await?;
    Ok(Source {
        prefix: super::database_prefix(backup::key_prefix(backup), r),
        bucket: bucket.clone(),
        // The backup's account lives in its own namespace.
        service_account: r.spec.service_account_name.clone(),
        across: Some(Across {
            namespace: from,
            backup: backup.name_any(),
            service_account: account,
        }),
        located: None,
    })
}

/// Where the locate step is.
pub enum Locating {
    /// Done: the object and its URLs.
    Found(Located),
    /// Not yet (the Job was created now, or runs).
    Waiting,
    /// It failed; its result says why.
    Failed(Box<JobResult>),
}

/// Starts the locate Job of `r` in the backup's namespace, or reads what it found.
pub async fn locate(
    r: &DatabaseRestore,
    ctx: &Context,
    source: &Source,
    across: &Across,
) -> Result<Locating, Error> {
    let uid = r.metadata.uid.clone().unwrap_or_default();
    // This operator's key for this restore: its locate Job seals the URLs
    // to it. Kept in memory only; a restarted operator locates again.
    let identity = ctx
        .locate_keys
        .lock()
        .unwrap()
        .entry(uid.clone())
        .or_insert_with(age::x25519::Identity::generate)
        .clone();
    let recipient = identity.to_public().to_string();
    let seal = names::seal_label(&recipient);
    let selector =
        ListParams::default().labels(&format!("{LABEL_LOCATE}={uid},{LABEL_SEAL}={seal}"));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &across.namespace);
    for pod in pods.list(&selector).await?.items {
        // The key stays until the restore's Job exists or it ended
        // (`forget`): a retry of the Job's creation reads this pod again.
        if let Some(found) = reported(&pod, &identity) {
            return Ok(found);
        }
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &across.namespace);
    let existing = jobs.list(&selector).await?.items;
    if let Some(failed) = existing
        .iter()
        .find_map(crate::operator::results::job_failure)
    {
        let (when, _, cause) = failed;
        let r = crate::operator::results::failure(Step::Fetch, &when, chrono_tz::UTC, &cause);
        return Ok(Locating::Failed(Box::new(r)));
    }
    if existing.is_empty() {
        let settings = ctx.settings_in(&across.namespace);
        let job = locate_job(r, source, across, &settings, &recipient);
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Locating::Waiting)
}

/// Drops the key of restore `uid`: its Job exists, or it ended.
pub fn forget(ctx: &Context, uid: &str) {
    ctx.locate_keys.lock().unwrap().remove(uid);
}

/// What a finished locate pod reported, its URLs opened with `identity`.
fn reported(pod: &Pod, identity: &age::x25519::Identity) -> Option<Locating> {
    let t = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()?;
    let result = t
        .message
        .as_deref()
        .and_then(JobResult::parse)
        .filter(|r| r.step == Step::Fetch);
    Some(match result {
        Some(r) if r.outcome == Outcome::Succeeded => {
            let opened = r
                .sealed
                .as_deref()
                .and_then(|s| presigned::open(s, identity));
            match (opened, &r.chosen) {
                (Some(presigned), Some(chosen)) => Locating::Found(Located {
                    presigned,
                    chosen: chosen.clone(),
                }),
                _ => {
                    let cause = "the locate job's URLs cannot be opened with this restore's key";
                    let when = t.finished_at.clone()?;
                    let r = crate::operator::results::failure(
                        Step::Fetch,
                        &when,
                        chrono_tz::UTC,
                        cause,
                    );
                    Locating::Failed(Box::new(r))
                }
            }
        }
        Some(r) => Locating::Failed(Box::new(r)),
        None => {
            let when = t.finished_at.clone()?;
            let cause = crate::operator::results::exit_cause(t);
            let r = crate::operator::results::failure(Step::Fetch, &when, chrono_tz::UTC, &cause);
            Locating::Failed(Box::new(r))
        }
    })
}

/// The locate Job: our image, the backup's bucket and Secret refs, in the
/// backup's namespace, with no owner there (a restore is in another
/// namespace): it removes itself once read.
fn locate_job(
    r: &DatabaseRestore,
    source: &Source,
    across: &Across,
    settings: &Settings,
    seal_to: &str,
) -> Job {
    let spec = &r.spec;
    let uid = r.metadata.uid.clone().unwrap_or_default();
    let (volumes, mounts) = pod::store_volumes(&source.bucket);
    let mut args = vec![
        "locate".to_string(),
        format!("--key={}", spec.key),
        format!("--prefix={}", source.prefix),
        format!("--termination-log={TERMINATION_LOG}"),
        // Valid while the restore may run, and a little more for its start.
        format!("--expires-seconds={}", spec.active_deadline_seconds + 600),
        format!("--seal-to={seal_to}"),
    ];
    args.extend(spec.before.as_ref().map(|t| format!("--before={t}")));
    args.extend(pod::store_args(&source.bucket));
    let container = StepContainer {
        name: "locate",
        image: settings.uploader_image.clone(),
        command: None,
        args,
        env: pod::store_env(&source.bucket, across.service_account.is_some()),
        mounts,
        resources: Requests::step().under(None, &settings.limit_ranged),
    }
    .build();
    let placement = Placement {
        node_selector: None,
        tolerations: None,
        affinity: None,
        service_account: across.service_account.clone(),
    };
    let pod = pod::job_pod(UPLOAD_UID, vec![], vec![container], volumes, placement);
    let labels: std::collections::BTreeMap<String, String> = [
        (
            names::LABEL_MANAGED_BY.to_string(),
            names::MANAGER.to_string(),
        ),
        (names::LABEL_BACKUP.to_string(), across.backup.clone()),
        (LABEL_LOCATE.to_string(), uid.clone()),
        (LABEL_SEAL.to_string(), names::seal_label(seal_to)),
    ]
    .into();
    let mut job_spec = pod::job_spec(labels.clone(), pod, 0, 600);
    job_spec.ttl_seconds_after_finished = Some(KEEP_FINISHED_SECONDS);
    Job {
        metadata: ObjectMeta {
            name: Some(names::locate_job_name(&r.name_any(), &uid, seal_to)),
            namespace: Some(across.namespace.clone()),
            labels: Some(labels),
            annotations: Some(
                [(
                    "dbbackup.io/for".to_string(),
                    format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any()),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(job_spec),
        status: None,
    }
}

/// The restore pod's environment: the URLs and the bucket's name as plain
/// values (they admit one object, for the restore's deadline, to the
/// namespace the grant admits), and the restore's own age identity.
pub fn presigned_env(located: &Located, identity: Option<&IdentitySecretRef>) -> Vec<EnvVar> {
    let urls = serde_json::to_string(&located.presigned).expect("URLs serialize");
    let mut env = vec![
        pod::plain_env(names::BUCKET_ENV, &located.presigned.bucket),
        pod::plain_env(crate::jobs::presigned::PRESIGNED_ENV, &urls),
    ];
    env.extend(identity.map(|i| pod::secret_env(names::AGE_IDENTITY_ENV, &i.name, &i.key, false)));
    env
}
