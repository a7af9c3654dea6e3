//! Running the database's own clients from the dump and load steps: an argv,
//! never a shell; names travel as values (SQL-quoted or in a connection
//! string's quotes), credentials in the environment the pod gave us.

use crate::api::Engine;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use crate::names::USER_ENV;

/// Where a database is, and who logs in.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub engine: Engine,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Handed to each client in its environment; `None`: the clients read
    /// the one the pod's environment holds (from the credentials Secret).
    pub password: Option<Hidden>,
}

/// A password, key or identity that never shows in a log or a message.
#[derive(Clone, PartialEq)]
pub struct Hidden(pub String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hidden(…)")
    }
}

impl std::str::FromStr for Hidden {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Hidden(s.to_string()))
    }
}

impl Server {
    /// The server of the step's arguments, with the user from `DB_USER`.
    pub fn from_env(engine: Engine, host: &str, port: u16) -> Result<Server, String> {
        let user = std::env::var(USER_ENV)
            .map_err(|_| format!("{USER_ENV} is not set (the credentials Secret's user)"))?;
        Ok(Server {
            engine,
            host: host.to_string(),
            port,
            user,
            password: None,
        })
    }

    /// A command for one of the engine's tools, with our password if we
    /// hold one, and without the store's secrets: a client runs what its
    /// input says (`\!` shell commands too), and a restore's input is a dump.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for secret in STORE_SECRETS {
            cmd.env_remove(secret);
        }
        if let Some(Hidden(password)) = &self.password {
            cmd.env(crate::names::password_env(self.engine), password);
        }
        cmd
    }

    fn mysql_family(&self, tool: &str) -> (String, Vec<String>) {
        let program = match (self.engine, tool) {
            (Engine::Mysql, "dump") => "mysqldump",
            (Engine::Mysql, _) => "mysql",
            (_, "dump") => "mariadb-dump",
            _ => "mariadb",
        };
        let args = vec![
            format!("--host={}", self.host),
            format!("--port={}", self.port),
            format!("--user={}", self.user),
            // Whatever the image's locale: names and text travel as UTF-8.
            "--default-character-set=utf8mb4".to_string(),
        ];
        (program.to_string(), args)
    }

    /// The dump tool's argv for `database`: plain SQL a different role can load.
    pub fn dump_argv(&self, database: &str) -> (String, Vec<String>) {
        match self.engine {
            Engine::Postgres => (
                "pg_dump".into(),
                vec![
                    "--no-password".into(),
                    "--format=plain".into(),
                    // Objects belong to whoever restores; grants are the target's business.
                    "--no-owner".into(),
                    "--no-privileges".into(),
                    format!("--dbname={}", self.conninfo(database)),
                ],
            ),
            Engine::Mariadb | Engine::Mysql => {
                let (program, mut args) = self.mysql_family("dump");
                args.extend(
                    [
                        // A consistent InnoDB snapshot without locking, row by row.
                        "--single-transaction",
                        "--quick",
                        "--routines",
                        "--events",
                        "--triggers",
                        "--",
                    ]
                    .map(String::from),
                );
                args.push(database.to_string());
                (program, args)
            }
        }
    }

    /// postgres: the roles (and tablespaces) as SQL, `pg_dumpall
    /// --globals-only`, without their password hashes unless `passwords`.
    pub fn roles_argv(&self, passwords: bool) -> (String, Vec<String>) {
        let mut args = vec!["--no-password".to_string(), "--globals-only".to_string()];
        if !passwords {
            args.push("--no-role-passwords".into());
        }
        args.push(format!("--dbname={}", self.conninfo("postgres")));
        ("pg_dumpall".into(), args)
    }

    /// The SQL client's argv, connected to `database`, reading SQL from
    /// stdin or from further arguments, stopping at the first error.
    pub fn client_argv(&self, database: &str) -> (String, Vec<String>) {
        match self.engine {
            Engine::Postgres => (
                "psql".into(),
                [
                    "--no-password",
                    "--no-psqlrc",
                    "--quiet",
                    "--no-align",
                    "--tuples-only",
                    "--set=ON_ERROR_STOP=1",
                ]
                .map(String::from)
                .into_iter()
                .chain([format!("--dbname={}", self.conninfo(database))])
                .collect(),
            ),
            Engine::Mariadb | Engine::Mysql => {
                let (program, mut args) = self.mysql_family("client");
                args.extend(["--batch", "--skip-column-names"].map(String::from));
                if !database.is_empty() {
                    args.push(format!("--database={database}"));
                }
                (program, args)
            }
        }
    }

    /// A libpq connection string: every value quoted, so a name with `=`,
    /// spaces or quotes is a name, never more parameters.
    pub fn conninfo(&self, database: &str) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', r"\\").replace('\'', r"\'"));
        format!(
            "host={} port={} user={} dbname={} client_encoding=UTF8",
            quote(&self.host),
            self.port,
            quote(&self.user),
            quote(database)
        )
    }

    /// Runs one SQL statement against `database` ("" for the server) and
    /// returns its output, or the client's first error line.
    pub fn query(&self, database: &str, sql: &str) -> Result<String, String> {
        let (program, mut args) = self.client_argv(database);
        args.push(match self.engine {
            Engine::Postgres => format!("--command={sql}"),
            Engine::Mariadb | Engine::Mysql => format!("--execute={sql}"),
        });
        let out = self
            .command(&program)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| cannot_run(&program, &e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(failed(&program, out.status, &out.stderr))
        }
    }
}

