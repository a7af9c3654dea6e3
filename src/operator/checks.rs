//! What admission cannot check: cron value ranges, and the objects the spec
//! refers to. Each problem carries a condition reason and a message that
//! names what to fix, and never a Secret's value.

use super::exposure;
use crate::api::{BucketSpec, CredentialsSecretRef, DatabaseBackup, IdentitySecretRef};
use crate::reasons;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::{Api, Client, ResourceExt};
use std::collections::HashMap;
use std::str::FromStr;

/// A user-fixable problem with a `DatabaseBackup`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// Parses a 5-field cron expression the way the CronJob controller must accept it.
pub fn parse_schedule(expr: &str) -> Result<croner::Cron, String> {
    if expr.split_whitespace().count() != 5 && !expr.trim_start().starts_with('@') {
        return Err("must have exactly 5 fields".into());
    }
    croner::Cron::from_str(expr).map_err(|e| e.to_string())
}

/// Checks the spec on its own: what CEL cannot express.
pub fn validate_spec(db: &DatabaseBackup) -> Result<(), Problem> {
    let spec = &db.spec;
    for (field, expr) in [
        ("spec.schedule", &spec.schedule),
        ("spec.uploadSchedule", &spec.upload_schedule),
    ] {
        parse_schedule(expr).map_err(|e| {
            Problem::new(
                reasons::INVALID_SCHEDULE,
                format!("{field} {expr:?} is not a valid cron expression: {e}"),
            )
        })?;
    }
    chrono_tz::Tz::from_str(&spec.time_zone).map_err(|_| {
        Problem::new(
            reasons::INVALID_TIME_ZONE,
            format!(
                "spec.timeZone {:?} is not an IANA time zone",
                spec.time_zone
            ),
        )
    })?;
    if let Some(age) = spec.retention.as_ref().and_then(|r| r.max_age.as_ref()) {
        crate::api::parse_age(age).map_err(|e| {
            Problem::new(
                reasons::INVALID_RETENTION,
                format!("spec.retention.maxAge: {e}"),
            )
        })?;
    }
    Ok(())
}

/// True for names S3 accepts as a bucket name (the rules AWS documents for new buckets).
pub fn valid_bucket_name(name: &str) -> bool {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let edges = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&name.len())
        && ok_chars
        && edges(name.as_bytes().first())
        && edges(name.as_bytes().last())
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

async fn get_secret(client: &Client, ns: &str, name: &str) -> Result<Secret, CheckError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets.get_opt(name).await?.ok_or_else(|| {
        Problem::new(
            reasons::SECRET_NOT_FOUND,
            format!("secret {name:?} not found in namespace {ns:?}"),
        )
        .into()
    })
}

/// The value of `key` in `secret`, or a problem naming the Secret and key.
pub(super) fn secret_value<'a>(secret: &'a Secret, key: &str) -> Result<&'a [u8], Problem> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.as_slice());
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Problem::new(
            reasons::SECRET_KEY_MISSING,
            format!("secret {:?} has no key {key:?}", secret.name_any()),
        )),
    }
}

/// Each notification target's URL, read from its Secret, or what is wrong
/// with it (never the URL itself: it is a credential). An API error is the
/// target's problem for this pass, not the reconcile's: notifications never
/// hold up the status.
pub async fn notify_urls(
    db: &DatabaseBackup,
    client: &Client,
) -> HashMap<String, Result<String, String>> {
    let ns = db.namespace().unwrap_or_default();
    let mut urls = HashMap::new();
    for t in &db.spec.notify {
        let s = &t.url_secret;
        let url = match get_secret(client, &ns, &s.name).await {
            Err(CheckError::Kube(e)) => Err(format!("cannot read secret {:?}: {e}", s.name)),
            Err(CheckError::Problem(p)) => Err(p.message),
            Ok(secret) => match secret_value(&secret, &s.key) {
                Err(p) => Err(p.message),
                Ok(v) => {
                    let url = String::from_utf8_lossy(v).trim().to_string();
                    match super::notify::check_url(&url) {
                        Ok(()) => Ok(url),
                        Err(e) => Err(format!(
                            "the value of key {:?} in secret {:?} {e}",
                            s.key, s.name
                        )),
                    }
                }
            },
        };
        urls.insert(t.name.clone(), url);
    }
    urls
}

/// Either a user-fixable problem, or the API failing us.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Problem(#[from] Problem),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Checks every object the spec refers to. Secrets are read by name in the
/// resource's own namespace, never listed.
pub async fn check_references(db: &DatabaseBackup, client: &Client) -> Result<(), CheckError> {
    let ns = db.namespace().unwrap_or_default();
    let spec = &db.spec;
    check_credentials(client, &ns, &spec.database.credentials_secret).await?;
    let keys_optional = spec.jobs.service_account_name.is_some();
    check_bucket(client, &ns, &spec.bucket, keys_optional).await?;
    if let Some(encryption) = &spec.encryption {
        let recipients = &encryption.recipients_secret;
        let secret = get_secret(client, &ns, &recipients.name).await?;
        let text = String::from_utf8_lossy(secret_value(&secret, &recipients.key)?);
        // The error names the line, never its text.
        crate::api::parse_age_recipients(&text).map_err(|e| {
            Problem::new(
                reasons::INVALID_AGE_KEY,
                format!("secret {:?} key {:?}: {e}", recipients.name, recipients.key),
            )
        })?;
        if let Some(identity) = &encryption.identity_secret {
            check_age_identity(client, &ns, identity).await?;
        }
    }
    if let Some(class) = &spec.staging.storage_class_name {
        let classes: Api<StorageClass> = Api::all(client.clone());
        if classes.get_opt(class).await?.is_none() {
            return Err(Problem::new(
                reasons::STORAGE_CLASS_NOT_FOUND,
                format!("spec.staging.storageClassName: storage class {class:?} does not exist"),
            )
            .into());
        }
    }
    Ok(())
}

