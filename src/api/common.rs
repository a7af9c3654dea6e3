//! Parts both resources share: the database, the bucket and its Secret, the
//! compression, and the rules (CEL, formats) their fields are checked by.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The CEL rule of a size such as `10Gi`, and its message.
pub(super) const POSITIVE_QUANTITY: (&str, &str) = (
    "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
    "must be a positive quantity such as 10Gi",
);

/// `x-kubernetes-validations` for a schema node: `(rule, message)` pairs.
pub(super) fn cel(rules: &[(&str, &str)]) -> serde_json::Value {
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
pub(super) const CRON_MESSAGE: &str = "must be a standard 5-field cron expression (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT) or a macro such as @daily; seconds are not supported";
pub(super) const CRON_TZ_RULE: &str = "!self.contains('TZ=')";
pub(super) const CRON_TZ_MESSAGE: &str = "must not set CRON_TZ or TZ; use spec.timeZone";

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

pub(super) fn default_username_key() -> String {
    "username".into()
}
pub(super) fn default_password_key() -> String {
    "password".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel(&[
    (
        "!has(self.serverSideEncryption) || self.serverSideEncryption.type != 'SSE-C' || !has(self.endpoint) || self.endpoint.startsWith('https://')",
        "SSE-C sends its key with every request: the endpoint must be https://",
    ),
    (
        "!has(self.webIdentity) || !has(self.endpoint) || self.endpoint.startsWith('https://')",
        "webIdentity sends the ServiceAccount token to the store: the endpoint must be https://",
    ),
])))]
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

    /// The kind of store, which sets how uploads are proven there: aws,
    /// minio, r2, b2, gcs, ceph, seaweedfs or generic. Unset: aws without an
    /// endpoint, generic with one (CRC64/NVME per part and whole, the
    /// store's If-None-Match checked on a probe object each upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<super::StoreProfile>,

    /// Secret with a PEM CA bundle added to the system roots, for stores with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,

    /// Create the bucket when it does not exist. Off by default: a missing bucket is
    /// usually a typo, and the original pipeline's silent creation hid it.
    #[serde(default)]
    pub create_bucket: bool,

    /// Server-side encryption the store applies to each dump: AES256 (keys
    /// the store manages), aws:kms (a KMS key) or SSE-C (a key of yours, sent
    /// with every request; the store must be reached over https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryption>,

    /// Object Lock retention each uploaded dump gets, so that no one can
    /// delete or replace it before it ends. The bucket must have Object Lock
    /// enabled. Retention leaves a locked dump, and prunes it once unlocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,

    /// A Secret with access keys that may delete, used only to prune by
    /// retention, so that the bucket Secret's keys can be write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_secret_ref: Option<AccessKeysRef>,

    /// Credentials from the pod's ServiceAccount token instead of access keys
    /// (AssumeRoleWithWebIdentity): the token, with this audience, is mounted
    /// only in the containers that talk to the store. Not needed where a
    /// webhook injects the token (EKS IRSA); there, name the ServiceAccount only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<WebIdentity>,
}

/// Server-side encryption of the dumps.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel(&[
    ("self.type == 'aws:kms' || !has(self.kmsKeyId)", "kmsKeyId is only for type aws:kms"),
    ("(self.type == 'SSE-C') == has(self.customerKeySecret)", "type SSE-C needs customerKeySecret, and only SSE-C takes it"),
])))]
pub struct ServerSideEncryption {
    /// AES256, aws:kms or SSE-C.
    #[serde(rename = "type")]
    pub kind: SseType,
    /// The KMS key id or ARN; unset uses the bucket's default KMS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
    /// For SSE-C: the Secret key holding the 256-bit key, base64 (as
    /// `openssl rand -base64 32` writes it; key "key" by default). Lose it
    /// and the dumps are lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_key_secret: Option<SseCustomerKeyRef>,
}

/// The job steps take it as their --sse flag.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, clap::ValueEnum,
)]
pub enum SseType {
    #[serde(rename = "AES256")]
    #[value(name = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    #[value(name = "aws:kms")]
    AwsKms,
    #[serde(rename = "SSE-C")]
    #[value(name = "SSE-C")]
    Customer,
}

impl SseType {
    /// The name S3 and the job steps' --sse flag use.
    pub fn as_str(self) -> &'static str {
        match self {
            SseType::Aes256 => "AES256",
            SseType::AwsKms => "aws:kms",
            SseType::Customer => "SSE-C",
        }
    }
}

/// The Secret key holding an SSE-C key.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SseCustomerKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret (default "key").
    #[serde(default = "default_sse_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_sse_key() -> String {
    "key".into()
}

/// Whether a Secret's value is an SSE-C key: base64 of exactly 32 bytes.
pub fn valid_sse_customer_key(value: &[u8]) -> bool {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(value);
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .is_ok_and(|raw| raw.len() == 32)
}

/// Object Lock retention for each uploaded dump.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectLock {
    /// GOVERNANCE (users with s3:BypassGovernanceRetention may still shorten
    /// or remove the lock) or COMPLIANCE (no one can, the root user included).
    pub mode: LockMode,
    /// Days each dump stays locked after its upload.
    #[schemars(range(min = 1, max = 36500))]
    pub days: u32,
}

/// The upload step takes it as its --object-lock-mode flag.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "UPPERCASE")]
#[value(rename_all = "UPPERCASE")]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// A Secret holding a pair of access keys.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeysRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the access key id.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key holding the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
}

