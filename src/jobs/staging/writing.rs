//! A dump being written, as an upload that follows it sees it: whether a
//! dump holds the lock, its partial file, the checksum record it leaves once
//! whole, and the size of the volume it is written to.

use super::{DUMP_FILES, PARTIAL, RECORD, Staging, flock, remove_if_present};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

impl Staging {
    /// Whether a dump holds the dump lock now. Takes the lock for a moment
    /// when it is free: a dump starting at that instant waits that long.
    pub fn dump_running(&self) -> io::Result<bool> {
        let file = match File::open(self.dumps().join(".dump.lock")) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The partial file written last, and the dump name it will get. While
    /// a dump holds the lock, that is its file (or, for a moment after the
    /// lock was taken, one a killed dump left, about to be removed).
    pub fn newest_partial(&self) -> io::Result<Option<(PathBuf, &'static str)>> {
        let mut newest: Option<(SystemTime, PathBuf, &'static str)> = None;
        for entry in std::fs::read_dir(self.dumps())? {
            let entry = entry?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            let Some(run) = file_name.strip_prefix(PARTIAL) else {
                continue;
            };
            // `<pid>-<nanos>-<n>-<name>`; not a checksum record or a
            // replaced dump on its way out.
            let Some(name) = run
                .rsplit_once('-')
                .and_then(|(pid, name)| {
                    pid.starts_with(|c: char| c.is_ascii_digit())
                        .then_some(name)
                })
                .and_then(|name| DUMP_FILES.into_iter().find(|n| *n == name))
            else {
                continue;
            };
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if newest.as_ref().is_none_or(|(t, ..)| modified > *t) {
                newest = Some((modified, entry.path(), name));
            }
        }
        Ok(newest.map(|(_, path, name)| (path, name)))
    }

    /// Records the size and CRC64/NVME of the whole, synced `partial` next
    /// to it, before it is put in place: an upload that read the file while
    /// it grew compares them with what it sent.
    pub fn record_checksum(&self, partial: &Path, size: u64, crc: u64) -> io::Result<()> {
        let mut f = File::create(checksum_record(partial))?;
        writeln!(f, "{size} {crc:016x}")?;
        f.sync_all()
    }

    /// The size and CRC64/NVME the dump recorded for `partial`, if it did
    /// and the record is still there.
    pub fn recorded_checksum(&self, partial: &Path) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(checksum_record(partial)).ok()?;
        let (size, crc) = text.trim().split_once(' ')?;
        Some((size.parse().ok()?, u64::from_str_radix(crc, 16).ok()?))
    }

    /// Removes the checksum record of `partial`, if any.
    pub fn forget_checksum(&self, partial: &Path) -> io::Result<()> {
        remove_if_present(&checksum_record(partial))
    }
}

/// The file system holding a path, in bytes.
pub struct Volume {
    pub size: u64,
    pub used: u64,
    /// What an unprivileged writer may still use.
    pub available: u64,
}

/// The file system holding `path`, as `statvfs` sees it.
// Its fields are narrower than u64 on some targets.
#[allow(clippy::unnecessary_cast)]
pub fn volume(path: &Path) -> Option<Volume> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0).then_some(st)?
    };
    let block = st.f_frsize as u64;
    let blocks = |n: u64| n.saturating_mul(block);
    Some(Volume {
        size: blocks(st.f_blocks as u64),
        // Some file systems (FUSE, overlay, NFS) report more free than total.
        used: blocks((st.f_blocks as u64).saturating_sub(st.f_bfree as u64)),
        available: blocks(st.f_bavail as u64),
    })
}

fn checksum_record(partial: &Path) -> PathBuf {
    let mut name = partial.as_os_str().to_owned();
    name.push(RECORD);
    PathBuf::from(name)
}
