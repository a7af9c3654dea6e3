//! What becomes of an object the upload could not prove: it is no backup.
//! One that differs from the dump and is surely ours is deleted; any other
//! (a check the store did not answer, a delete refused, a store without
//! conditional writes) is marked with `<key>.unproven` beside it, which
//! retention, `latest`, the drill and the plugin read (`retention::newest_first`).

use super::keys;
use super::proof::{Unproven, Written};
use super::store::{Sse, describe};
use aws_sdk_s3::Client;

/// Deletes or marks `key`, and returns the reason, saying which.
/// `deleter` is the client that may delete (retention's), `writer` the
/// upload's.
pub async fn discard(
    writer: &Client,
    deleter: Result<Client, String>,
    sse: &Sse,
    bucket: &str,
    key: &str,
    written: &Written,
    unproven: Unproven,
) -> String {
    let why = unproven.why;
    let stays = if !unproven.differs {
        "the object may be right but is not proven".to_string()
    } else if !written.exclusive {
        "the store takes no conditional writes, so the object may be another upload's".to_string()
    } else {
        match deleter {
            Err(e) => format!("no client may delete it: {e}"),
            Ok(deleter) => match deleter.delete_object().bucket(bucket).key(key).send().await {
                Ok(_) => return format!("{why}; the unproven object was deleted"),
                Err(e) => format!("it could not be deleted: {}", describe(&e)),
            },
        }
    };
    match mark(writer, sse, bucket, key, &why).await {
        Ok(marker) => format!("{why}; {stays}: it stays, marked {marker}, and counts as no backup"),
        Err(e) => format!("{why}; {stays}: it stays, and marking it unproven failed: {e}"),
    }
}

/// Writes `<key>.unproven`, holding the reason.
async fn mark(
    client: &Client,
    sse: &Sse,
    bucket: &str,
    key: &str,
    why: &str,
) -> Result<String, String> {
    let marker = format!("{key}{}", keys::UNPROVEN);
    super::put::small(client, bucket, &marker, why.as_bytes(), sse)
        .content_type("text/plain")
        .send()
        .await
        .map_err(|e| describe(&e))?;
    Ok(marker)
}
