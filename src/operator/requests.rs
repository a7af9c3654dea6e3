//! The resource requests our containers make when the spec names none.
//!
//! Under a ResourceQuota on requests and no LimitRange to fill them in, a pod
//! without requests is refused at creation, and its Job would only fail at
//! its deadline, hours later. So every container asks for a little: what
//! the bench measured of our steps' peak RSS (`bench/results.md`: upload
//! 27 MiB, fetch and load 56 MiB, drill 62 MiB, plus the database's own
//! tool or server), rounded up. No limits are set: a dump's memory and CPU
//! depend on the database, and a limit would kill or throttle a large one.
//! Ephemeral storage is requested so that the scheduler places a pod where
//! its scratch fits: the logs for most, the restore's and drill's scratch
//! volumes for those two.
//!
//! A resource a LimitRange in the namespace speaks of is left to it, as
//! before these defaults: it fills in its own defaults, and ours could sit
//! above its default limit or below its minimum, and be refused.

use k8s_openapi::api::core::v1::{LimitRange, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeSet;

/// The resources `ranges` (a namespace's LimitRanges) say anything of for
/// containers or pods: their defaults, minimums, maximums or ratios.
pub(crate) fn governed_by<'a>(
    ranges: impl IntoIterator<Item = &'a LimitRange>,
) -> BTreeSet<String> {
    ranges
        .into_iter()
        .flat_map(|r| r.spec.iter().flat_map(|s| &s.limits))
        .filter(|item| item.type_ == "Container" || item.type_ == "Pod")
        .flat_map(|item| {
            let maps = [
                &item.default,
                &item.default_request,
                &item.min,
                &item.max,
                &item.max_limit_request_ratio,
            ];
            maps.into_iter().flatten().flat_map(|m| m.keys().cloned())
        })
        .collect()
}

/// The requests of one container.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Requests {
    cpu: &'static str,
    memory: &'static str,
    ephemeral: String,
}

impl Requests {
    /// Our binary alone (upload, locate): 27 to 53 MiB measured.
    pub fn step() -> Self {
        Self::of("50m", "64Mi", "64Mi")
    }

    /// Our binary beside the database's dump or load tool: 57 MiB measured.
    pub fn database_step() -> Self {
        Self::of("100m", "128Mi", "64Mi")
    }

    /// The restore's load, with `scratch` (its /tmp's bound) or 256Mi.
    pub fn restore(scratch: Option<&str>) -> Self {
        Requests {
            ephemeral: scratch.unwrap_or("256Mi").to_string(),
            ..Self::database_step()
        }
    }

    /// A drill: our binary (62 MiB) and a throwaway server with its default
    /// buffers, with `scratch` (the server's data) or 1Gi.
    pub fn drill(scratch: Option<&str>) -> Self {
        Requests {
            ephemeral: scratch.unwrap_or("1Gi").to_string(),
            ..Self::of("100m", "384Mi", "")
        }
    }

    /// The init container that copies our binary (about 40 MiB) into its volume.
    pub fn helper() -> Self {
        Self::of("10m", "16Mi", "64Mi")
    }

    fn of(cpu: &'static str, memory: &'static str, ephemeral: &str) -> Self {
        Requests {
            cpu,
            memory,
            ephemeral: ephemeral.to_string(),
        }
    }

