//! The external client: a netns on the node segment standing for everything outside the cluster, and
//! the router in front of it.
//!
//! Addresses: its own segment address (picked by the lab) plus any number of /32 client addresses
//! declared in the lab file, so one lab can show a source range admitting 203.0.113.2 and refusing
//! 203.0.113.130:
//! ```yaml
//! apiVersion: lab.strait.dev/v1
//! kind: ExternalClient
//! metadata: {name: external}
//! spec: {addresses: [203.0.113.2, 203.0.113.130]}
//! ```
//! (or `lab up --external-address IP`). Every node routes these addresses back via the external
//! client's segment address, as a cluster's default route would.
//!
//! Routing of service addresses (ClusterIPs, externalIPs, LoadBalancer IPs): the main table sends them
//! to the first node, as a router in front of a cluster would; `--via NODE` picks another node per
//! socket. That is done with policy routing rather than by changing the route for the duration of a
//! probe: routing table `TABLE_BASE + i` sends every service address to node `i`, and a rule selects
//! that table for packets carrying mark `MARK_BASE + i`, which the client sets on its socket
//! (SO_MARK). So concurrent probes via different nodes never see each other's choice, and a
//! long-lived connection or UDP flow keeps its path while other probes run; `lab exec external`
//! commands, without a mark, take the main table.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::{plan::Subnet, state::State};

pub const API_VERSION: &str = "lab.strait.dev/v1";
pub const KIND: &str = "ExternalClient";

/// First routing table and mark of the per-node routes (`--via`); node `i` gets `+ i`.
pub const TABLE_BASE: u32 = 100;
pub const MARK_BASE: u32 = 0x5a11_0000;

/// The lab file's `ExternalClient` document (not a Kubernetes object: the agents never see it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalClient {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ExternalClientSpec,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalClientSpec {
    /// IPv4 addresses, `203.0.113.2` or `203.0.113.2/32`.
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl ExternalClient {
    pub fn with_addresses(addresses: &[Ipv4Addr]) -> ExternalClient {
        ExternalClient {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: ObjectMeta {
                name: Some("external".into()),
                ..Default::default()
            },
            spec: ExternalClientSpec {
                addresses: addresses.iter().map(ToString::to_string).collect(),
            },
        }
    }
}

/// One address of `spec.addresses[i]`: an IPv4 address, optionally written as a /32.
pub fn parse_address(text: &str) -> Result<Ipv4Addr, String> {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (text, None),
    };
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 address"))?;
    if prefix.is_some_and(|p| p != "32") {
        return Err(format!(
            "{text:?}: only single addresses (/32) are client addresses"
        ));
    }
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_link_local()
    {
        return Err(format!(
            "{ip} cannot be a client address (loopback, link-local, multicast or reserved)"
        ));
    }
    Ok(ip)
}

/// Checks the addresses of an ExternalClient against the node subnet; `who` names the object.
/// Addresses owned by nodes or pods are checked by the caller with every other address of the lab.
pub fn check_addresses(ec: &ExternalClient, subnet: Subnet, errors: &mut Vec<String>) -> Vec<Ipv4Addr> {
    let who = format!("{KIND} {}", ec.metadata.name.as_deref().unwrap_or_default());
    if ec.api_version != API_VERSION {
        errors.push(format!(
            "{who}: apiVersion {:?} is not {API_VERSION}",
            ec.api_version
        ));
    }
    let mut out = Vec::new();
    for (i, text) in ec.spec.addresses.iter().enumerate() {
        let field = format!("{who}: spec.addresses[{i}]");
        match parse_address(text) {
            Err(e) => errors.push(format!("{field}: {e}")),
            Ok(ip) if subnet.contains(ip) => errors.push(format!(
                "{field}: {ip} lies in the node subnet {subnet} (the external client's own address there \
                 is picked by the lab; client addresses are from outside the cluster)"
            )),
            Ok(ip) if out.contains(&ip) => errors.push(format!("{field}: {ip} is listed twice")),
            Ok(ip) => out.push(ip),
        }
    }
    out
}

