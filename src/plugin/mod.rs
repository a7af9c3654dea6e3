//! `kubectl dbbackup`: what users do with their backups from their own
//! machine. It talks to the cluster with the user's kubeconfig, so it reads a
//! bucket's Secret only where the user may (never with the operator's
//! rights), and to the store with the keys that Secret holds.

mod follow;
mod store;

use crate::api::{
    DatabaseBackup, DatabaseBackupStatus, DatabaseRestore, DatabaseRestoreSpec, LATEST,
    RestorePhase,
};
use crate::jobs::tool::Hidden;
use crate::jobs::{fetch, retention};
use crate::operator::backup::key_prefix;
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "kubectl-dbbackup",
    version,
    about = "Lists, runs, restores and downloads the backups of DatabaseBackup resources"
)]
pub struct Cli {
    /// Namespace of the backup (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The dumps of a backup in its bucket: key, size, date, and whether a
    /// restore drill verified them.
    List { name: String },
    /// Runs a backup now; with --wait, follows it to the uploaded key.
    Backup {
        name: String,
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Restores a dump of a backup into another database on the backup's
    /// server (a DatabaseRestore).
    Restore {
        name: String,
        /// The database to restore into; created when missing.
        #[arg(long)]
        to_database: String,
        /// The object key, or "latest".
        #[arg(long, default_value = LATEST)]
        key: String,
        /// Drop what the target database holds first.
        #[arg(long)]
        overwrite: bool,
        /// Of a backup of several databases: whose dumps to take.
        #[arg(long)]
        database: Option<String>,
        /// The newest dump taken at or before this RFC 3339 time.
        #[arg(long)]
        before: Option<String>,
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// A backup's conditions and recent log lines.
    Status { name: String },
    /// Downloads a dump, checked against the store's checksum, decrypted
    /// and decompressed: the SQL as the database tool wrote it.
    Download {
        name: String,
        /// The object key, or "latest".
        key: String,
        #[arg(short, long)]
        output: PathBuf,
        /// An age identity file for an encrypted dump (default: the backup's
        /// spec.encryption.identitySecret, read with your rights).
        #[arg(long)]
        identity: Option<PathBuf>,
    },
}

/// Runs the plugin; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    match run(cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("cannot load a kubeconfig")?;
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), &ns);
    let get = |name: &str| {
        let (backups, name) = (backups.clone(), name.to_string());
        async move {
            backups
                .get(&name)
                .await
                .with_context(|| format!("cannot get DatabaseBackup {name:?}"))
        }
    };
    match cli.command {
        Command::List { name } => list(&client, &get(&name).await?).await,
        Command::Status { name } => {
            status(&get(&name).await?);
            Ok(())
        }
        Command::Backup {
            name,
            wait,
            timeout,
        } => follow::backup(&client, &backups, &get(&name).await?, wait, timeout).await,
        Command::Restore {
            name,
            to_database,
            key,
            overwrite,
            database,
            before,
            wait,
            timeout,
        } => {
            let db = get(&name).await?;
            let restores: Api<DatabaseRestore> = Api::namespaced(client, &ns);
            let spec = RestoreRequest {
                to_database,
                key,
                overwrite,
                database,
                before,
            };
            restore(&restores, &db, spec, wait, timeout).await
        }
        Command::Download {
            name,
            key,
            output,
            identity,
        } => download(&client, &get(&name).await?, &key, &output, identity).await,
    }
}

async fn list(client: &Client, db: &DatabaseBackup) -> anyhow::Result<()> {
    let store = store::Store::of(client, db).await?;
    let prefix = key_prefix(db);
    let objects = crate::jobs::store::list_objects(&store.client, &store.bucket, &prefix)
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot list bucket {}", store.bucket))?;
    let status = db.status.clone().unwrap_or_default();
    let mut rows = vec![[
        "KEY".to_string(),
        "SIZE".into(),
        "DATE".into(),
        "VERIFIED".into(),
    ]];
    let row = |o: &retention::Listed, verified: &str| {
        [
            o.key.clone(),
            o.size.map_or("-".into(), |s| s.to_string()),
            o.last_modified
                .map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            verified.into(),
        ]
    };
    for (o, _) in retention::newest_first(&prefix, &objects) {
        rows.push(row(o, verified(&status, &o.key)));
    }
    // Objects the upload could not prove are no backups, but are listed
    // (last) so that a person sees them.
    let unproven = crate::jobs::keys::marked_unproven(objects.iter().map(|o| o.key.as_str()));
    for o in objects.iter().filter(|o| unproven.contains(o.key.as_str())) {
        rows.push(row(o, "unproven"));
    }
    print_table(&rows);
    Ok(())
}

/// "yes" for a dump a drill restored, "failed" for one it could not, "-"
/// for one never drilled (or drilled too long ago for the status to say).
fn verified(status: &DatabaseBackupStatus, key: &str) -> &'static str {
    let recorded = status.recent.iter().find(|e| e.key == key);
    match recorded.and_then(|e| e.verified) {
        Some(true) => "yes",
        Some(false) => "failed",
        None if status.last_verified_key.as_deref() == Some(key) => "yes",
        None => "-",
    }
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", cells.join("   ").trim_end());
    }
}

