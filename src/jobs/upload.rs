//! The upload step (`dbbackup-operator upload`), run by the upload CronJob.
//!
//! The original pipeline's contract: a dump in the staging folder is uploaded
//! and then deleted; no dump means "there is no file to upload" and nothing
//! else. What ours adds: the upload claims the dump before reading it (see
//! `jobs::staging`), deletes exactly that file and only after the store
//! confirmed its size and checksum, never replaces an existing object, and
//! on any failure keeps the dump for the next run and exits non-zero.

use super::proof::{self, Proven, Written};
use super::staging::{self, Claimed, Lock, Staging};
use super::{conditional, follow, keys, pending, prune, put, retention, staged, store, unproven};
use crate::jobresult::{JobResult, Outcome, Step};
use crate::logline;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::path::PathBuf;
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
    pub store: store::StoreArgs,
    /// With no dump staged, follow a dump being written on the volume and
    /// send it as it grows (chained uploads; the CronJob's poller does not).
    #[arg(long)]
    pub follow_dump: bool,
    /// Create the bucket when it does not exist.
    #[arg(long)]
    pub create_bucket: bool,
    /// The volume holds several databases' stagings (`databases`): send
    /// each one's dumps under `<prefix><database>/`.
    #[arg(long)]
    pub databases: bool,
    /// Smallest multipart part, in MiB.
    #[arg(long, default_value_t = 8, hide = true)]
    pub part_size_mib: u64,
    /// Parts uploaded at once. Each costs a 512 KiB read buffer (parts are
    /// read from the file as they are sent); 4 or 8 were no faster on 2
    /// cores shared with the store.
    #[arg(long, default_value_t = 3, hide = true)]
    pub concurrency: usize,
    /// Retention: after a confirmed upload, keep only the newest N dumps under the prefix.
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Retention: keep the newest dump of each of the N newest days (ISO
    /// weeks, months, years) that have one, in --time-zone.
    #[arg(long)]
    pub keep_daily: Option<usize>,
    #[arg(long)]
    pub keep_weekly: Option<usize>,
    #[arg(long)]
    pub keep_monthly: Option<usize>,
    #[arg(long)]
    pub keep_yearly: Option<usize>,
    /// Retention never deletes this key: the newest dump that passed its restore drill.
    #[arg(long)]
    pub keep_verified: Option<String>,
    /// Retention: after a confirmed upload, keep only dumps younger than this (30d, 12h, 1d12h).
    #[arg(long, value_parser = crate::api::parse_age)]
    pub max_age: Option<chrono::Duration>,
    /// Object Lock mode each upload gets, for --object-lock-days days.
    #[arg(long, requires = "object_lock_days")]
    pub object_lock_mode: Option<crate::api::LockMode>,
    #[arg(long, requires = "object_lock_mode")]
    pub object_lock_days: Option<u32>,
    /// Credentials that may delete, used by retention only, so that the
    /// upload's own can be write-only.
    #[arg(long, env = crate::names::PRUNE_ACCESS_KEY_ENV, hide_env_values = true, requires = "prune_secret_access_key")]
    pub prune_access_key_id: Option<super::tool::Hidden>,
    #[arg(long, env = crate::names::PRUNE_SECRET_KEY_ENV, hide_env_values = true, requires = "prune_access_key_id")]
    pub prune_secret_access_key: Option<super::tool::Hidden>,
}

