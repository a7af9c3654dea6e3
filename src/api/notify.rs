//! `spec.notify`: where the operator sends word of a backup's events.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One receiver of a backup's events. Its URL is a credential (a Slack or
/// healthchecks URL lets anyone post), so it lives in a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotifyTarget {
    /// Names the target in the Notified condition and its Events.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// webhook: a JSON object per event, POSTed to the URL. slack: a
    /// Slack-compatible incoming webhook ({"text": …}). healthchecks: pings in
    /// the healthchecks.io style: URL/start when a dump starts, URL on a
    /// confirmed upload, URL/fail on a failure.
    #[serde(rename = "type")]
    pub type_: NotifyType,
    /// The Secret key holding the URL (http or https).
    pub url_secret: UrlSecretRef,
    /// The events sent. Default for webhook and slack: failure, stale and
    /// verificationFailure; for healthchecks: start, success and failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub events: Option<Vec<NotifyEvent>>,
}

impl NotifyTarget {
    /// The events this target receives, its type's defaults when unset.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        use NotifyEvent::*;
        match &self.events {
            Some(events) => events.contains(&event),
            None => match self.type_ {
                NotifyType::Healthchecks => matches!(event, Start | Success | Failure),
                _ => matches!(event, Failure | Stale | VerificationFailure),
            },
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyType {
    Webhook,
    Slack,
    Healthchecks,
}

/// What happened to a backup.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NotifyEvent {
    /// A dump pod started running.
    Start,
    /// An upload was confirmed by the store.
    Success,
    /// A dump or an upload failed.
    Failure,
    /// No upload came when the schedule said one should have (the Stale condition).
    Stale,
    /// A restore drill found the dump not restorable, or could not run.
    VerificationFailure,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Start => "start",
            NotifyEvent::Success => "success",
            NotifyEvent::Failure => "failure",
            NotifyEvent::Stale => "stale",
            NotifyEvent::VerificationFailure => "verificationFailure",
        }
    }
}

/// The Secret key holding a notification URL.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret (default "url").
    #[serde(default = "default_url_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_url_key() -> String {
    "url".into()
}
