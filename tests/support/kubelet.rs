//! A stand-in for the kubelet, which the test bed has none of: it runs each
//! pod of ours exactly as its spec says, on this machine, and reports the
//! result back to the apiserver the way a kubelet does.
//!
//! - command and args as written, with the image's entrypoint for our own
//!   image being the operator binary, and the test bed's tools on PATH in
//!   place of the database image's;
//! - env values, and `secretKeyRef` resolved from the real Secrets;
//! - volume mounts mapped to host directories (one per PVC, shared between
//!   pods), rewritten wherever a mount path appears in args or env values;
//! - the termination message read from the mapped terminationMessagePath,
//!   falling back to the output's tail under FallbackToLogsOnError;
//! - init containers first, in order; the first that fails fails the pod.

use super::process::bin_dir;
use k8s_openapi::api::core::v1::{Container, Pod, Secret, Volume};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One pod the stand-in ran.
#[derive(Clone, Debug)]
pub struct RanPod {
    pub name: String,
    pub uid: String,
    pub step: String,
    pub exit_code: i32,
    pub output: String,
    /// When its terminated status reached the apiserver.
    pub reported: Instant,
}

pub struct FakeKubelet {
    client: Client,
    namespace: String,
    root: tempfile::TempDir,
    handled: HashSet<String>,
}

impl FakeKubelet {
    pub fn new(client: &Client, namespace: &str) -> FakeKubelet {
        FakeKubelet {
            client: client.clone(),
            namespace: namespace.into(),
            root: tempfile::Builder::new()
                .prefix("dbbackup-kubelet-")
                .tempdir()
                .unwrap(),
            handled: HashSet::new(),
        }
    }

    /// The host directory standing in for a PVC.
    pub fn pvc_dir(&self, claim: &str) -> PathBuf {
        self.root.path().join("pvc").join(claim)
    }

