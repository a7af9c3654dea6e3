//! A dump run of several databases (`dump --each …` or `--all-databases`).
//!
//! ```text
//! dumps/.dump.lock              held by the run from start to end
//! databases/<segment>/dumps/…   each database's staging, as `staging` describes
//! databases/.roles/dumps/…      postgres: the roles (`pg_dumpall --globals-only`)
//! databases/.seen               the databases earlier runs found, hex, one a line
//! logs/YYYY-MM-DD.txt           one log for all, each line naming its database
//! ```
//!
//! The run holds the volume's own dump lock, so an upload chained to it knows
//! more dumps may come, and dumps each database in turn into its own staging
//! with the one-database protocol unchanged: its series, claims and chained
//! uploads hold for each. One database failing does not stop the others.

use super::dump::{self, DumpArgs, Dumped, Phase};
use super::keys::{ROLES_SEGMENT, database_segment};
use super::staging::{Lock, Staging, dump_id};
use super::tool::Server;
use crate::api::Engine;
use crate::jobresult::{DatabaseResult, JobResult, Outcome, Step};
use crate::logline;
use crate::reasons;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing::{error, info, warn};

/// The folder of the databases' stagings.
pub const DATABASES: &str = "databases";
/// What the roles are called in log lines and results.
pub const ROLES: &str = "(roles)";

/// Whether the run dumps several databases.
pub fn several(args: &DumpArgs) -> bool {
    !args.each.is_empty() || args.all_databases
}

/// The segments of a volume's databases that have a staging, in order.
pub fn segments(root: &Path) -> std::io::Result<Vec<String>> {
    let mut found = vec![];
    match std::fs::read_dir(root.join(DATABASES)) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    found.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    found.sort();
    Ok(found)
}

/// Runs the dumps; returns the process exit code.
pub async fn run(args: DumpArgs) -> i32 {
    let phase = Arc::new(Mutex::new(Phase::Starting));
    let outcome = dump::until_stopped(phase, {
        let args = args.clone();
        move |phase| dump_each(&args, phase)
    })
    .await;
    finish(&args, outcome)
}

/// One database's end.
struct Done {
    name: String,
    outcome: Result<Dumped, String>,
}

/// What a run did: the names that appeared since the last run, and each dump.
struct Ran {
    appeared: Vec<String>,
    done: Vec<Done>,
}

fn dump_each(args: &DumpArgs, phase: &Mutex<Phase>) -> Result<Ran, String> {
    let root = Staging::new(&args.staging_dir);
    let dumps = root.dumps();
    root.create()
        .map_err(|e| format!("cannot create {}: {e}", dumps.display()))?;
    let _run = root
        .lock(Lock::Dump, || {
            info!("another dump run is on this volume; this one starts when it ends")
        })
        .map_err(|e| format!("cannot lock {}: {e}", dumps.display()))?;
    let server = Server::from_env(args.db.engine, &args.db.host, args.db.port)?;
    let names = match args.all_databases {
        true => chosen(listed(&server)?, &args.exclude),
        false => args.each.clone(),
    };
    let appeared = appeared(&args.staging_dir, &names);
    let mut done = vec![];
    let roles = (args.db.engine == Engine::Postgres).then(|| ROLES.to_string());
    let mut stopped = false;
    for name in names.iter().chain(&roles) {
        // Stopped (SIGTERM): the rest are named as not dumped, so the
        // result still lists every database of the run.
        if stopped {
            done.push(Done {
                name: name.clone(),
                outcome: Err(dump::STOPPED.to_string()),
            });
            continue;
        }
        let segment = match name == ROLES {
            true => ROLES_SEGMENT.to_string(),
            false => database_segment(name),
        };
        let mut one = args.clone();
        one.db.database = name.clone();
        one.roles = roles.as_ref() == Some(name);
        let staging = Staging::of_database(&args.staging_dir, &segment);
        let outcome = dump::dump(&one, &staging, phase);
        // Between two dumps a SIGTERM has nothing to wait for.
        stopped = dump::set(phase, |_| Phase::Starting).is_err();
        done.push(Done {
            name: name.clone(),
            outcome,
        });
    }
    Ok(Ran { appeared, done })
}

