//! Code that runs in the Job pods, never in the operator: the dump and load
//! steps (in the database's image, through `tool`), the upload and fetch
//! steps (in our image, through `store`, `put` and `proof`), the object keys
//! and retention, and the hand-off between pods on the staging volume
//! (`staging`). Nothing here talks to the Kubernetes API.

pub mod dump;
pub mod fetch;
pub mod keys;
pub mod load;
pub mod proof;
pub mod put;
pub mod retention;
pub mod staging;
pub mod store;
pub mod throwaway;
pub mod tool;
pub mod upload;
pub mod verify;
pub mod webidentity;

use crate::api::Engine;
use std::path::Path;

/// Where a step's database is: the same four flags for the dump and the load.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    #[arg(long, value_parser = parse_enum::<Engine>)]
    pub engine: Engine,
    #[arg(long)]
    pub host: String,
    #[arg(long)]
    pub port: u16,
    /// The database, taken as a name whatever it contains.
    #[arg(long, allow_hyphen_values = true)]
    pub database: String,
}

/// Parses a spec enum (engine, compression) from its lowercase name.
pub fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

/// Copies this binary to `to`, executable by every user: an init container
/// of our image runs this so the database image's container can run the
/// dump and load steps (the pattern CloudNativePG uses for its instance
/// manager).
pub fn copy_binary(to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let partial = to.with_extension("partial");
    std::fs::copy("/proc/self/exe", &partial)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, to)
}
