//! A real MinIO server on loopback with random credentials, and the bucket
//! the steps write to.

use super::process::{ServerProcess, bin, free_port, wait_until};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

pub const BUCKET: &str = "backups";

pub struct Minio {
    process: ServerProcess,
    /// Where it listens: loopback, or the node's address for pods.
    pub host: String,
    pub port: u16,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    dir: TempDir,
}

/// A random token of `len` alphanumerics, for credentials a scan can spot.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl Minio {
    pub fn start() -> Minio {
        Self::start_in(&std::env::temp_dir(), "127.0.0.1")
    }

    /// A server on the node's address, which pods reach.
    pub fn start_for_pods() -> Minio {
        Self::start_in(&std::env::temp_dir(), super::node::NODE_IP)
    }

    /// Frees the space of deleted objects now. MinIO moves them to a trash
    /// folder and empties it every few minutes; a benchmark that writes and
    /// deletes gigabytes a minute would otherwise fill the drive (or, on tmpfs,
    /// the memory) and measure that.
    pub fn purge_trash(&self) {
        let trash = self.dir.path().join("data/.minio.sys/tmp/.trash");
        for entry in std::fs::read_dir(&trash).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(entry.path())
                .or_else(|_| std::fs::remove_file(entry.path()));
        }
    }

    /// A server on `host` whose data lives under `parent` (a tmpfs takes the
    /// disk out of a benchmark).
    pub fn start_in(parent: &std::path::Path, host: &str) -> Minio {
        // Distinctive so that the secret scans cannot miss it.
        let secret_key = format!("s3SECRET{}", random_token(32));
        Self::start_with(
            parent,
            host,
            &format!("AK{}", random_token(18)),
            &secret_key,
        )
    }

    /// A server with the given root credentials (the demo's are in its example Secret).
    pub fn start_with(
        parent: &std::path::Path,
        host: &str,
        access_key: &str,
        secret_key: &str,
    ) -> Minio {
        let dir = tempfile::Builder::new()
            .prefix("dbbackup-minio-")
            .tempdir_in(parent)
            .unwrap();
        let port = free_port();
        let (access_key, secret_key) = (access_key.to_string(), secret_key.to_string());
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut process = Self::spawn(dir.path(), &data, host, port, &access_key, &secret_key);
        let endpoint = format!("http://{host}:{port}");
        wait_until("MinIO to report live", Duration::from_secs(60), || {
            process.assert_running();
            health_ok(host, port)
        });
        Minio {
            process,
            host: host.into(),
            port,
            endpoint,
            access_key,
            secret_key,
            dir,
        }
    }

    fn spawn(
        dir: &std::path::Path,
        data: &std::path::Path,
        host: &str,
        port: u16,
        access_key: &str,
        secret_key: &str,
    ) -> ServerProcess {
        let mut cmd = Command::new(bin("minio"));
        cmd.arg("server")
            .arg(data)
            .arg("--address")
            .arg(format!("{host}:{port}"))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--quiet")
            .env("MINIO_ROOT_USER", access_key)
            .env("MINIO_ROOT_PASSWORD", secret_key)
            .env("MINIO_UPDATE", "off")
            .env("MINIO_BROWSER", "off")
            .env("HOME", dir);
        ServerProcess::spawn("minio", cmd, dir, libc::SIGTERM)
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port, data and credentials.
    pub fn restart(&mut self) {
        self.process.kill();
        let data = self.dir.path().join("data");
        self.process = Self::spawn(
            self.dir.path(),
            &data,
            &self.host,
            self.port,
            &self.access_key,
            &self.secret_key,
        );
        let (host, port) = (&self.host, self.port);
        let process = &mut self.process;
        wait_until("MinIO to report live", Duration::from_secs(60), || {
            process.assert_running();
            health_ok(host, port)
        });
    }

    /// The server's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// An aws-sdk-s3 client for this server: custom endpoint, path-style addressing.
    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        self.s3_client_at(&self.endpoint)
    }

    /// A client with the SDK's default settings (request checksums included)
    /// and this server's credentials, sent to `endpoint`.
    pub fn s3_client_at(&self, endpoint: &str) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "testenv",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

fn health_ok(host: &str, port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect((host, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let req = "GET /minio/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
}

/// Every key in the bucket, sorted.
pub async fn bucket_keys(minio: &Minio) -> Vec<String> {
    let s3 = minio.s3_client().await;
    let mut keys = vec![];
    let mut pages = s3.list_objects_v2().bucket(BUCKET).into_paginator().send();
    while let Some(page) = pages.next().await {
        keys.extend(
            page.unwrap()
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
    }
    keys.sort();
    keys
}

/// Asserts no multipart upload is left open in the bucket (every failure aborts its own).
pub async fn assert_no_pending_uploads(minio: &Minio) {
    let pending = minio
        .s3_client()
        .await
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert!(
        pending.uploads().is_empty(),
        "orphan multipart uploads: {:?}",
        pending.uploads()
    );
}

pub async fn create_bucket(minio: &Minio) {
    minio
        .s3_client()
        .await
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
}

pub async fn get_object(minio: &Minio, key: &str) -> Vec<u8> {
    let out = minio
        .s3_client()
        .await
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}
