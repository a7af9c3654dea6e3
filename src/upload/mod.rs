//! The upload step (`dbbackup-operator upload`), run by the upload CronJob.
//!
//! The original pipeline's contract: a dump in the staging folder is uploaded
//! and then deleted; no dump means "there is no file to upload" and nothing
//! else. What ours adds: the local file is deleted only after the store
//! confirms size and ETag, an existing object is never replaced, and any
//! failure keeps the dump for the next run and exits non-zero.

pub mod keys;
pub mod retention;
pub mod s3;

use crate::jobresult::{JobResult, Outcome, Step};
use crate::logline::{self, LogLine};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::io::Write;
use std::path::{Path, PathBuf};
use tracing::{error, info, warn};

/// How many times a taken key is retried with the next index.
const MAX_KEY_ATTEMPTS: usize = 10;

#[derive(clap::Args, Debug, Clone)]
pub struct UploadArgs {
    /// The staging volume: dumps in dumps/, log files in logs/.
    #[arg(long)]
    pub staging_dir: PathBuf,
    /// Where to write the one-line JSON result for the operator.
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    /// Key prefix, ending in '/' or empty.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// IANA time zone of the date folders and log lines.
    #[arg(long, default_value = "UTC")]
    pub time_zone: Tz,
    #[command(flatten)]
    pub store: s3::StoreArgs,
    /// Create the bucket when it does not exist.
    #[arg(long)]
    pub create_bucket: bool,
    /// Smallest multipart part, in MiB.
    #[arg(long, default_value_t = 8, hide = true)]
    pub part_size_mib: u64,
    /// Parts uploaded at once. With one more buffer being read and
    /// checksummed, 3 keeps the peak RSS under 48 MiB; 4 or 8 were no faster
    /// on 2 cores shared with the store.
    #[arg(long, default_value_t = 3, hide = true)]
    pub concurrency: usize,
    /// Retention: after a confirmed upload, keep only the newest N dumps under the prefix.
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Retention: after a confirmed upload, keep only dumps younger than this (30d, 12h, 1d12h).
    #[arg(long, value_parser = retention::parse_age)]
    pub max_age: Option<chrono::Duration>,
}

/// A staged dump ready for upload.
#[derive(Debug)]
struct Staged {
    path: PathBuf,
    name: &'static str,
    size: u64,
    finished: DateTime<Utc>,
}

fn find_dump(dumps: &Path) -> std::io::Result<Option<Staged>> {
    for name in keys::DUMP_FILES {
        let path = dumps.join(name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                return Ok(Some(Staged {
                    path,
                    name,
                    size: meta.len(),
                    finished: meta.modified()?.into(),
                }));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Appends `message` to today's log file and returns the line.
fn append_log(staging: &Path, tz: Tz, message: &str) -> LogLine {
    let line = LogLine::at(&Utc::now().with_timezone(&tz), message);
    let dir = staging.join("logs");
    let written = std::fs::create_dir_all(&dir).and_then(|_| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(line.file_name()))?;
        writeln!(f, "{line}")?;
        f.sync_data()
    });
    if let Err(e) = written {
        warn!(error = %e, "cannot write the log file");
    }
    line
}

/// What the `.multipart` state file holds: an upload to abort if we die mid-way.
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingUpload {
    bucket: String,
    key: String,
    upload_id: String,
}

fn state_path(dumps: &Path) -> PathBuf {
    dumps.join(".multipart-upload.json")
}

/// Aborts the multipart upload an interrupted earlier run left behind.
async fn abort_leftover(client: &aws_sdk_s3::Client, dumps: &Path) {
    let path = state_path(dumps);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    if let Ok(p) = serde_json::from_str::<PendingUpload>(&text) {
        info!(key = %p.key, "aborting the multipart upload of an interrupted run");
        s3::abort(client, &p.bucket, &p.key, &p.upload_id).await;
    }
    let _ = std::fs::remove_file(path);
}

/// Runs one upload; returns the process exit code.
pub async fn run(args: UploadArgs) -> i32 {
    // Files we create stay writable for the dump pod's user, which shares our group.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o007);
    }
    // Part buffers are large and short-lived. A fixed mmap threshold keeps glibc
    // from moving them into per-thread heaps that never shrink, which would let
    // peak memory creep far above parts-in-flight × part size.
    // SAFETY: mallopt only tunes the allocator; called before any part is allocated.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let (mut result, code) = match upload(&args).await {
        Ok(result) => (result, 0),
        Err(message) => {
            let line = append_log(
                &args.staging_dir,
                args.time_zone,
                &format!("upload failed: {message}"),
            );
            error!("{line}");
            (
                JobResult::new(Step::Upload, Outcome::Failed, line.to_string()),
                1,
            )
        }
    };
    if let Err(e) = result.write_to(&args.termination_log) {
        warn!(path = %args.termination_log.display(), error = %e, "cannot write the termination log");
    }
    code
}

