//! What a notification says: the notice a reconcile hands over, and the
//! request each target type gets for it.

use crate::api::{NotifyEvent, NotifyType};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// One thing that happened to a backup, as its receivers hear of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub event: NotifyEvent,
    /// Names the occurrence (the pod or drill it came from): each is sent once.
    pub id: String,
    pub reason: String,
    pub message: String,
    pub key: Option<String>,
    pub time: Time,
}

/// A request ready to send: where, and what.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub url: String,
    pub content_type: &'static str,
    pub body: String,
}

/// The message a target of `type_` at `url` gets for `notice` of backup
/// `namespace/name`. Nothing in it comes from a Secret but the URL.
pub fn message(type_: NotifyType, url: &str, namespace: &str, name: &str, n: &Notice) -> Message {
    let time = n.time.0.to_string();
    match type_ {
        NotifyType::Webhook => Message {
            url: url.to_string(),
            content_type: "application/json",
            body: serde_json::json!({
                "id": n.id,
                "event": n.event.as_str(),
                "namespace": namespace,
                "name": name,
                "reason": n.reason,
                "message": n.message,
                "key": n.key,
                "time": time,
            })
            .to_string(),
        },
        NotifyType::Slack => Message {
            url: url.to_string(),
            content_type: "application/json",
            body: serde_json::json!({
                "text": format!("DatabaseBackup {namespace}/{name}: {} ({})", n.message, n.reason),
            })
            .to_string(),
        },
        NotifyType::Healthchecks => {
            let suffix = match n.event {
                NotifyEvent::Start => "/start",
                NotifyEvent::Success => "",
                NotifyEvent::Failure | NotifyEvent::Stale | NotifyEvent::VerificationFailure => {
                    "/fail"
                }
            };
            // The suffix goes on the path: healthchecks URLs may carry a query (?create=1).
            let (path, query) = url
                .split_once('?')
                .map_or((url, None), |(p, q)| (p, Some(q)));
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            Message {
                url: format!("{}{suffix}{query}", path.trim_end_matches('/')),
                content_type: "text/plain; charset=utf-8",
                body: format!("{namespace}/{name}: {}", n.message),
            }
        }
    }
}

/// Whether a URL read from a Secret is one we send to. The URL itself is
/// never part of the answer: it is a credential.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Ok(()),
        _ => Err("is not an http(s) URL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NotifyTarget;

    fn notice(event: NotifyEvent) -> Notice {
        Notice {
            event,
            id: "uid-1".into(),
            reason: "UploadFailed".into(),
            message: "file upload failed: AccessDenied".into(),
            key: None,
            time: Time(k8s_openapi::jiff::Timestamp::from_second(1_764_039_600).unwrap()),
        }
    }

    /// The message a target at `url` gets for `event` of shop/orders.
    fn sent(type_: NotifyType, url: &str, event: NotifyEvent) -> Message {
        message(type_, url, "shop", "orders", &notice(event))
    }

    #[test]
    fn a_webhook_gets_the_event_as_json() {
        let m = sent(
            NotifyType::Webhook,
            "https://hooks.example/x",
            NotifyEvent::Failure,
        );
        assert_eq!(m.url, "https://hooks.example/x");
        let body: serde_json::Value = serde_json::from_str(&m.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": "uid-1", "event": "failure", "namespace": "shop", "name": "orders",
                "reason": "UploadFailed", "message": "file upload failed: AccessDenied",
                "key": null, "time": "2025-11-25T03:00:00Z",
            })
        );
    }

    #[test]
    fn slack_gets_one_line_of_text() {
        let m = sent(
            NotifyType::Slack,
            "https://hooks.slack.com/services/T/B/x",
            NotifyEvent::Failure,
        );
        assert_eq!(
            m.body,
            r#"{"text":"DatabaseBackup shop/orders: file upload failed: AccessDenied (UploadFailed)"}"#
        );
    }

    #[test]
    fn healthchecks_pings_start_success_and_fail() {
        let url = |event| sent(NotifyType::Healthchecks, "https://hc-ping.com/uuid/", event).url;
        assert_eq!(url(NotifyEvent::Start), "https://hc-ping.com/uuid/start");
        assert_eq!(url(NotifyEvent::Success), "https://hc-ping.com/uuid");
        assert_eq!(url(NotifyEvent::Failure), "https://hc-ping.com/uuid/fail");
        assert_eq!(url(NotifyEvent::Stale), "https://hc-ping.com/uuid/fail");
        assert_eq!(
            url(NotifyEvent::VerificationFailure),
            "https://hc-ping.com/uuid/fail"
        );
        let with_query = sent(
            NotifyType::Healthchecks,
            "https://hc-ping.com/key/orders-backup?create=1",
            NotifyEvent::Failure,
        );
        assert_eq!(
            with_query.url,
            "https://hc-ping.com/key/orders-backup/fail?create=1"
        );
    }

    #[test]
    fn each_type_has_its_default_events() {
        let target = |type_| -> NotifyTarget {
            serde_json::from_value(serde_json::json!({
                "name": "t", "type": type_, "urlSecret": {"name": "s"}
            }))
            .unwrap()
        };
        use NotifyEvent::*;
        let wanted = |t: &NotifyTarget| {
            [Start, Success, Failure, Stale, VerificationFailure]
                .into_iter()
                .filter(|e| t.wants(*e))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            wanted(&target("webhook")),
            [Failure, Stale, VerificationFailure]
        );
        assert_eq!(
            wanted(&target("slack")),
            [Failure, Stale, VerificationFailure]
        );
        assert_eq!(wanted(&target("healthchecks")), [Start, Success, Failure]);
        let mut chosen = target("webhook");
        chosen.events = Some(vec![Success]);
        assert_eq!(wanted(&chosen), [Success]);
    }

    #[test]
    fn only_http_urls_pass_and_the_answer_never_holds_the_url() {
        assert_eq!(
            check_url("https://hooks.slack.com/services/T/B/secret"),
            Ok(())
        );
        assert_eq!(check_url("http://10.0.0.1:8080/hook"), Ok(()));
        for bad in ["hooks.slack.com/x", "ftp://x/y", "", "https://"] {
            let e = check_url(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
    }
}
