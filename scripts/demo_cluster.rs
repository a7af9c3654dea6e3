//! The Docker-less demo's cluster (`make demo`, scripts/demo.sh): the test
//! bed's single-node cluster, MinIO and a MariaDB holding the shop sample
//! data, both on the node's address and behind Services named `minio` and
//! `mariadb` in the demo namespace, as examples/mariadb-minio-backup.yaml
//! expects. It writes `kubeconfig` and `ready` into STATE_DIR, keeps
//! everything up until SIGTERM or SIGINT (`make demo-down`), then removes it.
//!
//! usage: demo-cluster STATE_DIR NAMESPACE
//!        demo-cluster down    (removes what a demo cluster that died left)

#[path = "../tests/support/mod.rs"]
mod support;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use std::path::PathBuf;
use support::k8s::create_namespace;
use support::node::NODE_IP;
use support::{Cluster, Database, Minio};

/// The credentials examples/mariadb-minio-backup.yaml puts in its Secrets.
const DB_USER: &str = "backup";
const DB_PASSWORD: &str = "demo-backup-password";
const S3_ACCESS_KEY: &str = "demo-access-key";
const S3_SECRET_KEY: &str = "demo-secret-key-change-me";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (state, ns) = match (args.next(), args.next()) {
        (Some(down), None) if down == "down" => {
            // Taking the node's place on the host and giving it back sweeps
            // whatever a node that was killed left there.
            drop(support::node::HostNetwork::up());
            let left = support::node::leftovers();
            assert!(left.is_empty(), "left on the host: {left:?}");
            return;
        }
        (Some(state), Some(ns)) => (PathBuf::from(state), ns),
        _ => {
            eprintln!("usage: demo-cluster STATE_DIR NAMESPACE | demo-cluster down");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(&state).unwrap();
    let _ = std::fs::remove_file(state.join("ready"));

    // NODES=2 (make demo NODES=2): nodes of their own network namespaces.
    let nodes = std::env::var("NODES").map_or(Ok(1), |n| n.parse::<usize>());
    let nodes = match nodes {
        Ok(n @ 1..=9) => n,
        _ => panic!("NODES is a number of nodes from 1 to 9"),
    };
    let cluster = Cluster::start_nodes(nodes).await;
    let client = cluster.client().await;
    let minio = Minio::start_with(&state, NODE_IP, S3_ACCESS_KEY, S3_SECRET_KEY);
    let db = Database::with_shop_on(dbbackup_operator::api::Engine::Mariadb, NODE_IP);
    let Database::Maria(db) = &db else {
        unreachable!("started as MariaDB")
    };
    db.admin_sql(&format!(
        "ALTER USER '{DB_USER}'@'%' IDENTIFIED BY '{DB_PASSWORD}'"
    ));

    create_namespace(&client, &ns, &[]).await;
    service(&client, &ns, "minio", 9000, minio.port).await;
    service(&client, &ns, "mariadb", 3306, db.port).await;
    // The bed's operator image is built from the release binary; the staging
    // volume of backup "shop" is a local PersistentVolume on the last node,
    // where its dump and upload pods then run.
    let last = cluster.nodes.last().unwrap();
    last.volume_for(&client, &ns, "shop-staging").await;

    std::fs::copy(&cluster.cp.kubeconfig, state.join("kubeconfig")).unwrap();
    std::fs::write(state.join("ready"), format!("{}\n", std::process::id())).unwrap();
    println!(
        "demo cluster ready; KUBECONFIG={}",
        state.join("kubeconfig").display()
    );

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).unwrap();
    let mut int = signal(SignalKind::interrupt()).unwrap();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("stopping the demo cluster");
    let _ = std::fs::remove_file(state.join("ready"));
    drop((db, minio));
    drop(cluster);
    let left = support::node::leftovers();
    assert!(left.is_empty(), "left on the host: {left:?}");
    println!("demo cluster removed");
}

/// A Service `name` on `port` whose endpoint is the host server on the node's
/// address, so that pods find it by name through the cluster's DNS.
async fn service(client: &kube::Client, ns: &str, name: &str, port: u16, target: u16) {
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": { "ports": [{ "name": "main", "port": port, "targetPort": target }] }
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": { "kubernetes.io/service-name": name }
        },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": [NODE_IP] }],
        "ports": [{ "name": "main", "port": target, "protocol": "TCP" }]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
}
