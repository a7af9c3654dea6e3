//! S3 side of the upload: client setup for AWS and S3-compatible stores, and a
//! streaming, verifiable, never-overwriting put of one file.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
};
use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest as _, Md5};
use std::path::Path;

/// Object metadata holding the part size of a multipart upload, so that a
/// download can recompute its ETag.
pub const PART_SIZE_META: &str = "dbbackup-part-size";
/// Smallest part we upload; boto3 and the AWS CLI default to it too.
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;

/// Largest part count S3 accepts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
const MIB: u64 = 1024 * 1024;

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
    #[arg(long, env = "DBBACKUP_BUCKET", value_parser = |s: &str| Ok::<_, String>(crate::api::bucket_name(s).to_string()))]
    pub bucket: String,
    /// Endpoint URL of an S3-compatible store; empty or unset for AWS S3.
    #[arg(long, env = "DBBACKUP_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Region; empty or unset means us-east-1.
    #[arg(long, env = "AWS_REGION")]
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

/// Throughput knobs; memory stays near `part_size × (concurrency + 1)`.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub min_part_size: u64,
    pub concurrency: usize,
}

/// Part size for a file: at least `min`, large enough for ≤ 10,000 parts, whole MiB.
pub fn part_size(file_size: u64, min: u64) -> u64 {
    let needed = file_size.div_ceil(MAX_PARTS);
    needed.max(min).div_ceil(MIB) * MIB
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

fn http_status<E, R>(err: &SdkError<E, R>) -> Option<u16>
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

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// Somebody else wrote the key first (If-None-Match refused).
    #[error("object {0} already exists")]
    KeyTaken(String),
    /// The store does not implement conditional writes.
    #[error("the store does not support If-None-Match")]
    ConditionalUnsupported,
    #[error("{0}")]
    Failed(String),
}

fn classify<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>, key: &str) -> PutError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (http_status(&err), err.code()) {
        (Some(412), _) | (_, Some("PreconditionFailed")) => PutError::KeyTaken(key.to_string()),
        // A concurrent conditional write to the same key.
        (Some(409), Some("ConditionalRequestConflict")) => PutError::KeyTaken(key.to_string()),
        (Some(501), _) | (_, Some("NotImplemented")) => PutError::ConditionalUnsupported,
        _ => PutError::Failed(describe(&err)),
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

/// What a successful put wrote, for verification.
#[derive(Clone, Debug)]
pub struct Written {
    pub size: u64,
    pub proof: Proof,
}

/// What the store must report for the object we sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Proof {
    /// The ETag: MD5 of the object, or for multipart the MD5 of the parts'
    /// MD5s followed by `-<parts>`.
    ETag(String),
    /// The full-object CRC64/NVME checksum, base64 as S3 reports it.
    Crc64Nvme(String),
}

impl std::fmt::Display for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::ETag(etag) => write!(f, "etag:{etag}"),
            Proof::Crc64Nvme(crc) => write!(f, "crc64nvme:{crc}"),
        }
    }
}

