//! The load step of a restore (`dbbackup-operator load`), run in the
//! database's own image after `fetch` left the verified, decompressed dump on
//! the scratch volume.
//!
//! It creates the target database when missing and refuses one that holds
//! tables unless `--overwrite` is set. An overwrite that fails leaves the
//! target as it was: PostgreSQL empties and loads in one transaction;
//! MariaDB/MySQL, whose DDL cannot be rolled back, first dump the target to
//! the scratch volume and load that copy back if the load fails. The dump is
//! loaded as the restoring role: PostgreSQL dumps carry no owners or grants,
//! and MariaDB `DEFINER` clauses are dropped on the way in, so objects
//! belong to that role. Writes one log line and the one-line JSON result.

use super::tool::{self, Server};
use crate::api::Engine;
use crate::jobresult::{Failure, JobResult, Outcome, Step, fail};
use crate::reasons;
use chrono_tz::Tz;
use std::borrow::Cow;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tracing::warn;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    #[command(flatten)]
    pub db: super::DatabaseArgs,
    /// The decompressed dump.
    #[arg(long)]
    pub file: PathBuf,
    /// Replace the content of a target that already has tables.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    #[arg(long, default_value = "UTC")]
    pub time_zone: Tz,
}

/// Runs one load; returns the process exit code.
pub fn run(args: LoadArgs) -> i32 {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let now = || chrono::Utc::now().with_timezone(&args.time_zone);
    let (mut result, code) = match load(&args) {
        Ok(()) => {
            let line = crate::logline::LogLine::at(&now(), "database restore completed");
            (
                JobResult::new(Step::Restore, Outcome::Succeeded, line.to_string()),
                0,
            )
        }
        Err(f) => {
            let line = crate::logline::LogLine::at(
                &now(),
                &format!("database restore failed: {}", f.message),
            );
            let mut r = JobResult::new(Step::Restore, Outcome::Failed, line.to_string());
            r.reason = Some(f.reason.to_string());
            (r, 1)
        }
    };
    println!("{}", result.log);
    if let Err(e) = result.write_to(&args.termination_log) {
        warn!(path = %args.termination_log.display(), error = %e, "cannot write the termination log");
    }
    code
}

fn load(args: &LoadArgs) -> Result<(), Failure> {
    let empty = std::fs::metadata(&args.file).map_or(true, |m| m.len() == 0);
    if empty {
        return Err(fail(
            reasons::RESTORE_FAILED,
            "the downloaded dump is missing or empty",
        ));
    }
    let server = Server::from_env(args.db.engine, &args.db.host, args.db.port)
        .map_err(|e| fail(reasons::RESTORE_FAILED, e))?;
    let db = args.db.database.as_str();
    create_if_missing(&server, db)?;
    let tables = server
        .query(db, &count_tables_sql(args.db.engine, db))
        .map_err(|e| {
            fail(
                reasons::CONNECTION_FAILED,
                format!("cannot read the target: {e}"),
            )
        })?;
    // Output we cannot read is no licence to write: only a number counts.
    let tables: u64 = tables.trim().parse().map_err(|_| {
        fail(
            reasons::CONNECTION_FAILED,
            format!("cannot read the target's table count (the client printed {tables:?})"),
        )
    })?;
    if tables > 0 && !args.overwrite {
        return Err(fail(
            reasons::TARGET_NOT_EMPTY,
            format!(
                "database {db} already has {tables} tables; set spec.overwrite: true to replace its content"
            ),
        ));
    }
    let replace = tables > 0;
    if replace {
        println!("replacing the {tables} tables, views and sequences of {db} (overwrite)");
    }
    match args.db.engine {
        Engine::Postgres => {
            let drop = replace.then(|| format!("--command={}", PG_DROP_ALL));
            let mut extra: Vec<String> = vec!["--single-transaction".into()];
            extra.extend(drop);
            extra.push(format!("--file={}", args.file.display()));
            run_client(&server, db, &extra, None).map_err(|e| {
                let kept = if replace {
                    "; the target is unchanged"
                } else {
                    ""
                };
                fail(
                    reasons::RESTORE_FAILED,
                    format!("the client stopped at an error: {e}{kept}"),
                )
            })
        }
        Engine::Mariadb | Engine::Mysql => load_mysql(&server, db, &args.file, replace),
    }
}

