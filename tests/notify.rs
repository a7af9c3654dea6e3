//! Notifications, with the real apiserver, kube-controller-manager, MinIO,
//! database and node, and real HTTP receivers on this machine (where the
//! operator under test runs).

mod support;

use std::time::Duration;
use support::bed::*;
use support::k8s::*;
use support::minio::BUCKET;
use support::process::wait_for;
use support::receiver::{Received, Receiver};

use dbbackup_operator::api::Engine;

const TARGETS: &str = r#"  notify:
  - name: hook
    type: webhook
    urlSecret: {name: hooks, key: hook}
  - name: chat
    type: slack
    urlSecret: {name: hooks, key: chat}
  - name: hc
    type: healthchecks
    urlSecret: {name: hooks, key: hc}
"#;

fn json(r: &Received) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// A good run pings healthchecks' start and success, and tells the webhook
/// and Slack nothing. Each failed run reaches each target exactly once; the
/// webhook's first answer, a 500, is retried. No payload holds a secret.
#[tokio::test]
async fn each_failed_run_is_one_message_per_target_and_a_500_is_retried() {
    let hook = Receiver::start(&[500]).await;
    let chat = Receiver::start(&[]).await;
    let hc = Receiver::start(&[]).await;
    let b = bed(Engine::Mariadb).await;
    apply_secret(
        &b,
        "hooks",
        &[
            ("hook", &format!("{}/hook", hook.url)),
            ("chat", &format!("{}/services/T0/B0/secret-token", chat.url)),
            ("hc", &format!("{}/ping/uuid-1", hc.url)),
        ],
    );
    let (b, _op, mut pods) = ready(b, TARGETS).await;

    backup_now(&b, &mut pods, "good", &mut vec![]).await;
    let pings = hc.exactly(2, "the start and success pings").await;
    let paths: Vec<_> = pings.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/ping/uuid-1/start", "/ping/uuid-1"]);
    let key = status_of(&b).await.last_upload_key.unwrap();
    assert_eq!(pings[1].body, format!("{}/orders: uploaded {key}", b.ns));

    // Wrong keys: the next two uploads fail.
    apply_bucket_secret(&b, BUCKET, "not-the-secret", &b.minio.endpoint);
    for (run, n) in [("bad-1", 1), ("bad-2", 2)] {
        request_backup(&b, run);
        next_succeeded(&mut pods, "dump").await;
        let failed = pods.finished(1, POD_TIMEOUT).await.remove(0);
        assert_eq!(
            (failed.step.as_str(), failed.exit_code != 0),
            ("upload", true)
        );
        chat.exactly(n, "one Slack message per failed run").await;
    }
    let hooks = hook.exactly(3, "two failures, the first sent twice").await;
    assert_eq!(
        hooks[0].body, hooks[1].body,
        "the retry sends the same message"
    );
    assert_ne!(hooks[1].body, hooks[2].body);
    for r in &hooks {
        let m = json(r);
        assert_eq!(r.content_type, "application/json");
        assert_eq!(
            (
                m["event"].as_str(),
                m["namespace"].as_str(),
                m["name"].as_str()
            ),
            (Some("failure"), Some(b.ns.as_str()), Some("orders"))
        );
        assert_eq!(m["reason"], "UploadFailed");
        assert!(
            m["message"].as_str().unwrap().starts_with("upload failed:"),
            "{m}"
        );
    }
    for r in chat.received() {
        let text = json(&r)["text"].as_str().unwrap().to_string();
        assert!(
            text.starts_with(&format!("DatabaseBackup {}/orders: upload failed:", b.ns)),
            "{text}"
        );
    }
    let hc_paths: Vec<_> = hc
        .exactly(6, "start and fail of each failed run")
        .await
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        hc_paths[2..],
        [
            "/ping/uuid-1/start",
            "/ping/uuid-1/fail",
            "/ping/uuid-1/start",
            "/ping/uuid-1/fail"
        ]
    );
    let everything: Vec<Received> = [hook.received(), chat.received(), hc.received()].concat();
    for r in &everything {
        for secret in [
            b.minio.secret_key.as_str(),
            "not-the-secret",
            "secret-token",
            "uuid-1",
        ] {
            assert!(!r.body.contains(secret), "{secret:?} in {}", r.body);
        }
    }
    let s = wait_orders(
        &b,
        "Notified",
        Some("True"),
        "NotificationsDelivered",
        Duration::from_secs(30),
    )
    .await;
    assert!(s.conditions.iter().any(|c| c.type_ == "Notified"));
}

