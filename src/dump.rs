//! The dump step: a POSIX shell script run in the database's own image.
//!
//! It writes `dumps/.partial-*`, checks the dump tool's own exit status (a
//! pipe to the compressor must not hide it), syncs, and only then renames the
//! file to `dumps/datadump.sql[.gz|.zst]`, replacing any previous dump, as
//! the original pipeline did. Every run appends one `<date>,<time>,<message>`
//! line to `logs/<date>.txt` and writes a one-line JSON result to the
//! termination log, which the operator turns into status.
//!
//! The staging directory and termination-log path are the script's
//! positional arguments, so the pod spec says exactly where they are.
//! Connection details are quoted into the script here; the user name and
//! password come only from the environment (secretKeyRef), never from args.

use crate::api::{Compression, Engine};

/// Environment variable holding the database user (from the credentials Secret).
pub const USER_ENV: &str = "DB_USER";
/// Environment variable the dump tool reads its password from.
pub fn password_env(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "PGPASSWORD",
        Engine::Mariadb | Engine::Mysql => "MYSQL_PWD",
    }
}

/// Name of the finished dump in the staging `dumps/` directory.
pub fn dump_file_name(compression: Compression) -> String {
    format!("datadump.sql{}", compression.extension())
}

/// What to dump and how.
#[derive(Clone, Debug, PartialEq)]
pub struct DumpTarget<'a> {
    pub engine: Engine,
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub compression: Compression,
}

/// Shell functions of both job scripts (dump and restore); each sets `$errfile`
/// to where its client's stderr goes.
pub(crate) const SHELL_HELPERS: &str = r#"json_escape() { printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g'; }
# The client's first error line names the cause; later lines are hints.
first_error() { grep -i -m 1 'error' "$errfile" 2>/dev/null || grep -v '^[[:space:]]*$' "$errfile" 2>/dev/null | tail -n 1; }"#;

/// Quotes `s` as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The dump tool's command line, with the user read from `$DB_USER`.
fn dump_command(t: &DumpTarget) -> String {
    let (host, port, db) = (shell_quote(t.host), t.port, shell_quote(t.database));
    match t.engine {
        // Plain SQL, restorable with psql; --no-password fails fast instead of prompting.
        Engine::Postgres => format!(
            "pg_dump --host={host} --port={port} --username=\"$DB_USER\" --no-password --format=plain --dbname={db}"
        ),
        // Consistent InnoDB snapshot without locking, row by row, with routines and events.
        Engine::Mariadb | Engine::Mysql => {
            let tool = if t.engine == Engine::Mariadb {
                "mariadb-dump"
            } else {
                "mysqldump"
            };
            format!(
                "{tool} --host={host} --port={port} --user=\"$DB_USER\" --single-transaction --quick --routines --events --triggers -- {db}"
            )
        }
    }
}

fn compressor(c: Compression) -> Option<&'static str> {
    match c {
        Compression::None => None,
        Compression::Gzip => Some("gzip -c"),
        Compression::Zstd => Some("zstd -q -c"),
    }
}

