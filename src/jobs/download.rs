//! The download of one object: ranged GETs in parallel, delivered in order
//! (the range being read as its bytes arrive, the ranges ahead held), and
//! every byte checked against the store's own checksum off the reader's
//! thread. The object's full CRC64/NVME is preferred (cheap to compute); the
//! MD5 ETag is recomputed only where the store has no such CRC.

use super::proof::{EtagCheck, Proof, parse_part_size};
use super::store::{self, WithSse as _};
use super::stream::{Piece, Proven, Raw};
use crate::jobresult::{Failure, fail};
use crate::reasons;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::ChecksumMode;
use bytes::Bytes;
use std::collections::VecDeque;
use std::ops::Range;
use tokio::sync::mpsc;

/// The size of one ranged GET. The range being read is handed on as its
/// bytes arrive; the ranges ahead are downloaded whole and held, so a slow
/// reader holds at most `RANGE × (AHEAD + 1)`. A ranged GET costs a
/// loopback MinIO about 1.2 ms of CPU besides its bytes: 8 MiB ranges
/// halve that against 4 MiB (bench/results.md).
const RANGE: u64 = 8 * 1024 * 1024;
/// Ranges downloading ahead of the one being read: one more connection.
/// Two ahead read 1 GiB about 7 % faster here but held 58 MiB, not 43.
const AHEAD: usize = 1;
/// Attempts at one range before the download fails: a connection dropped
/// halfway through a large object costs one range, not the restore.
const ATTEMPTS: usize = 3;

/// Starts downloading `key`. Every range is asked for with the ETag the
/// object had when we looked, so that a replaced object fails the download
/// instead of splicing two versions.
pub async fn start(
    client: &aws_sdk_s3::Client,
    sse: &store::Sse,
    bucket: &str,
    key: &str,
) -> Result<Raw, Failure> {
    start_with(client, sse, bucket, key, None).await
}

/// `start` through presigned URLs (`presigned`), with a client that has no
/// credentials of its own.
pub async fn start_presigned(
    client: &aws_sdk_s3::Client,
    p: &crate::jobresult::Presigned,
) -> Result<Raw, Failure> {
    let p = std::sync::Arc::new(p.clone());
    start_with(
        client,
        &store::Sse::None,
        &p.bucket,
        &p.key,
        Some(p.clone()),
    )
    .await
}

async fn start_with(
    client: &aws_sdk_s3::Client,
    sse: &store::Sse,
    bucket: &str,
    key: &str,
    presigned: Option<std::sync::Arc<crate::jobresult::Presigned>>,
) -> Result<Raw, Failure> {
    let head = head(client, bucket, key, sse, presigned.as_deref()).await?;
    let check = Check::of(&head, sse, key)?;
    let object = Object {
        client: client.clone(),
        sse: sse.clone(),
        bucket: bucket.to_string(),
        key: key.to_string(),
        etag: head.e_tag().map(str::to_string),
        size: u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0),
        presigned,
    };
    let size = object.size;
    let (tx, rx) = mpsc::channel(super::stream::QUEUE);
    tokio::spawn(pump(object, ranges(size), check, tx));
    Ok(Raw::new(rx))
}

/// The byte ranges of an object of `size` bytes, in order.
fn ranges(size: u64) -> Vec<Range<u64>> {
    (0..size)
        .step_by(RANGE as usize)
        .map(|start| start..(start + RANGE).min(size))
        .collect()
}

#[derive(Clone)]
struct Object {
    client: aws_sdk_s3::Client,
    sse: store::Sse,
    bucket: String,
    key: String,
    etag: Option<String>,
    /// The object's size at HEAD, which every Content-Range must name.
    size: u64,
    /// Read through these URLs, not with credentials.
    presigned: Option<std::sync::Arc<crate::jobresult::Presigned>>,
}

/// A range's task, stopped when its download is dropped (the reader gave up
/// or another range failed), so that nothing downloads for no one.
struct RangeTask(tokio::task::JoinHandle<()>);

