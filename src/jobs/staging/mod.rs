//! The staging volume the dump and upload pods share, and the protocol that
//! keeps their hand-off safe when several pods use it at once.
//!
//! ```text
//! dumps/datadump.sql[.gz|.zst][.age] the finished dump, waiting for an upload
//! dumps/.partial-<run>-<name>    a dump being written (one per run)
//! dumps/.partial-<run>-<name>.crc64nvme  its size and checksum, once whole
//! dumps/.uploading-<name>        a dump an upload claimed and is sending
//! dumps/.sent-<name>             the key the store confirmed it under, until it is deleted
//! dumps/.dump.lock               held by the one dump running on the volume
//! dumps/.upload.lock             held by the one upload running on the volume
//! logs/YYYY-MM-DD.txt            the original pipeline's log lines
//! ```
//!
//! - One dump at a time: a dump holds `.dump.lock` from start to end; a second
//!   one waits for it (queued, never lost). A dump writes only its own partial
//!   file and renames it into place whole, replacing a dump not yet claimed.
//! - One upload at a time: an upload holds `.upload.lock`, claims the dump by
//!   renaming it to `.uploading-<name>`, reads only that file, and deletes it
//!   once the store confirmed it. A dump finished meanwhile is not touched: the
//!   next upload sends it. A claim left by a killed upload is sent first by the
//!   next one, unless its `.sent-` marker names an object the store holds. A
//!   fresh claim first removes a marker of its name: one left by an upload
//!   killed between deleting its dump and its marker names another dump.
//!   Two uploads therefore never send the same dump.
//!
//! - An upload may follow a dump while it is written (`jobs::follow`): it
//!   holds `.upload.lock`, reads the partial file only below the size it
//!   has reached, and claims the dump as above once the dump put it in place.
//!   The dump's `.crc64nvme` record proves the bytes it read were the dump's.
//!
//! The locks are `flock`s: the kernel releases them when their holder dies,
//! however it dies, so a crash never leaves the volume locked.

use crate::logline::LogLine;
use chrono::Utc;
use chrono_tz::Tz;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

/// Finished dump names, newest format first.
pub const DUMP_FILES: [&str; 6] = [
    "datadump.sql.zst.age",
    "datadump.sql.gz.age",
    "datadump.sql.age",
    "datadump.sql.zst",
    "datadump.sql.gz",
    "datadump.sql",
];
const PARTIAL: &str = ".partial-";
const CLAIMED: &str = ".uploading-";
/// The suffix of a dump's checksum record.
const RECORD: &str = ".crc64nvme";

pub struct Staging {
    root: PathBuf,
    /// Where the log lines go: the volume's one `logs/`.
    logs: PathBuf,
}

/// Which of the two locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    Dump,
    Upload,
}

/// A dump put in place.
#[derive(Debug)]
pub struct Published {
    /// When it was finished: it names this dump until it is uploaded.
    pub finished: SystemTime,
    /// When the unsent dump it replaced was finished.
    pub replaced: Option<SystemTime>,
}

