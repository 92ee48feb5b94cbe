//! Compact stored forms of the kinds every node holds by the thousand. The sources deserialize an
//! object as its k8s-openapi type and keep only this (`#[serde(from = ...)]`, so the API source, the
//! manifests and the tests read them unchanged); the field names and shapes are the API's, so readers
//! are written as against k8s-openapi. Their metadata is the compact [`ObjectMeta`] (with the API's
//! `ObjectMeta`, which is 336 bytes inline, they could not be smaller than ~350 bytes each). What is
//! kept is what the readers use (see `source/kube/strip.rs`).
//!
//! Why: k8s-openapi types carry every field inline as an `Option`, whatever is set. At 10k Services the
//! EndpointSlices' 100k endpoints took ~45 MB as k8s-openapi `Endpoint`s (a full `ObjectReference`
//! among their options, ~350 bytes before any string) and take ~15 MB here; the Pods (see
//! `policy::slim`) went from ~48 MB to a few.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    sync::{Arc, LazyLock, Mutex},
};

use k8s_openapi::api::{
    core::v1::{self as core, ServicePort, ServiceStatus, SessionAffinityConfig},
    discovery::v1::{self as discovery, EndpointConditions, EndpointHints, EndpointPort},
};

use crate::lb::SERVICE_NAME_LABEL;

pub use policy::slim::{Container, ContainerPort, ObjectMeta, Pod, PodCondition, PodSpec, PodStatus};

/// A Service: the API's status and the fields of its spec that decide forwarding, under the compact
/// metadata. Not kept: `ipFamilies`, `ipFamilyPolicy`, `externalName`, `loadBalancerClass`,
/// `loadBalancerIP`, `allocateLoadBalancerNodePorts` (the API server fills the first two into every
/// Service; nothing here reads them). The fields keep the API's names and read the same way
/// (`as_deref()`), in smaller types: enum-like words shared ([`shared_word`]), lists boxed to their
/// length, the status (most Services have none worth keeping) boxed. Each Service is one allocation
/// of 384 bytes instead of 512 (jemalloc's size classes), 10k of them at the agent bench's scale.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(from = "core::Service")]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: Option<ServiceSpec>,
    pub status: Option<Box<ServiceStatus>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceSpec {
    pub type_: Option<Arc<str>>,
    pub cluster_ip: Option<Box<str>>,
    pub cluster_ips: Option<Box<[String]>>,
    pub external_ips: Option<Box<[String]>>,
    pub ports: Option<Vec<ServicePort>>,
    /// For the standalone source's derived EndpointSlices.
    pub selector: Option<BTreeMap<String, String>>,
    pub publish_not_ready_addresses: Option<bool>,
    pub session_affinity: Option<Arc<str>>,
    pub session_affinity_config: Option<SessionAffinityConfig>,
    pub internal_traffic_policy: Option<Arc<str>>,
    pub external_traffic_policy: Option<Arc<str>>,
    pub health_check_node_port: Option<i32>,
    pub load_balancer_source_ranges: Option<Box<[String]>>,
    pub traffic_distribution: Option<Arc<str>>,
}

impl From<core::Service> for Service {
    fn from(service: core::Service) -> Self {
        Self {
            metadata: service.metadata.into(),
            spec: service.spec.map(|spec| ServiceSpec {
                type_: spec.type_.map(shared_word),
                cluster_ip: spec.cluster_ip.map(String::into_boxed_str),
                cluster_ips: spec.cluster_ips.map(Vec::into_boxed_slice),
                external_ips: spec.external_ips.map(Vec::into_boxed_slice),
                ports: spec.ports,
                selector: spec.selector,
                publish_not_ready_addresses: spec.publish_not_ready_addresses,
                session_affinity: spec.session_affinity.map(shared_word),
                session_affinity_config: spec.session_affinity_config,
                internal_traffic_policy: spec.internal_traffic_policy.map(shared_word),
                external_traffic_policy: spec.external_traffic_policy.map(shared_word),
                health_check_node_port: spec.health_check_node_port,
                load_balancer_source_ranges: spec.load_balancer_source_ranges.map(Vec::into_boxed_slice),
                traffic_distribution: spec.traffic_distribution.map(shared_word),
            }),
            status: service.status.map(Box::new),
        }
    }
}

