//! An object of the store read as its plain SQL while it downloads, so that
//! a restore loads as the bytes arrive and keeps no copy of the dump.
//!
//! The download (`download.rs`) checks every byte against the store's
//! checksum; the reader decrypts (`.age`) and decompresses by the key's suffix. The
//! reader's end of file comes only once the whole object checked out: a
//! mismatch, a cut-off download or a corrupt stream is a read error instead.
//! A load that commits at end of file therefore commits only a proven dump.

use super::proof::Proof;
use super::store;
use super::tool::Hidden;
use crate::api::Compression;
use crate::jobresult::{Failure, fail};
use crate::reasons;
use bytes::{Buf as _, Bytes};
use std::io::{self, BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Chunks in flight between the download and the reader. The client's
/// chunks reach hundreds of KiB: 64 of them cost 20 MiB of peak memory
/// for nothing, 8 keep the reader fed.
pub(super) const QUEUE: usize = 8;

/// The buffer a decoder writes the SQL into.
const DECODED: usize = 1 << 17;

/// A whole object that checked out: its size, and the checksum that held
/// (None where the store gave nothing to check against).
#[derive(Clone, Debug, PartialEq)]
pub struct Proven {
    pub size: u64,
    pub proof: Option<Proof>,
}

impl Proven {
    /// "downloaded <key> (<size> bytes, <how it was checked>)", for the log.
    pub fn downloaded(&self, key: &str) -> String {
        let how = match self.proof {
            Some(Proof::Crc64Nvme(_)) => "CRC64/NVME checksum verified",
            Some(Proof::ETag(_)) => "MD5 ETag checksum verified",
            None => "the store's ETag is no MD5; decompression checks only",
        };
        format!("downloaded {key} ({} bytes, {how})", self.size)
    }
}

/// Which object a download takes, and how to reach and read it.
#[derive(clap::Args, Debug, Clone)]
pub struct ObjectArgs {
    #[command(flatten)]
    pub store: store::StoreArgs,
    /// Object key, or "latest" for the newest dump under --prefix.
    #[arg(long, default_value = crate::api::LATEST)]
    pub key: String,
    /// Key prefix searched for "latest", ending in '/' or empty.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// With "latest": the newest dump taken at or before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub before: Option<chrono::DateTime<chrono::Utc>>,
    /// A restore across namespaces: the object as presigned URLs (JSON),
    /// read without credentials.
    #[arg(long, env = super::presigned::PRESIGNED_ENV, hide_env_values = true, value_parser = parse_presigned)]
    pub presigned: Option<crate::jobresult::Presigned>,
    /// Why the presigned object was chosen, as its locate Job said.
    #[arg(long, hide = true)]
    pub chosen: Option<String>,
    /// The age identity (AGE-SECRET-KEY-1…) that decrypts a `.age` dump, from
    /// the restore's identity Secret.
    #[arg(long, env = crate::names::AGE_IDENTITY_ENV, hide_env_values = true)]
    pub identity: Option<Hidden>,
}

fn parse_presigned(text: &str) -> Result<crate::jobresult::Presigned, String> {
    serde_json::from_str(text).map_err(|_| "not the presigned URLs of an object".to_string())
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .map_err(|e| format!("not an RFC 3339 time ({e})"))
}

/// The store's client and encryption, and the key resolved ("latest": the
/// newest dump under the prefix, or the newest taken by --before).
pub async fn locate(
    object: &ObjectArgs,
) -> Result<(aws_sdk_s3::Client, store::Sse, String), Failure> {
    let (client, sse, key, _) = locate_why(object).await?;
    Ok((client, sse, key))
}

/// `locate`, and why that key: a line for the log and the restore's status.
pub async fn locate_why(
    object: &ObjectArgs,
) -> Result<(aws_sdk_s3::Client, store::Sse, String, String), Failure> {
    if let Some(p) = &object.presigned {
        let client = super::presigned::client(p).map_err(|e| fail(reasons::DOWNLOAD_FAILED, e))?;
        let why = object.chosen.clone().unwrap_or_default();
        return Ok((client, store::Sse::None, p.key.clone(), why));
    }
    let (store, prefix) = (&object.store, object.prefix.as_str());
    let client = store
        .client()
        .await
        .map_err(|e| fail(reasons::DOWNLOAD_FAILED, e))?;
    let sse = store.sse().map_err(|e| fail(reasons::DOWNLOAD_FAILED, e))?;
    let (key, why) = match (object.key.as_str(), object.before) {
        (crate::api::LATEST, None) => {
            let key = super::fetch::latest(&client, &store.bucket, prefix).await?;
            (key, format!("the newest dump under {prefix:?}"))
        }
        (crate::api::LATEST, Some(before)) => {
            let (key, at) =
                super::fetch::newest_before(&client, &sse, &store.bucket, prefix, before).await?;
            let stamp = |t: chrono::DateTime<chrono::Utc>| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            };
            let why = format!(
                "the newest dump under {prefix:?} taken at or before {}: taken at {}",
                stamp(before),
                stamp(at)
            );
            (key, why)
        }
        (key, _) => (key.to_string(), "named in the spec".to_string()),
    };
    Ok((client, sse, key, why))
}