/// A target nobody listens on, and one that always answers 500: the backup
/// goes on (its status reflects the upload while they are still retried),
/// another target gets its message, and Notified turns False with a Warning
/// Event naming both. Once the backup is deleted, nothing more is sent.
#[tokio::test]
async fn a_dead_target_sets_notified_false_and_holds_up_nothing_and_deletion_stops_retries() {
    let live = Receiver::start(&[]).await;
    let failing = Receiver::always(500).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let b = bed(Engine::Mariadb).await;
    apply_secret(
        &b,
        "hooks",
        &[
            ("live", &format!("{}/hook", live.url)),
            ("failing", &format!("{}/hook", failing.url)),
            ("dead", &closed),
        ],
    );
    let targets = ["live", "failing", "dead"]
        .map(|t| {
            format!("  - name: {t}\n    type: webhook\n    events: [success]\n    urlSecret: {{name: hooks, key: {t}}}\n")
        })
        .concat();
    let (b, _op, mut pods) = ready(b, &format!("  notify:\n{targets}")).await;

    request_backup(&b, "first");
    next_succeeded(&mut pods, "dump").await;
    let upload = next_succeeded(&mut pods, "upload").await;
    status_latency(&b, &upload).await;
    // The status already has the upload; the dead targets are still being retried.
    let s = status_of(&b).await;
    assert!(
        !s.conditions
            .iter()
            .any(|c| c.type_ == "Notified" && c.status == "False"),
        "{:?}",
        s.conditions
    );
    let got = live.exactly(1, "the live target's message").await;
    assert_eq!(json(&got[0])["event"], "success");

    let c = wait_for(
        "Notified to name both targets",
        Duration::from_secs(60),
        || async {
            let s = status_of(&b).await;
            let c = s.conditions.into_iter().find(|c| c.type_ == "Notified")?;
            (c.status == "False" && c.message.contains("dead") && c.message.contains("failing"))
                .then_some(c)
        },
    )
    .await;
    assert_eq!(c.reason, "NotificationFailed");
    assert!(
        c.message.contains(r#"target "dead": cannot connect"#),
        "{}",
        c.message
    );
    assert!(
        c.message.contains(r#"target "failing": HTTP 500"#),
        "{}",
        c.message
    );
    assert!(c.message.contains("after 5 attempts"), "{}", c.message);
    assert!(
        !c.message.contains("127.0.0.1"),
        "the URL is a secret: {}",
        c.message
    );
    wait_events(
        &b.client,
        &b.ns,
        EventFilter::warning("orders", "NotificationFailed"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(failing.received().len(), 5);

    // A second upload, whose message the failing target refuses again; the
    // resource goes after its first attempt, and so do the retries.
    request_backup(&b, "second");
    next_succeeded(&mut pods, "dump").await;
    next_succeeded(&mut pods, "upload").await;
    failing
        .at_least(6, "the second message's first attempt")
        .await;
    b.backups()
        .delete("orders", &Default::default())
        .await
        .unwrap();
    let at_delete = failing.received().len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        failing.received().len() <= at_delete + 1,
        "retries went on after the delete: {} then {}",
        at_delete,
        failing.received().len()
    );
}

/// The notifier, as the operator runs it, sending one failure notice of
/// shop/orders to each target in `urls` (name → URL); returns the Notified
/// condition once every target's delivery ended.
async fn notify_once(
    allowed: &[&str],
    urls: &[(&str, String)],
) -> dbbackup_operator::operator::conditions::Observed {
    use dbbackup_operator::api::{DatabaseBackup, NotifyEvent, NotifyTarget};
    use dbbackup_operator::operator::egress::Allowed;
    use dbbackup_operator::operator::notify::{Notice, Notifier, Retry};
    use kube::runtime::reflector::ObjectRef;
    let allowed = Allowed::new(allowed.iter().map(|n| n.parse().unwrap()).collect());
    let retry = Retry {
        delays: vec![],
        timeout: Duration::from_secs(5),
    };
    let (notifier, _woken) = Notifier::new(retry, allowed);
    let key = ObjectRef::<DatabaseBackup>::new("orders").within("shop");
    let targets: Vec<NotifyTarget> = urls
        .iter()
        .map(|(name, _)| {
            serde_json::from_value(serde_json::json!({
                "name": name, "type": "webhook", "urlSecret": {"name": "hooks", "key": name}
            }))
            .unwrap()
        })
        .collect();
    let urls = urls
        .iter()
        .map(|(name, url)| (name.to_string(), Ok(url.clone())))
        .collect();
    notifier.configure(&key, &targets, &urls);
    let notice = Notice {
        event: NotifyEvent::Failure,
        id: "run-1".into(),
        reason: "UploadFailed".into(),
        message: "file upload failed".into(),
        key: None,
        time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
    };
    notifier.send(&key, &targets, &urls, &[notice]);
    let names: Vec<String> = targets
        .iter()
        .map(|t| format!("target {:?}", t.name))
        .collect();
    wait_for("every delivery to end", Duration::from_secs(30), || async {
        let c = notifier.condition(&key)?;
        let ended = match c.status {
            true => c.reason == "NotificationsDelivered",
            false => names.iter().all(|n| c.message.contains(n)),
        };
        ended.then_some(c)
    })
    .await
}

/// A webhook URL pointing at a loopback, private or link-local address is
/// refused before any connection, by address or by a name resolving there,
/// with one message whether or not anything listens: the operator is no
/// probe of the cluster's network. The operator's allow-list lets it through.
#[tokio::test]
async fn notifications_to_internal_addresses_are_refused_unless_allowed() {
    let live = Receiver::start(&[]).await;
    let port = live.url.rsplit(':').next().unwrap().to_string();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let urls = [
        ("open", format!("{}/hook", live.url)),
        ("closed", format!("http://127.0.0.1:{closed}/hook")),
        ("named", format!("http://localhost:{port}/hook")),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ),
    ];
    let c = notify_once(&[], &urls).await;
    assert_eq!((c.status, c.reason.as_str()), (false, "NotificationFailed"));
    let refused = "the URL's host is a loopback, link-local or private address, \
                   which the operator's notify.allowedNetworks does not name";
    for target in ["open", "closed", "metadata"] {
        assert!(
            c.message.contains(&format!("target {target:?}: {refused}")),
            "{target}: {}",
            c.message
        );
    }
    assert!(
        c.message
            .contains(&format!(r#"target "named": cannot connect: {refused}"#)),
        "{}",
        c.message
    );
    assert!(live.received().is_empty(), "a refused target was reached");

    let c = notify_once(&["127.0.0.0/8"], &urls[..1]).await;
    assert_eq!(c.reason, "NotificationsDelivered", "{}", c.message);
    assert_eq!(live.received().len(), 1);
}