/// AssumeRoleWithWebIdentity with the pod's ServiceAccount token.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebIdentity {
    /// The role to assume (for MinIO: the ARN it prints for its OpenID provider).
    #[schemars(length(min = 1, max = 2048))]
    pub role_arn: String,
    /// The token's audience, which the identity provider expects (default
    /// sts.amazonaws.com). Never one the Kubernetes API server accepts: the
    /// token would then be an API token.
    #[serde(default = "default_audience")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "!self.matches('^(https://)?kubernetes\\\\.default(\\\\.svc)?(\\\\.|/|$)') && self != 'api'",
        "must not be an audience of the Kubernetes API server (such as https://kubernetes.default.svc): the token would be an API token"
    )])))]
    pub audience: String,
}

fn default_audience() -> String {
    "sts.amazonaws.com".into()
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

pub(super) fn default_bucket_key() -> String {
    "bucket".into()
}
pub(super) fn default_access_key_id_key() -> String {
    "accessKeyId".into()
}
pub(super) fn default_secret_access_key_key() -> String {
    "secretAccessKey".into()
}
pub(super) fn default_endpoint_key() -> String {
    "endpoint".into()
}
pub(super) fn default_region_key() -> String {
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

/// Client-side encryption with age: the dump step encrypts as it writes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionSpec {
    /// A Secret holding the age X25519 public keys (age1…) to encrypt to, one a line.
    pub recipients_secret: SecretKeyRef,
    /// The Secret key holding an age identity that decrypts the dumps, for
    /// restore drills only (spec.verify); it reaches only the drill's
    /// download. Leave it unset, and keep the identity out of the cluster,
    /// where drills are not wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_secret: Option<IdentitySecretRef>,
}

/// One or more `age1…` public keys, one a line; blank lines and `#`
/// comments are skipped. The operator checks the Secret with it, and the
/// dump step reads it.
pub fn parse_age_recipients(text: &str) -> Result<Vec<age::x25519::Recipient>, String> {
    let keys: Result<Vec<_>, String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, l)| {
            l.parse::<age::x25519::Recipient>().map_err(|_| {
                format!(
                    "line {} of the recipients is not an age X25519 public key (age1…)",
                    i + 1
                )
            })
        })
        .collect();
    let keys = keys?;
    if keys.is_empty() {
        return Err("the recipients hold no age public key".into());
    }
    Ok(keys)
}

/// The one age X25519 identity (AGE-SECRET-KEY-1…) of a Secret's text, as
/// `age-keygen` writes its file (comment lines skipped). The operator checks
/// the Secret with it, and the download step reads it.
pub fn parse_age_identity(text: &str) -> Option<age::x25519::Identity> {
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    match (keys.next()?.parse(), keys.next()) {
        (Ok(identity), None) => Some(identity),
        _ => None,
    }
}

/// One key of a Secret in the resource's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret (default "recipients").
    #[serde(default = "default_recipients_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The Secret key holding an age identity.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret (default "identity").
    #[serde(default = "default_identity_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_identity_key() -> String {
    "identity".into()
}

fn default_recipients_key() -> String {
    "recipients".into()
}

pub(super) fn default_ca_key() -> String {
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
        let name = name.strip_suffix(".age").unwrap_or(name);
        [Compression::Gzip, Compression::Zstd]
            .into_iter()
            .find(|c| name.ends_with(c.extension()))
            .unwrap_or(Compression::None)
    }
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

/// The longest a Job may run: six hours, for a dump, an upload or a restore.
pub(super) fn default_deadline() -> i64 {
    6 * 3600
}

/// Parses an age such as `30d`, `12h`, `90m` or `1d12h`.
pub fn parse_age(text: &str) -> Result<chrono::Duration, String> {
    let bad = || format!("{text:?} is not an age such as 30d, 12h, 90m or 1d12h");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = chrono::Duration::zero();
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let unit = match c {
            'd' => chrono::Duration::try_days(n),
            'h' => chrono::Duration::try_hours(n),
            'm' => chrono::Duration::try_minutes(n),
            _ => None,
        }
        .ok_or_else(bad)?;
        total = total.checked_add(&unit).ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total.is_zero() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d").unwrap(), Duration::days(30));
        assert_eq!(parse_age("12h").unwrap(), Duration::hours(12));
        assert_eq!(
            parse_age("1d12h30m").unwrap(),
            Duration::minutes(36 * 60 + 30)
        );
        for bad in [
            "",
            "d",
            "30",
            "0d",
            "3w",
            "1.5d",
            "-1d",
            "99999999999999999d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod age_tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn age_keys_parse_as_age_keygen_writes_them() {
        let identity = age::x25519::Identity::generate();
        let secret = identity.to_string();
        let file = format!(
            "# created: 2026-11-26T17:00:00Z\n# public key: {}\n{}\n",
            identity.to_public(),
            secret.expose_secret()
        );
        assert!(parse_age_identity(&file).is_some());
        assert!(parse_age_identity("# nothing\n").is_none());
        let two = format!("{}\n{}\n", secret.expose_secret(), secret.expose_secret());
        assert!(parse_age_identity(&two).is_none(), "one identity only");
        let recipients = format!(
            "# ops\n{}\n\n{}\n",
            identity.to_public(),
            identity.to_public()
        );
        assert_eq!(parse_age_recipients(&recipients).unwrap().len(), 2);
        let e = parse_age_recipients(&format!("{}\nage1nope\n", identity.to_public())).unwrap_err();
        assert_eq!(
            e,
            "line 2 of the recipients is not an age X25519 public key (age1…)"
        );
    }
}