impl UploadArgs {
    /// The lock a dump uploaded now gets.
    pub(super) fn lock(&self) -> Option<put::Lock> {
        Some(put::Lock {
            mode: self.object_lock_mode?,
            until: Utc::now() + chrono::Duration::days(self.object_lock_days?.into()),
        })
    }
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
    // A volume that held several databases' dumps keeps them sent, whatever
    // the backup names now.
    let several = args.databases || args.staging_dir.join(super::databases::DATABASES).exists();
    let sent = match several {
        true => super::upload_each::upload_each(&args).await,
        false => upload(&args, &Staging::new(&args.staging_dir), follow::GRACE).await,
    };
    let (mut result, code) = match sent {
        // Some databases of several failed: said in the result, and by the exit.
        Ok(result) => {
            let code = (result.outcome == Outcome::Failed).into();
            (result, code)
        }
        Err(message) => {
            let line = Staging::new(&args.staging_dir)
                .log(args.time_zone, &format!("upload failed: {message}"));
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

/// Sends what `staging` holds, as one result.
async fn upload(
    args: &UploadArgs,
    staging: &Staging,
    grace: std::time::Duration,
) -> Result<JobResult, String> {
    let mut sent = send_all(args, staging, grace).await?;
    let Some(last) = sent.pop() else {
        return Ok(nothing(args, staging));
    };
    let mut result = last.after(sent);
    result.stuck = staged::stuck_note(staging);
    Ok(result)
}

/// The original pipeline's line when there is nothing to send.
pub(super) fn nothing(args: &UploadArgs, staging: &Staging) -> JobResult {
    let line = staging.log(args.time_zone, logline::NOTHING_TO_UPLOAD);
    info!("{line}");
    JobResult::new(Step::Upload, Outcome::Nothing, line.to_string())
}

/// Sends what `staging` holds, oldest first; chained to a dump
/// (--follow-dump), waits up to `grace` for one to start.
pub(super) async fn send_all(
    args: &UploadArgs,
    staging: &Staging,
    grace: std::time::Duration,
) -> Result<Vec<JobResult>, String> {
    let dumps = staging.dumps();
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", dumps.display());
    if args.follow_dump {
        // Its dump may not have made the folders yet.
        staging.create().map_err(cannot)?;
    } else if !dumps.exists() {
        return Ok(vec![]);
    }
    let _lock = staging
        .lock(Lock::Upload, || {
            info!("another upload is running on this volume; this one starts when it ends")
        })
        .map_err(cannot)?;
    let sse = args.store.sse()?;
    let mut client = None;
    let mut sent: Vec<JobResult> = vec![];
    let fresh = staged::send_staged(args, staging, &sse, &mut client, &mut sent).await?;
    // Chained to a running dump, and nothing fresh was staged: send the dump
    // as it is written. One fresh dump a run, so that its result is reported
    // at once; a dump after it has an upload of its own.
    if args.follow_dump && !fresh {
        let mut grace = grace;
        loop {
            match follow::next(staging, grace).await.map_err(cannot)? {
                follow::Next::Quiet => break,
                follow::Next::Staged => {
                    staged::send_staged(args, staging, &sse, &mut client, &mut sent).await?;
                    break;
                }
                follow::Next::Writing(dump) => {
                    let client = match &client {
                        Some(c) => c,
                        None => client.insert(args.store.client().await?),
                    };
                    if let Some(r) = follow::follow(client, args, &sse, staging, dump).await? {
                        // As after any new dump: the stuck ones get a try.
                        staged::retry_stuck(client, args, &sse, staging, &mut sent).await;
                        sent.push(r);
                        break;
                    }
                }
            }
            // The dump went without being put in place: another may follow.
            grace = std::time::Duration::ZERO;
        }
    }
    Ok(sent)
}

/// Uploads one claimed dump under a fresh key, verifies it, deletes it, and
/// applies retention.
pub(super) async fn send(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    sse: &store::Sse,
    staging: &Staging,
    claimed: &Claimed,
) -> Result<JobResult, String> {
    let size = std::fs::metadata(&claimed.path)
        .map_err(|e| format!("cannot read {}: {e}", claimed.path.display()))?
        .len();
    if size == 0 {
        return Err(format!("{} is empty", claimed.path.display()));
    }
    info!(file = %claimed.path.display(), size, "found a dump");
    pending::abort_leftover(client, &staging.dumps()).await;
    if args.create_bucket {
        let locked = args.object_lock_mode.is_some();
        store::ensure_bucket(client, &args.store.bucket, locked).await?;
    }
    let (key, written) = put_under_free_key(client, args, sse, staging, claimed, size).await?;
    confirm(client, args, sse, staging, claimed, key, written).await
}

/// Proves `claimed` stored as `key`, deletes it, applies retention, and says
/// so.
pub(super) async fn confirm(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    sse: &store::Sse,
    staging: &Staging,
    claimed: &Claimed,
    key: String,
    written: Written,
) -> Result<JobResult, String> {
    let bucket = &args.store.bucket;
    let proven = match proof::verify(client, bucket, &key, &written, sse).await {
        Ok(proven) => proven,
        Err(unproven) => {
            let counts = unproven.differs;
            let deleter = prune::deleter(client, args).await;
            let why =
                unproven::discard(client, deleter, sse, bucket, &key, &written, unproven).await;
            // Only an object that differs counts towards setting the dump
            // aside: a store that did not answer said nothing of it.
            return Err(match counts {
                true => staged::set_aside(staging, claimed, why),
                false => why,
            });
        }
    };
    // Only now is the dump safe to drop: exactly the file this run claimed.
    staging
        .mark_sent(claimed, &key)
        .map_err(|e| format!("uploaded {key} but cannot record it: {e}"))?;
    staging.release(claimed).map_err(|e| {
        format!(
            "uploaded {key} but cannot delete {}: {e}",
            claimed.path.display()
        )
    })?;
    let line = staging.log(args.time_zone, logline::UPLOADED);
    info!(%key, size = written.size, checksum = %written.proof, "{line}");
    let policy = retention::Policy {
        keep_last: args.keep_last,
        max_age: args.max_age,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
    };
    let read_back = match proven {
        Proven::ByStore => None,
        Proven::ReadBack(why) => Some(why),
    };
    let mut more_log: Vec<String> = read_back
        .iter()
        .map(|why| {
            let said = format!("{} {key}: {why}", logline::READ_BACK);
            staging.log(args.time_zone, &said).to_string()
        })
        .collect();
    more_log.extend(prune::prune(client, args, sse, policy, &key).await);
    Ok(JobResult {
        step: Step::Upload,
        outcome: Outcome::Succeeded,
        key: Some(key),
        size: Some(written.size),
        checksum: Some(written.proof.to_string()),
        log: line.to_string(),
        more_log,
        dumped: Some(staging::dump_id(claimed.finished)),
        read_back,
        ..JobResult::new(Step::Upload, Outcome::Succeeded, String::new())
    })
}

/// Puts the dump under the next free key of its date folder, never over an
/// existing object: a key a concurrent upload took first moves it on to the
/// next index. The folder is the date the dump was made (not uploaded), in
/// the resource's zone.
async fn put_under_free_key(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    sse: &store::Sse,
    staging: &Staging,
    claimed: &Claimed,
    size: u64,
) -> Result<(String, Written), String> {
    let finished: DateTime<Utc> = claimed.finished.into();
    let date = finished.with_timezone(&args.time_zone).date_naive();
    let folder = keys::date_folder(&args.prefix, date);
    let bucket = &args.store.bucket;
    let dumps = staging.dumps();
    let mut conditional = conditional::trusted(client, args, sse).await;
    for _ in 0..MAX_KEY_ATTEMPTS {
        let existing = store::list_keys(client, bucket, &folder).await?;
        let key = keys::next_object_key(&folder, existing.iter().map(String::as_str), claimed.name);
        if !conditional {
            if store::object_exists(client, bucket, &key, sse).await? {
                continue;
            }
            info!(%key, "the key is free (checked: the store's If-None-Match is not relied on)");
        }
        let record_upload = |upload_id: &str| pending::record(&dumps, bucket, &key, upload_id);
        info!(%key, "uploading");
        let request = put::Put {
            client,
            bucket,
            key: &key,
            path: &claimed.path,
            size,
            tuning: put::Tuning {
                min_part_size: args.part_size_mib.max(5) * 1024 * 1024,
                concurrency: args.concurrency.max(1),
            },
            conditional,
            sse,
            lock: args.lock(),
            checksums: args.store.profile().checksums(),
            dumped_at: Some(claimed.finished),
        };
        let result = put::put_file(&request, &record_upload).await;
        pending::clear(&dumps);
        match result {
            Ok(written) => return Ok((key, written)),
            Err(put::PutError::KeyTaken(k)) => {
                info!(key = %k, "key taken by a concurrent upload; trying the next index");
            }
            Err(put::PutError::ConditionalUnsupported) if conditional => {
                warn!(
                    "store refuses If-None-Match; checking for the key before each write instead"
                );
                conditional = false;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!(
        "no free key under {folder} after {MAX_KEY_ATTEMPTS} attempts"
    ))
}