pub(crate) fn create_if_missing(server: &Server, db: &str) -> Result<(), Failure> {
    let connection = |e: String| fail(reasons::CONNECTION_FAILED, format!("cannot connect: {e}"));
    match server.engine {
        Engine::Postgres => {
            let sql = format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                pg_string(db)
            );
            if server.query("postgres", &sql).map_err(connection)? != "1" {
                server
                    .query("postgres", &format!("CREATE DATABASE {}", pg_ident(db)))
                    .map_err(|e| {
                        fail(
                            reasons::RESTORE_FAILED,
                            format!("cannot create the database: {e}"),
                        )
                    })?;
            }
        }
        Engine::Mariadb | Engine::Mysql => {
            server
                .query(
                    "",
                    &format!("CREATE DATABASE IF NOT EXISTS {}", my_ident(db)),
                )
                .map_err(|e| {
                    fail(
                        reasons::CONNECTION_FAILED,
                        format!("cannot connect or create the database: {e}"),
                    )
                })?;
        }
    }
    Ok(())
}

/// MariaDB/MySQL: load, and when replacing, keep a copy to put back.
fn load_mysql(server: &Server, db: &str, file: &Path, replace: bool) -> Result<(), Failure> {
    if !replace {
        return feed(server, db, file).map_err(|e| {
            fail(
                reasons::RESTORE_FAILED,
                format!("the client stopped at an error: {e}"),
            )
        });
    }
    let copy = file.with_file_name(".target-before-restore.sql");
    dump_to(server, db, &copy).map_err(|e| {
        fail(
            reasons::RESTORE_FAILED,
            format!("cannot copy the target before replacing it (nothing was changed): {e}"),
        )
    })?;
    let loaded = empty_mysql(server, db).and_then(|()| feed(server, db, file));
    let Err(e) = loaded else {
        let _ = std::fs::remove_file(&copy);
        return Ok(());
    };
    let back = empty_mysql(server, db).and_then(|()| feed(server, db, &copy));
    let _ = std::fs::remove_file(&copy);
    Err(fail(
        reasons::RESTORE_FAILED,
        match back {
            Ok(()) => {
                format!("the client stopped at an error: {e}; the target was put back as it was")
            }
            Err(b) => format!(
                "the client stopped at an error: {e}; putting the target back failed too, so it may be incomplete (its copy was on the pod's scratch volume): {b}"
            ),
        },
    ))
}

/// Drops every table, view and sequence of `db`.
fn empty_mysql(server: &Server, db: &str) -> Result<(), String> {
    let drops = server.query(db, &format!(
        "SELECT CONCAT('DROP ', IF(table_type = 'VIEW', 'VIEW', IF(table_type = 'SEQUENCE', 'SEQUENCE', 'TABLE')), ' IF EXISTS `', REPLACE(table_name, '`', '``'), '`;') FROM information_schema.tables WHERE table_schema = {}",
        my_string(db)
    ))?;
    if drops.is_empty() {
        return Ok(());
    }
    server
        .query(db, &format!("SET FOREIGN_KEY_CHECKS=0; {drops}"))
        .map(|_| ())
}

/// Dumps `db` into `path` with the dump step's own flags.
fn dump_to(server: &Server, db: &str, path: &Path) -> Result<(), String> {
    let (program, args) = server.dump_argv(db);
    let out = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let status = server
        .command(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| tool::cannot_run(&program, &e))?;
    if status.status.success() {
        Ok(())
    } else {
        Err(tool::failed(&program, status.status, &status.stderr))
    }
}

/// Loads `file` into the empty database `db`: PostgreSQL in one
/// transaction, MariaDB/MySQL through the client's stdin without `DEFINER`
/// clauses. The client's first error if it stops.
pub(crate) fn load_into_empty(server: &Server, db: &str, file: &Path) -> Result<(), String> {
    match server.engine {
        Engine::Postgres => run_client(
            server,
            db,
            &[
                "--single-transaction".into(),
                format!("--file={}", file.display()),
            ],
            None,
        ),
        Engine::Mariadb | Engine::Mysql => feed(server, db, file),
    }
}

/// Loads `file` into `db` through the client's stdin, without `DEFINER` clauses.
fn feed(server: &Server, db: &str, file: &Path) -> Result<(), String> {
    run_client(server, db, &[], Some(file))
}

/// Runs the SQL client with `extra` arguments, feeding `stdin_file` (MariaDB,
/// definers stripped) if given; the first error line if it fails.
fn run_client(
    server: &Server,
    db: &str,
    extra: &[String],
    stdin_file: Option<&Path>,
) -> Result<(), String> {
    let (program, mut args) = server.client_argv(db);
    args.extend(extra.iter().cloned());
    let mut child = server
        .command(&program)
        .args(&args)
        .stdin(if stdin_file.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool::cannot_run(&program, &e))?;
    let stderr = tool::collect_stderr(&mut child);
    let fed = match (stdin_file, child.stdin.take()) {
        (Some(path), Some(stdin)) => copy_without_definers(path, stdin),
        _ => Ok(()),
    };
    let status = child.wait().map_err(|e| e.to_string())?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(tool::failed(&program, status, &stderr));
    }
    // The client read all it was given only if feeding it did not fail.
    fed.map_err(|e| format!("cannot read the dump: {e}"))
}