/// An EndpointSlice: its identity, the Service it belongs to, address type, ports, and per endpoint
/// what kube-proxy reads: not `zone` (topology is decided by the hints and the node's own zone label).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(from = "discovery::EndpointSlice")]
pub struct EndpointSlice {
    /// Without labels: the one kube-proxy reads is `service_name`.
    pub metadata: ObjectMeta,
    /// The `kubernetes.io/service-name` label. A field of its own because a label map of even one
    /// entry allocates a whole B-tree node (~540 bytes), for every slice.
    pub service_name: Option<String>,
    /// Shared ([`shared_word`]), and the lists boxed to their length: a slice is one allocation of
    /// 224 bytes instead of 256 (jemalloc's size classes), 10k times at the agent bench's scale.
    pub address_type: Arc<str>,
    pub ports: Option<Box<[EndpointPort]>>,
    pub endpoints: Box<[Endpoint]>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Endpoint {
    /// `addresses[0]`, parsed: the only address kube-proxy reads. Not the API's list of strings, which
    /// cost two allocations more per endpoint (~50 bytes; 100k endpoints at the bench's scale).
    pub address: Address,
    pub conditions: Option<EndpointConditions>,
    /// Shared by every endpoint on the node (and by the planner's copies): [`shared_name`].
    pub node_name: Option<NodeName>,
    pub hints: Hints,
}

/// An endpoint's topology hints (`hints.forZones`, `hints.forNodes`) as sets, shared by the stored
/// slice and every copy the planner makes of the endpoint. Most endpoints carry none, and two empty
/// sets inline would cost 48 bytes an endpoint in each copy (100k endpoints at the agent bench's scale).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints(Option<Arc<HintSets>>);

#[derive(Debug, Default, PartialEq, Eq)]
struct HintSets {
    zones: BTreeSet<String>,
    nodes: BTreeSet<String>,
}

impl Hints {
    pub fn from_api(hints: &EndpointHints) -> Self {
        let zones: BTreeSet<String> = hints.for_zones.iter().flatten().map(|z| z.name.clone()).collect();
        let nodes: BTreeSet<String> = hints.for_nodes.iter().flatten().map(|n| n.name.clone()).collect();
        if zones.is_empty() && nodes.is_empty() {
            return Self(None);
        }
        Self(Some(Arc::new(HintSets { zones, nodes })))
    }

    pub fn has_zones(&self) -> bool {
        self.0.as_ref().is_some_and(|h| !h.zones.is_empty())
    }

    pub fn has_nodes(&self) -> bool {
        self.0.as_ref().is_some_and(|h| !h.nodes.is_empty())
    }

    pub fn for_zone(&self, zone: &str) -> bool {
        self.0.as_ref().is_some_and(|h| h.zones.contains(zone))
    }

    pub fn for_node(&self, node: &str) -> bool {
        self.0.as_ref().is_some_and(|h| h.nodes.contains(node))
    }
}

/// A node's name, shared ([`shared_name`]): one pointer wide where an `Arc<str>` is two, in each of
/// the 100k endpoints and their planned backends at the agent bench's scale.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(Arc<Box<str>>);

impl std::ops::Deref for NodeName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl NodeName {
    /// The same allocation (names from [`shared_name`] are one per name).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl From<&str> for NodeName {
    fn from(name: &str) -> Self {
        shared_name(name.to_owned())
    }
}

impl std::borrow::Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// An endpoint's first address as read from the object. Two words: the rare forms are boxed, so
/// that an endpoint is 40 bytes, and ten of them fit a 448-byte allocation rather than 640.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Address {
    /// `addresses` is empty (kube-proxy ignores such an endpoint).
    #[default]
    Missing,
    V4(std::net::Ipv4Addr),
    V6(Box<std::net::Ipv6Addr>),
    /// Not an IP address (an FQDN slice's, or invalid), kept as written for the planner's report.
    Unparsed(Box<Box<str>>),
}

