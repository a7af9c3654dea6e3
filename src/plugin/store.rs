//! The store of a backup, reached from the user's machine: what the job pods
//! get as env and flags, read here from the Secrets with the user's rights.

use crate::api::{DatabaseBackup, SseType};
use crate::jobs::store::{self, Sse, StoreSettings};
use crate::jobs::tool::Hidden;
use anyhow::{Context as _, anyhow};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

pub struct Store {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    pub sse: Sse,
}

/// A Secret of the backup's namespace, read with the kubeconfig's rights.
async fn secret(client: &Client, db: &DatabaseBackup, name: &str) -> anyhow::Result<Secret> {
    let ns = db.namespace().unwrap_or_default();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .get(name)
        .await
        .with_context(|| {
            format!("cannot read secret {name:?} in namespace {ns:?} with your kubeconfig")
        })
}

/// The value of `key`, trimmed; None when absent or empty.
fn value(secret: &Secret, key: &str) -> Option<String> {
    let v = secret.data.as_ref()?.get(key)?;
    let text = String::from_utf8_lossy(&v.0).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn required(secret: &Secret, key: &str) -> anyhow::Result<String> {
    value(secret, key).ok_or_else(|| anyhow!("secret {:?} has no key {key:?}", secret.name_any()))
}

impl Store {
    /// The backup's bucket and a client for it: the keys of its bucket
    /// Secret, or, for a backup with a web identity, your own AWS
    /// credentials from the environment.
    pub async fn of(client: &Client, db: &DatabaseBackup) -> anyhow::Result<Store> {
        let bucket = &db.spec.bucket;
        let secret_ref = &bucket.secret_ref;
        let s = secret(client, db, &secret_ref.name).await?;
        let name = match &bucket.name {
            Some(name) => name.clone(),
            None => required(&s, &secret_ref.bucket_key)?,
        };
        // Without keys in the Secret (a web identity, or a ServiceAccount the
        // cloud gives credentials), your own AWS credentials are used.
        let keyless = bucket.web_identity.is_some() || db.spec.jobs.service_account_name.is_some();
        let keys = match (
            value(&s, &secret_ref.access_key_id_key),
            value(&s, &secret_ref.secret_access_key_key),
        ) {
            (Some(id), Some(secret)) if bucket.web_identity.is_none() => Some((id, secret)),
            _ if keyless => None,
            _ => Some((
                required(&s, &secret_ref.access_key_id_key)?,
                required(&s, &secret_ref.secret_access_key_key)?,
            )),
        };
        let ca_bundle = match &bucket.ca_bundle {
            Some(ca) => {
                let pem = required(&secret(client, db, &ca.name).await?, &ca.key)?;
                Some(pem.into_bytes())
            }
            None => None,
        };
        let sse = match &bucket.server_side_encryption {
            None => Sse::None,
            Some(sse) => match sse.kind {
                SseType::Aes256 => Sse::S3,
                SseType::AwsKms => Sse::Kms(sse.kms_key_id.clone()),
                SseType::Customer => {
                    let r = sse
                        .customer_key_secret
                        .as_ref()
                        .ok_or_else(|| anyhow!("SSE-C without customerKeySecret"))?;
                    let key = required(&secret(client, db, &r.name).await?, &r.key)?;
                    Sse::customer(&key).map_err(anyhow::Error::msg)?
                }
            },
        };
        let settings = StoreSettings {
            endpoint: bucket
                .endpoint
                .clone()
                .or_else(|| value(&s, &secret_ref.endpoint_key)),
            region: bucket
                .region
                .clone()
                .or_else(|| value(&s, &secret_ref.region_key))
                .unwrap_or_else(|| "us-east-1".into()),
            force_path_style: bucket.force_path_style,
            ca_bundle,
            keys,
        };
        Ok(Store {
            client: store::client(&settings).await.map_err(anyhow::Error::msg)?,
            bucket: crate::api::bucket_name(&name).to_string(),
            sse,
        })
    }
}

/// The age identity of the backup's drills (spec.encryption.identitySecret).
pub async fn identity(client: &Client, db: &DatabaseBackup) -> anyhow::Result<Hidden> {
    let r = db
        .spec
        .encryption
        .as_ref()
        .and_then(|e| e.identity_secret.as_ref())
        .ok_or_else(|| {
            anyhow!("the dump is encrypted: give --identity, or set spec.encryption.identitySecret")
        })?;
    Ok(Hidden(required(
        &secret(client, db, &r.name).await?,
        &r.key,
    )?))
}
