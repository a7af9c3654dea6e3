//! Every name two parts of the system must agree on: the children's names,
//! the labels and annotation, the field manager, and the environment
//! variables through which a pod spec hands values to a job step.
//!
//! A CronJob name may have at most 52 characters (its Jobs append 11), and a
//! resource name may have 63. Long names are cut and given a hash of the
//! whole name, so two resources that share a long prefix never collide.

use crate::api::Engine;
use sha2::{Digest, Sha256};

/// This operator, wherever it signs what it does: the field manager of every
/// write, the value of the managed-by label on every child, and the reporter
/// of its Events. One name, since it is one idea.
pub const MANAGER: &str = "dbbackup-operator";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The recommended label of the resource a child belongs to: the
/// DatabaseBackup's or DatabaseRestore's name, which tools group by.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// On a backup's children, Jobs and pods: the DatabaseBackup's name.
pub const LABEL_BACKUP: &str = "dbbackup.io/backup";
/// On a restore's Job and pod: the DatabaseRestore's name.
pub const LABEL_RESTORE: &str = "dbbackup.io/restore";
/// On every Job and pod: which step it runs (`jobresult::Step`).
pub const LABEL_STEP: &str = "dbbackup.io/step";
/// One "back up now" request, under one key: as an annotation on the
/// DatabaseBackup, set by the user to a new token; as a label on the Jobs and
/// pods that request started, a hash of that token (`run_now_id`).
pub const RUN_NOW: &str = "dbbackup.io/run-now";

/// On a child: the hash of the desired object we last applied (`operator::applied`).
pub const HASH_ANNOTATION: &str = "dbbackup.io/applied-hash";
/// On a child: its generation right after our last apply.
pub const GENERATION_ANNOTATION: &str = "dbbackup.io/applied-generation";

/// On a drill's pod: the object key it drills.
pub const VERIFY_KEY_ANNOTATION: &str = "dbbackup.io/verify-key";

/// The database user, from the credentials Secret, for the dump and load steps.
pub const USER_ENV: &str = "DB_USER";

/// The variable the engine's clients read the password from (from the Secret).
pub fn password_env(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "PGPASSWORD",
        Engine::Mariadb | Engine::Mysql => "MYSQL_PWD",
    }
}

/// The age recipients (public keys) the dump step encrypts to, from the recipients Secret.
pub const AGE_RECIPIENTS_ENV: &str = "DBBACKUP_AGE_RECIPIENTS";

/// The age identity (secret key) the fetch step decrypts with, from the restore's identity Secret.
pub const AGE_IDENTITY_ENV: &str = "DBBACKUP_AGE_IDENTITY";

/// The store's bucket, endpoint and region, for the upload and fetch steps;
/// the access keys use the AWS SDK's own variables.
pub const BUCKET_ENV: &str = "DBBACKUP_BUCKET";
pub const ENDPOINT_ENV: &str = "DBBACKUP_ENDPOINT";
pub const REGION_ENV: &str = "AWS_REGION";
pub const ACCESS_KEY_ENV: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_KEY_ENV: &str = "AWS_SECRET_ACCESS_KEY";

/// A web identity, in the variables the SDKs (and the EKS webhook) use:
/// the ServiceAccount token, the role to assume, the session's name, and
/// where STS is when it is not at the store's endpoint.
pub const TOKEN_FILE_ENV: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
pub const ROLE_ARN_ENV: &str = "AWS_ROLE_ARN";
pub const SESSION_NAME_ENV: &str = "AWS_ROLE_SESSION_NAME";
pub const STS_ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL_STS";

/// The SSE-C key (base64 of 32 bytes), from its Secret, for every step that
/// reads or writes the dumps.
pub const SSE_CUSTOMER_KEY_ENV: &str = "DBBACKUP_SSE_CUSTOMER_KEY";

/// Credentials that may delete, from the prune Secret, for retention only.
pub const PRUNE_ACCESS_KEY_ENV: &str = "DBBACKUP_PRUNE_ACCESS_KEY_ID";
pub const PRUNE_SECRET_KEY_ENV: &str = "DBBACKUP_PRUNE_SECRET_ACCESS_KEY";

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

/// The id naming the upload Job that follows one dump pod while it runs
/// (for `run_job_name`): of its run and the pod, so that a Job's second pod
/// gets an upload of its own; as short as a run id.
pub fn follower_id(run: &str, pod_uid: &str) -> String {
    run_now_id(&format!("{run}/{pod_uid}"))
}

/// A Job started from a CronJob's template for one run (`run_now_id`, or a
/// hash of the dump Job it uploads for): creating it twice is a no-op.
pub fn run_job_name(cronjob: &str, run: &str) -> String {
    format!("{cronjob}-now-{run}")
}

/// The restore's Job: named after the restore's UID too, so that a restore
/// created again under the same name never takes an earlier one's Job (left
/// behind by `--cascade=orphan`) for its own.
pub fn restore_job_name(restore: &str, uid: &str) -> String {
    let suffix = format!("restore-{}", &uid[..uid.len().min(8)]);
    child_name(restore, &suffix, DNS_LABEL_MAX)
}

