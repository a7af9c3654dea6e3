//! Whether a child already holds what we would apply, so that a converged
//! resource costs no write at all on resync.
//!
//! A server-side apply that changes nothing still is a PATCH request. We skip
//! it when the cached live object contains every field of the desired one
//! (the server adds defaults; it never removes ours) and carries the hash of
//! the desired object: the hash catches a field we stopped setting, the
//! field-by-field check catches a hand edit of one we set.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Annotation holding the hash of the desired object last applied.
pub const HASH_ANNOTATION: &str = "dbbackup.io/applied-hash";

/// Adds the hash of `desired` (without the annotation) to its annotations.
pub fn stamp(desired: &mut Value) {
    let digest = Sha256::digest(desired.to_string().as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let meta = &mut desired["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = Value::Object(Default::default());
    }
    meta["annotations"][HASH_ANNOTATION] = Value::String(hash);
}

/// True when every field of `desired` holds in `live`; lists match element by element.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| contains(lv, dv))),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        (l, d) => l == d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired() -> Value {
        let mut d = json!({
            "metadata": {"name": "orders-dump", "labels": {"a": "1"}},
            "spec": {"schedule": "0 3 * * *", "containers": [{"name": "dump", "args": ["x"]}]}
        });
        stamp(&mut d);
        d
    }

    /// The desired object as the server returns it: with defaults and metadata added.
    fn live() -> Value {
        let mut l = desired();
        l["metadata"]["uid"] = "u1".into();
        l["metadata"]["resourceVersion"] = "7".into();
        l["spec"]["suspend"] = false.into();
        l["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent".into();
        l
    }

    #[test]
    fn server_defaults_do_not_count_as_drift() {
        assert!(contains(&live(), &desired()));
    }

    #[test]
    fn a_hand_edit_of_our_field_is_drift() {
        let mut l = live();
        l["spec"]["schedule"] = "0 4 * * *".into();
        assert!(!contains(&l, &desired()));
        let mut l = live();
        l["spec"]["containers"][0]["args"] = json!(["x", "y"]);
        assert!(!contains(&l, &desired()));
    }

    #[test]
    fn a_field_we_stopped_setting_changes_the_hash() {
        // Live still has the label; the new desired object has none.
        let mut d = json!({
            "metadata": {"name": "orders-dump"},
            "spec": {"schedule": "0 3 * * *", "containers": [{"name": "dump", "args": ["x"]}]}
        });
        stamp(&mut d);
        assert!(!contains(&live(), &d));
    }

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(desired(), desired());
        assert_eq!(
            desired()["metadata"]["annotations"][HASH_ANNOTATION]
                .as_str()
                .unwrap()
                .len(),
            16
        );
    }
}