fn status(db: &DatabaseBackup) {
    let status = db.status.clone().unwrap_or_default();
    let mut rows = vec![[
        "CONDITION".to_string(),
        "STATUS".into(),
        "REASON".into(),
        "MESSAGE".into(),
    ]];
    for c in &status.conditions {
        rows.push([
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        ]);
    }
    print_table(&rows);
    if let Some(key) = &status.last_upload_key {
        println!("\nlast upload: {key}");
    }
    if let Some(key) = &status.last_verified_key {
        println!("last verified: {key}");
    }
    if !status.databases.is_empty() {
        let mut rows = vec![[
            "DATABASE".to_string(),
            "LAST UPLOAD".into(),
            "LAST FAILURE".into(),
        ]];
        for d in &status.databases {
            rows.push([
                d.name.clone(),
                d.last_upload_key.clone().unwrap_or_else(|| "-".into()),
                d.last_failure.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        println!();
        print_table(&rows);
    }
    println!("\nlog:");
    for line in &status.log {
        println!("{line}");
    }
}

struct RestoreRequest {
    to_database: String,
    key: String,
    overwrite: bool,
    database: Option<String>,
    before: Option<String>,
}

/// Creates a DatabaseRestore of `db`'s dump into another database of its
/// server, and with `wait` follows it to its end.
async fn restore(
    restores: &Api<DatabaseRestore>,
    db: &DatabaseBackup,
    request: RestoreRequest,
    wait: bool,
    timeout: u64,
) -> anyhow::Result<()> {
    let source = request.database.as_ref().or(db.spec.database.name.as_ref());
    if source == Some(&request.to_database) {
        bail!(
            "{:?} is the database this backup dumps; restore into another database \
             (to replace it, create a DatabaseRestore with overwrite: true yourself)",
            request.to_database
        );
    }
    if db.spec.database.is_several() && request.database.is_none() && request.key == LATEST {
        bail!("this backup dumps several databases: name one with --database");
    }
    let mut target = db.spec.database.server();
    target.name = request.to_database;
    let identity = db
        .spec
        .encryption
        .as_ref()
        .and_then(|e| e.identity_secret.clone());
    let spec: DatabaseRestoreSpec = serde_json::from_value(serde_json::json!({
        "backup": db.name_any(),
        "key": request.key,
        "target": target,
        "overwrite": request.overwrite,
        "identitySecret": identity,
        "database": request.database,
        "before": request.before,
    }))?;
    let name = format!(
        "{}-{}",
        db.name_any(),
        chrono::Utc::now().format("%Y%m%d-%H%M%S")
    );
    let restore = DatabaseRestore::new(&name, spec);
    restores
        .create(&PostParams::default(), &restore)
        .await
        .context("cannot create the DatabaseRestore")?;
    println!("databaserestore/{name} created");
    if !wait {
        return Ok(());
    }
    let mut seen = HashSet::new();
    let waiting = Waiting::new(timeout);
    loop {
        let status = restores.get(&name).await?.status.unwrap_or_default();
        for line in status.log.iter().filter(|l| seen.insert(l.to_string())) {
            println!("{line}");
        }
        match status.phase {
            Some(RestorePhase::Succeeded) => {
                println!("restored {}", status.key.unwrap_or_default());
                return Ok(());
            }
            Some(phase) if phase.finished() => {
                let why = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Restored")
                    .map(|c| format!("{}: {}", c.reason, c.message))
                    .unwrap_or_default();
                bail!("the restore failed: {why}")
            }
            _ => waiting.tick().await?,
        }
    }
}

/// A --wait of at most `timeout` seconds, polling each second.
pub(crate) struct Waiting {
    deadline: Instant,
    timeout: u64,
}

impl Waiting {
    pub(crate) fn new(timeout: u64) -> Waiting {
        Waiting {
            deadline: Instant::now() + Duration::from_secs(timeout),
            timeout,
        }
    }

    pub(crate) async fn tick(&self) -> anyhow::Result<()> {
        if Instant::now() > self.deadline {
            bail!("gave up waiting after {}s", self.timeout);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }
}

async fn download(
    client: &Client,
    db: &DatabaseBackup,
    key: &str,
    output: &std::path::Path,
    identity: Option<PathBuf>,
) -> anyhow::Result<()> {
    let store = store::Store::of(client, db).await?;
    let key = match key {
        LATEST => fetch::latest(&store.client, &store.bucket, &key_prefix(db))
            .await
            .map_err(|f| anyhow::anyhow!(f.message))?,
        key => key.to_string(),
    };
    let identity = match (key.ends_with(".age"), identity) {
        (false, _) => None,
        (true, Some(path)) => Some(Hidden(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read identity file {}", path.display()))?,
        )),
        (true, None) => Some(store::identity(client, db).await?),
    };
    // Beside the output, and renamed over it only once every byte checked
    // out: a failed download leaves a file already there untouched.
    let partial = output.with_extension("dbbackup-partial");
    let got = fetch::download(
        &store.client,
        &store.sse,
        &store.bucket,
        &key,
        &partial,
        identity.as_ref(),
    )
    .await;
    let proven = got.map_err(|f| {
        let _ = std::fs::remove_file(&partial);
        anyhow::anyhow!("{} ({})", f.message, f.reason)
    })?;
    std::fs::rename(&partial, output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!("{} to {}", proven.downloaded(&key), output.display());
    Ok(())
}
