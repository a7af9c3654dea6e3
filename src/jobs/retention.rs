//! Which uploaded dumps a retention policy lets go.
//!
//! Only keys of our own naming under the resource's prefix count
//! (`<prefix>YYYY-MM-DD/datadumpN.sql[.gz|.zst][.age]`); anything else in the bucket
//! is never a candidate. A dump is kept when any rule keeps it, and the newest
//! dump is kept whatever the rules say, so a policy can never empty the bucket.
//!
//! The calendar rules (keep daily, weekly, monthly, yearly) mean what they
//! mean in restic: going from the newest dump back, the newest dump of each
//! day (ISO week, month, year) that has one, for the N newest such periods.
//! A period without a dump does not count. The date is the key's date folder,
//! which is in the resource's time zone.

use super::keys;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;

/// The period (year and day, week, month or nothing) a date falls in.
type Period = fn(NaiveDate) -> (i32, u32);

/// What to keep. All unset keeps everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the newest N dumps.
    pub keep_last: Option<usize>,
    /// Keep dumps younger than this.
    pub max_age: Option<Duration>,
    /// Keep the newest dump of each of the N newest days, ISO weeks, months
    /// and years that have one.
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
}

impl Policy {
    pub fn is_set(&self) -> bool {
        self.keep_last.is_some() || self.max_age.is_some() || self.tiers().any(|(n, _)| n.is_some())
    }

    /// The calendar rules: each count, and the period a date falls in.
    fn tiers(&self) -> impl Iterator<Item = (Option<usize>, Period)> {
        use chrono::Datelike;
        let daily: Period = |d| (d.year(), d.ordinal());
        let weekly: Period = |d| (d.iso_week().year(), d.iso_week().week());
        let monthly: Period = |d| (d.year(), d.month());
        let yearly: Period = |d| (d.year(), 0);
        [
            (self.keep_daily, daily),
            (self.keep_weekly, weekly),
            (self.keep_monthly, monthly),
            (self.keep_yearly, yearly),
        ]
        .into_iter()
    }

    /// The positions (in `dates`, newest first) the calendar rules keep.
    fn kept_by_calendar(&self, dates: &[NaiveDate]) -> std::collections::HashSet<usize> {
        let mut kept = std::collections::HashSet::new();
        for (count, period) in self.tiers() {
            let Some(count) = count else { continue };
            let mut last = None;
            let mut periods = 0;
            for (i, date) in dates.iter().enumerate() {
                if periods == count {
                    break;
                }
                let p = period(*date);
                if last != Some(p) {
                    kept.insert(i);
                    last = Some(p);
                    periods += 1;
                }
            }
        }
        kept
    }
}

/// An object as listed: its key, when the store last modified it, and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub last_modified: Option<DateTime<Utc>>,
    pub size: Option<i64>,
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

