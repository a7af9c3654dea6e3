//! Verification drills: `spec.verify` of a `DatabaseBackup`, and what the
//! last drill found (`status.lastVerification`).

use super::common::*;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Restore drills: the newest dump is loaded into a throwaway database server
/// inside one pod, the checks run against it, and the outcome is recorded.
/// The production database is never contacted.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// Drill each new dump once it is uploaded (default true).
    #[serde(default = "default_true")]
    pub after_upload: bool,
    /// Drill the newest dump again on this schedule too (5-field cron, in
    /// spec.timeZone), whether or not it was drilled before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(&cron_rule(), CRON_MESSAGE), (CRON_TZ_RULE, CRON_TZ_MESSAGE)])))]
    pub schedule: Option<String>,
    /// Queries whose answers the dump must give. Without any, a drill checks
    /// that the dump loads without error and holds at least one table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub checks: Vec<VerifyCheck>,
    /// Image with the database server and its client (default: the backup's
    /// database image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Resources of the drill's containers. The throwaway server and the
    /// loaded dump live on the pod's scratch volume and in its memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Size of the drill's scratch volume, which holds the throwaway server's
    /// data (about the size of the database loaded; the dump streams in and
    /// is never copied). The pod requests it, so that the scheduler places
    /// the drill on a node with the space, and the volume is bounded by it: a
    /// drill that outgrows it is evicted and fails, naming the volume.
    /// Unset: 1Gi is requested and the volume is not bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[POSITIVE_QUANTITY])))]
    pub scratch_size: Option<String>,
    /// Seconds a drill may run before it is stopped (default 2 hours).
    #[serde(default = "default_drill_deadline")]
    #[schemars(range(min = 60, max = 604800))]
    pub active_deadline_seconds: i64,
}

fn default_true() -> bool {
    true
}

fn default_drill_deadline() -> i64 {
    2 * 3600
}

/// One query and what its first value must be.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel(&[(
    "has(self.atLeast) != has(self.equals)",
    "set exactly one of atLeast and equals"
)])))]
pub struct VerifyCheck {
    /// SQL whose first column of the first row is compared, such as
    /// "SELECT count(*) FROM orders".
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// The value must be a number at least this large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<i64>,
    /// The value must be exactly this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub equals: Option<String>,
}

/// What the last drill found.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// The object drilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When the drill ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Whether the dump loaded and every check passed.
    pub passed: bool,
    /// Seconds from the drill's start to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    /// Tables the loaded dump holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<i64>,
    /// Each check, as run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
}

/// A check as run: its query, what it returned and what was expected.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The check's SQL.
    pub query: String,
    /// Whether what it returned met the expectation.
    pub passed: bool,
    /// The first value the query returned, or its error.
    pub got: String,
    /// "at least N" or "equals X".
    pub expected: String,
}

impl VerifyCheck {
    /// How the expectation reads in a message: "at least 1", "equals \"x\"".
    pub fn expectation(&self) -> String {
        match (&self.at_least, &self.equals) {
            (Some(n), _) => format!("at least {n}"),
            (None, Some(text)) => format!("equals {text:?}"),
            (None, None) => "any value".into(),
        }
    }

    /// Whether `got`, the query's first value, meets the expectation.
    pub fn passes(&self, got: &str) -> bool {
        match (&self.at_least, &self.equals) {
            (Some(n), _) => got.trim().parse::<f64>().is_ok_and(|v| v >= *n as f64),
            (None, Some(text)) => got == text,
            (None, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(at_least: Option<i64>, equals: Option<&str>) -> VerifyCheck {
        VerifyCheck {
            query: "SELECT 1".into(),
            at_least,
            equals: equals.map(String::from),
        }
    }

    #[test]
    fn at_least_compares_numbers_and_refuses_text() {
        let c = check(Some(10), None);
        assert!(c.passes("10") && c.passes("11") && c.passes(" 12.5 "));
        assert!(!c.passes("9") && !c.passes("") && !c.passes("ten"));
        assert_eq!(c.expectation(), "at least 10");
    }

    #[test]
    fn equals_compares_text_exactly() {
        let c = check(None, Some("Zoë"));
        assert!(c.passes("Zoë"));
        assert!(!c.passes("zoë") && !c.passes("Zoë "));
        assert_eq!(c.expectation(), "equals \"Zoë\"");
    }
}
