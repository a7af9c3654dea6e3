//! Which uploaded dumps a retention policy lets go.
//!
//! Only keys of our own naming under the resource's prefix count
//! (`<prefix>YYYY-MM-DD/datadumpN.sql[.gz|.zst][.age]`); anything else in the bucket
//! is never a candidate. A dump is kept when any rule keeps it, and the newest
//! dump is kept whatever the rules say, so a policy can never empty the bucket.

use super::keys;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;

/// What to keep. Both unset keeps everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the newest N dumps.
    pub keep_last: Option<usize>,
    /// Keep dumps younger than this.
    pub max_age: Option<Duration>,
}

impl Policy {
    pub fn is_set(&self) -> bool {
        self.keep_last.is_some() || self.max_age.is_some()
    }
}

/// An object as listed: its key and when the store last modified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub last_modified: Option<DateTime<Utc>>,
}

/// The date and index of one of our dumps under `prefix`, or None for any other key.
pub fn dump_position(prefix: &str, key: &str) -> Option<(NaiveDate, u64)> {
    let rest = key.strip_prefix(prefix)?;
    let (date, _) = rest.split_once('/')?;
    if date.len() != 10 {
        return None;
    }
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let index = keys::dump_index(&keys::date_folder(prefix, date), key)?;
    Some((date, index))
}

/// Our dumps under `prefix`, newest first (by date, then index).
pub fn newest_first<'a>(prefix: &str, objects: &'a [Listed]) -> Vec<(&'a Listed, NaiveDate)> {
    let mut ours: Vec<_> = objects
        .iter()
        .filter_map(|o| dump_position(prefix, &o.key).map(|p| (o, p)))
        .collect();
    ours.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.key.cmp(&a.0.key)));
    ours.into_iter().map(|(o, (date, _))| (o, date)).collect()
}

/// When a dump was taken, at the latest: the end of its key's date (in the
/// resource's zone), or the upload time if earlier. Ages counted from this
/// never exceed the real age, so no dump goes early.
fn taken_by(o: &Listed, date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let end_of_day = date
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|t| t.and_local_timezone(tz).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    o.last_modified.map_or(end_of_day, |m| m.min(end_of_day))
}

/// The keys `policy` lets go, oldest first. The keys in `keep` (the dump just
/// uploaded, the newest one that passed its restore drill) and the newest
/// dump are never among them.
pub fn to_prune(
    prefix: &str,
    objects: &[Listed],
    policy: Policy,
    now: DateTime<Utc>,
    tz: Tz,
    keep: &[&str],
) -> Vec<String> {
    if !policy.is_set() {
        return vec![];
    }
    let mut prune: Vec<String> = newest_first(prefix, objects)
        .into_iter()
        .enumerate()
        .filter(|(rank, (o, date))| {
            let kept_by_count = policy.keep_last.is_some_and(|n| *rank < n);
            let kept_by_age = policy
                .max_age
                .is_some_and(|age| now - taken_by(o, *date, tz) < age);
            *rank > 0 && !keep.contains(&o.key.as_str()) && !kept_by_count && !kept_by_age
        })
        .map(|(_, (o, _))| o.key.clone())
        .collect();
    prune.reverse();
    prune
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn listed(key: &str, modified: Option<DateTime<Utc>>) -> Listed {
        Listed {
            key: key.into(),
            last_modified: modified,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    /// Five dumps over four days, plus keys that are not ours.
    fn bucket() -> Vec<Listed> {
        [
            "p/2026-11-21/datadump1.sql",
            "p/2026-11-23/datadump1.sql",
            "p/2026-11-23/datadump2.sql.gz",
            "p/2026-11-24/datadump1.sql",
            "p/2026-11-25/datadump1.sql",
            "p/2026-11-20/notes.txt",
            "p/2026-11-19/datadump1.sql.bak",
            "p/old/datadump1.sql",
            "q/2026-11-01/datadump1.sql",
            "p/x/2026-11-01/datadump1.sql",
        ]
        .iter()
        .map(|k| listed(k, None))
        .collect()
    }

    #[test]
    fn only_our_keys_under_the_prefix_count_newest_first() {
        let objects = bucket();
        let order: Vec<&str> = newest_first("p/", &objects)
            .iter()
            .map(|(o, _)| o.key.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "p/2026-11-25/datadump1.sql",
                "p/2026-11-24/datadump1.sql",
                "p/2026-11-23/datadump2.sql.gz",
                "p/2026-11-23/datadump1.sql",
                "p/2026-11-21/datadump1.sql",
            ]
        );
        // The original layout (empty prefix) sees no resource's prefixed keys.
        assert!(newest_first("", &objects).is_empty());
    }

    #[test]
    fn keep_last_leaves_exactly_the_newest_n() {
        let policy = Policy {
            keep_last: Some(3),
            max_age: None,
        };
        let keep = "p/2026-11-25/datadump1.sql";
        let prune = to_prune("p/", &bucket(), policy, now(), chrono_tz::UTC, &[keep]);
        assert_eq!(
            prune,
            ["p/2026-11-21/datadump1.sql", "p/2026-11-23/datadump1.sql"]
        );
    }

    #[test]
    fn max_age_counts_from_the_end_of_the_keys_date() {
        let policy = Policy {
            keep_last: None,
            max_age: Some(Duration::days(2)),
        };
        // 11-23 ends at 11-24 00:00, 36 h before noon on 11-25: kept.
        let prune = to_prune("p/", &bucket(), policy, now(), chrono_tz::UTC, &[]);
        assert_eq!(prune, ["p/2026-11-21/datadump1.sql"]);
        // An upload time earlier than the date's end counts instead.
        let mut objects = bucket();
        objects[3].last_modified = Some(Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap());
        let prune = to_prune("p/", &objects, policy, now(), chrono_tz::UTC, &[]);
        assert_eq!(
            prune,
            ["p/2026-11-21/datadump1.sql", "p/2026-11-24/datadump1.sql"]
        );
    }

    #[test]
    fn the_newest_and_the_just_uploaded_dump_always_stay() {
        let policy = Policy {
            keep_last: None,
            max_age: Some(Duration::minutes(1)),
        };
        let objects = bucket();
        let later = now() + Duration::days(30);
        let prune = to_prune("p/", &objects, policy, later, chrono_tz::UTC, &[]);
        assert_eq!(prune.len(), 4);
        assert!(!prune.contains(&"p/2026-11-25/datadump1.sql".to_string()));
        let keep = "p/2026-11-23/datadump1.sql";
        let prune = to_prune("p/", &objects, policy, later, chrono_tz::UTC, &[keep]);
        assert_eq!(prune.len(), 3);
        assert!(!prune.contains(&keep.to_string()));
        // The newest verified dump is kept too.
        let verified = "p/2026-11-21/datadump1.sql";
        let prune = to_prune(
            "p/",
            &objects,
            policy,
            later,
            chrono_tz::UTC,
            &[keep, verified],
        );
        assert_eq!(prune.len(), 2);
        assert!(!prune.contains(&verified.to_string()));
    }

    #[test]
    fn either_rule_keeps_a_dump() {
        let policy = Policy {
            keep_last: Some(1),
            max_age: Some(Duration::days(3)),
        };
        let prune = to_prune("p/", &bucket(), policy, now(), chrono_tz::UTC, &[]);
        assert_eq!(prune, ["p/2026-11-21/datadump1.sql"]);
    }

    #[test]
    fn no_policy_prunes_nothing() {
        let prune = to_prune(
            "p/",
            &bucket(),
            Policy::default(),
            now(),
            chrono_tz::UTC,
            &[],
        );
        assert!(prune.is_empty());
    }
}
