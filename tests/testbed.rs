//! Smoke tests of the test bed itself: every server is real and answers.

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::ObjectMeta;
use std::time::Duration;
use support::*;

fn object_meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn apiserver_reports_its_version_and_serves_namespaces() {
    let cp = ControlPlane::start().await;
    let client = cp.client().await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, support::process::k8s_version());

    let namespaces: Api<Namespace> = Api::all(client);
    let ns = Namespace {
        metadata: object_meta("smoke"),
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    assert!(namespaces.get("smoke").await.is_ok());
    namespaces
        .delete("smoke", &DeleteParams::default())
        .await
        .unwrap();
    // Without the namespace controller it stays Terminating; the deletion is recorded.
    let terminating = namespaces.get("smoke").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
}

#[tokio::test]
async fn controller_manager_garbage_collects_owned_objects() {
    let cp = ControlPlane::with_controller_manager().await;
    let client = cp.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: object_meta("owner"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let owner_ref = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    };
    let mut owned_meta = object_meta("owned");
    owned_meta.owner_references = Some(vec![owner_ref]);
    cms.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: owned_meta,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let gone = support::process::poll(
        Duration::from_millis(200),
        Duration::from_secs(60),
        || async { cms.get_opt("owned").await.unwrap().is_none().then_some(()) },
    )
    .await;
    assert!(
        gone.is_some(),
        "owned ConfigMap was not garbage-collected within 60s"
    );
}

#[tokio::test]
async fn minio_put_and_get_through_custom_endpoint_path_style() {
    let minio = Minio::start();
    let s3 = minio.s3_client().await;
    s3.create_bucket().bucket("smoke").send().await.unwrap();
    s3.put_object()
        .bucket("smoke")
        .key("2026-01-01/datadump1.sql")
        .body(b"select 1;".to_vec().into())
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object()
        .bucket("smoke")
        .key("2026-01-01/datadump1.sql")
        .send()
        .await
        .unwrap();
    let body = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], b"select 1;");
}

#[test]
fn postgres_and_mariadb_clients_query_the_test_servers() {
    let pg = Postgres::start();
    assert_eq!(pg.query("postgres", "SELECT 40 + 2"), "42");
    pg.create_database("smoke");
    assert_eq!(pg.query("smoke", "SELECT current_database()"), "smoke");

    let maria = MariaDb::start();
    maria.create_database("smoke");
    assert_eq!(maria.query("smoke", "SELECT 40 + 2"), "42");
    assert!(maria.query("smoke", "SELECT VERSION()").contains("MariaDB"));
}

#[test]
fn helm_and_kubectl_run() {
    let helm = run_ok(std::process::Command::new(bin("helm")).args(["version", "--short"]));
    assert!(String::from_utf8_lossy(&helm.stdout).starts_with("v3.22.0"));
    let kubectl = run_ok(std::process::Command::new(bin("kubectl")).args(["version", "--client"]));
    assert!(String::from_utf8_lossy(&kubectl.stdout).contains("Client Version: v1.3"));
}

#[tokio::test]
async fn dropping_servers_leaves_no_process_behind() {
    let cp = ControlPlane::with_controller_manager().await;
    let minio = Minio::start();
    let pg = Postgres::start();
    let maria = MariaDb::start();
    let mut pids = cp.pids();
    pids.extend([minio.pid(), pg.pid(), maria.pid()]);
    let dirs = [cp.dir().to_path_buf(), maria.dir().to_path_buf()];
    for pid in &pids {
        assert!(process_alive(*pid), "pid {pid} should be running");
    }
    drop((cp, minio, pg, maria));
    for pid in &pids {
        assert!(!process_alive(*pid), "pid {pid} survived its drop");
    }
    for dir in &dirs {
        assert!(!dir.exists(), "{} survived its drop", dir.display());
    }
}
