//! Compression levels: the zstd and gzip levels the dump step could use, on
//! generated SQL shaped like a real dump (INSERTs of ids, names, e-mail
//! addresses, prices, timestamps and hashes), with the crates and settings
//! the dump step uses (zstd with one worker thread, flate2). The default is
//! the level with the best ratio that still compresses faster than the dump
//! tool writes, so that compression never slows a dump down.

use super::{Goals, median};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

/// About `size` bytes of `mariadb-dump`-style INSERTs of made-up customer rows.
fn dump_like_sql(size: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(size + 4096);
    let mut id = 0u64;
    while out.len() < size {
        out.extend_from_slice(b"INSERT INTO `customers` VALUES ");
        for i in 0..500 {
            id += 1;
            let r = next();
            let (first, last) = (WORDS[(r & 15) as usize], WORDS[((r >> 4) & 15) as usize]);
            if i > 0 {
                out.push(b',');
            }
            write!(
                out,
                "({id},'{first} {last}','{first}.{last}{}@example.com',{}.{:02},'2026-{:02}-{:02} {:02}:{:02}:{:02}','{:016x}{:016x}')",
                r % 1000,
                (r >> 10) % 100_000,
                (r >> 27) % 100,
                1 + (r >> 34) % 12,
                1 + (r >> 38) % 28,
                (r >> 43) % 24,
                (r >> 48) % 60,
                (r >> 54) % 60,
                next(),
                next()
            )
            .unwrap();
        }
        out.extend_from_slice(b";\n");
    }
    out
}

/// Seconds to compress the SQL, and the compressed size.
type Compressor = fn(&[u8]) -> (f64, usize);

/// Seconds to compress `sql` with `level`, and the compressed size.
fn zstd_run(sql: &[u8], level: i32) -> (f64, usize) {
    let start = Instant::now();
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
    z.multithread(1).unwrap();
    for chunk in sql.chunks(1 << 20) {
        z.write_all(chunk).unwrap();
    }
    let out = z.finish().unwrap();
    (start.elapsed().as_secs_f64(), out.len())
}

fn gzip_run(sql: &[u8], level: u32) -> (f64, usize) {
    let start = Instant::now();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    for chunk in sql.chunks(1 << 20) {
        gz.write_all(chunk).unwrap();
    }
    let out = gz.finish().unwrap();
    (start.elapsed().as_secs_f64(), out.len())
}

pub fn bench_levels(report: &mut String, goals: &mut Goals) {
    let reps = super::env_list("BENCH_REPS", "5")[0] as usize;
    let sql = dump_like_sql(256 << 20);
    let mib = sql.len() as f64 / (1 << 20) as f64;
    let runs: [(&str, Compressor); 8] = [
        ("zstd 1", |sql| zstd_run(sql, 1)),
        ("zstd 3 (default)", |sql| zstd_run(sql, 3)),
        ("zstd 6", |sql| zstd_run(sql, 6)),
        ("zstd 9", |sql| zstd_run(sql, 9)),
        ("gzip 1 (default)", |sql| gzip_run(sql, 1)),
        ("gzip 2", |sql| gzip_run(sql, 2)),
        ("gzip 3", |sql| gzip_run(sql, 3)),
        ("gzip 6 (flate2's default)", |sql| gzip_run(sql, 6)),
    ];
    let mut rows = vec![];
    for (name, run) in &runs {
        let mut secs = vec![];
        let mut size = 0;
        for _ in 0..reps {
            let (s, n) = run(&sql);
            secs.push(s);
            size = n;
        }
        let speed = mib / median(&secs);
        println!(
            "levels {name}: {speed:.0} MiB/s, {:.1} % of the SQL",
            100.0 * size as f64 / sql.len() as f64
        );
        rows.push((name.to_string(), speed, size));
    }
    // The dump tool's own speed, from the dump section's bare run on this
    // machine (2.77 s for 297 MiB): compression must outrun it.
    const TOOL_MIBPS: f64 = 107.0;
    for (name, speed, _) in rows.iter().filter(|r| r.0.contains("(default)")) {
        goals.check(
            &format!("{name} compresses faster than the dump tool writes ({TOOL_MIBPS:.0} MiB/s)"),
            format!("{speed:.0} MiB/s"),
            *speed > TOOL_MIBPS,
        );
    }
    writeln!(
        report,
        "## Compression levels\n\n\
         {mib:.0} MiB of generated `mariadb-dump`-style INSERTs (ids, names, e-mail addresses, prices, timestamps, \
         32-digit hashes) compressed in memory with the dump step's crates and settings (zstd with one worker thread, \
         flate2), {reps} runs each, medians, one core. A level is worth its ratio only while it compresses faster than \
         the dump tool writes (about {TOOL_MIBPS:.0} MiB/s for `mariadb-dump` here, the dump section's bare run).\n\n\
         | level | speed | size (share of the SQL) |\n| --- | --- | --- |"
    )
    .unwrap();
    for (name, speed, size) in rows {
        writeln!(
            report,
            "| {name} | {speed:.0} MiB/s | {:.1} % |",
            100.0 * size as f64 / sql.len() as f64
        )
        .unwrap();
    }
    writeln!(report).unwrap();
}
