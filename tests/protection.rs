//! Backups an attacker cannot read or erase, on the real node: dumps
//! encrypted with age from the dump pod to the restore and the drill, and
//! an upload pod with keyless credentials (its projected ServiceAccount
//! token traded at MinIO, whose OpenID provider is the test apiserver).

mod support;

use age::secrecy::ExposeSecret;
use dbbackup_operator::api::{Engine, RestorePhase};
use k8s_openapi::api::batch::v1::CronJob;
use kube::api::Api;
use std::time::Duration;
use support::bed::*;
use support::minio::*;
use support::process::wait_for;

const DRILL_TIMEOUT: Duration = Duration::from_secs(240);

async fn an_encrypted_round_trip_on_the_node(engine: Engine) {
    let b = bed(engine).await;
    let identity = age::x25519::Identity::generate();
    let stranger = age::x25519::Identity::generate();
    apply_secret(
        &b,
        "age",
        &[("recipients", &identity.to_public().to_string())],
    );
    apply_secret(
        &b,
        "age-key",
        &[("identity", identity.to_string().expose_secret())],
    );
    apply_secret(
        &b,
        "stranger",
        &[("identity", stranger.to_string().expose_secret())],
    );
    let spec = "  compression: zstd
  encryption:
    recipientsSecret:
      name: age
    identitySecret:
      name: age-key
  verify:
    afterUpload: true
";
    let (b, _op, mut pods) = ready(b, spec).await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let key = status_of(&b).await.last_upload_key.unwrap();
    assert!(key.ends_with("/datadump1.sql.zst.age"), "{key}");
    let first = b.db.fingerprint("shop");
    // Neither the bucket nor the staging volume holds a row of the data.
    let object = get_object(&b.minio, &key).await;
    assert!(object.starts_with(b"age-encryption.org/v1"));
    assert!(!object.windows(11).any(|w| w == b"example.com"));
    assert!(
        !b.minio.disk_contains(b"example.com"),
        "plaintext on MinIO's disk"
    );
    // The drill decrypts with the backup's identity, and passes.
    next_succeeded(&mut pods, "verify").await;
    let status = wait_orders(&b, "Verified", Some("True"), "Verified", DRILL_TIMEOUT).await;
    assert_eq!(status.last_verified_key.as_deref(), Some(key.as_str()));

    // A newer dump, then a restore of the older one by its key (an .age key
    // the restore's admission once refused) with the right identity brings
    // that dump's data back.
    b.db.query(
        "shop",
        "INSERT INTO products VALUES (201, 'Late product', 9.99)",
    );
    backup_now(&b, &mut pods, "second", &mut vec![]).await;
    next_succeeded(&mut pods, "verify").await;
    let with = |secret: &str| format!("  identitySecret:\n    name: {secret}\n");
    let older = format!("{}  key: {key}\n", with("age-key"));
    apply_restore_with(&b, "back", "restored", false, "db-creds", &older);
    let status = run_restore(&b, &mut pods, "back").await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert_eq!(status.key.as_deref(), Some(key.as_str()));
    assert_eq!(b.db.fingerprint("restored"), first);
    assert_ne!(b.db.fingerprint("shop"), first);

    // A wrong identity: a specific reason, and nothing loaded.
    apply_restore_with(&b, "wrong", "wrong", false, "db-creds", &with("stranger"));
    let status = run_restore(&b, &mut pods, "wrong").await;
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    assert_eq!(
        restored(&status),
        ("False".into(), "DecryptionFailed".into())
    );
    // Nothing loaded: the target was not even created.
    let exists = match engine {
        Engine::Postgres => "SELECT count(*) FROM pg_database WHERE datname = 'wrong'",
        _ => "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'wrong'",
    };
    assert_eq!(b.db.query("shop", exists), "0", "nothing loaded");
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
}

#[tokio::test]
async fn an_encrypted_mariadb_backup_restores_and_drills_on_the_node_and_a_wrong_identity_loads_nothing()
 {
    an_encrypted_round_trip_on_the_node(Engine::Mariadb).await;
}

#[tokio::test]
async fn an_encrypted_postgres_backup_restores_and_drills_on_the_node_and_a_wrong_identity_loads_nothing()
 {
    an_encrypted_round_trip_on_the_node(Engine::Postgres).await;
}

/// The audience MinIO expects of the token: its OpenID client id.
const AUDIENCE: &str = "dbbackup-minio";

/// The role MinIO makes for an OpenID provider with a role policy:
/// `arn:minio:iam:::role/` and the SHA-1 of the client id, base64url.
fn minio_role_arn(client_id: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(client_id));
    format!("arn:minio:iam:::role/{id}")
}