/// How a dump's finish time names it in results (`JobResult::dumped`), to
/// the nanosecond: the dump and the upload that sent it say the same.
pub fn dump_id(finished: SystemTime) -> String {
    chrono::DateTime::<Utc>::from(finished).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// When the dump writing `partial` started, from its name
/// (`.partial-<pid>-<epoch nanos>-<n>-<name>`).
pub fn partial_started(partial: &Path) -> Option<SystemTime> {
    let name = partial.file_name()?.to_str()?.strip_prefix(PARTIAL)?;
    let nanos: u64 = name.split('-').nth(1)?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
}

/// A dump an upload claimed: only this upload reads or deletes it.
#[derive(Debug)]
pub struct Claimed {
    pub path: PathBuf,
    /// The finished dump's name (`datadump.sql.gz` …), which sets the object's.
    pub name: &'static str,
    /// When the dump finished (the rename keeps it): its date names the folder.
    pub finished: SystemTime,
    /// Claimed by an upload that did not finish.
    pub left_over: bool,
    /// Moved aside after failed proofs (`stuck.rs`), tried again after newer dumps.
    pub stuck: bool,
}

impl Staging {
    pub fn new(root: impl Into<PathBuf>) -> Staging {
        let root = root.into();
        Staging {
            logs: root.join("logs"),
            root,
        }
    }

    /// The staging of one database of several on the volume at `volume`
    /// (`databases/<segment>/`), which logs into the volume's log.
    pub fn of_database(volume: &Path, segment: &str) -> Staging {
        Staging {
            root: volume.join(super::databases::DATABASES).join(segment),
            logs: volume.join("logs"),
        }
    }

    pub fn dumps(&self) -> PathBuf {
        self.root.join("dumps")
    }

    /// Creates `dumps/` and `logs/`.
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.dumps())?;
        std::fs::create_dir_all(&self.logs)
    }

    /// Appends `message` to today's log file (in `tz`) and returns the line; a
    /// log file that cannot be written does not fail the step.
    pub fn log(&self, tz: Tz, message: &str) -> LogLine {
        let line = LogLine::at(&Utc::now().with_timezone(&tz), message);
        let dir = &self.logs;
        let written = std::fs::create_dir_all(dir).and_then(|_| {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(line.file_name()))?;
            writeln!(f, "{line}")?;
            f.sync_data()
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write the log file");
        }
        line
    }

    /// Takes `lock`, waiting while another pod holds it; `waiting` is called
    /// once if it must wait. Released when the returned file is dropped.
    pub fn lock(&self, lock: Lock, waiting: impl FnOnce()) -> io::Result<File> {
        let name = match lock {
            Lock::Dump => ".dump.lock",
            Lock::Upload => ".upload.lock",
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.dumps().join(name))?;
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            waiting();
            flock(&file, libc::LOCK_EX)?;
        }
        Ok(file)
    }

    /// A partial file name for this run alone. Call with the dump lock held.
    pub fn partial(&self, name: &str) -> PathBuf {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        // When the dump started, which an upload following it records.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        self.dumps().join(format!(
            "{PARTIAL}{}-{nanos}-{run}-{name}",
            std::process::id()
        ))
    }

    /// Removes what killed dumps left. Call with the dump lock held: then no
    /// partial file is anyone's. Checksum records stay: the upload following
    /// the dump just put in place may still need its own (a confirmed upload
    /// removes those of dumps no longer written).
    pub fn remove_partials(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(self.dumps())? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(PARTIAL) && !name.ends_with(RECORD) {
                remove_if_present(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Puts the whole, synced `partial` in place as `name`, replacing a dump
    /// not yet claimed (of any compression), and syncs the folder. Says when
    /// the new dump and the one it replaced, if any, were finished: the
    /// replaced one is never uploaded, and its run must be told. Only a dump
    /// this call took away counts as replaced (an upload may claim it at the
    /// same moment), and at no moment is neither dump staged.
    pub fn publish(&self, partial: &Path, name: &str) -> io::Result<Published> {
        let dumps = self.dumps();
        let finished = std::fs::metadata(partial)?.modified()?;
        let target = dumps.join(name);
        let mut replaced = None;
        match exchange(partial, &target) {
            // `partial` now holds the dump it replaced.
            Ok(()) => {
                replaced = Some(std::fs::metadata(partial)?.modified()?);
                std::fs::remove_file(partial)?;
            }
            // Nothing staged under this name (none, or claimed just now).
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::rename(partial, &target)?,
            // A filesystem that cannot exchange (NFS): look, then replace.
            Err(_) => {
                replaced = std::fs::metadata(&target).and_then(|m| m.modified()).ok();
                std::fs::rename(partial, &target)?;
            }
        }
        // One of another compression: taken away once the new one is in place.
        for other in DUMP_FILES.iter().filter(|n| **n != name) {
            let away = dumps.join(format!("{PARTIAL}replaced-{other}"));
            match std::fs::rename(dumps.join(other), &away) {
                Ok(()) => {
                    replaced = replaced.max(Some(std::fs::metadata(&away)?.modified()?));
                    std::fs::remove_file(&away)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        File::open(&dumps)?.sync_all()?;
        Ok(Published { finished, replaced })
    }

    /// The dump this upload is to send: a claim a killed upload left, else
    /// the finished dump, claimed now. Call with the upload lock held.
    pub fn claim(&self) -> io::Result<Option<Claimed>> {
        let dumps = self.dumps();
        if let Some(left) = self.claimed()? {
            return Ok(Some(left));
        }
        for name in DUMP_FILES {
            if !dumps.join(name).exists() {
                continue;
            }
            // A marker left by an upload killed after deleting its dump names
            // an older dump's key: it must never speak for this one.
            remove_if_present(&self.sent_marker(name))?;
            self.forget_unproven(name)?;
            let claimed = dumps.join(format!("{CLAIMED}{name}"));
            match std::fs::rename(dumps.join(name), &claimed) {
                Ok(()) => {
                    File::open(&dumps)?.sync_all()?;
                    return Ok(Some(Claimed {
                        finished: std::fs::metadata(&claimed)?.modified()?,
                        path: claimed,
                        name,
                        left_over: false,
                        stuck: false,
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The oldest claim on the volume, if any.
    fn claimed(&self) -> io::Result<Option<Claimed>> {
        let mut found: Option<Claimed> = None;
        for name in DUMP_FILES {
            let path = self.dumps().join(format!("{CLAIMED}{name}"));
            let finished = match std::fs::metadata(&path) {
                Ok(meta) => meta.modified()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if found.as_ref().is_none_or(|f| finished < f.finished) {
                found = Some(Claimed {
                    path,
                    name,
                    finished,
                    left_over: true,
                    stuck: false,
                });
            }
        }
        Ok(found)
    }

    /// Records that the store confirmed `claimed` under `key`, before the
    /// dump is deleted: an upload killed in between leaves the claim, and the
    /// next one then finds the object instead of sending the dump again.
    pub fn mark_sent(&self, claimed: &Claimed, key: &str) -> io::Result<()> {
        let mut f = File::create(self.marker_of(claimed))?;
        f.write_all(key.as_bytes())?;
        f.sync_all()?;
        File::open(self.dumps())?.sync_all()
    }

    /// The key a killed upload recorded for `claimed`, if it got that far.
    /// Only a claim a killed upload left, or a stuck dump (whose marker is
    /// its own), can have one: a fresh claim's dump was never sent.
    pub fn sent_key(&self, claimed: &Claimed) -> Option<String> {
        if !claimed.left_over && !claimed.stuck {
            return None;
        }
        std::fs::read_to_string(self.marker_of(claimed))
            .ok()
            .filter(|k| !k.is_empty())
    }

    fn sent_marker(&self, name: &str) -> PathBuf {
        self.dumps().join(format!(".sent-{name}"))
    }

    /// The marker `claimed` gets: a stuck dump's is its own, never the one
    /// of the claim beside it, which a killed upload's next run trusts.
    fn marker_of(&self, claimed: &Claimed) -> PathBuf {
        match claimed.stuck {
            true => self.dumps().join(format!(
                ".sent-{}",
                claimed
                    .path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
            )),
            false => self.sent_marker(claimed.name),
        }
    }

    /// Deletes a claimed dump the store confirmed, then its marker and the
    /// checksum records of dumps no longer being written, and syncs the
    /// folder. Only an upload that follows a dump reads its record, while it
    /// holds the upload lock as this one does: a dump already in place is
    /// sent from its file, and needs none.
    pub fn release(&self, claimed: &Claimed) -> io::Result<()> {
        std::fs::remove_file(&claimed.path)?;
        remove_if_present(&self.marker_of(claimed))?;
        if !claimed.stuck {
            self.forget_unproven(claimed.name)?;
        }
        for entry in std::fs::read_dir(self.dumps())? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if let Some(partial) = name.strip_suffix(RECORD).filter(|p| p.starts_with(PARTIAL))
                && !self.dumps().join(partial).exists()
            {
                remove_if_present(&path)?;
            }
        }
        File::open(self.dumps())?.sync_all()
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor this function borrows.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Swaps two paths atomically (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

mod stuck;
mod writing;

pub use stuck::STUCK_AFTER;
pub use writing::{Volume, volume};

#[cfg(test)]
mod tests;
