//! The one-line JSON each job writes to its termination log, and the operator
//! reads: which step ran (the one `Step` of the whole system), its outcome,
//! and for a failure its reason (`crate::reasons`).
//! Kubernetes keeps at most 4096 bytes of it; writers keep within `MAX_BYTES`.

use serde::{Deserialize, Serialize};

/// What a result may take of the 4096 bytes Kubernetes keeps.
pub const MAX_BYTES: usize = 4000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Dump,
    Upload,
    /// The restore's download, check and decompression.
    Fetch,
    /// Loading the dump into the target database.
    Restore,
    /// A restore drill: the dump loaded into a throwaway server and checked.
    Verify,
}

impl Step {
    /// As in the result's JSON and in the `dbbackup.io/step` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Dump => "dump",
            Step::Upload => "upload",
            Step::Fetch => "fetch",
            Step::Restore => "restore",
            Step::Verify => "verify",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// The uploader found no dump to upload.
    Nothing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub step: Step,
    pub outcome: Outcome,
    /// The object key written (upload only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Size in bytes of the dump or object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The checksum the store confirmed (upload) or the download was checked
    /// against (fetch): `crc64nvme:<base64>` or `etag:<ETag>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The log line this run appended, `<date>,<time>,<message>`.
    pub log: String,
    /// Why a restore step failed, as a condition reason (TargetNotEmpty …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Further lines after `log`, such as the keys retention pruned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_log: Vec<String>,
    /// Tables the drilled dump holds (verify only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<u64>,
    /// The drill's checks as run (verify only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::api::CheckResult>,
    /// Names the staged dump (its finish time, `staging::dump_id`): the dump
    /// that made it, and the upload that sent it (dump and upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumped: Option<String>,
    /// The unsent dump this one replaced, named likewise (dump only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// Why the store's own checksum did not prove the object, when reading
    /// it back did (upload only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_back: Option<String>,
    /// The dumps an upload left aside as stuck (upload only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
    /// Why the restored key was chosen (fetch and restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// The object a cross-namespace restore may read, as time-limited URLs
    /// (`Presigned`) sealed with age to the operator's key for this restore,
    /// base64 (locate only): whoever reads the pod reads no URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    /// Each database's end, in a backup of several (dump and upload).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseResult>,
    /// How many databases' entries did not fit in the message (their lines
    /// are in the log file on the volume).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub databases_left_out: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One object, readable without the store's keys until the URLs expire:
/// what a `locate` Job in a backup's namespace hands a restore in another.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presigned {
    pub bucket: String,
    pub key: String,
    /// A HEAD of the object, asking for its checksum.
    pub head: String,
    /// A GET of the object; the Range and If-Match headers are not signed.
    pub get: String,
}

impl std::fmt::Debug for Presigned {
    // The URLs are bearer credentials for the object: never in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Presigned({}/{})", self.bucket, self.key)
    }
}

/// One database's dump or upload in a run of several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseResult {
    pub name: String,
    pub outcome: Outcome,
    /// The object key written (upload only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Names the dump as `JobResult::dumped` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumped: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The unsent dump this one replaced, named as `dumped` (dump only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

/// A restore step's failure: the Restored condition's reason, and what happened.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

pub fn fail(reason: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        reason,
        message: message.into(),
    }
}

impl JobResult {
    /// One result for several dumps a run sent, this one last: this one's,
    /// with every line in time order (each dump's line, then its retention's).
    pub fn after(self, earlier: Vec<JobResult>) -> JobResult {
        let mut lines = earlier
            .into_iter()
            .chain([self.clone()])
            .flat_map(|r| std::iter::once(r.log).chain(r.more_log));
        let log = lines.next().unwrap_or_default();
        JobResult {
            log,
            more_log: lines.collect(),
            ..self
        }
    }

    /// A result of `step` with its log line and nothing else.
    pub fn new(step: Step, outcome: Outcome, log: String) -> JobResult {
        JobResult {
            step,
            outcome,
            key: None,
            size: None,
            checksum: None,
            log,
            reason: None,
            more_log: vec![],
            tables: None,
            checks: vec![],
            dumped: None,
            replaced: None,
            read_back: None,
            stuck: None,
            chosen: None,
            sealed: None,
            databases: vec![],
            databases_left_out: 0,
        }
    }

    /// The message of `log`, without its date and time.
    pub fn message(&self) -> String {
        crate::logline::LogLine::parse(&self.log)
            .map(|l| l.message)
            .unwrap_or_else(|_| self.log.clone())
    }

    /// Writes the result, fitted, as the one-line termination message at `path`.
    pub fn write_to(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        self.fit();
        let json = serde_json::to_string(self).expect("a JobResult serializes");
        std::fs::write(path, json + "\n")
    }

