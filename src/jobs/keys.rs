//! Object key naming: `<prefix>YYYY-MM-DD/datadumpN.sql[.gz|.zst][.age]`,
//! and for a backup of several databases `<prefix><database>/YYYY-MM-DD/…`.

use chrono::NaiveDate;

pub use crate::names::{ROLES_SEGMENT, database_prefix, database_segment, segment_database};

/// `<prefix>YYYY-MM-DD/`: the folder for one date.
pub fn date_folder(prefix: &str, date: NaiveDate) -> String {
    format!("{prefix}{}/", date.format("%Y-%m-%d"))
}

/// The N of `<folder>datadumpN.sql[.gz|.zst][.age]`, or None for any other key.
pub fn dump_index(folder: &str, key: &str) -> Option<u64> {
    let name = key.strip_prefix(folder)?.strip_prefix("datadump")?;
    let digits = name.len() - name.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (n, rest) = name.split_at(digits);
    let rest = rest.strip_suffix(".age").unwrap_or(rest);
    if !matches!(rest, ".sql" | ".sql.gz" | ".sql.zst") || n.is_empty() || n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

/// The suffix of the marker beside an object the upload could not prove
/// (`unproven.rs`): `<key>.unproven`.
pub const UNPROVEN: &str = ".unproven";

/// The dumps' keys `keys` marks unproven.
pub fn marked_unproven<'a>(
    keys: impl Iterator<Item = &'a str>,
) -> std::collections::HashSet<&'a str> {
    keys.filter_map(|k| k.strip_suffix(UNPROVEN)).collect()
}

/// The key after every existing dump of that date: one above the highest index,
/// so a gap (a pruned object) is never filled with a different dump.
pub fn next_object_key<'a>(
    folder: &str,
    existing: impl IntoIterator<Item = &'a str>,
    staged_name: &str,
) -> String {
    // A marker counts as its object: were the object gone, its index is
    // still not taken again (a new dump under it would read as unproven).
    let next = existing
        .into_iter()
        .filter_map(|k| dump_index(folder, k.strip_suffix(UNPROVEN).unwrap_or(k)))
        .max()
        .unwrap_or(0)
        + 1;
    let ext = staged_name.strip_prefix("datadump").unwrap_or(".sql");
    format!("{folder}datadump{next}{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()
    }

    #[test]
    fn first_dump_of_a_date_is_one() {
        let folder = date_folder("", day());
        assert_eq!(folder, "2026-11-25/");
        assert_eq!(
            next_object_key(&folder, [], "datadump.sql"),
            "2026-11-25/datadump1.sql"
        );
    }

    #[test]
    fn next_index_follows_the_highest_whatever_the_order_or_gaps() {
        let folder = date_folder("shop/orders/", day());
        let existing = [
            "shop/orders/2026-11-25/datadump2.sql",
            "shop/orders/2026-11-25/datadump10.sql.gz",
            "shop/orders/2026-11-25/datadump3.sql",
        ];
        assert_eq!(
            next_object_key(&folder, existing, "datadump.sql.gz"),
            "shop/orders/2026-11-25/datadump11.sql.gz"
        );
    }

    #[test]
    fn foreign_keys_do_not_count() {
        let folder = date_folder("p/", day());
        for key in [
            "p/2026-11-25/notes.txt",
            "p/2026-11-25/datadump.sql",
            "p/2026-11-25/datadump07.sql",
            "p/2026-11-25/datadump5.sql.bak",
            "p/2026-11-26/datadump9.sql",
            "q/2026-11-25/datadump9.sql",
        ] {
            assert_eq!(dump_index(&folder, key), None, "{key}");
        }
        assert_eq!(
            dump_index(&folder, "p/2026-11-25/datadump12.sql.zst"),
            Some(12)
        );
        assert_eq!(
            dump_index(&folder, "p/2026-11-25/datadump13.sql.zst.age"),
            Some(13)
        );
        assert_eq!(dump_index(&folder, "p/2026-11-25/datadump14.age"), None);
    }

    #[test]
    fn an_unproven_marker_keeps_its_index_taken() {
        let folder = date_folder("", day());
        let existing = [
            "2026-11-25/datadump1.sql",
            "2026-11-25/datadump2.sql.unproven",
        ];
        assert_eq!(
            next_object_key(&folder, existing, "datadump.sql"),
            "2026-11-25/datadump3.sql"
        );
    }

    #[test]
    fn an_encrypted_dump_keeps_its_age_suffix() {
        let folder = date_folder("", day());
        assert_eq!(
            next_object_key(
                &folder,
                ["2026-11-25/datadump1.sql.gz"],
                "datadump.sql.gz.age"
            ),
            "2026-11-25/datadump2.sql.gz.age"
        );
    }
}