impl Address {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::V4(a) => Some(IpAddr::V4(*a)),
            Self::V6(a) => Some(IpAddr::V6(**a)),
            Self::Missing | Self::Unparsed(_) => None,
        }
    }

    /// The address as written, when it is no IP address.
    pub fn unparsed(&self) -> Option<&str> {
        match self {
            Self::Unparsed(text) => Some(text),
            _ => None,
        }
    }

    /// The first of an endpoint's `addresses`.
    pub fn first_of(addresses: &[String]) -> Self {
        match addresses.first() {
            None => Self::Missing,
            Some(a) => Self::from(a.as_str()),
        }
    }
}

impl From<&str> for Address {
    fn from(text: &str) -> Self {
        match text.parse() {
            Ok(IpAddr::V4(ip)) => Self::V4(ip),
            Ok(IpAddr::V6(ip)) => Self::V6(Box::new(ip)),
            Err(_) => Self::Unparsed(Box::new(text.into())),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => Ok(()),
            Self::V4(ip) => ip.fmt(f),
            Self::V6(ip) => ip.fmt(f),
            Self::Unparsed(text) => f.write_str(text),
        }
    }
}

impl From<discovery::EndpointSlice> for EndpointSlice {
    fn from(slice: discovery::EndpointSlice) -> Self {
        // A new vector, not `collect()`: that would reuse the API type's allocation in place, keeping
        // its size (~350 bytes an endpoint) for elements a quarter as big.
        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
        for e in slice.endpoints {
            endpoints.push(Endpoint {
                address: Address::first_of(&e.addresses),
                conditions: e.conditions,
                node_name: e.node_name.map(shared_name),
                hints: e.hints.as_ref().map_or_else(Hints::default, Hints::from_api),
            });
        }
        let mut slim = Self {
            metadata: slice.metadata.into(),
            service_name: None,
            address_type: shared_word(slice.address_type),
            ports: slice.ports.map(Vec::into_boxed_slice),
            endpoints: endpoints.into_boxed_slice(),
        };
        slim.read_labels();
        slim
    }
}

/// Edits for tests (the agent replaces a slice whole).
#[cfg(test)]
impl EndpointSlice {
    pub fn edit_endpoints(&mut self, edit: impl FnOnce(&mut Vec<Endpoint>)) {
        let mut endpoints = std::mem::take(&mut self.endpoints).into_vec();
        edit(&mut endpoints);
        self.endpoints = endpoints.into_boxed_slice();
    }
}

impl EndpointSlice {
    /// Takes the labels out of the metadata, keeping the Service's name in `service_name`. Also called
    /// by the API source, which sets the metadata after the rest of the object is read.
    pub fn read_labels(&mut self) {
        if let Some(mut labels) = self.metadata.labels.take() {
            self.service_name = labels.remove(SERVICE_NAME_LABEL);
        }
    }
}

/// `name` as the one allocation every holder of this node name shares: 100k endpoints name a
/// few hundred nodes, and the planner copies each name twice more. Names are never forgotten; a name
/// costs a few bytes for the life of the process.
pub fn shared_name(name: String) -> NodeName {
    static NAMES: LazyLock<Mutex<HashSet<NodeName>>> = LazyLock::new(Mutex::default);
    shared(&NAMES, name, |n| NodeName(Arc::new(n.into_boxed_str())))
}

