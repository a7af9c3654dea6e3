//! The download step of a restore (`dbbackup-operator fetch`), run as the
//! restore pod's init container.
//!
//! It resolves "latest" to the newest dump under the prefix and saves the
//! object's SQL (`stream`: checked against the store's checksum, decrypted
//! and decompressed on the way) to a file, which is whole only when every
//! byte checked out. A restore streams into its load instead (`load`); the
//! drill and `kubectl dbbackup download` save.

use super::tool::Hidden;
use super::{retention, store, stream};
use crate::jobresult::{Failure, JobResult, Outcome, Step, fail};
use crate::logline::LogLine;
use crate::reasons;
use chrono::{DateTime, Utc};
use std::io::{BufRead as _, Write};
use std::path::{Path, PathBuf};
use tracing::{error, info};

#[derive(clap::Args, Debug, Clone)]
pub struct FetchArgs {
    #[command(flatten)]
    pub object: stream::ObjectArgs,
    /// Where the decompressed SQL goes.
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the one-line JSON result for the operator.
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

fn line(message: &str) -> String {
    LogLine::at(&chrono::Utc::now(), message).to_string()
}

/// Runs one download; returns the process exit code.
pub async fn run(args: FetchArgs) -> i32 {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o007);
    }
    let (mut result, code) = match fetch(&args).await {
        Ok(result) => (result, 0),
        Err(f) => {
            let _ = std::fs::remove_file(&args.out);
            let log = line(&format!("download failed: {}", f.message));
            error!("{log}");
            let mut result = JobResult::new(Step::Fetch, Outcome::Failed, log);
            result.reason = Some(f.reason.into());
            (result, 1)
        }
    };
    if let Err(e) = result.write_to(&args.termination_log) {
        error!(error = %e, "cannot write the termination log");
    }
    code
}

async fn fetch(args: &FetchArgs) -> Result<JobResult, Failure> {
    let (client, sse, key) = stream::locate(&args.object).await?;
    info!(%key, "downloading");
    let raw = match &args.object.presigned {
        Some(p) => super::download::start_presigned(&client, p).await?,
        None => super::download::start(&client, &sse, &args.object.store.bucket, &key).await?,
    };
    let proven = save_raw(raw, &key, &args.out, args.object.identity.as_ref()).await?;
    let log = line(&proven.downloaded(&key));
    info!("{log}");
    Ok(JobResult {
        step: Step::Fetch,
        outcome: Outcome::Succeeded,
        key: Some(key),
        size: Some(proven.size),
        checksum: proven.proof.map(|p| p.to_string()),
        log,
        ..JobResult::new(Step::Fetch, Outcome::Succeeded, String::new())
    })
}

/// Downloads `key` into `out`: checked against the store's checksum,
/// decrypted with `identity` when the key ends in .age, and decompressed by
/// its suffix. Every byte counted, checked and decompressed, or an error.
pub async fn download(
    client: &aws_sdk_s3::Client,
    sse: &store::Sse,
    bucket: &str,
    key: &str,
    out: &Path,
    identity: Option<&Hidden>,
) -> Result<stream::Proven, Failure> {
    let raw = super::download::start(client, sse, bucket, key).await?;
    save_raw(raw, key, out, identity).await
}

/// Saves the SQL of a download as `download` does.
async fn save_raw(
    raw: stream::Raw,
    key: &str,
    out: &Path,
    identity: Option<&Hidden>,
) -> Result<stream::Proven, Failure> {
    let (key, out, identity) = (key.to_string(), out.to_path_buf(), identity.cloned());
    tokio::task::spawn_blocking(move || {
        let mut sql = stream::Sql::open(raw, &key, identity.as_ref())?;
        save(&mut sql, &out)?;
        sql.proven()
    })
    .await
    .map_err(|e| {
        fail(
            reasons::DOWNLOAD_FAILED,
            format!("the download stopped: {e}"),
        )
    })?
}

