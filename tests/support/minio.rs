//! A real MinIO server on loopback with random credentials, and the bucket
//! the steps write to.

use super::process::{ServerProcess, bin, free_port, wait_until};
use super::stores::{self, Server};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

pub const BUCKET: &str = "backups";

/// How a server is started beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct MinioOpts {
    /// Serve https, with a certificate from a fresh test CA (`Minio::ca_pem`).
    pub tls: bool,
    /// Its built-in KMS key, `KMS_KEY`, for SSE-S3 and SSE-KMS.
    pub kms: bool,
    /// More environment (an OpenID provider's settings).
    pub env: Vec<(String, String)>,
    /// A PEM CA it trusts as a client (an OpenID provider's).
    pub trust: Option<String>,
    /// Another S3 server in MinIO's place (`stores.rs`): no TLS, KMS or
    /// `mc` then.
    pub server: Server,
}

/// The name of the built-in KMS key of a server started with `kms`.
pub const KMS_KEY: &str = "dbbackup-test-key";

pub struct Minio {
    process: ServerProcess,
    opts: MinioOpts,
    /// The test CA of a server started with `tls`.
    pub ca_pem: Option<String>,
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

    /// A server for pods, started as `opts` say.
    pub fn start_for_pods_with(opts: MinioOpts) -> Minio {
        Self::start_opts_on(super::node::NODE_IP, opts)
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
        Self::start_opts(parent, host, access_key, secret_key, MinioOpts::default())
    }

    /// `server` on loopback, with random credentials.
    pub fn start_server(server: Server) -> Minio {
        Self::start_with_opts(MinioOpts {
            server,
            ..Default::default()
        })
    }

    /// A loopback server with random credentials, started as `opts` say.
    pub fn start_with_opts(opts: MinioOpts) -> Minio {
        Self::start_opts_on("127.0.0.1", opts)
    }

    fn start_opts_on(host: &str, opts: MinioOpts) -> Minio {
        Self::start_opts(
            &std::env::temp_dir(),
            host,
            &format!("AK{}", random_token(18)),
            &format!("s3SECRET{}", random_token(32)),
            opts,
        )
    }

