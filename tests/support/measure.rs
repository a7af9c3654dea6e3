//! Wall time, peak memory and CPU time of one run, as GNU time reports them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// What GNU time measured of one run.
pub struct Measured {
    pub output: std::process::Output,
    pub wall: Duration,
    pub max_rss_kib: u64,
    /// User plus system CPU seconds.
    pub cpu_secs: f64,
}

/// Runs `program` with `cmd`'s args and environment under GNU time.
pub fn run_measured(program: &Path, cmd: &Command) -> Measured {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("maxrss_kib=%M\ncpu_secs=%U %S")
        .arg(program)
        .args(cmd.get_args());
    timed.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    let start = Instant::now();
    let out = timed
        .output()
        .expect("run /usr/bin/time (Debian package time)");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let kib = field("maxrss_kib=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("time printed no maxrss: {out:?}"));
    let cpu_secs = field("cpu_secs=")
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or_else(|| panic!("time printed no CPU time: {out:?}"));
    Measured {
        output: out,
        wall: took,
        max_rss_kib: kib,
        cpu_secs,
    }
}
