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
}

impl StoreArgs {
    /// A client for the store; credentials come from the environment.
    pub async fn client(&self) -> Result<Client, String> {
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
        client(&StoreSettings {
            endpoint: self.endpoint.clone().filter(|e| !e.is_empty()),
            region: self
                .region
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "us-east-1".into()),
            force_path_style: self.force_path_style,
            ca_bundle,
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
    let shared = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared);
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

pub async fn object_exists(client: &Client, bucket: &str, key: &str) -> Result<bool, String> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
        Err(e) => Err(describe(&e)),
    }
}

/// Best effort: a failed abort leaves an upload that the next run, or a bucket
/// lifecycle rule, cleans up.
pub async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        tracing::warn!(key, error = %describe(&e), "cannot abort multipart upload");
    }
}

pub async fn ensure_bucket(client: &Client, bucket: &str) -> Result<(), String> {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
            match client.create_bucket().bucket(bucket).send().await {
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
