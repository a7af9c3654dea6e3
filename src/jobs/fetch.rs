//! The download step of a restore (`dbbackup-operator fetch`), run as the
//! restore pod's init container.
//!
//! It resolves "latest" to the newest dump under the prefix, streams the
//! object to the scratch volume while checking it against the ETag the store
//! computed on upload (MD5, per part for multipart uploads), decompresses on
//! the way, and leaves `restore.sql` only when every byte checked out.

use super::proof::{EtagCheck, parse_part_size};
use super::store::WithSse as _;
use super::tool::Hidden;
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
    /// The age identity (AGE-SECRET-KEY-1…) that decrypts a `.age` dump, from
    /// the restore's identity Secret.
    #[arg(long, env = crate::names::AGE_IDENTITY_ENV, hide_env_values = true)]
    pub identity: Option<Hidden>,
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
    let sse = args
        .store
        .sse()
        .map_err(|e| fail(reasons::DOWNLOAD_FAILED, e))?;
    let bucket = &args.store.bucket;
    let key = if args.key == crate::api::LATEST {
        latest(&client, bucket, &args.prefix).await?
    } else {
        args.key.clone()
    };
    info!(%key, "downloading");
    let (size, proof) = download(
        &client,
        &sse,
        bucket,
        &key,
        &args.out,
        args.identity.as_ref(),
    )
    .await?;
    let how = if proof.is_some() {
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
        checksum: proof,
        log,
        ..JobResult::new(Step::Fetch, Outcome::Succeeded, String::new())
    })
}

/// Downloads `key` into `out`: checked against the store's checksum,
/// decrypted with `identity` when the key ends in .age, and decompressed by
/// its suffix. Returns its size and the checksum that held, if any could be
/// checked; leaves `out` only when every byte checked out.
pub async fn download(
    client: &aws_sdk_s3::Client,
    sse: &store::Sse,
    bucket: &str,
    key: &str,
    out: &Path,
    identity: Option<&Hidden>,
) -> Result<(u64, Option<String>), Failure> {
    let got = get(client, bucket, key, sse).await?;
    let etag = got
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let encrypted = key.ends_with(".age");
    let download = match encrypted {
        true => out.with_extension("age-download"),
        false => out.to_path_buf(),
    };
    // An ETag that is no MD5 must not be checked as one.
    let etag = if sse.hides_md5() { String::new() } else { etag };
    let saved = save(got, &etag, key, &download).await;
    let saved = match (saved, encrypted) {
        (Ok(saved), true) => decrypt(&download, out, key, identity).map(|()| saved),
        (other, _) => other,
    };
    if encrypted {
        let _ = std::fs::remove_file(&download);
    }
    saved
}

