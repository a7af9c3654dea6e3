//! The restore drill (`dbbackup-operator verify`), run in the database's own
//! image.
//!
//! It starts a throwaway server from the image's binaries (`throwaway`),
//! streams the dump into an empty database as it downloads (`stream`, `feed`:
//! checked against the store's checksum on the way, with no copy of the dump
//! on the node), counts its tables, runs the user's checks, and writes one
//! log line and the one-line JSON result. It never connects to a database
//! but the server it started.

use super::feed::{Around, Stopped, run_client};
use super::load::{count_tables_sql, create_if_missing};
use super::stream::{self, Sql};
use super::throwaway::Throwaway;
use crate::api::{CheckResult, Engine, VerifyCheck};
use crate::jobresult::{Failure, JobResult, Outcome, Step, fail};
use crate::logline::LogLine;
use crate::reasons;
use chrono_tz::Tz;
use std::path::PathBuf;
use tracing::warn;

/// The database the dump is loaded into, on the throwaway server.
const DRILL_DATABASE: &str = "drill";

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    #[arg(long, value_parser = super::parse_enum::<Engine>)]
    pub engine: Engine,
    /// The dump to drill (its key, never "latest" here) and its store.
    #[command(flatten)]
    pub object: stream::ObjectArgs,
    /// A check as JSON, `{"query": …, "atLeast": N}` or `{"query": …, "equals": "…"}`; repeatable.
    #[arg(long = "check", value_parser = parse_check, allow_hyphen_values = true)]
    pub checks: Vec<VerifyCheck>,
    /// Scratch directory for the throwaway server's data.
    #[arg(long)]
    pub work_dir: PathBuf,
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    #[arg(long, default_value = "UTC")]
    pub time_zone: Tz,
}

fn parse_check(s: &str) -> Result<VerifyCheck, String> {
    serde_json::from_str(s).map_err(|e| format!("not a check: {e}"))
}

/// What a drill found in a dump that loaded.
#[derive(Debug, PartialEq)]
pub struct Drilled {
    pub tables: u64,
    pub checks: Vec<CheckResult>,
}

/// Runs one drill; returns the process exit code.
pub async fn run(args: VerifyArgs) -> i32 {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    super::tool::keep_secrets_from_the_client();
    let now = || chrono::Utc::now().with_timezone(&args.time_zone);
    let key = &args.object.key;
    let (mut result, code) = match drill(&args).await {
        Ok(d) if d.checks.iter().all(|c| c.passed) => {
            let line = LogLine::at(
                &now(),
                &format!("backup verified {key} ({} tables)", d.tables),
            );
            (result(Outcome::Succeeded, line, key, None, d), 0)
        }
        Ok(d) => {
            let failed = d.checks.iter().find(|c| !c.passed).expect("one failed");
            let line = LogLine::at(
                &now(),
                &format!(
                    "backup verification failed: {key}: check {:?} returned {:?}, expected {}",
                    failed.query, failed.got, failed.expected
                ),
            );
            (
                result(Outcome::Failed, line, key, Some(reasons::CHECK_FAILED), d),
                1,
            )
        }
        Err(f) => {
            let line = LogLine::at(
                &now(),
                &format!("backup verification failed: {key}: {}", f.message),
            );
            let none = Drilled {
                tables: 0,
                checks: vec![],
            };
            (result(Outcome::Failed, line, key, Some(f.reason), none), 1)
        }
    };
    println!("{}", result.log);
    if let Err(e) = result.write_to(&args.termination_log) {
        warn!(path = %args.termination_log.display(), error = %e, "cannot write the termination log");
    }
    code
}

fn result(
    outcome: Outcome,
    line: LogLine,
    key: &str,
    reason: Option<&str>,
    d: Drilled,
) -> JobResult {
    let mut r = JobResult::new(Step::Verify, outcome, line.to_string());
    r.key = Some(key.to_string());
    r.reason = reason.map(String::from);
    r.tables = (outcome == Outcome::Succeeded || !d.checks.is_empty()).then_some(d.tables);
    r.checks = d.checks;
    r
}

