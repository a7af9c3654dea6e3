//! Names of the children, derived from the resource name.
//!
//! A CronJob name may have at most 52 characters (its Jobs append 11), and a
//! resource name may have 63. Long names are cut and given a hash of the
//! whole name, so two resources that share a long prefix never collide.

use sha2::{Digest, Sha256};

/// Longest CronJob name Kubernetes accepts.
pub const CRONJOB_NAME_MAX: usize = 52;
/// Longest DNS label, which also bounds PVC names we generate.
pub const DNS_LABEL_MAX: usize = 63;

/// `<owner>-<suffix>`, or `<cut owner>-<hash>-<suffix>` when that would exceed `max`.
pub fn child_name(owner: &str, suffix: &str, max: usize) -> String {
    let plain = format!("{owner}-{suffix}");
    if plain.len() <= max {
        return plain;
    }
    let hash = short_hash(owner);
    let keep = max.saturating_sub(suffix.len() + hash.len() + 2);
    let cut = owner[..keep.min(owner.len())].trim_end_matches(['-', '.']);
    format!("{cut}-{hash}-{suffix}")
}

/// First 8 hex digits of the SHA-256 of `s`: stable across releases and machines.
fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The id of one "back up now" request: 6 hex digits of its token, so that
/// `<cronjob>-now-<id>` stays within 63 characters for a 52-character CronJob name.
pub fn run_now_id(token: &str) -> String {
    short_hash(token)[..6].to_string()
}

pub fn staging_pvc_name(owner: &str) -> String {
    child_name(owner, "staging", DNS_LABEL_MAX)
}

pub fn dump_cronjob_name(owner: &str) -> String {
    child_name(owner, "dump", CRONJOB_NAME_MAX)
}

pub fn upload_cronjob_name(owner: &str) -> String {
    child_name(owner, "upload", CRONJOB_NAME_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_plain() {
        assert_eq!(dump_cronjob_name("orders"), "orders-dump");
        assert_eq!(upload_cronjob_name("orders"), "orders-upload");
        assert_eq!(staging_pvc_name("orders"), "orders-staging");
    }

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let a = "a".repeat(62) + "x";
        let b = "a".repeat(62) + "y";
        for name in [&a, &b] {
            assert_eq!(name.len(), 63);
            let dump = dump_cronjob_name(name);
            let upload = upload_cronjob_name(name);
            assert!(dump.len() <= CRONJOB_NAME_MAX, "{dump}");
            assert!(upload.len() <= CRONJOB_NAME_MAX, "{upload}");
            assert!(staging_pvc_name(name).len() <= DNS_LABEL_MAX);
            assert_ne!(dump, upload);
        }
        assert_ne!(dump_cronjob_name(&a), dump_cronjob_name(&b));
        assert_eq!(dump_cronjob_name(&a), dump_cronjob_name(&a), "stable");
    }

    #[test]
    fn run_now_jobs_fit_in_a_label_value() {
        let cj = dump_cronjob_name(&"z".repeat(63));
        let job = format!("{cj}-now-{}", run_now_id("any token at all"));
        assert!(job.len() <= DNS_LABEL_MAX, "{job}");
        assert_ne!(run_now_id("a"), run_now_id("b"));
    }

    #[test]
    fn cut_never_leaves_a_dangling_separator() {
        let name = format!("{}-{}", "b".repeat(39), "c".repeat(20));
        let dump = dump_cronjob_name(&name);
        assert!(!dump.contains("--"), "{dump}");
        assert!(dump.ends_with("-dump"));
    }
}