/// The store's secrets a step that downloads may hold in its environment.
const STORE_SECRETS: [&str; 5] = [
    crate::names::ACCESS_KEY_ENV,
    crate::names::SECRET_KEY_ENV,
    "AWS_SESSION_TOKEN",
    crate::names::SSE_CUSTOMER_KEY_ENV,
    crate::names::AGE_IDENTITY_ENV,
];

/// Makes this process undumpable: a database client it starts runs as the
/// same user, and must not read the store's secrets from our
/// `/proc/<pid>/environ` or memory.
pub fn keep_secrets_from_the_client() {
    // SAFETY: prctl(PR_SET_DUMPABLE) only changes this process's attributes.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// What starting `program` failed with, saying where to look.
pub fn cannot_run(program: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("{program} not found in the database image")
    } else {
        format!("cannot run {program}: {e}")
    }
}

/// How a client ended, with its first error line.
pub fn failed(program: &str, status: ExitStatus, stderr: &[u8]) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended abnormally".to_string(),
    };
    let detail = first_error(stderr);
    let tool = if program.contains("dump") {
        "dump tool"
    } else {
        program
    };
    if detail.is_empty() {
        format!("{tool} {how}")
    } else {
        format!("{tool} {how}: {detail}")
    }
}

/// The client's line that names the cause: the first with "error" in it,
/// else the last non-empty one (later lines are often hints).
pub fn first_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    lines
        .clone()
        .find(|l| l.to_ascii_lowercase().contains("error"))
        .or_else(|| lines.next_back())
        .unwrap_or_default()
        .chars()
        .take(1000)
        .collect()
}

/// Reads a child's stderr on a thread (it must never fill and block the
/// child), keeping the first 64 KiB.
pub fn collect_stderr(child: &mut Child) -> JoinHandle<Vec<u8>> {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut kept = vec![];
        if let Some(mut s) = stderr {
            let mut buf = [0u8; 8192];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = (64 * 1024usize).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        kept
    })
}

/// A MariaDB/MySQL identifier in backquotes.
pub(crate) fn my_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A MariaDB/MySQL string literal (backslashes escape there).
pub(crate) fn my_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A PostgreSQL identifier in double quotes.
pub(crate) fn pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A PostgreSQL string literal.
pub(crate) fn pg_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_database_client_gets_none_of_the_store_secrets() {
        let server = Server {
            engine: Engine::Postgres,
            host: "db".into(),
            port: 5432,
            user: "u".into(),
            password: Some(Hidden("pw".into())),
        };
        let cmd = server.command("psql");
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for secret in STORE_SECRETS {
            assert!(
                removed.iter().any(|r| r == secret),
                "{secret} in {removed:?}"
            );
        }
    }

    use super::*;

    fn server(engine: Engine) -> Server {
        Server {
            engine,
            host: "db.example".into(),
            port: 3306,
            user: "o'brien".into(),
            password: None,
        }
    }

    #[test]
    fn postgres_names_are_quoted_values_in_the_connection_string() {
        let s = server(Engine::Postgres);
        assert_eq!(
            s.conninfo(r"x=y 'a'\b"),
            r"host='db.example' port=3306 user='o\'brien' dbname='x=y \'a\'\\b' client_encoding=UTF8"
        );
        let (program, args) = s.dump_argv("-dash");
        assert_eq!(program, "pg_dump");
        assert!(args.contains(&"--no-owner".to_string()));
        assert!(args.last().unwrap().contains("dbname='-dash'"));
    }

    #[test]
    fn mariadb_dumps_the_name_after_the_options_end_and_sets_the_charset() {
        let (program, args) = server(Engine::Mariadb).dump_argv("-dash");
        assert_eq!(program, "mariadb-dump");
        assert_eq!(&args[args.len() - 2..], ["--", "-dash"]);
        assert!(args.contains(&"--default-character-set=utf8mb4".into()));
        assert!(args.contains(&"--user=o'brien".into()));
        let (program, args) = server(Engine::Mysql).client_argv("a$(x)b");
        assert_eq!(program, "mysql");
        assert_eq!(args.last().unwrap(), "--database=a$(x)b");
    }

    #[test]
    fn no_password_on_any_command_line() {
        for engine in [Engine::Postgres, Engine::Mariadb, Engine::Mysql] {
            let s = server(engine);
            for (_, args) in [s.dump_argv("d"), s.client_argv("d")] {
                assert!(
                    args.iter()
                        .all(|a| !a.starts_with("--password") && a != "-p"),
                    "{args:?}"
                );
            }
        }
    }

    #[test]
    fn the_first_error_line_names_the_cause() {
        assert_eq!(
            first_error(b"hint: x\nmariadb-dump: Got error: 1045: Access denied\nmore\n"),
            "mariadb-dump: Got error: 1045: Access denied"
        );
        assert_eq!(first_error(b"\nsomething odd\n\n"), "something odd");
        assert_eq!(first_error(b""), "");
    }
}