pub(super) enum Piece {
    Data(Bytes),
    End(Result<Proven, Failure>),
}

/// How the download ended, as its reader met the end.
#[derive(Clone, Default)]
struct Verdict(Arc<Mutex<Option<Result<Proven, Failure>>>>);

impl Verdict {
    fn set(&self, end: Result<Proven, Failure>) {
        *self.0.lock().unwrap() = Some(end);
    }

    fn failure(&self) -> Option<Failure> {
        match &*self.0.lock().unwrap() {
            Some(Err(f)) => Some(f.clone()),
            _ => None,
        }
    }
}

/// The object's raw bytes as they arrive; end of file only after proof.
pub struct Raw {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    proven: bool,
    verdict: Verdict,
}

impl Raw {
    pub(super) fn new(rx: mpsc::Receiver<Piece>) -> Raw {
        Raw {
            rx,
            current: Bytes::new(),
            proven: false,
            verdict: Verdict::default(),
        }
    }
}

impl Read for Raw {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let current = self.fill_buf()?;
            let n = buf.len().min(current.len());
            buf[..n].copy_from_slice(&current[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

/// The chunks as the client received them: a reader that writes them on
/// (`fetch` into its file) copies nothing in between.
impl BufRead for Raw {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() {
            if self.proven {
                return Ok(&[]);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(bytes)) => self.current = bytes,
                Some(Piece::End(Ok(proven))) => {
                    self.verdict.set(Ok(proven));
                    self.proven = true;
                }
                Some(Piece::End(Err(f))) => {
                    let message = f.message.clone();
                    self.verdict.set(Err(f));
                    return Err(io::Error::other(message));
                }
                None => return Err(io::Error::other("the download stopped")),
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        self.current.advance(n);
    }
}

/// The dump's SQL as it downloads: read `reader` to its end, then ask
/// `proven` (reading blocks, so this lives off the async runtime).
pub struct Sql {
    pub reader: Box<dyn BufRead + Send>,
    key: String,
    verdict: Verdict,
}

impl Sql {
    /// The SQL of the object `raw` downloads: decrypted with `identity` when
    /// the key ends in .age, then decompressed by the key's suffix. The
    /// identity never shows in a message; a wrong one is named as such.
    pub fn open(raw: Raw, key: &str, identity: Option<&Hidden>) -> Result<Sql, Failure> {
        let verdict = raw.verdict.clone();
        let sql = |reader| Sql {
            reader,
            key: key.to_string(),
            verdict: verdict.clone(),
        };
        let sealed = key.strip_suffix(".age");
        let compression = Compression::of_name(sealed.unwrap_or(key));
        if sealed.is_none() && compression == Compression::None {
            // Read as the download's own chunks.
            return Ok(sql(Box::new(raw)));
        }
        let inner: Box<dyn Read + Send> = match sealed {
            Some(_) => Box::new(decrypt(raw, key, identity)?),
            None => Box::new(raw),
        };
        let decoded: Box<dyn Read + Send> = match compression {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(inner)
                    .map_err(|e| fail(reasons::CORRUPT_DUMP, format!("{key}: {e}")))?,
            ),
            Compression::None => inner,
        };
        Ok(sql(Box::new(BufReader::with_capacity(DECODED, decoded))))
    }

    /// Why reading stopped with `e`: the download's own failure if it had
    /// one (a checksum that did not hold, a cut-off), else a corrupt stream.
    pub fn failure(&self, e: &io::Error) -> Failure {
        self.verdict.failure().unwrap_or_else(|| {
            let key = &self.key;
            fail(
                reasons::CORRUPT_DUMP,
                match e.kind() {
                    io::ErrorKind::UnexpectedEof => format!("{key} ends early (truncated): {e}"),
                    _ => format!("cannot decrypt or decompress {key}: {e}"),
                },
            )
        })
    }

    /// The object's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// After the reader's end: the proof that every byte checked out.
    pub fn proven(&self) -> Result<Proven, Failure> {
        match &*self.verdict.0.lock().unwrap() {
            Some(Ok(proven)) => Ok(proven.clone()),
            _ => Err(fail(
                reasons::DOWNLOAD_FAILED,
                format!("{}: the dump ended before the download did", self.key),
            )),
        }
    }
}

fn decrypt(
    raw: Raw,
    key: &str,
    identity: Option<&Hidden>,
) -> Result<impl Read + Send + use<>, Failure> {
    let denied = |why: &str| fail(reasons::DECRYPTION_FAILED, why.to_string());
    let identity = identity.ok_or_else(|| {
        denied(&format!(
            "{key} is encrypted; name the Secret with its age identity in spec.identitySecret"
        ))
    })?;
    let identity = crate::api::parse_age_identity(&identity.0).ok_or_else(|| {
        denied("the identity Secret holds no age X25519 identity (AGE-SECRET-KEY-1…)")
    })?;
    let verdict = raw.verdict.clone();
    let decryptor = age::Decryptor::new(raw).map_err(|e| {
        verdict
            .failure()
            .unwrap_or_else(|| fail(reasons::CORRUPT_DUMP, format!("{key} is no age file: {e}")))
    })?;
    decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|_| denied(&format!("the identity cannot decrypt {key}: its public key is not among the dump's recipients")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use age::secrecy::ExposeSecret;
    use std::io::Write;

    fn encrypted(to: &age::x25519::Identity, data: &[u8]) -> Vec<u8> {
        let recipient = to.to_public();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .unwrap();
        let mut w = encryptor.wrap_output(vec![]).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    /// A download that delivers `data` in uneven chunks, then `end`.
    fn raw_of(data: Vec<u8>, end: Result<Proven, Failure>) -> Raw {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::spawn(move || {
            for chunk in data.chunks(7777) {
                let _ = tx.blocking_send(Piece::Data(Bytes::copy_from_slice(chunk)));
            }
            let _ = tx.blocking_send(Piece::End(end));
        });
        Raw {
            rx,
            current: Bytes::new(),
            proven: false,
            verdict: Verdict::default(),
        }
    }

    fn proven(size: usize) -> Result<Proven, Failure> {
        Ok(Proven {
            size: size as u64,
            proof: Some(Proof::ETag("x".into())),
        })
    }

    /// Reads the SQL of `data` under `key` to its end, then its proof.
    fn read_all(
        data: Vec<u8>,
        end: Result<Proven, Failure>,
        key: &str,
        identity: Option<&Hidden>,
    ) -> Result<Vec<u8>, Failure> {
        let mut sql = Sql::open(raw_of(data, end), key, identity)?;
        let mut out = vec![];
        sql.reader
            .read_to_end(&mut out)
            .map_err(|e| sql.failure(&e))?;
        sql.proven().map(|_| out)
    }

    #[test]
    fn an_encrypted_dump_decrypts_with_its_identity_and_names_a_wrong_one() {
        let identity = age::x25519::Identity::generate();
        let data = b"INSERT INTO t VALUES ('row');\n".repeat(300);
        let sealed = encrypted(&identity, &zstd::encode_all(&data[..], 3).unwrap());
        let key = "p/2026-11-26/datadump1.sql.zst.age";
        let text = Hidden(identity.to_string().expose_secret().to_string());
        let read = |id: Option<&Hidden>| read_all(sealed.clone(), proven(sealed.len()), key, id);
        assert_eq!(read(Some(&text)).unwrap(), data);
        let stranger = Hidden(
            age::x25519::Identity::generate()
                .to_string()
                .expose_secret()
                .to_string(),
        );
        let f = read(Some(&stranger)).unwrap_err();
        assert_eq!(f.reason, "DecryptionFailed");
        assert!(
            f.message.contains("not among the dump's recipients"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("AGE-SECRET-KEY"), "{}", f.message);
        let f = read(None).unwrap_err();
        assert_eq!(f.reason, "DecryptionFailed");
        let f = read(Some(&Hidden("nonsense".into()))).unwrap_err();
        assert!(
            f.message.contains("no age X25519 identity"),
            "{}",
            f.message
        );
    }

    #[test]
    fn the_end_of_the_sql_comes_only_after_the_proof() {
        let sql = b"CREATE TABLE t (id int);\n".repeat(1000);
        let zst = zstd::encode_all(&sql[..], 3).unwrap();
        let mismatch = || {
            Err(fail(
                reasons::CHECKSUM_MISMATCH,
                "k does not match its checksum",
            ))
        };
        for (key, data) in [("a.sql", sql.clone()), ("a.sql.zst", zst.clone())] {
            // Every byte arrived and decodes, but the checksum did not hold.
            let f = read_all(data.clone(), mismatch(), key, None).unwrap_err();
            assert_eq!(f.reason, "ChecksumMismatch", "{key}");
            // The download stopped without an end (its task died).
            let (tx, rx) = mpsc::channel(QUEUE);
            tx.blocking_send(Piece::Data(Bytes::from(data))).unwrap();
            drop(tx);
            let raw = Raw {
                rx,
                current: Bytes::new(),
                proven: false,
                verdict: Verdict::default(),
            };
            let mut sql = Sql::open(raw, key, None).unwrap();
            let mut out = vec![];
            assert!(sql.reader.read_to_end(&mut out).is_err(), "{key}");
        }
    }

    /// A plain dump reaches its reader as the chunks the client received,
    /// not copied into a buffer of ours; the end comes after the proof.
    #[test]
    fn a_plain_dump_is_read_as_the_downloaded_chunks() {
        let chunk = Bytes::from(b"INSERT INTO t VALUES (1);\n".repeat(100));
        let (tx, rx) = mpsc::channel(QUEUE);
        tx.blocking_send(Piece::Data(chunk.clone())).unwrap();
        tx.blocking_send(Piece::End(proven(chunk.len()))).unwrap();
        let mut sql = Sql::open(Raw::new(rx), "a.sql", None).unwrap();
        let got = sql.reader.fill_buf().unwrap();
        assert_eq!(got.as_ptr(), chunk.as_ptr(), "the chunk was copied");
        assert_eq!(got.len(), chunk.len());
        sql.reader.consume(chunk.len());
        assert!(sql.reader.fill_buf().unwrap().is_empty());
        assert!(sql.proven().is_ok());
    }

    #[test]
    fn decompresses_by_suffix_and_refuses_truncation() {
        let sql = b"CREATE TABLE t (id int);\n".repeat(1000);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
            e.write_all(&sql).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&sql[..], 3).unwrap();
        for (key, data) in [("a.sql.gz", &gz), ("a.sql.zst", &zst), ("a.sql", &sql)] {
            let got = read_all(data.clone(), proven(data.len()), key, None).unwrap();
            assert_eq!(got, sql, "{key}");
        }
        // A whole object (its checksum held) that is itself cut short.
        for (key, data) in [("a.sql.gz", &gz), ("a.sql.zst", &zst)] {
            let cut = data[..data.len() / 2].to_vec();
            let f = read_all(cut, proven(data.len() / 2), key, None).unwrap_err();
            assert_eq!(f.reason, "CorruptDump", "a truncated stream: {key}");
        }
    }
}
