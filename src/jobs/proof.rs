//! What proves that the store holds exactly the file we sent: the checksums
//! we compute while sending, and the HEAD request that compares them with
//! what the store reports. Only after that proof is a dump deleted.

use super::store::describe;
use aws_sdk_s3::Client;
use aws_sdk_s3::types::ChecksumMode;
use base64::Engine as _;
use md5::{Digest as _, Md5};

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
