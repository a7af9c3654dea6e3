//! The load step of a restore (`dbbackup-operator load`), run in the
//! database's own image. It downloads the dump and loads it as the bytes
//! arrive (`stream`, `feed`): no copy of the dump is kept anywhere, and
//! nothing is committed before the whole object checked out.
//!
//! It creates the target database when missing and refuses one that holds
//! tables unless `--overwrite` is set. PostgreSQL loads in one transaction
//! (emptying the target first when overwriting), committed at the end of
//! its input, which comes only after the proof. MariaDB/MySQL, whose DDL
//! cannot be rolled back, load a target with tables into a shadow database
//! that replaces the target's content only after the proof (`shadow`), and
//! a fresh target directly, emptied again if the load fails. The dump is
//! loaded as the restoring role: PostgreSQL dumps carry no owners or
//! grants, and MariaDB `DEFINER` clauses are dropped on the way in, so
//! objects belong to that role. Writes the download's and the load's log
//! lines and the one-line JSON result.

use super::feed::{Around, Stopped, run_client};
use super::shadow;
use super::stream::{self, Proven, Sql};
use super::tool::{Server, my_ident, my_string, pg_ident, pg_string};
use crate::api::Engine;
use crate::jobresult::{Failure, JobResult, Outcome, Step, fail};
use crate::logline::LogLine;
use crate::reasons;
use chrono_tz::Tz;
use tracing::warn;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    #[command(flatten)]
    pub db: super::DatabaseArgs,
    #[command(flatten)]
    pub object: stream::ObjectArgs,
    /// Replace the content of a target that already has tables.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: std::path::PathBuf,
    #[arg(long, default_value = "UTC")]
    pub time_zone: Tz,
}

/// A restore that loaded: the object, and its proof.
struct Restored {
    key: String,
    proven: Proven,
    /// Why that key.
    chosen: String,
}

/// Runs one restore; returns the process exit code.
pub async fn run(args: LoadArgs) -> i32 {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    super::tool::keep_secrets_from_the_client();
    let now = || chrono::Utc::now().with_timezone(&args.time_zone);
    let (mut result, code) = match restore(&args).await {
        Ok(Restored {
            key,
            proven,
            chosen,
        }) => {
            let downloaded = proven.downloaded(&key);
            let mut r = JobResult::new(
                Step::Restore,
                Outcome::Succeeded,
                LogLine::at(&now(), &downloaded).to_string(),
            );
            r.more_log = vec![LogLine::at(&now(), "database restore completed").to_string()];
            r.chosen = Some(chosen);
            r.key = Some(key);
            r.size = Some(proven.size);
            r.checksum = proven.proof.map(|p| p.to_string());
            (r, 0)
        }
        Err(f) => {
            let line = LogLine::at(&now(), &format!("database restore failed: {}", f.message));
            let mut r = JobResult::new(Step::Restore, Outcome::Failed, line.to_string());
            r.reason = Some(f.reason.to_string());
            (r, 1)
        }
    };
    println!("{}", result.log);
    result.more_log.iter().for_each(|l| println!("{l}"));
    if let Err(e) = result.write_to(&args.termination_log) {
        warn!(path = %args.termination_log.display(), error = %e, "cannot write the termination log");
    }
    code
}

/// What the target holds before the load.
#[derive(Clone, Copy)]
enum Target {
    /// No tables; `created` when this restore created the database.
    Fresh { created: bool },
    /// Tables, to be replaced (`--overwrite`).
    Replace,
}

async fn restore(args: &LoadArgs) -> Result<Restored, Failure> {
    let server = Server::from_env(args.db.engine, &args.db.host, args.db.port)
        .map_err(|e| fail(reasons::RESTORE_FAILED, e))?;
    let db = args.db.database.clone();
    let overwrite = args.overwrite;
    let (client, sse, key, chosen) = stream::locate_why(&args.object).await?;
    let raw = match &args.object.presigned {
        Some(p) => super::download::start_presigned(&client, p).await?,
        None => super::download::start(&client, &sse, &args.object.store.bucket, &key).await?,
    };
    let identity = args.object.identity.clone();
    tokio::task::spawn_blocking(move || {
        // An identity that cannot decrypt is named before the target is touched.
        let mut sql = Sql::open(raw, &key, identity.as_ref())?;
        let target = prepare(&server, &db, overwrite)?;
        let proven = load(&server, &db, target, &mut sql)?;
        Ok(Restored {
            key,
            proven,
            chosen,
        })
    })
    .await
    .map_err(|e| fail(reasons::RESTORE_FAILED, format!("the load stopped: {e}")))?
}

