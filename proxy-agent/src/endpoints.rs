//! Local endpoints: the pods on this node and the host-side interface each one sits behind.
//! Pure: it takes the snapshot and the node's routing table, so it is tested without a kernel.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::{host::routes, snapshot::Snapshot};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalEndpoint {
    /// `namespace/name`
    pub pod: String,
    pub ip: Ipv4Addr,
    /// Host-side interface found from the pod IP; `None` while the CNI has not set the pod up yet.
    pub interface: Option<String>,
}

/// Pods scheduled on `node` with an IP of their own (hostNetwork pods share the node's and get no
/// tc program), each with the interface of the directly connected route to its IP.
pub fn local_endpoints(snapshot: &Snapshot, node: &str, table: &[routes::Route]) -> Vec<LocalEndpoint> {
    with_interfaces(&local_pods(snapshot, node), table)
}

/// [`local_endpoints`] without the interfaces, sorted by pod: it changes only with the pods, while
/// the interfaces are looked up on every scan of the links (walking 10k pods on each was most of
/// what the daemon's periodic tick cost).
pub fn local_pods(snapshot: &Snapshot, node: &str) -> Vec<LocalEndpoint> {
    let mut out: Vec<LocalEndpoint> = snapshot
        .pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| !p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false))
        .filter_map(|p| {
            let ip: Ipv4Addr = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            let pod = format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or("default"),
                p.metadata.name.as_deref().unwrap_or("")
            );
            Some(LocalEndpoint {
                pod,
                ip,
                interface: None,
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

/// The local pods, each with the interface of the directly connected route to its IP.
pub fn with_interfaces(pods: &[LocalEndpoint], table: &[routes::Route]) -> Vec<LocalEndpoint> {
    pods.iter()
        .map(|p| LocalEndpoint {
            interface: routes::lookup(table, p.ip)
                .filter(|r| r.gateway.is_none() && r.prefix_len == 32)
                .map(|r| r.interface.clone()),
            ..p.clone()
        })
        .collect()
}

/// The node's own addresses from its Node object (InternalIP and ExternalIP).
pub fn node_addresses(snapshot: &Snapshot, node: &str) -> Vec<Ipv4Addr> {
    snapshot
        .node(node)
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Taint the cluster autoscaler puts on a node it is about to remove.
const AUTOSCALER_DELETE_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether load balancers should still send to this node, as kube-proxy judges it: not while its Node
/// is being deleted or the autoscaler is draining it. A Node not (yet) in the snapshot is eligible.
pub fn node_eligible(snapshot: &Snapshot, node: &str) -> bool {
    let Some(n) = snapshot.node(node) else {
        return true;
    };
    let deleting = n.metadata.deletion_timestamp.is_some();
    let draining = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == AUTOSCALER_DELETE_TAINT));
    !deleting && !draining
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::source::manifests;

    fn snapshot(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        let mut rejected = Vec::new();
        manifests::parse_into(text, Path::new("t.yaml"), &mut s, &mut rejected);
        assert!(rejected.is_empty(), "{rejected:?}");
        s
    }

    const PODS: &str = r#"
kind: Node
metadata: {name: a}
status: {addresses: [{type: InternalIP, address: 192.168.50.10}, {type: Hostname, address: a}]}
---
kind: Pod
metadata: {name: p1, namespace: x}
spec: {nodeName: a, containers: []}
status: {podIP: 10.244.1.2}
---
kind: Pod
metadata: {name: p2, namespace: x}
spec: {nodeName: b, containers: []}
status: {podIP: 10.244.2.2}
---
kind: Pod
metadata: {name: host, namespace: kube-system}
spec: {nodeName: a, hostNetwork: true, containers: []}
status: {podIP: 192.168.50.10}
---
kind: Pod
metadata: {name: pending, namespace: x}
spec: {nodeName: a, containers: []}
"#;

    #[test]
    fn only_local_pods_with_their_own_ip() {
        let table = routes::parse_proc_net_route(
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
             lxcaaaa\t0201F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\n",
        )
        .unwrap();
        let eps = local_endpoints(&snapshot(PODS), "a", &table);
        assert_eq!(
            eps,
            vec![LocalEndpoint {
                pod: "x/p1".into(),
                ip: Ipv4Addr::new(10, 244, 1, 2),
                interface: Some("lxcaaaa".into())
            }]
        );
    }

    #[test]
    fn a_pod_without_a_connected_route_has_no_interface_yet() {
        let table = routes::parse_proc_net_route(
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
             eth0\t0001F40A\t0B32A8C0\t0003\t0\t0\t0\t00FFFFFF\n",
        )
        .unwrap();
        let eps = local_endpoints(&snapshot(PODS), "a", &table);
        assert_eq!(eps[0].interface, None);
    }

    #[test]
    fn node_addresses_skip_hostnames() {
        assert_eq!(
            node_addresses(&snapshot(PODS), "a"),
            vec![Ipv4Addr::new(192, 168, 50, 10)]
        );
    }

    #[test]
    fn a_node_being_removed_is_not_eligible() {
        let (mut snap, mut rejected) = (Snapshot::default(), Vec::new());
        manifests::parse_into(
            "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\nspec: {taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}\n",
            Path::new("nodes.yaml"),
            &mut snap,
            &mut rejected,
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        assert!(node_eligible(&snap, "a"));
        assert!(!node_eligible(&snap, "b"));
        assert!(node_eligible(&snap, "not-there"));
    }
}
