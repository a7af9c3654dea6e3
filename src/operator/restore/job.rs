//! The restore Job, built from the spec and its resolved source alone.
//!
//! Its init container brings our binary into the database image; its one
//! container downloads the dump and loads it as it arrives (`load`: checked,
//! decrypted and decompressed on the way, committed only once the whole
//! object checked out), with no copy of the dump on the node. It writes a
//! one-line JSON result to its termination log, as the backup jobs do.

use crate::api::{BucketSpec, DatabaseRestore};
use crate::jobresult::Step;
use crate::names;
use crate::operator::Settings;
use crate::operator::pod::{self, DUMP_UID, DatabaseStep, Placement, TERMINATION_LOG};
use crate::operator::requests::Requests;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Where the dump is: the bucket, and the prefix "latest" searches.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub bucket: BucketSpec,
    pub prefix: String,
    /// The restore's ServiceAccount, or else its backup's.
    pub service_account: Option<String>,
    /// A backup in another namespace (`across`).
    pub across: Option<Across>,
    /// There, the object its locate Job chose, once it did.
    pub located: Option<Located>,
}

/// Where the locate Job of a restore across namespaces runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Across {
    pub namespace: String,
    pub backup: String,
    /// The backup's jobs' ServiceAccount, for keyless credentials.
    pub service_account: Option<String>,
}

/// The object a locate Job chose, its URLs, and why it chose it.
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    pub presigned: crate::jobresult::Presigned,
    pub chosen: String,
}

/// The restore's Job name (`names::restore_job_name`).
pub fn job_name(r: &DatabaseRestore) -> String {
    names::restore_job_name(&r.name_any(), r.metadata.uid.as_deref().unwrap_or_default())
}

fn labels(restore: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            names::LABEL_MANAGED_BY.to_string(),
            names::MANAGER.to_string(),
        ),
        (names::LABEL_RESTORE.to_string(), restore.to_string()),
        (names::LABEL_INSTANCE.to_string(), restore.to_string()),
        (
            names::LABEL_STEP.to_string(),
            Step::Restore.as_str().to_string(),
        ),
    ])
}

