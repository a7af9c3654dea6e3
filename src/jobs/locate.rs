//! The locate step (`dbbackup-operator locate`) of a restore across
//! namespaces, run in the backup's namespace with its credentials: it picks
//! the key as any restore does ("latest", `--before`, a database's series),
//! checks the object is there, and hands back presigned URLs of it and
//! nothing else, for the restore pod in the other namespace.

use super::{presigned, store, stream};
use crate::jobresult::{JobResult, MAX_BYTES, Outcome, Step};
use crate::logline::LogLine;
use crate::reasons;
use tracing::{error, info};

#[derive(clap::Args, Debug, Clone)]
pub struct LocateArgs {
    #[command(flatten)]
    pub object: stream::ObjectArgs,
    /// How long the URLs stay valid: the restore's deadline.
    #[arg(long, default_value_t = 21600)]
    pub expires_seconds: u64,
    /// The operator's age recipient for this restore: the URLs are sealed
    /// to it, so the termination message shows none.
    #[arg(long)]
    pub seal_to: age::x25519::Recipient,
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: std::path::PathBuf,
}

/// Runs one locate; returns the process exit code.
pub async fn run(args: LocateArgs) -> i32 {
    let (mut result, code) = match locate(&args).await {
        Ok(r) => (r, 0),
        Err(f) => {
            let line = LogLine::at(
                &chrono::Utc::now(),
                &format!("cannot locate the dump: {}", f.message),
            );
            error!("{line}");
            let mut r = JobResult::new(Step::Fetch, Outcome::Failed, line.to_string());
            r.reason = Some(f.reason.into());
            (r, 1)
        }
    };
    if let Err(e) = result.write_to(&args.termination_log) {
        error!(error = %e, "cannot write the termination log");
    }
    code
}

async fn locate(args: &LocateArgs) -> Result<JobResult, crate::jobresult::Failure> {
    use crate::jobresult::fail;
    // The grant admits this backup's dumps alone: a key named outright
    // must be under its prefix, or any object of the bucket could be asked for.
    let (prefix, key) = (&args.object.prefix, &args.object.key);
    let ours = |several| crate::names::is_dump_key(prefix, key, several);
    if key != crate::api::LATEST && !ours(false) && !ours(true) {
        return Err(fail(
            reasons::NOT_ACROSS_NAMESPACES,
            format!("key {key} is not one of the backup's dumps under {prefix:?}"),
        ));
    }
    let (client, sse, key, chosen) = stream::locate_why(&args.object).await?;
    if !matches!(sse, store::Sse::None | store::Sse::S3) {
        return Err(fail(
            reasons::NOT_ACROSS_NAMESPACES,
            "an SSE-C or SSE-KMS object cannot be read and proven through a URL",
        ));
    }
    let bucket = &args.object.store.bucket;
    let head = match store::head(&client, bucket, &key, &sse).send().await {
        Ok(head) => head,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
            return Err(fail(
                reasons::OBJECT_NOT_FOUND,
                format!("object {key} not found in bucket {bucket}"),
            ));
        }
        Err(e) => return Err(fail(reasons::DOWNLOAD_FAILED, store::describe(&e))),
    };
    // Encrypted by the bucket's own default key: its ETag is no MD5, and
    // through a URL nothing else proves it.
    if head
        .server_side_encryption()
        .is_some_and(|e| e.as_str().starts_with("aws:kms"))
    {
        return Err(fail(
            reasons::NOT_ACROSS_NAMESPACES,
            format!("{key} is encrypted with SSE-KMS: it cannot be proven through a URL"),
        ));
    }
    let expires = std::time::Duration::from_secs(args.expires_seconds.clamp(60, 7 * 24 * 3600));
    let urls = presigned::presign(&client, bucket, &key, expires)
        .await
        .map_err(|e| fail(reasons::DOWNLOAD_FAILED, e))?;
    let line = LogLine::at(&chrono::Utc::now(), &format!("located {key}: {chosen}"));
    info!("{line}");
    let mut r = JobResult::new(Step::Fetch, Outcome::Succeeded, line.to_string());
    r.key = Some(key);
    r.chosen = Some(chosen);
    r.sealed =
        Some(presigned::seal(&urls, &args.seal_to).map_err(|e| fail(reasons::DOWNLOAD_FAILED, e))?);
    // Cut, the URLs would be useless: say so instead.
    if serde_json::to_string(&r).map_or(true, |s| s.len() > MAX_BYTES) {
        return Err(fail(
            reasons::DOWNLOAD_FAILED,
            "the object's URLs do not fit in a termination message (a session token makes them long)",
        ));
    }
    Ok(r)
}