    fn start_opts(
        parent: &std::path::Path,
        host: &str,
        access_key: &str,
        secret_key: &str,
        opts: MinioOpts,
    ) -> Minio {
        let dir = tempfile::Builder::new()
            .prefix("dbbackup-minio-")
            .tempdir_in(parent)
            .unwrap();
        let port = free_port();
        let (access_key, secret_key) = (access_key.to_string(), secret_key.to_string());
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let ca_pem = opts.tls.then(|| write_certs(dir.path(), host));
        if let Some(trust) = &opts.trust {
            let cas = dir.path().join("certs/CAs");
            std::fs::create_dir_all(&cas).unwrap();
            std::fs::write(cas.join("trusted.crt"), trust).unwrap();
        }
        let spawn = Spawn {
            dir: dir.path(),
            data: &data,
            host,
            port,
            access_key: &access_key,
            secret_key: &secret_key,
            opts: &opts,
        };
        let mut process = spawn.run();
        let scheme = if opts.tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://{host}:{port}");
        spawn.wait_live(&mut process, ca_pem.as_deref());
        Minio {
            process,
            opts,
            ca_pem,
            host: host.into(),
            port,
            endpoint,
            access_key,
            secret_key,
            dir,
        }
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port, data and credentials.
    pub fn restart(&mut self) {
        self.process.kill();
        let data = self.dir.path().join("data");
        let spawn = Spawn {
            dir: self.dir.path(),
            data: &data,
            host: &self.host,
            port: self.port,
            access_key: &self.access_key,
            secret_key: &self.secret_key,
            opts: &self.opts,
        };
        self.process = spawn.run();
        spawn.wait_live(&mut self.process, self.ca_pem.as_deref());
    }

    /// `mc` against this server as its root user; panics with its output on failure.
    pub fn mc(&self, args: &[&str]) -> String {
        let out = self.mc_command(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "mc {args:?}: {text}");
        text
    }

    /// The `mc` command line against this server as its root user (alias `test`).
    pub fn mc_command(&self, args: &[&str]) -> Command {
        let host = self.endpoint.replacen(
            "://",
            &format!("://{}:{}@", self.access_key, self.secret_key),
            1,
        );
        let mut cmd = Command::new(bin("mc"));
        cmd.arg("--config-dir")
            .arg(self.dir.path().join("mc"))
            .arg("--quiet")
            .args(args)
            .env("MC_HOST_test", host)
            // Spelled out: a measured run starts from an empty environment.
            .env("HOME", self.dir.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        cmd
    }

    /// A MinIO user with only `policy` (JSON); its access keys.
    pub fn add_user(&self, name: &str, policy: &str) -> (String, String) {
        let (access_key, secret_key) = (format!("{name}{}", random_token(8)), random_token(32));
        let file = self.dir.path().join(format!("{name}-policy.json"));
        std::fs::write(&file, policy).unwrap();
        self.mc(&["admin", "user", "add", "test", &access_key, &secret_key]);
        self.mc(&[
            "admin",
            "policy",
            "create",
            "test",
            name,
            file.to_str().unwrap(),
        ]);
        self.mc(&[
            "admin",
            "policy",
            "attach",
            "test",
            name,
            "--user",
            &access_key,
        ]);
        (access_key, secret_key)
    }

    /// Whether any file the server keeps on disk holds `needle`.
    pub fn disk_contains(&self, needle: &[u8]) -> bool {
        fn walk(dir: &std::path::Path, needle: &[u8]) -> bool {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        walk(&path, needle)
                    } else {
                        std::fs::read(&path)
                            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                    }
                })
        }
        walk(&self.dir.path().join("data"), needle)
    }

    /// The server's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// An aws-sdk-s3 client for this server: custom endpoint, path-style addressing.
    /// Over https, through the server's test CA.
    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        match self.ca_pem {
            Some(_) => self.tls_client().await,
            None => self.s3_client_at(&self.endpoint),
        }
    }

    /// A client through this server's test CA, with the operator's own setup
    /// (a server started with `tls`).
    pub async fn tls_client(&self) -> aws_sdk_s3::Client {
        self.client_as(&self.access_key, &self.secret_key).await
    }

    /// A client with other credentials, with the operator's own setup.
    pub async fn client_as(&self, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
        let settings = dbbackup_operator::jobs::store::StoreSettings {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            ca_bundle: self.ca_pem.as_ref().map(|p| p.as_bytes().to_vec()),
            keys: Some((access_key.into(), secret_key.into())),
            ..Default::default()
        };
        dbbackup_operator::jobs::store::client(&settings)
            .await
            .unwrap()
    }

    /// A client with the SDK's default settings (request checksums included)
    /// and this server's credentials, sent to `endpoint`.
    pub fn s3_client_at(&self, endpoint: &str) -> aws_sdk_s3::Client {
        client_at(endpoint, &self.access_key, &self.secret_key)
    }
}

/// A client with the SDK's default settings and these keys, sent to `endpoint`.
pub fn client_at(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "testenv");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(creds)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// One start of the server process.
struct Spawn<'a> {
    dir: &'a std::path::Path,
    data: &'a std::path::Path,
    host: &'a str,
    port: u16,
    access_key: &'a str,
    secret_key: &'a str,
    opts: &'a MinioOpts,
}

impl Spawn<'_> {
    fn run(&self) -> ServerProcess {
        if self.opts.server != Server::Minio {
            assert!(
                !self.opts.tls && !self.opts.kms,
                "TLS and KMS are MinIO's here"
            );
            let (dir, server) = (self.dir, self.opts.server);
            return stores::spawn(
                server,
                dir,
                self.host,
                self.port,
                self.access_key,
                self.secret_key,
                &self.opts.env,
            );
        }
        let mut cmd = Command::new(bin("minio"));
        cmd.arg("server")
            .arg(self.data)
            .arg("--address")
            .arg(format!("{}:{}", self.host, self.port))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--certs-dir")
            .arg(self.dir.join("certs"))
            .arg("--quiet")
            .env("MINIO_ROOT_USER", self.access_key)
            .env("MINIO_ROOT_PASSWORD", self.secret_key)
            .env("MINIO_UPDATE", "off")
            .env("MINIO_BROWSER", "off")
            .env("HOME", self.dir)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        if self.opts.kms {
            use base64::Engine as _;
            let key: [u8; 32] = rand::random();
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            // The key must survive a restart: a new one could not decrypt.
            let file = self.dir.join("kms-key");
            if !file.exists() {
                std::fs::write(&file, format!("{KMS_KEY}:{key}")).unwrap();
            }
            cmd.env("MINIO_KMS_SECRET_KEY_FILE", file);
        }
        ServerProcess::spawn("minio", cmd, self.dir, libc::SIGTERM)
    }
}