    /// Waits for `count` new pods of ours (in creation order) and runs them.
    pub async fn run_pods(&mut self, count: usize, timeout: Duration) -> Vec<RanPod> {
        let deadline = Instant::now() + timeout;
        let mut ran = vec![];
        while ran.len() < count {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for pods to run: ran {} of {count}",
                ran.len()
            );
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
            let mut list = pods
                .list(
                    &ListParams::default().labels("app.kubernetes.io/managed-by=dbbackup-operator"),
                )
                .await
                .unwrap()
                .items;
            list.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
            let pending: Vec<Pod> = list
                .into_iter()
                .filter(|p| !self.handled.contains(&p.uid().unwrap()))
                .collect();
            if pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            for pod in pending.into_iter().take(count - ran.len()) {
                self.handled.insert(pod.uid().unwrap());
                ran.push(self.run(&pod).await);
            }
        }
        ran
    }

    async fn secret(&self, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .unwrap()
    }

    /// Host directories for the container's mounts, longest mount path first.
    async fn mounts(&self, pod: &Pod, c: &Container) -> Vec<(String, PathBuf)> {
        let uid = pod.uid().unwrap();
        let volumes: Vec<Volume> = pod
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .clone()
            .unwrap_or_default();
        let mut mounts = vec![];
        for vm in c.volume_mounts.iter().flatten() {
            let v = volumes
                .iter()
                .find(|v| v.name == vm.name)
                .expect("mounted volume exists");
            let host = if let Some(pvc) = &v.persistent_volume_claim {
                self.pvc_dir(&pvc.claim_name)
            } else if let Some(secret) = &v.secret {
                let dir = self.root.path().join("secrets").join(&uid).join(&v.name);
                std::fs::create_dir_all(&dir).unwrap();
                let name = secret.secret_name.as_deref().unwrap();
                let s = self
                    .secret(name)
                    .await
                    .expect("secret volume source exists");
                for (k, val) in s.data.unwrap_or_default() {
                    std::fs::write(dir.join(k), val.0).unwrap();
                }
                dir
            } else {
                self.root.path().join("empty").join(&uid).join(&v.name)
            };
            std::fs::create_dir_all(&host).unwrap();
            mounts.push((vm.mount_path.clone(), host));
        }
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        mounts
    }

    async fn env(&self, c: &Container, map: &dyn Fn(&str) -> String) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for e in c.env.iter().flatten() {
            if let Some(v) = &e.value {
                env.insert(e.name.clone(), map(v));
            } else if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            {
                let value = self
                    .secret(&r.name)
                    .await
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(&r.key).cloned());
                match value {
                    Some(v) => {
                        env.insert(e.name.clone(), String::from_utf8(v.0).unwrap());
                    }
                    None => assert_eq!(
                        r.optional,
                        Some(true),
                        "secretKeyRef {}/{} missing",
                        r.name,
                        r.key
                    ),
                }
            }
        }
        env
    }

    /// Runs the pod's init containers in order, then (if all succeeded) its
    /// first container, and reports every container's state as a kubelet does.
    async fn run(&self, pod: &Pod) -> RanPod {
        let spec = pod.spec.as_ref().unwrap();
        let mut init_statuses = vec![];
        let mut output = String::new();
        let mut init_failed = None;
        for c in spec.init_containers.iter().flatten() {
            let ran = self.run_container(pod, c).await;
            output += &ran.output;
            init_statuses.push(ran.status());
            if ran.code != 0 {
                init_failed = Some(ran.code);
                break;
            }
        }
        let main = &spec.containers[0];
        let (code, main_status, started) = match init_failed {
            Some(code) => (
                code,
                serde_json::json!({
                    "name": main.name,
                    "image": main.image.clone().unwrap_or_default(),
                    "imageID": "",
                    "ready": false,
                    "restartCount": 0,
                    "started": false,
                    "state": { "waiting": { "reason": "PodInitializing" } }
                }),
                k8s_openapi::jiff::Timestamp::now(),
            ),
            None => {
                let ran = self.run_container(pod, main).await;
                output += &ran.output;
                (ran.code, ran.status(), ran.started)
            }
        };
        let mut status = serde_json::json!({ "status": {
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "startTime": started,
            "containerStatuses": [main_status]
        }});
        if !init_statuses.is_empty() {
            status["status"]["initContainerStatuses"] = init_statuses.into();
        }
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .unwrap();
        RanPod {
            name: pod.name_any(),
            uid: pod.uid().unwrap(),
            step: pod
                .labels()
                .get("dbbackup.io/step")
                .cloned()
                .unwrap_or_default(),
            exit_code: code,
            output,
            reported: Instant::now(),
        }
    }

    async fn run_container(&self, pod: &Pod, c: &Container) -> ContainerRun {
        let uid = pod.uid().unwrap();
        let mut mounts = self.mounts(pod, c).await;
        let term_path = c
            .termination_message_path
            .clone()
            .unwrap_or("/dev/termination-log".into());
        let term_host = self
            .root
            .path()
            .join("termination")
            .join(&uid)
            .join(&c.name);
        std::fs::create_dir_all(term_host.parent().unwrap()).unwrap();
        mounts.push((term_path, term_host.clone()));
        let map = |s: &str| -> String {
            for (mount, host) in &mounts {
                if s == mount {
                    return host.display().to_string();
                }
                if let Some(rest) = s.strip_prefix(&format!("{mount}/")) {
                    return host.join(rest).display().to_string();
                }
                // --flag=/mount/path
                if let Some((flag, value)) = s.split_once('=')
                    && (value == mount || value.starts_with(&format!("{mount}/")))
                {
                    return format!("{flag}={}", map_plain(value, mount, host));
                }
            }
            s.to_string()
        };
        let env = self.env(c, &map).await;
        let args: Vec<String> = c.args.iter().flatten().map(|a| map(a)).collect();
        let (program, mut argv) = match &c.command {
            Some(cmd) => (
                cmd[0].clone(),
                cmd[1..].iter().map(|a| map(a)).collect::<Vec<_>>(),
            ),
            // Our image's entrypoint is the operator binary.
            None => (env!("CARGO_BIN_EXE_dbbackup-operator").to_string(), vec![]),
        };
        argv.extend(args);

        let started = k8s_openapi::jiff::Timestamp::now();
        let out = tokio::process::Command::new(&program)
            .args(&argv)
            .env_clear()
            .envs(&env)
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir().display()),
            )
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let code = out.status.code().unwrap_or(137);
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut message = std::fs::read(&term_host)
            .map(|m| String::from_utf8_lossy(&m[..m.len().min(4096)]).to_string())
            .unwrap_or_default();
        if message.is_empty()
            && code != 0
            && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
        {
            let tail: Vec<&str> = output.lines().rev().take(80).collect();
            message = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            message = message
                .chars()
                .rev()
                .take(2048)
                .collect::<String>()
                .chars()
                .rev()
                .collect();
        }
        ContainerRun {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            code,
            output,
            message,
            started,
            finished: k8s_openapi::jiff::Timestamp::now(),
        }
    }
}

/// One container's run, as its status reports it.
struct ContainerRun {
    name: String,
    image: String,
    code: i32,
    output: String,
    message: String,
    started: k8s_openapi::jiff::Timestamp,
    finished: k8s_openapi::jiff::Timestamp,
}

impl ContainerRun {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "started": false,
            "state": { "terminated": {
                "exitCode": self.code,
                "reason": if self.code == 0 { "Completed" } else { "Error" },
                "message": self.message,
                "startedAt": self.started,
                "finishedAt": self.finished,
            }}
        })
    }
}

fn map_plain(value: &str, mount: &str, host: &Path) -> String {
    if value == mount {
        host.display().to_string()
    } else {
        host.join(&value[mount.len() + 1..]).display().to_string()
    }
}
