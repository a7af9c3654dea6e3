//! Where a node lives on the host: its name, address, pod addresses, CNI
//! bridge and cgroup root. The single node shares the host's network
//! namespace and its address is the test network's bridge (`dbb0`). Each of
//! several nodes has a network namespace of its own, joined to that bridge
//! by a veth pair, with an address of its own on it, its pods on a bridge
//! inside the namespace, routes to the other nodes' pods, and a cgroup root
//! below the common one. The host reaches every node's pods by route; what
//! pods send beyond the test network is dropped on the host, as before.

use super::{BRIDGE, CGROUP_ROOT, NODE_IP};
use crate::support::host::sh;
use std::fs::File;

#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The Kubernetes node name.
    pub name: String,
    /// The kubelet's and kube-proxy's address on the test network.
    pub ip: String,
    /// This node's pods' addresses.
    pub pod_subnet: String,
    /// The CNI bridge the node's pods are on.
    pub bridge: String,
    /// The cgroup (in every v1 hierarchy) the kubelet puts pods below.
    pub cgroup_root: String,
    /// Set for a node of several: the network namespace it runs in, and the
    /// other nodes (address, pod subnet) it routes to.
    pub netns: Option<String>,
    pub peers: Vec<(String, String)>,
}

/// Node names of a several-node cluster: `dbbackup-node-a`, `-b`, ...
pub fn node_name(i: usize) -> String {
    format!("{CGROUP_ROOT}-{}", (b'a' + i as u8) as char)
}

impl NodeSpec {
    /// The one node of the single-node cluster: on the host's network, its
    /// address the bridge's.
    pub fn single() -> NodeSpec {
        NodeSpec {
            name: CGROUP_ROOT.into(),
            ip: NODE_IP.into(),
            pod_subnet: "10.88.0.0/16".into(),
            bridge: BRIDGE.into(),
            cgroup_root: CGROUP_ROOT.into(),
            netns: None,
            peers: vec![],
        }
    }

    /// Node `i` of `n`: 10.88.0.(10+i) on the test network, pods in 10.89.i.0/24.
    pub fn of_many(i: usize, n: usize) -> NodeSpec {
        let address = |j: usize| (format!("10.88.0.{}", 10 + j), format!("10.89.{j}.0/24"));
        let (ip, pod_subnet) = address(i);
        let name = node_name(i);
        NodeSpec {
            cgroup_root: format!("{CGROUP_ROOT}/{name}"),
            netns: Some(name.clone()),
            name,
            ip,
            pod_subnet,
            bridge: "cni0".into(),
            peers: (0..n).filter(|j| *j != i).map(address).collect(),
        }
    }

    /// The gateway the pods use: the bridge's address.
    pub fn pod_gateway(&self) -> String {
        match self.netns {
            None => NODE_IP.into(),
            Some(_) => self.pod_subnet.replace(".0/24", ".1"),
        }
    }

    /// The veth's host end on the test network's bridge (15 characters at most).
    fn host_link(&self) -> String {
        format!("dbbv-{}", self.name.rsplit('-').next().unwrap_or_default())
    }

    /// The node's network namespace, set up: a veth into the test network,
    /// the node's address, routes to the other nodes' pods, and the host's
    /// route to this node's pods. Nothing when the node uses the host's.
    pub fn network_up(&self) {
        let Some(ns) = &self.netns else { return };
        let link = self.host_link();
        let exec = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", ns];
            all.extend(args);
            sh(&all);
        };
        sh(&["ip", "netns", "add", ns]);
        sh(&[
            "ip", "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        sh(&["ip", "link", "set", &link, "master", BRIDGE, "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/16", self.ip),
            "dev",
            "eth0",
        ]);
        exec(&["ip", "link", "set", "eth0", "up"]);
        exec(&["ip", "route", "add", "default", "via", NODE_IP]);
        for (peer, subnet) in &self.peers {
            exec(&["ip", "route", "add", subnet, "via", peer]);
        }
        // The node routes between its pods' bridge and the test network.
        exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        sh(&["ip", "route", "add", &self.pod_subnet, "via", &self.ip]);
    }

    /// The namespace, its veth and the host's route, gone (if there).
    pub fn network_down(&self) {
        let Some(ns) = &self.netns else { return };
        let _ = std::process::Command::new("ip")
            .args(["route", "del", &self.pod_subnet])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_link()])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .output();
    }

    /// The network namespace the node's processes join: the host's own
    /// (that of this process) for the single node.
    pub fn netns_file(&self) -> File {
        let path = match &self.netns {
            Some(ns) => format!("/run/netns/{ns}"),
            None => "/proc/self/ns/net".into(),
        };
        File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}

/// Namespaces and veths of several-node clusters that a killed run left.
pub fn sweep_networks() {
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(CGROUP_ROOT) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .output();
        }
    }
    for e in std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("dbbv-") {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &name])
                .output();
        }
    }
}

/// The network namespace of the node of several whose address `address`
/// is: a server bound to it runs there, as a database on that node (host
/// network) would; it is reached across the test network, and the host
/// still reaches it. None for any other address.
pub fn netns_of(address: &str) -> Option<File> {
    let i = address
        .strip_prefix("10.88.0.")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n >= 10)?;
    Some(NodeSpec::of_many(i - 10, 0).netns_file())
}
