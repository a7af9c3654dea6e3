//! The S3 side of the job steps: client setup for AWS and S3-compatible
//! stores, errors reduced to text without credentials, and the listing,
//! existence checks and deletes the upload, retention and fetch share. The
//! put itself is in `put`, its proof in `proof`.

use crate::names;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Object metadata holding the part size of a multipart upload, so that a
/// download can recompute its ETag.
pub const PART_SIZE_META: &str = "dbbackup-part-size";
/// When the object's dump was taken, RFC 3339: its start where the upload
/// followed it as it was written (the tool takes its snapshot moments
/// later), else its finish (after its snapshot). A restore's `before` picks
/// by it.
pub const DUMPED_AT_META: &str = "dbbackup-dumped-at";

/// Smallest part we upload; boto3 and the AWS CLI default to it too.
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;

/// Largest part count S3 accepts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

pub(crate) const MIB: u64 = 1024 * 1024;

/// How the store is reached.
#[derive(Clone, Debug, Default)]
pub struct StoreSettings {
    /// Custom endpoint (MinIO and other S3-compatible stores); None for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style addressing; defaults to true with a custom endpoint.
    pub force_path_style: Option<bool>,
    /// PEM CA bundle added to the system roots.
    pub ca_bundle: Option<Vec<u8>>,
    /// Access keys to use instead of the SDK's default chain (environment,
    /// web identity, container and instance credentials).
    pub keys: Option<(String, String)>,
}

/// Where the store is and how to reach it, as the job pods receive it.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Bucket name (surrounding whitespace is dropped, as the operator's check does).
    #[arg(long, env = names::BUCKET_ENV, value_parser = |s: &str| Ok::<_, String>(crate::api::bucket_name(s).to_string()))]
    pub bucket: String,
    /// Endpoint URL of an S3-compatible store; empty or unset for AWS S3.
    #[arg(long, env = names::ENDPOINT_ENV)]
    pub endpoint: Option<String>,
    /// Region; empty or unset means us-east-1.
    #[arg(long, env = names::REGION_ENV)]
    pub region: Option<String>,
    /// Path-style addressing (default: on with a custom endpoint).
    #[arg(long)]
    pub force_path_style: Option<bool>,
    /// PEM CA bundle added to the system roots.
    #[arg(long)]
    pub ca_bundle: Option<std::path::PathBuf>,
    /// The kind of store (`spec.bucket.profile`); unset, from the endpoint.
    #[arg(long = "profile")]
    pub store_profile: Option<crate::api::StoreProfile>,
    /// Server-side encryption the store applies to each dump.
    #[arg(long)]
    pub sse: Option<crate::api::SseType>,
    /// The KMS key for `--sse aws:kms`; unset uses the bucket's default key.
    #[arg(long)]
    pub sse_kms_key_id: Option<String>,
    /// The SSE-C key, base64 of 32 bytes, from its Secret.
    #[arg(long, env = names::SSE_CUSTOMER_KEY_ENV, hide_env_values = true)]
    pub sse_customer_key: Option<super::tool::Hidden>,
    /// PEM roots added to the system's when the file exists: our image's CA
    /// store, for a step that runs in a database image that may have none.
    #[arg(long, hide = true)]
    pub image_roots: Option<std::path::PathBuf>,
}

/// Server-side encryption as the requests carry it.
#[derive(Clone, Default)]
pub enum Sse {
    #[default]
    None,
    S3,
    Kms(Option<String>),
    /// The key and its MD5, both base64, as the SSE-C headers take them.
    Customer {
        key: String,
        md5: String,
    },
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sse::None => f.write_str("None"),
            Sse::S3 => f.write_str("AES256"),
            Sse::Kms(id) => write!(f, "aws:kms({id:?})"),
            Sse::Customer { .. } => f.write_str("SSE-C(…)"),
        }
    }
}

impl Sse {
    /// Whether the store's ETag is no MD5 of the object (S3 and MinIO give
    /// KMS and SSE-C objects others, which may still look like one), so a
    /// checksum must prove the upload and the download.
    pub fn hides_md5(&self) -> bool {
        matches!(self, Sse::Kms(_) | Sse::Customer { .. })
    }