#[tokio::test]
async fn keyless_an_upload_pod_with_a_projected_token_and_no_access_keys_uploads_a_dump() {
    let b = bed_with_minio(Engine::Postgres, |cluster| {
        // The apiserver serves its OpenID discovery to anyone, as clusters
        // that are identity providers do.
        let rbac = cluster.cp.dir().join("oidc-discovery.yaml");
        std::fs::write(
            &rbac,
            "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: service-account-issuer-discovery-unauthenticated
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:service-account-issuer-discovery
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:unauthenticated
",
        )
        .unwrap();
        kubectl(&cluster.cp, &["apply", "-f", rbac.to_str().unwrap()]);
        MinioOpts {
            env: vec![
                (
                    "MINIO_IDENTITY_OPENID_CONFIG_URL".into(),
                    format!("{}/.well-known/openid-configuration", cluster.cp.url),
                ),
                ("MINIO_IDENTITY_OPENID_CLIENT_ID".into(), AUDIENCE.into()),
                (
                    "MINIO_IDENTITY_OPENID_ROLE_POLICY".into(),
                    "readwrite".into(),
                ),
            ],
            trust: Some(std::fs::read_to_string(cluster.cp.ca_cert()).unwrap()),
            // The token is a credential: it travels over https only.
            tls: true,
            ..Default::default()
        }
    })
    .await;
    // No access keys anywhere: the bucket Secret names the bucket and endpoint only.
    assert!(b.minio.endpoint.starts_with("https://"));
    apply_secret(
        &b,
        "s3-creds",
        &[("bucket", BUCKET), ("endpoint", &b.minio.endpoint)],
    );
    apply_secret(
        &b,
        "minio-ca",
        &[("ca.crt", b.minio.ca_pem.as_deref().unwrap())],
    );
    kubectl(
        b.cp(),
        &["create", "serviceaccount", "-n", &b.ns, "backup-store"],
    );
    let spec = format!(
        "    caBundle:
      name: minio-ca
    webIdentity:
      roleArn: {arn}
      audience: {AUDIENCE}
  jobs:
    serviceAccountName: backup-store
",
        arn = minio_role_arn(AUDIENCE)
    );
    let (b, _op, mut pods) = ready(b, &spec).await;

    // The token reaches the upload container only, and no pod has an API token.
    let cronjobs: Api<CronJob> = Api::namespaced(b.client.clone(), &b.ns);
    for (name, store) in [("orders-upload", true), ("orders-dump", false)] {
        let cj = cronjobs.get(name).await.unwrap();
        let pod = cj.spec.job_template.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let named = pod.service_account_name.as_deref() == Some("backup-store");
        let has_token = pod.volumes.iter().flatten().any(|v| v.projected.is_some());
        assert_eq!((named, has_token), (store, store), "{name}");
        let env: Vec<String> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect();
        assert!(
            !env.contains(&"AWS_ACCESS_KEY_ID".to_string()),
            "{name}: {env:?}"
        );
    }

    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let key = status_of(&b).await.last_upload_key.unwrap();
    assert_eq!(bucket_keys(&b.minio).await, [key]);
    wait_for("the upload's log line", Duration::from_secs(10), || async {
        let log = status_of(&b).await.log;
        log.iter()
            .any(|l| l.ends_with("file successfully uploaded"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn sse_c_over_tls_on_the_node_backs_up_and_restores_through_the_ca_bundle() {
    use base64::Engine as _;
    let b = bed_with_minio(Engine::Mariadb, |_| MinioOpts {
        tls: true,
        ..Default::default()
    })
    .await;
    let key_text = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    apply_secret(
        &b,
        "minio-ca",
        &[("ca.crt", b.minio.ca_pem.as_deref().unwrap())],
    );
    apply_secret(&b, "sse", &[("key", &key_text)]);
    let spec = "    caBundle:
      name: minio-ca
    serverSideEncryption:
      type: SSE-C
      customerKeySecret:
        name: sse
";
    let (b, _op, mut pods) = ready(b, spec).await;
    backup_now(&b, &mut pods, "first", &mut vec![]).await;
    let key = status_of(&b).await.last_upload_key.unwrap();
    // Unreadable without the key, even to MinIO's root user.
    let s3 = b.minio.s3_client().await;
    assert!(
        s3.get_object()
            .bucket(BUCKET)
            .key(&key)
            .send()
            .await
            .is_err()
    );
    assert!(
        !b.minio.disk_contains(b"example.com"),
        "plaintext on MinIO's disk"
    );

    apply_restore(&b, "back", "restored", false);
    let status = run_restore(&b, &mut pods, "back").await;
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert!(
        status.log[0].contains(&format!(",downloaded {key} ("))
            && status.log[0].ends_with("checksum verified)"),
        "{:?}",
        status.log
    );
    assert_eq!(b.db.fingerprint("restored"), b.db.fingerprint("shop"));
    let text = serde_json::to_string(&status_of(&b).await).unwrap();
    assert!(!text.contains(&key_text), "{text}");
}
