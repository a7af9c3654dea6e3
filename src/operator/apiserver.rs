//! How the operator talks to the apiserver: server-side apply of children,
//! status writes, Events, Job creation, watches, and backoff after failures.
//! Every write signs with `names::MANAGER`.

use super::{Context, Error, applied};
use crate::names::MANAGER;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tracing::{info, warn};

const BACKOFF_FIRST: Duration = Duration::from_secs(2);

const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Exponential backoff: 2s, 4s, 8s … capped at 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(BACKOFF_MAX)
}

/// Server-side applies `obj`, unless the child's cached metadata shows that it
/// holds `obj` unchanged. Returns the child: the apiserver's answer, or `obj`
/// with the live metadata. `counts_generations`: the kind raises
/// `metadata.generation` on spec changes (CronJobs do, PVCs do not).
pub(crate) async fn apply<K>(
    api: Api<K>,
    obj: &K,
    cache: &Store<PartialObjectMeta<K>>,
    counts_generations: bool,
) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut desired = serde_json::to_value(obj).expect("a child serializes");
    applied::stamp(&mut desired);
    let key = ObjectRef::new(&name).within(obj.meta().namespace.as_deref().unwrap_or_default());
    match cache.get(&key) {
        Some(live) if applied::unchanged(&live.metadata, &desired) => {
            let mut child = obj.clone();
            *child.meta_mut() = live.metadata.clone();
            return Ok(child);
        }
        Some(_) => {}
        // A child we create starts at generation 1; recording that in the
        // same request saves a second write per child on a first rollout.
        None if counts_generations => applied::record_first_generation(&mut desired),
        None => {}
    }
    let failed = |source| Error::Apply {
        kind: K::kind(&Default::default()).to_string(),
        name: name.clone(),
        source,
    };
    let params = PatchParams::apply(MANAGER).force();
    let child = api
        .patch(&name, &params, &Patch::Apply(&desired))
        .await
        .map_err(failed)?;
    match applied::generation_record(child.meta()) {
        None => Ok(child),
        // A metadata change leaves the generation as it is.
        Some(record) => api
            .patch(
                &name,
                &PatchParams {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&record),
            )
            .await
            .map_err(failed),
    }
}

/// A resource of ours whose status the operator writes: namespaced, typed.
pub trait WithStatus:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + DeserializeOwned
    + Clone
    + std::fmt::Debug
{
}

impl<K> WithStatus for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
{
}

/// Writes `status` through the status subresource of `obj`, with our field manager.
pub(crate) async fn write_status<K: WithStatus>(
    obj: &K,
    ctx: &Context,
    status: &impl Serialize,
) -> Result<(), Error> {
    patch_status(obj, ctx, status, None).await
}

/// `write_status`, only while `obj` is as the reconcile read it (`Error::Stale`
/// otherwise). A reconcile that ran on a copy older than our own last write
/// (the cache lags it) would record, and say in Events, the same reports again.
pub async fn write_status_if_current<K: WithStatus>(
    obj: &K,
    ctx: &Context,
    status: &impl Serialize,
) -> Result<(), Error> {
    match patch_status(obj, ctx, status, obj.resource_version()).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => Err(Error::Stale),
        other => other,
    }
}

async fn patch_status<K: WithStatus>(
    obj: &K,
    ctx: &Context,
    status: &impl Serialize,
    resource_version: Option<String>,
) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(version) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Creates `job` (logged as "started <what>"); one of that name that already exists is fine (`None`):
/// our names make a second create of the same run a no-op.
pub(crate) async fn create_job(ctx: &Context, job: &Job, what: &str) -> Result<Option<Job>, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    match jobs.create(&PostParams::default(), job).await {
        Ok(created) => {
            info!(job = %job.name_any(), "started {what}");
            Ok(Some(created))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// The resource a Pod or Job of ours belongs to: named by its `label`, in its namespace.
pub(crate) fn labelled_owner<K, O>(obj: &K, label: &str) -> Option<ObjectRef<O>>
where
    K: Resource,
    O: Resource<DynamicType = ()>,
{
    let name = obj.labels().get(label)?;
    Some(ObjectRef::new(name).within(&obj.namespace()?))
}

impl Context {
    /// Publishes an Event about `obj`; a failure to publish is logged, never
    /// an error of the reconcile.
    pub(crate) async fn publish<K>(&self, obj: &K, type_: EventType, reason: &str, note: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }
}

/// Counts the failure and requeues with backoff by the resource's consecutive failures.
pub(crate) fn backoff_after<K>(
    obj: &K,
    error: &Error,
    ctx: &Context,
    failures: &Mutex<HashMap<ObjectRef<K>, u32>>,
) -> Action
where
    K: Resource<DynamicType = ()>,
{
    if let Error::Stale = error {
        // Not a failure: the watch brings the newer copy, and this runs again on it.
        return Action::requeue(Duration::from_millis(500));
    }
    ctx.metrics.reconcile_failed(error.reason());
    let mut failures = failures.lock().unwrap();
    let attempt = failures.entry(ObjectRef::from_obj(obj)).or_insert(0);
    *attempt += 1;
    let delay = backoff(*attempt);
    warn!(kind = %K::kind(&()), name = %obj.name_any(), namespace = ?obj.namespace(), reason = error.reason(), %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Logs what a controller's stream yields other than a reconcile error
/// (those are logged by the error policies).
pub(crate) async fn log_controller_error<K, E>(
    result: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E, watcher::Error>>,
) where
    K: Resource,
    E: std::error::Error + 'static,
{
    match result {
        Ok(_) | Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
        Err(other) => warn!(error = %other, "controller error"),
    }
}

/// Where the controller looks: the whole cluster, or one namespace.
pub(crate) fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The objects `config` selects, without their managedFields, which the
/// operator never reads and which would double the memory of its caches.
pub(crate) fn watch<K>(
    api: Api<K>,
    config: &watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(api, config.clone())
        .default_backoff()
        .modify(|obj| obj.managed_fields_mut().clear())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(20), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
