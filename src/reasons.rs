//! Every reason the system gives, in one place: the reasons of conditions and
//! Events the operator writes, and the failure reasons a job step puts in its
//! result for the operator to pass on. Users script against them (`kubectl
//! wait`, alerts, dashboards), so each is written once. The integration tests
//! spell them out as users see them, so that a change here fails a test.

// Ready: the backup's spec, its references and its children.
pub const RECONCILED: &str = "Reconciled";
pub const API_ERROR: &str = "APIError";
pub const APPLY_FAILED: &str = "ApplyFailed";
/// A reconcile read a copy of the resource older than the last write.
pub const STALE_READ: &str = "StaleRead";
pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
pub const INVALID_TIME_ZONE: &str = "InvalidTimeZone";
pub const INVALID_RETENTION: &str = "InvalidRetention";
pub const INVALID_BUCKET_NAME: &str = "InvalidBucketName";
pub const INVALID_CA_BUNDLE: &str = "InvalidCABundle";
pub const INVALID_SSE_KEY: &str = "InvalidSSEKey";
pub const INVALID_AGE_KEY: &str = "InvalidAgeKey";
/// An SSE-C key or a web-identity token would travel over plain http.
pub const INSECURE_ENDPOINT: &str = "InsecureEndpoint";
/// spec.bucket.webIdentity.audience is one the apiserver accepts tokens for.
pub const APISERVER_AUDIENCE: &str = "APIServerAudience";
pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
pub const STORAGE_CLASS_NOT_FOUND: &str = "StorageClassNotFound";

// DumpSucceeded and UploadSucceeded, and their Events.
pub const DUMP_COMPLETED: &str = "DumpCompleted";
pub const DUMP_FAILED: &str = "DumpFailed";
/// Some databases of a backup of several failed to dump; the others did.
pub const SOME_DUMPS_FAILED: &str = "SomeDumpsFailed";
/// A finished dump replaced one that was not uploaded yet (an Event).
pub const DUMP_REPLACED: &str = "DumpReplaced";
pub const UPLOADED: &str = "Uploaded";
/// An upload proven only by reading the object back: the store's own
/// checksum was missing or wrong for the right bytes (an Event).
pub const PROVEN_BY_READ_BACK: &str = "ProvenByReadBack";
/// A dump whose uploads were sent but never proven, moved aside so that
/// newer dumps are sent (the UploadSucceeded reason, an Event).
pub const DUMP_STUCK: &str = "DumpStuck";
/// No dump is kept back unproven (the DumpsProven reason).
pub const ALL_PROVEN: &str = "AllProven";
pub const UPLOAD_FAILED: &str = "UploadFailed";
/// A Job of the step cannot create its pod: a ResourceQuota refuses it.
pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
/// A Job of the step cannot create its pod, refused for another reason.
pub const PODS_NOT_CREATED: &str = "PodsNotCreated";
/// A pod of the step cannot start by itself: its image cannot be pulled.
pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
/// A pod of the step cannot start by itself: the runtime cannot create its container.
pub const CONTAINER_NOT_STARTED: &str = "ContainerNotStarted";

// StagingNodeReady, and its Events: the node the staging volume is bound to.
pub const NODE_READY: &str = "NodeReady";
/// Dumps and uploads wait: the node is not Ready, or gone.
pub const NODE_NOT_READY: &str = "NodeNotReady";

// Stale, and the Events of a backup's life.
pub const UPLOADS_CURRENT: &str = "UploadsCurrent";
pub const NO_RECENT_UPLOAD: &str = "NoRecentUpload";
/// Stale=False while spec.suspend is true.
pub const SUSPENDED: &str = "Suspended";
pub const BACKUP_STALE: &str = "BackupStale";
pub const BACKUP_REQUESTED: &str = "BackupRequested";
/// A dump pod started running (the healthchecks "start" ping says so).
pub const DUMP_STARTED: &str = "DumpStarted";

// Notified: how the last message to each notification target went.
pub const NOTIFICATIONS_READY: &str = "NotificationsReady";
pub const NOTIFICATIONS_DELIVERED: &str = "NotificationsDelivered";
pub const NOTIFICATION_FAILED: &str = "NotificationFailed";

// Restored: where a restore stands.
pub const PENDING: &str = "Pending";
pub const RUNNING: &str = "Running";
pub const RESTORED: &str = "Restored";
pub const RESTORE_STARTED: &str = "RestoreStarted";
pub const BACKUP_NOT_FOUND: &str = "BackupNotFound";
/// A restore of a backup in another namespace that no DatabaseRestoreGrant there allows.
pub const GRANT_MISSING: &str = "GrantMissing";
/// A backup whose store cannot be read through a URL, restored across namespaces.
pub const NOT_ACROSS_NAMESPACES: &str = "NotAcrossNamespaces";
/// A restore across namespaces waits for its locate Job there.
pub const LOCATING: &str = "Locating";
/// A restore of "latest" from a backup of several databases names none.
pub const DATABASE_NOT_CHOSEN: &str = "DatabaseNotChosen";
pub const NO_SOURCE: &str = "NoSource";
pub const JOB_FAILED: &str = "JobFailed";
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
/// The restore's Job went before its result was seen; it is not run again.
pub const JOB_DISAPPEARED: &str = "JobDisappeared";

// Failures the restore's steps report (fetch, then load).
pub const DOWNLOAD_FAILED: &str = "DownloadFailed";
pub const OBJECT_NOT_FOUND: &str = "ObjectNotFound";
pub const NO_DUMP_FOUND: &str = "NoDumpFound";
pub const CHECKSUM_MISMATCH: &str = "ChecksumMismatch";
pub const CORRUPT_DUMP: &str = "CorruptDump";
/// An encrypted dump, and no identity, or one that is not among its recipients.
pub const DECRYPTION_FAILED: &str = "DecryptionFailed";
pub const TARGET_NOT_EMPTY: &str = "TargetNotEmpty";
pub const CONNECTION_FAILED: &str = "ConnectionFailed";
pub const RESTORE_FAILED: &str = "RestoreFailed";

// Verified: what the last restore drill found.
pub const VERIFIED: &str = "Verified";
/// The dump does not load into an empty server, or holds no table.
pub const NOT_RESTORABLE: &str = "NotRestorable";
/// The dump loads, but a check's answer is not what was expected.
pub const CHECK_FAILED: &str = "CheckFailed";
/// The drill itself could not run (its server did not start): no verdict on the dump.
pub const DRILL_FAILED: &str = "DrillFailed";

/// The reasons a restore step may write in its result. Anything else a pod
/// claims becomes the step's generic reason: the operator passes on only its own.
pub const RESTORE_STEP_FAILURES: [&str; 9] = [
    DOWNLOAD_FAILED,
    DECRYPTION_FAILED,
    OBJECT_NOT_FOUND,
    NO_DUMP_FOUND,
    CHECKSUM_MISMATCH,
    CORRUPT_DUMP,
    TARGET_NOT_EMPTY,
    CONNECTION_FAILED,
    RESTORE_FAILED,
];

/// The reasons a drill may write in its result (its fetch's too).
pub const VERIFY_STEP_FAILURES: [&str; 10] = [
    NOT_RESTORABLE,
    DECRYPTION_FAILED,
    DEADLINE_EXCEEDED,
    CHECK_FAILED,
    DRILL_FAILED,
    CHECKSUM_MISMATCH,
    CORRUPT_DUMP,
    DOWNLOAD_FAILED,
    OBJECT_NOT_FOUND,
    NO_DUMP_FOUND,
];