/// The node whose index is `i`, and back: the mark a socket sets to be routed via `node`.
pub fn via_mark(state: &State, node: &str) -> Result<u32> {
    match state.nodes.iter().position(|n| n.name == node) {
        Some(i) => Ok(MARK_BASE + u32::try_from(i).expect("few nodes")),
        None => bail!(
            "--via {node}: no such node (the lab has {})",
            state
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn table(i: usize) -> u32 {
    TABLE_BASE + u32::try_from(i).expect("few nodes")
}

/// Every service address routed from outside.
pub fn routed(state: &State) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = state
        .external
        .service_ips
        .iter()
        .chain(&state.external.cluster_ips)
        .copied()
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// In the external netns at `up`: the client addresses and one rule per node (mark -> table).
pub fn setup_lines(state: &State) -> Vec<String> {
    let mut l: Vec<String> = state
        .external
        .addresses
        .iter()
        .map(|a| format!("addr add {a}/32 dev eth0"))
        .collect();
    for i in 0..state.nodes.len() {
        let (mark, table) = (MARK_BASE + u32::try_from(i).expect("few nodes"), table(i));
        l.push(format!("rule add fwmark {mark:#x} lookup {table} pref {table}"));
    }
    l
}

/// Service routes in the external netns: the main table via the first node, table `TABLE_BASE + i`
/// via node `i`. Addresses of `old` that are no longer routed are removed from every table.
pub fn service_routes(state: &State, old: &[Ipv4Addr]) -> Vec<String> {
    let now = routed(state);
    let mut l = Vec::new();
    for ip in old.iter().filter(|ip| !now.contains(ip)) {
        l.push(format!("route del {ip}/32"));
        for i in 0..state.nodes.len() {
            l.push(format!("route del {ip}/32 table {}", table(i)));
        }
    }
    let Some(first) = state.nodes.first() else {
        return l;
    };
    for ip in &now {
        l.push(format!("route replace {ip}/32 via {} dev eth0", first.ip));
        for (i, n) in state.nodes.iter().enumerate() {
            l.push(format!(
                "route replace {ip}/32 via {} dev eth0 table {}",
                n.ip,
                table(i)
            ));
        }
    }
    l
}

/// In a node's netns: routes back to the client addresses, via the external client's segment address.
pub fn node_return_routes(state: &State, addresses: &[Ipv4Addr]) -> Vec<String> {
    addresses
        .iter()
        .map(|a| format!("route replace {a}/32 via {} dev eth0", state.external.ip))
        .collect()
}

/// What changes when the client addresses go from `old` to `state`'s: lines for the external netns
/// and for every node netns.
pub fn address_changes(state: &State, old: &[Ipv4Addr]) -> (Vec<String>, Vec<String>) {
    let new = &state.external.addresses;
    let mut ext = Vec::new();
    let mut node = Vec::new();
    for a in old.iter().filter(|a| !new.contains(a)) {
        ext.push(format!("addr del {a}/32 dev eth0"));
        node.push(format!("route del {a}/32"));
    }
    let added: Vec<Ipv4Addr> = new.iter().filter(|a| !old.contains(a)).copied().collect();
    ext.extend(added.iter().map(|a| format!("addr add {a}/32 dev eth0")));
    node.extend(node_return_routes(state, &added));
    (ext, node)
}

/// The address a client of the external netns sends from: its segment address, or one of its
/// client addresses (`external:IP`).
pub fn check_bind(state: &State, ip: Ipv4Addr) -> Result<()> {
    if ip == state.external.ip || state.external.addresses.contains(&ip) {
        return Ok(());
    }
    let held: Vec<String> = std::iter::once(state.external.ip)
        .chain(state.external.addresses.iter().copied())
        .map(|a| a.to_string())
        .collect();
    bail!(
        "--from external:{ip}: the external client has no address {ip} (it has {}); declare client \
         addresses in the lab file (kind {KIND}, spec.addresses) or with `lab up --external-address`",
        held.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{layout::layout, spec, state::Paths};

    const FILE: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.10}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 10.0.0.11}]}
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec: {clusterIP: 10.96.0.10, externalIPs: [198.51.100.7], ports: [{port: 80}]}
---
apiVersion: lab.strait.dev/v1
kind: ExternalClient
metadata: {name: external}
spec: {addresses: [203.0.113.2, 203.0.113.130/32]}
";

    fn state(text: &str) -> State {
        let c = spec::validate(spec::parse(text).unwrap()).unwrap();
        layout(&Paths::new("t"), &c, None).unwrap()
    }

    #[test]
    fn addresses_rules_and_routes() {
        let s = state(FILE);
        assert_eq!(
            s.external.addresses,
            vec![Ipv4Addr::new(203, 0, 113, 2), Ipv4Addr::new(203, 0, 113, 130)]
        );
        assert_eq!(
            setup_lines(&s),
            vec![
                "addr add 203.0.113.2/32 dev eth0",
                "addr add 203.0.113.130/32 dev eth0",
                "rule add fwmark 0x5a110000 lookup 100 pref 100",
                "rule add fwmark 0x5a110001 lookup 101 pref 101",
            ]
        );
        let routes = service_routes(&s, &[Ipv4Addr::new(198, 51, 100, 9)]);
        assert_eq!(
            routes,
            vec![
                "route del 198.51.100.9/32",
                "route del 198.51.100.9/32 table 100",
                "route del 198.51.100.9/32 table 101",
                "route replace 10.96.0.10/32 via 10.0.0.10 dev eth0",
                "route replace 10.96.0.10/32 via 10.0.0.10 dev eth0 table 100",
                "route replace 10.96.0.10/32 via 10.0.0.11 dev eth0 table 101",
                "route replace 198.51.100.7/32 via 10.0.0.10 dev eth0",
                "route replace 198.51.100.7/32 via 10.0.0.10 dev eth0 table 100",
                "route replace 198.51.100.7/32 via 10.0.0.11 dev eth0 table 101",
            ]
        );
        assert_eq!(
            node_return_routes(&s, &s.external.addresses)[0],
            "route replace 203.0.113.2/32 via 10.0.0.254 dev eth0"
        );
        assert_eq!(via_mark(&s, "n2").unwrap(), 0x5a11_0001);
        let e = format!("{:#}", via_mark(&s, "n9").unwrap_err());
        assert!(e.contains("--via n9") && e.contains("n1, n2"), "{e}");
        assert!(check_bind(&s, Ipv4Addr::new(203, 0, 113, 130)).is_ok());
        assert!(check_bind(&s, Ipv4Addr::new(10, 0, 0, 254)).is_ok());
        let e = format!("{:#}", check_bind(&s, Ipv4Addr::new(203, 0, 113, 3)).unwrap_err());
        assert!(
            e.contains("203.0.113.2, 203.0.113.130") && e.contains("ExternalClient"),
            "{e}"
        );
    }

    #[test]
    fn address_changes_add_and_remove() {
        let s = state(FILE);
        let old = [Ipv4Addr::new(203, 0, 113, 2), Ipv4Addr::new(192, 0, 2, 1)];
        let (ext, node) = address_changes(&s, &old);
        assert_eq!(
            ext,
            vec![
                "addr del 192.0.2.1/32 dev eth0",
                "addr add 203.0.113.130/32 dev eth0"
            ]
        );
        assert_eq!(
            node,
            vec![
                "route del 192.0.2.1/32",
                "route replace 203.0.113.130/32 via 10.0.0.254 dev eth0"
            ]
        );
    }

    #[test]
    fn bad_addresses_are_named() {
        let bad = FILE.replace(
            "[203.0.113.2, 203.0.113.130/32]",
            "[203.0.113.2, 203.0.113.2, 10.0.0.77, 203.0.113.0/24, nope]",
        );
        let e = format!("{:#}", spec::validate(spec::parse(&bad).unwrap()).unwrap_err());
        for wanted in [
            "ExternalClient external: spec.addresses[1]: 203.0.113.2 is listed twice",
            "spec.addresses[2]: 10.0.0.77 lies in the node subnet 10.0.0.0/24",
            "spec.addresses[3]: \"203.0.113.0/24\": only single addresses",
            "spec.addresses[4]: \"nope\" is not an IPv4 address",
        ] {
            assert!(e.contains(wanted), "{wanted}\n{e}");
        }
        let two = format!(
            "{FILE}---\napiVersion: lab.strait.dev/v1\nkind: ExternalClient\nmetadata: {{name: other}}\n\
             spec: {{addresses: [203.0.113.9]}}\n"
        );
        let e = format!("{:#}", spec::validate(spec::parse(&two).unwrap()).unwrap_err());
        assert!(e.contains("only one ExternalClient"), "{e}");
    }
}
