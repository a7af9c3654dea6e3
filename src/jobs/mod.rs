//! Code that runs in the Job pods, never in the operator: the dump and load
//! steps (in the database's image, through `tool`), the upload and fetch
//! steps (in our image, through `store`, `put` and `proof`), the object keys
//! and retention, and the hand-off between pods on the staging volume
//! (`staging`). Nothing here talks to the Kubernetes API.

mod compress;
pub mod conditional;
pub mod databases;
pub mod download;
pub mod dump;
pub mod feed;
pub mod fetch;
mod follow;
pub mod keys;
pub mod load;
pub mod locate;
mod multipart;
mod pending;
pub mod presigned;
pub mod proof;
mod prune;
pub mod put;
pub mod retention;
pub mod shadow;
mod staged;
pub mod staging;
pub mod store;
pub mod stream;
pub mod throwaway;
pub mod tool;
mod unproven;
pub mod upload;
mod upload_each;
pub mod verify;
pub mod webidentity;

use crate::api::Engine;
use std::path::Path;

/// Where a step's database is: the same four flags for the dump and the load.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    #[arg(long, value_parser = parse_enum::<Engine>)]
    pub engine: Engine,
    #[arg(long)]
    pub host: String,
    #[arg(long)]
    pub port: u16,
    /// The database, taken as a name whatever it contains ("" for a dump of
    /// several, which names them with --each or --all-databases).
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    pub database: String,
}

/// Parses a spec enum (engine, compression) from its lowercase name.
pub fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

/// Copies this binary to `to`, executable by every user: an init container
/// of our image runs this so the database image's container can run the
/// dump and load steps (the pattern CloudNativePG uses for its instance
/// manager).
///
/// The init container has the user's memory limit, which may be well under
/// the binary's size, and the page cache it dirties counts against it: each
/// few MiB are written out and dropped before the next, so the copy never
/// presses on the limit (a plain copy was OOM-killed under load).
pub fn copy_binary(to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    const FLUSH_EVERY: u64 = 4 << 20;
    let partial = to.with_extension("partial");
    let mut src = std::fs::File::open("/proc/self/exe")?;
    let mut dst = std::fs::File::create(&partial)?;
    let mut buf = vec![0; 1 << 20];
    let mut unflushed = 0;
    loop {
        let n = src.read(&mut buf)?;
        if n > 0 {
            dst.write_all(&buf[..n])?;
            unflushed += n as u64;
        }
        if unflushed >= FLUSH_EVERY || (n == 0 && unflushed > 0) {
            dst.sync_data()?;
            for fd in [src.as_raw_fd(), dst.as_raw_fd()] {
                // SAFETY: a hint on an open descriptor; it only drops clean cache.
                unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
            }
            unflushed = 0;
        }
        if n == 0 {
            break;
        }
    }
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, to)
}

/// Copies this image's CA store, if it has one, into `dir` as
/// `ca-certificates.crt`: a database image may have none (the official
/// postgres image has none), and the restore reaches the store from it.
pub fn copy_image_roots(dir: &Path) -> std::io::Result<()> {
    const ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
    match std::fs::read(ROOTS) {
        Ok(pem) => std::fs::write(dir.join("ca-certificates.crt"), pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// The copy is this very binary, byte for byte, executable by all, and
    /// no `.partial` is left beside it.
    #[test]
    fn copy_binary_copies_this_executable_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("dbbackup");
        super::copy_binary(&to).unwrap();
        let copied = std::fs::read(&to).unwrap();
        assert_eq!(copied, std::fs::read("/proc/self/exe").unwrap());
        let mode = std::fs::metadata(&to).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
