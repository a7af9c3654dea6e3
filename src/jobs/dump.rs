//! The dump step (`dbbackup-operator dump`), run in the database's own image
//! (an init container copies this binary there).
//!
//! It waits for any other dump on the staging volume, runs the dump tool
//! with an argv, compresses in process, writes a partial file of its own,
//! syncs it, and only once the tool exited 0 renames it into place (see
//! `staging` for the protocol). A SIGTERM before that point (deadline, pod
//! deleted) stops the tool and removes the partial file; after it, the dump
//! is finished and said. Every run appends one log line and writes the
//! one-line JSON result the operator reads from the termination log.

use super::compress::compress;
pub use super::compress::{Recipients, parse_recipients};
use super::staging::{Lock, Published, Staging, dump_id};
use super::tool::{self, Server};
use crate::api::Compression;
use crate::jobresult::{JobResult, Outcome, Step};
use crate::logline;
use chrono_tz::Tz;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tracing::{error, info, warn};

#[derive(clap::Args, Debug, Clone)]
pub struct DumpArgs {
    #[command(flatten)]
    pub db: super::DatabaseArgs,
    #[arg(long, value_parser = super::parse_enum::<Compression>, default_value = "none")]
    pub compression: Compression,
    /// The staging volume: dumps in dumps/, log files in logs/.
    #[arg(long)]
    pub staging_dir: PathBuf,
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    /// IANA time zone of the log lines (the image needs no tzdata).
    #[arg(long, default_value = "UTC")]
    pub time_zone: Tz,
    /// age recipients (X25519 public keys, one a line; `#` comments), from
    /// the recipients Secret: the dump is encrypted as it is written, so the
    /// staging volume never holds plaintext.
    #[arg(long, env = crate::names::AGE_RECIPIENTS_ENV, value_parser = parse_recipients, hide_env_values = true)]
    pub encrypt_to: Option<Recipients>,
    /// Dump these databases in turn, each to a staging of its own
    /// (`databases`), instead of --database.
    #[arg(long, allow_hyphen_values = true, conflicts_with_all = ["all_databases", "database"])]
    pub each: Vec<String>,
    /// Dump every database on the server but the system ones.
    #[arg(long, conflicts_with = "database")]
    pub all_databases: bool,
    /// With --all-databases: leave out names matching these patterns (`*`, `?`).
    #[arg(long, requires = "all_databases")]
    pub exclude: Vec<String>,
    /// postgres, several databases: the roles keep their password hashes.
    #[arg(long)]
    pub role_passwords: bool,
    /// This dump is of the roles, not of --database (set by `databases`).
    #[arg(skip)]
    pub roles: bool,
}

/// Name of the finished dump in the staging `dumps/` directory: `.age` after
/// the compression's suffix when encrypted.
pub fn dump_file_name(compression: Compression, encrypted: bool) -> String {
    let age = if encrypted { ".age" } else { "" };
    format!("datadump.sql{}{age}", compression.extension())
}

/// Where a run is, as the SIGTERM handler needs to know it.
#[derive(Debug)]
pub(super) enum Phase {
    Starting,
    Dumping {
        tool: Option<u32>,
        partial: PathBuf,
    },
    /// The dump is whole and going into place: a SIGTERM waits for it.
    Committing,
    /// A SIGTERM came while a dump went into place: nothing starts after it.
    StopAfterCommit,
    Stopped,
}

pub(super) const STOPPED: &str = "stopped by SIGTERM (deadline exceeded or pod deleted)";

/// Runs one dump; returns the process exit code.
pub async fn run(args: DumpArgs) -> i32 {
    // Our files stay readable and deletable by the upload pod's group.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o007);
    }
    if super::databases::several(&args) {
        return super::databases::run(args).await;
    }
    if args.db.database.is_empty() {
        let staging = Staging::new(&args.staging_dir);
        return finish(&args, &staging, Err("no database named".into()));
    }
    let staging = Staging::new(&args.staging_dir);
    let phase = Arc::new(Mutex::new(Phase::Starting));
    let outcome = until_stopped(phase, {
        let args = args.clone();
        move |phase| dump(&args, &Staging::new(&args.staging_dir), phase)
    })
    .await;
    finish(&args, &staging, outcome)
}