/// The databases on the server, by their hex names (any bytes survive), but
/// those of the system.
fn listed(server: &Server) -> Result<Vec<String>, String> {
    let (database, sql) = match server.engine {
        Engine::Postgres => (
            "postgres",
            // Those that take no connections too: such a database fails, said.
            "SELECT encode(convert_to(datname, 'UTF8'), 'hex') FROM pg_database ORDER BY datname",
        ),
        Engine::Mariadb | Engine::Mysql => (
            "",
            "SELECT HEX(SCHEMA_NAME) FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME",
        ),
    };
    let out = server
        .query(database, sql)
        .map_err(|e| format!("cannot list the databases: {e}"))?;
    let names = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            unhex(l.trim())
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| format!("cannot read a database name: {l:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names
        .into_iter()
        .filter(|n| !system(server.engine, n))
        .collect())
}

/// The databases the server itself needs: never dumped by `all`.
pub fn system(engine: Engine, name: &str) -> bool {
    match engine {
        Engine::Postgres => matches!(name, "postgres" | "template0" | "template1"),
        Engine::Mariadb | Engine::Mysql => matches!(
            name,
            "mysql" | "sys" | "information_schema" | "performance_schema"
        ),
    }
}

/// `listed` without the names an exclude pattern matches.
pub fn chosen(listed: Vec<String>, exclude: &[String]) -> Vec<String> {
    listed
        .into_iter()
        .filter(|n| !exclude.iter().any(|p| matches(p, n)))
        .collect()
}