/// Creates the target if missing and reads what it holds: a target with
/// tables is refused unless `overwrite`.
fn prepare(server: &Server, db: &str, overwrite: bool) -> Result<Target, Failure> {
    let created = create_if_missing(server, db)?;
    let tables = server
        .query(db, &count_tables_sql(server.engine, db))
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
    if tables == 0 {
        return Ok(Target::Fresh { created });
    }
    if !overwrite {
        return Err(fail(
            reasons::TARGET_NOT_EMPTY,
            format!(
                "database {db} already has {tables} tables; set spec.overwrite: true to replace its content"
            ),
        ));
    }
    println!("replacing the {tables} tables, views and sequences of {db} (overwrite)");
    Ok(Target::Replace)
}

/// Loads the SQL as it arrives; returns the proof once all of it loaded.
fn load(server: &Server, db: &str, target: Target, sql: &mut Sql) -> Result<Proven, Failure> {
    const UNCHANGED: &str = "; the target is unchanged";
    // Loaded, and every byte of the object checked out; or why not.
    let loaded = |sql: &mut Sql, into: &str, around: Around, kept: &str| {
        run_client(server, into, &[], Some((&mut sql.reader, around)))
            .map_err(|e| stopped(e, sql, kept))
            .and_then(|()| sql.proven())
    };
    match (server.engine, target) {
        (Engine::Postgres, target) => {
            let replace = matches!(target, Target::Replace);
            let begin = match replace {
                true => format!("BEGIN;\n{PG_DROP_ALL};\n"),
                false => "BEGIN;\n".to_string(),
            };
            let kept = if replace { UNCHANGED } else { "" };
            loaded(sql, db, Around::transaction(&begin), kept)
        }
        (_, Target::Replace) => {
            let shadow = shadow::shadow_name(db);
            shadow::create_shadow(server, db).map_err(|e| {
                fail(
                    reasons::RESTORE_FAILED,
                    format!("cannot create the shadow database {shadow} an overwrite loads into (the restoring role needs all privileges on it and on {db}__dbbackup_old; nothing was changed): {e}"),
                )
            })?;
            let proven = loaded(sql, &shadow, Around::default(), UNCHANGED).inspect_err(|_| {
                let _ = shadow::drop_shadow(server, db);
            })?;
            shadow::swap(server, db).map_err(|e| fail(reasons::RESTORE_FAILED, e))?;
            Ok(proven)
        }
        (_, Target::Fresh { created }) => {
            let before = shadow::held(server, db).map_err(|e| {
                fail(
                    reasons::CONNECTION_FAILED,
                    format!("cannot read the target: {e}"),
                )
            })?;
            loaded(sql, db, Around::default(), "").map_err(|f| {
                let cleared = match created {
                    true => server
                        .query("", &format!("DROP DATABASE IF EXISTS {}", my_ident(db)))
                        .map(|_| ()),
                    false => shadow::remove_all_but(server, db, &before),
                };
                let kept = match cleared {
                    Ok(()) => "; what it loaded was removed".to_string(),
                    Err(c) => format!("; removing what it loaded failed too: {c}"),
                };
                fail(f.reason, format!("{}{kept}", f.message))
            })
        }
    }
}

/// Why a load stopped, with what became of the target (`kept`).
fn stopped(stopped: Stopped, sql: &Sql, kept: &str) -> Failure {
    let f = match stopped {
        Stopped::Source(e) => sql.failure(&e),
        Stopped::Empty => fail(
            reasons::CORRUPT_DUMP,
            format!("{} holds no SQL: an empty dump restores nothing", sql.key()),
        ),
        Stopped::Client(e) => fail(
            reasons::RESTORE_FAILED,
            format!("the client stopped at an error: {e}"),
        ),
    };
    fail(f.reason, format!("{}{kept}", f.message))
}

/// Creates `db` when missing; true when it did.
pub(crate) fn create_if_missing(server: &Server, db: &str) -> Result<bool, Failure> {
    let connection = |e: String| fail(reasons::CONNECTION_FAILED, format!("cannot connect: {e}"));
    let exists_sql = match server.engine {
        Engine::Postgres => format!(
            "SELECT count(*) FROM pg_database WHERE datname = {}",
            pg_string(db)
        ),
        Engine::Mariadb | Engine::Mysql => format!(
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = {}",
            my_string(db)
        ),
    };
    let (on, create) = match server.engine {
        Engine::Postgres => ("postgres", format!("CREATE DATABASE {}", pg_ident(db))),
        Engine::Mariadb | Engine::Mysql => (
            "",
            format!("CREATE DATABASE IF NOT EXISTS {}", my_ident(db)),
        ),
    };
    if server.query(on, &exists_sql).map_err(connection)? != "0" {
        return Ok(false);
    }
    server.query(on, &create).map_err(|e| {
        fail(
            reasons::RESTORE_FAILED,
            format!("cannot create the database: {e}"),
        )
    })?;
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::tool::{my_ident, my_string, pg_ident, pg_string};

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
