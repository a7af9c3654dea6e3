//! What the dump step writes to its partial file: the tool's output,
//! compressed and encrypted in process, and the CRC64/NVME of the bytes that
//! reach the file (the upload that follows the file proves against it).

use super::proof::Checksummed;
use crate::api::Compression;
use std::fs::File;
use std::io::{self, Read, Write};

/// The age recipients a dump is encrypted to.
#[derive(Clone, Debug)]
pub struct Recipients(pub Vec<age::x25519::Recipient>);

/// The recipients of the Secret's text (`api::parse_age_recipients`).
pub fn parse_recipients(text: &str) -> Result<Recipients, String> {
    crate::api::parse_age_recipients(text).map(Recipients)
}

/// Compresses the tool's output into `file` and syncs it; returns the bytes
/// the tool wrote and the CRC64/NVME of the bytes written to the file. Large reads from a widened pipe keep the compressor busy
/// with few system calls; zstd compresses on a worker thread of its own, so
/// reading and compressing overlap as in `tool | zstd`.
pub(super) fn compress(
    mut from: impl Read,
    file: File,
    compression: Compression,
    encrypt_to: Option<&Recipients>,
) -> io::Result<(u64, u64)> {
    const BUFFER: usize = 1024 * 1024;
    let out = Sink::new(
        io::BufWriter::with_capacity(BUFFER, Checksummed::new(file)),
        encrypt_to,
    )?;
    let mut buf = vec![0u8; BUFFER];
    let mut feed = |to: &mut dyn Write| -> io::Result<u64> {
        let mut read = 0u64;
        loop {
            match from.read(&mut buf) {
                Ok(0) => return Ok(read),
                Ok(n) => {
                    to.write_all(&buf[..n])?;
                    read += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    };
    let (read, out) = match compression {
        Compression::None => {
            let mut out = out;
            (feed(&mut out)?, out)
        }
        // Levels by measurement (`make bench`, levels): gzip 1 is the only
        // level that outruns the dump tool (173 MiB/s against its 107;
        // level 6 manages 26), zstd 3 the best ratio that does (193 MiB/s).
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            (feed(&mut gz)?, gz.finish()?)
        }
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(out, zstd::DEFAULT_COMPRESSION_LEVEL)?;
            z.multithread(1)?;
            (feed(&mut z)?, z.finish()?)
        }
    };
    let (file, crc) = out
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .finish();
    file.sync_all()?;
    Ok((read, crc))
}

type Out = io::BufWriter<Checksummed<File>>;

/// Where the (compressed) dump goes: the file, or an age stream into it.
enum Sink {
    Plain(Out),
    Age(age::stream::StreamWriter<Out>),
}

impl Sink {
    fn new(out: Out, encrypt_to: Option<&Recipients>) -> io::Result<Sink> {
        let Some(Recipients(keys)) = encrypt_to else {
            return Ok(Sink::Plain(out));
        };
        let recipients = keys.iter().map(|k| k as &dyn age::Recipient);
        let encryptor = age::Encryptor::with_recipients(recipients).map_err(io::Error::other)?;
        Ok(Sink::Age(encryptor.wrap_output(out)?))
    }

    /// Ends the age stream (its last chunk and tag) and hands back the file.
    fn finish(self) -> io::Result<Out> {
        match self {
            Sink::Plain(out) => Ok(out),
            Sink::Age(age) => age.finish(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Age(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(compression: Compression) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let data = b"INSERT INTO t VALUES (1);\n".repeat(1000);
        let (read, crc) =
            compress(&data[..], File::create(&path).unwrap(), compression, None).unwrap();
        assert_eq!(read, data.len() as u64);
        let raw = std::fs::read(&path).unwrap();
        // The checksum is of the file's bytes, as an upload reads them.
        assert_eq!(
            crc,
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &raw)
        );
        let mut out = vec![];
        match compression {
            Compression::None => out = raw,
            Compression::Gzip => {
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Zstd => out = zstd::decode_all(&raw[..]).unwrap(),
        }
        assert_eq!(out, data);
        out
    }

    #[test]
    fn each_compression_round_trips() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            round_trip(c);
        }
    }

    #[test]
    fn an_encrypted_dump_holds_no_plaintext_and_decrypts_with_the_identity() {
        let identity = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipients = parse_recipients(&format!(
            "# ops team\n{}\n\n{}\n",
            identity.to_public(),
            other.to_public()
        ))
        .unwrap();
        assert_eq!(recipients.0.len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let data = b"INSERT INTO customers VALUES (1, 'Zoe Secret-Row');\n".repeat(500);
        let file = File::create(&path).unwrap();
        compress(&data[..], file, Compression::Zstd, Some(&recipients)).unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(14).any(|w| w == b"Secret-Row');"));
        let decryptor = age::Decryptor::new(&raw[..]).unwrap();
        let mut plain = vec![];
        decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(zstd::decode_all(&plain[..]).unwrap(), data);
        // Any of the recipients can read it; a stranger cannot.
        let stranger = age::x25519::Identity::generate();
        let decryptor = age::Decryptor::new(&raw[..]).unwrap();
        assert!(
            decryptor
                .decrypt(std::iter::once(&stranger as &dyn age::Identity))
                .is_err()
        );
    }

    #[test]
    fn recipients_name_the_line_that_is_no_public_key() {
        let e = parse_recipients("age1notakey").unwrap_err();
        assert_eq!(
            e,
            "line 1 of the recipients is not an age X25519 public key (age1…)"
        );
        assert!(parse_recipients("# nothing\n").is_err());
    }
}
