//! Whether the store's `If-None-Match: *` keeps an existing object from
//! being replaced, which is what never overwriting a dump rests on. The
//! profile says so (`api::Conditional`), or a probe object of our own,
//! `<prefix>.dbbackup-if-none-match-probe`, is written twice with it: a
//! store that honours it refuses the second write. Where it is not
//! honoured, each key is checked (HEAD) before it is written instead, which
//! the upload lock on the staging volume keeps from racing another upload
//! of the same resource (not an upload of another resource sharing the
//! prefix, which admission does not stop).

use super::put::{PutError, classify};
use super::store::{Sse, WithSse as _};
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

/// Writes `key` with `If-None-Match: *` until refused, twice at most.
async fn probe(client: &Client, bucket: &str, key: &str, sse: &Sse) -> bool {
    for _ in 0..2 {
        match put_if_absent(client, bucket, key, sse).await {
            // Created (the first time), or replaced: once more.
            Ok(()) => continue,
            Err(PutError::KeyTaken(_)) => return true,
            // The write path answers 501 itself and falls back.
            Err(PutError::ConditionalUnsupported) => return true,
            Err(PutError::Failed(e)) => {
                warn!(%key, "cannot probe the store's If-None-Match ({e}); relying on it");
                return true;
            }
        }
    }
    warn!(
        %key,
        "the store ignores If-None-Match (a conditional write replaced {key}): each key is checked before it is written instead"
    );
    false
}

async fn put_if_absent(
    client: &Client,
    bucket: &str,
    key: &str,
    sse: &Sse,
) -> Result<(), PutError> {
    let body = b"dbbackup-operator checks here that the store refuses to replace an object\n";
    // Content-MD5: a bucket with Object Lock takes no PUT without it.
    use md5::Digest as _;
    let md5 = super::multipart::content_md5(&md5::Md5::digest(body).into());
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_md5(md5)
        .body(body.to_vec().into())
        .with_sse(sse)
        .if_none_match("*")
        .send()
        .await
        .map_err(|e| classify(e, key))?;
    Ok(())
}
