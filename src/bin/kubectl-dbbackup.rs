//! `kubectl dbbackup …`: kubectl runs this binary when it is on the PATH.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = dbbackup_operator::plugin::Cli::parse();
    std::process::exit(dbbackup_operator::plugin::main(cli).await);
}
