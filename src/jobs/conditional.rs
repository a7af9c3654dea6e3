//! Whether the store's `If-None-Match: *` keeps an existing object from
//! being replaced, which is what never overwriting a dump rests on. The
//! profile says so (`api::Conditional`), or a probe object of our own,
//! `<prefix>.dbbackup-if-none-match-probe`, is written with it by a PUT
//! and by a multipart completion: a store that honours it refuses both once
//! the object exists. Where it is not
//! honoured (or the probe cannot be made), each key is checked (HEAD) before it is written instead, which
//! the upload lock on the staging volume keeps from racing another upload
//! of the same resource (not an upload of another resource sharing the
//! prefix, which admission does not stop).

use super::put::{PutError, classify};
use super::store::{Sse, WithSse as _, abort};
use super::upload::UploadArgs;
use crate::api::Conditional;
use aws_sdk_s3::Client;
use tracing::warn;

/// The probe object's name under the resource's prefix.
pub const PROBE: &str = ".dbbackup-if-none-match-probe";

/// Whether writes may rely on `If-None-Match: *` (else the caller checks
/// each key before it writes it).
pub(super) async fn trusted(client: &Client, args: &UploadArgs, sse: &Sse) -> bool {
    let profile = args.store.profile();
    match profile.conditional() {
        Conditional::Trusted => true,
        Conditional::Untrusted => false,
        Conditional::Probed => {
            let key = format!("{}{PROBE}", args.prefix);
            probe(client, &args.store.bucket, &key, sse).await
        }
    }
}

/// Whether the store refuses both kinds of write that carry `If-None-Match:
/// *` once `key` exists: a PUT (written until refused, twice at most, the
/// first may create it) and a multipart completion (stores have honoured
/// the one and ignored the other). A probe that cannot be made says no.
async fn probe(client: &Client, bucket: &str, key: &str, sse: &Sse) -> bool {
    refuses("PutObject", key, || put_if_absent(client, bucket, key, sse)).await
        && refuses("CompleteMultipartUpload", key, || {
            complete_if_absent(client, bucket, key, sse)
        })
        .await
}

/// Runs `write` until the store refuses it, twice at most.
async fn refuses<F, W>(what: &str, key: &str, write: W) -> bool
where
    W: Fn() -> F,
    F: std::future::Future<Output = Result<(), PutError>>,
{
    let fallback = "each key is checked before it is written instead";
    for _ in 0..2 {
        match write().await {
            // Created (the first time), or replaced: once more.
            Ok(()) => continue,
            Err(PutError::KeyTaken(_)) => return true,
            Err(PutError::ConditionalUnsupported) => {
                warn!(%key, "the store does not take If-None-Match on {what}: {fallback}");
                return false;
            }
            Err(PutError::Failed(e)) => {
                warn!(%key, "cannot ask the store whether it honours If-None-Match on {what} ({e}): {fallback}");
                return false;
            }
        }
    }
    warn!(
        %key,
        "the store ignores If-None-Match on {what} (a conditional write replaced {key}): {fallback}"
    );
    false
}

const BODY: &[u8] = b"dbbackup-operator checks here that the store refuses to replace an object\n";

/// Content-MD5 of the probe: a bucket with Object Lock takes no write
/// without it.
fn body_md5() -> String {
    use md5::Digest as _;
    super::multipart::content_md5(&md5::Md5::digest(BODY).into())
}

async fn put_if_absent(
    client: &Client,
    bucket: &str,
    key: &str,
    sse: &Sse,
) -> Result<(), PutError> {
    super::put::small(client, bucket, key, BODY, sse)
        .if_none_match("*")
        .send()
        .await
        .map_err(|e| classify(e, key))?;
    Ok(())
}

/// A one-part multipart upload of the probe, completed with
/// `If-None-Match: *`; aborted where the completion is refused.
async fn complete_if_absent(
    client: &Client,
    bucket: &str,
    key: &str,
    sse: &Sse,
) -> Result<(), PutError> {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .with_sse(sse)
        .send()
        .await
        .map_err(|e| classify(e, key))?;
    let id = created
        .upload_id()
        .ok_or_else(|| PutError::Failed("the store returned no upload id".into()))?;
    let part = client
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .part_number(1)
        .content_md5(body_md5())
        .body(BODY.to_vec().into())
        .with_sse(sse)
        .send()
        .await
        .map_err(|e| classify(e, key));
    let completed = match part {
        Ok(part) => {
            let parts = CompletedPart::builder()
                .part_number(1)
                .set_e_tag(part.e_tag().map(str::to_string))
                .build();
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .multipart_upload(CompletedMultipartUpload::builder().parts(parts).build())
                .with_sse(sse)
                .if_none_match("*")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(e, key))
        }
        Err(e) => Err(e),
    };
    if completed.is_err() {
        abort(client, bucket, key, id).await;
    }
    completed
}