/// Whether `name` matches `pattern`: `*` any run of characters, `?` one.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            (pi, ni) = (pi + 1, ni + 1);
        } else if pi < p.len() && p[pi] == '*' {
            (star, mark, pi) = (Some(pi), ni, pi + 1);
        } else if let Some(s) = star {
            (pi, mark, ni) = (s + 1, mark + 1, mark + 1);
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The names not among those an earlier run recorded, and records these.
/// The first run records without saying: every name is new to it.
fn appeared(root: &Path, names: &[String]) -> Vec<String> {
    let path = root.join(DATABASES).join(".seen");
    let seen: Option<Vec<String>> = std::fs::read_to_string(&path).ok().map(|text| {
        text.lines()
            .filter_map(unhex)
            .filter_map(|b| String::from_utf8(b).ok())
            .collect()
    });
    let record: String = names.iter().map(|n| hex(n) + "\n").collect();
    if let Err(e) =
        std::fs::create_dir_all(root.join(DATABASES)).and_then(|_| std::fs::write(&path, record))
    {
        warn!(error = %e, "cannot record the databases found");
    }
    match seen {
        Some(seen) => names
            .iter()
            .filter(|n| !seen.contains(n))
            .cloned()
            .collect(),
        None => vec![],
    }
}

fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// Logs each database's end, writes the result, and returns the exit code:
/// 1 when any database failed.
fn finish(args: &DumpArgs, outcome: Result<Ran, String>) -> i32 {
    let (tz, root) = (args.time_zone, Staging::new(&args.staging_dir));
    let mut lines = vec![];
    let mut log = |message: String, failed: bool| {
        let line = root.log(tz, &message);
        match failed {
            true => error!("{line}"),
            false => info!("{line}"),
        }
        lines.push(line.to_string());
    };
    let ran = match outcome {
        Ok(ran) => ran,
        Err(message) => {
            log(format!("database dump failed: {message}"), true);
            let mut r = JobResult::new(Step::Dump, Outcome::Failed, lines.remove(0));
            return write(args, &mut r, 1);
        }
    };
    for name in &ran.appeared {
        log(
            format!("database {name} appeared on the server: dumped from this run on"),
            false,
        );
    }
    let mut databases = vec![];
    for Done { name, outcome } in ran.done {
        match outcome {
            Ok(Dumped { size, published }) => {
                log(format!("{}: {name}", logline::DUMP_COMPLETED), false);
                if let Some(replaced) = published.replaced {
                    let at = chrono::DateTime::<chrono::Utc>::from(replaced).with_timezone(&tz);
                    let at = at.format("%Y-%m-%d %H:%M:%S");
                    log(format!("{name}: {} {at}", logline::REPLACED), true);
                }
                databases.push(DatabaseResult {
                    name,
                    outcome: Outcome::Succeeded,
                    size: Some(size),
                    dumped: Some(dump_id(published.finished)),
                    key: None,
                    error: None,
                    replaced: published.replaced.map(dump_id),
                });
            }
            Err(message) => {
                log(format!("database dump failed: {name}: {message}"), true);
                databases.push(DatabaseResult {
                    name,
                    outcome: Outcome::Failed,
                    size: None,
                    dumped: None,
                    key: None,
                    error: Some(message),
                    replaced: None,
                });
            }
        }
    }
    let failed = databases
        .iter()
        .filter(|d| d.outcome == Outcome::Failed)
        .count();
    if databases.is_empty() {
        log(
            "database dump failed: no database to dump on the server".into(),
            true,
        );
    }
    let outcome = match (failed, databases.len()) {
        (0, n) if n > 0 => Outcome::Succeeded,
        _ => Outcome::Failed,
    };
    let mut r = JobResult::new(Step::Dump, outcome, lines.remove(0));
    r.more_log = lines;
    if failed > 0 && failed < databases.len() {
        r.reason = Some(reasons::SOME_DUMPS_FAILED.into());
    }
    r.databases = databases;
    let code = (outcome != Outcome::Succeeded).into();
    write(args, &mut r, code)
}

fn write(args: &DumpArgs, r: &mut JobResult, code: i32) -> i32 {
    if let Err(e) = r.write_to(&args.termination_log) {
        warn!(path = %args.termination_log.display(), error = %e, "cannot write the termination log");
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        for (p, n) in [
            ("*", "x"),
            ("test_*", "test_a"),
            ("a?c", "abc"),
            ("*_tmp", "x_tmp"),
            ("a*b*c", "aXbYc"),
            ("shop", "shop"),
        ] {
            assert!(matches(p, n), "{p} {n}");
        }
        for (p, n) in [
            ("test_*", "atest_a"),
            ("a?c", "ac"),
            ("shop", "shop2"),
            ("*_tmp", "x_tmp2"),
            ("", "x"),
        ] {
            assert!(!matches(p, n), "{p} {n}");
        }
    }

    #[test]
    fn excluded_and_system_databases_are_left_out() {
        let listed = ["app", "app_test", "billing"].map(String::from).to_vec();
        assert_eq!(chosen(listed, &["*_test".into()]), ["app", "billing"]);
        assert!(system(Engine::Postgres, "template1"));
        assert!(!system(Engine::Postgres, "mysql"));
        assert!(system(Engine::Mariadb, "performance_schema"));
    }

    #[test]
    fn hex_names_come_back_whole() {
        for name in ["shop", "a b\nc", "é€"] {
            assert_eq!(unhex(&hex(name)).unwrap(), name.as_bytes());
        }
        assert_eq!(unhex("73686F70").unwrap(), b"shop");
        assert_eq!(unhex("7"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn a_database_new_since_the_last_run_is_named_once() {
        let dir = tempfile::tempdir().unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(appeared(dir.path(), &names(&["a", "b"])).is_empty());
        assert_eq!(appeared(dir.path(), &names(&["a", "b", "c d"])), ["c d"]);
        assert!(appeared(dir.path(), &names(&["a", "b", "c d"])).is_empty());
    }
}
