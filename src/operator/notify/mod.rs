//! Notifications. A reconcile hands over what it recorded (a failed run, a
//! confirmed upload, staleness, a failed drill, a dump that started) once the
//! status holding it is written; one task per target delivers them in order,
//! with retries, so a slow or dead receiver never holds up a reconcile. How
//! the last delivery to each target went comes back as the Notified condition,
//! through a reconcile the task asks for: the status keeps one writer.

mod message;

pub use message::{Message, Notice, check_url, message};

use super::conditions::{NOTIFIED, Observed};
use super::egress::{self, Allowed};
use crate::api::{DatabaseBackup, NotifyTarget};
use crate::reasons;
use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::runtime::reflector::ObjectRef;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How deliveries are retried: after each delay, once more.
#[derive(Clone, Debug)]
pub struct Retry {
    pub delays: Vec<Duration>,
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            delays: [1, 2, 4, 8].map(Duration::from_secs).to_vec(),
            timeout: Duration::from_secs(10),
        }
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector<egress::Resolver>>;
type Key = ObjectRef<DatabaseBackup>;

/// Occurrences remembered per backup, so a reconcile that runs on an older
/// cached status sends nothing twice.
const SENT_KEPT: usize = 256;

/// The deliveries of every backup, and how each target's last one went.
pub struct Notifier {
    http: Client<Https, Full<Bytes>>,
    allowed: Allowed,
    retry: Retry,
    backups: Mutex<HashMap<Key, Backup>>,
    wake: UnboundedSender<Key>,
}

#[derive(Default)]
struct Backup {
    sent: VecDeque<String>,
    targets: BTreeMap<String, Target>,
}

struct Target {
    queue: UnboundedSender<Message>,
    task: tokio::task::AbortHandle,
    /// Why the target has no URL now.
    problem: Option<String>,
    /// How the last delivery went.
    last: Option<Result<(), String>>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Notifier {
    /// A notifier, and the stream of backups whose Notified condition changed.
    /// A notifier that sends to internal addresses only where `allowed` says.
    pub fn new(retry: Retry, allowed: Allowed) -> (Arc<Notifier>, UnboundedReceiver<Key>) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut http = HttpConnector::new_with_resolver(egress::Resolver(allowed.clone()));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .expect("the TLS provider's defaults")
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let (wake, woken) = unbounded();
        let notifier = Notifier {
            http: Client::builder(TokioExecutor::new()).build(https),
            allowed,
            retry,
            backups: Mutex::new(HashMap::new()),
            wake,
        };
        (Arc::new(notifier), woken)
    }

    /// Takes the backup's targets as the spec has them now, with each one's
    /// URL or why it has none (a missing Secret, a key that holds no URL).
    pub fn configure(
        self: &Arc<Self>,
        key: &Key,
        targets: &[NotifyTarget],
        urls: &HashMap<String, Result<String, String>>,
    ) {
        let mut backups = self.backups.lock().unwrap();
        let backup = backups.entry(key.clone()).or_default();
        backup
            .targets
            .retain(|name, _| targets.iter().any(|t| t.name == *name));
        for t in targets {
            let target = backup
                .targets
                .entry(t.name.clone())
                .or_insert_with(|| self.start(key, &t.name));
            target.problem = urls.get(&t.name).and_then(|u| u.clone().err());
        }
    }

    /// Queues each notice not sent before for every target that wants it and
    /// has a URL.
    pub fn send(
        &self,
        key: &Key,
        targets: &[NotifyTarget],
        urls: &HashMap<String, Result<String, String>>,
        notices: &[Notice],
    ) {
        let mut backups = self.backups.lock().unwrap();
        let Some(backup) = backups.get_mut(key) else {
            return;
        };
        let (ns, name) = (key.namespace.clone().unwrap_or_default(), &key.name);
        for n in notices {
            if backup.sent.contains(&n.id) {
                continue;
            }
            backup.sent.push_back(n.id.clone());
            if backup.sent.len() > SENT_KEPT {
                backup.sent.pop_front();
            }
            for t in targets.iter().filter(|t| t.wants(n.event)) {
                if let (Some(target), Some(Ok(url))) =
                    (backup.targets.get(&t.name), urls.get(&t.name))
                {
                    let _ = target
                        .queue
                        .unbounded_send(message(t.type_, url, &ns, name, n));
                }
            }
        }
    }

    /// The Notified condition: False while a target has no usable URL or
    /// its last delivery failed. None for a backup without targets.
    pub fn condition(&self, key: &Key) -> Option<Observed> {
        let backups = self.backups.lock().unwrap();
        let targets = &backups.get(key)?.targets;
        if targets.is_empty() {
            return None;
        }
        let failed: Vec<String> = targets
            .iter()
            .filter_map(|(name, t)| match (&t.problem, &t.last) {
                (Some(e), _) | (None, Some(Err(e))) => Some(format!("target {name:?}: {e}")),
                _ => None,
            })
            .collect();
        Some(if !failed.is_empty() {
            Observed::new(
                NOTIFIED,
                false,
                reasons::NOTIFICATION_FAILED,
                failed.join("; "),
            )
        } else if targets.values().any(|t| t.last.is_some()) {
            Observed::new(
                NOTIFIED,
                true,
                reasons::NOTIFICATIONS_DELIVERED,
                "every target took its last message",
            )
        } else {
            Observed::new(
                NOTIFIED,
                true,
                reasons::NOTIFICATIONS_READY,
                "every target has a URL; nothing was sent since the operator started",
            )
        })
    }

