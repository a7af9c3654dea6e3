//! The upload of a backup of several databases (`upload --databases`, or
//! any upload of a volume that holds their stagings): each database's
//! staging (`databases`) is sent as one database's is, under
//! `<prefix><database>/`, so each has its own series and retention, and a
//! dump in the volume's own folder under the prefix itself. One database
//! failing does not stop the others.
//!
//! Chained to a dump run (--follow-dump), it goes round the databases while
//! the run holds the volume's dump lock, following each dump as it is
//! written, and stops once the run ended and nothing is left to send.

use super::databases::{self, ROLES};
use super::keys::{ROLES_SEGMENT, segment_database};
use super::staging::Staging;
use super::upload::{UploadArgs, nothing, send_all};
use crate::jobresult::{DatabaseResult, JobResult, Outcome, Step};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tracing::error;

/// How often a chained upload looks round the databases.
const TICK: Duration = Duration::from_millis(200);
/// How long a chained upload waits for its run to take the lock.
const GRACE: Duration = Duration::from_secs(10);

pub(super) async fn upload_each(args: &UploadArgs) -> Result<JobResult, String> {
    let root = Staging::new(&args.staging_dir);
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", args.staging_dir.display());
    let until = Instant::now() + GRACE;
    let mut sent: Vec<JobResult> = vec![];
    let mut each: Vec<DatabaseResult> = vec![];
    let mut failed = HashSet::new();
    let mut root_failed = false;
    // A dump staged in the volume's own folder (by a backup of one
    // database, before or after it named several) goes under the prefix
    // itself, as it would have; never followed here.
    let plain = UploadArgs {
        follow_dump: false,
        ..args.clone()
    };
    loop {
        // The lock first: a run that ends after this look has already put
        // its last dump in place for the round below.
        let running = args.follow_dump && root.dump_running().map_err(cannot)?;
        let mut sent_now = false;
        if !root_failed {
            match send_all(&plain, &root, Duration::ZERO).await {
                Ok(own) => {
                    sent_now = !own.is_empty();
                    sent.extend(own);
                }
                Err(message) => {
                    let line = root.log(args.time_zone, &format!("upload failed: {message}"));
                    error!("{line}");
                    sent.push(JobResult::new(
                        Step::Upload,
                        Outcome::Failed,
                        line.to_string(),
                    ));
                    root_failed = true;
                }
            }
        }
        for segment in databases::segments(&args.staging_dir).map_err(cannot)? {
            if failed.contains(&segment) {
                continue;
            }
            let name = match segment.as_str() {
                ROLES_SEGMENT => ROLES.to_string(),
                s => segment_database(s),
            };
            let one = UploadArgs {
                prefix: format!("{}{segment}/", args.prefix),
                ..args.clone()
            };
            let staging = Staging::of_database(&args.staging_dir, &segment);
            match send_all(&one, &staging, Duration::ZERO).await {
                Ok(results) => {
                    sent_now |= !results.is_empty();
                    // A stuck dump tried again may fail again: said as such.
                    each.extend(results.iter().map(|r| DatabaseResult {
                        name: name.clone(),
                        outcome: r.outcome,
                        key: r.key.clone(),
                        size: r.size,
                        dumped: r.dumped.clone(),
                        error: (r.outcome == Outcome::Failed).then(|| r.message()),
                        replaced: None,
                    }));
                    sent.extend(results);
                }
                Err(message) => {
                    let line =
                        root.log(args.time_zone, &format!("upload failed: {name}: {message}"));
                    error!("{line}");
                    sent.push(JobResult::new(
                        Step::Upload,
                        Outcome::Failed,
                        line.to_string(),
                    ));
                    each.push(DatabaseResult {
                        name,
                        outcome: Outcome::Failed,
                        key: None,
                        size: None,
                        dumped: None,
                        error: Some(message),
                        replaced: None,
                    });
                    failed.insert(segment);
                }
            }
        }
        if !args.follow_dump || (!running && !sent_now && Instant::now() >= until) {
            break;
        }
        if !sent_now {
            tokio::time::sleep(TICK).await;
        }
    }
    let Some(last) = sent.pop() else {
        return Ok(nothing(args, &root));
    };
    let mut result = last.after(sent);
    let notes: Vec<String> = databases::segments(&args.staging_dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| {
            let note = super::staged::stuck_note(&Staging::of_database(&args.staging_dir, s))?;
            Some(format!("{}: {note}", segment_database(s)))
        })
        .collect();
    result.stuck = (!notes.is_empty()).then(|| notes.join("; "));
    // Failed when anything did: a database, the volume's own folder, or a
    // stuck dump tried again.
    let any_failed =
        !failed.is_empty() || root_failed || each.iter().any(|d| d.outcome == Outcome::Failed);
    result.outcome = match any_failed {
        true => Outcome::Failed,
        false => Outcome::Succeeded,
    };
    result.databases = each;
    Ok(result)
}