/// CRC64/NVME as S3 writes it: the big-endian bytes, base64.
pub fn crc64nvme_base64(crc: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ETag S3 gives a multipart upload: the MD5 of its parts' MD5s, then the part count.
pub fn multipart_etag(part_md5s: &[u8], parts: usize) -> String {
    format!("{}-{parts}", hex(&Md5::digest(part_md5s)))
}

/// Whether an ETag is an MD5 (or multipart MD5) at all. Stores with KMS
/// encryption report others, which no local hash can match.
pub fn md5_style(etag: &str) -> bool {
    etag.split('-')
        .next()
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Reads up to `buf.capacity()` bytes; fewer only at end of file.
fn read_part(file: &mut std::fs::File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read as _;
    buf.clear();
    let want = buf.capacity() as u64;
    file.take(want).read_to_end(buf)?;
    Ok(())
}

/// The next part of the file, read into a reused buffer, with its checksums.
struct Part {
    file: std::fs::File,
    buf: Vec<u8>,
    /// Only where the store's ETag is the proof: MD5 costs more CPU than the
    /// rest of the upload together.
    md5: Option<[u8; 16]>,
    /// Hardware-assisted; next to free.
    crc64nvme: u64,
}

/// Reads and checksums the next part on a blocking thread, so the uploads in
/// flight keep the runtime to themselves.
async fn next_part(
    mut file: std::fs::File,
    mut buf: Vec<u8>,
    with_md5: bool,
) -> std::io::Result<Part> {
    tokio::task::spawn_blocking(move || {
        read_part(&mut file, &mut buf)?;
        let md5 = with_md5.then(|| Md5::digest(&buf).into());
        let crc64nvme = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &buf);
        Ok(Part {
            file,
            buf,
            md5,
            crc64nvme,
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

fn content_md5(md5: &[u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5)
}

/// Called with the multipart upload id as soon as it exists, so an interrupted
/// run can be cleaned up by the next one.
pub type OnStart<'a> = &'a (dyn Fn(&str) -> std::io::Result<()> + Sync);

/// Uploads `path` to `key` without ever replacing an existing object (with
/// `conditional`, through `If-None-Match: *`). Each part carries a checksum the
/// store checks on receipt: CRC64/NVME where the store keeps a full-object
/// CRC64/NVME (S3 and MinIO do), else Content-MD5. A single-request put always
/// sends Content-MD5. On any error a multipart upload is aborted.
#[allow(clippy::too_many_arguments)]
pub async fn put_file(
    client: &Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    tuning: Tuning,
    conditional: bool,
    on_start: OnStart<'_>,
) -> Result<Written, PutError> {
    let io = |e: std::io::Error| PutError::Failed(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(io)?;
    let part_size = part_size(size, tuning.min_part_size);

    if size <= part_size {
        let part = next_part(file, Vec::with_capacity(size as usize), true)
            .await
            .map_err(io)?;
        let md5 = part.md5.expect("asked for");
        let mut put = client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_md5(content_md5(&md5))
            .content_length(part.buf.len() as i64)
            .body(ByteStream::from(part.buf));
        if conditional {
            put = put.if_none_match("*");
        }
        // Content-MD5, a signed header, already guards the body; signing the
        // payload too would hash it twice more (here and at the store).
        put.customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        return Ok(Written {
            size,
            proof: Proof::ETag(hex(&md5)),
        });
    }

    let create = || {
        client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .metadata(PART_SIZE_META, part_size.to_string())
    };
    let created = match create()
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .checksum_type(ChecksumType::FullObject)
        .send()
        .await
    {
        Ok(created) => created,
        // Some S3-compatible stores refuse any checksum header outright.
        Err(e) if matches!(http_status(&e), Some(400 | 501)) => {
            tracing::info!(error = %describe(&e), "store refuses CRC64/NVME; parts carry Content-MD5");
            create().send().await.map_err(|e| classify(e, key))?
        }
        Err(e) => return Err(classify(e, key)),
    };
    // A store that does not name the algorithm back ignored it (older
    // S3-compatible stores); its ETag is the proof there.
    let crc = created.checksum_algorithm() == Some(&ChecksumAlgorithm::Crc64Nvme);
    let upload_id = created
        .upload_id()
        .ok_or_else(|| PutError::Failed("store returned no upload id".into()))?
        .to_string();
    if let Err(e) = on_start(&upload_id) {
        abort(client, bucket, key, &upload_id).await;
        return Err(PutError::Failed(format!("cannot record the upload: {e}")));
    }

    let target = Target {
        client: client.clone(),
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.clone(),
        crc,
    };
    let result = upload_parts(target, file, size, part_size, tuning).await;
    let (parts, sums) = match result {
        Ok(done) => done,
        Err(e) => {
            abort(client, bucket, key, &upload_id).await;
            return Err(e);
        }
    };
    let mut complete = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        );
    let proof = match sums {
        PartSums::Md5(md5s) => Proof::ETag(multipart_etag(&md5s.concat(), md5s.len())),
        PartSums::Crc64Nvme(whole) => {
            let whole = crc64nvme_base64(whole);
            complete = complete
                .checksum_crc64_nvme(&whole)
                .checksum_type(ChecksumType::FullObject);
            Proof::Crc64Nvme(whole)
        }
    };
    if conditional {
        complete = complete.if_none_match("*");
    }
    if let Err(e) = complete.send().await {
        abort(client, bucket, key, &upload_id).await;
        return Err(classify(e, key));
    }
    Ok(Written { size, proof })
}

/// Where the parts of one multipart upload go.
#[derive(Clone)]
struct Target {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    /// Parts carry CRC64/NVME instead of Content-MD5.
    crc: bool,
}

/// The parts' MD5s, or the CRC64/NVME of the whole file.
enum PartSums {
    Md5(Vec<[u8; 16]>),
    Crc64Nvme(u64),
}

impl Target {
    /// Uploads one part; hands back its buffer for reuse.
    async fn send(
        self,
        number: i32,
        md5: Option<[u8; 16]>,
        crc64nvme: u64,
        bytes: Bytes,
    ) -> Result<(CompletedPart, Bytes), PutError> {
        let mut request = self
            .client
            .upload_part()
            .bucket(self.bucket)
            .key(self.key)
            .upload_id(self.upload_id)
            .part_number(number)
            .content_length(bytes.len() as i64)
            .body(ByteStream::from(bytes.clone()));
        let crc = self.crc.then(|| crc64nvme_base64(crc64nvme));
        request = match (&crc, md5) {
            (Some(crc), _) => request.checksum_crc64_nvme(crc),
            (None, Some(md5)) => request.content_md5(content_md5(&md5)),
            (None, None) => unreachable!("a part without a checksum"),
        };
        // The part's checksum is a signed header and guards the body; signing
        // the payload too would hash it once more here and once at the store.
        let out = request
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| PutError::Failed(format!("part {number}: {}", describe(&e))))?;
        let part = CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .set_checksum_crc64_nvme(crc)
            .build();
        Ok((part, bytes))
    }
}

/// Reads parts in order and keeps up to `concurrency` uploads in flight, each
/// its own task, while the next part is read and checksummed. Memory stays at
/// `concurrency + 1` part buffers, reused once their upload is done. Returns
/// the parts and their checksums.
async fn upload_parts(
    target: Target,
    mut file: std::fs::File,
    size: u64,
    part_size: u64,
    tuning: Tuning,
) -> Result<(Vec<CompletedPart>, PartSums), PutError> {
    let count = size.div_ceil(part_size);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut pool: Vec<Vec<u8>> = vec![];
    let mut parts = Vec::with_capacity(count as usize);
    let mut md5s = Vec::with_capacity(count as usize);
    let mut whole_crc = None;
    let joined = |r: Result<_, tokio::task::JoinError>| {
        r.map_err(|e| PutError::Failed(format!("part upload stopped: {e}")))?
    };
    for number in 1..=count {
        if in_flight.len() >= tuning.concurrency.max(1) {
            let (part, bytes): (CompletedPart, Bytes) =
                joined(in_flight.join_next().await.expect("non-empty"))?;
            parts.push(part);
            if let Ok(buf) = bytes.try_into_mut() {
                pool.push(buf.into());
            }
        }
        let buf = pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(part_size as usize));
        let mut part = next_part(file, buf, !target.crc)
            .await
            .map_err(|e| PutError::Failed(format!("cannot read the dump: {e}")))?;
        if part.buf.is_empty() {
            return Err(PutError::Failed("the dump shrank while uploading".into()));
        }
        let len = part.buf.len() as u64;
        whole_crc = Some(match whole_crc {
            None => part.crc64nvme,
            Some(before) => crc_fast::checksum_combine(
                crc_fast::CrcAlgorithm::Crc64Nvme,
                before,
                part.crc64nvme,
                len,
            ),
        });
        md5s.extend(part.md5);
        let bytes = Bytes::from(std::mem::take(&mut part.buf));
        in_flight.spawn(
            target
                .clone()
                .send(number as i32, part.md5, part.crc64nvme, bytes),
        );
        file = part.file;
    }
    while let Some(done) = in_flight.join_next().await {
        parts.push(joined(done)?.0);
    }
    parts.sort_by_key(|p| p.part_number());
    let sums = if target.crc {
        PartSums::Crc64Nvme(whole_crc.expect("at least one part"))
    } else {
        PartSums::Md5(md5s)
    };
    Ok((parts, sums))
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

/// Confirms the object is there with the size and the ETag or full-object
/// checksum we computed locally.
pub async fn verify(
    client: &Client,
    bucket: &str,
    key: &str,
    written: &Written,
) -> Result<(), String> {
    let mut head = client.head_object().bucket(bucket).key(key);
    if matches!(written.proof, Proof::Crc64Nvme(_)) {
        head = head.checksum_mode(ChecksumMode::Enabled);
    }
    let head = head
        .send()
        .await
        .map_err(|e| format!("cannot confirm the upload of {key}: {}", describe(&e)))?;
    let size = head.content_length().unwrap_or(-1);
    if size != written.size as i64 {
        return Err(format!(
            "upload of {key} not confirmed: the store holds {size} bytes, expected {}",
            written.size
        ));
    }
    match &written.proof {
        Proof::ETag(expected) => {
            let etag = head.e_tag().unwrap_or_default().trim_matches('"');
            // Where the ETag is no MD5, size and the per-part Content-MD5 checks the
            // store made on receipt are the proof.
            if md5_style(etag) && etag != expected {
                return Err(format!(
                    "upload of {key} not confirmed: ETag {etag} differs from the expected {expected}"
                ));
            }
        }
        Proof::Crc64Nvme(expected) => match head.checksum_crc64_nvme() {
            Some(crc) if crc == expected => {}
            Some(crc) => {
                return Err(format!(
                    "upload of {key} not confirmed: CRC64/NVME {crc} differs from the expected {expected}"
                ));
            }
            None => {
                return Err(format!(
                    "upload of {key} not confirmed: the store reports no CRC64/NVME checksum"
                ));
            }
        },
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_keeps_within_ten_thousand_parts() {
        assert_eq!(part_size(100 * MIB, 8 * MIB), 8 * MIB);
        let huge = 5 * 1024 * 1024 * MIB; // 5 TiB, the largest S3 object
        let p = part_size(huge, 8 * MIB);
        assert!(huge.div_ceil(p) <= MAX_PARTS);
        assert_eq!(p % MIB, 0);
    }

    #[test]
    fn crc64nvme_is_written_as_s3_does() {
        // The CRC-64/NVME check value, big-endian, base64.
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, b"123456789");
        assert_eq!(crc, 0xAE8B_1486_0A79_9888);
        assert_eq!(crc64nvme_base64(crc), "rosUhgp5mIg=");
        // Parts combine into the whole.
        let (a, b) = (b"1234".as_slice(), b"56789".as_slice());
        let combined = crc_fast::checksum_combine(
            crc_fast::CrcAlgorithm::Crc64Nvme,
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, a),
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, b),
            b.len() as u64,
        );
        assert_eq!(combined, crc);
    }

    #[test]
    fn part_size_rounds_to_whole_mib() {
        let size = 200 * 1024 * MIB + 1; // just over 200 GiB
        let p = part_size(size, 8 * MIB);
        assert_eq!(p % MIB, 0);
        assert!(size.div_ceil(p) <= MAX_PARTS);
    }
}