/// The value of an enum-like field (a Service's `type`, `sessionAffinity`, traffic policies and
/// distribution; a slice's `addressType`) as one allocation every object with that value shares.
/// Only the API's own values are shared (and kept for the life of the process); any other value is
/// kept as written in an allocation of its own, for the planner's report, so that objects carrying
/// ever new invalid values cannot grow the table.
pub fn shared_word(word: String) -> Arc<str> {
    const KNOWN: &[&str] = &[
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
        "ExternalName",
        "None",
        "ClientIP",
        "Cluster",
        "Local",
        "PreferClose",
        "PreferSameZone",
        "PreferSameNode",
        "IPv4",
        "IPv6",
        "FQDN",
    ];
    static WORDS: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Mutex::default);
    if !KNOWN.contains(&word.as_str()) {
        return Arc::from(word);
    }
    shared(&WORDS, word, Arc::from)
}

fn shared<T>(table: &Mutex<HashSet<T>>, name: String, make: impl FnOnce(String) -> T) -> T
where
    T: Clone + Eq + std::hash::Hash + std::borrow::Borrow<str>,
{
    // Hashed, so that the four threads of a first parse hold the lock briefly.
    let mut names = table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name.as_str()) {
        return known.clone();
    }
    let name = make(name);
    names.insert(name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.10]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: n1
  zone: z1
  hints: {forZones: [{name: z1}], forNodes: [{name: n1}]}
  hostname: web-0
  targetRef: {kind: Pod, namespace: shop, name: web-0, uid: 1234}
- addresses: [10.244.2.10]
"#;

    #[test]
    fn what_the_planner_reads_is_kept_and_the_rest_is_not() {
        let full: discovery::EndpointSlice = serde_yaml::from_str(SLICE).unwrap();
        let slim: EndpointSlice = serde_yaml::from_str(SLICE).unwrap();
        assert_eq!(slim.service_name.as_deref(), Some("web"));
        assert_eq!(slim.metadata.labels, None, "read into service_name");
        assert_eq!(
            ObjectMeta {
                labels: full.metadata.labels.clone(),
                ..slim.metadata.clone()
            },
            ObjectMeta::from(full.metadata.clone())
        );
        assert_eq!(&*slim.address_type, "IPv4");
        assert_eq!(slim.ports.as_deref(), full.ports.as_deref());
        assert!(
            size_of::<EndpointSlice>() + 16 <= 224,
            "{}",
            size_of::<EndpointSlice>()
        );
        assert_eq!(slim.endpoints.len(), 2);
        for (s, f) in slim.endpoints.iter().zip(&full.endpoints) {
            assert_eq!(s.address.to_string(), f.addresses[0]);
            assert_eq!(s.conditions, f.conditions);
            assert_eq!(s.node_name.as_deref(), f.node_name.as_deref());
        }
        let hints = &slim.endpoints[0].hints;
        assert!(hints.has_zones() && hints.for_zone("z1") && !hints.for_zone("z2"));
        assert!(hints.has_nodes() && hints.for_node("n1") && !hints.for_node("n2"));
        assert_eq!(
            slim.endpoints[1].hints,
            Hints::default(),
            "none: nothing allocated"
        );
        assert!(full.endpoints[0].target_ref.is_some(), "the full type had more");
    }

    /// A Service as the API server returns it, with the fields it fills in by default.
    const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, uid: u1, resourceVersion: "7", labels: {app: web}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  externalIPs: [192.0.2.1]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: http, nodePort: 30080}]
  selector: {app: web}
  publishNotReadyAddresses: false
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  internalTrafficPolicy: Cluster
  externalTrafficPolicy: Local
  healthCheckNodePort: 31000
  loadBalancerSourceRanges: [198.51.100.0/24]
  loadBalancerClass: example.com/lb
  allocateLoadBalancerNodePorts: true
  trafficDistribution: PreferClose
