//! EndpointSlices as kube-proxy reads them (`pkg/proxy/endpointslicecache.go`) and the choice of usable
//! endpoints (`pkg/proxy/topology.go`, `CategorizeEndpoints`).

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use super::{Proto, Rejected};
use crate::slim::{EndpointSlice, Hints, NodeName};

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
    pub node_name: Option<NodeName>,
    pub hints: Hints,
}

/// A slice port; `port` is `None` when kube-proxy ignores it (no name, no or zero port).
#[derive(Debug, Clone)]
struct SlicePort {
    name: Option<String>,
    port: Option<u16>,
    proto: Proto,
}

/// A valid IPv4 EndpointSlice, read once: its ports; its endpoints are read from the stored object
/// when a Service is planned (a copy of 100k endpoints cost ~3.5 MB at the agent bench's scale).
#[derive(Debug, Clone)]
pub(crate) struct ServiceSlice {
    object: Arc<EndpointSlice>,
    ports: Vec<SlicePort>,
}

impl ServiceSlice {
    pub fn namespace(&self) -> &str {
        self.object.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The `kubernetes.io/service-name` label.
    pub fn service(&self) -> &str {
        self.object.service_name.as_deref().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }

    /// The endpoints kube-proxy uses: it reads the first address only, ignores an endpoint without
    /// any, and skips one of the wrong family (with an event). A slice with an address that is no IP
    /// was rejected whole by `validate`.
    fn endpoints(&self) -> impl Iterator<Item = SliceEndpoint<'_>> {
        self.object.endpoints.iter().filter_map(|ep| {
            let Some(std::net::IpAddr::V4(addr)) = ep.address.ip() else {
                return None;
            };
            let conditions = ep.conditions.as_ref();
            Some(SliceEndpoint {
                addr,
                // As kube-proxy and the API docs: an absent ready or serving means true, an absent
                // terminating means false.
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                node_name: &ep.node_name,
                hints: &ep.hints,
            })
        })
    }
}

struct SliceEndpoint<'a> {
    addr: Ipv4Addr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: &'a Option<NodeName>,
    hints: &'a Hints,
}

/// What the planner makes of one EndpointSlice: `None` for a slice that is not ours to judge (kube-proxy
/// watches only its own family; IPv6 and FQDN slices, and slices without a Service label, are skipped),
/// else the valid slice or why it was rejected.
pub(crate) fn read_slice(slice: &Arc<EndpointSlice>) -> Option<Result<ServiceSlice, Rejected>> {
    if *slice.address_type != *"IPv4" {
        return None;
    }
    slice.service_name.as_ref()?;
    Some(match validate(slice) {
        Ok(ports) => Ok(ServiceSlice {
            object: slice.clone(),
            ports,
        }),
        Err((field, reason)) => Err(Rejected {
            kind: "EndpointSlice",
            namespace: slice
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: slice.metadata.name.clone().unwrap_or_default(),
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
    for slice in slices {
        for port in &slice.ports {
            let Some(number) = port.port else { continue };
            if port.name.as_deref() != Some(port_name) || port.proto != proto {
                continue;
            }
            for ep in slice.endpoints() {
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

/// The slice's ports, or the first field that makes the slice unusable.
fn validate(slice: &EndpointSlice) -> Result<Vec<SlicePort>, (String, String)> {
    let mut ports = Vec::with_capacity(slice.ports.as_ref().map_or(0, |p| p.len()));
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
    for (i, ep) in slice.endpoints.iter().enumerate() {
        if let Some(text) = ep.address.unparsed() {
            return Err((
                format!("endpoints[{i}].addresses[0]"),
                format!("{text:?} is not an IP address"),
            ));
        }
    }
    Ok(ports)
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
