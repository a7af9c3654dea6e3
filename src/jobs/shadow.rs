//! MariaDB/MySQL overwrite restores without a copy of the target: the dump
//! loads into a shadow database beside the target, and only once the load
//! succeeded and the whole object checked out does the shadow replace the
//! target's content. Its tables move in with one atomic `RENAME TABLE`
//! (the target's move out to a trash database in the same statement); its
//! views, triggers, routines and events are recreated in the target, since
//! those cannot move between databases. A swap that fails is undone, so the
//! target is either as it was or the dump's.

use super::feed::{Around, run_client, strip_definer};
use super::tool::{Server, my_ident, my_string};

/// Applications' locks may hold a swap up; it gives up rather than wait for
/// hours (the server's default) and be killed halfway by the Job's deadline.
const LOCK_WAIT: &str = "SET SESSION lock_wait_timeout = 60;\n";

/// The shadow database an overwrite restore of `db` loads into.
pub fn shadow_name(db: &str) -> String {
    beside(db, "__dbbackup_new")
}

/// Where the target's tables go during the swap, dropped after it.
fn trash_name(db: &str) -> String {
    beside(db, "__dbbackup_old")
}

/// `db` with `suffix`, within the 64 characters a database name may have.
fn beside(db: &str, suffix: &str) -> String {
    let keep = 64 - suffix.chars().count();
    db.chars().take(keep).chain(suffix.chars()).collect()
}

/// (Re)creates the empty shadow database of `db`, with the target's
/// character set and collation.
pub fn create_shadow(server: &Server, db: &str) -> Result<(), String> {
    let shadow = my_ident(&shadow_name(db));
    let charset = server.query(
        "",
        &format!(
            "SELECT CONCAT('CHARACTER SET ', default_character_set_name, ' COLLATE ', default_collation_name) FROM information_schema.schemata WHERE schema_name = {}",
            my_string(db)
        ),
    )?;
    server
        .query(
            "",
            &format!("DROP DATABASE IF EXISTS {shadow}; CREATE DATABASE {shadow} {charset}"),
        )
        .map(|_| ())
}

pub fn drop_shadow(server: &Server, db: &str) -> Result<(), String> {
    drop_database(server, &shadow_name(db))
}

fn drop_database(server: &Server, name: &str) -> Result<(), String> {
    server
        .query("", &format!("DROP DATABASE IF EXISTS {}", my_ident(name)))
        .map(|_| ())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    View,
    Trigger,
    Procedure,
    Function,
    Event,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::View => "VIEW",
            Kind::Trigger => "TRIGGER",
            Kind::Procedure => "PROCEDURE",
            Kind::Function => "FUNCTION",
            Kind::Event => "EVENT",
        }
    }

    /// The columns of `SHOW CREATE <kind>`: the statement, and the session
    /// settings it was created under that change what it means. (Its
    /// character set is not among them: the client reads it back, and
    /// sends it, as UTF-8.)
    fn columns(self) -> (usize, &'static [(&'static str, usize)]) {
        match self {
            Kind::View => (1, &[]),
            Kind::Trigger | Kind::Procedure | Kind::Function => (2, &[("sql_mode", 1)]),
            Kind::Event => (3, &[("sql_mode", 1), ("time_zone", 2)]),
        }
    }
}

/// A view, trigger, routine or event, as `SHOW CREATE` gives it.
#[derive(Clone, Debug)]
struct Definition {
    kind: Kind,
    name: String,
    /// `SET SESSION …` of the settings it was created under.
    session: String,
    create: String,
}

/// What a database holds: the tables that move, and the rest, recreated.
struct Objects {
    tables: Vec<String>,
    others: Vec<Definition>,
}

