//! The download step of a restore (`dbbackup-operator fetch`), run as the
//! restore pod's init container.
//!
//! It resolves "latest" to the newest dump under the prefix, streams the
//! object to the scratch volume while checking it against the ETag the store
//! computed on upload (MD5, per part for multipart uploads), decompresses on
//! the way, and leaves `restore.sql` only when every byte checked out.

use super::proof::{EtagCheck, parse_part_size};
use super::{retention, store};
use crate::api::Compression;
use crate::jobresult::{Failure, JobResult, Outcome, Step, fail};
use crate::logline::LogLine;
use crate::reasons;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use std::io::Write;
use std::path::{Path, PathBuf};
use tracing::{error, info};

#[derive(clap::Args, Debug, Clone)]
pub struct FetchArgs {
    #[command(flatten)]
    pub store: store::StoreArgs,
    /// Object key, or "latest" for the newest dump under --prefix.
    #[arg(long, default_value = crate::api::LATEST)]
    pub key: String,
    /// Key prefix searched for "latest", ending in '/' or empty.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Where the decompressed SQL goes.
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the one-line JSON result for the operator.
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

fn line(message: &str) -> String {
    LogLine::at(&chrono::Utc::now(), message).to_string()
}

/// Runs one download; returns the process exit code.
pub async fn run(args: FetchArgs) -> i32 {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o007);
    }
    let (mut result, code) = match fetch(&args).await {
        Ok(result) => (result, 0),
        Err(f) => {
            let _ = std::fs::remove_file(&args.out);
            let log = line(&format!("download failed: {}", f.message));
            error!("{log}");
            let mut result = JobResult::new(Step::Fetch, Outcome::Failed, log);
            result.reason = Some(f.reason.into());
            (result, 1)
        }
    };
    if let Err(e) = result.write_to(&args.termination_log) {
        error!(error = %e, "cannot write the termination log");
    }
    code
}

async fn fetch(args: &FetchArgs) -> Result<JobResult, Failure> {
    let client = args
        .store
        .client()
        .await
        .map_err(|e| fail(reasons::DOWNLOAD_FAILED, e))?;
    let bucket = &args.store.bucket;
    let key = if args.key == crate::api::LATEST {
        latest(&client, bucket, &args.prefix).await?
    } else {
        args.key.clone()
    };
    info!(%key, "downloading");
    let got = get(&client, bucket, &key).await?;
    let etag = got
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let (size, verified) = save(got, &etag, &key, &args.out).await?;
    let how = if verified {
        "checksum verified"
    } else {
        "the store's ETag is no MD5; decompression checks only"
    };
    let log = line(&format!("downloaded {key} ({size} bytes, {how})"));
    info!("{log}");
    Ok(JobResult {
        step: Step::Fetch,
        outcome: Outcome::Succeeded,
        key: Some(key),
        size: Some(size),
        checksum: verified.then(|| format!("etag:{etag}")),
        log,
        reason: None,
        more_log: vec![],
        tables: None,
        checks: vec![],
    })
}

