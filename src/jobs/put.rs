//! A streaming, never-overwriting put of one file: a single request for a
//! small dump, else a multipart upload with a bounded number of parts in
//! flight, each carrying a checksum the store checks on receipt.

use super::multipart::{Multipart, Target, body, checksum_part, content_md5};
use super::proof::{Proof, Written, crc64nvme_base64, hex};
use super::store::{
    DUMPED_AT_META, MAX_PARTS, MIB, PART_SIZE_META, Sse, WithSse, abort, describe, http_status,
};
use crate::api::Checksums;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType};
use std::path::Path;
use std::sync::Arc;

/// Throughput knobs. Memory does not grow with the part size and only by
/// `PIECE` per part in flight: parts are read from the file in pieces, once
/// to checksum and once to send.
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

pub(super) fn classify<E>(
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    key: &str,
) -> PutError
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

/// Called with the multipart upload id as soon as it exists, so an interrupted
/// run can be cleaned up by the next one.
pub type OnStart<'a> = &'a (dyn Fn(&str) -> std::io::Result<()> + Sync);

/// One object to write from one file.
pub struct Put<'a> {
    pub client: &'a Client,
    pub bucket: &'a str,
    pub key: &'a str,
    pub path: &'a Path,
    pub size: u64,
    pub tuning: Tuning,
    /// Sends `If-None-Match: *`, so the store itself refuses to replace an
    /// object; without it the caller checked that the key is free.
    pub conditional: bool,
    pub sse: &'a Sse,
    /// Object Lock retention the new object gets.
    pub lock: Option<Lock>,
    /// Which checksum headers the store takes (its profile).
    pub checksums: Checksums,
    /// When the dump was taken (`DUMPED_AT_META`).
    pub dumped_at: Option<std::time::SystemTime>,
}

impl Put<'_> {
    /// The user metadata every object of ours gets.
    fn dumped_at(&self) -> Option<String> {
        self.dumped_at.map(crate::jobs::staging::dump_id)
    }
}

/// An Object Lock retention: no one deletes or replaces the object's
/// version before `until`, and in COMPLIANCE mode no one can shorten it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lock {
    pub mode: crate::api::LockMode,
    pub until: chrono::DateTime<chrono::Utc>,
}

/// Adds the Object Lock headers to a request that creates an object.
macro_rules! locked {
    ($request:expr, $lock:expr) => {
        match $lock {
            None => $request,
            Some(Lock { mode, until }) => $request
                .object_lock_mode(match mode {
                    crate::api::LockMode::Governance => {
                        aws_sdk_s3::types::ObjectLockMode::Governance
                    }
                    crate::api::LockMode::Compliance => {
                        aws_sdk_s3::types::ObjectLockMode::Compliance
                    }
                })
                .object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(
                    until.timestamp(),
                )),
        }
    };
}

