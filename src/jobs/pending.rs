//! The multipart upload under way, recorded on the staging volume
//! (`dumps/.multipart-upload.json`) so that the next upload aborts it when
//! this one dies before it ends: no parts are left behind in the store.

use super::store;
use std::path::{Path, PathBuf};
use tracing::info;

/// What the `.multipart` state file holds: an upload to abort if we die mid-way.
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingUpload {
    bucket: String,
    key: String,
    upload_id: String,
}

fn state_path(dumps: &Path) -> PathBuf {
    dumps.join(".multipart-upload.json")
}

/// Records a multipart upload under way, for the next run to abort if this
/// one dies before it ends.
pub(super) fn record(
    dumps: &Path,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> std::io::Result<()> {
    let pending = PendingUpload {
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
    };
    std::fs::write(
        state_path(dumps),
        serde_json::to_vec(&pending).expect("serializes"),
    )
}

/// The multipart upload recorded ended (completed or aborted).
pub(super) fn clear(dumps: &Path) {
    let _ = std::fs::remove_file(state_path(dumps));
}

/// Aborts the multipart upload an interrupted earlier run left behind.
pub(super) async fn abort_leftover(client: &aws_sdk_s3::Client, dumps: &Path) {
    let path = state_path(dumps);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    if let Ok(p) = serde_json::from_str::<PendingUpload>(&text) {
        info!(key = %p.key, "aborting the multipart upload of an interrupted run");
        if !store::abort(client, &p.bucket, &p.key, &p.upload_id).await {
            // Kept for the next run to try again.
            return;
        }
    }
    let _ = std::fs::remove_file(path);
}
