//! The lab's wiring, played the way a CNI would do it:
//!
//! ```text
//!  segment netns: bridge br0 ── seg<hash> ══ eth0 (node netns, InternalIP/prefix) ── lxc<hash> ══ eth0 (pod netns)
//!                            ├─ seg<hash> ══ eth0 (external netns, a free address of the node subnet)
//!                            └─ seg<hash> ══ eth0 (control-plane netns, `--control-plane real` only)
//! ```
//! - pod: `podIP/32` on eth0, `169.254.1.1 dev eth0 scope link`, default via 169.254.1.1 and a permanent
//!   neighbour entry 169.254.1.1 → host veth MAC (no ARP, no address on the host veth);
//! - node: `podIP/32 dev lxc…` + permanent neighbour podIP → pod MAC for local pods; remote pods via
//!   their node's IP (`podCIDR via node` when the Node gives spec.podCIDR, else one /32 per pod);
//!   ip_forward on, rp_filter off;
//! - external: routes to every pod via its node (a flat, routed pod network); service addresses and
//!   client addresses: see `external.rs`.
//!
//! The `*_lines` functions only produce `ip -batch` lines (pure, unit-tested); `build_*` run them.

use anyhow::Result;

use super::{
    external, netns,
    plan::{self, POD_GATEWAY},
    state::{NodeState, PodState, State},
};

const BRIDGE: &str = "br0";

/// Sysctls for every lab netns: no IPv6 (the lab is IPv4; this also silences router solicitations
/// and DAD on every veth).
const ALL_NETNS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
];

/// Node netns: route for pods. rp_filter off: a new netns copies the machine's IPv4 settings, and
/// strict reverse-path filtering would drop pod traffic on the address-less host veths.
const NODE_NETNS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

fn prefix_len(state: &State) -> u8 {
    plan::Subnet::parse(&state.subnet).map(|s| s.prefix).unwrap_or(24)
}

pub fn segment_lines(state: &State) -> Vec<String> {
    let mut l = vec![
        "link set lo up".to_string(),
        format!("link add {BRIDGE} type bridge stp_state 0 forward_delay 0"),
        format!("link set {BRIDGE} up"),
    ];
    let ends = state
        .nodes
        .iter()
        .map(|n| n.netns.as_str())
        .chain([state.external.netns.as_str()])
        .chain(state.control_plane.iter().map(|c| c.netns.as_str()));
    for ns in ends {
        let veth = plan::segment_veth(ns);
        l.push(format!("link add {veth} type veth peer name eth0 netns {ns}"));
        l.push(format!("link set {veth} master {BRIDGE}"));
        l.push(format!("link set {veth} up"));
    }
    l
}

pub fn node_lines(state: &State, node: &NodeState) -> Vec<String> {
    let mut l = vec![
        "link set lo up".to_string(),
        "link set eth0 up".to_string(),
        format!("addr add {}/{} dev eth0", node.ip, prefix_len(state)),
    ];
    l.extend(
        node.addresses
            .iter()
            .map(|a| format!("addr add {a}/{} dev eth0", prefix_len(state))),
    );
    l.extend(external::node_return_routes(state, &state.external.addresses));
    for p in state.pods.iter().filter(|p| p.node == node.name) {
        l.extend(pod_host_lines(p));
    }
    l.extend(remote_pod_routes(state, Some(&node.name)));
    l
}

/// In the node's netns: the veth pair (pod end straight into the pod netns), route and neighbour.
pub fn pod_host_lines(p: &PodState) -> Vec<String> {
    let (hmac, pmac) = (plan::host_veth_mac(p.ip), plan::pod_mac(p.ip));
    vec![
        format!(
            "link add {} address {hmac} type veth peer name eth0 address {pmac} netns {}",
            p.host_veth, p.netns
        ),
        format!("link set {} up", p.host_veth),
        format!("route add {}/32 dev {} scope link", p.ip, p.host_veth),
        format!(
            "neigh replace {} lladdr {pmac} dev {} nud permanent",
            p.ip, p.host_veth
        ),
    ]
}