/// The script body for `sh -c SCRIPT dump STAGING_DIR TERMINATION_LOG`.
pub fn dump_script(t: &DumpTarget) -> String {
    let dump = dump_command(t);
    let final_name = dump_file_name(t.compression);
    // With compression the tool's status travels through a file: POSIX sh has no
    // pipefail. The dump runs in the background so that a SIGTERM (deadline,
    // deletion) interrupts `wait` and its trap removes the partial file.
    let run = match compressor(t.compression) {
        None => format!("{dump} >\"$partial\" 2>\"$errfile\" &\nwait $!\nstatus=$?\nzstatus=0"),
        Some(z) => {
            let tool = z.split(' ').next().unwrap_or(z);
            format!(
                "command -v {tool} >/dev/null 2>&1 || fail \"{tool} not found in the dump image\"\n\
                 {{ {dump} 2>\"$errfile\"; echo $? >\"$statusfile\"; }} | {z} >\"$partial\" &\n\
                 wait $!\nzstatus=$?\nstatus=$(cat \"$statusfile\" 2>/dev/null || echo 1)"
            )
        }
    };
    format!(
        r#"set -u
umask 007
staging="$1"
termlog="$2"
dumps="$staging/dumps"
logs="$staging/logs"
partial="$dumps/.partial-{final_name}"
statusfile="$dumps/.partial-status"
errfile="$dumps/.partial-stderr"
{SHELL_HELPERS}
# result OUTCOME LINE [SIZE]: the one-line JSON the operator reads from the termination log.
result() {{
  printf '{{"step":"dump","outcome":"%s","file":"%s","size":%s,"log":"%s"}}\n' "$1" "{final_name}" "${{3:-0}}" "$(json_escape "$2")" >"$termlog" 2>/dev/null || true
}}
# log MESSAGE: appends <date>,<time>,MESSAGE to today's log file.
log() {{
  line="$(date +%Y-%m-%d,%H:%M:%S),$1"
  printf '%s\n' "$line" >>"$logs/${{line%%,*}}.txt"
}}
fail() {{
  rm -f "$dumps"/.partial-*
  log "database dump failed: $1" || true
  result failed "$line"
  exit 1
}}
# Stopped from outside (deadline exceeded, pod deleted): no partial file stays.
trap 'fail "stopped by SIGTERM (deadline exceeded or pod deleted)"' TERM
mkdir -p "$dumps" "$logs" || {{ line="$(date +%Y-%m-%d,%H:%M:%S),database dump failed: cannot create $dumps"; result failed "$line"; exit 1; }}
rm -f "$dumps"/.partial-*
{run}
# A full volume also swallows the tool's stderr, so say it while the partial
# file still holds the space.
full=$(df -P "$dumps" 2>/dev/null | awk 'NR == 2 && $4 == 0 {{ print "; no space left on the staging volume" }}')
if [ "$status" -ne 0 ]; then
  detail=$(first_error)
  fail "dump tool exited with status $status${{detail:+: $detail}}$full"
fi
[ "$zstatus" -eq 0 ] || fail "compressor exited with status $zstatus$full"
[ -s "$partial" ] || fail "dump tool wrote nothing"
sync "$partial" 2>/dev/null || sync
# The dump is whole: from here a SIGTERM waits until it is in place and said.
trap '' TERM
mv -f "$partial" "$dumps/{final_name}" || fail "cannot rename the dump into place"
for old in "$dumps"/datadump.sql*; do
  [ "$old" = "$dumps/{final_name}" ] || rm -f "$old"
done
sync "$dumps" 2>/dev/null || sync
rm -f "$dumps"/.partial-*
size=$(wc -c <"$dumps/{final_name}" | tr -d ' ')
log "database dump completed" || fail "cannot write the log file"
result succeeded "$line" "$size"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(engine: Engine, compression: Compression) -> DumpTarget<'static> {
        DumpTarget {
            engine,
            host: "db.example",
            port: 3306,
            database: "shop's data",
            compression,
        }
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(shell_quote("plain"), "'plain'");
    }

    #[test]
    fn mariadb_uses_safe_flags_and_no_password_arg() {
        let s = dump_script(&target(Engine::Mariadb, Compression::None));
        assert!(s.contains("mariadb-dump --host='db.example' --port=3306"));
        assert!(s.contains("--single-transaction --quick --routines"));
        assert!(s.contains(r"-- 'shop'\''s data'"));
        let cmd = dump_command(&target(Engine::Mariadb, Compression::None));
        assert!(!cmd.contains("--password") && !cmd.contains(" -p"), "{cmd}");
    }

    #[test]
    fn postgres_dumps_plain_sql_without_prompting() {
        let s = dump_script(&target(Engine::Postgres, Compression::None));
        assert!(s.contains("pg_dump --host='db.example'"));
        assert!(s.contains("--no-password --format=plain"));
    }

    #[test]
    fn compression_keeps_the_dump_tools_status() {
        let s = dump_script(&target(Engine::Mysql, Compression::Gzip));
        assert!(s.contains("mysqldump"));
        assert!(s.contains(r#"echo $? >"$statusfile"; } | gzip -c >"$partial" &"#));
        assert!(s.contains(r#"mv -f "$partial" "$dumps/datadump.sql.gz""#));
    }
}
