//! What kind of S3 store the bucket is in (`spec.bucket.profile`), and what
//! that changes: how an upload's checksums are sent and whether the store's
//! answer to `If-None-Match` is believed. A profile changes how an upload is
//! proven, never whether.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kind of store. Unset: `aws` without an endpoint, else `generic`.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum StoreProfile {
    Aws,
    Minio,
    R2,
    B2,
    Gcs,
    Ceph,
    Seaweedfs,
    Generic,
}

/// How an upload carries its checksums. Only headers: a trailer
/// (`aws-chunked`) is never sent to a store with an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksums {
    /// Every part its CRC64/NVME, and the store keeps the whole object's.
    PerPartAndWhole,
    /// No checksum header at all: Content-MD5 on each request, and the
    /// MD5 ETag is the proof, or where the store's ETag is no MD5, the
    /// object read back (R2 refuses CRC64/NVME on parts, B2 once refused
    /// any checksum header, GCS's XML API keeps no CRC64/NVME).
    Md5Only,
}

/// Whether the store's answer to `If-None-Match: *` keeps an existing
/// object from being replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conditional {
    /// Documented and tested: the answer is believed.
    Trusted,
    /// Asked once per upload, on a probe object of our own.
    Probed,
    /// Not honoured: each key is checked (HEAD) before it is written.
    Untrusted,
}

impl StoreProfile {
    /// The profile of a store given only its endpoint (or none: AWS).
    pub fn default_for(endpoint: Option<&str>) -> StoreProfile {
        match endpoint {
            None => StoreProfile::Aws,
            Some(_) => StoreProfile::Generic,
        }
    }

    pub fn checksums(self) -> Checksums {
        match self {
            StoreProfile::R2 | StoreProfile::B2 | StoreProfile::Gcs => Checksums::Md5Only,
            _ => Checksums::PerPartAndWhole,
        }
    }

    pub fn conditional(self) -> Conditional {
        match self {
            StoreProfile::Aws | StoreProfile::Minio | StoreProfile::R2 => Conditional::Trusted,
            StoreProfile::B2 | StoreProfile::Gcs => Conditional::Untrusted,
            StoreProfile::Ceph | StoreProfile::Seaweedfs | StoreProfile::Generic => {
                Conditional::Probed
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StoreProfile::Aws => "aws",
            StoreProfile::Minio => "minio",
            StoreProfile::R2 => "r2",
            StoreProfile::B2 => "b2",
            StoreProfile::Gcs => "gcs",
            StoreProfile::Ceph => "ceph",
            StoreProfile::Seaweedfs => "seaweedfs",
            StoreProfile::Generic => "generic",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_changes_how_an_upload_is_proven_never_whether() {
        assert_eq!(StoreProfile::default_for(None), StoreProfile::Aws);
        let generic = StoreProfile::default_for(Some("http://store:9000"));
        assert_eq!(generic, StoreProfile::Generic);
        assert_eq!(generic.conditional(), Conditional::Probed);
        assert_eq!(StoreProfile::R2.checksums(), Checksums::Md5Only);
        assert_eq!(StoreProfile::Minio.checksums(), Checksums::PerPartAndWhole);
        assert_eq!(StoreProfile::Gcs.conditional(), Conditional::Untrusted);
        // The flag the pods get parses back to the profile.
        use clap::ValueEnum as _;
        for p in StoreProfile::value_variants() {
            assert_eq!(StoreProfile::from_str(p.as_str(), false), Ok(*p));
            let json = serde_json::to_string(p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
    }
}