/// Runs `work` on a blocking thread until it ends or a SIGTERM comes: then
/// the running tool is killed and its partial file removed, unless the dump
/// is going into place, which is waited for.
pub(super) async fn until_stopped<T: Send + 'static>(
    phase: Arc<Mutex<Phase>>,
    work: impl FnOnce(&Mutex<Phase>) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => return Err(format!("cannot handle SIGTERM: {e}")),
    };
    let mut work = tokio::task::spawn_blocking({
        let phase = phase.clone();
        move || work(&phase)
    });
    loop {
        tokio::select! {
            done = &mut work => break done.unwrap_or_else(|e| Err(format!("the dump failed: {e}"))),
            _ = term.recv() => {
                {
                    let mut p = phase.lock().unwrap();
                    if matches!(*p, Phase::Committing | Phase::StopAfterCommit) {
                        info!("SIGTERM while the dump goes into place; finishing first");
                        *p = Phase::StopAfterCommit;
                        continue;
                    }
                    if let Phase::Dumping { tool, partial } = &*p {
                        if let Some(pid) = tool {
                            // SAFETY: kill only signals our own child.
                            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                        }
                        let _ = std::fs::remove_file(partial);
                    }
                    *p = Phase::Stopped;
                }
                // Its tool gone, the work ends at once: a run of several
                // still says what ended before. One waiting for the lock
                // does not end: it is given up.
                let ended = tokio::time::timeout(std::time::Duration::from_secs(5), &mut work).await;
                break match ended {
                    Ok(Ok(Ok(done))) => Ok(done),
                    _ => Err(STOPPED.to_string()),
                };
            }
        }
    }
}

/// Logs the outcome, writes the result, and returns the exit code.
fn finish(args: &DumpArgs, staging: &Staging, outcome: Result<Dumped, String>) -> i32 {
    let tz = args.time_zone;
    let (mut result, code) = match outcome {
        Ok(Dumped { size, published }) => {
            let line = staging.log(tz, logline::DUMP_COMPLETED);
            info!(size, "{line}");
            let mut r = JobResult::new(Step::Dump, Outcome::Succeeded, line.to_string());
            r.size = Some(size);
            r.dumped = Some(dump_id(published.finished));
            // The original pipeline's rule stands (a newer dump replaces one
            // not yet sent), but it is said: that run's dump is never uploaded.
            if let Some(replaced) = published.replaced {
                let at = chrono::DateTime::<chrono::Utc>::from(replaced).with_timezone(&tz);
                let message = format!("{} {}", logline::REPLACED, at.format("%Y-%m-%d %H:%M:%S"));
                let line = staging.log(tz, &message);
                warn!("{line}");
                r.more_log.push(line.to_string());
                r.replaced = Some(dump_id(replaced));
            }
            (r, 0)
        }
        Err(message) => {
            let line = staging.log(tz, &format!("database dump failed: {message}"));
            error!("{line}");
            (
                JobResult::new(Step::Dump, Outcome::Failed, line.to_string()),
                1,
            )
        }
    };
    if let Err(e) = result.write_to(&args.termination_log) {
        warn!(path = %args.termination_log.display(), error = %e, "cannot write the termination log");
    }
    code
}

/// A dump in place: its size, and what putting it there replaced.
pub(super) struct Dumped {
    pub size: u64,
    pub published: Published,
}

