//! The load step of a restore: a POSIX shell script run in the database's
//! own image, after `fetch` left the verified, decompressed dump on the
//! scratch volume.
//!
//! It creates the target database when missing, refuses one that already
//! holds tables unless `overwrite` is set (then drops them first), loads the
//! dump with the engine's own client, stopping at the first error, and writes
//! a one-line JSON result (with a condition reason on failure) to the
//! termination log. Credentials come from the environment only.

use crate::api::Engine;
use crate::dump::shell_quote;

/// What to restore into.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreTarget<'a> {
    pub engine: Engine,
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub overwrite: bool,
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

/// Shell functions and SQL for one engine:
/// (client function, create-if-missing, count tables, drop everything, load).
fn engine_parts(t: &RestoreTarget) -> [String; 5] {
    let (host, port, db) = (shell_quote(t.host), t.port, t.database);
    match t.engine {
        Engine::Postgres => {
            let client = format!(
                "sql() {{ target=\"$1\"; shift; psql --host={host} --port={port} --username=\"$DB_USER\" --no-password -X -q -A -t -v ON_ERROR_STOP=1 --dbname=\"$target\" \"$@\"; }}\n\
                 db={}",
                shell_quote(db)
            );
            let create = format!(
                "exists=$(sql postgres -c {} 2>\"$errfile\") || fail ConnectionFailed \"cannot connect: $(first_error)\"\n\
                 if [ \"$exists\" != 1 ]; then sql postgres -c {} 2>\"$errfile\" || fail RestoreFailed \"cannot create the database: $(first_error)\"; fi",
                shell_quote(&format!(
                    "SELECT 1 FROM pg_database WHERE datname = {}",
                    pg_string(db)
                )),
                shell_quote(&format!("CREATE DATABASE {}", pg_ident(db))),
            );
            let user_schemas = "nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%'";
            let count = format!(
                "tables=$(sql \"$db\" -c {} 2>\"$errfile\") || fail ConnectionFailed \"cannot read the target: $(first_error)\"",
                shell_quote(&format!(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {user_schemas}"
                ))
            );
            let drop = format!(
                "sql \"$db\" -c {} 2>\"$errfile\"",
                shell_quote(&format!(
                    "DO $$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE {user_schemas} LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); END LOOP; CREATE SCHEMA public; END $$"
                ))
            );
            let load = "sql \"$db\" --single-transaction -f \"$file\" 2>\"$errfile\"".to_string();
            [client, create, count, drop, load]
        }
        Engine::Mariadb | Engine::Mysql => {
            let tool = if t.engine == Engine::Mariadb {
                "mariadb"
            } else {
                "mysql"
            };
            let client = format!(
                "sql() {{ {tool} --host={host} --port={port} --user=\"$DB_USER\" -N -B \"$@\"; }}\n\
                 db={}",
                shell_quote(db)
            );
            let create = format!(
                "sql -e {} 2>\"$errfile\" || fail ConnectionFailed \"cannot connect or create the database: $(first_error)\"",
                shell_quote(&format!("CREATE DATABASE IF NOT EXISTS {}", my_ident(db)))
            );
            let in_db = format!("table_schema = {}", my_string(db));
            let count = format!(
                "tables=$(sql -e {} 2>\"$errfile\") || fail ConnectionFailed \"cannot read the target: $(first_error)\"",
                shell_quote(&format!(
                    "SELECT COUNT(*) FROM information_schema.tables WHERE {in_db}"
                ))
            );
            let drop = format!(
                "{{ echo 'SET FOREIGN_KEY_CHECKS=0;'; sql -e {}; }} >\"$work/drop.sql\" 2>\"$errfile\" && sql -- \"$db\" <\"$work/drop.sql\" 2>>\"$errfile\"",
                shell_quote(&format!(
                    "SELECT CONCAT('DROP ', IF(table_type = 'VIEW', 'VIEW', IF(table_type = 'SEQUENCE', 'SEQUENCE', 'TABLE')), ' IF EXISTS `', REPLACE(table_name, '`', '``'), '`;') FROM information_schema.tables WHERE {in_db}"
                ))
            );
            let load = "sql -- \"$db\" <\"$file\" 2>\"$errfile\"".to_string();
            [client, create, count, drop, load]
        }
    }
}

