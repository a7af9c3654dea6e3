use clap::{Parser, Subcommand, ValueEnum};
use dbbackup_operator::operator::leader::LeaseLock;
use dbbackup_operator::operator::metrics::Metrics;
use dbbackup_operator::operator::server;
use dbbackup_operator::operator::{self, Context, Settings};
use std::sync::Arc;
use std::time::Duration;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "dbbackup-operator".into())
}

#[derive(Parser)]
#[command(
    version,
    about = "Scheduled, verified database dumps in S3-compatible storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum CrdName {
    Databasebackups,
    Databaserestores,
    Databaserestoregrants,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Image that runs the `upload` subcommand in the upload CronJobs (this operator's image).
    #[arg(long, env = "DBBACKUP_UPLOADER_IMAGE", default_value = concat!("ghcr.io/dbbackup-operator/dbbackup-operator:", env!("CARGO_PKG_VERSION")))]
    uploader_image: String,
    /// Watch this namespace only (default: all namespaces).
    #[arg(long, env = "DBBACKUP_WATCH_NAMESPACE")]
    namespace: Option<String>,
    #[arg(long, value_enum, default_value = "text", env = "DBBACKUP_LOG_FORMAT")]
    log_format: LogFormat,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Reconcile only while holding a Lease, so that one of several replicas works.
    #[arg(long)]
    leader_election: bool,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Name of the Lease.
    #[arg(long, default_value = "dbbackup-operator")]
    lease_name: String,
    /// Internal networks (CIDRs, comma-separated) notifications may go to;
    /// loopback, link-local and private addresses are refused otherwise.
    #[arg(long, value_delimiter = ',', env = "DBBACKUP_NOTIFY_ALLOWED_NETWORKS")]
    notify_allowed_networks: Vec<ipnet::IpNet>,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Upload the staged dump, if any (run by the upload CronJob).
    Upload(dbbackup_operator::jobs::upload::UploadArgs),
    /// Download, verify and decompress a dump for a restore (run by the restore Job).
    Fetch(dbbackup_operator::jobs::fetch::FetchArgs),
    /// Dump the database onto the staging volume (run in the database image by the dump CronJob).
    Dump(dbbackup_operator::jobs::dump::DumpArgs),
    /// Download a dump and load it into the target database as it arrives (run in the database image by the restore Job).
    Load(dbbackup_operator::jobs::load::LoadArgs),
    /// Pick a dump and sign URLs of it for a restore in another namespace (run by its locate Job).
    Locate(dbbackup_operator::jobs::locate::LocateArgs),
    /// Stream a dump into a throwaway server and run the checks (run in the database image by a verify Job).
    Verify(dbbackup_operator::jobs::verify::VerifyArgs),
    /// Copy this binary to a path, for a Job's database-image container to run.
    CopyBinary {
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Print a CRD as YAML.
    Crd {
        #[arg(value_enum, default_value = "databasebackups")]
        name: CrdName,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd {
            name: CrdName::Databasebackups,
        } => print!("{}", dbbackup_operator::crd_yaml()),
        Command::Crd {
            name: CrdName::Databaserestores,
        } => print!("{}", dbbackup_operator::restore_crd_yaml()),
        Command::Crd {
            name: CrdName::Databaserestoregrants,
        } => print!("{}", dbbackup_operator::grant_crd_yaml()),
        Command::Fetch(args) => {
            init_tracing(LogFormat::Text);
            let code = dbbackup_operator::jobs::fetch::run(args).await;
            std::process::exit(code);
        }
        Command::Dump(args) => {
            init_tracing(LogFormat::Text);
            let code = dbbackup_operator::jobs::dump::run(args).await;
            std::process::exit(code);
        }
        Command::Verify(args) => {
            init_tracing(LogFormat::Text);
            std::process::exit(dbbackup_operator::jobs::verify::run(args).await);
        }
        Command::Locate(args) => {
            init_tracing(LogFormat::Text);
            std::process::exit(dbbackup_operator::jobs::locate::run(args).await);
        }
        Command::Load(args) => {
            init_tracing(LogFormat::Text);
            std::process::exit(dbbackup_operator::jobs::load::run(args).await);
        }
        Command::CopyBinary { to } => {
            dbbackup_operator::jobs::copy_binary(&to)
                .map_err(|e| anyhow::anyhow!("cannot copy this binary to {}: {e}", to.display()))?;
            if let Some(dir) = to.parent() {
                dbbackup_operator::jobs::copy_image_roots(dir).map_err(|e| {
                    anyhow::anyhow!("cannot copy the CA store to {}: {e}", dir.display())
                })?;
            }
        }
        Command::Upload(args) => {
            init_tracing(LogFormat::Text);
            let code = dbbackup_operator::jobs::upload::run(args).await;
            std::process::exit(code);
        }
        Command::Run(args) => run(args).await?,
    }
    Ok(())
}

/// The operator: metrics and health endpoints, the API client, and the
/// controllers, behind a Lease when several replicas run.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(server::Health::default());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tokio::spawn(server::serve(listener, metrics.clone(), health.clone()));

    let client = dbbackup_operator::operator::metrics::counting_client(
        kube::Client::try_default().await?,
        metrics.clone(),
    );
    let version = client.apiserver_version().await?;
    tracing::info!(apiserver = %version.git_version, "connected");
    health.set_ready();
    let settings = Settings {
        uploader_image: args.uploader_image,
        notify_allowed: operator::egress::Allowed::new(args.notify_allowed_networks),
        limit_ranged: Default::default(),
    };
    let ctx = Arc::new(Context::new(client.clone(), settings, metrics));
    if !args.leader_election {
        operator::run(ctx, args.namespace).await;
        return Ok(());
    }
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let lock = LeaseLock::new(
        client,
        &args.lease_namespace,
        &args.lease_name,
        &identity,
        Duration::from_secs(args.lease_duration_seconds.max(5)),
    );
    let acquired = lock.acquire().await;
    tokio::select! {
        _ = operator::run(ctx, args.namespace) => {}
        _ = lock.hold(acquired) => {
            // Another replica may already be reconciling: stop at once.
            tracing::error!("lost leadership; exiting so that the pod restarts as a follower");
            std::process::exit(1);
        }
    }
    Ok(())
}