    /// Makes the JSON fit in `MAX_BYTES`: first drops trailing `more_log`
    /// lines and says how many went (the per-day log files on the volume keep
    /// them all), then shortens the drill's check texts, which may be long
    /// queries. A cut message is no message: the operator could not read it.
    pub fn fit(&mut self) {
        if !self.fits() {
            self.fit_more_log();
        }
        if !self.fits() {
            self.fit_checks();
        }
        if !self.fits() {
            self.fit_databases();
        }
    }

    /// Shortens the databases' errors, then drops the entries that
    /// succeeded, then the rest: the log file on the volume names them all.
    fn fit_databases(&mut self) {
        for limit in [256, 128, 64] {
            for d in &mut self.databases {
                if let Some(e) = d.error.as_mut().filter(|e| e.len() > limit) {
                    let cut = (0..=limit)
                        .rev()
                        .find(|i| e.is_char_boundary(*i))
                        .unwrap_or(0);
                    e.truncate(cut);
                    e.push('…');
                }
            }
            if self.fits() {
                return;
            }
        }
        self.databases
            .sort_by_key(|d| d.outcome == Outcome::Succeeded);
        while !self.fits() && self.databases.pop().is_some() {
            self.databases_left_out += 1;
        }
    }

    fn fits(&self) -> bool {
        serde_json::to_string(self).map_or(true, |s| s.len() <= MAX_BYTES)
    }

    /// Shortens each check's query, value and expectation to the longest
    /// length that fits, keeping whether it passed; past that, keeps the
    /// failed checks first.
    fn fit_checks(&mut self) {
        let all = std::mem::take(&mut self.checks);
        for limit in [512, 256, 128, 96, 64, 48, 32, 24, 16, 8, 0] {
            self.checks = all.iter().map(|c| shortened(c, limit)).collect();
            if self.fits() {
                return;
            }
        }
        self.checks.sort_by_key(|c| c.passed);
        while !self.fits() && self.checks.pop().is_some() {}
    }

    fn fit_more_log(&mut self) {
        let all = std::mem::take(&mut self.more_log);
        // The summary line takes the date and time of the last line it stands for.
        let stamp = all.last().map_or(String::new(), |l| {
            l.splitn(3, ',').take(2).collect::<Vec<_>>().join(",")
        });
        for shown in (0..all.len()).rev() {
            self.more_log = all[..shown].to_vec();
            self.more_log.push(format!(
                "{stamp},{} more lines are in the log file on the staging volume",
                all.len() - shown
            ));
            if self.fits() {
                return;
            }
        }
    }

    /// Parses a termination message; `None` for anything else (such as the log
    /// tail Kubernetes substitutes when a container died before writing one).
    pub fn parse(message: &str) -> Option<JobResult> {
        serde_json::from_str(message.trim()).ok()
    }
}