async fn upload(args: &UploadArgs) -> Result<JobResult, String> {
    let tz = args.time_zone;
    let dumps = args.staging_dir.join("dumps");
    let staged = find_dump(&dumps).map_err(|e| format!("cannot read {}: {e}", dumps.display()))?;
    let Some(staged) = staged else {
        let line = append_log(&args.staging_dir, tz, logline::NOTHING_TO_UPLOAD);
        info!("{line}");
        return Ok(JobResult::new(
            Step::Upload,
            Outcome::Nothing,
            line.to_string(),
        ));
    };
    if staged.size == 0 {
        return Err(format!("{} is empty", staged.path.display()));
    }
    info!(file = %staged.path.display(), size = staged.size, "found a dump");

    let client = args.store.client().await?;
    abort_leftover(&client, &dumps).await;
    if args.create_bucket {
        s3::ensure_bucket(&client, &args.store.bucket).await?;
    }

    // The date of the dump (not of the upload) names the folder, in the resource's zone.
    let date = staged.finished.with_timezone(&tz).date_naive();
    let folder = keys::date_folder(&args.prefix, date);
    let tuning = s3::Tuning {
        min_part_size: args.part_size_mib.max(5) * 1024 * 1024,
        concurrency: args.concurrency.max(1),
    };
    let mut conditional = true;
    for _ in 0..MAX_KEY_ATTEMPTS {
        let existing = s3::list_keys(&client, &args.store.bucket, &folder).await?;
        let key = keys::next_object_key(&folder, existing.iter().map(String::as_str), staged.name);
        if !conditional && s3::object_exists(&client, &args.store.bucket, &key).await? {
            continue;
        }
        let record_key = |upload_id: &str| {
            let state = PendingUpload {
                bucket: args.store.bucket.clone(),
                key: key.clone(),
                upload_id: upload_id.to_string(),
            };
            std::fs::write(
                state_path(&dumps),
                serde_json::to_vec(&state).expect("serializes"),
            )
        };
        info!(%key, "uploading");
        let put = s3::put_file(
            &client,
            &args.store.bucket,
            &key,
            &staged.path,
            staged.size,
            tuning,
            conditional,
            &record_key,
        )
        .await;
        let _ = std::fs::remove_file(state_path(&dumps));
        let written = match put {
            Ok(w) => w,
            Err(s3::PutError::KeyTaken(k)) => {
                info!(key = %k, "key taken by a concurrent upload; trying the next index");
                continue;
            }
            Err(s3::PutError::ConditionalUnsupported) if conditional => {
                warn!(
                    "store refuses If-None-Match; checking for the key before each write instead"
                );
                conditional = false;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        s3::verify(&client, &args.store.bucket, &key, &written).await?;
        // Only now is the dump safe to drop.
        std::fs::remove_file(&staged.path).map_err(|e| {
            format!(
                "uploaded {key} but cannot delete {}: {e}",
                staged.path.display()
            )
        })?;
        if let Ok(dir) = std::fs::File::open(&dumps) {
            let _ = dir.sync_all();
        }
        let line = append_log(&args.staging_dir, tz, logline::UPLOADED);
        info!(%key, size = written.size, checksum = %written.proof, "{line}");
        let policy = retention::Policy {
            keep_last: args.keep_last,
            max_age: args.max_age,
        };
        let more_log = prune(&client, args, policy, &key).await;
        return Ok(JobResult {
            step: Step::Upload,
            outcome: Outcome::Succeeded,
            key: Some(key),
            size: Some(written.size),
            checksum: Some(written.proof.to_string()),
            log: line.to_string(),
            reason: None,
            more_log,
        });
    }
    Err(format!(
        "no free key under {folder} after {MAX_KEY_ATTEMPTS} attempts"
    ))
}

/// Applies the retention policy after a confirmed upload of `uploaded`, and
/// returns the log lines it wrote. A failure here is logged and leaves the
/// upload a success: the dump is safe, and the next run prunes again.
async fn prune(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    policy: retention::Policy,
    uploaded: &str,
) -> Vec<String> {
    if !policy.is_set() {
        return vec![];
    }
    let log = |message: String| {
        let line = append_log(&args.staging_dir, args.time_zone, &message);
        info!("{line}");
        line.to_string()
    };
    let objects = match s3::list_objects(client, &args.store.bucket, &args.prefix).await {
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
        uploaded,
    );
    s3::delete_keys(client, &args.store.bucket, &doomed)
        .await
        .into_iter()
        .map(|(key, outcome)| match outcome {
            Ok(()) => log(format!("retention pruned {key}")),
            Err(e) => log(format!("retention cannot prune {key}: {e}")),
        })
        .collect()
}
