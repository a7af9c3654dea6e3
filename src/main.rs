use clap::{Parser, Subcommand, ValueEnum};
use dbbackup_operator::controller::{self, Context, resources::Settings};
use dbbackup_operator::metrics::Metrics;
use std::sync::Arc;

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
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run {
        /// Image that runs the `upload` subcommand in the upload CronJobs (this operator's image).
        #[arg(long, env = "DBBACKUP_UPLOADER_IMAGE", default_value = concat!("ghcr.io/dbbackup-operator/dbbackup-operator:", env!("CARGO_PKG_VERSION")))]
        uploader_image: String,
        /// Watch this namespace only (default: all namespaces).
        #[arg(long, env = "DBBACKUP_WATCH_NAMESPACE")]
        namespace: Option<String>,
        #[arg(long, value_enum, default_value = "text", env = "DBBACKUP_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Upload the staged dump, if any (run by the upload CronJob).
    Upload(dbbackup_operator::upload::UploadArgs),
    /// Print the DatabaseBackup CRD as YAML.
    Crd,
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
        Command::Crd => print!("{}", dbbackup_operator::crd_yaml()),
        Command::Upload(args) => {
            init_tracing(LogFormat::Text);
            let code = dbbackup_operator::upload::run(args).await;
            std::process::exit(code);
        }
        Command::Run {
            uploader_image,
            namespace,
            log_format,
        } => {
            init_tracing(log_format);
            let client = kube::Client::try_default().await?;
            let ctx = Arc::new(Context::new(
                client,
                Settings { uploader_image },
                Arc::new(Metrics::default()),
            ));
            controller::run(ctx, namespace).await;
        }
    }
    Ok(())
}
