//! Sending what is staged: the claims killed uploads left, the dumps moved
//! aside as stuck (`staging/stuck.rs`), then the dump staged now.

use super::staging::{self, Claimed, STUCK_AFTER, Staging};
use super::store;
use super::upload::{UploadArgs, send};
use crate::jobresult::{JobResult, Outcome, Step};
use crate::logline;
use chrono_tz::Tz;
use tracing::{info, warn};

/// Sends the claims killed uploads left, then (after one more try at each
/// stuck dump) the dump staged now, if any;
/// says whether it sent that one. A dump finished after that waits for the
/// next upload.
pub(super) async fn send_staged(
    args: &UploadArgs,
    staging: &Staging,
    sse: &store::Sse,
    client: &mut Option<aws_sdk_s3::Client>,
    sent: &mut Vec<JobResult>,
) -> Result<bool, String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", staging.dumps().display());
    while let Some(claimed) = staging.claim().map_err(cannot)? {
        if claimed.left_over {
            info!(file = %claimed.path.display(), "sending the dump an interrupted upload claimed");
        }
        let client = match client {
            Some(c) => &*c,
            None => client.insert(args.store.client().await?),
        };
        let left_over = claimed.left_over;
        if !left_over {
            // A new dump to send: the stuck ones get a try first, in order.
            retry_stuck(client, args, sse, staging, sent).await;
        }
        sent.push(resend(client, args, sse, staging, &claimed).await?);
        if !left_over {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Sends `claimed`, unless a killed upload got the store's confirmation
/// for it (its marker names an object the store holds): then only the
/// deletion was left to do.
async fn resend(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    sse: &store::Sse,
    staging: &Staging,
    claimed: &Claimed,
) -> Result<JobResult, String> {
    if let Some(key) = staging.sent_key(claimed)
        && store::object_exists(client, &args.store.bucket, &key, sse).await?
    {
        return finish_sent(staging, args.time_zone, claimed, key);
    }
    send(client, args, sse, staging, claimed).await
}

/// Deletes a claimed dump a killed upload already sent as `key`, and says so.
fn finish_sent(
    staging: &Staging,
    tz: Tz,
    claimed: &Claimed,
    key: String,
) -> Result<JobResult, String> {
    info!(%key, "the interrupted upload had sent this dump; deleting it");
    staging.release(claimed).map_err(|e| {
        format!(
            "{key} is stored but {} cannot be deleted: {e}",
            claimed.path.display()
        )
    })?;
    let line = staging.log(tz, logline::UPLOADED);
    let mut r = JobResult::new(Step::Upload, Outcome::Succeeded, line.to_string());
    r.key = Some(key);
    r.dumped = Some(staging::dump_id(claimed.finished));
    Ok(r)
}

/// Tries each stuck dump once more: a proof that holds now sends it (and
/// deletes it); one that fails again leaves it aside and says so. Neither
/// holds back the newer dump.
pub(super) async fn retry_stuck(
    client: &aws_sdk_s3::Client,
    args: &UploadArgs,
    sse: &store::Sse,
    staging: &Staging,
    sent: &mut Vec<JobResult>,
) {
    for stuck in staging.stuck().unwrap_or_default() {
        info!(file = %stuck.path.display(), "trying the stuck dump again");
        match resend(client, args, sse, staging, &stuck).await {
            Ok(r) => sent.push(r),
            Err(e) => {
                let id = staging::dump_id(stuck.finished);
                let said = format!("{} (finished {id}): {e}", logline::STILL_STUCK);
                let line = staging.log(args.time_zone, &said);
                warn!("{line}");
                sent.push(JobResult::new(
                    Step::Upload,
                    Outcome::Failed,
                    line.to_string(),
                ));
            }
        }
    }
}

/// Counts a failed proof of `claimed`, and says so once it moved the dump
/// aside as stuck.
pub(super) fn set_aside(staging: &Staging, claimed: &Claimed, why: String) -> String {
    match staging.unproven(claimed) {
        Ok(Some(aside)) => format!(
            "{why}; {} after {STUCK_AFTER} unproven uploads in a row: kept as {}, tried again before each newer dump, which is sent",
            logline::STUCK,
            aside.display()
        ),
        Ok(None) => why,
        Err(e) => format!("{why}; cannot count the failed proof: {e}"),
    }
}

/// What a run's result says of the dumps still stuck on the volume.
pub(super) fn stuck_note(staging: &Staging) -> Option<String> {
    let stuck = staging.stuck().ok()?;
    let ids: Vec<String> = stuck.iter().map(|c| staging::dump_id(c.finished)).collect();
    (!ids.is_empty()).then(|| {
        format!(
            "{} unproven dump(s) kept on the staging volume, finished {}; they are sent once the store proves them",
            ids.len(),
            ids.join(", ")
        )
    })
}