    /// An SSE-C key from base64 text of 32 bytes; the error never shows it.
    pub fn customer(text: &str) -> Result<Sse, String> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
            .filter(|raw| raw.len() == 32)
            .ok_or("the SSE-C key must be 32 bytes, base64-encoded (as `openssl rand -base64 32` writes it); the Secret's value is not")?;
        use md5::Digest as _;
        let md5 = md5::Md5::digest(&raw);
        Ok(Sse::Customer {
            key: base64::engine::general_purpose::STANDARD.encode(&raw),
            md5: base64::engine::general_purpose::STANDARD.encode(md5),
        })
    }
}

/// Adds the server-side encryption headers a request needs: all of them on
/// the requests that create an object, only the SSE-C key on the others.
pub trait WithSse {
    fn with_sse(self, sse: &Sse) -> Self;
}

macro_rules! with_sse {
    (creates: $($t:ty),*) => {$(
        impl WithSse for $t {
            fn with_sse(self, sse: &Sse) -> Self {
                use aws_sdk_s3::types::ServerSideEncryption as S;
                match sse {
                    Sse::None => self,
                    Sse::S3 => self.server_side_encryption(S::Aes256),
                    Sse::Kms(id) => self
                        .server_side_encryption(S::AwsKms)
                        .set_ssekms_key_id(id.clone()),
                    Sse::Customer { key, md5 } => self
                        .sse_customer_algorithm("AES256")
                        .sse_customer_key(key)
                        .sse_customer_key_md5(md5),
                }
            }
        }
    )*};
    (reads: $($t:ty),*) => {$(
        impl WithSse for $t {
            fn with_sse(self, sse: &Sse) -> Self {
                match sse {
                    Sse::Customer { key, md5 } => self
                        .sse_customer_algorithm("AES256")
                        .sse_customer_key(key)
                        .sse_customer_key_md5(md5),
                    _ => self,
                }
            }
        }
    )*};
}

use aws_sdk_s3::operation as op;
with_sse!(creates:
    op::put_object::builders::PutObjectFluentBuilder,
    op::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder
);
with_sse!(reads:
    op::upload_part::builders::UploadPartFluentBuilder,
    op::complete_multipart_upload::builders::CompleteMultipartUploadFluentBuilder,
    op::head_object::builders::HeadObjectFluentBuilder,
    op::get_object::builders::GetObjectFluentBuilder
);

impl StoreArgs {
    /// The kind of store: as set, else AWS without an endpoint, generic with one.
    pub fn profile(&self) -> crate::api::StoreProfile {
        let endpoint = self.endpoint.as_deref().filter(|e| !e.is_empty());
        self.store_profile
            .unwrap_or_else(|| crate::api::StoreProfile::default_for(endpoint))
    }

    /// The server-side encryption the flags ask for.
    pub fn sse(&self) -> Result<Sse, String> {
        use crate::api::SseType;
        match (self.sse, &self.sse_customer_key) {
            (None, _) => Ok(Sse::None),
            (Some(SseType::Aes256), _) => Ok(Sse::S3),
            (Some(SseType::AwsKms), _) => Ok(Sse::Kms(
                self.sse_kms_key_id.clone().filter(|k| !k.is_empty()),
            )),
            (Some(SseType::Customer), Some(key)) => Sse::customer(&key.0),
            (Some(SseType::Customer), None) => Err(format!(
                "SSE-C needs its key in {}",
                names::SSE_CUSTOMER_KEY_ENV
            )),
        }
    }

    /// A client for the store; credentials come from the environment.
    pub async fn client(&self) -> Result<Client, String> {
        self.client_with(None).await
    }

    /// A client for the store with `keys` as its credentials, or the
    /// environment's without.
    pub async fn client_with(&self, keys: Option<(String, String)>) -> Result<Client, String> {
        let ca_bundle = match &self.ca_bundle {
            Some(p) => {
                let pem = std::fs::read(p)
                    .map_err(|e| format!("cannot read CA bundle {}: {e}", p.display()))?;
                // Said here, not later as an unknown issuer that does not say why.
                if !crate::api::valid_ca_bundle(&pem) {
                    return Err(format!(
                        "CA bundle {} holds no well-formed PEM certificate",
                        p.display()
                    ));
                }
                Some(pem)
            }
            None => None,
        };
        // Missing or unreadable: the system's roots are all there is.
        let image_roots = self
            .image_roots
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .filter(|pem| crate::api::valid_ca_bundle(pem));
        let ca_bundle = match (ca_bundle, image_roots) {
            (Some(mut pem), Some(roots)) => {
                pem.push(b'\n');
                pem.extend(roots);
                Some(pem)
            }
            (pem, roots) => pem.or(roots),
        };
        client(&StoreSettings {
            endpoint: self.endpoint.clone().filter(|e| !e.is_empty()),
            region: self
                .region
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "us-east-1".into()),
            force_path_style: self.force_path_style,
            ca_bundle,
            keys,
        })
        .await
    }
}

