//! The one-line JSON each job writes to its termination log, and the operator reads.
//! Kubernetes keeps at most 4096 bytes of it; ours stays far below.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Dump,
    Upload,
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
    /// Hex SHA-256 of the uploaded object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The log line this run appended, `<date>,<time>,<message>`.
    pub log: String,
}

impl JobResult {
    /// Parses a termination message; `None` for anything else (such as the log
    /// tail Kubernetes substitutes when a container died before writing one).
    pub fn parse(message: &str) -> Option<JobResult> {
        serde_json::from_str(message.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
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
            sha256: Some("ab".into()),
            log: "2026-11-25,03:05:00,file successfully uploaded".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(JobResult::parse(&text), Some(r));
    }

    #[test]
    fn non_json_is_none() {
        assert_eq!(JobResult::parse("sh: mariadb-dump: not found"), None);
    }
}
