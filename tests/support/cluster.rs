//! A cluster of real nodes: the host network, a control plane with the
//! controller manager serving on the test network's bridge, the scheduler
//! and CoreDNS, and one node or several (`node_net.rs`). One is started per
//! test binary, on first use, and shared by its tests, each in namespaces of
//! its own; it is torn down when the binary exits.

use super::controlplane::{ControlPlane, Options};
use super::k8s::{create_namespace, setup_with};
use super::minio::random_token;
use super::node::{ClusterServices, HostNetwork, Node, NodeSpec};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

pub struct Cluster {
    // Field order is drop order: the nodes, the cluster's services, the
    // control plane, then what the nodes changed on the host.
    pub nodes: Vec<Node>,
    pub services: ClusterServices,
    pub cp: ControlPlane,
    _host: HostNetwork,
    users: Arc<RwLock<()>>,
}

impl Cluster {
    /// A single-node cluster of its own, with the CRDs installed.
    pub async fn start() -> Cluster {
        Cluster::start_nodes(1).await
    }

    /// A cluster of `n` nodes (the single node when 1), with the CRDs installed.
    pub async fn start_nodes(n: usize) -> Cluster {
        let host = HostNetwork::up();
        let (cp, _) = setup_with(
            Options {
                controller_manager: true,
                for_node: true,
                // The node-loss tests of several nodes wait for it: 20 s,
                // two missed heartbeats (lease renewals, every 10 s).
                node_grace: (n > 1).then_some(20),
            },
            &[],
        )
        .await;
        let services = ClusterServices::start(&cp).await;
        let mut nodes = vec![];
        for i in 0..n {
            let spec = match n {
                1 => NodeSpec::single(),
                _ => NodeSpec::of_many(i, n),
            };
            nodes.push(Node::start(&cp, spec).await);
        }
        Cluster {
            nodes,
            services,
            cp,
            _host: host,
            users: Arc::new(RwLock::new(())),
        }
    }

    /// The first (for the single-node cluster, the only) node.
    pub fn node(&self) -> &Node {
        &self.nodes[0]
    }

    /// The test binary's single-node cluster, started by the first test
    /// that asks. If it cannot start, every test that asks fails at once,
    /// saying so.
    pub fn shared() -> Arc<Cluster> {
        Cluster::shared_of(1)
    }

    /// As `shared`, of `n` nodes: every test of a binary asks for one size.
    pub fn shared_of(n: usize) -> Arc<Cluster> {
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some(Ok(cluster)) => {
                assert_eq!(cluster.nodes.len(), n, "one cluster size per test binary");
                return cluster.clone();
            }
            Some(Err(())) => {
                panic!("the shared test cluster did not start: see the first failing test")
            }
            None => {}
        }
        *slot = Some(Err(()));
        // On a runtime of its own: the asking test's runtime is blocked here.
        let cluster = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(Cluster::start_nodes(n))
        })
        .join()
        .unwrap_or_else(|_| panic!("the shared test cluster did not start (see above)"));
        let cluster = Arc::new(cluster);
        *slot = Some(Ok(cluster.clone()));
        // SAFETY: registers a plain function; it runs once, when the test binary exits.
        unsafe { libc::atexit(stop_shared) };
        cluster
    }

    /// Held by each test while it uses the cluster alongside others.
    pub async fn share(&self) -> OwnedRwLockReadGuard<()> {
        self.users.clone().read_owned().await
    }

    /// Held by a test that disturbs the whole cluster (restarts the
    /// apiserver): it waits for the others to finish, and they for it.
    pub async fn exclusive(&self) -> OwnedRwLockWriteGuard<()> {
        self.users.clone().write_owned().await
    }

    pub async fn client(&self) -> kube::Client {
        self.cp.client().await
    }

    /// A new namespace with a random suffix: tests share the cluster, not names.
    pub async fn namespace(&self, prefix: &str) -> String {
        self.namespace_with(prefix, &[]).await
    }

    /// As `namespace`, with labels (a Pod Security level, say).
    pub async fn namespace_with(&self, prefix: &str, labels: &[(&str, &str)]) -> String {
        let name = format!("{prefix}-{}", random_token(6).to_lowercase());
        create_namespace(&self.client().await, &name, labels).await;
        name
    }
}

/// The shared cluster; `Err` once it failed to start.
static SHARED: Mutex<Option<Result<Arc<Cluster>, ()>>> = Mutex::new(None);

/// Tears the shared cluster down at exit: every test is done by then.
extern "C" fn stop_shared() {
    if let Some(Ok(cluster)) = SHARED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        if Arc::strong_count(&cluster) > 1 {
            eprintln!("a test still holds the shared cluster at exit; it is not torn down");
        }
        drop(cluster);
    }
}
