//! The operator as users run it: `helm install` of charts/dbbackup-operator
//! with the locally built image, its own ServiceAccount and RBAC, on the real
//! node, watching one test's namespace.

use super::cluster::Cluster;
use super::node::OPERATOR_IMAGE;
use super::process::run_ok;
use super::process::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dbbackup-operator");

pub struct HelmOperator {
    cluster: Arc<Cluster>,
    pub ns: String,
    pub release: String,
}

impl HelmOperator {
    /// Installs the chart into `ns`, watching `ns`, with `sets` (helm's
    /// `--set`), and waits until its pods are Ready.
    pub fn install(cluster: &Arc<Cluster>, ns: &str, sets: &[&str]) -> HelmOperator {
        let args: Vec<&str> = sets.iter().flat_map(|s| ["--set", s]).collect();
        HelmOperator::install_with(cluster, ns, &args)
    }

    /// As `install`, with any of helm's value arguments (`--set-json`, say).
    pub fn install_with(cluster: &Arc<Cluster>, ns: &str, args: &[&str]) -> HelmOperator {
        let (repository, tag) = OPERATOR_IMAGE.rsplit_once(':').unwrap();
        // Release names are per test: the chart's ClusterRoles carry them.
        let release = format!("dbb-{}", ns.rsplit('-').next().unwrap());
        let mut helm = cluster.cp.helm();
        helm.args(["install", &release, CHART, "-n", ns, "--skip-crds"])
            .args(["--wait", "--timeout", "3m"])
            .args(["--set", &format!("image.repository={repository}")])
            .args(["--set", &format!("image.tag={tag}")])
            .args(["--set", &format!("watchNamespace={ns}")])
            .args(["--set", "logFormat=text"])
            .args(args);
        run_ok(&mut helm);
        HelmOperator {
            cluster: cluster.clone(),
            ns: ns.into(),
            release,
        }
    }

    pub fn deployment(&self) -> String {
        format!("{}-dbbackup-operator", self.release)
    }

    fn selector(&self) -> String {
        format!("app.kubernetes.io/instance={}", self.release)
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut cmd = self.cluster.cp.kubectl();
        cmd.args(["-n", &self.ns]).args(args);
        String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned()
    }

    /// Scales the Deployment and waits until exactly `replicas` pods run Ready.
    pub async fn scale(&self, client: &kube::Client, replicas: usize) {
        self.kubectl(&[
            "scale",
            "deployment",
            &self.deployment(),
            &format!("--replicas={replicas}"),
        ]);
        wait_for(
            &format!("{replicas} ready operator pods"),
            Duration::from_secs(120),
            || async {
                let pods = self.pods(client).await;
                (pods.len() == replicas && pods.iter().all(ready)).then_some(())
            },
        )
        .await;
    }

    /// The operator's pods that are not being deleted.
    pub async fn pods(&self, client: &kube::Client) -> Vec<Pod> {
        Api::<Pod>::namespaced(client.clone(), &self.ns)
            .list(&ListParams::default().labels(&self.selector()))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Everything its pods logged, as `kubectl logs` shows it.
    pub fn logs(&self) -> String {
        self.kubectl(&[
            "logs",
            "-l",
            &self.selector(),
            "--all-containers",
            "--tail=-1",
            "--prefix",
        ])
    }

    /// `name` from the /metrics of `pod`, fetched from the host at the pod's IP.
    pub fn metric(pod: &Pod, name: &str) -> Option<u64> {
        let ip = pod.status.as_ref()?.pod_ip.clone()?;
        let (_, body) = super::process::http_get_on(&ip, 8080, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))?
            .trim()
            .parse()
            .ok()
    }
}

/// Who holds the operator's Lease in `leases` now.
pub async fn lease_holder(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
) -> Option<String> {
    leases
        .get("dbbackup-operator")
        .await
        .ok()?
        .spec?
        .holder_identity
}

pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Deletes a pod at once, as a node failure or `kubectl delete --force` would.
pub fn kill_pod(cluster: &Cluster, ns: &str, name: &str) {
    run_ok(
        Command::new(super::process::bin("kubectl"))
            .env("KUBECONFIG", &cluster.cp.kubeconfig)
            .args([
                "delete",
                "pod",
                name,
                "-n",
                ns,
                "--grace-period=0",
                "--force",
            ]),
    );
}
