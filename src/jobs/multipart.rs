//! The parts of a multipart upload: read from the file in order, each
//! checksummed and sent as its own task, a bounded number in flight. The file
//! may still be growing (a dump being written): parts are handed in as its
//! bytes exist, and the upload is completed once its size is final.

use super::proof::{Proof, Written, crc64nvme_base64, multipart_etag};
use super::put::PutError;
use super::store::{Sse, WithSse, abort, describe};
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumType, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use md5::{Digest as _, Md5};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinSet;

/// The size of the pieces a part is read in, to checksum and to send.
pub(super) const PIECE: usize = 512 * 1024;

/// One part of the file: where it is, and its checksums.
#[derive(Clone, Copy)]
pub(super) struct Part {
    offset: u64,
    pub(super) len: u64,
    /// Only where the store's ETag is the proof: MD5 costs more CPU than the
    /// rest of the upload together.
    pub(super) md5: Option<[u8; 16]>,
    /// Hardware-assisted; next to free.
    pub(super) crc64nvme: u64,
}

/// Checksums `len` bytes of `file` from `offset` on a blocking thread (so
/// the uploads in flight keep the runtime to themselves), in pieces: the
/// part is never held whole. The send reads it again, from the page cache.
pub(super) async fn checksum_part(
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
    with_md5: bool,
) -> std::io::Result<Part> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; PIECE];
        let mut md5 = with_md5.then(Md5::new);
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut at = offset;
        while at < offset + len {
            let want = ((offset + len - at) as usize).min(PIECE);
            let piece = &mut buf[..want];
            file.read_exact_at(piece, at).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    std::io::Error::other("the dump shrank while uploading")
                }
                _ => e,
            })?;
            crc.update(piece);
            if let Some(md5) = &mut md5 {
                md5.update(&*piece);
            }
            at += want as u64;
        }
        Ok(Part {
            offset,
            len,
            md5: md5.map(|m| m.finalize().into()),
            crc64nvme: crc.finalize(),
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The body of a part: its bytes read from the file as the request sends
/// them (and again on a retry).
pub(super) async fn body(path: &Path, part: &Part) -> Result<ByteStream, PutError> {
    ByteStream::read_from()
        .path(path)
        .offset(part.offset)
        .length(Length::Exact(part.len))
        .buffer_size(PIECE)
        .build()
        .await
        .map_err(|e| PutError::Failed(format!("cannot read {}: {e}", path.display())))
}

pub(super) fn content_md5(md5: &[u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5)
}

/// Where the parts of one multipart upload go.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) client: Client,
    pub(super) bucket: String,
    pub(super) key: String,
    pub(super) upload_id: String,
    pub(super) sse: Sse,
    /// Parts carry CRC64/NVME instead of Content-MD5.
    pub(super) crc: bool,
    /// The file the parts are read from (a path that stays valid while the
    /// upload runs: `/proc/self/fd/N` for a file that is renamed meanwhile).
    pub(super) path: PathBuf,
}

impl Target {
    /// Uploads one part, read from the file as it goes.
    async fn send(self, number: i32, part: Part) -> Result<CompletedPart, PutError> {
        let mut request = self
            .client
            .upload_part()
            .bucket(self.bucket)
            .key(self.key)
            .upload_id(self.upload_id)
            .part_number(number)
            .content_length(part.len as i64)
            .body(body(&self.path, &part).await?)
            .with_sse(&self.sse);
        let crc = self.crc.then(|| crc64nvme_base64(part.crc64nvme));
        request = match (&crc, part.md5) {
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
            .map_err(|e| PutError::Failed(part_refused(number, crc.is_some(), &e)))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .set_checksum_crc64_nvme(crc)
            .build())
    }
}

/// A multipart upload under way: parts are checksummed in order and up to
/// `concurrency` uploads are in flight, each its own task, while the next
/// part is checksummed. No part is held in memory (each is read from the
/// file as it is sent): memory is about `PIECE` per part in flight,
/// whatever the part size.
pub(super) struct Multipart {
    target: Target,
    part_size: u64,
    concurrency: usize,
    in_flight: JoinSet<Result<CompletedPart, PutError>>,
    parts: Vec<CompletedPart>,
    md5s: Vec<[u8; 16]>,
    /// The CRC64/NVME of the bytes handed in so far.
    crc: Option<u64>,
    /// How many bytes were handed in.
    sent: u64,
}

impl Multipart {
    pub(super) fn new(target: Target, part_size: u64, concurrency: usize) -> Multipart {
        Multipart {
            target,
            part_size,
            concurrency: concurrency.max(1),
            in_flight: JoinSet::new(),
            parts: vec![],
            md5s: vec![],
            crc: None,
            sent: 0,
        }
    }

    pub(super) fn upload_id(&self) -> &str {
        &self.target.upload_id
    }

    pub(super) fn key(&self) -> &str {
        &self.target.key
    }

    /// Bytes handed in so far.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    /// The CRC64/NVME of the bytes handed in so far.
    pub(super) fn crc64nvme(&self) -> Option<u64> {
        self.crc
    }

    /// Hands in the next parts of `file` up to byte `size`: whole parts only,
    /// unless `last`, when the rest goes as the final, shorter part. Waits
    /// while `concurrency` parts are in flight.
    pub(super) async fn push(
        &mut self,
        file: &Arc<std::fs::File>,
        size: u64,
        last: bool,
    ) -> Result<(), PutError> {
        while size >= self.sent + self.part_size || (last && size > self.sent) {
            if self.in_flight.len() >= self.concurrency {
                let done = self.in_flight.join_next().await.expect("non-empty");
                self.parts.push(joined(done)?);
            }
            let len = self.part_size.min(size - self.sent);
            let part = checksum_part(file.clone(), self.sent, len, !self.target.crc)
                .await
                .map_err(|e| PutError::Failed(format!("cannot read the dump: {e}")))?;
            self.crc = Some(combine_crc(self.crc, part.crc64nvme, len));
            self.md5s.extend(part.md5);
            let number = self.parts.len() + self.in_flight.len() + 1;
            self.in_flight
                .spawn(self.target.clone().send(number as i32, part));
            self.sent += len;
        }
        Ok(())
    }

    /// Waits for the parts in flight and completes the upload of `size`
    /// bytes (all of them handed in) with the proof the parts add up to.
    pub(super) async fn complete(
        mut self,
        size: u64,
        conditional: bool,
    ) -> Result<Written, PutError> {
        while let Some(done) = self.in_flight.join_next().await {
            self.parts.push(joined(done)?);
        }
        self.parts.sort_by_key(|p| p.part_number());
        let t = &self.target;
        let mut complete = t
            .client
            .complete_multipart_upload()
            .bucket(&t.bucket)
            .key(&t.key)
            .upload_id(&t.upload_id)
            .with_sse(&t.sse)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts))
                    .build(),
            );
        let proof = match (t.crc, self.crc) {
            (true, Some(whole)) => {
                let whole = crc64nvme_base64(whole);
                complete = complete
                    .checksum_crc64_nvme(&whole)
                    .checksum_type(ChecksumType::FullObject);
                Proof::Crc64Nvme(whole)
            }
            _ => Proof::ETag(multipart_etag(&self.md5s.concat(), self.md5s.len())),
        };
        if conditional {
            complete = complete.if_none_match("*");
        }
        complete
            .send()
            .await
            .map_err(|e| super::put::classify(e, &t.key))?;
        Ok(Written {
            size,
            proof,
            exclusive: conditional,
            crc64nvme: crc64nvme_base64(self.crc.unwrap_or(0)),
        })
    }

    /// Stops the parts in flight and aborts the upload; whether the store
    /// took the abort.
    pub(super) async fn abort(mut self) -> bool {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        let t = &self.target;
        abort(&t.client, &t.bucket, &t.key, &t.upload_id).await
    }
}