/// The locate Job of a restore across namespaces, in the backup's
/// namespace: named by the restore's UID and the key its URLs are sealed
/// to, so a new key (an operator restarted) makes a new Job.
pub fn locate_job_name(restore: &str, uid: &str, key: &str) -> String {
    let suffix = format!(
        "locate-{}-{}",
        &uid[..uid.len().min(8)],
        &short_hash(key)[..6]
    );
    child_name(restore, &suffix, DNS_LABEL_MAX)
}

/// A short, stable label value for the key the URLs are sealed to.
pub fn seal_label(key: &str) -> String {
    short_hash(key)
}

/// The name the first release gave a restore's Job, still honoured for a
/// restore that release started.
pub fn legacy_restore_job_name(restore: &str) -> String {
    child_name(restore, "restore", DNS_LABEL_MAX)
}

/// A restore drill's Job, named after its run (the key drilled after its
/// upload, or the key and the time of a scheduled drill): a drill is never
/// started twice.
pub fn verify_job_name(owner: &str, run: &str) -> String {
    child_name(owner, &format!("verify-{}", short_hash(run)), DNS_LABEL_MAX)
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

/// The key segment (and staging folder) of a database of several: its name
/// with every byte but `A-Z a-z 0-9 _ - .` as `%XX`, and a leading `.` too,
/// so that any name is one segment, never `.` or `..`, and no name meets
/// the roles' segment.
pub fn database_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        match plain {
            true => out.push(b as char),
            false => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The database a segment names: `database_segment` undone.
pub fn segment_database(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `key` is one of our dumps under `prefix`:
/// `<prefix>YYYY-MM-DD/datadumpN.sql[.gz|.zst][.age]`, or with `several`
/// databases `<prefix><segment>/YYYY-MM-DD/…`. What a grant admits of a
/// bucket: a backup's own dumps, never any object beside them.
pub fn is_dump_key(prefix: &str, key: &str, several: bool) -> bool {
    let Some(rest) = key.strip_prefix(prefix) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (date, file) = match (several, parts.as_slice()) {
        (false, [date, file]) => (date, file),
        (true, [segment, date, file]) if !segment.is_empty() => (date, file),
        _ => return false,
    };
    let dated = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok() && date.len() == 10;
    let Some(n) = file.strip_prefix("datadump") else {
        return false;
    };
    let digits = n.len() - n.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = &n[digits..];
    let rest = rest.strip_suffix(".age").unwrap_or(rest);
    dated && digits > 0 && matches!(rest, ".sql" | ".sql.gz" | ".sql.zst")
}

/// The segment of the roles a postgres backup of several databases stores.
pub const ROLES_SEGMENT: &str = ".roles";

/// The prefix of one database's series: `<prefix><segment>/`.
pub fn database_prefix(prefix: &str, name: &str) -> String {
    format!("{prefix}{}/", database_segment(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_dumps_under_the_prefix_are_dump_keys() {
        assert!(is_dump_key("p/", "p/2026-03-01/datadump1.sql", false));
        assert!(is_dump_key("", "2026-03-01/datadump12.sql.zst.age", false));
        assert!(is_dump_key(
            "p/",
            "p/shop/2026-03-01/datadump1.sql.gz",
            true
        ));
        for (key, several) in [
            ("q/2026-03-01/datadump1.sql", false),
            ("p/elsewhere/2026-03-01/datadump1.sql", false),
            ("p/2026-03-01/datadump1.sql", true),
            ("p/2026-3-1/datadump1.sql", false),
            ("p/2026-03-01/notes.sql", false),
            ("p/2026-03-01/datadump.sql", false),
            ("p/2026-03-01/datadump1.sql.bak", false),
            ("p//2026-03-01/datadump1.sql", true),
        ] {
            assert!(!is_dump_key("p/", key, several), "{key} {several}");
        }
    }

    #[test]
    fn any_database_name_is_one_safe_segment() {
        assert_eq!(database_segment("shop"), "shop");
        assert_eq!(database_segment("a.b-c_1"), "a.b-c_1");
        assert_eq!(database_segment("."), "%2E");
        assert_eq!(database_segment(".."), "%2E.");
        assert_eq!(database_segment(".roles"), "%2Eroles");
        assert_eq!(database_segment("a/b c%"), "a%2Fb%20c%25");
        assert_eq!(database_segment("é"), "%C3%A9");
        assert_eq!(database_prefix("p/", "x y"), "p/x%20y/");
        assert_ne!(database_segment(".roles"), ROLES_SEGMENT);
        for name in ["shop", ".", "a/b c%", "é", "%41"] {
            assert_eq!(segment_database(&database_segment(name)), name);
        }
    }

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
        let job = run_job_name(&cj, &run_now_id("any token at all"));
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
