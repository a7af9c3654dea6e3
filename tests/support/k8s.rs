//! What tests do against an apiserver, one way each: start a control plane
//! with our CRDs, make namespaces and Secrets, and wait for a condition or an
//! Event.

use super::controlplane::{ControlPlane, Options};
use super::process::wait_for;
use dbbackup_operator::api::{DatabaseBackup, DatabaseRestore};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

/// A control plane without a node, with the CRDs installed and `namespaces`
/// created, and an admin client.
pub async fn setup_with(opts: Options, namespaces: &[&str]) -> (ControlPlane, Client) {
    let cp = ControlPlane::start_with(opts).await;
    let client = cp.client().await;
    install_crd(&client).await;
    for ns in namespaces {
        create_namespace(&client, ns, &[]).await;
    }
    (cp, client)
}

/// `setup_with` for most tests: the apiserver alone, and namespace `ns`.
pub async fn setup(ns: &str) -> (ControlPlane, Client) {
    setup_with(Options::default(), &[ns]).await
}

/// Installs the checked-in CRDs from `crds/`, as `kubectl apply -f crds/` would, and
/// waits until they are established.
pub async fn install_crd(client: &Client) {
    for file in [
        "databasebackups.yaml",
        "databaserestores.yaml",
        "databaserestoregrants.yaml",
    ] {
        let path = format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(path).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &crd).await.unwrap();
        let name = crd.name_any();
        let established = await_condition(crds, &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .expect("CRD established within 30s")
            .unwrap();
    }
}

pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

pub async fn create_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(&PostParams::default(), &secret(name, data))
        .await
        .unwrap();
}

/// A resource of ours whose status carries conditions.
pub trait WithConditions: Resource + Clone + Debug + serde::de::DeserializeOwned {
    fn conditions(&self) -> &[Condition];
}

impl WithConditions for DatabaseBackup {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl WithConditions for DatabaseRestore {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

/// Waits until condition `type_` of `name` has `reason` (and `status`, when
/// given), and returns the resource.
pub async fn wait_condition<K: WithConditions>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    status: Option<&str>,
    reason: &str,
    timeout: Duration,
) -> K {
    let what = match status {
        Some(status) => format!("{name} {type_}={status} reason={reason}"),
        None => format!("{name} {type_} reason={reason}"),
    };
    wait_for(&what, timeout, || async {
        let k = api.get(name).await.ok()?;
        let c = k.conditions().iter().find(|c| c.type_ == type_)?;
        (c.reason == reason && status.is_none_or(|s| c.status == s)).then(|| k.clone())
    })
    .await
}

/// Waits until the resource's Ready condition has `status` and returns the resource.
pub async fn wait_ready(
    api: &Api<DatabaseBackup>,
    name: &str,
    status: &str,
    reason: &str,
) -> DatabaseBackup {
    wait_condition(
        api,
        name,
        "Ready",
        Some(status),
        reason,
        Duration::from_secs(60),
    )
    .await
}

/// Which Events a test looks for; a field left None matches any.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventFilter<'a> {
    /// The object the Event is about.
    pub object: Option<&'a str>,
    pub type_: Option<&'a str>,
    pub reason: Option<&'a str>,
}

impl<'a> EventFilter<'a> {
    /// Warning Events on `object` with `reason`.
    pub fn warning(object: &'a str, reason: &'a str) -> EventFilter<'a> {
        EventFilter {
            object: Some(object),
            type_: Some("Warning"),
            reason: Some(reason),
        }
    }

    /// Events of any type on `object`.
    pub fn on(object: &'a str) -> EventFilter<'a> {
        EventFilter {
            object: Some(object),
            ..Default::default()
        }
    }

    /// Events with `reason`, on any object.
    pub fn reason(reason: &'a str) -> EventFilter<'a> {
        EventFilter {
            reason: Some(reason),
            ..Default::default()
        }
    }

    pub fn matches(&self, e: &Event) -> bool {
        let is = |want: Option<&str>, got: Option<&str>| want.is_none_or(|w| got == Some(w));
        is(self.object, e.involved_object.name.as_deref())
            && is(self.type_, e.type_.as_deref())
            && is(self.reason, e.reason.as_deref())
    }
}

/// The Events in `ns` that `filter` matches, now.
pub async fn events(client: &Client, ns: &str, filter: EventFilter<'_>) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| filter.matches(e))
        .collect()
}

/// Waits until `filter` matches at least one Event in `ns`, and returns
/// those it matches.
pub async fn wait_events(
    client: &Client,
    ns: &str,
    filter: EventFilter<'_>,
    timeout: Duration,
) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("an Event {filter:?}"), timeout, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let matched: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| filter.matches(e))
            .collect();
        (!matched.is_empty()).then_some(matched)
    })
    .await
}

/// A kubeconfig that authenticates as ServiceAccount `ns/sa`, with a token
/// from the TokenRequest API: a user with exactly that account's rights.
pub fn token_kubeconfig(cp: &super::ControlPlane, ns: &str, sa: &str) -> std::path::PathBuf {
    let out = super::run_ok(
        cp.kubectl()
            .args(["create", "token", sa, "-n", ns, "--duration=1h"]),
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let admin = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap();
    let path = cp.dir().join(format!("{ns}-{sa}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: sa}}\ncurrent-context: c\n",
            cp.url,
            token.trim()
        ),
    )
    .unwrap();
    path
}