fn copy_without_definers(path: &Path, mut to: impl Write) -> std::io::Result<()> {
    let mut from = BufReader::with_capacity(1024 * 1024, std::fs::File::open(path)?);
    let mut to_buf = std::io::BufWriter::with_capacity(1024 * 1024, &mut to);
    let mut line = Vec::new();
    loop {
        line.clear();
        if from.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        match to_buf.write_all(&strip_definer(&line)) {
            // The client stopped reading: its exit status says why.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
    match to_buf.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// A MariaDB/MySQL dump line without its `DEFINER=user@host` clause, so that
/// views, triggers, routines and events belong to the restoring role (only a
/// privileged role may name another). Only the statement lines the dump tool
/// writes for those objects are touched, never data.
pub fn strip_definer(line: &[u8]) -> Cow<'_, [u8]> {
    const DEFINER: &[u8] = b"DEFINER=";
    let statement = line.starts_with(b"/*!") || line.starts_with(b"CREATE ");
    let Some(at) = statement
        .then(|| line.windows(DEFINER.len()).position(|w| w == DEFINER))
        .flatten()
    else {
        return Cow::Borrowed(line);
    };
    let rest = &line[at + DEFINER.len()..];
    let Some(user_end) = quoted_end(rest) else {
        return Cow::Borrowed(line);
    };
    let Some(host_end) = rest[user_end..]
        .strip_prefix(b"@")
        .and_then(quoted_end)
        .map(|n| user_end + 1 + n)
    else {
        return Cow::Borrowed(line);
    };
    let mut out = line[..at].to_vec();
    out.extend_from_slice(
        rest[host_end..]
            .strip_prefix(b" ")
            .unwrap_or(&rest[host_end..]),
    );
    Cow::Owned(out)
}

/// The length of a leading `` `name` `` or `'name'` (doubled quotes inside).
fn quoted_end(s: &[u8]) -> Option<usize> {
    let q = *s.first().filter(|q| **q == b'`' || **q == b'\'')?;
    let mut i = 1;
    while i < s.len() {
        if s[i] == q {
            if s.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

const PG_USER_SCHEMAS: &str = "nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%'";

/// Drops every user schema and recreates `public`, inside the load's transaction.
const PG_DROP_ALL: &str = "DO $$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%' LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); END LOOP; CREATE SCHEMA public; END $$";

pub(crate) fn count_tables_sql(engine: Engine, db: &str) -> String {
    match engine {
        Engine::Postgres => format!(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {PG_USER_SCHEMAS}"
        ),
        Engine::Mariadb | Engine::Mysql => format!(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {}",
            my_string(db)
        ),
    }
}

/// A MariaDB/MySQL identifier in backquotes.
fn my_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A MariaDB/MySQL string literal (backslashes escape there).
fn my_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A PostgreSQL identifier in double quotes.
fn pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A PostgreSQL string literal.
fn pg_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definers_go_from_object_statements_only() {
        let view = b"/*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */\n";
        assert_eq!(&*strip_definer(view), b"/*!50013 SQL SECURITY DEFINER */\n");
        let routine = b"CREATE DEFINER=`a``b`@`%` PROCEDURE `p`()\n";
        assert_eq!(&*strip_definer(routine), b"CREATE PROCEDURE `p`()\n");
        let trigger = b"/*!50003 CREATE*/ /*!50017 DEFINER=`u`@`h`*/ /*!50003 TRIGGER t */;;\n";
        assert_eq!(
            &*strip_definer(trigger),
            b"/*!50003 CREATE*/ /*!50017 */ /*!50003 TRIGGER t */;;\n"
        );
        let data = b"INSERT INTO `t` VALUES ('DEFINER=`x`@`y`');\n";
        assert_eq!(&*strip_definer(data), &data[..]);
    }

    #[test]
    fn names_are_quoted_as_sql_values() {
        assert_eq!(my_ident("a`b"), "`a``b`");
        assert_eq!(my_string(r"o'b\"), r"'o''b\\'");
        assert_eq!(pg_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(pg_string("o'b"), "'o''b'");
        assert!(count_tables_sql(Engine::Mariadb, "x'y").contains("'x''y'"));
    }

    #[test]
    fn the_postgres_drop_uses_the_user_schema_filter() {
        assert!(PG_DROP_ALL.contains(PG_USER_SCHEMAS));
    }
}