fn objects(server: &Server, db: &str) -> Result<Objects, String> {
    let schema = my_string(db);
    let names = |sql: String| -> Result<Vec<String>, String> {
        let out = server.query("", &sql)?;
        Ok(out.lines().map(unescape).collect())
    };
    let tables = names(format!(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = {schema} AND table_type <> 'VIEW'"
    ))?;
    let mut others = vec![];
    let mut add = |kind: Kind, found: Vec<String>| -> Result<(), String> {
        for name in found {
            others.push(definition(server, db, kind, name)?);
        }
        Ok(())
    };
    add(
        Kind::Procedure,
        names(format!(
            "SELECT routine_name FROM information_schema.routines WHERE routine_schema = {schema} AND routine_type = 'PROCEDURE'"
        ))?,
    )?;
    add(
        Kind::Function,
        names(format!(
            "SELECT routine_name FROM information_schema.routines WHERE routine_schema = {schema} AND routine_type = 'FUNCTION'"
        ))?,
    )?;
    add(
        Kind::View,
        names(format!(
            "SELECT table_name FROM information_schema.views WHERE table_schema = {schema}"
        ))?,
    )?;
    add(
        Kind::Trigger,
        names(format!(
            "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = {schema} ORDER BY event_object_table, action_order"
        ))?,
    )?;
    add(
        Kind::Event,
        names(format!(
            "SELECT event_name FROM information_schema.events WHERE event_schema = {schema}"
        ))?,
    )?;
    Ok(Objects { tables, others })
}

fn definition(server: &Server, db: &str, kind: Kind, name: String) -> Result<Definition, String> {
    let out = server.query(
        "",
        &format!(
            "SHOW CREATE {} {}.{}",
            kind.word(),
            my_ident(db),
            my_ident(&name)
        ),
    )?;
    let fields: Vec<String> = out.split('\t').map(unescape).collect();
    let (statement, settings) = kind.columns();
    // A role that may not read a body gets NULL: nothing to recreate from.
    let create = fields
        .get(statement)
        .filter(|s| !s.is_empty() && *s != "NULL")
        .ok_or_else(|| format!("cannot read the definition of {} {name}", kind.word()))?;
    let session: String = settings
        .iter()
        .filter_map(|(setting, column)| {
            let value = fields.get(*column)?;
            Some(format!("SET SESSION {setting} = {};\n", my_string(value)))
        })
        .collect();
    Ok(Definition {
        kind,
        session,
        create: String::from_utf8_lossy(&strip_definer(create.as_bytes())).into_owned(),
        name,
    })
}

/// A field of the client's `--batch` output as it was (it escapes
/// newlines, tabs, backslashes and NULs).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn drop_all(server: &Server, db: &str, defs: &[Definition]) -> Result<(), String> {
    if defs.is_empty() {
        return Ok(());
    }
    let sql: Vec<String> = defs
        .iter()
        .map(|d| format!("DROP {} IF EXISTS {}", d.kind.word(), my_ident(&d.name)))
        .collect();
    server
        .query(db, &format!("{LOCK_WAIT}{}", sql.join("; ")))
        .map(|_| ())
}

/// Creates `defs` in `db`, their names in `from` (a view's definition names
/// its database) taken as `db`'s. Views may use views: those that fail wait
/// for the others, until a round makes no progress.
fn create_all(server: &Server, db: &str, defs: &[Definition], from: &str) -> Result<(), String> {
    let qualified = format!("{}.", my_ident(from));
    let mut pending: Vec<&Definition> = defs.iter().collect();
    while !pending.is_empty() {
        let mut failed = vec![];
        let mut last = String::new();
        for d in &pending {
            let create = match d.kind {
                Kind::View => d.create.replace(&qualified, ""),
                _ => d.create.clone(),
            };
            let sql = format!(
                "{LOCK_WAIT}{}DELIMITER ;;\n{create};;\nDELIMITER ;\n",
                d.session
            );
            let script = (
                &mut sql.as_bytes() as &mut dyn std::io::Read,
                Around::default(),
            );
            if let Err(e) = run_client(server, db, &[], Some(script)) {
                last = format!("cannot recreate {} {}: {e}", d.kind.word(), d.name);
                failed.push(*d);
            }
        }
        if failed.len() == pending.len() {
            return Err(last);
        }
        pending = failed;
    }
    Ok(())
}

/// `RENAME TABLE` of each table of `moves` (from, to, name), in one
/// statement: all move, or none.
fn rename(server: &Server, moves: &[(&str, &str, &[String])]) -> Result<(), String> {
    let pairs: Vec<String> = moves
        .iter()
        .flat_map(|(from, to, tables)| {
            tables.iter().map(move |t| {
                format!(
                    "{}.{} TO {}.{}",
                    my_ident(from),
                    my_ident(t),
                    my_ident(to),
                    my_ident(t)
                )
            })
        })
        .collect();
    if pairs.is_empty() {
        return Ok(());
    }
    server
        .query(
            "",
            &format!(
                "{LOCK_WAIT}SET FOREIGN_KEY_CHECKS=0; RENAME TABLE {}",
                pairs.join(", ")
            ),
        )
        .map(|_| ())
}