impl Drop for RangeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One range on its way: its length, and its bytes as they arrive (or why
/// it failed), from its own task.
struct InFlight {
    len: u64,
    chunks: mpsc::UnboundedReceiver<Result<Bytes, String>>,
    _task: RangeTask,
}

fn start_range(object: &Object, range: Range<u64>) -> InFlight {
    let (tx, chunks) = mpsc::unbounded_channel();
    let len = range.end - range.start;
    let task = RangeTask(tokio::spawn(fetch(object.clone(), range, tx)));
    InFlight {
        len,
        chunks,
        _task: task,
    }
}

async fn pump(object: Object, ranges: Vec<Range<u64>>, mut check: Check, tx: mpsc::Sender<Piece>) {
    let key = object.key.clone();
    let failed = |e: String| {
        Piece::End(Err(fail(
            reasons::DOWNLOAD_FAILED,
            format!("download of {key} broke off: {e}"),
        )))
    };
    let mut ranges = ranges.into_iter();
    let mut ahead: VecDeque<InFlight> = ranges
        .by_ref()
        .take(AHEAD)
        .map(|r| start_range(&object, r))
        .collect();
    while let Some(mut head) = ahead.pop_front() {
        // The next range starts as this one is read, so AHEAD stay ahead.
        if let Some(range) = ranges.next() {
            ahead.push_back(start_range(&object, range));
        }
        let mut got = 0;
        while let Some(chunk) = head.chunks.recv().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = tx.send(failed(e)).await;
                    return;
                }
            };
            got += chunk.len() as u64;
            check.update(&chunk);
            if tx.send(Piece::Data(chunk)).await.is_err() {
                // The reader stopped: nothing waits for the rest.
                return;
            }
        }
        if got != head.len {
            let _ = tx.send(failed("the download task died".into())).await;
            return;
        }
    }
    let _ = tx.send(Piece::End(check.verify(&key))).await;
}

/// One range, whole and in order, retried where the connection broke: a
/// retry asks for the bytes not yet handed on.
async fn fetch(
    object: Object,
    range: Range<u64>,
    tx: mpsc::UnboundedSender<Result<Bytes, String>>,
) {
    let mut sent = 0;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        if range.start + sent == range.end {
            // Every byte came before the connection failed.
            return;
        }
        match fetch_once(&object, range.start + sent..range.end, &tx, &mut sent).await {
            Ok(()) => return,
            Err(Fetch::Final(e)) => {
                let _ = tx.send(Err(e));
                return;
            }
            Err(Fetch::Retry(e)) => last = e,
        }
        // A store restarting gets a moment before the next attempt.
        tokio::time::sleep(std::time::Duration::from_millis(200 * attempt as u64)).await;
    }
    let _ = tx.send(Err(last));
}

enum Fetch {
    /// The store refused (the object changed or went): retrying cannot help.
    Final(String),
    /// The connection broke or the store failed: another attempt may pass.
    Retry(String),
}

