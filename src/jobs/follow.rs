//! An upload that follows a dump while it is written (`upload --follow-dump`,
//! the uploads the operator chains to a dump as it starts): the dump's
//! partial file goes out part by part as it grows, so a backup takes about
//! the longer of dump and upload, not their sum.
//!
//! Nothing of the staging protocol changes. The upload holds `.upload.lock`
//! and only reads the partial file, below the size it has reached. Once the
//! dump put the file in place, the upload claims it as any upload does, sends
//! the rest and completes the object; the claimed file stays the durable copy
//! until the store proved the whole object. Before completing, the bytes sent
//! are checked against the size and CRC64/NVME the dump recorded for what it
//! wrote, so a file read while it grew (on a network file system, say) can
//! never stand for the dump (no record, no proof: the dump is sent whole).
//! Whenever following cannot finish the object (the dump failed or was
//! replaced, its date or key moved on, the check fails),
//! the multipart upload is aborted; a dump that was put in place is then sent
//! from its file as any upload sends it.

use super::multipart::Multipart;
use super::put::{self, Put, PutError};
use super::staging::{Claimed, Staging};
use super::upload::{self, UploadArgs};
use super::{keys, pending, store};
use crate::jobresult::JobResult;
use chrono::{DateTime, NaiveDate, Utc};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long an upload chained to a dump waits for it to take the dump lock.
/// The operator chains it once the dump's container runs, which takes the
/// lock at once; this covers the dump process starting.
pub(super) const GRACE: Duration = Duration::from_secs(10);
/// How often the file is looked at.
const TICK: Duration = Duration::from_millis(200);
/// A file that has not grown for this long: is its dump still alive?
const STILL: Duration = Duration::from_secs(1);

/// A dump being written.
pub(super) struct Writing {
    partial: PathBuf,
    /// The name it will be put in place under.
    name: &'static str,
}

/// What there is to upload on the volume.
pub(super) enum Next {
    /// A finished dump is staged.
    Staged,
    /// A dump is being written.
    Writing(Writing),
    /// No dump is staged or running.
    Quiet,
}

/// Looks at the volume until a dump is staged or being written, or for
/// `grace` at most when neither.
pub(super) async fn next(staging: &Staging, grace: Duration) -> io::Result<Next> {
    let until = Instant::now() + grace;
    loop {
        // The lock first: a dump that releases it after this look has
        // already put its file in place for the next.
        let running = staging.dump_running()?;
        if staged(staging) {
            return Ok(Next::Staged);
        }
        if running {
            if let Some((partial, name)) = staging.newest_partial()? {
                return Ok(Next::Writing(Writing { partial, name }));
            }
        } else if Instant::now() >= until {
            return Ok(Next::Quiet);
        }
        tokio::time::sleep(TICK).await;
    }
}

fn staged(staging: &Staging) -> bool {
    super::staging::DUMP_FILES
        .iter()
        .any(|n| staging.dumps().join(n).exists())
}

/// Where the followed file is now.
#[derive(Debug, PartialEq)]
enum Place {
    /// Still the dump's partial file.
    Written,
    /// Put in place under its name.
    Staged,
    /// Neither: its dump failed or was replaced.
    Gone,
}

/// The file identity: the same inode wherever renames take it.
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

fn place(staging: &Staging, dump: &Writing, id: (u64, u64)) -> Place {
    let is_ours = |p: &Path| std::fs::metadata(p).is_ok_and(|m| identity(&m) == id);
    // In this order: putting in place moves the file atomically from the
    // first path to the second.
    if is_ours(&dump.partial) {
        Place::Written
    } else if is_ours(&staging.dumps().join(dump.name)) {
        Place::Staged
    } else {
        Place::Gone
    }
}

/// The multipart upload started for the file, and where it goes.
struct Started {
    upload: Multipart,
    date: NaiveDate,
}

