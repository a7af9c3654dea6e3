//! Whether a child already holds what we would apply, so that a converged
//! resource costs no write at all on resync.
//!
//! A server-side apply that changes nothing still is a PATCH request. We skip
//! it when the child's metadata shows three things: the hash of the desired
//! object (which changes with any field we set or stop setting), our labels
//! and annotations, and, for kinds that count spec changes in
//! `metadata.generation` (CronJobs), the generation our last apply left. A hand
//! edit of the spec raises the generation, so it is repaired. Only metadata is
//! needed, so the operator caches only the children's metadata.
//!
//! PersistentVolumeClaims count no generation. The fields we set in their spec
//! are immutable once created, except the storage request, which can only grow.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::names::{GENERATION_ANNOTATION, HASH_ANNOTATION};

/// True when the live child's metadata shows it holds `desired` (stamped) unchanged.
pub fn unchanged(live: &ObjectMeta, desired: &Value) -> bool {
    let live_json = serde_json::to_value(live).expect("metadata serializes");
    contains(&live_json, &desired["metadata"]) && generation_record(live).is_none()
}

/// The merge patch that records the child's current generation, when the
/// record differs; None for kinds without a generation.
pub fn generation_record(live: &ObjectMeta) -> Option<Value> {
    let generation = live.generation?.to_string();
    let recorded = live
        .annotations
        .as_ref()
        .and_then(|a| a.get(GENERATION_ANNOTATION));
    (recorded != Some(&generation))
        .then(|| json!({"metadata": {"annotations": {GENERATION_ANNOTATION: generation}}}))
}

/// Records generation 1 in `desired` (stamped), for an apply that creates the
/// child; where the child existed after all, `generation_record` corrects it.
pub fn record_first_generation(desired: &mut Value) {
    desired["metadata"]["annotations"][GENERATION_ANNOTATION] = Value::String("1".into());
}

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
    fn server_added_fields_do_not_count_as_drift() {
        assert!(contains(&live(), &desired()));
        let mut l = live();
        l["metadata"]["labels"]["a"] = "2".into();
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
        let live: ObjectMeta = serde_json::from_value(live()["metadata"].clone()).unwrap();
        assert!(!unchanged(&live, &d));
    }

    fn live_meta(generation: Option<i64>, recorded: Option<&str>) -> ObjectMeta {
        let mut meta: ObjectMeta =
            serde_json::from_value(live()["metadata"].clone()).expect("metadata");
        meta.generation = generation;
        if let Some(r) = recorded {
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(GENERATION_ANNOTATION.into(), r.into());
        }
        meta
    }

    #[test]
    fn metadata_shows_an_unchanged_child() {
        assert!(unchanged(&live_meta(Some(3), Some("3")), &desired()));
        // Kinds without a generation (PersistentVolumeClaims) need no record.
        assert!(unchanged(&live_meta(None, None), &desired()));
    }

    #[test]
    fn a_spec_edit_since_our_apply_shows_in_the_generation() {
        let edited = live_meta(Some(4), Some("3"));
        assert!(!unchanged(&edited, &desired()));
        assert_eq!(
            generation_record(&edited),
            Some(json!({"metadata": {"annotations": {GENERATION_ANNOTATION: "4"}}}))
        );
        assert!(!unchanged(&live_meta(Some(1), None), &desired()));
    }

    #[test]
    fn a_child_created_with_its_first_generation_needs_no_second_write() {
        let mut d = desired();
        record_first_generation(&mut d);
        let mut created: ObjectMeta = serde_json::from_value(d["metadata"].clone()).unwrap();
        created.generation = Some(1);
        assert_eq!(generation_record(&created), None);
        assert!(unchanged(&created, &desired()));
        // It existed already, at another generation: the record is corrected.
        created.generation = Some(7);
        assert!(generation_record(&created).is_some());
    }

    #[test]
    fn a_new_desired_object_or_a_lost_label_shows_in_the_metadata() {
        let live = live_meta(Some(3), Some("3"));
        let mut d = json!({
            "metadata": {"name": "orders-dump", "labels": {"a": "1"}},
            "spec": {"schedule": "0 4 * * *", "containers": [{"name": "dump", "args": ["x"]}]}
        });
        stamp(&mut d);
        assert!(!unchanged(&live, &d), "another hash");
        let mut unlabelled = live.clone();
        unlabelled.labels = None;
        assert!(!unchanged(&unlabelled, &desired()));
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