/// Asks for `range` and hands its bytes on, counting them in `sent`.
async fn fetch_once(
    object: &Object,
    range: Range<u64>,
    tx: &mpsc::UnboundedSender<Result<Bytes, String>>,
    sent: &mut u64,
) -> Result<(), Fetch> {
    let mut get = object
        .client
        .get_object()
        .bucket(&object.bucket)
        .key(&object.key)
        .range(format!("bytes={}-{}", range.start, range.end - 1))
        .with_sse(&object.sse);
    if let Some(etag) = &object.etag {
        get = get.if_match(etag);
    }
    let got = super::presigned::send_to!(get, object.presigned.as_ref().map(|p| &p.get));
    let got = got.map_err(|e| {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let why = store::describe(&e);
        match status {
            Some(404 | 412) => Fetch::Final(format!(
                "the object changed or went while it downloaded ({why})"
            )),
            Some(408 | 429) => Fetch::Retry(why),
            Some(400..=499) => Fetch::Final(why),
            _ => Fetch::Retry(why),
        }
    })?;
    // A store (or a proxy) that ignores Range sends the whole object for
    // every range: refused before its body is read, not held in memory.
    let expected = format!("bytes {}-{}/{}", range.start, range.end - 1, object.size);
    if got.content_range() != Some(expected.as_str()) {
        return Err(Fetch::Final(format!(
            "the store answered a request for {expected} with {:?}: it does not honour Range",
            got.content_range().unwrap_or("the whole object")
        )));
    }
    let want = range.end - range.start;
    let mut body = got.body;
    let mut len = 0u64;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| Fetch::Retry(e.to_string()))?
    {
        len += chunk.len() as u64;
        // More than asked would shift every byte after it.
        if len > want {
            return Err(Fetch::Final(format!(
                "bytes {}-{} came as more than {want} bytes",
                range.start,
                range.end - 1
            )));
        }
        *sent += chunk.len() as u64;
        if tx.send(Ok(chunk)).is_err() {
            // The download was dropped.
            return Ok(());
        }
    }
    // Cut short: the next attempt asks for the rest.
    if len != want {
        return Err(Fetch::Retry(format!(
            "bytes {}-{} came as {len} bytes",
            range.start,
            range.end - 1
        )));
    }
    Ok(())
}

async fn head(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    sse: &store::Sse,
    presigned: Option<&crate::jobresult::Presigned>,
) -> Result<HeadObjectOutput, Failure> {
    // Checksum mode: the store reports the object's CRC64/NVME where it has one.
    let head = store::head(client, bucket, key, sse).checksum_mode(ChecksumMode::Enabled);
    let sent = super::presigned::send_to!(head, presigned.map(|p| &p.head));
    sent.map_err(|e| {
        if e.as_service_error().is_some_and(|s| s.is_not_found()) {
            fail(
                reasons::OBJECT_NOT_FOUND,
                format!("object {key} not found in bucket {bucket}"),
            )
        } else {
            fail(
                reasons::DOWNLOAD_FAILED,
                format!("cannot download {key}: {}", store::describe(&e)),
            )
        }
    })
}

/// What the store says the object is, and the same computed over its bytes.
struct Check {
    /// The object's full CRC64/NVME as the store reports it, and ours.
    crc: Option<(String, crc_fast::Digest)>,
    /// Where there is no CRC: the ETag, recomputed.
    md5: Option<(String, EtagCheck)>,
    size: u64,
    expected_size: i64,
}

impl Check {
    fn of(head: &HeadObjectOutput, sse: &store::Sse, key: &str) -> Result<Check, Failure> {
        // Composite CRCs (of parts) end in -N and are no whole-object check.
        let crc = head.checksum_crc64_nvme().filter(|c| !c.contains('-'));
        let md5 = match (crc, sse.hides_md5()) {
            (Some(_), _) => None,
            // An ETag that is no MD5 must not be checked as one.
            (None, true) => None,
            (None, false) => {
                let part_size = head
                    .metadata()
                    .and_then(|m| m.get(store::PART_SIZE_META))
                    .map(|v| {
                        parse_part_size(v)
                            .map_err(|e| fail(reasons::CORRUPT_DUMP, format!("{key}: {e}")))
                    })
                    .transpose()?;
                let etag = head.e_tag().unwrap_or_default().trim_matches('"');
                Some((etag.to_string(), EtagCheck::new(etag, part_size)))
            }
        };
        Ok(Check {
            crc: crc.map(|c| {
                let digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
                (c.to_string(), digest)
            }),
            md5,
            size: 0,
            expected_size: head.content_length().unwrap_or(-1),
        })
    }

    fn update(&mut self, chunk: &[u8]) {
        if let Some((_, crc)) = &mut self.crc {
            crc.update(chunk);
        }
        if let Some((_, md5)) = &mut self.md5 {
            md5.update(chunk);
        }
        self.size += chunk.len() as u64;
    }

