//! The `DatabaseBackup` resource: what to dump, when, and where to keep it.

use super::common::*;
use super::databases::BackupDatabaseSpec;
use super::notify::NotifyTarget;
use super::verify::{Verification, VerifySpec};
use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// Each printcolumn(...) names its type_, which clippy takes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dbbackup.io",
    version = "v1alpha1",
    kind = "DatabaseBackup",
    plural = "databasebackups",
    shortname = "dbb",
    category = "backups",
    namespaced,
    status = "DatabaseBackupStatus",
    derive = "PartialEq",
    doc = "A scheduled, verified dump of one database into S3-compatible storage.",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.database.engine"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(
        name = "Last Upload",
        type_ = "string",
        json_path = ".status.lastUploadKey"
    ),
    printcolumn(
        name = "Uploaded",
        type_ = "date",
        json_path = ".status.lastUploadTime"
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        json_path = ".status.lastUploadSize",
        priority = "1"
    ),
    printcolumn(
        name = "Verified",
        type_ = "date",
        json_path = ".status.lastVerifiedTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel(&[
    (
        "!has(self.verify) || !has(self.encryption) || has(self.encryption.identitySecret)",
        "restore drills (spec.verify) of encrypted dumps need spec.encryption.identitySecret",
    ),
    (
        "!has(self.verify) || has(self.database.name)",
        "restore drills (spec.verify) drill one database's dumps: not yet with spec.database.names or all",
    ),
])))]
pub struct DatabaseBackupSpec {
    /// The server and the database (or databases) to dump.
    pub database: BackupDatabaseSpec,

    /// When to dump, in standard 5-field cron syntax (for example "0 3 * * *"),
    /// interpreted in spec.timeZone.
    #[schemars(length(min = 1, max = 128))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(&cron_rule(), CRON_MESSAGE), (CRON_TZ_RULE, CRON_TZ_MESSAGE)])))]
    pub schedule: String,

    /// IANA time zone of both schedules, and of the dates in object keys and log
    /// lines. Defaults to UTC.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "self == 'UTC' || timestamp('2000-01-01T00:00:00Z').getHours(self) >= 0",
        "must be a valid IANA time zone name, such as Europe/Paris"
    )])))]
    pub time_zone: String,

    /// How often the uploader looks for a finished dump (cron). The original
    /// pipeline polled every minute; the default is every 5 minutes.
    #[serde(default = "default_upload_schedule")]
    #[schemars(length(min = 1, max = 128))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(&cron_rule(), CRON_MESSAGE), (CRON_TZ_RULE, CRON_TZ_MESSAGE)])))]
    pub upload_schedule: String,

    /// Pauses both the dump and the upload schedules.
    #[serde(default)]
    pub suspend: bool,

    /// Where the dumps go.
    pub bucket: BucketSpec,

    /// Compression applied once, while dumping. The object key ends in .gz or .zst accordingly.
    #[serde(default)]
    pub compression: Compression,

    /// The volume the dump job writes to and the upload job reads from.
    #[serde(default)]
    pub staging: StagingSpec,

    /// Settings applied to the pods of both jobs.
    #[serde(default)]
    pub jobs: JobSettings,

    /// Which uploaded dumps to keep. Unset keeps them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,

    /// Encrypt each dump with age as it is written, so that neither the
    /// staging volume nor the bucket holds plaintext. Object keys then end in
    /// .age after the compression's suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,

    /// Restore drills that prove dumps restorable. Unset runs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,

    /// Where the operator sends word of failures, staleness, failed drills
    /// and (when asked) successes. Each message is sent at most once, retried
    /// with backoff; a target that cannot be reached sets the Notified
    /// condition, and never holds up the backups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub notify: Vec<NotifyTarget>,
}