/// What a database holds before a load, to tell what the load added.
pub struct Held(Objects);

pub fn held(server: &Server, db: &str) -> Result<Held, String> {
    objects(server, db).map(Held)
}

/// Drops what `db` holds beyond `before` (a fresh target whose load failed:
/// it had no tables, and keeps the routines and events it had).
pub fn remove_all_but(server: &Server, db: &str, before: &Held) -> Result<(), String> {
    let now = objects(server, db)?;
    let added: Vec<Definition> = now
        .others
        .into_iter()
        .filter(|d| {
            !before
                .0
                .others
                .iter()
                .any(|b| b.kind == d.kind && b.name == d.name)
        })
        .collect();
    drop_all(server, db, &added)?;
    if now.tables.is_empty() {
        return Ok(());
    }
    let tables: Vec<String> = now.tables.iter().map(|t| my_ident(t)).collect();
    server
        .query(
            db,
            &format!(
                "SET FOREIGN_KEY_CHECKS=0; DROP TABLE IF EXISTS {}",
                tables.join(", ")
            ),
        )
        .map(|_| ())
}

/// Replaces the content of `db` with its loaded shadow's, or leaves it as it
/// was and says why.
pub fn swap(server: &Server, db: &str) -> Result<(), String> {
    let (shadow, trash) = (shadow_name(db), trash_name(db));
    let old = objects(server, db).map_err(|e| format!("cannot read the target: {e}"))?;
    let new = objects(server, &shadow).map_err(|e| format!("cannot read the shadow: {e}"))?;
    // One left behind holds a target's tables an undo could not put back.
    server
        .query("", &format!("CREATE DATABASE {}", my_ident(&trash)))
        .map_err(|e| {
            format!("cannot create the database {trash} the target's tables move to (if it exists, an earlier overwrite left the target's former tables there: move them back or drop it): {e}")
        })?;
    // Triggers cannot move between databases with their tables.
    let triggers: Vec<Definition> = new
        .others
        .iter()
        .filter(|d| d.kind == Kind::Trigger)
        .cloned()
        .collect();
    drop_all(server, &shadow, &triggers)?;
    let swapped = drop_all(server, db, &old.others).and_then(|()| {
        rename(
            server,
            &[
                (db, trash.as_str(), old.tables.as_slice()),
                (shadow.as_str(), db, new.tables.as_slice()),
            ],
        )
    });
    let done = swapped
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|_| create_all(server, db, &new.others, &shadow));
    let Err(e) = done else {
        let _ = drop_database(server, &trash);
        let _ = drop_database(server, &shadow);
        return Ok(());
    };
    let undone = undo(server, db, &old, &new, swapped.is_ok());
    let _ = drop_database(server, &shadow);
    match undone {
        Ok(()) => {
            let _ = drop_database(server, &trash);
            Err(format!("{e}; the target was put back as it was"))
        }
        Err(u) => Err(format!(
            "{e}; putting the target back failed too ({u}): its tables are in {trash}"
        )),
    }
}

/// Puts the target back: what was created of the new is dropped, the
/// tables move back if they moved, and the old definitions are recreated.
fn undo(
    server: &Server,
    db: &str,
    old: &Objects,
    new: &Objects,
    renamed: bool,
) -> Result<(), String> {
    let (shadow, trash) = (shadow_name(db), trash_name(db));
    let created = objects(server, db)?;
    drop_all(server, db, &created.others)?;
    if renamed {
        rename(
            server,
            &[
                (db, shadow.as_str(), new.tables.as_slice()),
                (trash.as_str(), db, old.tables.as_slice()),
            ],
        )?;
    }
    create_all(server, db, &old.others, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_names_stay_within_64_characters() {
        assert_eq!(shadow_name("shop"), "shop__dbbackup_new");
        let long = "d".repeat(64);
        assert_eq!(shadow_name(&long).chars().count(), 64);
        assert_ne!(shadow_name(&long), trash_name(&long));
        assert!(shadow_name(&long).ends_with("__dbbackup_new"));
    }

    #[test]
    fn batch_fields_are_unescaped() {
        assert_eq!(
            unescape(r"BEGIN\n\tSELECT 'a\\b';\nEND"),
            "BEGIN\n\tSELECT 'a\\b';\nEND"
        );
    }
}
