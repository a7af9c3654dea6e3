//! What a container that talks to the store gets: the store's volumes (CA
//! bundle, web-identity token), flags and environment (bucket, credentials
//! from their Secret, endpoint, region, server-side encryption).

use super::{CA_MOUNT, IMAGE_ROOTS, TOKEN_MOUNT, mount, plain_env, secret_env};
use crate::api::BucketSpec;
use crate::names;
use k8s_openapi::api::core::v1::{
    EnvVar, ProjectedVolumeSource, SecretVolumeSource, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};

/// The volumes only the containers that talk to the store mount: the CA
/// bundle Secret at `CA_MOUNT`, and the ServiceAccount token for a web
/// identity at `TOKEN_MOUNT` (so no other container ever sees it).
pub(crate) fn store_volumes(bucket: &BucketSpec) -> (Vec<Volume>, Vec<VolumeMount>) {
    let read_only = |name: &str, path: &str| VolumeMount {
        read_only: Some(true),
        ..mount(name, path)
    };
    let mut volumes = vec![];
    let mut mounts = vec![];
    if let Some(ca) = &bucket.ca_bundle {
        volumes.push(Volume {
            name: "ca-bundle".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(read_only("ca-bundle", CA_MOUNT));
    }
    if let Some(identity) = &bucket.web_identity {
        volumes.push(Volume {
            name: "store-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(identity.audience.clone()),
                        expiration_seconds: Some(3600),
                        path: "token".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(read_only("store-token", TOKEN_MOUNT));
    }
    (volumes, mounts)
}

/// A step that downloads a dump from the database image (restore, drill):
/// the store's flags, and our CA store, which that image may lack.
pub(crate) fn download_args(bucket: &BucketSpec) -> Vec<String> {
    let mut args = store_args(bucket);
    args.push(format!("--image-roots={IMAGE_ROOTS}"));
    args
}

/// Such a step's environment: the store's, and the age identity that
/// decrypts an encrypted dump, from its Secret.
pub(crate) fn download_env(
    bucket: &BucketSpec,
    keys_optional: bool,
    identity: Option<&crate::api::IdentitySecretRef>,
) -> Vec<EnvVar> {
    let mut env = store_env(bucket, keys_optional);
    env.extend(identity.map(|i| secret_env(names::AGE_IDENTITY_ENV, &i.name, &i.key, false)));
    env
}

/// Flags of the store: addressing, CA bundle (mounted at `CA_MOUNT`) and
/// server-side encryption.
pub(crate) fn store_args(bucket: &BucketSpec) -> Vec<String> {
    let mut args = vec![];
    if let Some(path_style) = bucket.force_path_style {
        args.push(format!("--force-path-style={path_style}"));
    }
    if let Some(profile) = bucket.profile {
        args.push(format!("--profile={}", profile.as_str()));
    }
    if let Some(ca) = &bucket.ca_bundle {
        args.push(format!("--ca-bundle={CA_MOUNT}/{}", ca.key));
    }
    if let Some(sse) = &bucket.server_side_encryption {
        args.push(format!("--sse={}", sse.kind.as_str()));
        if let Some(id) = &sse.kms_key_id {
            args.push(format!("--sse-kms-key-id={id}"));
        }
    }
    args
}

/// Bucket, credentials, endpoint and region, from the spec or the bucket
/// Secret, and the SSE-C key from its Secret. A web identity replaces the
/// access keys; `keys_optional` lets the Secret lack them.
pub(crate) fn store_env(bucket: &BucketSpec, keys_optional: bool) -> Vec<EnvVar> {
    let secret = &bucket.secret_ref;
    let mut env = vec![match &bucket.name {
        Some(name) => plain_env(names::BUCKET_ENV, name),
        None => secret_env(names::BUCKET_ENV, &secret.name, &secret.bucket_key, false),
    }];
    match &bucket.web_identity {
        None => env.extend([
            secret_env(
                names::ACCESS_KEY_ENV,
                &secret.name,
                &secret.access_key_id_key,
                keys_optional,
            ),
            secret_env(
                names::SECRET_KEY_ENV,
                &secret.name,
                &secret.secret_access_key_key,
                keys_optional,
            ),
        ]),
        // The SDK's own variables for AssumeRoleWithWebIdentity.
        Some(identity) => env.extend([
            plain_env(names::ROLE_ARN_ENV, &identity.role_arn),
            plain_env(names::TOKEN_FILE_ENV, &format!("{TOKEN_MOUNT}/token")),
            plain_env(names::SESSION_NAME_ENV, names::MANAGER),
        ]),
    }
    env.extend([
        match &bucket.endpoint {
            Some(url) => plain_env(names::ENDPOINT_ENV, url),
            None => secret_env(
                names::ENDPOINT_ENV,
                &secret.name,
                &secret.endpoint_key,
                true,
            ),
        },
        match &bucket.region {
            Some(region) => plain_env(names::REGION_ENV, region),
            None => secret_env(names::REGION_ENV, &secret.name, &secret.region_key, true),
        },
    ]);
    if let Some(key) = bucket
        .server_side_encryption
        .as_ref()
        .and_then(|s| s.customer_key_secret.as_ref())
    {
        env.push(secret_env(
            names::SSE_CUSTOMER_KEY_ENV,
            &key.name,
            &key.key,
            false,
        ));
    }
    env
}
