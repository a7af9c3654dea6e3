//! What proves that the store holds exactly the file we sent: the checksums
//! we compute while sending, and the HEAD request that compares them with
//! what the store reports (only after that proof is a dump deleted); and on
//! the way back, the ETag recomputed over the downloaded bytes.

use super::store::{DEFAULT_PART_SIZE, Sse, describe};
use aws_sdk_s3::Client;
use aws_sdk_s3::types::ChecksumMode;
use base64::Engine as _;
use md5::{Digest as _, Md5};

/// What a successful put wrote, for verification.
#[derive(Clone, Debug)]
pub struct Written {
    pub size: u64,
    pub proof: Proof,
    /// Written with `If-None-Match: *`: the key held nothing, so the object
    /// under it is ours (no other upload can have replaced it).
    pub exclusive: bool,
    /// The CRC64/NVME of the bytes sent, base64, whatever the store keeps:
    /// what an object read back must have.
    pub crc64nvme: String,
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

/// A writer that keeps the CRC64/NVME of what went through it.
pub struct Checksummed<W> {
    inner: W,
    crc: crc_fast::Digest,
}

impl<W> Checksummed<W> {
    pub fn new(inner: W) -> Checksummed<W> {
        Checksummed {
            inner,
            crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme),
        }
    }

    /// The writer, and the CRC64/NVME of all it was given.
    pub fn finish(self) -> (W, u64) {
        (self.inner, self.crc.finalize())
    }
}

impl<W: std::io::Write> std::io::Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
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

/// How an upload was proven.
#[derive(Clone, Debug, PartialEq)]
pub enum Proven {
    /// The store reported the checksum (or ETag) we computed.
    ByStore,
    /// The store's CRC64/NVME did not hold (why, in the string: missing, or
    /// a value for other bytes), and the object read back whole did: some
    /// stores keep no such checksum, or a wrong one, for the right bytes.
    ReadBack(String),
}

/// Why an upload is not proven: the object differs from what we sent
/// (`differs`), or the check itself could not be made (the store did not
/// answer, a read broke off), which says nothing of the object.
#[derive(Clone, Debug, PartialEq)]
pub struct Unproven {
    pub why: String,
    pub differs: bool,
}

fn differs(why: String) -> Unproven {
    Unproven { why, differs: true }
}

fn inconclusive(why: String) -> Unproven {
    Unproven {
        why,
        differs: false,
    }
}

/// Confirms the object is there with the size and the ETag or full-object
/// checksum we computed locally; where the store's CRC64/NVME is missing or
/// wrong, by reading the object back and computing it ourselves.
pub async fn verify(
    client: &Client,
    bucket: &str,
    key: &str,
    written: &Written,
    sse: &Sse,
) -> Result<Proven, Unproven> {
    let mut head = super::store::head(client, bucket, key, sse);
    if matches!(written.proof, Proof::Crc64Nvme(_)) {
        head = head.checksum_mode(ChecksumMode::Enabled);
    }
    let head = head.send().await.map_err(|e| {
        inconclusive(format!(
            "cannot confirm the upload of {key}: {}",
            describe(&e)
        ))
    })?;
    let size = head.content_length().unwrap_or(-1);
    if size != written.size as i64 {
        return Err(differs(format!(
            "upload of {key} not confirmed: the store holds {size} bytes, expected {}",
            written.size
        )));
    }
    match &written.proof {
        Proof::ETag(expected) => {
            let etag = head.e_tag().unwrap_or_default().trim_matches('"');
            let why = match (md5_style(etag), etag == expected) {
                (true, true) => return Ok(Proven::ByStore),
                // Some stores compute a multipart ETag otherwise: the
                // bytes read back decide.
                (true, false) => format!("the store's ETag {etag} is not the expected {expected}"),
                // An ETag that is no MD5 proves nothing: the bytes do.
                (false, _) => format!("the store's ETag {etag} is no MD5 of the object"),
            };
            let read = read_back(client, bucket, key, head.e_tag(), sse).await?;
            if read != written.crc64nvme {
                return Err(differs(format!(
                    "upload of {key} not confirmed: {why}, and the object read back has CRC64/NVME {read}, not {}",
                    written.crc64nvme
                )));
            }
            Ok(Proven::ReadBack(why))
        }
        Proof::Crc64Nvme(expected) => {
            let why = match head.checksum_crc64_nvme() {
                Some(crc) if crc == expected => return Ok(Proven::ByStore),
                Some(crc) => format!("the store reports CRC64/NVME {crc} for it, not {expected}"),
                None => "the store reports no CRC64/NVME checksum for it".to_string(),
            };
            tracing::warn!(%key, "{why}; reading the object back to prove it");
            let read = read_back(client, bucket, key, head.e_tag(), sse).await?;
            if read != *expected {
                return Err(differs(format!(
                    "upload of {key} not confirmed: {why}, and the object read back has {read}"
                )));
            }
            Ok(Proven::ReadBack(why))
        }
    }
}

/// The CRC64/NVME of the object as it reads back now (of the version HEAD
/// saw), computed here over every byte, base64 as S3 writes it.
async fn read_back(
    client: &Client,
    bucket: &str,
    key: &str,
    etag: Option<&str>,
    sse: &Sse,
) -> Result<String, Unproven> {
    use super::store::WithSse as _;
    let broke = |e: String| {
        inconclusive(format!(
            "upload of {key} not confirmed: reading it back failed: {e}"
        ))
    };
    let mut get = client.get_object().bucket(bucket).key(key).with_sse(sse);
    if let Some(etag) = etag {
        get = get.if_match(etag);
    }
    let mut body = get.send().await.map_err(|e| broke(describe(&e)))?.body;
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    while let Some(chunk) = body.try_next().await.map_err(|e| broke(e.to_string()))? {
        crc.update(&chunk);
    }
    Ok(crc64nvme_base64(crc.finalize()))
}