/// `c` with each text cut to `limit` characters, an ellipsis marking a cut.
fn shortened(c: &crate::api::CheckResult, limit: usize) -> crate::api::CheckResult {
    let cut = |t: &str| match t.char_indices().nth(limit) {
        Some((at, _)) => format!("{}…", &t[..at]),
        None => t.to_string(),
    };
    crate::api::CheckResult {
        query: cut(&c.query),
        passed: c.passed,
        got: cut(&c.got),
        expected: cut(&c.expected),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_run_that_sent_several_dumps_keeps_every_line_in_order() {
        let sent = |line: &str, more: &[&str], key: &str| {
            let mut r =
                super::JobResult::new(super::Step::Upload, super::Outcome::Succeeded, line.into());
            r.more_log = more.iter().map(|m| m.to_string()).collect();
            r.key = Some(key.into());
            r
        };
        let merged = sent("3", &["4"], "b").after(vec![sent("1", &["2"], "a")]);
        assert_eq!(merged.log, "1");
        assert_eq!(merged.more_log, ["2", "3", "4"]);
        assert_eq!(merged.key.as_deref(), Some("b"));
        let alone = sent("1", &[], "a").after(vec![]);
        assert_eq!((alone.log.as_str(), alone.more_log.len()), ("1", 0));
    }

    use super::*;

    #[test]
    fn parses_what_the_dump_script_writes() {
        let r = JobResult::parse(
            r#"{"step":"dump","outcome":"succeeded","file":"datadump.sql","size":1234,"log":"2026-11-25,03:00:07,database dump completed"}"#,
        )
        .unwrap();
        assert_eq!(
            (r.step, r.outcome, r.size),
            (Step::Dump, Outcome::Succeeded, Some(1234))
        );
    }

    #[test]
    fn round_trips_an_upload_result() {
        let r = JobResult {
            step: Step::Upload,
            outcome: Outcome::Succeeded,
            key: Some("2026-11-25/datadump1.sql".into()),
            size: Some(10),
            checksum: Some("crc64nvme:rosUhgp5mIg=".into()),
            log: "2026-11-25,03:05:00,file successfully uploaded".into(),
            reason: None,
            more_log: vec!["2026-11-25,03:05:01,retention pruned 2026-11-20/datadump1.sql".into()],
            tables: None,
            checks: vec![],
            dumped: None,
            replaced: None,
            read_back: Some("the store reports no CRC64/NVME checksum for it".into()),
            stuck: Some("1 unproven dump(s) kept on the staging volume".into()),
            chosen: None,
            sealed: None,
            databases: vec![DatabaseResult {
                name: "shop".into(),
                outcome: Outcome::Succeeded,
                key: Some("shop/2026-11-25/datadump1.sql".into()),
                size: Some(10),
                dumped: None,
                error: None,
                replaced: None,
            }],
            databases_left_out: 0,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(JobResult::parse(&text), Some(r));
    }

    /// Thirty databases with long errors: the errors are cut, the failed
    /// ones stay named first, and the JSON fits.
    #[test]
    fn many_databases_fit_in_a_termination_message() {
        let mut r = JobResult::new(Step::Dump, Outcome::Failed, "2026-11-25,03:05:00,x".into());
        r.databases = (0..300)
            .map(|i| DatabaseResult {
                name: format!("database_with_a_long_name_{i}"),
                outcome: if i % 3 == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Succeeded
                },
                key: None,
                size: Some(1 << 30),
                dumped: Some("2026-11-25T03:05:00.123456789Z".into()),
                error: (i % 3 == 0).then(|| "é".repeat(400)),
                replaced: None,
            })
            .collect();
        r.fit();
        assert_eq!(r.databases.len() + r.databases_left_out, 300);
        assert!(serde_json::to_string(&r).unwrap().len() <= MAX_BYTES);
        assert!(r.databases.len() > 5);
        assert!(r.databases.iter().all(|d| d.outcome == Outcome::Failed));
        assert!(
            r.databases
                .iter()
                .all(|d| d.error.as_ref().unwrap().len() <= 68)
        );
    }

    #[test]
    fn long_results_fit_in_a_termination_message() {
        let mut r = JobResult {
            step: Step::Upload,
            outcome: Outcome::Succeeded,
            key: Some("k".into()),
            size: None,
            checksum: None,
            log: "2026-11-25,03:05:00,file successfully uploaded".into(),
            reason: None,
            more_log: (0..200)
                .map(|i| {
                    format!("2026-11-25,03:05:01,retention pruned p/2026-01-01/datadump{i}.sql")
                })
                .collect(),
            tables: None,
            checks: vec![],
            dumped: None,
            replaced: None,
            read_back: None,
            stuck: None,
            chosen: None,
            sealed: None,
            databases: vec![],
            databases_left_out: 0,
        };
        r.fit();
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.len() <= MAX_BYTES, "{}", text.len());
        let last = r.more_log.last().unwrap();
        let shown = r.more_log.len() - 1;
        assert_eq!(
            last,
            &format!(
                "2026-11-25,03:05:01,{} more lines are in the log file on the staging volume",
                200 - shown
            )
        );
        assert!(r.more_log[0].ends_with("datadump0.sql"));
    }

    #[test]
    fn twenty_checks_with_long_queries_fit_and_parse() {
        let long = |i: usize| {
            format!(
                "SELECT count(*) FROM t{i} WHERE {}",
                "x = 'é' AND ".repeat(340)
            )
        };
        let mut r = JobResult::new(
            Step::Verify,
            Outcome::Succeeded,
            "2026-11-25,03:10:00,backup verified k1 (20 tables)".into(),
        );
        r.key = Some("2026-11-25/datadump1.sql.zst".into());
        r.tables = Some(20);
        r.checks = (0..20)
            .map(|i| crate::api::CheckResult {
                query: long(i),
                passed: i != 7,
                got: "1".repeat(1000),
                expected: format!("equals \"{}\"", "\"".repeat(1000)),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        r.write_to(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= MAX_BYTES + 1, "{}", text.len());
        let back = JobResult::parse(&text).expect("the message parses");
        assert_eq!(back.outcome, Outcome::Succeeded);
        assert_eq!(back.checks.len(), 20);
        assert_eq!(
            back.checks.iter().map(|c| c.passed).collect::<Vec<_>>(),
            (0..20).map(|i| i != 7).collect::<Vec<_>>()
        );
        assert!(
            back.checks[0]
                .query
                .starts_with("SELECT count(*) FROM t0 WHERE x")
        );
        assert!(back.checks[0].query.ends_with('…'));
    }

    #[test]
    fn non_json_is_none() {
        assert_eq!(JobResult::parse("sh: mariadb-dump: not found"), None);
    }
}