/// Why part `number` failed; where the store refused the part's CRC64/NVME
/// header outright, the profile that sends none.
fn part_refused<E>(
    number: i32,
    crc: bool,
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
{
    let said = describe(e);
    // 400 is also a timeout or a bad digest: only a refusal that names the
    // checksum, or a 501, is the header's.
    let refused = match super::store::http_status(e) {
        Some(501) => true,
        Some(400) => said.to_ascii_lowercase().contains("checksum"),
        _ => false,
    };
    match crc && refused {
        true => format!(
            "part {number}: {said}; the store refuses a part's CRC64/NVME header, as Cloudflare R2 does: set spec.bucket.profile: r2 (parts then carry Content-MD5)"
        ),
        false => format!("part {number}: {said}"),
    }
}

fn joined(
    r: Result<Result<CompletedPart, PutError>, tokio::task::JoinError>,
) -> Result<CompletedPart, PutError> {
    r.map_err(|e| PutError::Failed(format!("part upload stopped: {e}")))?
}

/// The CRC64/NVME of the file so far, extended by a part of `len` bytes.
fn combine_crc(before: Option<u64>, part: u64, len: u64) -> u64 {
    match before {
        None => part,
        Some(before) => {
            crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc64Nvme, before, part, len)
        }
    }
}
