//! The S3 servers the steps are tested against besides MinIO, real ones
//! built by `tests/testenv/install.sh`: SeaweedFS (`weed server -s3`) and
//! versitygw (posix backend). `Minio::start_server` starts any of them with
//! the same fields (endpoint, keys) as a MinIO; MinIO's own extras (`mc`,
//! users, the disk scan) stay MinIO's.

use super::process::{ServerProcess, bin, free_port};
use std::path::Path;
use std::process::Command;

/// Which S3 server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Server {
    #[default]
    Minio,
    Seaweedfs,
    Versitygw,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Minio => "minio",
            Server::Seaweedfs => "seaweedfs",
            Server::Versitygw => "versitygw",
        }
    }
}

/// One test per server of an async test body `fn(Server)`, each named
/// after its server: `per_store!(round_trip, round_trip_on)` gives
/// `round_trip::minio`, `round_trip::seaweedfs`, `round_trip::versitygw`.
#[macro_export]
macro_rules! per_store {
    ($(#[$meta:meta])* $name:ident, $body:ident) => {
        $(#[$meta])*
        mod $name {
            use super::support::stores::Server;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn minio() {
                super::$body(Server::Minio).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn seaweedfs() {
                super::$body(Server::Seaweedfs).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn versitygw() {
                super::$body(Server::Versitygw).await
            }
        }
    };
}

/// Starts `server` (not MinIO) on `host:port` with these root keys, its
/// data and log under `dir`.
pub(super) fn spawn(
    server: Server,
    dir: &Path,
    host: &str,
    port: u16,
    access_key: &str,
    secret_key: &str,
    env: &[(String, String)],
) -> ServerProcess {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    match server {
        Server::Minio => unreachable!("MinIO starts in minio.rs"),
        Server::Versitygw => {
            std::fs::create_dir_all(dir.join("versions")).unwrap();
            let mut cmd = Command::new(bin("versitygw"));
            cmd.arg("--port")
                .arg(format!("{host}:{port}"))
                .env("ROOT_ACCESS_KEY", access_key)
                .env("ROOT_SECRET_KEY", secret_key)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .arg("posix")
                // Versions, which Object Lock keeps (S3 locks a version).
                .arg("--versioning-dir")
                .arg(dir.join("versions"))
                .arg(&data);
            ServerProcess::spawn("versitygw", cmd, dir, libc::SIGTERM)
        }
        Server::Seaweedfs => {
            // One identity with every right: the root keys, as MinIO's.
            let config = serde_json::json!({
                "identities": [{
                    "name": "root",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }]
            });
            let config_file = dir.join("s3.json");
            std::fs::write(&config_file, config.to_string()).unwrap();
            let mut cmd = Command::new(bin("weed"));
            cmd.arg("server")
                .arg(format!("-dir={}", data.display()))
                .arg(format!("-ip={host}"))
                .arg(format!("-ip.bind={host}"))
                .arg(format!("-master.port={}", free_port()))
                .arg(format!("-master.port.grpc={}", free_port()))
                .arg(format!("-volume.port={}", free_port()))
                .arg(format!("-volume.port.grpc={}", free_port()))
                .arg(format!("-filer.port={}", free_port()))
                .arg(format!("-filer.port.grpc={}", free_port()))
                .arg("-s3")
                .arg(format!("-s3.port={port}"))
                .arg(format!("-s3.port.grpc={}", free_port()))
                .arg(format!("-s3.config={}", config_file.display()))
                // Small volumes: the tests write megabytes, not the 30 GB default.
                .arg("-master.volumeSizeLimitMB=256")
                .arg("-volume.max=16")
                .arg("-master.telemetry=false")
                .env("HOME", dir)
                .envs(env.iter().map(|(k, v)| (k, v)));
            ServerProcess::spawn("weed", cmd, dir, libc::SIGTERM)
        }
    }
}

/// Whether the server stores and serves objects yet: a bucket made, an
/// object written and read back, both removed. (SeaweedFS answers S3 before
/// its volume server has joined.)
pub(super) fn serves(endpoint: &str, access_key: &str, secret_key: &str) -> bool {
    let (endpoint, ak, sk) = (
        endpoint.to_string(),
        access_key.to_string(),
        secret_key.to_string(),
    );
    super::process::on_own_runtime(move || async move {
        let client = super::minio::client_at(&endpoint, &ak, &sk);
        let (bucket, key) = ("dbbackup-ready", "probe");
        let made = client.create_bucket().bucket(bucket).send().await;
        if made.is_err() && client.head_bucket().bucket(bucket).send().await.is_err() {
            return false;
        }
        let put = client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(b"ready".to_vec().into())
            .send()
            .await;
        if put.is_err() {
            return false;
        }
        let Ok(got) = client.get_object().bucket(bucket).key(key).send().await else {
            return false;
        };
        if got.body.collect().await.map(|b| b.to_vec()).ok().as_deref() != Some(b"ready") {
            return false;
        }
        let _ = client.delete_object().bucket(bucket).key(key).send().await;
        client.delete_bucket().bucket(bucket).send().await.is_ok()
    })
}