/// In the pod's netns.
pub fn pod_lines(p: &PodState) -> Vec<String> {
    vec![
        "link set lo up".to_string(),
        "link set eth0 up".to_string(),
        format!("addr add {}/32 dev eth0", p.ip),
        format!("route add {POD_GATEWAY} dev eth0 scope link"),
        format!("route add default via {POD_GATEWAY} dev eth0"),
        format!(
            "neigh replace {POD_GATEWAY} lladdr {} dev eth0 nud permanent",
            plan::host_veth_mac(p.ip)
        ),
    ]
}

/// Routes to the pods of every node other than `local` (`None`: the external client).
pub fn remote_pod_routes(state: &State, local: Option<&str>) -> Vec<String> {
    let mut l = Vec::new();
    for n in state.nodes.iter().filter(|n| Some(n.name.as_str()) != local) {
        match &n.pod_cidr {
            Some(cidr) => l.push(format!("route replace {cidr} via {} dev eth0", n.ip)),
            None => {
                for p in state.pods.iter().filter(|p| p.node == n.name) {
                    l.push(format!("route replace {}/32 via {} dev eth0", p.ip, n.ip));
                }
            }
        }
    }
    l
}

/// Where a route to `pod` must be added or removed when it comes or goes: every netns but its node's.
/// Empty when its node routes a podCIDR (the CIDR route covers the pod already).
pub fn route_holders<'a>(state: &'a State, pod: &PodState) -> Vec<&'a str> {
    let node = state.node(&pod.node);
    if node.is_some_and(|n| n.pod_cidr.is_some()) {
        return Vec::new();
    }
    state
        .nodes
        .iter()
        .filter(|n| n.name != pod.node)
        .map(|n| n.netns.as_str())
        .chain([state.external.netns.as_str()])
        .collect()
}

pub fn external_lines(state: &State) -> Vec<String> {
    let mut l = vec![
        "link set lo up".to_string(),
        "link set eth0 up".to_string(),
        format!("addr add {}/{} dev eth0", state.external.ip, prefix_len(state)),
    ];
    l.extend(remote_pod_routes(state, None));
    l.extend(external::setup_lines(state));
    l.extend(external::service_routes(state, &[]));
    l
}

/// The control plane's netns: its segment address only. It needs no route to pods: the apiserver
/// calls no webhook or aggregated API, and nodes and clients reach it on the segment.
pub fn control_plane_lines(state: &State, ip: std::net::Ipv4Addr) -> Vec<String> {
    vec![
        "link set lo up".to_string(),
        "link set eth0 up".to_string(),
        format!("addr add {ip}/{} dev eth0", prefix_len(state)),
    ]
}

/// Builds the whole topology of `state`. Netns must not exist yet. On error the caller tears down.
pub fn build(state: &State) -> Result<()> {
    let all: Vec<&str> = [state.segment_netns.as_str(), state.external.netns.as_str()]
        .into_iter()
        .chain(state.nodes.iter().map(|n| n.netns.as_str()))
        .chain(state.pods.iter().map(|p| p.netns.as_str()))
        .chain(state.control_plane.iter().map(|c| c.netns.as_str()))
        .collect();
    for ns in &all {
        netns::add(ns)?;
        netns::sysctls(ns, ALL_NETNS)?;
    }
    for n in &state.nodes {
        netns::sysctls(&n.netns, NODE_NETNS)?;
    }
    netns::ip_batch(&state.segment_netns, &segment_lines(state))?;
    for n in &state.nodes {
        netns::ip_batch(&n.netns, &node_lines(state, n))?;
    }
    for p in &state.pods {
        netns::ip_batch(&p.netns, &pod_lines(p))?;
    }
    if let Some(cp) = &state.control_plane {
        netns::ip_batch(&cp.netns, &control_plane_lines(state, cp.ip))?;
    }
    netns::ip_batch(&state.external.netns, &external_lines(state))
}

/// Adds one pod to a running lab (`state` already lists it).
pub fn add_pod(state: &State, p: &PodState) -> Result<()> {
    let node = state
        .node(&p.node)
        .ok_or_else(|| anyhow::anyhow!("no node {}", p.node))?;
    netns::add(&p.netns)?;
    netns::sysctls(&p.netns, ALL_NETNS)?;
    netns::ip_batch(&node.netns, &pod_host_lines(p))?;
    netns::ip_batch(&p.netns, &pod_lines(p))?;
    for holder in route_holders(state, p) {
        let gw = node.ip;
        netns::ip_batch(holder, &[format!("route replace {}/32 via {gw} dev eth0", p.ip)])?;
    }
    Ok(())
}