/// Follows `dump` until it is put in place and sends it; `None` when it went
/// without being put in place (failed or replaced): nothing of it stays in
/// the store.
pub(super) async fn follow(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    sse: &store::Sse,
    staging: &Staging,
    dump: Writing,
) -> Result<Option<JobResult>, String> {
    let file = match File::open(&dump.partial) {
        Ok(file) => Arc::new(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", dump.partial.display())),
    };
    let size_of = |f: &File| {
        f.metadata()
            .map_err(|e| format!("cannot read {}: {e}", dump.partial.display()))
    };
    let id = identity(&size_of(&file)?);
    info!(file = %dump.partial.display(), "following the dump being written");
    pending::abort_leftover(client, &staging.dumps()).await;
    let part_size = put::part_size(
        super::staging::volume(&staging.dumps()).map_or(0, |v| v.size),
        args.part_size_mib.max(5) * store::MIB,
    );
    let mut started: Option<Started> = None;
    let (mut seen, mut grew) = (0, Instant::now());
    let outcome = loop {
        let size = size_of(&file)?.len();
        if size > seen {
            (seen, grew) = (size, Instant::now());
        }
        if started.is_none() && size >= part_size {
            started = Some(start(client, args, sse, staging, &dump, &file, part_size).await?);
        }
        let pushed = match &mut started {
            Some(s) => s.upload.push(&file, size, false).await,
            None => Ok(()),
        };
        if let Err(e) = pushed {
            return Err(stop(staging, started, e.to_string()).await);
        }
        let mut now = place(staging, &dump, id);
        // A dump killed outright leaves its file behind, growing no more.
        if now == Place::Written && grew.elapsed() >= STILL && !dump_alive(staging)? {
            now = place(staging, &dump, id);
            if now == Place::Written {
                now = Place::Gone;
            }
        }
        match now {
            Place::Written => tokio::time::sleep(TICK).await,
            other => break other,
        }
    };
    if outcome == Place::Gone {
        info!("the dump followed ended without being put in place; nothing of it is kept");
        drop_started(staging, started).await;
        return Ok(None);
    }
    let cannot = |e: io::Error| format!("cannot read {}: {e}", staging.dumps().display());
    let Some(claimed) = staging.claim().map_err(cannot)? else {
        return Err(stop(
            staging,
            started,
            "the dump followed went before it was claimed".into(),
        )
        .await);
    };
    let ours = std::fs::metadata(&claimed.path).is_ok_and(|m| identity(&m) == id);
    let finished = match (started, ours) {
        (Some(s), true) => finish(client, args, sse, staging, &dump, &file, &claimed, s).await?,
        // Small enough for one part, or replaced just before the claim.
        (started, _) => {
            drop_started(staging, started).await;
            None
        }
    };
    let _ = staging.forget_checksum(&dump.partial);
    let result = match finished {
        Some((key, written)) => {
            upload::confirm(client, args, sse, staging, &claimed, key, written).await?
        }
        None => upload::send(client, args, sse, staging, &claimed).await?,
    };
    Ok(Some(result))
}

/// Whether the dump lock is held (by the followed dump, or the next one).
fn dump_alive(staging: &Staging) -> Result<bool, String> {
    staging
        .dump_running()
        .map_err(|e| format!("cannot read {}: {e}", staging.dumps().display()))
}

/// Starts the multipart upload under the next free key of today's folder
/// (the dump is named by the date it finishes: `finish` checks it still is).
async fn start(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    sse: &store::Sse,
    staging: &Staging,
    dump: &Writing,
    file: &File,
    part_size: u64,
) -> Result<Started, String> {
    let date = Utc::now().with_timezone(&args.time_zone).date_naive();
    let folder = keys::date_folder(&args.prefix, date);
    let bucket = &args.store.bucket;
    let existing = store::list_keys(client, bucket, &folder).await?;
    let key = keys::next_object_key(&folder, existing.iter().map(String::as_str), dump.name);
    let fd = fd_path(file);
    // Its start: the dump is not finished when the upload begins.
    let started = super::staging::partial_started(&dump.partial);
    let request = request(client, args, sse, &key, &fd, part_size, started);
    let upload = put::start_multipart(&request, part_size)
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = pending::record(&staging.dumps(), bucket, &key, upload.upload_id()) {
        upload.abort().await;
        return Err(format!("cannot record the upload: {e}"));
    }
    info!(%key, "uploading while the dump is written");
    Ok(Started { upload, date })
}

/// The file through our descriptor: parts (and their retries) read the same
/// file whatever it is renamed to meanwhile.
fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn request<'a>(
    client: &'a aws_sdk_s3::Client,
    args: &'a UploadArgs,
    sse: &'a store::Sse,
    key: &'a str,
    path: &'a Path,
    part_size: u64,
    dumped_at: Option<std::time::SystemTime>,
) -> Put<'a> {
    Put {
        client,
        bucket: &args.store.bucket,
        key,
        path,
        // Not known while the dump is written; starting the upload needs
        // only the part size.
        size: 0,
        tuning: put::Tuning {
            min_part_size: part_size,
            concurrency: args.concurrency.max(1),
        },
        conditional: true,
        sse,
        lock: args.lock(),
        checksums: args.store.profile().checksums(),
        dumped_at,
    }
}

