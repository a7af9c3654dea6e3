//! The reconcile loop: spec → children (server-side apply) → status.

pub mod checks;
pub mod resources;
pub mod status;

use crate::api::DatabaseBackup;
use crate::metrics::Metrics;
use checks::{CheckError, Problem};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use resources::Settings;
use serde::Serialize;
use serde::de::DeserializeOwned;
use status::{Observed, READY};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{Instrument, info, info_span, warn};

/// The one field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "dbbackup-operator";

/// How often a healthy resource is looked at again without any event.
const RESYNC: Duration = Duration::from_secs(15 * 60);
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource itself needs fixing; retried with backoff so it heals by itself
    /// once, say, the missing Secret appears.
    #[error(transparent)]
    Invalid(#[from] Problem),
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot apply {kind} {name:?}: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
}

impl From<CheckError> for Error {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Problem(p) => Error::Invalid(p),
            CheckError::Kube(k) => Error::Kube(k),
        }
    }
}

impl Error {
    /// Label for the failure metric, and the Ready reason.
    pub fn reason(&self) -> &str {
        match self {
            Error::Invalid(p) => p.reason,
            Error::Kube(_) => "APIError",
            Error::Apply { .. } => "ApplyFailed",
        }
    }
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    reporter: Reporter,
    /// Consecutive failures per resource, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<DatabaseBackup>, u32>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        Context {
            client,
            settings,
            metrics,
            reporter: Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
            failures: Mutex::new(HashMap::new()),
        }
    }

    async fn publish(&self, db: &DatabaseBackup, type_: EventType, reason: &str, note: &str) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &db.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }
}

/// Exponential backoff: 2s, 4s, 8s … capped at 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(BACKOFF_MAX)
}

async fn apply<K>(api: Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            kind: K::kind(&Default::default()).to_string(),
            name,
            source,
        })?;
    Ok(())
}

async fn apply_children(db: &DatabaseBackup, ctx: &Context) -> Result<(), Error> {
    let ns = db.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    apply(pvcs, &resources::staging_pvc(db)).await?;
    apply(cronjobs.clone(), &resources::dump_cronjob(db)).await?;
    apply(cronjobs, &resources::upload_cronjob(db, &ctx.settings)).await?;
    Ok(())
}

async fn reconcile(db: Arc<DatabaseBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let outcome = async {
        checks::validate_spec(&db)?;
        checks::check_references(&db, &ctx.client).await?;
        apply_children(&db, &ctx).await
    }
    .await;

    let ready = match &outcome {
        Ok(()) => Observed::new(READY, true, "Reconciled", "children are up to date"),
        Err(Error::Invalid(p)) => Observed::new(READY, false, p.reason, p.message.clone()),
        Err(e) => Observed::new(READY, false, e.reason(), e.to_string()),
    };
    update_status(&db, &ctx, &ready).await?;

    let key = ObjectRef::from_obj(&*db);
    match outcome {
        Ok(()) => {
            ctx.failures.lock().unwrap().remove(&key);
            Ok(Action::requeue(RESYNC))
        }
        Err(e) => Err(e),
    }
}

/// Writes the status through the status subresource, only when it changed.
async fn update_status(db: &DatabaseBackup, ctx: &Context, ready: &Observed) -> Result<(), Error> {
    let old = db.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    new.observed_generation = db.metadata.generation;
    status::set_condition(&mut new.conditions, ready, db.metadata.generation, &now);
    if new == old {
        return Ok(());
    }

    let api: Api<DatabaseBackup> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": DatabaseBackup::api_version(&()),
        "kind": DatabaseBackup::kind(&()),
        "status": new,
    });
    api.patch_status(
        &db.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;

    let was = status::find(&old.conditions, READY);
    let changed =
        was.is_none_or(|c| c.reason != ready.reason || (c.status == "True") != ready.status);
    if changed {
        let type_ = if ready.status {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.publish(db, type_, &ready.reason, &ready.message).await;
    }
    Ok(())
}

fn error_policy(db: Arc<DatabaseBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.reason());
    let key = ObjectRef::from_obj(&*db);
    let mut failures = ctx.failures.lock().unwrap();
    let attempt = failures.entry(key).or_insert(0);
    *attempt += 1;
    let delay = backoff(*attempt);
    warn!(name = %db.name_any(), namespace = ?db.namespace(), reason = error.reason(), %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Where the controller looks: the whole cluster, or one namespace.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until the stream ends (shutdown).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let backups = api::<DatabaseBackup>(&client, ns);
    let children = watcher::Config::default().labels(&format!(
        "{}={}",
        resources::LABEL_MANAGED_BY,
        resources::MANAGED_BY
    ));

    // Status writes bump resourceVersion but not generation; reconciling on them
    // would only redo work. Annotations pass, for the "back up now" trigger.
    let (reader, writer) = reflector::store();
    let triggers = watcher(backups, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            Default::default(),
        );

    Controller::for_stream(triggers, reader)
        .owns(api::<CronJob>(&client, ns), children.clone())
        .owns(api::<PersistentVolumeClaim>(&client, ns), children)
        .shutdown_on_signal()
        .run(
            |db, ctx| {
                let span = info_span!("reconcile", namespace = db.namespace().unwrap_or_default(), name = %db.name_any());
                reconcile(db, ctx).instrument(span)
            },
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                match e {
                    kube::runtime::controller::Error::ReconcilerFailed(..) => {}
                    other => warn!(error = %other, "controller error"),
                }
            }
        })
        .await;
    info!("controller stopped");
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
