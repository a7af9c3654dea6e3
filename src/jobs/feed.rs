//! Feeding SQL to a database's client as it arrives, for a restore that
//! keeps no copy of its dump, and for the drill.
//!
//! What commits is written only after the whole source was read (which a
//! download's source allows only once it checked out): PostgreSQL loads
//! between a `BEGIN` we write first and a `COMMIT` we write last, so an input
//! that ends any other way (our failure, our death) rolls back. A source
//! that fails midway kills the client before its input ends; MariaDB/MySQL
//! work of such a load is discarded with the shadow database it went into,
//! or removed from the fresh target.

use super::tool::{self, Server};
use crate::api::Engine;
use std::borrow::Cow;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::Stdio;

/// Why a feed stopped.
#[derive(Debug)]
pub enum Stopped {
    /// The client failed: its first error line.
    Client(String),
    /// Reading the SQL failed (a download that did not check out, a corrupt
    /// stream); the client was killed before its input ended.
    Source(std::io::Error),
    /// The source held no SQL at all: nothing is committed (an empty dump
    /// would otherwise replace a target with nothing).
    Empty,
}

/// What the client gets around the source: `begin` first, `commit` only
/// after all of it (for PostgreSQL, `BEGIN` and `COMMIT`).
#[derive(Clone, Copy, Default)]
pub struct Around<'a> {
    pub begin: &'a str,
    pub commit: &'a str,
}

impl Around<'_> {
    /// One PostgreSQL transaction, opened by `begin` (ending in `;`).
    pub fn transaction(begin: &str) -> Around<'_> {
        Around {
            begin,
            commit: "\nCOMMIT;\n",
        }
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Client(e) => f.write_str(e),
            Stopped::Source(e) => write!(f, "cannot read the dump: {e}"),
            Stopped::Empty => f.write_str("the dump holds no SQL"),
        }
    }
}

/// Runs the SQL client on `db` with `extra` arguments, feeding it `sql`
/// (MariaDB/MySQL without `DEFINER` clauses) within `around` if given.
pub fn run_client(
    server: &Server,
    db: &str,
    extra: &[String],
    sql: Option<(&mut dyn Read, Around)>,
) -> Result<(), Stopped> {
    let (program, mut args) = server.client_argv(db);
    args.extend(extra.iter().cloned());
    let mut child = server
        .command(&program)
        .args(&args)
        .stdin(if sql.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Stopped::Client(tool::cannot_run(&program, &e)))?;
    let stderr = tool::collect_stderr(&mut child);
    let mut stdin = child.stdin.take();
    let fed = match (sql, &mut stdin) {
        (Some((sql, around)), Some(stdin)) => copy(sql, stdin, server.engine, around),
        _ => Ok(()),
    };
    if fed.is_err() {
        // Before its input ends: a client at end of input commits.
        let _ = child.kill();
    }
    drop(stdin);
    let status = child.wait().map_err(|e| Stopped::Client(e.to_string()))?;
    let stderr = stderr.join().unwrap_or_default();
    match fed {
        Err(e) if e.get_ref().is_some_and(|e| e.is::<NoSql>()) => return Err(Stopped::Empty),
        other => other.map_err(Stopped::Source)?,
    }
    if !status.success() {
        return Err(Stopped::Client(tool::failed(&program, status, &stderr)));
    }
    Ok(())
}

/// The source's end came before any SQL.
#[derive(Debug)]
struct NoSql;

impl std::fmt::Display for NoSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the dump holds no SQL")
    }
}

impl std::error::Error for NoSql {}

/// Copies all of `from` into `to` within `around`, line by line without
/// definers for MariaDB/MySQL. A client that stopped reading is no error
/// here (its exit status says why); a source that failed, or held nothing,
/// is, and leaves nothing buffered to reach the client after it.
fn copy(
    from: &mut dyn Read,
    to: &mut impl Write,
    engine: Engine,
    around: Around,
) -> std::io::Result<()> {
    let mut from = Counted { inner: from, n: 0 };
    let mut to = BufWriter::with_capacity(1 << 20, to);
    let written = write_to(&mut to, around.begin.as_bytes()).and_then(|_| match engine {
        Engine::Postgres => copy_plain(&mut from, &mut to),
        Engine::Mariadb | Engine::Mysql => copy_without_definers(&mut from, &mut to),
    });
    let written = written.and_then(|()| match from.n {
        0 => Err(std::io::Error::other(NoSql)),
        _ => write_to(&mut to, around.commit.as_bytes()).map(|_| ()),
    });
    let written = written.and_then(|()| match to.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    });
    if written.is_err() {
        // Dropping the writer would flush what it holds.
        let _ = to.into_parts();
    }
    written
}

/// A source that counts what it gave.
struct Counted<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Source errors pass as they are; a write error means the client stopped.
enum Copied {
    More,
    ClientGone,
}

fn write_to(to: &mut impl Write, bytes: &[u8]) -> std::io::Result<Copied> {
    match to.write_all(bytes) {
        Ok(()) => Ok(Copied::More),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Copied::ClientGone),
        Err(e) => Err(e),
    }
}

fn copy_plain(from: &mut dyn Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 17];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Copied::ClientGone = write_to(to, &buf[..n])? {
            return Ok(());
        }
    }
}

fn copy_without_definers(from: &mut dyn Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut from = BufReader::with_capacity(1 << 20, from);
    let mut line = Vec::new();
    loop {
        line.clear();
        if from.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if let Copied::ClientGone = write_to(to, &strip_definer(&line))? {
            return Ok(());
        }
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

    /// A source that fails after its first bytes.
    struct Failing(bool);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if std::mem::replace(&mut self.0, true) {
                return Err(std::io::Error::other("checksum mismatch"));
            }
            buf[..7].copy_from_slice(b"SELECT ");
            Ok(7)
        }
    }

    #[test]
    fn a_failing_source_reaches_the_client_with_nothing_after_it() {
        for engine in [Engine::Postgres, Engine::Mariadb] {
            let mut to = vec![];
            let around = Around::transaction("BEGIN;\n");
            let e = copy(&mut Failing(false), &mut to, engine, around).unwrap_err();
            assert_eq!(e.to_string(), "checksum mismatch");
            // What came before the failure stays in the buffer, unsent.
            assert!(to.is_empty(), "{engine:?}: {to:?}");
        }
    }

    #[test]
    fn the_commit_comes_only_after_all_of_a_source_that_held_sql() {
        let around = Around::transaction("BEGIN;\n");
        let mut to = vec![];
        copy(&mut &b"SELECT 1;\n"[..], &mut to, Engine::Postgres, around).unwrap();
        assert_eq!(to, b"BEGIN;\nSELECT 1;\n\nCOMMIT;\n");
        let mut to = vec![];
        let e = copy(&mut &b""[..], &mut to, Engine::Postgres, around).unwrap_err();
        assert!(e.get_ref().unwrap().is::<NoSql>(), "{e}");
        assert!(to.is_empty(), "{to:?}");
    }
}