/// The dump itself, on a blocking thread.
pub(super) fn dump(
    args: &DumpArgs,
    staging: &Staging,
    phase: &Mutex<Phase>,
) -> Result<Dumped, String> {
    let dumps = staging.dumps();
    staging
        .create()
        .map_err(|e| format!("cannot create {}: {e}", dumps.display()))?;
    let _lock = staging
        .lock(Lock::Dump, || {
            info!("another dump is running on this volume; this one starts when it ends")
        })
        .map_err(|e| format!("cannot lock {}: {e}", dumps.display()))?;
    staging
        .remove_partials()
        .map_err(|e| format!("cannot clear {}: {e}", dumps.display()))?;
    let name = dump_file_name(args.compression, args.encrypt_to.is_some());
    let partial = staging.partial(&name);
    set(phase, |_| Phase::Dumping {
        tool: None,
        partial: partial.clone(),
    })?;
    let written = write_dump(args, &partial, phase).and_then(|settled| {
        staging
            .record_checksum(&partial, settled.size, settled.crc)
            .map_err(|e| format!("cannot record the dump's checksum: {e}"))?;
        Ok(settled.size)
    });
    let size = match written {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    set(phase, |_| Phase::Committing)?;
    let published = staging
        .publish(&partial, &name)
        .map_err(|e| format!("cannot put the dump in place: {e}"))?;
    Ok(Dumped { size, published })
}

/// Moves the run to its next phase, unless a SIGTERM stopped it.
pub(super) fn set(phase: &Mutex<Phase>, next: impl FnOnce(&Phase) -> Phase) -> Result<(), String> {
    let mut p = phase.lock().unwrap();
    if matches!(*p, Phase::Stopped | Phase::StopAfterCommit) {
        return Err(STOPPED.to_string());
    }
    *p = next(&p);
    Ok(())
}

/// Runs the dump tool into `partial`, compressed and synced.
fn write_dump(args: &DumpArgs, partial: &Path, phase: &Mutex<Phase>) -> Result<Settled, String> {
    let server = Server::from_env(args.db.engine, &args.db.host, args.db.port)?;
    let (program, argv) = match args.roles {
        true => server.roles_argv(args.role_passwords),
        false => server.dump_argv(&args.db.database),
    };
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    // Through our pipe even uncompressed: the checksum of what reaches the
    // file is what lets an upload that followed the file prove it sent it.
    let mut child = server
        .command(&program)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool::cannot_run(&program, &e))?;
    set_tool(phase, Some(child.id())).inspect_err(|_| {
        let _ = child.kill();
    })?;
    let stderr = tool::collect_stderr(&mut child);
    let written = match child.stdout.take() {
        Some(pipe) => compress(
            widened(pipe),
            file,
            args.compression,
            args.encrypt_to.as_ref(),
        ),
        None => Err(io::Error::other("the tool's output pipe is missing")),
    };
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for {program}: {e}"))?;
    // Reaped: its PID may be anyone's now, so SIGTERM must not signal it.
    set_tool(phase, None)?;
    let stderr = stderr.join().unwrap_or_default();
    // A write of ours that failed is the cause: the tool then only saw its
    // pipe close. The tool's own failure comes next.
    let failure = match &written {
        Err(e) => Some(format!("cannot write the dump: {e}")),
        Ok(_) if !status.success() => Some(tool::failed(&program, status, &stderr)),
        Ok(_) => None,
    };
    if let Some(mut message) = failure {
        // A full volume often shows only as a write error; say it while the
        // partial file still holds the space.
        if let Some((used, size)) = volume_full(partial) {
            message.push_str(&format!(
                "; {} ({}/{})",
                logline::STAGING_FULL,
                logline::human_size(used),
                logline::human_size(size)
            ));
        }
        return Err(message);
    }
    let (read, crc) = written.unwrap_or_default();
    if read == 0 {
        return Err("dump tool wrote nothing".into());
    }
    let size = std::fs::metadata(partial)
        .map(|m| m.len())
        .map_err(|e| format!("cannot read {}: {e}", partial.display()))?;
    Ok(Settled { size, crc })
}

/// A dump whole on disk: its size and the CRC64/NVME of its bytes.
struct Settled {
    size: u64,
    crc: u64,
}

/// Records the running tool's PID (for SIGTERM to pass on), or that it ended.
fn set_tool(phase: &Mutex<Phase>, tool: Option<u32>) -> Result<(), String> {
    set(phase, |p| match p {
        Phase::Dumping { partial, .. } => Phase::Dumping {
            tool,
            partial: partial.clone(),
        },
        _ => Phase::Starting,
    })
}

/// The tool's stdout pipe at 1 MiB (the default most for a user): fewer,
/// larger reads.
fn widened(pipe: std::process::ChildStdout) -> std::process::ChildStdout {
    // SAFETY: fcntl on a pipe descriptor we own; failure leaves it as it was.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&pipe),
            libc::F_SETPIPE_SZ,
            1 << 20,
        );
    }
    pipe
}

/// Where the file system holding `path` has no block left for us: its
/// bytes in use and its size.
fn volume_full(path: &Path) -> Option<(u64, u64)> {
    let v = super::staging::volume(path)?;
    (v.available == 0).then_some((v.used, v.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_compression() {
        assert_eq!(dump_file_name(Compression::None, false), "datadump.sql");
        assert_eq!(dump_file_name(Compression::Zstd, false), "datadump.sql.zst");
        assert_eq!(
            dump_file_name(Compression::Gzip, true),
            "datadump.sql.gz.age"
        );
    }
}