/// A retention policy, applied by the upload job right after a confirmed upload
/// (never after a failed one), to the dumps under this resource's prefix only.
/// A dump is kept when any rule keeps it, and the newest dump (and the newest
/// verified one) is always kept.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel(&[(
    "has(self.keepLast) || has(self.maxAge) || has(self.keepDaily) || has(self.keepWeekly) || has(self.keepMonthly) || has(self.keepYearly)",
    "set at least one of keepLast, maxAge, keepDaily, keepWeekly, keepMonthly, keepYearly"
)])))]
pub struct RetentionSpec {
    /// Keep the newest N dumps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub keep_last: Option<i32>,
    /// Keep dumps younger than this: whole days, hours or minutes, such as 30d,
    /// 12h or 1d12h. A dump's age counts from the end of the date in its key, or
    /// from its upload if earlier, so no dump goes before its time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "self.matches('^([0-9]{1,6}[dhm])+$')",
        "must be an age in days, hours or minutes, such as 30d, 12h or 1d12h"
    )])))]
    pub max_age: Option<String>,
    /// Keep the newest dump of each of the N newest days that have one (in
    /// timeZone), as restic's --keep-daily.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub keep_daily: Option<i32>,
    /// Keep the newest dump of each of the N newest ISO weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub keep_weekly: Option<i32>,
    /// Keep the newest dump of each of the N newest months that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub keep_monthly: Option<i32>,
    /// Keep the newest dump of each of the N newest years that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub keep_yearly: Option<i32>,
}

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_upload_schedule() -> String {
    "*/5 * * * *".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StagingSpec {
    /// Size of the staging volume; it must hold one dump (two while a new dump replaces an old one).
    #[serde(default = "default_staging_size")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[POSITIVE_QUANTITY])))]
    pub size: String,

    /// Storage class of the staging PVC; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// Access modes of the staging PVC. ReadWriteOnce by default; the upload pod then
    /// prefers the node of a running dump pod. Use ReadWriteMany where the store offers it.
    #[serde(default = "default_access_modes")]
    #[schemars(length(min = 1))]
    pub access_modes: Vec<AccessMode>,
}

impl Default for StagingSpec {
    fn default() -> Self {
        StagingSpec {
            size: default_staging_size(),
            storage_class_name: None,
            access_modes: default_access_modes(),
        }
    }
}

fn default_staging_size() -> String {
    "1Gi".into()
}
fn default_access_modes() -> Vec<AccessMode> {
    vec![AccessMode::ReadWriteOnce]
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadWriteOncePod,
    ReadWriteMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
            AccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSettings {
    /// Resources of the dump and upload containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of both pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of both pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of both pods. When unset, the upload pod prefers the node of a running dump pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// ServiceAccount of the pods that talk to the store (upload and drill,
    /// never the dump), for keyless credentials: EKS IRSA or Pod Identity, or
    /// spec.bucket.webIdentity. The bucket Secret then need not hold access
    /// keys. No API token is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Finished jobs kept per CronJob when they succeeded (default 3).
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: i32,
    /// Finished jobs kept per CronJob when they failed (default 3).
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: i32,
    /// Seconds a job may run before it is stopped (default 6 hours).
    #[serde(default = "default_deadline")]
    #[schemars(range(min = 60))]
    pub active_deadline_seconds: i64,
    /// Seconds after a missed schedule time within which the job may still start (default 300).
    #[serde(default = "default_starting_deadline")]
    #[schemars(range(min = 10))]
    pub starting_deadline_seconds: i64,
    /// Retries of a failed pod before the job counts as failed (default 0: the next
    /// scheduled run is the retry, and a failed upload keeps its dump for it).
    #[serde(default)]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            resources: None,
            node_selector: None,
            tolerations: None,
            affinity: None,
            service_account_name: None,
            successful_jobs_history_limit: default_successful_history(),
            failed_jobs_history_limit: default_failed_history(),
            active_deadline_seconds: default_deadline(),
            starting_deadline_seconds: default_starting_deadline(),
            backoff_limit: 0,
        }
    }
}

fn default_successful_history() -> i32 {
    3
}
fn default_failed_history() -> i32 {
    3
}
fn default_starting_deadline() -> i64 {
    300
}

/// What the operator last saw of this backup.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBackupStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, DumpSucceeded, UploadSucceeded, DumpsProven, Stale and Verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Object key of the last confirmed upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upload_key: Option<String>,
    /// When the last confirmed upload finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upload_time: Option<Time>,
    /// Size in bytes of the last uploaded object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upload_size: Option<i64>,
    /// The last uploads, newest first (at most 20): the catalog `kubectl get
    /// dbb NAME -o yaml` shows without access to the bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<CatalogEntry>,
    /// When the last successful dump finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dump_time: Option<Time>,
    /// The most recent log lines, oldest first, as "<date>,<time>,<message>".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
    /// The last "back up now" token (annotation dbbackup.io/run-now) acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_now: Option<String>,
    /// What the last restore drill found, passed or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verification: Option<Verification>,
    /// The newest dump that passed its drill: retention never deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_key: Option<String>,
    /// When that drill ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_time: Option<Time>,
    /// When spec.suspend was last turned off: staleness counts the scheduled
    /// runs from then, not from an upload before the suspension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_time: Option<Time>,
    /// When the operator last started a drill on spec.verify.schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_drill: Option<Time>,
    /// With spec.database.names or all: each database's last dump and upload,
    /// by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseState>,
    /// UIDs of finished pods (and their Jobs) already reflected in this status, so
    /// that an operator restart neither repeats nor loses log lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processed_pods: Vec<String>,
}

/// One database of a backup of several.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseState {
    /// The database's name on the server.
    pub name: String,
    /// When its last successful dump finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dump_time: Option<Time>,
    /// Why its last dump failed; cleared by the next one that succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Object key of its last confirmed upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upload_key: Option<String>,
    /// When that upload was confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upload_time: Option<Time>,
}

/// One confirmed upload.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogEntry {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// When the upload was confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The checksum the store confirmed: crc64nvme:<base64> or etag:<ETag>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Whether a restore drill of it passed (true) or failed (false); unset
    /// until one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}

/// How many uploads `status.recent` keeps.
pub const RECENT_KEPT: usize = 20;

/// The CRD, with the rules that apply to the whole object.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = DatabaseBackup::crd();
    let root = crd.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .expect("derived CRDs have a schema");
    // Only the root may see metadata.name.
    root.x_kubernetes_validations = Some(vec![
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule {
            rule: "self.metadata.name.size() <= 63".into(),
            message: Some(
                "metadata.name must be at most 63 characters: it is used as a label value on the children"
                    .into(),
            ),
            ..Default::default()
        },
    ]);
    crd
}
