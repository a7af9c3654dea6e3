//! The `DatabaseBackup` resource (group `dbbackup.io`, version `v1alpha1`).
//!
//! Every rule the apiserver can check is in the schema (types, ranges, enums)
//! or a CEL rule, so that bad input is refused at `kubectl apply` with the
//! field named. What needs other objects (Secrets, storage classes) is checked
//! at reconcile time and reported as a condition.

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `x-kubernetes-validations` for a schema node: `(rule, message)` pairs.
fn cel(rules: &[(&str, &str)]) -> serde_json::Value {
    rules
        .iter()
        .map(|(rule, message)| serde_json::json!({ "rule": rule, "message": message }))
        .collect()
}

/// Five cron fields as robfig/cron (the CronJob controller's parser) reads
/// them, each value within its field's range, or one of its @-macros. At
/// reconcile the schedule is parsed once more (croner), for what a pattern
/// cannot see, such as a range that runs backwards.
pub fn cron_rule() -> String {
    // A field: `*`, `?`, N or N-M, each with an optional /step, comma-separated.
    let field = |n: &str| {
        let item = format!("([*]|[?]|({n})(-({n}))?)(/[0-9]+)?");
        format!("{item}(,{item})*")
    };
    let fields = [
        field("[0-5]?[0-9]"),
        field("[01]?[0-9]|2[0-3]"),
        field("0?[1-9]|[12][0-9]|3[01]"),
        field("0?[1-9]|1[0-2]|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"),
        field("[0-7]|SUN|MON|TUE|WED|THU|FRI|SAT"),
    ]
    .join(" +");
    format!(
        "self.matches('(?i)^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|{fields})$')"
    )
}
const CRON_MESSAGE: &str = "must be a standard 5-field cron expression (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT) or a macro such as @daily; seconds are not supported";
const CRON_TZ_RULE: &str = "!self.contains('TZ=')";
const CRON_TZ_MESSAGE: &str = "must not set CRON_TZ or TZ; use spec.timeZone";

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
pub struct DatabaseBackupSpec {
    /// The database to dump.
    pub database: DatabaseSpec,

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
}

/// A retention policy, applied by the upload job right after a confirmed upload
/// (never after a failed one), to the dumps under this resource's prefix only.
/// A dump is kept when either rule keeps it, and the newest dump is always kept.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel(&[(
    "has(self.keepLast) || has(self.maxAge)",
    "set keepLast, maxAge or both"
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
}

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_upload_schedule() -> String {
    "*/5 * * * *".into()
}

/// Database engines the dump step knows how to dump.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Mariadb,
    Mysql,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mariadb => "mariadb",
            Engine::Mysql => "mysql",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Engine::Postgres => 5432,
            Engine::Mariadb | Engine::Mysql => 3306,
        }
    }

    /// The official image whose dump tool matches the server's major version.
    pub fn default_image(self) -> &'static str {
        match self {
            Engine::Postgres => "docker.io/library/postgres:17",
            Engine::Mariadb => "docker.io/library/mariadb:11.8",
            Engine::Mysql => "docker.io/library/mysql:8.4",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Database engine: postgres, mariadb or mysql.
    pub engine: Engine,

    /// Host name or address of the database server, as seen from the dump pod.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// TCP port. Defaults to 5432 for postgres and 3306 for mariadb and mysql.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Name of the database to dump.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,

    /// Secret (in this namespace) with the user name and password to connect with.
    pub credentials_secret: CredentialsSecretRef,

    /// Image that runs the dump tool. Defaults per engine to the official image
    /// (postgres:17, mariadb:11.8, mysql:8.4); its dump tool must not be older than the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
}

