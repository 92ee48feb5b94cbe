//! EndpointSlices as kube-proxy reads them (`pkg/proxy/endpointslicecache.go`) and the choice of usable
//! endpoints (`pkg/proxy/topology.go`, `CategorizeEndpoints`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use super::{Proto, Rejected};
use crate::slim::{Address, EndpointSlice};

/// One endpoint of one Service port, after the merge of all the Service's slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// nodeName is this node.
    pub local: bool,
    pub node_name: Option<Arc<str>>,
    pub hints: Hints,
}

/// An endpoint's topology hints (`hints.forZones`, `hints.forNodes`), shared by the slice's reading
/// and every Service port's copy. Most endpoints carry none, and two empty sets inline cost 48 bytes
/// an endpoint in each of the planner's copies (100k endpoints at the scale the agent is measured at).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Hints(Option<Arc<HintSets>>);

#[derive(Debug, Default, PartialEq, Eq)]
struct HintSets {
    zones: BTreeSet<String>,
    nodes: BTreeSet<String>,
}

impl Hints {
    fn new(zones: BTreeSet<String>, nodes: BTreeSet<String>) -> Self {
        if zones.is_empty() && nodes.is_empty() {
            return Self(None);
        }
        Self(Some(Arc::new(HintSets { zones, nodes })))
    }

    fn has_zones(&self) -> bool {
        self.0.as_ref().is_some_and(|h| !h.zones.is_empty())
    }

    fn has_nodes(&self) -> bool {
        self.0.as_ref().is_some_and(|h| !h.nodes.is_empty())
    }

    fn for_zone(&self, zone: &str) -> bool {
        self.0.as_ref().is_some_and(|h| h.zones.contains(zone))
    }

    fn for_node(&self, node: &str) -> bool {
        self.0.as_ref().is_some_and(|h| h.nodes.contains(node))
    }
}

/// A slice port; `port` is `None` when kube-proxy ignores it (no name, no or zero port).
#[derive(Debug, Clone)]
struct SlicePort {
    name: Option<String>,
    port: Option<u16>,
    proto: Proto,
}

#[derive(Debug, Clone)]
struct SliceEndpoint {
    addr: Ipv4Addr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: Option<Arc<str>>,
    hints: Hints,
}

#[derive(Debug, Clone)]
struct Slice {
    ports: Vec<SlicePort>,
    endpoints: Vec<SliceEndpoint>,
}

/// A valid IPv4 EndpointSlice, read once, with the Service it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct ServiceSlice {
    pub namespace: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    pub name: String,
    slice: Slice,
}

/// What the planner makes of one EndpointSlice: `None` for a slice that is not ours to judge (kube-proxy
/// watches only its own family; IPv6 and FQDN slices, and slices without a Service label, are skipped),
/// else the valid slice or why it was rejected.
pub(crate) fn read_slice(slice: &EndpointSlice) -> Option<Result<ServiceSlice, Rejected>> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let service = slice.service_name.as_ref()?;
    let namespace = slice
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = slice.metadata.name.clone().unwrap_or_default();
    Some(match validate(slice) {
        Ok(valid) => Ok(ServiceSlice {
            namespace,
            service: service.clone(),
            name,
            slice: valid,
        }),
        Err((field, reason)) => Err(Rejected {
            kind: "EndpointSlice",
            namespace,
            name,
            field,
            reason,
        }),
    })
}

/// The endpoints of one Service port (matched to slice ports by name and protocol, as kube-proxy's
/// `ServicePortName`), merged over the Service's slices (given in slice-name order, so that the merge
/// is deterministic) and de-duplicated by address:port. Like kube-proxy, the first occurrence wins
/// unless a later one is local. Sorted by (addr, port).
pub(crate) fn merged_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a ServiceSlice>,
    port_name: &str,
    proto: Proto,
    node_name: &str,
) -> Vec<Endpoint> {
    let mut merged: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
    for ServiceSlice { slice, .. } in slices {
        for port in &slice.ports {
            let Some(number) = port.port else { continue };
            if port.name.as_deref() != Some(port_name) || port.proto != proto {
                continue;
            }
            for ep in &slice.endpoints {
                let local = ep.node_name.as_deref() == Some(node_name);
                let key = (ep.addr, number);
                if merged.contains_key(&key) && !local {
                    continue;
                }
                merged.insert(
                    key,
                    Endpoint {
                        addr: ep.addr,
                        port: number,
                        ready: ep.ready,
                        serving: ep.serving,
                        terminating: ep.terminating,
                        local,
                        node_name: ep.node_name.clone(),
                        hints: ep.hints.clone(),
                    },
                );
            }
        }
    }
    merged.into_values().collect()
}