    fn verify(self, key: &str) -> Result<Proven, Failure> {
        if self.size as i64 != self.expected_size {
            return Err(fail(
                reasons::DOWNLOAD_FAILED,
                format!(
                    "{key}: received {} bytes of {}",
                    self.size, self.expected_size
                ),
            ));
        }
        let mismatch = |e: String| {
            fail(
                reasons::CHECKSUM_MISMATCH,
                format!("{key} does not match its checksum: {e}"),
            )
        };
        let proof = match (self.crc, self.md5) {
            (Some((expected, crc)), _) => {
                let got = super::proof::crc64nvme_base64(crc.finalize());
                if got != expected {
                    return Err(mismatch(format!(
                        "CRC64/NVME {got}, the store's is {expected}"
                    )));
                }
                Some(Proof::Crc64Nvme(got))
            }
            (None, Some((etag, md5))) => {
                md5.verify().map_err(mismatch)?.then_some(Proof::ETag(etag))
            }
            (None, None) => None,
        };
        Ok(Proven {
            size: self.size,
            proof,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest as _;

    fn head(crc: Option<&str>, etag: &str, size: i64) -> HeadObjectOutput {
        HeadObjectOutput::builder()
            .set_checksum_crc64_nvme(crc.map(str::to_string))
            .e_tag(format!("\"{etag}\""))
            .content_length(size)
            .build()
    }

    fn checked(head: &HeadObjectOutput, data: &[u8]) -> Result<Proven, Failure> {
        let mut check = Check::of(head, &store::Sse::None, "k").unwrap();
        for chunk in data.chunks(7777) {
            check.update(chunk);
        }
        check.verify("k")
    }

    /// With the store's full CRC64/NVME at hand, that is the proof and no MD5
    /// is computed (an ETag no MD5 of ours would match does not matter); a
    /// flipped byte fails it. Without one, the ETag is recomputed.
    #[test]
    fn the_crc_is_preferred_and_the_etag_is_the_fallback() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let crc = crate::jobs::proof::crc64nvme_base64(crc_fast::checksum(
            crc_fast::CrcAlgorithm::Crc64Nvme,
            &data,
        ));
        let md5 = crate::jobs::proof::hex(&md5::Md5::digest(&data));
        let size = data.len() as i64;
        let mut flipped = data.clone();
        flipped[size as usize / 2] ^= 1;

        let by_crc = head(Some(&crc), "0123456789abcdef0123456789abcdef", size);
        let proven = checked(&by_crc, &data).unwrap();
        assert_eq!(proven.proof, Some(Proof::Crc64Nvme(crc.clone())));
        assert!(
            proven
                .downloaded("k")
                .contains("CRC64/NVME checksum verified")
        );
        let f = checked(&by_crc, &flipped).unwrap_err();
        assert_eq!(f.reason, reasons::CHECKSUM_MISMATCH);
        assert!(f.message.contains("CRC64/NVME"), "{}", f.message);

        // A composite CRC (of parts) is no proof of the whole: the ETag is.
        let by_etag = head(Some("AAAAAAAAAAA=-2"), &md5, size);
        let proven = checked(&by_etag, &data).unwrap();
        assert_eq!(proven.proof, Some(Proof::ETag(md5.clone())));
        assert!(
            proven
                .downloaded("k")
                .contains("MD5 ETag checksum verified")
        );
        let f = checked(&by_etag, &flipped).unwrap_err();
        assert!(f.message.contains("MD5"), "{}", f.message);

        // Cut short: the size says so before any checksum.
        let f = checked(&by_crc, &data[..1000]).unwrap_err();
        assert!(
            f.message.contains("received 1000 bytes of"),
            "{}",
            f.message
        );
    }

    #[test]
    fn ranges_cover_the_object_once_in_order() {
        assert!(ranges(0).is_empty());
        assert_eq!(ranges(1), vec![0..1]);
        assert_eq!(ranges(RANGE), vec![0..RANGE]);
        let r = ranges(2 * RANGE + 5);
        assert_eq!(
            r,
            vec![0..RANGE, RANGE..2 * RANGE, 2 * RANGE..2 * RANGE + 5]
        );
    }
}