/// A store error, reduced to text that names the problem and holds no credential.
pub fn describe<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let status = service.raw().status();
            match (e.code(), e.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_string(),
                // HEAD responses carry no error body, only the status.
                _ => format!(
                    "HTTP {} {}",
                    status.as_u16(),
                    http::StatusCode::from_u16(status.as_u16())
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("")
                )
                .trim_end()
                .to_string(),
            }
        }
        _ => DisplayErrorContext(err).to_string(),
    }
}

pub(crate) fn http_status<E, R>(err: &SdkError<E, R>) -> Option<u16>
where
    R: HasStatus,
{
    err.raw_response().map(|r| r.status_code())
}

pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

pub async fn client(settings: &StoreSettings) -> Result<Client, String> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()));
    if let Some(pem) = &settings.ca_bundle {
        use aws_smithy_http_client::tls;
        let trust = tls::TrustStore::default().with_pem_certificate(pem.clone());
        let ctx = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| format!("invalid CA bundle: {e}"))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(ctx)
            .build_https();
        loader = loader.http_client(http);
    }
    if let Some((id, secret)) = &settings.keys {
        let keys = aws_sdk_s3::config::Credentials::new(id, secret, None, None, "dbbackup");
        loader = loader.credentials_provider(keys);
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared);
    if settings.keys.is_none()
        && let Some(identity) =
            super::webidentity::WebIdentity::from_env(&shared, settings.endpoint.as_deref())
    {
        config = config.credentials_provider(identity);
    }
    match &settings.endpoint {
        Some(endpoint) => {
            // Since 2025 the SDK adds CRC checksums to every request by default, which
            // several S3-compatible stores reject; send them only where S3 requires them.
            config = config
                .endpoint_url(endpoint)
                .force_path_style(settings.force_path_style.unwrap_or(true))
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        None => {
            if let Some(path_style) = settings.force_path_style {
                config = config.force_path_style(path_style);
            }
        }
    }
    Ok(Client::from_conf(config.build()))
}

/// Every object under `prefix`, following continuation tokens past 1,000 keys.
pub async fn list_objects(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<super::retention::Listed>, String> {
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut objects = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| describe(&e))?;
        objects.extend(page.contents().iter().filter_map(|o| {
            Some(super::retention::Listed {
                key: o.key()?.to_string(),
                last_modified: o
                    .last_modified()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                size: o.size(),
            })
        }));
    }
    Ok(objects)
}

/// Every key under `prefix`.
pub async fn list_keys(client: &Client, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
    Ok(list_objects(client, bucket, prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect())
}

/// Deletes `keys`, 1,000 per DeleteObjects request, one by one where the store
/// refuses bulk deletes. Returns each key with the error that kept it, if any.
pub async fn delete_keys(
    client: &Client,
    bucket: &str,
    keys: &[String],
) -> Vec<(String, Result<(), String>)> {
    let mut results = vec![];
    for chunk in keys.chunks(1000) {
        match delete_bulk(client, bucket, chunk).await {
            Ok(failed) => results.extend(chunk.iter().map(|k| {
                let outcome = failed.iter().find(|(f, _)| f == k).map(|(_, e)| e.clone());
                (k.clone(), outcome.map_or(Ok(()), Err))
            })),
            Err(e) => {
                tracing::warn!(error = %e, "bulk delete refused; deleting one by one");
                for key in chunk {
                    let one = client.delete_object().bucket(bucket).key(key).send().await;
                    results.push((key.clone(), one.map(|_| ()).map_err(|e| describe(&e))));
                }
            }
        }
    }
    results
}

/// Deletes each key's current version unless its Object Lock retention
/// holds past `now`. The version itself goes, not just out of sight behind
/// a delete marker (a lock-enabled bucket keeps versions). Returns each key
/// with the time its lock holds until, or why it could not go.
pub async fn delete_unlocked(
    client: &Client,
    bucket: &str,
    keys: &[String],
    sse: &Sse,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(
    String,
    Result<Option<chrono::DateTime<chrono::Utc>>, String>,
)> {
    let mut results = vec![];
    for key in keys {
        let outcome = async {
            let head = head(client, bucket, key, sse)
                .send()
                .await
                .map_err(|e| describe(&e))?;
            let until = head
                .object_lock_retain_until_date()
                .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), 0))
                .filter(|until| *until > now);
            if until.is_some() {
                return Ok(until);
            }
            client
                .delete_object()
                .bucket(bucket)
                .key(key)
                .set_version_id(head.version_id().map(str::to_string))
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok(None)
        }
        .await;
        results.push((key.clone(), outcome));
    }
    results
}