fn validate(slice: &EndpointSlice) -> Result<Slice, (String, String)> {
    let mut ports = Vec::with_capacity(slice.ports.as_ref().map_or(0, Vec::len));
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        let proto =
            Proto::parse(port.protocol.as_deref()).map_err(|e| (format!("ports[{i}].protocol"), e))?;
        let number = match port.port {
            // kube-proxy ignores a port without a number or with 0 ("TODO: handle nil ports to mean all").
            None | Some(0) => None,
            Some(p @ 1..=65535) => Some(p as u16),
            Some(p) => return Err((format!("ports[{i}].port"), format!("{p} is not a valid port"))),
        };
        // A port with a nil name is ignored by kube-proxy as well.
        let number = if port.name.is_some() { number } else { None };
        ports.push(SlicePort {
            name: port.name.clone(),
            port: number,
            proto,
        });
    }
    // Sized once: grown by pushes, a slice of 10 endpoints held room for 16, and the planner keeps
    // every slice it read.
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // kube-proxy uses the first address only and ignores an endpoint without any.
        let addr = match &ep.address {
            Address::Missing => continue,
            Address::Ip(std::net::IpAddr::V4(a)) => *a,
            // The wrong family inside an IPv4 slice: kube-proxy skips it (with an event).
            Address::Ip(std::net::IpAddr::V6(_)) => continue,
            Address::Unparsed(text) => {
                return Err((
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{text:?} is not an IP address"),
                ));
            }
        };
        let conditions = ep.conditions.clone().unwrap_or_default();
        let hints = ep.hints.as_deref().map_or_else(Hints::default, |h| {
            Hints::new(
                h.for_zones.iter().flatten().map(|z| z.name.clone()).collect(),
                h.for_nodes.iter().flatten().map(|n| n.name.clone()).collect(),
            )
        });
        endpoints.push(SliceEndpoint {
            addr,
            // As kube-proxy and the API docs: an absent ready or serving means true, an absent
            // terminating means false.
            ready: conditions.ready.unwrap_or(true),
            serving: conditions.serving.unwrap_or(true),
            terminating: conditions.terminating.unwrap_or(false),
            node_name: ep.node_name.clone(),
            hints,
        });
    }
    Ok(Slice { ports, endpoints })
}

/// Traffic distribution chosen from hints (`topologyModeFromHints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    None,
    SameNode,
    SameZone,
}

/// kube-proxy's `topologyModeFromHints` (with the PreferSameTrafficDistribution gate on): hints are used
/// only when every ready endpoint carries them and at least one is meant for this node (zone); otherwise
/// traffic goes to every endpoint.
fn topology_mode(endpoints: &[Endpoint], node_name: &str, zone: &str) -> TopologyMode {
    let mut has_ready = false;
    let (mut all_node_hints, mut for_node) = (true, false);
    let (mut all_zone_hints, mut for_zone) = (true, false);
    for ep in endpoints.iter().filter(|e| e.ready) {
        has_ready = true;
        if !ep.hints.has_nodes() {
            all_node_hints = false;
        } else if ep.hints.for_node(node_name) {
            for_node = true;
        }
        if !ep.hints.has_zones() {
            all_zone_hints = false;
        } else if ep.hints.for_zone(zone) {
            for_zone = true;
        }
    }
    if !has_ready {
        TopologyMode::None
    } else if all_node_hints && for_node {
        TopologyMode::SameNode
    } else if all_zone_hints && for_zone {
        TopologyMode::SameZone
    } else {
        TopologyMode::None
    }
}

fn available_for_topology(ep: &Endpoint, mode: TopologyMode, node_name: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => ep.hints.for_node(node_name),
        TopologyMode::SameZone => ep.hints.for_zone(zone),
    }
}

/// The result of kube-proxy's `CategorizeEndpoints` for one Service port.
#[derive(Debug, Default)]
pub(crate) struct Categorized {
    /// Cluster-traffic-policy endpoints (topology applied); empty when the port never uses them.
    pub cluster: Vec<Endpoint>,
    /// Local-traffic-policy endpoints; empty when the port never uses them.
    pub local: Vec<Endpoint>,
    /// Some usable endpoint exists anywhere in the cluster.
    pub has_any: bool,
}

/// kube-proxy's `CategorizeEndpoints`: ready endpoints, else serving+terminating ones (KEP-1669),
/// separately for the Cluster and the Local sets.
pub(crate) fn categorize(
    endpoints: &[Endpoint],
    uses_cluster: bool,
    uses_local: bool,
    node_name: &str,
    zone: &str,
) -> Categorized {
    let mut out = Categorized::default();
    if endpoints.is_empty() {
        return out;
    }
    let select = |pred: &dyn Fn(&Endpoint) -> bool| -> Vec<Endpoint> {
        endpoints.iter().filter(|e| pred(e)).cloned().collect()
    };
    if uses_cluster {
        let mode = topology_mode(endpoints, node_name, zone);
        out.cluster = select(&|e| e.ready && available_for_topology(e, mode, node_name, zone));
        if out.cluster.is_empty() {
            out.cluster = select(&|e| e.serving && e.terminating);
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !uses_local {
        return out;
    }
    let (mut local_ready, mut local_terminating) = (false, false);
    for ep in endpoints {
        if ep.ready {
            out.has_any = true;
            local_ready |= ep.local;
        } else if ep.serving && ep.terminating {
            out.has_any = true;
            local_terminating |= ep.local;
        }
    }
    if local_ready {
        out.local = select(&|e| e.local && e.ready);
    } else if local_terminating {
        out.local = select(&|e| e.local && e.serving && e.terminating);
    }
    out
}
