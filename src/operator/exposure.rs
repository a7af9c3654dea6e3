//! Where a credential our pods hold could reach someone it is not for: an
//! SSE-C key or a web-identity token sent over plain http, or a token whose
//! audience the Kubernetes API server accepts. Refused at reconcile, with a
//! condition naming the setting (admission refuses what is in the spec).

use super::checks::{Problem, secret_value};
use crate::api::BucketSpec;
use crate::reasons;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;

/// An SSE-C key and a web-identity token are credentials sent to the store
/// with each request: never over plain http, wherever the endpoint is set
/// (the spec, or the bucket Secret as the original pipeline kept it). The
/// endpoint itself is not named: the Secret may hold it.
pub(super) fn check_secrets_travel_over_tls(
    bucket: &BucketSpec,
    secret: &Secret,
) -> Result<(), Problem> {
    let (endpoint, from) = match &bucket.endpoint {
        Some(e) => (e.clone(), "spec.bucket.endpoint".to_string()),
        None => match secret_value(secret, &bucket.secret_ref.endpoint_key) {
            Ok(v) => (
                String::from_utf8_lossy(v).trim().to_string(),
                format!(
                    "the endpoint in secret {:?} key {:?}",
                    bucket.secret_ref.name, bucket.secret_ref.endpoint_key
                ),
            ),
            // No endpoint: AWS S3, always https.
            Err(_) => return Ok(()),
        },
    };
    if endpoint.starts_with("https://") {
        return Ok(());
    }
    let sse_c = bucket
        .server_side_encryption
        .as_ref()
        .is_some_and(|s| s.kind == crate::api::SseType::Customer);
    let what = match (sse_c, bucket.web_identity.is_some()) {
        (true, _) => "spec.bucket.serverSideEncryption SSE-C sends its key with every request",
        (false, true) => "spec.bucket.webIdentity sends the ServiceAccount token to the store",
        (false, false) => return Ok(()),
    };
    Err(Problem::new(
        reasons::INSECURE_ENDPOINT,
        format!("{what}: {from} must be an https:// URL"),
    ))
}

/// A web-identity token is handed to the upload and fetch containers; with
/// an audience the apiserver accepts it would be an API token for the
/// ServiceAccount, which our pods never get.
pub fn check_audience(audience: &str, apiserver: &[String]) -> Result<(), Problem> {
    match apiserver.iter().any(|a| a == audience) {
        true => Err(Problem::new(
            reasons::APISERVER_AUDIENCE,
            format!(
                "spec.bucket.webIdentity.audience {audience:?} is an audience of the Kubernetes API server: \
                 a token for it would let the pod call the API; use the store's own audience (such as sts.amazonaws.com)"
            ),
        )),
        false => Ok(()),
    }
}

/// The audiences the apiserver accepts: those of the operator's own token
/// (in a pod), and its service account issuer, its default audience.
pub(super) async fn apiserver_audiences(client: &Client) -> Vec<String> {
    const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    let mut audiences = std::fs::read_to_string(TOKEN)
        .map(|t| token_audiences(&t))
        .unwrap_or_default();
    let discovery = http::Request::get("/.well-known/openid-configuration")
        .body(vec![])
        .expect("a static request");
    if let Ok(text) = client.request_text(discovery).await
        && let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(issuer) = doc["issuer"].as_str()
    {
        audiences.push(issuer.to_string());
    }
    audiences
}

/// The `aud` claim of a JWT (not verified: it is our own token).
fn token_audiences(jwt: &str) -> Vec<String> {
    use base64::Engine as _;
    let claims = jwt
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok());
    match claims.as_ref().map(|c| &c["aud"]) {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audience_of_the_apiserver_is_refused() {
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"aud":["https://kubernetes.default.svc.cluster.local","k3s"],"sub":"x"}"#);
        let apiserver = token_audiences(&format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln"));
        assert_eq!(
            apiserver,
            ["https://kubernetes.default.svc.cluster.local", "k3s"]
        );
        let refused = check_audience("k3s", &apiserver).unwrap_err();
        assert_eq!(refused.reason, "APIServerAudience");
        assert!(check_audience("sts.amazonaws.com", &apiserver).is_ok());
    }

    #[test]
    fn secrets_over_http_are_refused_wherever_the_endpoint_is_set() {
        let bucket = |extra: serde_json::Value| -> BucketSpec {
            let mut b = serde_json::json!({"secretRef": {"name": "s3"}});
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(b).unwrap()
        };
        let secret = |endpoint: &str| Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("s3".into()),
                ..Default::default()
            },
            data: Some(
                [(
                    "endpoint".to_string(),
                    k8s_openapi::ByteString(endpoint.into()),
                )]
                .into(),
            ),
            ..Default::default()
        };
        let sse_c = serde_json::json!({"serverSideEncryption": {"type": "SSE-C", "customerKeySecret": {"name": "k"}}});
        let keyless = serde_json::json!({"webIdentity": {"roleArn": "arn:aws:iam::1:role/r"}});
        let refused =
            check_secrets_travel_over_tls(&bucket(sse_c.clone()), &secret("http://minio:9000"))
                .unwrap_err();
        assert_eq!(refused.reason, "InsecureEndpoint");
        assert_eq!(
            refused.message,
            r#"spec.bucket.serverSideEncryption SSE-C sends its key with every request: the endpoint in secret "s3" key "endpoint" must be an https:// URL"#
        );
        assert!(!refused.message.contains("minio:9000"));
        let refused =
            check_secrets_travel_over_tls(&bucket(keyless.clone()), &secret("http://minio:9000"))
                .unwrap_err();
        assert!(
            refused.message.starts_with("spec.bucket.webIdentity sends"),
            "{}",
            refused.message
        );
        for ok in [
            check_secrets_travel_over_tls(&bucket(keyless.clone()), &secret("https://minio:9000")),
            check_secrets_travel_over_tls(&bucket(sse_c), &Secret::default()),
            check_secrets_travel_over_tls(
                &bucket(serde_json::json!({})),
                &secret("http://minio:9000"),
            ),
        ] {
            assert!(ok.is_ok(), "{ok:?}");
        }
    }
}
