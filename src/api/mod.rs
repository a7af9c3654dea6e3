//! The `DatabaseBackup` resource (group `dbbackup.io`, version `v1alpha1`).
//!
//! Every rule the apiserver can check is in the schema (types, ranges, enums)
//! or a CEL rule, so that bad input is refused at `kubectl apply` with the
//! field named. What needs other objects (Secrets, storage classes) is checked
//! at reconcile time and reported as a condition.

mod backup;
mod common;
mod databases;
mod grant;
mod notify;
mod profile;
mod restore;
mod verify;

pub use backup::*;
pub use common::*;
pub use databases::*;
pub use grant::*;
pub use notify::*;
pub use profile::*;
pub use restore::*;
pub use verify::*;