/// Our dumps under `prefix`, newest first (by date, then index). An object
/// marked unproven is no backup: it is not among them, so no rule counts it,
/// `latest` never picks it and retention never prunes it.
pub fn newest_first<'a>(prefix: &str, objects: &'a [Listed]) -> Vec<(&'a Listed, NaiveDate)> {
    let unproven = keys::marked_unproven(objects.iter().map(|o| o.key.as_str()));
    let mut ours: Vec<_> = objects
        .iter()
        .filter(|o| !unproven.contains(o.key.as_str()))
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
    let ours = newest_first(prefix, objects);
    let dates: Vec<NaiveDate> = ours.iter().map(|(_, d)| *d).collect();
    let kept_by_calendar = policy.kept_by_calendar(&dates);
    let mut prune: Vec<String> = ours
        .into_iter()
        .enumerate()
        .filter(|(rank, (o, date))| {
            let kept_by_count = policy.keep_last.is_some_and(|n| *rank < n);
            let kept_by_age = policy
                .max_age
                .is_some_and(|age| now - taken_by(o, *date, tz) < age);
            *rank > 0
                && !keep.contains(&o.key.as_str())
                && !kept_by_count
                && !kept_by_age
                && !kept_by_calendar.contains(rank)
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
            size: None,
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
    fn an_object_marked_unproven_is_neither_counted_nor_pruned() {
        let mut objects = bucket();
        for key in ["p/2026-11-26/datadump1.sql", "p/2026-11-26/datadump2.sql"] {
            objects.push(listed(key, None));
            objects.push(listed(&format!("{key}.unproven"), None));
        }
        let policy = Policy {
            keep_last: Some(2),
            ..Policy::default()
        };
        let keep = "p/2026-11-25/datadump1.sql";
        let prune = to_prune("p/", &objects, policy, now(), chrono_tz::UTC, &[keep]);
        assert_eq!(
            prune,
            [
                "p/2026-11-21/datadump1.sql",
                "p/2026-11-23/datadump1.sql",
                "p/2026-11-23/datadump2.sql.gz"
            ]
        );
        let newest = newest_first("p/", &objects);
        assert_eq!(newest[0].0.key, keep);
    }

    #[test]
    fn keep_last_leaves_exactly_the_newest_n() {
        let policy = Policy {
            keep_last: Some(3),
            ..Policy::default()
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
            max_age: Some(Duration::days(2)),
            ..Policy::default()
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
            max_age: Some(Duration::minutes(1)),
            ..Policy::default()
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
            ..Policy::default()
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

    /// A dump a day at 02:30 for the year 2025 (plus a second dump on the
    /// first of each month), and what restic's `forget --keep-*` keeps of it.
    fn year_of_dumps() -> Vec<Listed> {
        let mut objects = vec![];
        let mut day = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
        while day.year() == 2025 {
            objects.push(listed(&format!("p/{day}/datadump1.sql"), None));
            if day.day() == 1 {
                objects.push(listed(&format!("p/{day}/datadump2.sql.gz"), None));
            }
            day = day.succ_opt().unwrap();
        }
        objects
    }

    use chrono::Datelike;

    fn kept(policy: Policy) -> Vec<String> {
        let objects = year_of_dumps();
        let later = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let prune = to_prune("p/", &objects, policy, later, chrono_tz::UTC, &[]);
        let mut kept: Vec<String> = objects
            .into_iter()
            .map(|o| o.key)
            .filter(|k| !prune.contains(k))
            .collect();
        kept.sort();
        kept
    }

    #[test]
    fn calendar_rules_keep_the_newest_dump_of_each_period_as_restic_does() {
        #[rustfmt::skip]
        let cases: [(Policy, usize, &str, &str); 6] = [
            // Seven days: 12-25 … 12-31, one dump each.
            (Policy { keep_daily: Some(7), ..Policy::default() }, 7, "p/2025-12-25/datadump1.sql", "p/2025-12-31/datadump1.sql"),
            // On a first of the month the second dump is that day's newest.
            (Policy { keep_daily: Some(400), ..Policy::default() }, 365, "p/2025-01-01/datadump2.sql.gz", "p/2025-12-31/datadump1.sql"),
            // ISO weeks end on Sunday; 2025-12-31 is a Wednesday of week 1 of 2026.
            (Policy { keep_weekly: Some(4), ..Policy::default() }, 4, "p/2025-12-14/datadump1.sql", "p/2025-12-31/datadump1.sql"),
            // The last day of each month.
            (Policy { keep_monthly: Some(12), ..Policy::default() }, 12, "p/2025-01-31/datadump1.sql", "p/2025-12-31/datadump1.sql"),
            (Policy { keep_yearly: Some(5), ..Policy::default() }, 1, "p/2025-12-31/datadump1.sql", "p/2025-12-31/datadump1.sql"),
            // ISO week 1 of 2025 starts on 2024-12-30: the year's first
            // dumps (01-01 to 01-05) are in it; 53 weeks hold dumps in all.
            (Policy { keep_weekly: Some(60), ..Policy::default() }, 53, "p/2025-01-05/datadump1.sql", "p/2025-12-31/datadump1.sql"),
        ];
        for (policy, count, oldest, newest) in cases {
            let kept = kept(policy);
            assert_eq!(kept.len(), count, "{policy:?}: {kept:?}");
            assert_eq!(
                (kept[0].as_str(), kept[count - 1].as_str()),
                (oldest, newest),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn calendar_rules_and_keep_last_are_a_union() {
        // restic's own example policy: 7 daily, 5 weekly, 12 monthly, 75 yearly.
        let policy = Policy {
            keep_last: Some(2),
            keep_daily: Some(7),
            keep_weekly: Some(5),
            keep_monthly: Some(12),
            keep_yearly: Some(75),
            ..Policy::default()
        };
        let kept = kept(policy);
        let mut expected: Vec<String> = vec![];
        // Daily: 12-25 … 12-31 (the last two are also keep_last's).
        for d in 25..=31 {
            expected.push(format!("p/2025-12-{d:02}/datadump1.sql"));
        }
        // Weekly: the Sundays 12-07, 12-14, 12-21, 12-28, and 12-31 (week 1 of 2026).
        for d in [7, 14, 21] {
            expected.push(format!("p/2025-12-{d:02}/datadump1.sql"));
        }
        // Monthly: each month's last day (12-31 already in).
        for m in 1..=11u32 {
            let last = NaiveDate::from_ymd_opt(2025, m + 1, 1)
                .unwrap()
                .pred_opt()
                .unwrap();
            expected.push(format!("p/{last}/datadump1.sql"));
        }
        expected.sort();
        expected.dedup();
        assert_eq!(kept, expected);
        assert_eq!(kept.len(), 7 + 3 + 11);
    }

    #[test]
    fn periods_without_a_dump_do_not_count() {
        // Dumps only on Mondays: keep_daily 3 keeps three Mondays, not three days.
        let objects: Vec<Listed> = ["2025-03-03", "2025-03-10", "2025-03-17", "2025-03-24"]
            .iter()
            .map(|d| listed(&format!("p/{d}/datadump1.sql"), None))
            .collect();
        let policy = Policy {
            keep_daily: Some(3),
            ..Policy::default()
        };
        let prune = to_prune("p/", &objects, policy, now(), chrono_tz::UTC, &[]);
        assert_eq!(prune, ["p/2025-03-03/datadump1.sql"]);
    }
}