status: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}
"#;

    #[test]
    fn a_service_keeps_what_the_planner_reads() {
        let full: core::Service = serde_yaml::from_str(SERVICE).unwrap();
        let slim: Service = serde_yaml::from_str(SERVICE).unwrap();
        let (s, f) = (slim.spec.as_ref().unwrap(), full.spec.as_ref().unwrap());
        assert_eq!(s.type_.as_deref(), f.type_.as_deref());
        assert_eq!(s.cluster_ip.as_deref(), f.cluster_ip.as_deref());
        assert_eq!(s.cluster_ips.as_deref(), f.cluster_ips.as_deref());
        assert_eq!(s.external_ips.as_deref(), f.external_ips.as_deref());
        assert_eq!(s.ports, f.ports);
        assert_eq!(s.selector, f.selector);
        assert_eq!(s.publish_not_ready_addresses, f.publish_not_ready_addresses);
        assert_eq!(s.session_affinity.as_deref(), f.session_affinity.as_deref());
        assert_eq!(s.session_affinity_config, f.session_affinity_config);
        assert_eq!(
            s.internal_traffic_policy.as_deref(),
            f.internal_traffic_policy.as_deref()
        );
        assert_eq!(
            s.external_traffic_policy.as_deref(),
            f.external_traffic_policy.as_deref()
        );
        assert_eq!(s.health_check_node_port, f.health_check_node_port);
        assert_eq!(
            s.load_balancer_source_ranges.as_deref(),
            f.load_balancer_source_ranges.as_deref()
        );
        assert_eq!(
            s.traffic_distribution.as_deref(),
            f.traffic_distribution.as_deref()
        );
        assert_eq!(slim.status.as_deref(), full.status.as_ref());
        assert_eq!(slim.metadata, ObjectMeta::from(full.metadata));
        // With the count and an Arc's two counters, a Service fits jemalloc's 384-byte class.
        let (slim_size, full_size) = (size_of::<Service>(), size_of::<core::Service>());
        assert!(slim_size + 16 <= 384, "{slim_size} bytes against {full_size}");
        // Every Service of a type shares the word.
        let other: Service = serde_yaml::from_str(SERVICE).unwrap();
        let word = |s: &Service| s.spec.as_ref().unwrap().type_.clone().unwrap();
        assert!(Arc::ptr_eq(&word(&slim), &word(&other)));
        // A value that is none of the API's is kept, not shared.
        let (x, y) = (shared_word("Weird".into()), shared_word("Weird".into()));
        assert!(&*x == "Weird" && !Arc::ptr_eq(&x, &y));
    }

    #[test]
    fn endpoints_on_one_node_share_its_name() {
        let a: EndpointSlice = serde_yaml::from_str(SLICE).unwrap();
        let b: EndpointSlice = serde_yaml::from_str(SLICE).unwrap();
        let (x, y) = (
            a.endpoints[0].node_name.as_ref(),
            b.endpoints[0].node_name.as_ref(),
        );
        assert!(NodeName::ptr_eq(x.unwrap(), y.unwrap()));
        assert_eq!(x.map(|n| &**n), Some("n1"));
    }

    #[test]
    fn the_first_address_is_kept_parsed_or_as_written() {
        assert_eq!(Address::first_of(&[]), Address::Missing);
        let two = ["10.1.2.3".to_string(), "10.9.9.9".to_string()];
        assert_eq!(Address::first_of(&two).ip(), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(Address::from("fd00::1").ip(), Some("fd00::1".parse().unwrap()));
        assert_eq!(Address::from("fd00::1").to_string(), "fd00::1");
        let bad = Address::from("10.244.300.1");
        assert_eq!((bad.ip(), bad.unparsed()), (None, Some("10.244.300.1")));
        // Ten endpoints in a 448-byte allocation (jemalloc's classes), not 640.
        assert!(size_of::<Endpoint>() <= 40, "{}", size_of::<Endpoint>());
        // And the planner's copy of each (100k at the agent bench's scale) two words.
        assert!(size_of::<crate::lb::PlannedBackend>() <= 16);
        assert_eq!(bad.to_string(), "10.244.300.1");
    }

    #[test]
    fn an_endpoint_is_a_fraction_of_the_api_type() {
        let slim = std::mem::size_of::<Endpoint>();
        let full = std::mem::size_of::<discovery::Endpoint>();
        assert!(slim * 3 < full, "{slim} bytes against {full}");
    }
}