/// The Secret key holds one age identity.
pub async fn check_age_identity(
    client: &Client,
    ns: &str,
    identity: &IdentitySecretRef,
) -> Result<(), CheckError> {
    let secret = get_secret(client, ns, &identity.name).await?;
    let text = String::from_utf8_lossy(secret_value(&secret, &identity.key)?);
    if crate::api::parse_age_identity(&text).is_none() {
        return Err(Problem::new(
            reasons::INVALID_AGE_KEY,
            format!(
                "secret {:?} key {:?} holds no age X25519 identity (AGE-SECRET-KEY-1…)",
                identity.name, identity.key
            ),
        )
        .into());
    }
    Ok(())
}

/// The database credentials Secret holds both keys.
pub async fn check_credentials(
    client: &Client,
    ns: &str,
    creds: &CredentialsSecretRef,
) -> Result<(), CheckError> {
    let secret = get_secret(client, ns, &creds.name).await?;
    secret_value(&secret, &creds.username_key)?;
    secret_value(&secret, &creds.password_key)?;
    Ok(())
}

/// The bucket Secret holds a valid bucket name and the keys (unless a web
/// identity replaces them, or `keys_optional`); a CA bundle is PEM; an SSE-C
/// key is 32 bytes; a prune Secret holds its keys.
pub async fn check_bucket(
    client: &Client,
    ns: &str,
    bucket: &BucketSpec,
    keys_optional: bool,
) -> Result<(), CheckError> {
    let secret = get_secret(client, ns, &bucket.secret_ref.name).await?;
    if bucket.name.is_none() {
        let name = secret_value(&secret, &bucket.secret_ref.bucket_key)?;
        let name = String::from_utf8_lossy(name);
        if !valid_bucket_name(crate::api::bucket_name(&name)) {
            return Err(Problem::new(
                reasons::INVALID_BUCKET_NAME,
                format!(
                    "secret {:?} key {:?} does not hold a valid S3 bucket name",
                    bucket.secret_ref.name, bucket.secret_ref.bucket_key
                ),
            )
            .into());
        }
    }
    exposure::check_secrets_travel_over_tls(bucket, &secret)?;
    if let Some(identity) = &bucket.web_identity {
        let apiserver = exposure::apiserver_audiences(client).await;
        exposure::check_audience(&identity.audience, &apiserver)?;
    }
    if bucket.web_identity.is_none() && !keys_optional {
        secret_value(&secret, &bucket.secret_ref.access_key_id_key)?;
        secret_value(&secret, &bucket.secret_ref.secret_access_key_key)?;
    }
    if let Some(prune) = &bucket.prune_secret_ref {
        let secret = get_secret(client, ns, &prune.name).await?;
        secret_value(&secret, &prune.access_key_id_key)?;
        secret_value(&secret, &prune.secret_access_key_key)?;
    }
    let customer_key = bucket
        .server_side_encryption
        .as_ref()
        .and_then(|s| s.customer_key_secret.as_ref());
    if let Some(key) = customer_key {
        let secret = get_secret(client, ns, &key.name).await?;
        if !crate::api::valid_sse_customer_key(secret_value(&secret, &key.key)?) {
            return Err(Problem::new(
                reasons::INVALID_SSE_KEY,
                format!(
                    "secret {:?} key {:?} is not an SSE-C key: 32 bytes, base64-encoded",
                    key.name, key.key
                ),
            )
            .into());
        }
    }

    if let Some(ca) = &bucket.ca_bundle {
        let secret = get_secret(client, ns, &ca.name).await?;
        let pem = secret_value(&secret, &ca.key)?;
        if !crate::api::valid_ca_bundle(pem) {
            return Err(Problem::new(
                reasons::INVALID_CA_BUNDLE,
                format!(
                    "secret {:?} key {:?} is not a PEM certificate bundle",
                    ca.name, ca.key
                ),
            )
            .into());
        }
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_cron_and_macros_parse() {
        for ok in ["0 3 * * *", "*/5 * * * *", "@daily", "0 0 1 JAN MON-FRI"] {
            assert!(parse_schedule(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn seconds_and_out_of_range_values_are_refused() {
        for bad in ["0 0 3 * * *", "61 * * * *", "0 25 * * *", "* * *"] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ca_bundles() {
        let cert = rcgen::generate_simple_self_signed(vec!["minio.local".into()]).unwrap();
        let pem = cert.cert.pem();
        assert!(crate::api::valid_ca_bundle(pem.as_bytes()));
        assert!(crate::api::valid_ca_bundle(
            format!("{pem}{pem}").as_bytes()
        ));
        let broken = pem.replacen("MII", "M!I", 1);
        for bad in ["not a certificate", "", broken.as_str()] {
            assert!(!crate::api::valid_ca_bundle(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn bucket_names() {
        for ok in ["backups", "my.bucket-01", "abc"] {
            assert!(valid_bucket_name(ok), "{ok}");
        }
        for bad in ["ab", "Backups", "-x-", "a..b", "192.168.1.1", "under_score"] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }
}
