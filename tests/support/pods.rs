//! Our pods on the real node, each reported once, in creation order, when it
//! has finished: its exit code and what its containers printed.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// One finished pod.
#[derive(Clone, Debug)]
pub struct RanPod {
    pub name: String,
    pub uid: String,
    pub step: String,
    pub exit_code: i32,
    /// The output of its init containers and its container, in that order.
    pub output: String,
    /// The node it ran on.
    pub node: String,
    /// When its termination was first seen in the apiserver.
    pub reported: Instant,
}

pub struct Pods {
    api: Api<Pod>,
    seen: HashSet<String>,
}

impl Pods {
    pub fn new(client: &Client, namespace: &str) -> Pods {
        Pods {
            api: Api::namespaced(client.clone(), namespace),
            seen: HashSet::new(),
        }
    }

    /// Waits until the next `count` pods of ours (oldest first) have finished.
    pub async fn finished(&mut self, count: usize, timeout: Duration) -> Vec<RanPod> {
        let deadline = Instant::now() + timeout;
        let mut done = vec![];
        while done.len() < count {
            let mut list = self
                .api
                .list(
                    &ListParams::default().labels("app.kubernetes.io/managed-by=dbbackup-operator"),
                )
                .await
                .unwrap()
                .items;
            list.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
            let next = list
                .into_iter()
                .find(|p| !self.seen.contains(&p.uid().unwrap()));
            match next {
                Some(pod) if finished(&pod) => {
                    self.seen.insert(pod.uid().unwrap());
                    done.push(self.ran(pod).await);
                    continue;
                }
                Some(pod) if Instant::now() >= deadline => {
                    // What the pod got to, for the failure message.
                    let so_far = self.ran(pod.clone()).await.output;
                    panic!(
                        "timed out waiting for pods to finish: {} of {count} finished; {} still runs, \
                         its output so far:\n{so_far}\nits status: {:?}",
                        done.len(),
                        pod.name_any(),
                        pod.status
                    );
                }
                None => assert!(
                    Instant::now() < deadline,
                    "timed out waiting for pods to finish: {} of {count} finished, no other pod of ours",
                    done.len()
                ),
                Some(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done
    }

    async fn ran(&self, pod: Pod) -> RanPod {
        let status = pod.status.clone().unwrap_or_default();
        let statuses: Vec<ContainerStatus> = status
            .init_container_statuses
            .unwrap_or_default()
            .into_iter()
            .chain(status.container_statuses.unwrap_or_default())
            .collect();
        // The first container that failed decides, as it stopped the pod.
        let exit_code = statuses
            .iter()
            .filter_map(|s| s.state.as_ref()?.terminated.as_ref())
            .map(|t| t.exit_code)
            .find(|c| *c != 0)
            .unwrap_or(0);
        let mut output = String::new();
        for s in &statuses {
            let params = LogParams {
                container: Some(s.name.clone()),
                ..Default::default()
            };
            let logs = self.api.logs(&pod.name_any(), &params).await;
            output += &logs.unwrap_or_else(|e| format!("(no logs of {}: {e})\n", s.name));
            let terminated = s.state.as_ref().and_then(|st| st.terminated.as_ref());
            if let Some(t) = terminated.filter(|t| t.exit_code != 0) {
                output += &format!(
                    "{} exited {} ({}): {}\n",
                    s.name,
                    t.exit_code,
                    t.reason.as_deref().unwrap_or_default(),
                    t.message.as_deref().unwrap_or_default()
                );
            }
        }
        RanPod {
            name: pod.name_any(),
            uid: pod.uid().unwrap(),
            step: pod
                .labels()
                .get("dbbackup.io/step")
                .cloned()
                .unwrap_or_default(),
            exit_code,
            output,
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            reported: Instant::now(),
        }
    }
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}