/// The part size our metadata names: S3 parts are 5 MiB to 5 GiB (the last
/// may be smaller), so anything else is refused rather than trusted.
pub(crate) fn parse_part_size(value: &str) -> Result<u64, String> {
    const MIN: u64 = 5 * 1024 * 1024;
    const MAX: u64 = 5 * 1024 * 1024 * 1024;
    match value.trim().parse::<u64>() {
        Ok(n) if (MIN..=MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "part size metadata {value:?} is not between 5 MiB and 5 GiB; the object was not written by this operator as it is"
        )),
    }
}

/// Recomputes the ETag S3 reports: the MD5 of the object, or for a multipart
/// upload the MD5 of its parts' MD5s, suffixed with the part count.
pub(crate) struct EtagCheck {
    expected: String,
    /// None: a single-part object, hashed whole.
    part_size: Option<u64>,
    /// Whether the part size is known (our metadata) or assumed.
    part_size_known: bool,
    current: Md5,
    current_len: u64,
    parts: Vec<u8>,
    count: u64,
}

impl EtagCheck {
    pub(crate) fn new(etag: &str, part_size: Option<u64>) -> EtagCheck {
        let multipart = etag.contains('-');
        EtagCheck {
            expected: etag.to_string(),
            part_size: multipart.then(|| part_size.unwrap_or(DEFAULT_PART_SIZE)),
            part_size_known: part_size.is_some(),
            current: Md5::new(),
            current_len: 0,
            parts: vec![],
            count: 0,
        }
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        let Some(part) = self.part_size else {
            self.current.update(bytes);
            return;
        };
        while !bytes.is_empty() {
            let take = ((part - self.current_len) as usize).min(bytes.len());
            self.current.update(&bytes[..take]);
            self.current_len += take as u64;
            bytes = &bytes[take..];
            if self.current_len == part {
                self.end_part();
            }
        }
    }

    fn end_part(&mut self) {
        self.parts.extend_from_slice(&self.current.finalize_reset());
        self.current_len = 0;
        self.count += 1;
    }

    /// Ok(true) when verified, Ok(false) when the ETag cannot be checked
    /// (not an MD5, as with KMS encryption; or a part size we cannot know).
    pub(crate) fn verify(mut self) -> Result<bool, String> {
        if !md5_style(&self.expected) {
            return Ok(false);
        }
        if self.part_size.is_none() {
            let got = hex(&self.current.finalize());
            return match got == self.expected {
                true => Ok(true),
                false => Err(format!("MD5 {got}, the store's ETag is {}", self.expected)),
            };
        }
        if self.current_len > 0 {
            self.end_part();
        }
        let got = multipart_etag(&self.parts, self.count as usize);
        if got == self.expected {
            return Ok(true);
        }
        let same_count = self.expected.ends_with(&format!("-{}", self.count));
        if !self.part_size_known && !same_count {
            // Uploaded by another tool with another part size.
            return Ok(false);
        }
        Err(format!(
            "computed ETag {got}, the store's is {}",
            self.expected
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::store::DEFAULT_PART_SIZE;

    use md5::Md5;

    fn multipart_etag(data: &[u8], part: usize) -> String {
        let md5s: Vec<u8> = data
            .chunks(part)
            .flat_map(|c| Md5::digest(c).to_vec())
            .collect();
        format!("{}-{}", hex(&Md5::digest(&md5s)), data.len().div_ceil(part))
    }

    /// Feeds `data` in uneven chunks, as a network stream would.
    fn check(etag: &str, part: Option<u64>, data: &[u8]) -> Result<bool, String> {
        let mut c = EtagCheck::new(etag, part);
        for chunk in data.chunks(7777) {
            c.update(chunk);
        }
        c.verify()
    }

    #[test]
    fn single_part_md5() {
        let data = vec![42u8; 100_000];
        assert_eq!(check(&hex(&Md5::digest(&data)), None, &data), Ok(true));
        let mut bad = data.clone();
        bad[5] = 0;
        assert!(check(&hex(&Md5::digest(&data)), None, &bad).is_err());
        assert_eq!(check("not-an-md5-etag", None, &data), Ok(false));
    }

    #[test]
    fn multipart_with_our_part_size() {
        let data: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let etag = multipart_etag(&data, 65_536);
        assert_eq!(check(&etag, Some(65_536), &data), Ok(true));
        let mut bad = data.clone();
        bad[100_000] ^= 1;
        assert!(check(&etag, Some(65_536), &bad).is_err());
    }

    #[test]
    fn multipart_of_unknown_part_size_is_unverifiable_not_wrong() {
        let data = vec![1u8; 3 * DEFAULT_PART_SIZE as usize / 2];
        // Another tool's 5 MiB parts: 3 parts, where 8 MiB would give 2.
        let etag = multipart_etag(&data, 5 * 1024 * 1024);
        assert_eq!(check(&etag, None, &data), Ok(false));
        // The default part size, as boto3 uses it: checked.
        let etag = multipart_etag(&data, DEFAULT_PART_SIZE as usize);
        assert_eq!(check(&etag, None, &data), Ok(true));
    }

    #[test]
    fn part_sizes_outside_what_s3_allows_are_refused() {
        for bad in ["0", "1", "-5", "x", "5242879", "5368709121"] {
            let e = parse_part_size(bad).unwrap_err();
            assert!(e.contains("not between 5 MiB and 5 GiB"), "{e}");
        }
        assert_eq!(parse_part_size("8388608"), Ok(8 * 1024 * 1024));
    }
}
