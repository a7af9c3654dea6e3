//! The log format of the original pipeline: `<date>,<time>,<message>`.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone};
use std::fmt;

pub const DUMP_COMPLETED: &str = "database dump completed";
pub const NOTHING_TO_UPLOAD: &str = "there is no file to upload";
pub const UPLOADED: &str = "file successfully uploaded";
/// Followed by when the replaced dump was finished, `YYYY-MM-DD HH:MM:SS`.
pub const REPLACED: &str = "replaced an unsent dump from";
/// Followed by the key and why the store's own checksum did not prove it.
pub const READ_BACK: &str = "proven by reading it back:";
/// A claimed dump moved aside after failed proofs (`jobs/staged.rs`).
pub const STUCK: &str = "the dump is stuck";
/// Followed by the stuck dump's finish and why its proof failed again.
pub const STILL_STUCK: &str = "a stuck dump is still unproven";
/// Followed by ` (<used>/<size>)` of the volume when the dump stopped.
pub const STAGING_FULL: &str = "staging volume full";

/// A size as people read it: `512 KiB`, `3.2 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if value >= 100.0 => format!("{value:.0} {}", UNITS[unit]),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub date: NaiveDate,
    pub time: NaiveTime,
    pub message: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a log line (want <YYYY-MM-DD>,<HH:MM:SS>,<message>): {0:?}")]
pub struct ParseError(pub String);

impl LogLine {
    /// A line stamped with `now` in its own time zone. Newlines in the message are
    /// folded to spaces so one event stays one line.
    pub fn at<Tz: TimeZone>(now: &DateTime<Tz>, message: &str) -> LogLine {
        let local = now.naive_local();
        LogLine {
            date: local.date(),
            time: local.time().with_nanosecond(0).unwrap_or(local.time()),
            message: message.replace(['\n', '\r'], " ").trim().to_string(),
        }
    }

    /// The per-day log file name, `YYYY-MM-DD.txt`.
    pub fn file_name(&self) -> String {
        format!("{}.txt", self.date.format("%Y-%m-%d"))
    }

    pub fn parse(line: &str) -> Result<LogLine, ParseError> {
        let err = || ParseError(line.to_string());
        let mut parts = line.splitn(3, ',');
        let (date, time, message) = (
            parts.next().ok_or_else(err)?,
            parts.next().ok_or_else(err)?,
            parts.next().ok_or_else(err)?,
        );
        if date.len() != 10 || time.len() != 8 || message.is_empty() {
            return Err(err());
        }
        Ok(LogLine {
            date: NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| err())?,
            time: NaiveTime::parse_from_str(time, "%H:%M:%S").map_err(|_| err())?,
            message: message.to_string(),
        })
    }
}

use chrono::Timelike;

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{}",
            self.date.format("%Y-%m-%d"),
            self.time.format("%H:%M:%S"),
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(64 << 10), "64.0 KiB");
        assert_eq!(human_size(1320 << 20), "1.3 GiB");
        assert_eq!(human_size(200 << 30), "200 GiB");
    }
    use chrono::Utc;

    #[test]
    fn prints_and_parses_the_original_format() {
        let line = LogLine::parse("2026-11-25,03:00:07,database dump completed").unwrap();
        assert_eq!(line.message, DUMP_COMPLETED);
        assert_eq!(
            line.to_string(),
            "2026-11-25,03:00:07,database dump completed"
        );
        assert_eq!(line.file_name(), "2026-11-25.txt");
    }

    #[test]
    fn messages_may_contain_commas() {
        let line = LogLine::parse("2026-11-25,03:00:07,upload failed: a, b").unwrap();
        assert_eq!(line.message, "upload failed: a, b");
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "2026-11-25,03:00:07,",
            "2026-11-25 03:00:07 x",
            "25-11-2026,03:00:07,x",
            "2026-11-25,3:00:07,x",
        ] {
            assert!(LogLine::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stamps_in_the_given_zone_and_folds_newlines() {
        let utc = Utc.with_ymd_and_hms(2026, 11, 25, 23, 30, 0).unwrap();
        let paris = utc.with_timezone(&chrono_tz::Europe::Paris);
        let line = LogLine::at(&paris, "a\nb");
        assert_eq!(line.to_string(), "2026-11-26,00:30:00,a b");
    }
}
