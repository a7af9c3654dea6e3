//! Test bed: real servers started by the tests themselves (see README, "Testing").
//! Each server is a value; dropping it kills the process and removes its directory.
#![allow(dead_code, unused_imports)]

pub mod bed;
pub mod cluster;
pub mod controlplane;
pub mod databases;
pub mod faultproxy;
pub mod host;
pub mod incluster;
pub mod k8s;
pub mod mariadb;
pub mod measure;
pub mod minio;
pub mod node;
pub mod operator;
pub mod pki;
pub mod pods;
pub mod postgres;
pub mod process;
pub mod receiver;
pub mod steps;
pub mod stores;
pub mod tcpstall;

pub use cluster::Cluster;
pub use controlplane::ControlPlane;
pub use databases::Database;
pub use mariadb::MariaDb;
pub use minio::Minio;
pub use postgres::Postgres;
pub use process::{bin, run_ok};

/// True while a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