/// Uploads `put.path` to `put.key` without ever replacing an existing object.
/// Each part carries a checksum the store checks on receipt: CRC64/NVME where
/// the store keeps a full-object CRC64/NVME (S3 and MinIO do), else
/// Content-MD5. A single-request put always sends Content-MD5. On any error a
/// multipart upload is aborted.
pub async fn put_file(put: &Put<'_>, on_start: OnStart<'_>) -> Result<Written, PutError> {
    let io =
        |e: std::io::Error| PutError::Failed(format!("cannot read {}: {e}", put.path.display()));
    let file = Arc::new(std::fs::File::open(put.path).map_err(io)?);
    let part_size = part_size(put.size, put.tuning.min_part_size);
    if put.size <= part_size {
        return put_single(put, file).await;
    }
    let mut upload = start_multipart(put, part_size).await?;
    let stored = async {
        on_start(upload.upload_id())
            .map_err(|e| PutError::Failed(format!("cannot record the upload: {e}")))?;
        upload.push(&file, put.size, true).await
    }
    .await;
    match stored {
        Ok(()) => {
            let upload_id = upload.upload_id().to_string();
            let completed = upload.complete(put.size, put.conditional).await;
            if completed.is_err() {
                abort(put.client, put.bucket, put.key, &upload_id).await;
            }
            completed
        }
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// A dump no larger than one part, in one request.
async fn put_single(put: &Put<'_>, file: Arc<std::fs::File>) -> Result<Written, PutError> {
    let part = checksum_part(file, 0, put.size, true)
        .await
        .map_err(|e| PutError::Failed(format!("cannot read {}: {e}", put.path.display())))?;
    let md5 = part.md5.expect("asked for");
    let request = put
        .client
        .put_object()
        .bucket(put.bucket)
        .key(put.key)
        .content_md5(content_md5(&md5))
        .content_length(part.len as i64)
        .body(body(put.path, &part).await?)
        .set_metadata(
            put.dumped_at()
                .map(|t| [(DUMPED_AT_META.to_string(), t)].into()),
        )
        .with_sse(put.sse);
    let mut request = locked!(request, put.lock);
    if put.conditional {
        request = request.if_none_match("*");
    }
    // With server-side encryption the ETag may be no MD5; the store's
    // CRC64/NVME of the object is the proof then.
    let crc = put
        .sse
        .hides_md5()
        .then(|| crc64nvme_base64(part.crc64nvme));
    if crc.is_some() && put.checksums == Checksums::Md5Only {
        return Err(no_proof_under_sse());
    }
    if let Some(crc) = &crc {
        request = request.checksum_crc64_nvme(crc);
    }
    // Content-MD5, a signed header, already guards the body; signing the
    // payload too would hash it twice more (here and at the store).
    request
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .map_err(|e| classify(e, put.key))?;
    Ok(Written {
        size: put.size,
        proof: crc.map_or_else(|| Proof::ETag(hex(&md5)), Proof::Crc64Nvme),
        exclusive: put.conditional,
        crc64nvme: crc64nvme_base64(part.crc64nvme),
    })
}

/// Creates the multipart upload, asking for a full-object CRC64/NVME.
pub(super) async fn start_multipart(put: &Put<'_>, part_size: u64) -> Result<Multipart, PutError> {
    let create = || {
        let create = put
            .client
            .create_multipart_upload()
            .bucket(put.bucket)
            .key(put.key)
            .set_metadata(Some(
                std::iter::once((PART_SIZE_META.to_string(), part_size.to_string()))
                    .chain(put.dumped_at().map(|t| (DUMPED_AT_META.to_string(), t)))
                    .collect(),
            ))
            .with_sse(put.sse);
        locked!(create, put.lock)
    };
    let asked = match put.checksums {
        Checksums::Md5Only => create().send().await,
        Checksums::PerPartAndWhole => {
            create()
                .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                .checksum_type(ChecksumType::FullObject)
                .send()
                .await
        }
    };
    let created = match asked {
        Ok(created) => created,
        // Some S3-compatible stores refuse any checksum header outright.
        Err(e) if matches!(http_status(&e), Some(400 | 501)) => {
            tracing::info!(error = %describe(&e), "store refuses CRC64/NVME; parts carry Content-MD5");
            create().send().await.map_err(|e| classify(e, put.key))?
        }
        Err(e) => return Err(classify(e, put.key)),
    };
    let upload_id = created
        .upload_id()
        .ok_or_else(|| PutError::Failed("store returned no upload id".into()))?;
    // A store that echoes the algorithm though none was asked for keeps
    // Content-MD5 parts: the profile says the store refuses CRC headers.
    let crc = created.checksum_algorithm() == Some(&ChecksumAlgorithm::Crc64Nvme)
        && put.checksums == Checksums::PerPartAndWhole;
    if !crc && put.sse.hides_md5() {
        // Its ETag proves nothing under KMS or SSE-C, and no dump goes
        // without a proof.
        abort(put.client, put.bucket, put.key, upload_id).await;
        return Err(no_proof_under_sse());
    }
    let target = Target {
        client: put.client.clone(),
        bucket: put.bucket.to_string(),
        key: put.key.to_string(),
        upload_id: upload_id.to_string(),
        sse: put.sse.clone(),
        // A store that does not name the algorithm back ignored it (older
        // S3-compatible stores); its ETag is the proof there.
        crc,
        path: put.path.to_path_buf(),
    };
    Ok(Multipart::new(target, part_size, put.tuning.concurrency))
}

/// A PUT of a small object of our own (a marker, a probe), with the
/// Content-MD5 a bucket with Object Lock requires of every write.
pub(super) fn small(
    client: &Client,
    bucket: &str,
    key: &str,
    body: &[u8],
    sse: &Sse,
) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
    use md5::Digest as _;
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_md5(content_md5(&md5::Md5::digest(body).into()))
        .body(body.to_vec().into())
        .with_sse(sse)
}

fn no_proof_under_sse() -> PutError {
    PutError::Failed(
        "the store keeps no CRC64/NVME checksum, the only proof of an upload under SSE-KMS or SSE-C"
            .into(),
    )
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
