//! The node a backup's staging volume is bound to, when it is bound to one
//! (a local PersistentVolume, or any volume whose node affinity names one
//! host): every dump and upload can only run there, so while that node is
//! not Ready they wait, and the backup says which node they wait for.

use crate::api::DatabaseBackup;
use crate::operator::Context;
use crate::operator::conditions::{Observed, STAGING_NODE_READY};
use crate::{names, reasons};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::{Api, ResourceExt};

/// The label every kubelet sets to its node's name.
const HOSTNAME: &str = "kubernetes.io/hostname";

/// StagingNodeReady for `db`; None while its staging claim is not bound to
/// a volume of one node (not bound yet, or storage any node reaches), or
/// when what says so cannot be read (the operator's RBAC, say).
pub(super) async fn staging_node(db: &DatabaseBackup, ctx: &Context) -> Option<Observed> {
    let ns = db.namespace()?;
    let claim = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&names::staging_pvc_name(&db.name_any()))
        .await
        .ok()??;
    let volume = claim.spec?.volume_name?;
    let pv = Api::<PersistentVolume>::all(ctx.client.clone())
        .get_opt(&volume)
        .await
        .ok()??;
    let node = pinned_node(&pv)?;
    let found = Api::<Node>::all(ctx.client.clone())
        .get_opt(&node)
        .await
        .ok()?;
    Some(judge(&volume, &node, found.as_ref()))
}

/// The one host a volume's required node affinity allows, if it allows one.
pub(super) fn pinned_node(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    // Terms are ORed: one host only if there is one term naming one host.
    let [term] = terms.as_slice() else {
        return None;
    };
    term.match_expressions
        .iter()
        .flatten()
        .find(|e| e.key == HOSTNAME && e.operator == "In")
        .and_then(|e| match e.values.as_deref() {
            Some([host]) => Some(host.clone()),
            _ => None,
        })
}

/// Whether `node` (None: it does not exist) is Ready, said for the backup.
pub(super) fn judge(volume: &str, node: &str, found: Option<&Node>) -> Observed {
    let ready = found
        .and_then(|n| n.status.as_ref()?.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let place = format!("the staging volume {volume} is on node {node}");
    match (found, ready) {
        (_, Some(r)) if r.status == "True" => Observed::new(
            STAGING_NODE_READY,
            true,
            reasons::NODE_READY,
            format!("{place}, which is Ready"),
        ),
        (None, _) => Observed::new(
            STAGING_NODE_READY,
            false,
            reasons::NODE_NOT_READY,
            format!("{place}, which does not exist: dumps and uploads wait for it"),
        ),
        (Some(_), r) => {
            let how = r.map_or("has not reported".to_string(), |r| {
                let since = r
                    .last_transition_time
                    .as_ref()
                    .map(|t| format!(" since {}", t.0))
                    .unwrap_or_default();
                let why = r.message.as_deref().unwrap_or_default();
                format!("is not Ready ({}{since}: {why})", r.status)
            });
            Observed::new(
                STAGING_NODE_READY,
                false,
                reasons::NODE_NOT_READY,
                format!("{place}, which {how}: dumps and uploads wait for it"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(terms: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": { "name": "pv" },
            "spec": { "nodeAffinity": { "required": { "nodeSelectorTerms": terms } } }
        }))
        .unwrap()
    }

    fn node(status: &str, message: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": { "name": "b" },
            "status": { "conditions": [{
                "type": "Ready", "status": status, "message": message,
                "lastTransitionTime": "2026-12-05T10:00:00Z"
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn a_local_volume_names_its_one_node() {
        let one = json!([{ "matchExpressions": [
            { "key": "kubernetes.io/hostname", "operator": "In", "values": ["node-b"] }
        ]}]);
        assert_eq!(pinned_node(&pv(one)).as_deref(), Some("node-b"));
        let two_hosts = json!([{ "matchExpressions": [
            { "key": "kubernetes.io/hostname", "operator": "In", "values": ["a", "b"] }
        ]}]);
        let a_zone = json!([{ "matchExpressions": [
            { "key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"] }
        ]}]);
        let two_terms = json!([
            { "matchExpressions": [{ "key": "kubernetes.io/hostname", "operator": "In", "values": ["a"] }] },
            { "matchExpressions": [{ "key": "kubernetes.io/hostname", "operator": "In", "values": ["b"] }] }
        ]);
        for terms in [two_hosts, a_zone, two_terms] {
            assert_eq!(pinned_node(&pv(terms.clone())), None, "{terms}");
        }
        let network: PersistentVolume =
            serde_json::from_value(json!({ "metadata": { "name": "nfs" }, "spec": {} })).unwrap();
        assert_eq!(pinned_node(&network), None);
    }

    #[test]
    fn a_node_that_is_not_ready_is_named_with_since_when_and_why() {
        let ok = judge(
            "pv-1",
            "node-b",
            Some(&node("True", "kubelet is posting ready status")),
        );
        assert!(ok.status);
        assert_eq!(ok.reason, "NodeReady");
        let lost = judge(
            "pv-1",
            "node-b",
            Some(&node("Unknown", "Kubelet stopped posting node status.")),
        );
        assert!(!lost.status);
        assert_eq!(lost.reason, "NodeNotReady");
        assert_eq!(
            lost.message,
            "the staging volume pv-1 is on node node-b, which is not Ready (Unknown since \
             2026-12-05T10:00:00Z: Kubelet stopped posting node status.): dumps and uploads wait for it"
        );
        let gone = judge("pv-1", "node-b", None);
        assert!(!gone.status);
        assert!(
            gone.message.contains("node node-b, which does not exist"),
            "{}",
            gone.message
        );
    }
}
