//! The status of a backup of several databases: each one's last dump and
//! upload (`status.databases`), and the conditions' words for a run of
//! several, which name the databases that failed.

use super::reports::PodReport;
use crate::api::{DatabaseBackupStatus, DatabaseState};
use crate::jobresult::{DatabaseResult, Outcome, Step};

/// Folds a report's databases into `status.databases`, by name.
pub fn record(status: &mut DatabaseBackupStatus, r: &PodReport) {
    for d in &r.result.databases {
        let at = match status.databases.iter().position(|s| s.name == d.name) {
            Some(at) => at,
            None => {
                status.databases.push(DatabaseState {
                    name: d.name.clone(),
                    ..Default::default()
                });
                status.databases.len() - 1
            }
        };
        let state = &mut status.databases[at];
        match (r.step, d.outcome) {
            (Step::Dump, Outcome::Succeeded) => {
                state.last_dump_time = Some(r.finished.clone());
                state.last_failure = None;
            }
            (Step::Dump, _) => state.last_failure = d.error.clone(),
            (Step::Upload, Outcome::Succeeded) => {
                state.last_upload_key = d.key.clone();
                state.last_upload_time = Some(r.finished.clone());
                if state
                    .last_failure
                    .as_deref()
                    .is_some_and(|f| f.starts_with(UPLOAD))
                {
                    state.last_failure = None;
                }
            }
            (Step::Upload, _) => {
                state.last_failure = d.error.as_ref().map(|e| format!("upload: {e}"))
            }
            _ => {}
        }
    }
    // A run that names every database it took says which are gone (left
    // out of the spec or dropped from the server): their entries go.
    if r.step == Step::Dump && !r.result.databases.is_empty() && r.result.databases_left_out == 0 {
        status
            .databases
            .retain(|s| r.result.databases.iter().any(|d| d.name == s.name));
    }
    status.databases.sort_by(|a, b| a.name.cmp(&b.name));
}

/// How `lastFailure` starts when an upload failed.
const UPLOAD: &str = "upload: ";

/// The unsent dumps a run of several replaced: (database, when finished).
pub fn replaced(r: &PodReport) -> Vec<(&str, &str)> {
    r.result
        .databases
        .iter()
        .filter(|_| r.step == Step::Dump)
        .filter_map(|d| Some((d.name.as_str(), d.replaced.as_deref()?)))
        .collect()
}

/// The keys a report of several uploads confirmed, with their sizes.
pub fn uploaded(r: &PodReport) -> Vec<(&str, Option<u64>)> {
    r.result
        .databases
        .iter()
        .filter(|d| d.outcome == Outcome::Succeeded)
        .filter_map(|d| Some((d.key.as_deref()?, d.size)))
        .collect()
}

/// What a run of several says in its condition: how many failed, each
/// named with its cause, or how many went well. None for a run of one.
pub fn summary(r: &PodReport) -> Option<String> {
    let all = &r.result.databases;
    if all.is_empty() {
        return None;
    }
    let failed: Vec<&DatabaseResult> = all
        .iter()
        .filter(|d| d.outcome == Outcome::Failed)
        .collect();
    let (did, failing) = match r.step {
        Step::Upload => ("uploaded", "failed to upload"),
        _ => ("dumped", "failed to dump"),
    };
    if failed.is_empty() {
        let mut names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
        names.sort();
        names.dedup();
        return Some(format!(
            "{} {did}: {}",
            plural(names.len()),
            names.join(", ")
        ));
    }
    let causes: Vec<String> = failed
        .iter()
        .map(|d| {
            format!(
                "{} ({})",
                d.name,
                d.error.as_deref().unwrap_or("no cause given")
            )
        })
        .collect();
    Some(format!(
        "{} of {} {failing}: {}",
        failed.len(),
        plural(all.len()),
        causes.join("; ")
    ))
}

fn plural(n: usize) -> String {
    match n {
        1 => "1 database".into(),
        n => format!("{n} databases"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobresult::JobResult;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn report(step: Step, databases: Vec<DatabaseResult>) -> PodReport {
        let mut result = JobResult::new(step, Outcome::Failed, "2026-11-25,03:05:00,x".into());
        result.databases = databases;
        PodReport {
            uid: "u".into(),
            step,
            finished: Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap()),
            result,
            run_now: None,
            job: None,
            started: None,
            key: None,
        }
    }

    fn db(name: &str, outcome: Outcome, error: Option<&str>, key: Option<&str>) -> DatabaseResult {
        DatabaseResult {
            name: name.into(),
            outcome,
            key: key.map(String::from),
            size: Some(1),
            dumped: None,
            error: error.map(String::from),
            replaced: None,
        }
    }

    #[test]
    fn a_failed_database_is_named_with_its_cause_and_the_others_stand() {
        let mut status = DatabaseBackupStatus::default();
        let dump = report(
            Step::Dump,
            vec![
                db("shop", Outcome::Succeeded, None, None),
                db(
                    "broken",
                    Outcome::Failed,
                    Some("pg_dump: error: permission denied"),
                    None,
                ),
            ],
        );
        record(&mut status, &dump);
        assert_eq!(
            summary(&dump).unwrap(),
            "1 of 2 databases failed to dump: broken (pg_dump: error: permission denied)"
        );
        let upload = report(
            Step::Upload,
            vec![db("shop", Outcome::Succeeded, None, Some("p/shop/k"))],
        );
        record(&mut status, &upload);
        let names: Vec<_> = status.databases.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["broken", "shop"]);
        assert_eq!(
            status.databases[0].last_failure.as_deref(),
            Some("pg_dump: error: permission denied")
        );
        assert_eq!(
            status.databases[1].last_upload_key.as_deref(),
            Some("p/shop/k")
        );
        assert!(status.databases[1].last_dump_time.is_some());
        assert_eq!(uploaded(&upload), [("p/shop/k", Some(1))]);
        assert_eq!(summary(&upload).unwrap(), "1 database uploaded: shop");
        assert_eq!(summary(&report(Step::Dump, vec![])), None);

        // An upload that failed is said until one succeeds; a complete run
        // that no longer names a database drops it.
        let failed = report(
            Step::Upload,
            vec![db("shop", Outcome::Failed, Some("503"), None)],
        );
        record(&mut status, &failed);
        assert_eq!(
            status.databases[1].last_failure.as_deref(),
            Some("upload: 503")
        );
        record(&mut status, &upload);
        assert_eq!(status.databases[1].last_failure, None);
        record(
            &mut status,
            &report(Step::Dump, vec![db("shop", Outcome::Succeeded, None, None)]),
        );
        let names: Vec<_> = status.databases.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["shop"]);
    }
}