/// Writes the whole SQL into `out` and syncs it, straight from the
/// reader's own buffer (a plain dump's chunks as they arrived).
fn save(sql: &mut stream::Sql, out: &Path) -> Result<(), Failure> {
    let mut file = std::fs::File::create(out).map_err(|e| cannot_write(out, e))?;
    loop {
        let chunk = match sql.reader.fill_buf() {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(sql.failure(&e)),
        };
        file.write_all(chunk).map_err(|e| cannot_write(out, e))?;
        let n = chunk.len();
        sql.reader.consume(n);
    }
    file.sync_all().map_err(|e| cannot_write(out, e))
}

fn cannot_write(out: &Path, e: std::io::Error) -> Failure {
    fail(
        reasons::DOWNLOAD_FAILED,
        format!("cannot write {}: {e}", out.display()),
    )
}

/// The newest of our dumps under `prefix` taken at or before `before`, and
/// when it was taken: by the time its upload recorded (`DUMPED_AT_META`),
/// else by when it was uploaded, which is later than its dump. Read newest
/// key first; a folder whose date ended before the best time found (in any
/// zone) can hold no better one.
pub async fn newest_before(
    client: &aws_sdk_s3::Client,
    sse: &store::Sse,
    bucket: &str,
    prefix: &str,
    before: DateTime<Utc>,
) -> Result<(String, DateTime<Utc>), Failure> {
    let cannot = |e: String| {
        fail(
            reasons::DOWNLOAD_FAILED,
            format!("cannot list {prefix:?}: {e}"),
        )
    };
    let objects = store::list_objects(client, bucket, prefix)
        .await
        .map_err(cannot)?;
    let mut best: Option<(String, DateTime<Utc>)> = None;
    for (o, date) in retention::newest_first(prefix, &objects) {
        if best
            .as_ref()
            .is_some_and(|(_, at)| latest_in_folder(date) < *at)
        {
            break;
        }
        let head = match store::head(client, bucket, &o.key, sse).send().await {
            Ok(head) => head,
            // Pruned since the listing: no candidate.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => continue,
            Err(e) => return Err(cannot(store::describe(&e))),
        };
        let recorded = head
            .metadata()
            .and_then(|m| m.get(store::DUMPED_AT_META))
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.to_utc());
        let Some(at) = recorded.or(o.last_modified) else {
            continue;
        };
        if at <= before && best.as_ref().is_none_or(|(_, b)| at > *b) {
            best = Some((o.key.clone(), at));
        }
    }
    best.ok_or_else(|| {
        fail(
            reasons::NO_DUMP_FOUND,
            format!(
                "no dump under prefix {prefix:?} in bucket {bucket} was taken at or before {before}"
            ),
        )
    })
}

/// The latest moment a dump in the folder of `date` can have been taken:
/// the end of that date in the zone furthest west (UTC-12).
fn latest_in_folder(date: chrono::NaiveDate) -> DateTime<Utc> {
    let end = date
        .succ_opt()
        .unwrap_or(date)
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    end + chrono::Duration::hours(12)
}

/// The newest of our dumps under `prefix`.
pub async fn latest(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<String, Failure> {
    let objects = store::list_objects(client, bucket, prefix)
        .await
        .map_err(|e| {
            fail(
                reasons::DOWNLOAD_FAILED,
                format!("cannot list {prefix:?}: {e}"),
            )
        })?;
    retention::newest_first(prefix, &objects)
        .first()
        .map(|(o, _)| o.key.clone())
        .ok_or_else(|| {
            fail(
                reasons::NO_DUMP_FOUND,
                format!("no dump under prefix {prefix:?} in bucket {bucket}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump in the folder of March 1 was taken, in any zone, before
    /// March 2 12:00 UTC (the end of March 1 at UTC-12).
    #[test]
    fn a_folder_bounds_when_its_dumps_were_taken() {
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let bound: DateTime<Utc> = "2026-03-02T12:00:00Z".parse().unwrap();
        assert_eq!(latest_in_folder(date), bound);
    }
}
