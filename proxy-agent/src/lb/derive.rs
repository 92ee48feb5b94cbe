//! Standalone mode's EndpointSlice controller: slices derived from Service selectors, for Services that
//! have none, as kube-controller-manager's EndpointSlice controller would write them
//! (`pkg/controller/endpointslice` and `staging/src/k8s.io/endpointslice`, v1.33).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, ServicePort},
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{SERVICE_NAME_LABEL, ZONE_LABEL};
use crate::{
    slim::{Pod, Service},
    snapshot::Snapshot,
};

/// The derived slices `new` as shared objects, each taking the allocation of an equal slice of the
/// same namespace/name in `old` (the last derivation) when there is one: the planner re-plans a
/// Service only when one of its slices is a new allocation.
pub fn keep_unchanged(
    old: Vec<Arc<crate::slim::EndpointSlice>>,
    new: Vec<EndpointSlice>,
) -> Vec<Arc<crate::slim::EndpointSlice>> {
    let mut old: BTreeMap<(Option<String>, Option<String>), Arc<crate::slim::EndpointSlice>> = old
        .into_iter()
        .map(|s| ((s.metadata.namespace.clone(), s.metadata.name.clone()), s))
        .collect();
    new.into_iter()
        .map(|s| {
            let s = crate::slim::EndpointSlice::from(s);
            let key = (s.metadata.namespace.clone(), s.metadata.name.clone());
            match old.remove(&key) {
                Some(kept) if *kept == s => kept,
                _ => Arc::new(s),
            }
        })
        .collect()
}

/// `endpointslice.kubernetes.io/managed-by` of the slices made here.
pub const MANAGED_BY: &str = "strait-standalone";

/// EndpointSlices for every selector Service that has no EndpointSlice in the snapshot: the pods of
/// its namespace that match the selector and have an IPv4 address, one slice per distinct port
/// mapping (two pods may resolve a named targetPort to different numbers). Conditions:
/// `serving` = the pod's Ready condition is not False (pods in hand-written manifests usually carry no
/// status conditions; the real controller requires Ready=True), `terminating` = a deletionTimestamp
/// is set, `ready` = serving and not terminating (or publishNotReadyAddresses). Hints follow
/// `spec.trafficDistribution` as the controller's `trafficdist` heuristic does. Sorted by
/// namespace/name.
fn has_selector(s: &Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|spec| spec.selector.as_ref())
        .is_some_and(|sel| !sel.is_empty())
}

/// Whether any Service selects pods: without one there is nothing to derive.
pub fn any_selector_service(snapshot: &Snapshot) -> bool {
    snapshot.services.iter().any(|s| has_selector(s))
}

pub fn derive_endpoint_slices(snapshot: &Snapshot) -> Vec<EndpointSlice> {
    let mut out = Vec::new();
    // Runs after every change in standalone mode: without a selector Service there is nothing to
    // derive, and the indexes below cost milliseconds at 10k Services.
    if !any_selector_service(snapshot) {
        return out;
    }
    // Indexes, so that 10k Services over 10k pods stay linear.
    let with_slices: BTreeSet<(&str, &str)> = snapshot
        .endpoint_slices
        .iter()
        .filter_map(|s| {
            let service = s.service_name.as_ref()?;
            Some((
                s.metadata.namespace.as_deref().unwrap_or("default"),
                service.as_str(),
            ))
        })
        .collect();
    let mut pods_by_namespace: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in &snapshot.pods {
        pods_by_namespace
            .entry(pod.metadata.namespace.as_deref().unwrap_or("default"))
            .or_default()
            .push(pod);
    }
    let mut services: Vec<&Service> = snapshot.services.iter().map(|s| &**s).collect();
    services.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for service in services {
        let namespace = service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(name) = service.metadata.name.clone() else {
            continue;
        };
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        // Services without a selector get no slices from the controller (an empty selector is what
        // the API server stores as none).
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        if with_slices.contains(&(namespace.as_str(), name.as_str())) {
            continue;
        }
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        let traffic_distribution = spec.traffic_distribution.as_deref();
        let headless = spec.cluster_ip.as_deref() == Some("None");

        // Port mapping → endpoints, in pod-name order.
        let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Endpoint>> = BTreeMap::new();
        let mut pods: Vec<&Pod> = pods_by_namespace
            .get(namespace.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v.as_str())))
            .collect();
        pods.sort_by_key(|p| p.metadata.name.clone());
        for pod in pods {
            let Some(ip) = pod_ipv4(pod) else { continue };
            if pod_is_terminal(pod) {
                continue;
            }
            let ports: Vec<(String, i32, String)> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|sp| {
                    let number = find_port(pod, sp)?;
                    Some((
                        sp.name.clone().unwrap_or_default(),
                        number,
                        sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ))
                })
                .collect();
            // The controller allows port-less endpoints only for headless Services.
            if ports.is_empty() && !headless {
                continue;
            }
            let serving = pod_serving(pod);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let ready = publish_not_ready || (serving && !terminating);
            let node_name = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty());
            let zone = node_name
                .as_deref()
                .and_then(|n| snapshot.node(n))
                .and_then(|n| n.metadata.labels.as_ref())
                .and_then(|l| l.get(ZONE_LABEL))
                .filter(|z| !z.is_empty())
                .cloned();
            let mut endpoint = Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                node_name: node_name.clone(),
                zone: zone.clone(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(namespace.clone()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            endpoint.hints = hints(traffic_distribution, ready, zone, node_name);
            groups.entry(ports).or_default().push(endpoint);
        }
        for (i, (ports, endpoints)) in groups.into_iter().enumerate() {
            let labels = BTreeMap::from([
                (SERVICE_NAME_LABEL.to_string(), name.clone()),
                (
                    "endpointslice.kubernetes.io/managed-by".to_string(),
                    MANAGED_BY.to_string(),
                ),
            ]);
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-derived-{i}")),
                    namespace: Some(namespace.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints,
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: Some(name),
                            port: Some(port),
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            });
        }
    }
    out
}

/// `trafficdist.preferCloseHeuristic.update`: ready endpoints get a hint for their own zone (and, for
/// PreferSameNode, their own node); any other distribution means no hints.
fn hints(
    distribution: Option<&str>,
    ready: bool,
    zone: Option<String>,
    node: Option<String>,
) -> Option<EndpointHints> {
    let same_node = match distribution {
        Some("PreferClose" | "PreferSameZone") => false,
        Some("PreferSameNode") => true,
        _ => return None,
    };
    if !ready {
        return None;
    }
    let for_zones = zone.map(|name| vec![ForZone { name }]);
    let for_nodes = node.filter(|_| same_node).map(|name| vec![ForNode { name }]);
    if for_zones.is_none() && for_nodes.is_none() {
        return None;
    }
    Some(EndpointHints { for_nodes, for_zones })
}

fn pod_ipv4(pod: &Pod) -> Option<Ipv4Addr> {
    let status = pod.status.as_ref()?;
    let candidates = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref());
    candidates
        .filter_map(|ip| match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        })
        .next()
}

/// Succeeded or Failed pods are never endpoints (`ShouldPodBeInEndpoints`).
fn pod_is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_serving(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    !conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "False")
}

/// `podutil.FindPort`: a numeric targetPort as is (absent: the Service port), a named one through the
/// pod's container ports (and restartable init containers, i.e. sidecars) with the same protocol.
fn find_port(pod: &Pod, service_port: &ServicePort) -> Option<i32> {
    let protocol = service_port.protocol.as_deref().unwrap_or("TCP");
    match &service_port.target_port {
        None => Some(service_port.port),
        Some(IntOrString::Int(0)) => Some(service_port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}
