//! Retention after a confirmed upload: which dumps go, deleted with the
//! credentials that may delete, each outcome a log line.

use super::staging::Staging;
use super::upload::UploadArgs;
use super::{retention, store};
use chrono::Utc;
use tracing::info;

/// Whether a store error is a refusal of these credentials (a HEAD's carries
/// no error code, only the status).
fn refused(error: &str) -> bool {
    error.starts_with("AccessDenied") || error.starts_with("HTTP 403")
}

/// Applies the retention policy after a confirmed upload of `uploaded`, and
/// returns the log lines it wrote. A failure here is logged and leaves the
/// upload a success: the dump is safe, and the next run prunes again.
pub(super) async fn prune(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    sse: &store::Sse,
    policy: retention::Policy,
    uploaded: &str,
) -> Vec<String> {
    if !policy.is_set() {
        return vec![];
    }
    let log = |message: String| {
        let line = Staging::new(&args.staging_dir).log(args.time_zone, &message);
        info!("{line}");
        line.to_string()
    };
    let objects = match store::list_objects(client, &args.store.bucket, &args.prefix).await {
        Ok(objects) => objects,
        Err(e) => {
            return vec![log(format!(
                "retention skipped: cannot list the dumps: {e}"
            ))];
        }
    };
    let doomed = retention::to_prune(
        &args.prefix,
        &objects,
        policy,
        Utc::now(),
        args.time_zone,
        &[Some(uploaded), args.keep_verified.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
    );
    if doomed.is_empty() {
        return vec![];
    }
    let with_own_keys = args.prune_access_key_id.is_some();
    let pruner = match deleter(client, args).await {
        Ok(c) => c,
        Err(e) => return vec![log(format!("retention skipped: {e}"))],
    };
    let bucket = &args.store.bucket;
    let outcomes = match args.object_lock_mode {
        Some(_) => store::delete_unlocked(&pruner, bucket, &doomed, sse, Utc::now()).await,
        None => store::delete_keys(&pruner, bucket, &doomed)
            .await
            .into_iter()
            .map(|(key, outcome)| (key, outcome.map(|()| None)))
            .collect(),
    };
    outcomes
        .into_iter()
        .map(|(key, outcome)| match outcome {
            Ok(None) => log(format!("retention pruned {key}")),
            Ok(Some(until)) => log(format!(
                "retention keeps {key}: locked until {}",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            Err(e) if refused(&e) && !with_own_keys => log(format!(
                "retention cannot prune {key}: {e} (the upload's credentials may not delete; name credentials that may in spec.bucket.pruneSecretRef)"
            )),
            Err(e) => log(format!("retention cannot prune {key}: {e}")),
        })
        .collect()
}

/// The client that may delete: retention's own credentials where the
/// upload's may only write (spec.bucket.pruneSecretRef), else the upload's.
pub(super) async fn deleter(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
) -> Result<aws_sdk_s3::Client, String> {
    let keys = args
        .prune_access_key_id
        .as_ref()
        .zip(args.prune_secret_access_key.as_ref())
        .map(|(id, secret)| (id.0.clone(), secret.0.clone()));
    match keys {
        Some(keys) => args.store.client_with(Some(keys)).await,
        None => Ok(client.clone()),
    }
}