/// A server certificate for `host` from a fresh CA, where MinIO's
/// --certs-dir expects it; returns the CA's PEM.
fn write_certs(dir: &std::path::Path, host: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![host.to_string(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("public.crt"), cert.pem()).unwrap();
    std::fs::write(certs.join("private.key"), key.serialize_pem()).unwrap();
    ca_cert.pem()
}

impl Spawn<'_> {
    /// Waits for the health endpoint; over https, for a listing through the
    /// CA; for another server, until it stores and serves an object.
    fn wait_live(&self, process: &mut ServerProcess, ca: Option<&str>) {
        let (host, port) = (self.host, self.port);
        let what = format!("{} to serve", self.opts.server.name());
        wait_until(&what, Duration::from_secs(90), || {
            process.assert_running();
            match (self.opts.server, ca) {
                (Server::Minio, None) => health_ok(host, port),
                (Server::Minio, Some(ca)) => tls_health_ok(host, port, ca),
                _ => stores::serves(
                    &format!("http://{host}:{port}"),
                    self.access_key,
                    self.secret_key,
                ),
            }
        });
    }
}

/// The live endpoint over https, with the operator's own store client setup.
fn tls_health_ok(host: &str, port: u16, ca: &str) -> bool {
    let (host, ca) = (host.to_string(), ca.as_bytes().to_vec());
    super::process::on_own_runtime(move || async move {
        let settings = dbbackup_operator::jobs::store::StoreSettings {
            endpoint: Some(format!("https://{host}:{port}")),
            region: "us-east-1".into(),
            ca_bundle: Some(ca),
            keys: Some(("probe".into(), "probe-secret".into())),
            ..Default::default()
        };
        let client = dbbackup_operator::jobs::store::client(&settings)
            .await
            .unwrap();
        // Any HTTP answer (here: a refusal of the unknown key) is a live server.
        match client.list_buckets().send().await {
            Ok(_) => true,
            Err(e) => e.raw_response().is_some(),
        }
    })
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

/// Every key in the bucket but the uploads' If-None-Match probe
/// (`jobs::conditional::PROBE`), sorted.
pub async fn bucket_keys(minio: &Minio) -> Vec<String> {
    let probe = dbbackup_operator::jobs::conditional::PROBE;
    let mut keys = all_bucket_keys(minio).await;
    keys.retain(|k| !k.ends_with(probe));
    keys
}

/// Every key in the bucket, sorted.
pub async fn all_bucket_keys(minio: &Minio) -> Vec<String> {
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

/// The parts the store holds of the first multipart upload open in the
/// bucket, or None when none is open.
pub async fn open_upload_parts(minio: &Minio) -> Option<usize> {
    let s3 = minio.s3_client().await;
    let uploads = s3
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .ok()?;
    let upload = uploads.uploads().first()?;
    let parts = s3
        .list_parts()
        .bucket(BUCKET)
        .key(upload.key()?)
        .upload_id(upload.upload_id()?)
        .send()
        .await
        .ok()?;
    Some(parts.parts().len())
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

pub async fn head_object(
    minio: &Minio,
    key: &str,
) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    minio
        .s3_client()
        .await
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap()
}

/// Uploads `parts` to `key` as a multipart upload, recording `declared` as
/// the part size the way our uploader does (a wrong one makes an object
/// whose ETag its bytes cannot match, as if they changed after the upload).
pub async fn put_parts<'a>(
    minio: &Minio,
    key: &str,
    parts: impl IntoIterator<Item = &'a [u8]>,
    declared: usize,
) {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let s3 = minio.s3_client().await;
    let id = s3
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .metadata("dbbackup-part-size", declared.to_string())
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let mut done = vec![];
    for (n, chunk) in parts.into_iter().enumerate() {
        let n = n as i32 + 1;
        let out = s3
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(chunk.to_vec().into())
            .send()
            .await
            .unwrap();
        done.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// Stores `body` at `key` of the test bucket, as any S3 client would.
pub async fn put_object(minio: &Minio, key: &str, body: Vec<u8>) {
    minio
        .s3_client()
        .await
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap();
}