    /// `user`'s resources, with these requests added for each resource it
    /// names neither as a request nor as a limit (a limit alone is the
    /// request too, and a default above it would be refused), and that a
    /// LimitRange does not govern (`limit_ranged`).
    pub fn under(
        &self,
        user: Option<&ResourceRequirements>,
        limit_ranged: &BTreeSet<String>,
    ) -> ResourceRequirements {
        let mut resources = user.cloned().unwrap_or_default();
        let named = |r: &ResourceRequirements, name: &str| {
            [&r.requests, &r.limits]
                .into_iter()
                .flatten()
                .any(|m| m.contains_key(name))
        };
        let wanted = [
            ("cpu", self.cpu),
            ("memory", self.memory),
            ("ephemeral-storage", self.ephemeral.as_str()),
        ];
        for (name, value) in wanted {
            if !named(&resources, name) && !limit_ranged.contains(name) {
                resources
                    .requests
                    .get_or_insert_with(Default::default)
                    .insert(name.to_string(), Quantity(value.to_string()));
            }
        }
        resources
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn requests(r: &ResourceRequirements) -> Vec<(String, String)> {
        let m = r.requests.clone().unwrap_or_default();
        m.into_iter().map(|(k, v)| (k, v.0)).collect()
    }

    #[test]
    fn without_resources_every_container_requests_a_little_and_limits_nothing() {
        let r = Requests::step().under(None, &BTreeSet::new());
        assert_eq!(
            requests(&r),
            [
                ("cpu", "50m"),
                ("ephemeral-storage", "64Mi"),
                ("memory", "64Mi")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(r.limits, None);
        let drill = Requests::drill(Some("20Gi")).under(None, &BTreeSet::new());
        assert_eq!(drill.requests.unwrap()["ephemeral-storage"].0, "20Gi");
        let restore = Requests::restore(None).under(None, &BTreeSet::new());
        assert_eq!(restore.requests.unwrap()["ephemeral-storage"].0, "256Mi");
    }

    #[test]
    fn what_the_user_names_is_kept_and_only_the_rest_is_added() {
        let user: ResourceRequirements = serde_json::from_value(serde_json::json!({
            "requests": { "cpu": "2" },
            "limits": { "memory": "32Mi" }
        }))
        .unwrap();
        let r = Requests::database_step().under(Some(&user), &BTreeSet::new());
        // A memory request of 128Mi above the 32Mi limit would be refused.
        assert_eq!(
            requests(&r),
            [("cpu", "2"), ("ephemeral-storage", "64Mi")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(r.limits, user.limits);
    }

    #[test]
    fn what_a_limit_range_governs_is_left_to_it() {
        let range: LimitRange = serde_json::from_value(serde_json::json!({
            "spec": { "limits": [
                { "type": "Container", "default": { "memory": "64Mi" }, "min": { "cpu": "200m" } },
                { "type": "PersistentVolumeClaim", "min": { "storage": "1Gi" } }
            ] }
        }))
        .unwrap();
        let governed = governed_by([&range]);
        assert_eq!(
            governed,
            BTreeSet::from(["cpu".to_string(), "memory".to_string()])
        );
        let r = Requests::database_step().under(None, &governed);
        assert_eq!(
            requests(&r),
            [("ephemeral-storage".to_string(), "64Mi".to_string())]
        );
    }

    /// Every container of the golden pod specs requests CPU, memory and
    /// ephemeral storage, so a ResourceQuota on requests admits them, and the
    /// restore requests the scratch its spec bounds.
    #[test]
    fn every_golden_pod_requests_ephemeral_storage_and_the_restore_its_scratch() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
        let mut seen = 0;
        for file in [
            "mariadb-children.yaml",
            "postgres-children.yaml",
            "restore-job.yaml",
        ] {
            let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(doc).unwrap();
                let template = match value["kind"].as_str() {
                    Some("CronJob") => &value["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                    Some("Job") => &value["spec"]["template"]["spec"],
                    _ => continue,
                };
                let containers = [&template["initContainers"], &template["containers"]];
                for c in containers
                    .into_iter()
                    .filter_map(|c| c.as_sequence())
                    .flatten()
                {
                    let requests = &c["resources"]["requests"];
                    for resource in ["cpu", "memory", "ephemeral-storage"] {
                        assert!(
                            requests[resource].as_str().is_some(),
                            "{file}: {} requests no {resource}",
                            c["name"].as_str().unwrap()
                        );
                    }
                    seen += 1;
                }
                if value["kind"] == "Job" {
                    let tmp = template["volumes"].as_sequence().unwrap().iter();
                    let bound =
                        tmp.clone().find(|v| v["name"] == "tmp").unwrap()["emptyDir"]["sizeLimit"]
                            .clone();
                    let load = &template["containers"][0]["resources"]["requests"];
                    assert_eq!(load["ephemeral-storage"], bound, "{file}");
                }
            }
        }
        assert_eq!(
            seen,
            2 * 3 + 2,
            "dump, copy and upload twice; restore and copy"
        );
    }
}