/// A Secret in the resource's own namespace. There is no namespace field:
/// cross-namespace references are impossible by construction.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the user name.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key holding the password.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketSpec {
    /// Secret (in this namespace) with the bucket name and the access keys, as
    /// the original pipeline kept them. It may also hold endpoint and region.
    pub secret_ref: BucketSecretRef,

    /// Bucket name; overrides the Secret's bucket key when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$') && !self.contains('..')",
        "must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
    )])))]
    pub name: Option<String>,

    /// Key prefix. Defaults to "<namespace>/<name>/", so that resources sharing a
    /// bucket never mix; "" gives the original layout, YYYY-MM-DD/datadumpN.sql.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[
        ("!self.startsWith('/')", "must not start with '/'"),
        ("self == '' || self.endsWith('/')", "must end with '/' (or be empty)"),
    ])))]
    pub prefix: Option<String>,

    /// S3 endpoint URL, for MinIO and other S3-compatible stores. Overrides the
    /// Secret's endpoint key. Unset means AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "isURL(self) && (self.startsWith('http://') || self.startsWith('https://'))",
        "must be an http:// or https:// URL"
    )])))]
    pub endpoint: Option<String>,

    /// Region. Overrides the Secret's region key; defaults to us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub region: Option<String>,

    /// Path-style addressing (endpoint/bucket/key), which MinIO needs.
    /// Defaults to true when an endpoint is set, false for AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,

    /// Secret with a PEM CA bundle added to the system roots, for stores with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,

    /// Create the bucket when it does not exist. Off by default: a missing bucket is
    /// usually a typo, and the original pipeline's silent creation hid it.
    #[serde(default)]
    pub create_bucket: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the bucket name (unless spec.bucket.name is set).
    #[serde(default = "default_bucket_key")]
    pub bucket_key: String,
    /// Key holding the access key id.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key holding the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
    /// Optional key holding the endpoint URL.
    #[serde(default = "default_endpoint_key")]
    pub endpoint_key: String,
    /// Optional key holding the region.
    #[serde(default = "default_region_key")]
    pub region_key: String,
}

fn default_bucket_key() -> String {
    "bucket".into()
}
fn default_access_key_id_key() -> String {
    "accessKeyId".into()
}
fn default_secret_access_key_key() -> String {
    "secretAccessKey".into()
}
fn default_endpoint_key() -> String {
    "endpoint".into()
}
fn default_region_key() -> String {
    "region".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the PEM bundle.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// Compression applied by the dump step.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// File name suffix after `.sql`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// The compression a file name or object key ends in.
    pub fn of_name(name: &str) -> Compression {
        [Compression::Gzip, Compression::Zstd]
            .into_iter()
            .find(|c| name.ends_with(c.extension()))
            .unwrap_or(Compression::None)
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StagingSpec {
    /// Size of the staging volume; it must hold one dump (two while a new dump replaces an old one).
    #[serde(default = "default_staging_size")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
        "must be a positive quantity such as 10Gi"
    )])))]
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
fn default_deadline() -> i64 {
    6 * 3600
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
    /// Ready, DumpSucceeded, UploadSucceeded and Stale.
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
    /// When the last successful dump finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dump_time: Option<Time>,
    /// The most recent log lines, oldest first, as "<date>,<time>,<message>".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
    /// The last "back up now" token (annotation dbbackup.io/run-now) acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_now: Option<String>,
    /// UIDs of finished pods (and their Jobs) already reflected in this status, so
    /// that an operator restart neither repeats nor loses log lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processed_pods: Vec<String>,
}

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

// ---------------------------------------------------------------------------
// DatabaseRestore: the way back.

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
])))]
pub struct DatabaseRestoreSpec {
    /// Name of a DatabaseBackup in this namespace: its bucket, credentials and
    /// prefix are where the dump is looked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub backup: Option<String>,

    /// A bucket named directly, as in DatabaseBackup.spec.bucket, for dumps
    /// whose DatabaseBackup is gone. Its prefix defaults to "" (the bucket root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketSpec>,

    /// The object key to restore, or "latest": the newest dump under the prefix.
    #[serde(default = "default_restore_key")]
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "self == 'latest' || self.matches('\\\\.sql(\\\\.gz|\\\\.zst)?$')",
        "must be \"latest\" or an object key ending in .sql, .sql.gz or .sql.zst"
    )])))]
    pub key: String,

    /// The database to restore into; it may differ from the dumped one, and is
    /// created when missing.
    pub target: DatabaseSpec,

    /// Restore into a database that already has tables. Its tables, views and
    /// sequences (postgres: its schemas) are dropped first. Off by default.
    #[serde(default)]
    pub overwrite: bool,

    /// Size limit of the scratch volume that holds the downloaded, decompressed dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
        "must be a positive quantity such as 10Gi"
    )])))]
    pub scratch_size: Option<String>,

    /// Resources of the restore pod's containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of the restore pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
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

/// The bucket name a Secret value holds, read the same way by the operator's
/// check and by the jobs: surrounding whitespace (a trailing newline from
/// `echo`) is not part of it.
pub fn bucket_name(raw: &str) -> &str {
    raw.trim()
}

/// True for PEM text holding at least one certificate, all of them well formed:
/// what the jobs add to their trust roots.
pub fn valid_ca_bundle(pem: &[u8]) -> bool {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    certs.is_ok_and(|certs| !certs.is_empty())
}