/// The script body for `sh -c SCRIPT restore DUMP_FILE TERMINATION_LOG`.
pub fn restore_script(t: &RestoreTarget) -> String {
    let [client, create, count, drop, load] = engine_parts(t);
    let shown = t.database.replace(['"', '\\', '\n'], "");
    let not_empty = if t.overwrite {
        format!(
            "log \"dropping the $tables tables, views and sequences of {shown} (overwrite)\"\n  {drop} || fail RestoreFailed \"cannot empty the database: $(first_error)\""
        )
    } else {
        format!(
            "fail TargetNotEmpty \"database {shown} already has $tables tables; set spec.overwrite: true to replace its content\""
        )
    };
    let helpers = crate::dump::SHELL_HELPERS;
    format!(
        r#"set -u
umask 077
file="$1"
termlog="$2"
work=$(dirname "$file")
errfile="$work/.restore-stderr"
{helpers}
# result OUTCOME REASON LINE: the one-line JSON the operator reads from the termination log.
result() {{
  printf '{{"step":"restore","outcome":"%s","reason":"%s","log":"%s"}}\n' "$1" "$2" "$(json_escape "$3")" >"$termlog" 2>/dev/null || true
}}
log() {{ printf '%s,%s\n' "$(date +%Y-%m-%d,%H:%M:%S)" "$1"; }}
fail() {{
  line="$(date +%Y-%m-%d,%H:%M:%S),database restore failed: $2"
  printf '%s\n' "$line"
  result failed "$1" "$line"
  exit 1
}}
[ -s "$file" ] || fail RestoreFailed "the downloaded dump is missing or empty"
{client}
{create}
{count}
tables=$(printf '%s' "$tables" | tr -dc '0-9')
if [ "${{tables:-0}}" -gt 0 ]; then
  {not_empty}
fi
{load} || fail RestoreFailed "the client stopped at an error: $(first_error)"
line="$(date +%Y-%m-%d,%H:%M:%S),database restore completed"
printf '%s\n' "$line"
result succeeded "" "$line"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(engine: Engine, overwrite: bool) -> RestoreTarget<'static> {
        RestoreTarget {
            engine,
            host: "db.example",
            port: 5432,
            database: "shop's \"new\"",
            overwrite,
        }
    }

    #[test]
    fn names_are_quoted_for_sql_and_shell() {
        let s = restore_script(&target(Engine::Postgres, false));
        assert!(s.contains(r#"db='shop'\''s "new"'"#), "{s}");
        assert!(s.contains(r#"CREATE DATABASE "shop'\''s ""new""""#), "{s}");
        let s = restore_script(&target(Engine::Mariadb, false));
        assert!(
            s.contains("CREATE DATABASE IF NOT EXISTS `shop'\\''s \"new\"`"),
            "{s}"
        );
    }

    #[test]
    fn overwrite_decides_between_refusing_and_dropping() {
        let refuse = restore_script(&target(Engine::Mariadb, false));
        assert!(refuse.contains("fail TargetNotEmpty"));
        assert!(!refuse.contains("FOREIGN_KEY_CHECKS"));
        let drop = restore_script(&target(Engine::Mariadb, true));
        assert!(!drop.contains("fail TargetNotEmpty"));
        assert!(drop.contains("SET FOREIGN_KEY_CHECKS=0;"));
        let pg = restore_script(&target(Engine::Postgres, true));
        assert!(pg.contains("DROP SCHEMA %I CASCADE"));
    }

    #[test]
    fn no_password_in_the_script() {
        for engine in [Engine::Postgres, Engine::Mariadb, Engine::Mysql] {
            let s = restore_script(&target(engine, false));
            assert!(!s.contains("--password") && !s.contains(" -p"), "{s}");
        }
    }

    #[test]
    fn postgres_loads_in_one_transaction_and_stops_at_errors() {
        let s = restore_script(&target(Engine::Postgres, false));
        assert!(s.contains("ON_ERROR_STOP=1"));
        assert!(s.contains("--single-transaction -f \"$file\""));
    }
}
