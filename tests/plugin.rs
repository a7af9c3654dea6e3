//! `kubectl dbbackup`, run as kubectl runs it (the built binary, a
//! kubeconfig), against the real apiserver, MinIO, database and node.

mod support;

use std::path::Path;
use std::process::Output;
use support::Database;
use support::bed::*;
use support::k8s::*;
use support::minio::{get_object, put_object};

use dbbackup_operator::api::Engine;

/// Runs the plugin with `kubeconfig` in the bed's namespace, off the runtime
/// (the operator under test runs on it meanwhile).
async fn plugin(b: &Bed, kubeconfig: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-dbbackup"));
    cmd.env("KUBECONFIG", kubeconfig)
        .args(["-n", &b.ns])
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn plugin_ok(b: &Bed, args: &[&str]) -> String {
    let out = plugin(b, &b.cp().kubeconfig, args).await;
    assert!(
        out.status.success(),
        "kubectl dbbackup {args:?}: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every subcommand on one zstd backup: `backup --wait` follows it to its
/// key, `list` shows it with its size, `download` gives back exactly the SQL
/// the dump tool wrote (the object, decompressed by the zstd tool), `restore
/// --to-database --wait` loads it into a copy equal to the source, and
/// `status` shows the conditions and log lines.
#[tokio::test]
async fn every_subcommand_works_on_a_compressed_backup() {
    let (b, _op, _pods) = ready_bed(Engine::Postgres, "  compression: zstd\n").await;

    let out = plugin_ok(&b, &["backup", "orders", "--wait", "--timeout=300"]).await;
    let status = status_of(&b).await;
    let key = status.last_upload_key.clone().unwrap();
    assert!(key.ends_with(".sql.zst"), "{key}");
    assert!(out.contains(",database dump completed\n"), "{out}");
    assert!(out.contains(",file successfully uploaded\n"), "{out}");
    assert!(out.ends_with(&format!("uploaded {key}\n")), "{out}");

    // A newer object an upload could not prove, marked so: no backup.
    let (folder, _) = key.rsplit_once('/').unwrap();
    let unproven = format!("{folder}/datadump9.sql.zst");
    put_object(&b.minio, &unproven, b"not proven".to_vec()).await;
    put_object(&b.minio, &format!("{unproven}.unproven"), b"why".to_vec()).await;

    let out = plugin_ok(&b, &["list", "orders"]).await;
    let last = out
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!((last[0], last[3]), (unproven.as_str(), "unproven"), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    let size = status.last_upload_size.unwrap().to_string();
    assert_eq!((cells[1], cells[3]), (size.as_str(), "-"), "{out}");
    assert!(out.starts_with("KEY"), "{out}");

    let file = b.dir().join("orders.sql");
    let out = plugin_ok(
        &b,
        &["download", "orders", &key, "-o", file.to_str().unwrap()],
    )
    .await;
    assert!(out.contains("checksum verified"), "{out}");
    let object = b.dir().join("object.zst");
    std::fs::write(&object, get_object(&b.minio, &key).await).unwrap();
    let tool = std::process::Command::new("zstd")
        .args(["-d", "-c"])
        .arg(&object)
        .output()
        .unwrap();
    assert!(tool.status.success());
    let downloaded = std::fs::read(&file).unwrap();
    assert!(downloaded.len() > 1000);
    assert!(
        downloaded == tool.stdout,
        "the download differs from the dump"
    );
    // "latest" is the same dump, not the newer unproven object.
    let latest = b.dir().join("latest.sql");
    plugin_ok(
        &b,
        &[
            "download",
            "orders",
            "latest",
            "-o",
            latest.to_str().unwrap(),
        ],
    )
    .await;
    assert!(std::fs::read(&latest).unwrap() == downloaded);

    let out = plugin_ok(
        &b,
        &[
            "restore",
            "orders",
            "--to-database",
            "shop_copy",
            "--wait",
            "--timeout=300",
        ],
    )
    .await;
    assert!(out.contains(&format!("restored {key}")), "{out}");
    assert_eq!(b.db.fingerprint("shop_copy"), b.db.fingerprint("shop"));

    // The backed-up database itself is refused; a failed download leaves a
    // file already at -o as it was.
    let out = plugin(
        &b,
        &b.cp().kubeconfig,
        &["restore", "orders", "--to-database", "shop"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains(r#""shop" is the database this backup dumps"#),
        "{}",
        text(&out)
    );
    std::fs::write(&file, "keep me").unwrap();
    let out = plugin(
        &b,
        &b.cp().kubeconfig,
        &[
            "download",
            "orders",
            "1999-01-01/datadump9.sql",
            "-o",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("ObjectNotFound"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    let out = plugin_ok(&b, &["status", "orders"]).await;
    for expected in [
        "UploadSucceeded",
        "Uploaded",
        &format!("last upload: {key}"),
    ] {
        assert!(out.contains(expected), "{expected:?} in {out}");
    }
    assert!(out.contains(",file successfully uploaded"), "{out}");
}

/// The plugin reads Secrets with the user's rights: a user who may read
/// backups but not Secrets is told which Secret it could not read (and
/// nothing from it); granted that, the same user lists the bucket.
#[tokio::test]
async fn the_plugin_reads_secrets_with_the_users_own_rights() {
    let (b, _op, mut pods) = ready_bed(Engine::Mariadb, "").await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let key = status_of(&b).await.last_upload_key.unwrap();
    let ns = b.ns.as_str();
    for args in [
        vec!["create", "serviceaccount", "viewer"],
        vec![
            "create",
            "role",
            "backup-reader",
            "--verb=get,list",
            "--resource=databasebackups.dbbackup.io",
        ],
        vec![
            "create",
            "rolebinding",
            "viewer-backups",
            "--role=backup-reader",
            &format!("--serviceaccount={ns}:viewer"),
        ],
    ] {
        kubectl(b.cp(), &[&["-n", ns][..], &args].concat());
    }
    let viewer = token_kubeconfig(b.cp(), ns, "viewer");

    let out = plugin(&b, &viewer, &["list", "orders"]).await;
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&format!(
            r#"cannot read secret "s3-creds" in namespace "{ns}" with your kubeconfig"#
        )),
        "{said}"
    );
    assert!(said.contains("forbidden"), "{said}");
    assert!(!said.contains(&b.minio.secret_key));

    kubectl(
        b.cp(),
        &[
            "-n",
            ns,
            "create",
            "role",
            "secret-reader",
            "--verb=get",
            "--resource=secrets",
            "--resource-name=s3-creds",
        ],
    );
    kubectl(
        b.cp(),
        &[
            "-n",
            ns,
            "create",
            "rolebinding",
            "viewer-secret",
            "--role=secret-reader",
            &format!("--serviceaccount={ns}:viewer"),
        ],
    );
    let out = plugin(&b, &viewer, &["list", "orders"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&key));
}

/// `backup --wait` of a request queued behind a slow scheduled dump waits
/// for its own dump's upload: the scheduled dump's upload, which lands
/// first, is not its answer. (The request dumps another database, by a spec
/// change after the scheduled Job was made, so its object shows whose it is;
/// each dump waits for a table lock the test holds.)
#[tokio::test]
async fn backup_wait_behind_a_slow_scheduled_dump_prints_its_own_key() {
    use std::time::Duration;
    use support::process::wait_for;
    let (b, _op, _pods) = ready_bed(Engine::Mariadb, "").await;
    let Database::Maria(db) = &b.db else {
        unreachable!()
    };
    b.db.query(
        "shop",
        "CREATE DATABASE other; CREATE TABLE other.only_in_other (id INT PRIMARY KEY); \
         INSERT INTO other.only_in_other VALUES (1)",
    );
    let mut shop_lock = db.lock_table("shop", "orders", 300);
    let mut other_lock = db.lock_table("other", "only_in_other", 300);
    create_job_from(&b, "orders-dump", "scheduled");
    // The scheduled dump must hold the volume's dump lock before the request
    // starts, or the request's dump takes it first and waits on its own
    // table lock with the scheduled one queued behind it: its tool waiting
    // on the table shows it holds it.
    wait_for(
        "the scheduled dump to wait on the table lock",
        Duration::from_secs(120),
        || async {
            let waiting = b.db.query(
                "",
                "SELECT COUNT(*) FROM information_schema.processlist WHERE db = 'shop' AND state LIKE 'Waiting for table%'",
            );
            (waiting.trim() != "0").then_some(())
        },
    )
    .await;
    patch_backup(&b, r#"{"spec":{"database":{"name":"other"}}}"#);
    wait_for(
        "the dump CronJob to dump other",
        Duration::from_secs(30),
        || async {
            let cj = kubectl(
                b.cp(),
                &["get", "cronjob", "orders-dump", "-n", &b.ns, "-o", "json"],
            );
            cj.contains("--database=other").then_some(())
        },
    )
    .await;

    let mut waiter = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-dbbackup"))
        .env("KUBECONFIG", &b.cp().kubeconfig)
        .args(["-n", &b.ns, "backup", "orders", "--wait", "--timeout=300"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The scheduled dump goes through and is uploaded; the request's waits.
    let _ = shop_lock.kill();
    let _ = shop_lock.wait();
    let scheduled = wait_for(
        "the scheduled dump's upload",
        Duration::from_secs(120),
        || async { status_of(&b).await.last_upload_key },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "backup --wait ended with the scheduled dump's upload"
    );
    let _ = other_lock.kill();
    let _ = other_lock.wait();
    let out = tokio::task::spawn_blocking(move || waiter.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("uploaded "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();
    assert_ne!(key, scheduled);
    let object = get_object(&b.minio, &key).await;
    assert!(
        object.windows(13).any(|w| w == b"only_in_other"),
        "{key} is not the request's dump"
    );
}