/// One DeleteObjects request: the keys it could not delete, or why the request failed.
async fn delete_bulk(
    client: &Client,
    bucket: &str,
    keys: &[String],
) -> Result<Vec<(String, String)>, String> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let objects = keys
        .iter()
        .map(|k| ObjectIdentifier::builder().key(k).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let delete = Delete::builder()
        .set_objects(Some(objects))
        .quiet(true)
        .build()
        .map_err(|e| e.to_string())?;
    let out = client
        .delete_objects()
        .bucket(bucket)
        .delete(delete)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    Ok(out
        .errors()
        .iter()
        .map(|e| {
            let why = match (e.code(), e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => "not deleted".into(),
            };
            (e.key().unwrap_or_default().to_string(), why)
        })
        .collect())
}

/// A HEAD request of `key`, with the SSE-C key a HEAD of such an object needs.
pub fn head(
    client: &Client,
    bucket: &str,
    key: &str,
    sse: &Sse,
) -> op::head_object::builders::HeadObjectFluentBuilder {
    client.head_object().bucket(bucket).key(key).with_sse(sse)
}

pub async fn object_exists(
    client: &Client,
    bucket: &str,
    key: &str,
    sse: &Sse,
) -> Result<bool, String> {
    match head(client, bucket, key, sse).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
        Err(e) => Err(describe(&e)),
    }
}

/// Best effort: a failed abort leaves an upload that the next run, or a bucket
/// lifecycle rule, cleans up.
pub async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) -> bool {
    match client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(key, error = %describe(&e), "cannot abort multipart upload");
            false
        }
    }
}

/// Creates the bucket when missing; with Object Lock enabled where `locked`
/// asks for it, since it cannot be turned on later for a bucket S3 made without.
pub async fn ensure_bucket(client: &Client, bucket: &str, locked: bool) -> Result<(), String> {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
            let create = client.create_bucket().bucket(bucket);
            let create = match locked {
                true => create.object_lock_enabled_for_bucket(true),
                false => create,
            };
            match create.send().await {
                Ok(_) => Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
                {
                    Ok(())
                }
                Err(e) => Err(format!("cannot create bucket {bucket}: {}", describe(&e))),
            }
        }
        Err(e) => Err(format!("cannot reach bucket {bucket}: {}", describe(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_c_key_is_32_bytes_of_base64_and_never_shown() {
        let text = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0..32
        let Sse::Customer { key, md5 } = Sse::customer(&format!("{text}\n")).unwrap() else {
            panic!("not SSE-C");
        };
        assert_eq!(key, text);
        assert_eq!(md5, "tP/LI3N87DFaSk0aoqYgzg==");
        assert_eq!(format!("{:?}", Sse::customer(text).unwrap()), "SSE-C(…)");
        for bad in ["c2hvcnQ=", "not base64 at all!", ""] {
            let e = Sse::customer(bad).unwrap_err();
            assert!(
                e.contains("32 bytes") && (bad.is_empty() || !e.contains(bad)),
                "{e}"
            );
        }
    }

    #[test]
    fn only_kms_and_sse_c_hide_the_md5() {
        assert!(!Sse::None.hides_md5() && !Sse::S3.hides_md5());
        assert!(Sse::Kms(None).hides_md5());
        assert!(
            Sse::customer("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
                .unwrap()
                .hides_md5()
        );
    }
}