    /// Stops every delivery of a deleted backup: nothing more is sent for it.
    pub fn forget(&self, key: &Key) {
        self.backups.lock().unwrap().remove(key);
    }

    /// Forgets every backup `live` does not know (a deletion the watch
    /// missed, or a reconcile that configured it after the deletion).
    pub fn keep_only(&self, live: impl Fn(&Key) -> bool) {
        self.backups.lock().unwrap().retain(|key, _| live(key));
    }

    /// The task that delivers a target's messages, in order.
    fn start(self: &Arc<Self>, key: &Key, target: &str) -> Target {
        let (queue, mut messages) = unbounded::<Message>();
        let me = Arc::downgrade(self);
        let (key, target_name) = (key.clone(), target.to_string());
        let task = tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                let Some(notifier) = me.upgrade() else { return };
                let outcome = notifier.deliver(&m).await;
                notifier.finished(&key, &target_name, outcome);
            }
        });
        Target {
            queue,
            task: task.abort_handle(),
            problem: None,
            last: None,
        }
    }

    fn finished(&self, key: &Key, target: &str, outcome: Result<(), String>) {
        let mut backups = self.backups.lock().unwrap();
        let Some(t) = backups.get_mut(key).and_then(|b| b.targets.get_mut(target)) else {
            return;
        };
        if let Err(e) = &outcome {
            tracing::warn!(backup = %key, target, "notification failed: {e}");
        }
        if t.last.as_ref() != Some(&outcome) {
            t.last = Some(outcome);
            let _ = self.wake.unbounded_send(key.clone());
        }
    }

    /// Sends `m` until a receiver takes it, or the retries run out. A 4xx
    /// other than 408 and 429 is final: asking again gets the same answer.
    async fn deliver(&self, m: &Message) -> Result<(), String> {
        let mut attempts = 0;
        let mut delays = self.retry.delays.iter();
        loop {
            attempts += 1;
            let error = match self.attempt(m).await {
                Ok(()) => return Ok(()),
                Err((error, retry)) if retry => error,
                Err((error, _)) => return Err(error),
            };
            match delays.next() {
                Some(delay) => tokio::time::sleep(*delay).await,
                None => return Err(format!("{error} (after {attempts} attempts)")),
            }
        }
    }

    /// One POST; its error says what failed without the URL, and whether
    /// another attempt may do better.
    async fn attempt(&self, m: &Message) -> Result<(), (String, bool)> {
        // An address in the URL is never looked up: the resolver cannot check it.
        let host = m.url.parse::<http::Uri>().ok();
        if let Some(host) = host.as_ref().and_then(|u| u.host())
            && !self.allowed.permits_host(host)
        {
            return Err((egress::REFUSED.to_string(), false));
        }
        let request = http::Request::post(&m.url)
            .header(http::header::CONTENT_TYPE, m.content_type)
            .header(http::header::USER_AGENT, crate::names::MANAGER)
            .body(Full::new(Bytes::from(m.body.clone())))
            .map_err(|_| ("the URL is not valid".to_string(), false))?;
        let answer = tokio::time::timeout(self.retry.timeout, self.http.request(request)).await;
        let status = match answer {
            Err(_) => {
                return Err((
                    format!("no answer within {}s", self.retry.timeout.as_secs()),
                    true,
                ));
            }
            Ok(Err(e)) => {
                let error = without_url(&e);
                let retry = !error.ends_with(egress::REFUSED);
                return Err((error, retry));
            }
            Ok(Ok(response)) => response.status(),
        };
        match status.as_u16() {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err((format!("HTTP {status}"), true)),
            _ => Err((format!("HTTP {status}"), false)),
        }
    }
}

/// The innermost cause of a client error ("Connection refused (os error
/// 111)", a DNS failure): the outer ones may carry the URL.
fn without_url(e: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    format!("{what}: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sweep_forgets_the_targets_of_backups_that_are_gone() {
        let (n, _woken) = Notifier::new(Retry::default(), Allowed::default());
        let target: NotifyTarget = serde_json::from_value(serde_json::json!({
            "name": "hook", "type": "webhook", "urlSecret": {"name": "hooks"}
        }))
        .unwrap();
        let (gone, live) = (
            Key::new("gone").within("shop"),
            Key::new("live").within("shop"),
        );
        for key in [&gone, &live] {
            n.configure(key, std::slice::from_ref(&target), &HashMap::new());
        }
        n.keep_only(|k| *k == live);
        assert!(n.condition(&gone).is_none());
        assert!(n.condition(&live).is_some());
    }
}
