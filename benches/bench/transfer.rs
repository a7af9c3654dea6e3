//! Up and down against MinIO's own client: our `upload` and `fetch` steps
//! against `mc cp` of the same file and object, interleaved, MinIO's data on
//! tmpfs so that its disk is out of the measurement.

use super::support::minio::*;
use super::support::steps::*;
use super::{Goals, Row, env_list, median, process_cpu_secs, release_binary, timed};
use std::fmt::Write as _;
use std::path::Path;

pub async fn bench_transfer(report: &mut String, goals: &mut Goals) {
    let sizes = env_list("BENCH_TRANSFER_SIZES", "1024,4096");
    let reps = env_list("BENCH_REPS", "5")[0] as usize;
    let largest = sizes.iter().max().copied().unwrap_or(0) << 20;
    super::assert_free_space(Path::new("/dev/shm"), 3 * largest);
    let minio = Minio::start_in(Path::new("/dev/shm"), "127.0.0.1");
    create_bucket(&minio).await;
    let mut rows = vec![];
    for size in sizes {
        let staging = Staging::new();
        let source = staging.path().join(format!("source-{size}.sql"));
        write_big_file(&source, size << 20);
        // Downloads land on tmpfs too: `fetch` syncs its file, `mc` does not,
        // and a sync to this machine's disk would time the disk.
        let landing = tempfile::tempdir_in("/dev/shm").unwrap();
        let got = landing.path().join("got.sql");
        let key = |tool: &str, rep: usize| format!("{tool}/{size}-{rep}.sql");
        let tools = ["upload (ours)", "mc cp up", "fetch (ours)", "mc cp down"];
        let mut runs: Vec<Vec<super::Run>> = (0..tools.len()).map(|_| vec![]).collect();
        let mut store_cpu = vec![vec![]; tools.len()];
        for rep in 0..reps {
            for (i, tool) in tools.iter().enumerate() {
                let cmd = match i {
                    0 => {
                        std::fs::hard_link(&source, staging.staged_dump()).unwrap();
                        let (cmd, _) = upload_command(&minio, &staging, &UploadOpts::default());
                        let mut ours = store_command_of(&release_binary(), &minio, "upload");
                        ours.args(cmd.get_args().skip(1));
                        ours
                    }
                    1 => minio.mc_command(&[
                        "cp",
                        &source.display().to_string(),
                        &format!("test/{BUCKET}/{}", key("mc", rep)),
                    ]),
                    // Both download the object our upload wrote in this round.
                    2 => {
                        let mut ours = store_command_of(&release_binary(), &minio, "fetch");
                        ours.arg(format!("--key={}", uploaded_key(&minio).await))
                            .arg(format!("--out={}", got.display()))
                            .arg(format!(
                                "--termination-log={}",
                                staging.path().join("fetch.log").display()
                            ));
                        ours
                    }
                    _ => minio.mc_command(&[
                        "cp",
                        &format!("test/{BUCKET}/{}", uploaded_key(&minio).await),
                        &got.display().to_string(),
                    ]),
                };
                warm_memory(size << 20);
                let before = process_cpu_secs(minio.pid());
                let run = timed(&cmd);
                let minio_cpu = process_cpu_secs(minio.pid()) - before;
                println!(
                    "transfer {size} MiB {tool} run {}: {:.2} s, {:.1} MiB RSS, {:.2} s CPU, MinIO {minio_cpu:.2} s CPU",
                    rep + 1,
                    run.secs,
                    run.rss_mib,
                    run.cpu_secs
                );
                if i == 2 {
                    let log = std::fs::read_to_string(staging.path().join("fetch.log")).unwrap();
                    println!("  fetch: {log}");
                }
                if i >= 2 {
                    assert_eq!(
                        std::fs::metadata(&got).unwrap().len(),
                        size << 20,
                        "{tool} wrote a file of the wrong size"
                    );
                    std::fs::remove_file(&got).unwrap();
                }
                runs[i].push(run);
                store_cpu[i].push(minio_cpu);
            }
            super::empty_bucket(&minio).await;
            minio.purge_trash();
        }
        let med = |i: usize, f: fn(&super::Run) -> f64| {
            median(&runs[i].iter().map(f).collect::<Vec<_>>())
        };
        let peak = |i: usize| runs[i].iter().map(|r| r.rss_mib).fold(0.0, f64::max);
        for (ours, theirs, way) in [(0, 1, "upload"), (2, 3, "fetch")] {
            let ratio = med(theirs, |r| r.secs) / med(ours, |r| r.secs);
            goals.check(
                &format!("{way} {size} MiB: ≥ 1.15× mc cp"),
                format!("{ratio:.2}×"),
                ratio >= 1.15,
            );
            goals.check(
                &format!("{way} peak RSS at {size} MiB: ≤ 48 MiB"),
                format!("{:.1} MiB", peak(ours)),
                peak(ours) <= 48.0,
            );
            rows.push(Row {
                label: format!("{size} MiB {way}"),
                values: vec![
                    format!(
                        "{:.2} s ({:.0} MiB/s)",
                        med(ours, |r| r.secs),
                        size as f64 / med(ours, |r| r.secs)
                    ),
                    format!(
                        "{:.2} s ({:.0} MiB/s)",
                        med(theirs, |r| r.secs),
                        size as f64 / med(theirs, |r| r.secs)
                    ),
                    format!("{ratio:.2}×"),
                    format!("{:.1} / {:.1}", peak(ours), peak(theirs)),
                    format!(
                        "{:.2} / {:.2}",
                        med(ours, |r| r.cpu_secs),
                        med(theirs, |r| r.cpu_secs)
                    ),
                    format!(
                        "{:.2} / {:.2}",
                        median(&store_cpu[ours]),
                        median(&store_cpu[theirs])
                    ),
                ],
            });
        }
    }
    writeln!(
        report,
        "## Upload and fetch against MinIO's own client\n\n\
         MinIO on loopback with its data on tmpfs (`/dev/shm`); the uploaded file on the machine's disk (the temp directory), the downloaded one on tmpfs (ours syncs it, `mc` does not; on tmpfs that costs neither anything). \
         {reps} rounds of: our `upload` of the staged file, `mc cp` of the same file up, our `fetch` of the object our upload \
         wrote, `mc cp` of that object down; medians; peak RSS is the largest over the runs; CPU is user + system time \
         (`/usr/bin/time`); MinIO CPU from `/proc/<pid>/stat`. Ours with its defaults: upload in 8 MiB parts, 3 in flight, \
         each part's CRC64/NVME sent and the object's full CRC64/NVME confirmed by HEAD before the file is deleted; fetch in \
         ranged GETs of 8 MiB (the one being read handed on as it arrives, one more ahead), the object's CRC64/NVME recomputed, the file synced before it is named. \
         `mc` with its defaults (it neither syncs the file nor checks a checksum on the way down). \
         Before each run, as much memory as the object is written and freed on tmpfs: this machine's freed memory goes \
         back to its host (virtio free page reporting), and the first tool to write fresh memory would pay the host's faults.\n\n\
         | size | ours | mc cp | mc ÷ ours (speed-up) | peak RSS MiB (ours / mc) | CPU s (ours / mc) | MinIO CPU s (ours / mc) |\n\
         | --- | --- | --- | --- | --- | --- | --- |"
    )
    .unwrap();
    for r in rows {
        writeln!(report, "| {} | {} |", r.label, r.values.join(" | ")).unwrap();
    }
    writeln!(report).unwrap();
}

/// This machine is a VM whose freed memory goes back to its host (virtio
/// free page reporting): whoever first writes `bytes` of fresh memory pays
/// the host's faults, up to 3× the system time of a 4 GiB download, and
/// in a fixed order that was always the same tool. Writing and freeing that
/// much on tmpfs just before each run gives every run the same start.
fn warm_memory(bytes: u64) {
    let path = Path::new("/dev/shm/dbbackup-bench-warm");
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..bytes.div_ceil(1 << 20) {
        std::io::Write::write_all(&mut file, &block).unwrap();
    }
    drop(file);
    std::fs::remove_file(path).unwrap();
}

/// The one object under `upload` (ours), which both downloads read.
async fn uploaded_key(minio: &Minio) -> String {
    bucket_keys(minio)
        .await
        .into_iter()
        .find(|k| !k.starts_with("mc/"))
        .expect("our upload wrote an object")
}