async fn get(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    sse: &store::Sse,
) -> Result<GetObjectOutput, Failure> {
    let get = client.get_object().bucket(bucket).key(key).with_sse(sse);
    // Where the ETag may be no MD5, the object's CRC64/NVME is what we check.
    let get = match sse.hides_md5() {
        true => get.checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled),
        false => get,
    };
    get.send().await.map_err(|e| {
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
/// recomputing its ETag (or, where that is no MD5, the CRC64/NVME the store
/// reports); returns its size and the checksum that held, if any could be
/// checked. Every byte counted, checked and decompressed, or an error.
async fn save(
    got: GetObjectOutput,
    etag: &str,
    key: &str,
    out: &Path,
) -> Result<(u64, Option<String>), Failure> {
    let part_size = got
        .metadata()
        .and_then(|m| m.get(store::PART_SIZE_META))
        .map(|v| parse_part_size(v).map_err(|e| fail(reasons::CORRUPT_DUMP, format!("{key}: {e}"))))
        .transpose()?;
    let expected_size = got.content_length().unwrap_or(-1);
    let mut check = EtagCheck::new(etag, part_size);
    // A full-object CRC64/NVME the store reports (composite ones end in -N).
    let crc_expected = got
        .checksum_crc64_nvme()
        .filter(|c| !c.contains('-'))
        .map(str::to_string);
    let mut crc = crc_expected
        .as_ref()
        .map(|_| crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme));
    // An encrypted dump is saved as it is, and decrypted once checked.
    let create = match key.ends_with(".age") {
        true => std::fs::File::create(out)
            .map(|f| Decompressor::Plain(std::io::BufWriter::with_capacity(1 << 20, f))),
        false => Decompressor::create(out, key),
    };
    let mut file = create.map_err(|e| cannot_write(out, e))?;
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
        if let Some(crc) = &mut crc {
            crc.update(&chunk);
        }
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
    let mismatch = |e: String| {
        fail(
            reasons::CHECKSUM_MISMATCH,
            format!("{key} does not match its checksum: {e}"),
        )
    };
    let mut proof = check
        .verify()
        .map_err(mismatch)?
        .then(|| format!("etag:{etag}"));
    if let (None, Some(expected), Some(crc)) = (&proof, crc_expected, crc) {
        let got = super::proof::crc64nvme_base64(crc.finalize());
        if got != expected {
            return Err(mismatch(format!(
                "CRC64/NVME {got}, the store's is {expected}"
            )));
        }
        proof = Some(format!("crc64nvme:{got}"));
    }
    file.finish().map_err(corrupt)?;
    Ok((size, proof))
}

fn cannot_write(out: &Path, e: std::io::Error) -> Failure {
    fail(
        reasons::DOWNLOAD_FAILED,
        format!("cannot write {}: {e}", out.display()),
    )
}

/// The newest of our dumps under `prefix`.
pub async fn latest(
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

/// Decrypts the checked download `from` with `identity` and decompresses it
/// into `out` (by the key's suffix before `.age`). The identity never shows in
/// a message; a wrong one is named as such.
fn decrypt(from: &Path, out: &Path, key: &str, identity: Option<&Hidden>) -> Result<(), Failure> {
    let denied = |why: &str| fail(reasons::DECRYPTION_FAILED, why.to_string());
    let identity = identity.ok_or_else(|| {
        denied(&format!(
            "{key} is encrypted; name the Secret with its age identity in spec.identitySecret"
        ))
    })?;
    let identity = crate::api::parse_age_identity(&identity.0).ok_or_else(|| {
        denied("the identity Secret holds no age X25519 identity (AGE-SECRET-KEY-1…)")
    })?;
    let file = std::fs::File::open(from).map_err(|e| {
        fail(
            reasons::DOWNLOAD_FAILED,
            format!("cannot read {}: {e}", from.display()),
        )
    })?;
    let decryptor = age::Decryptor::new(std::io::BufReader::new(file))
        .map_err(|e| fail(reasons::CORRUPT_DUMP, format!("{key} is no age file: {e}")))?;
    let mut plain = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|_| denied(&format!("the identity cannot decrypt {key}: its public key is not among the dump's recipients")))?;
    let inner = key.strip_suffix(".age").unwrap_or(key);
    let mut sink = Decompressor::create(out, inner).map_err(|e| cannot_write(out, e))?;
    let corrupt = |e: std::io::Error| {
        fail(
            reasons::CORRUPT_DUMP,
            format!("cannot decrypt or decompress {key}: {e}"),
        )
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut plain, &mut buf).map_err(corrupt)?;
        if n == 0 {
            break;
        }
        sink.write_all(&buf[..n]).map_err(corrupt)?;
    }
    sink.finish().map_err(corrupt)
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
    use age::secrecy::ExposeSecret;

    fn encrypted(to: &age::x25519::Identity, data: &[u8], path: &Path) {
        let recipient = to.to_public();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .unwrap();
        let mut w = encryptor
            .wrap_output(std::fs::File::create(path).unwrap())
            .unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn an_encrypted_dump_decrypts_with_its_identity_and_names_a_wrong_one() {
        let dir = tempfile::tempdir().unwrap();
        let (download, out) = (
            dir.path().join("d.age-download"),
            dir.path().join("restore.sql"),
        );
        let identity = age::x25519::Identity::generate();
        let data = b"INSERT INTO t VALUES ('row');\n".repeat(300);
        encrypted(
            &identity,
            &zstd::encode_all(&data[..], 3).unwrap(),
            &download,
        );
        let key = "p/2026-11-26/datadump1.sql.zst.age";
        let text = Hidden(identity.to_string().expose_secret().to_string());
        decrypt(&download, &out, key, Some(&text)).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        let stranger = Hidden(
            age::x25519::Identity::generate()
                .to_string()
                .expose_secret()
                .to_string(),
        );
        let f = decrypt(&download, &out, key, Some(&stranger)).unwrap_err();
        assert_eq!(f.reason, "DecryptionFailed");
        assert!(
            f.message.contains("not among the dump's recipients"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("AGE-SECRET-KEY"), "{}", f.message);
        let f = decrypt(&download, &out, key, None).unwrap_err();
        assert_eq!(f.reason, "DecryptionFailed");
        let f = decrypt(&download, &out, key, Some(&Hidden("nonsense".into()))).unwrap_err();
        assert!(
            f.message.contains("no age X25519 identity"),
            "{}",
            f.message
        );
    }
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