/// Loads the dump into a throwaway server as it downloads, and runs the checks.
pub async fn drill(args: &VerifyArgs) -> Result<Drilled, Failure> {
    let (client, sse, key) = stream::locate(&args.object).await?;
    let raw = super::download::start(&client, &sse, &args.object.store.bucket, &key).await?;
    let args = args.clone();
    tokio::task::spawn_blocking(move || {
        let mut sql = Sql::open(raw, &key, args.object.identity.as_ref())?;
        drill_stream(&args, &mut sql)
    })
    .await
    .map_err(|e| fail(reasons::DRILL_FAILED, format!("the drill stopped: {e}")))?
}

fn drill_stream(args: &VerifyArgs, sql: &mut Sql) -> Result<Drilled, Failure> {
    let throwaway = Throwaway::start(args.engine, &args.work_dir)
        .map_err(|e| fail(reasons::DRILL_FAILED, e))?;
    let server = &throwaway.server;
    create_if_missing(server, DRILL_DATABASE)
        .map_err(|f| fail(reasons::DRILL_FAILED, f.message))?;
    let around = match args.engine {
        Engine::Postgres => Around::transaction("BEGIN;\n"),
        Engine::Mariadb | Engine::Mysql => Around::default(),
    };
    run_client(server, DRILL_DATABASE, &[], Some((&mut sql.reader, around))).map_err(
        |e| match e {
            Stopped::Source(e) => sql.failure(&e),
            stopped => fail(
                reasons::NOT_RESTORABLE,
                format!("the dump does not load: {stopped}"),
            ),
        },
    )?;
    sql.proven()?;
    let counted = server
        .query(
            DRILL_DATABASE,
            &count_tables_sql(args.engine, DRILL_DATABASE),
        )
        .map_err(|e| {
            fail(
                reasons::DRILL_FAILED,
                format!("cannot count the tables: {e}"),
            )
        })?;
    let tables: u64 = counted.trim().parse().map_err(|_| {
        fail(
            reasons::DRILL_FAILED,
            format!("cannot read the table count (the client printed {counted:?})"),
        )
    })?;
    if tables == 0 {
        return Err(fail(
            reasons::NOT_RESTORABLE,
            "the dump loads but holds no table",
        ));
    }
    let checks = args
        .checks
        .iter()
        .map(|check| {
            let got = server
                .query(DRILL_DATABASE, &check.query)
                .map(|out| first_value(args.engine, &out))
                .unwrap_or_else(|e| format!("error: {e}"));
            CheckResult {
                query: check.query.clone(),
                passed: check.passes(&got),
                got,
                expected: check.expectation(),
            }
        })
        .collect();
    Ok(Drilled { tables, checks })
}

/// The first column of the first row, as the clients print it: one row a
/// line, columns split by `|` (psql) or a tab (mariadb, mysql).
fn first_value(engine: Engine, out: &str) -> String {
    let row = out.lines().next().unwrap_or_default();
    let separator = match engine {
        Engine::Postgres => '|',
        Engine::Mariadb | Engine::Mysql => '\t',
    };
    row.split(separator).next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_is_the_first_column_of_the_first_row() {
        assert_eq!(first_value(Engine::Mariadb, "42\tx\n7\ty"), "42");
        assert_eq!(first_value(Engine::Postgres, "42|x\n7|y"), "42");
        assert_eq!(first_value(Engine::Postgres, ""), "");
        assert_eq!(first_value(Engine::Mariadb, "Zoë"), "Zoë");
    }

    #[test]
    fn checks_parse_from_json() {
        let c = parse_check(r#"{"query":"SELECT count(*) FROM orders","atLeast":1}"#).unwrap();
        assert_eq!(c.at_least, Some(1));
        assert!(parse_check("SELECT 1").is_err());
    }
}