/// The restore Job, built from the spec and its resolved source alone.
pub fn restore_job(r: &DatabaseRestore, source: &Source, settings: &Settings) -> Job {
    let spec = &r.spec;
    // No copy of the dump: the scratch is the client's /tmp, bounded by scratchSize.
    let mut volumes = vec![pod::empty_dir("tmp", spec.scratch_size.clone())];
    let mut mounts = vec![pod::mount("tmp", "/tmp")];
    // Chosen in the backup's namespace: the pod reads that one object
    // through its URLs, and gets nothing else of that namespace.
    let chosen = source.located.as_ref().map(|l| {
        [
            format!("--key={}", l.presigned.key),
            format!("--termination-log={TERMINATION_LOG}"),
            format!("--chosen={}", l.chosen),
        ]
    });
    let flags_here = || {
        let (store_volumes, store_mounts) = pod::store_volumes(&source.bucket);
        let mut flags = vec![
            format!("--key={}", spec.key),
            format!("--prefix={}", source.prefix),
            format!("--termination-log={TERMINATION_LOG}"),
        ];
        flags.extend(spec.before.as_ref().map(|t| format!("--before={t}")));
        flags.extend(pod::download_args(&source.bucket));
        (flags, store_volumes, store_mounts)
    };
    let mut flags = match chosen {
        Some(chosen) => chosen.to_vec(),
        None => {
            let (flags, store_volumes, store_mounts) = flags_here();
            volumes.extend(store_volumes);
            mounts.extend(store_mounts);
            flags
        }
    };
    flags.extend(spec.overwrite.then(|| "--overwrite".to_string()));
    let (copy, mut load, binary) = DatabaseStep {
        name: "restore",
        subcommand: "load",
        db: &spec.target,
        flags,
        mounts,
        resources: spec.resources.clone(),
        requests: Requests::restore(spec.scratch_size.as_deref()),
    }
    .build(settings);
    volumes.push(binary);
    let env = match &source.located {
        Some(located) => super::across::presigned_env(located, spec.identity_secret.as_ref()),
        None => pod::download_env(
            &source.bucket,
            source.service_account.is_some(),
            spec.identity_secret.as_ref(),
        ),
    };
    load.env.get_or_insert_with(Vec::new).extend(env);
    let placement = Placement {
        node_selector: spec.node_selector.clone(),
        tolerations: spec.tolerations.clone(),
        affinity: None,
        service_account: source.service_account.clone(),
    };
    let pod = pod::job_pod(DUMP_UID, vec![copy], vec![load], volumes, placement);
    let labels = labels(&r.name_any());
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(r)),
            namespace: r.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![
                r.controller_owner_ref(&())
                    .expect("a DatabaseRestore read from the API has a name and uid"),
            ]),
            ..Default::default()
        },
        // A half-done restore is not retried blindly: the next attempt is a new resource.
        spec: Some(pod::job_spec(labels, pod, 0, spec.active_deadline_seconds)),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::pod::{BINARY, assert_golden};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn restore(extra: serde_json::Value) -> DatabaseRestore {
        let mut manifest = serde_json::json!({
            "apiVersion": "dbbackup.io/v1alpha1",
            "kind": "DatabaseRestore",
            "metadata": { "name": "back", "namespace": "shop", "uid": "5d2c0e0e-1f6b-4f55-9a51-0c7b0d7e4a21" },
            "spec": {
                "target": {
                    "engine": "postgres",
                    "host": "db.shop.svc",
                    "name": "orders_copy",
                    "credentialsSecret": { "name": "db-creds" }
                }
            }
        });
        for (k, v) in extra.as_object().unwrap() {
            manifest["spec"][k] = v.clone();
        }
        serde_json::from_value(manifest).unwrap()
    }

    /// The bucket of backup "orders" (with a CA bundle), plus `extra` fields.
    fn source(extra: serde_json::Value) -> Source {
        let mut bucket = serde_json::json!({ "secretRef": { "name": "s3-creds" }, "caBundle": { "name": "ca" } });
        for (k, v) in extra.as_object().unwrap() {
            bucket[k] = v.clone();
        }
        Source {
            bucket: serde_json::from_value(bucket).unwrap(),
            prefix: "shop/orders/".into(),
            service_account: None,
            across: None,
            located: None,
        }
    }

    fn settings() -> Settings {
        Settings {
            uploader_image: "ghcr.io/dbbackup-operator/dbbackup-operator:0.1.0".into(),
            notify_allowed: Default::default(),
            limit_ranged: Default::default(),
        }
    }

    #[test]
    fn the_identity_reaches_the_restore_from_its_secret() {
        let r = restore(
            serde_json::json!({ "backup": "orders", "identitySecret": { "name": "age-id" } }),
        );
        let job = restore_job(&r, &source(serde_json::json!({})), &settings());
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod::secret_source(&pod.containers[0], "DBBACKUP_AGE_IDENTITY"),
            ("age-id".into(), "identity".into())
        );
        assert!(
            pod.init_containers
                .iter()
                .flatten()
                .flat_map(|c| c.env.iter().flatten())
                .all(|e| e.name != "DBBACKUP_AGE_IDENTITY")
        );
    }

    /// Across namespaces the pod gets the URLs and the bucket's name, and no
    /// Secret of the store, no CA volume and no search flags.
    #[test]
    fn a_located_restore_reads_through_its_urls_alone() {
        let r = restore(serde_json::json!({ "backup": "orders", "backupNamespace": "prod" }));
        let mut source = source(serde_json::json!({}));
        source.located = Some(Located {
            presigned: crate::jobresult::Presigned {
                bucket: "backups".into(),
                key: "prod/shop/2026-03-01/datadump1.sql".into(),
                head: "https://s3/backups/k?X-Amz-Signature=h".into(),
                get: "https://s3/backups/k?X-Amz-Signature=g".into(),
            },
            chosen: "the newest dump under \"prod/shop/\"".into(),
        });
        let job = restore_job(&r, &source, &settings());
        let pod = job.spec.unwrap().template.spec.unwrap();
        let load = &pod.containers[0];
        let args = load.args.clone().unwrap();
        assert!(
            args.contains(&"--key=prod/shop/2026-03-01/datadump1.sql".to_string()),
            "{args:?}"
        );
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--prefix") || a.starts_with("--ca-bundle")),
            "{args:?}"
        );
        let env = load.env.clone().unwrap();
        // Only the target's own credentials come from a Secret.
        let secrets: Vec<_> = env
            .iter()
            .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|s| s.name.as_str())
            .collect();
        assert!(secrets.iter().all(|s| *s == "db-creds"), "{env:?}");
        let urls = env.iter().find(|e| e.name == "DBBACKUP_PRESIGNED").unwrap();
        assert!(urls.value.as_deref().unwrap().contains("X-Amz-Signature=g"));
        assert!(pod.volumes.unwrap().iter().all(|v| v.secret.is_none()));
    }

    #[test]
    fn golden_restore_job() {
        let r = restore(serde_json::json!({
            "backup": "orders", "overwrite": true, "scratchSize": "2Gi"
        }));
        let source = source(serde_json::json!({ "endpoint": "http://minio:9000" }));
        let job = restore_job(&r, &source, &settings());
        assert_golden("restore-job.yaml", &serde_yaml::to_string(&job).unwrap());
    }

    #[test]
    fn the_job_streams_the_dump_into_the_database_image_with_no_copy() {
        let r = restore(serde_json::json!({ "backup": "orders", "scratchSize": "20Gi" }));
        let source = source(serde_json::json!({}));
        let settings = settings();
        let job = restore_job(&r, &source, &settings);
        assert_eq!(job.metadata.name.as_deref(), Some("back-restore-5d2c0e0e"));
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        let inits = pod.init_containers.as_ref().unwrap();
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0].args.clone().unwrap()[0], "copy-binary");
        let load = &pod.containers[0];
        assert_eq!(load.image.as_deref(), Some("docker.io/library/postgres:17"));
        let args = load.args.clone().unwrap();
        assert_eq!(load.command, Some(vec![BINARY.to_string()]));
        assert_eq!(&args[..2], ["load", "--engine=postgres"]);
        for want in [
            "--key=latest",
            "--prefix=shop/orders/",
            "--ca-bundle=/etc/dbbackup/ca/ca.crt",
        ] {
            assert!(args.contains(&want.to_string()), "{want} in {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--file")), "{args:?}");
        let env: Vec<&str> = load.env.iter().flatten().map(|e| e.name.as_str()).collect();
        for want in ["PGPASSWORD", "DB_USER", "AWS_ACCESS_KEY_ID"] {
            assert!(env.contains(&want), "{want} in {env:?}");
        }
        assert!(
            load.env
                .iter()
                .flatten()
                .all(|e| e.value.as_deref().is_none_or(|v| !v.contains("secret")))
        );
        // The only scratch is the client's /tmp, bounded by scratchSize.
        let volumes = pod.volumes.unwrap();
        let scratch: Vec<_> = volumes.iter().filter(|v| v.empty_dir.is_some()).collect();
        assert_eq!(scratch.len(), 2, "tmp and the binary's: {volumes:?}");
        assert_eq!(scratch[0].name, "tmp");
        assert_eq!(
            scratch[0].empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("20Gi".into()))
        );
    }
}
