//! A restore across namespaces reads its object through presigned URLs: a
//! `locate` Job in the backup's namespace, with that namespace's
//! credentials, picks the key and signs a HEAD and a GET of it
//! (`presign`); the restore pod, without any credentials, sends the SDK's
//! own requests to those URLs (`client`, `to_url`), so the download, its
//! ranges and its proof are the ones every restore uses.

use crate::jobresult::Presigned;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::ChecksumMode;
use std::time::Duration;

/// The environment variable the restore pod gets the URLs in (JSON).
pub const PRESIGNED_ENV: &str = "DBBACKUP_PRESIGNED";

/// Signs a HEAD and a GET of `key`, valid for `expires`.
pub async fn presign(
    client: &Client,
    bucket: &str,
    key: &str,
    expires: Duration,
) -> Result<Presigned, String> {
    let config = PresigningConfig::expires_in(expires).map_err(|e| e.to_string())?;
    let head = client
        .head_object()
        .bucket(bucket)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled)
        .presigned(config.clone())
        .await
        .map_err(|e| format!("cannot sign a HEAD of {key}: {e}"))?;
    let get = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(config)
        .await
        .map_err(|e| format!("cannot sign a GET of {key}: {e}"))?;
    Ok(Presigned {
        bucket: bucket.to_string(),
        key: key.to_string(),
        head: head.uri().to_string(),
        get: get.uri().to_string(),
    })
}

/// The URLs sealed to `to` with age, base64: only the holder of its
/// identity, the operator that asked, can read them.
pub fn seal(p: &Presigned, to: &age::x25519::Recipient) -> Result<String, String> {
    use base64::Engine as _;
    let json = serde_json::to_vec(p).map_err(|e| e.to_string())?;
    let sealed = age::encrypt(to, &json).map_err(|e| format!("cannot seal the URLs: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

/// The URLs `seal` sealed, for `identity`; None for anything else.
pub fn open(sealed: &str, identity: &age::x25519::Identity) -> Option<Presigned> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .ok()?;
    let json = age::decrypt(identity, &raw).ok()?;
    serde_json::from_slice(&json).ok()
}

/// A client with no credentials, for the URLs' store: each request it
/// sends is pointed at its URL by `to_url`.
pub fn client(p: &Presigned) -> Result<Client, String> {
    let url: http::Uri = p.get.parse().map_err(|e| format!("not a URL: {e}"))?;
    let (Some(scheme), Some(authority)) = (url.scheme_str(), url.authority()) else {
        return Err("the presigned URL names no store".into());
    };
    let origin = format!("{scheme}://{authority}");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(origin)
        .force_path_style(true)
        .allow_no_auth()
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Client::from_conf(config))
}

/// Sends a fluent request of the SDK as it is, or, given `Some(url)`,
/// pointed at that presigned URL (`to_url`).
macro_rules! send_to {
    ($request:expr, $url:expr) => {
        match $url {
            Some(url) => {
                let url = url.to_string();
                $request
                    .customize()
                    .mutate_request(move |r| $crate::jobs::presigned::to_url(r, &url))
                    .send()
                    .await
            }
            None => $request.send().await,
        }
    };
}
pub(crate) use send_to;

/// Points a request at `url`, keeping only the `x-amz-` headers the URL
/// signed: S3 refuses a presigned request with others. The SDK's presigner
/// signs no checksum mode, so the store reports no CRC64/NVME, and the
/// download proves the object by its MD5 ETag (which is why SSE-KMS, whose
/// ETag is no MD5, is not restored across namespaces).
pub fn to_url(request: &mut aws_sdk_s3::config::http::HttpRequest, url: &str) {
    let signed: Vec<String> = url
        .split_once('?')
        .map_or("", |(_, q)| q)
        .split('&')
        .find_map(|pair| pair.strip_prefix("X-Amz-SignedHeaders="))
        .map(|v| v.replace("%3B", ";").replace("%3b", ";"))
        .unwrap_or_default()
        .split(';')
        .map(str::to_string)
        .collect();
    let unsigned: Vec<String> = request
        .headers()
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .filter(|n| n.starts_with("x-amz-") && !signed.contains(n))
        .collect();
    for name in unsigned {
        request.headers_mut().remove(name);
    }
    let _ = request.set_uri(url);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request goes to the URL, without the x-amz- headers the URL did
    /// not sign (the checksum mode too), but with its Range.
    #[test]
    fn a_request_is_pointed_at_its_url_with_only_what_it_may_carry() {
        let request = http::Request::builder()
            .method("HEAD")
            .uri("http://127.0.0.1:9000/b/k?x-id=HeadObject")
            .header("x-amz-user-agent", "sdk")
            .header("x-amz-checksum-mode", "ENABLED")
            .header("x-amz-meta-signed", "1")
            .header("range", "bytes=0-9")
            .body(aws_sdk_s3::primitives::SdkBody::empty())
            .unwrap();
        let mut request = aws_sdk_s3::config::http::HttpRequest::try_from(request).unwrap();
        let url = "http://127.0.0.1:9000/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-SignedHeaders=host%3Bx-amz-meta-signed&X-Amz-Signature=abc";
        to_url(&mut request, url);
        assert_eq!(request.uri(), url);
        let names: Vec<_> = request
            .headers()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        for gone in ["x-amz-user-agent", "x-amz-checksum-mode"] {
            assert!(!names.contains(&gone.to_string()), "{gone}: {names:?}");
        }
        for kept in ["x-amz-meta-signed", "range"] {
            assert!(names.contains(&kept.to_string()), "{kept}: {names:?}");
        }
    }

    /// Sealed URLs open with the operator's identity alone.
    #[test]
    fn sealed_urls_open_for_their_identity_alone() {
        let p = Presigned {
            bucket: "b".into(),
            key: "k".into(),
            head: "https://s/b/k?X-Amz-Signature=h".into(),
            get: "https://s/b/k?X-Amz-Signature=g".into(),
        };
        let ours = age::x25519::Identity::generate();
        let sealed = seal(&p, &ours.to_public()).unwrap();
        assert!(!sealed.contains("X-Amz") && !sealed.contains("https"));
        assert_eq!(open(&sealed, &ours), Some(p));
        assert_eq!(open(&sealed, &age::x25519::Identity::generate()), None);
    }

    /// The Debug form names the object and never shows a URL.
    #[test]
    fn urls_never_show_in_debug() {
        let p = Presigned {
            bucket: "b".into(),
            key: "k".into(),
            head: "https://s/b/k?X-Amz-Signature=secret".into(),
            get: "https://s/b/k?X-Amz-Signature=secret".into(),
        };
        assert_eq!(format!("{p:?}"), "Presigned(b/k)");
    }
}