async fn get(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<GetObjectOutput, Failure> {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
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

/// Streams the object into `out`, decompressing by its key's suffix and
/// recomputing its ETag; returns its size and whether the ETag could be
/// checked. Every byte counted, checked and decompressed, or an error.
async fn save(
    got: GetObjectOutput,
    etag: &str,
    key: &str,
    out: &Path,
) -> Result<(u64, bool), Failure> {
    let part_size = got
        .metadata()
        .and_then(|m| m.get(store::PART_SIZE_META))
        .map(|v| parse_part_size(v).map_err(|e| fail(reasons::CORRUPT_DUMP, format!("{key}: {e}"))))
        .transpose()?;
    let expected_size = got.content_length().unwrap_or(-1);
    let mut check = EtagCheck::new(etag, part_size);
    let mut file = Decompressor::create(out, key).map_err(|e| {
        fail(
            reasons::DOWNLOAD_FAILED,
            format!("cannot write {}: {e}", out.display()),
        )
    })?;
    let corrupt = |e: std::io::Error| {
        fail(
            reasons::CORRUPT_DUMP,
            format!("cannot decompress {key}: {e}"),
        )
    };
    let mut body = got.body;
    let mut size = 0u64;
    while let Some(chunk) = body.try_next().await.map_err(|e| {
        fail(
            reasons::DOWNLOAD_FAILED,
            format!("download of {key} broke off: {e}"),
        )
    })? {
        size += chunk.len() as u64;
        check.update(&chunk);
        file.write_all(&chunk).map_err(corrupt)?;
    }
    if size as i64 != expected_size {
        return Err(fail(
            reasons::DOWNLOAD_FAILED,
            format!("{key}: received {size} bytes of {expected_size}"),
        ));
    }
    let verified = check.verify().map_err(|e| {
        fail(
            reasons::CHECKSUM_MISMATCH,
            format!("{key} does not match its checksum: {e}"),
        )
    })?;
    file.finish().map_err(corrupt)?;
    Ok((size, verified))
}

/// The newest of our dumps under `prefix`.
async fn latest(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<String, Failure> {
    let objects = store::list_objects(client, bucket, prefix)
        .await
        .map_err(|e| {
            fail(
                reasons::DOWNLOAD_FAILED,
                format!("cannot list {prefix:?}: {e}"),
            )
        })?;
    retention::newest_first(prefix, &objects)
        .first()
        .map(|(o, _)| o.key.clone())
        .ok_or_else(|| {
            fail(
                reasons::NO_DUMP_FOUND,
                format!("no dump under prefix {prefix:?} in bucket {bucket}"),
            )
        })
}

type Out = std::io::BufWriter<std::fs::File>;

/// Writes the object to the output file, decompressing by its key's suffix.
enum Decompressor {
    Plain(Out),
    Gzip(flate2::write::MultiGzDecoder<Out>),
    Zstd(ZstdFrames),
}

/// A zstd decoder that knows whether its last frame ended: zstd's own
/// writer takes a stream cut mid-frame for a whole one.
struct ZstdFrames {
    decoder: zstd::stream::raw::Decoder<'static>,
    out: Out,
    buf: Vec<u8>,
    /// The decoder's hint after the last step: 0 once a frame is complete.
    hint: usize,
}

impl ZstdFrames {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        if bytes.is_empty() {
            // A step without input would report on the next frame's header.
            return Ok(());
        }
        let mut input = InBuffer::around(bytes);
        loop {
            let mut output = OutBuffer::around(&mut self.buf[..]);
            self.hint = self.decoder.run(&mut input, &mut output)?;
            let n = output.pos();
            self.out.write_all(&self.buf[..n])?;
            if input.pos() == bytes.len() && n < self.buf.len() {
                return Ok(());
            }
        }
    }

    /// Every output was written as it came (`write_all` drains the decoder).
    fn finish(self) -> std::io::Result<Out> {
        if self.hint != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the zstd stream ends inside a frame (truncated)",
            ));
        }
        Ok(self.out)
    }
}

impl Decompressor {
    fn create(path: &Path, key: &str) -> std::io::Result<Decompressor> {
        let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        Ok(match Compression::of_name(key) {
            Compression::Gzip => Decompressor::Gzip(flate2::write::MultiGzDecoder::new(file)),
            Compression::Zstd => Decompressor::Zstd(ZstdFrames {
                decoder: zstd::stream::raw::Decoder::new()?,
                out: file,
                buf: vec![0; 1 << 17],
                // Nothing read yet: an empty object is no whole frame either.
                hint: 1,
            }),
            Compression::None => Decompressor::Plain(file),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Decompressor::Plain(w) => w.write_all(bytes),
            Decompressor::Gzip(w) => w.write_all(bytes),
            Decompressor::Zstd(w) => w.write_all(bytes),
        }
    }

    /// Flushes everything and syncs the file: a truncated stream is an error here.
    fn finish(self) -> std::io::Result<()> {
        let file = match self {
            Decompressor::Plain(w) => w,
            Decompressor::Gzip(w) => w.finish()?,
            Decompressor::Zstd(w) => w.finish()?,
        };
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::jobs::proof::hex;
    use crate::jobs::store::DEFAULT_PART_SIZE;
    use md5::{Digest as _, Md5};

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
    fn decompresses_by_suffix_and_refuses_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let sql = b"CREATE TABLE t (id int);\n".repeat(1000);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
            e.write_all(&sql).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&sql[..], 3).unwrap();
        for (key, data) in [
            ("a.sql.gz", &gz),
            ("a.sql.zst", &zst),
            ("a.sql", &sql.to_vec()),
        ] {
            let out = dir.path().join("out.sql");
            let mut d = Decompressor::create(&out, key).unwrap();
            for c in data.chunks(100) {
                d.write_all(c).unwrap();
            }
            d.finish().unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), sql, "{key}");
        }
        for (key, data) in [("a.sql.gz", &gz), ("a.sql.zst", &zst)] {
            let out = dir.path().join("cut.sql");
            let mut d = Decompressor::create(&out, key).unwrap();
            d.write_all(&data[..data.len() / 2]).unwrap();
            assert!(d.finish().is_err(), "a truncated stream: {key}");
        }
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