/// Sends the rest of the claimed file and completes the object, once the
/// bytes sent are proven to be the dump's. `None`: the object cannot be
/// finished this way (aborted), and the file is to be sent whole.
#[allow(clippy::too_many_arguments)]
async fn finish(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    sse: &store::Sse,
    staging: &Staging,
    dump: &Writing,
    file: &Arc<File>,
    claimed: &Claimed,
    s: Started,
) -> Result<Option<(String, super::proof::Written)>, String> {
    let Started { mut upload, date } = s;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", claimed.path.display()))?
        .len();
    if let Err(e) = upload.push(file, size, true).await {
        drop_started(staging, Some(Started { upload, date })).await;
        return Err(e.to_string());
    }
    let finished: DateTime<Utc> = claimed.finished.into();
    let why_not = if finished.with_timezone(&args.time_zone).date_naive() != date {
        Some("the dump finished on the next day, which names its folder")
    } else {
        let sent = (upload.sent(), upload.crc64nvme().unwrap_or(0));
        // The record is what ties the bytes read to the dump: without it
        // (a dump of an older version) they prove nothing.
        match staging.recorded_checksum(&dump.partial) {
            Some(theirs) if theirs == sent => None,
            Some(_) => Some("the bytes read while the dump was written are not the dump's"),
            None => Some("the dump recorded no checksum to check the bytes read against"),
        }
    };
    if let Some(why) = why_not {
        warn!("{why}; sending the dump from its file instead");
        drop_started(staging, Some(Started { upload, date })).await;
        return Ok(None);
    }
    let key = upload.key().to_string();
    let upload_id = upload.upload_id().to_string();
    let conditional = super::conditional::trusted(client, args, sse).await;
    if !conditional {
        let taken = store::object_exists(client, &args.store.bucket, &key, sse).await;
        if !matches!(taken, Ok(false)) {
            info!(%key, "key taken meanwhile, or not known to be free; sending the dump from its file");
            drop_started(staging, Some(Started { upload, date })).await;
            return taken.map(|_| None);
        }
    }
    let completed = upload.complete(size, conditional).await;
    let pending =
        completed.is_ok() || store::abort(client, &args.store.bucket, &key, &upload_id).await;
    if pending {
        pending::clear(&staging.dumps());
    }
    match completed {
        Ok(written) => Ok(Some((key, written))),
        Err(e @ (PutError::KeyTaken(_) | PutError::ConditionalUnsupported)) => {
            info!(error = %e, "sending the dump from its file under another key");
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Aborts what was started and says why the upload failed; the dump stays
/// for the next upload.
async fn stop(staging: &Staging, started: Option<Started>, why: String) -> String {
    drop_started(staging, started).await;
    why
}

/// Aborts the upload started, if any. Its record goes only once the store
/// took the abort: else the next run tries again.
async fn drop_started(staging: &Staging, started: Option<Started>) {
    if let Some(s) = started
        && s.upload.abort().await
    {
        pending::clear(&staging.dumps());
    }
}