/// Removes one pod's wiring (its processes must be gone). Deleting the netns deletes the veth pair
/// and with it the node's route and neighbour entry; remote routes are removed here.
pub fn remove_pod(state: &State, p: &PodState) -> Result<()> {
    for holder in route_holders(state, p) {
        // Already gone is fine: removal must be idempotent.
        let _ = netns::ip_batch(holder, &[format!("route del {}/32", p.ip)]);
    }
    if netns::exists(&p.netns) {
        netns::delete(&p.netns)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{layout::layout, spec, state::Paths};

    fn state(with_cidr: bool) -> State {
        let cidr = if with_cidr {
            "spec: {podCIDR: 10.244.2.0/24}\n"
        } else {
            ""
        };
        let file = format!(
            "
apiVersion: v1
kind: Node
metadata: {{name: n1}}
status: {{addresses: [{{type: InternalIP, address: 10.0.0.10}}]}}
---
apiVersion: v1
kind: Node
metadata: {{name: n2}}
{cidr}status: {{addresses: [{{type: InternalIP, address: 10.0.0.11}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: a, namespace: x}}
spec: {{nodeName: n1, containers: [{{name: c}}]}}
status: {{podIP: 10.244.1.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: b, namespace: x}}
spec: {{nodeName: n2, containers: [{{name: c}}]}}
status: {{podIP: 10.244.2.2}}
"
        );
        layout(
            &Paths::new("t"),
            &spec::validate(spec::parse(&file).unwrap()).unwrap(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn node_wiring() {
        let s = state(false);
        let lines = node_lines(&s, &s.nodes[0]);
        assert!(lines.contains(&"addr add 10.0.0.10/24 dev eth0".to_string()));
        let veth = &s.pods[0].host_veth;
        assert!(lines.contains(&format!("route add 10.244.1.2/32 dev {veth} scope link")));
        assert!(lines.contains(&format!(
            "neigh replace 10.244.1.2 lladdr 0a:58:0a:f4:01:02 dev {veth} nud permanent"
        )));
        assert!(lines.contains(&"route replace 10.244.2.2/32 via 10.0.0.11 dev eth0".to_string()));
        assert!(!lines.iter().any(|l| l.contains("10.244.1.2/32 via")));
    }

    #[test]
    fn pod_wiring() {
        let s = state(false);
        let lines = pod_lines(&s.pods[0]);
        assert!(lines.contains(&"addr add 10.244.1.2/32 dev eth0".to_string()));
        assert!(lines.contains(&"route add default via 169.254.1.1 dev eth0".to_string()));
        assert!(lines.contains(
            &"neigh replace 169.254.1.1 lladdr 0e:58:0a:f4:01:02 dev eth0 nud permanent".to_string()
        ));
    }

    #[test]
    fn pod_cidr_routes_replace_per_pod_routes() {
        let s = state(true);
        let lines = node_lines(&s, &s.nodes[0]);
        assert!(lines.contains(&"route replace 10.244.2.0/24 via 10.0.0.11 dev eth0".to_string()));
        assert!(!lines.iter().any(|l| l.contains("10.244.2.2/32")));
        assert!(route_holders(&s, &s.pods[1]).is_empty());
        assert_eq!(
            route_holders(&s, &s.pods[0]),
            vec!["strait-t-node-n2", "strait-t-external"]
        );
    }

    #[test]
    fn external_reaches_all_pods() {
        let s = state(false);
        let lines = external_lines(&s);
        assert!(lines.contains(&"addr add 10.0.0.254/24 dev eth0".to_string()));
        assert!(lines.contains(&"route replace 10.244.1.2/32 via 10.0.0.10 dev eth0".to_string()));
        assert!(lines.contains(&"route replace 10.244.2.2/32 via 10.0.0.11 dev eth0".to_string()));
    }
}
