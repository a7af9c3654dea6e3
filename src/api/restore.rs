//! The `DatabaseRestore` resource: the way back.

use super::common::*;
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which object a restore takes when no key is named.
pub const LATEST: &str = "latest";

// Each printcolumn(...) names its type_, which clippy takes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dbbackup.io",
    version = "v1alpha1",
    kind = "DatabaseRestore",
    plural = "databaserestores",
    shortname = "dbr",
    category = "backups",
    namespaced,
    status = "DatabaseRestoreStatus",
    derive = "PartialEq",
    doc = "One restore of a dump from S3-compatible storage into a database.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Key", type_ = "string", json_path = ".status.key"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.name"),
    printcolumn(
        name = "Completed",
        type_ = "date",
        json_path = ".status.completionTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel(&[
    ("has(self.backup) != has(self.bucket)", "set exactly one of backup and bucket"),
    ("self == oldSelf", "a restore cannot be changed once created; create a new one"),
    ("!has(self.before) || self.key == 'latest'", "before picks among the dumps: set it only with key \"latest\""),
    ("!has(self.backupNamespace) || has(self.backup)", "backupNamespace names the namespace of spec.backup: set backup too"),
    ("!has(self.database) || self.key == 'latest'", "database picks a series: set it only with key \"latest\" (a key names its database already)"),
])))]
pub struct DatabaseRestoreSpec {
    /// Name of a DatabaseBackup in this namespace: its bucket, credentials and
    /// prefix are where the dump is looked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub backup: Option<String>,

    /// The namespace of spec.backup, when it is another one: a
    /// DatabaseRestoreGrant there must let restores of this namespace use
    /// that backup. The restore pod then gets a time-limited URL of the one
    /// object chosen, never that namespace's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub backup_namespace: Option<String>,

    /// A bucket named directly, as in DatabaseBackup.spec.bucket, for dumps
    /// whose DatabaseBackup is gone. Its prefix defaults to "" (the bucket root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketSpec>,

    /// The Secret key holding the age identity (AGE-SECRET-KEY-1…) that
    /// decrypts an encrypted dump (key "identity" by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_secret: Option<IdentitySecretRef>,

    /// The object key to restore, or "latest": the newest dump under the prefix.
    #[serde(default = "default_restore_key")]
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "self == 'latest' || self.matches('\\\\.sql(\\\\.gz|\\\\.zst)?(\\\\.age)?$')",
        "must be \"latest\" or an object key ending in .sql, .sql.gz or .sql.zst, encrypted or not (.age)"
    )])))]
    pub key: String,

    /// With key "latest", from a backup of several databases
    /// (spec.database.names or all): which one's dumps to take, those under
    /// `<prefix><database>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub database: Option<String>,

    /// With key "latest": take the newest dump taken at or before this time
    /// (RFC 3339, such as 2026-03-01T23:00:00+09:00), by the dump time each
    /// upload records on its object, not by the key's date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|z|[+-][0-9]{2}:[0-9]{2})$') && timestamp(self) > timestamp('1970-01-01T00:00:00Z')",
        "must be an RFC 3339 time with a zone, such as 2026-03-01T23:00:00+09:00 or 2026-03-01T14:00:00Z"
    )])))]
    pub before: Option<String>,

    /// The database to restore into; it may differ from the dumped one, and is
    /// created when missing.
    pub target: DatabaseSpec,

    /// Restore into a database that already has tables: its content is
    /// replaced by the dump's only once the whole dump loaded and checked out
    /// (postgres: in one transaction; mariadb/mysql: loaded into the shadow
    /// database `<name>__dbbackup_new` first, so the restoring role needs all
    /// privileges on it and on `<name>__dbbackup_old`). Off by default.
    #[serde(default)]
    pub overwrite: bool,

    /// Size limit of the restore pod's scratch (the SQL client's /tmp). The
    /// dump streams from the store into the database and is never copied to
    /// the node, so a few hundred MiB do for any size of dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[POSITIVE_QUANTITY])))]
    pub scratch_size: Option<String>,

    /// Resources of the restore pod's containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of the restore pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// ServiceAccount of the restore pod, for keyless credentials (see
    /// DatabaseBackup.spec.jobs.serviceAccountName); defaults to the named
    /// backup's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Tolerations of the restore pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Seconds the restore may run before it is stopped (default 6 hours).
    #[serde(default = "default_deadline")]
    #[schemars(range(min = 60))]
    pub active_deadline_seconds: i64,
}

fn default_restore_key() -> String {
    LATEST.into()
}

/// Where a restore stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestorePhase {
    /// Waiting for what the spec refers to, or for the Job to start.
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl RestorePhase {
    pub fn finished(self) -> bool {
        matches!(self, RestorePhase::Succeeded | RestorePhase::Failed)
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRestoreStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// The object key restored (what "latest" resolved to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why that key: named in the spec, the newest dump, or the newest one
    /// taken at or before spec.before (and when it was taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_reason: Option<String>,
    /// Size in bytes of the downloaded object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Restored: True once done; False with the reason while pending or after a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The restore's log lines, "<date>,<time>,<message>".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
}

/// The restore CRD as generated (all its rules live on the spec).
pub fn restore_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    DatabaseRestore::crd()
}
