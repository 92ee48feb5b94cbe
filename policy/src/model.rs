//! The input (Kubernetes objects) and its validated form: policies parsed once into rules, pods into
//! the few facts policy needs. Both `explain` and `compile` work on this form, so they cannot disagree
//! on what a policy says.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

use crate::net::{Cidr, Ipv4Net};
use crate::selector::{Labels, Selector};
use crate::slim::Pod;

/// The label every namespace carries (set by the API server); added here when a manifest omits it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Everything policy depends on. `nodes` is only used for the addresses of the node itself (traffic from
/// them to the node's pods is always allowed); it may be empty.
#[derive(Clone, Debug, Default)]
///
/// Objects are shared (`Arc`): the agent hands over the objects of its snapshot without copying them
/// (at 10k pods a copy was most of its memory).
pub struct PolicyInput {
    pub namespaces: Vec<Arc<Namespace>>,
    pub pods: Vec<Arc<Pod>>,
    pub policies: Vec<Arc<NetworkPolicy>>,
    pub nodes: Vec<Arc<Node>>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("document {index}: {source}")]
    Yaml { index: usize, source: serde_yaml::Error },
}

impl PolicyInput {
    /// Reads a multi-document YAML stream of Kubernetes objects (as `kubectl apply -f` takes), keeping
    /// Namespaces, Pods, NetworkPolicies and Nodes and ignoring every other kind. `List` documents are
    /// not expanded.
    pub fn from_yaml(text: &str) -> Result<Self, InputError> {
        let mut input = Self::default();
        input.add_yaml(text)?;
        Ok(input)
    }

    /// Adds the objects of another multi-document YAML stream (see [`PolicyInput::from_yaml`]).
    pub fn add_yaml(&mut self, text: &str) -> Result<(), InputError> {
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value =
                serde_yaml::Value::deserialize(doc).map_err(|source| InputError::Yaml { index, source })?;
            let kind = value
                .get("kind")
                .and_then(serde_yaml::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let err = |source| InputError::Yaml { index, source };
            match kind.as_str() {
                "Namespace" => self
                    .namespaces
                    .push(Arc::new(serde_yaml::from_value(value).map_err(err)?)),
                "Pod" => self
                    .pods
                    .push(Arc::new(serde_yaml::from_value(value).map_err(err)?)),
                "NetworkPolicy" => self
                    .policies
                    .push(Arc::new(serde_yaml::from_value(value).map_err(err)?)),
                "Node" => self
                    .nodes
                    .push(Arc::new(serde_yaml::from_value(value).map_err(err)?)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// `namespace/name` of a pod or a policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjRef {
    pub namespace: String,
    pub name: String,
}

pub type PodRef = ObjRef;
pub type PolicyRef = ObjRef;

impl ObjRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ObjRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::new(ns, name))
            }
            _ => Err(format!("{s:?} is not namespace/name")),
        }
    }
}

/// Transport protocols a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => common::net::proto::TCP,
            Protocol::Udp => common::net::proto::UDP,
            Protocol::Sctp => common::net::proto::SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.number() == n)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;
    /// The API's spelling (`TCP`, `UDP`, `SCTP`); lower case is accepted for command lines.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "TCP" | "tcp" => Ok(Protocol::Tcp),
            "UDP" | "udp" => Ok(Protocol::Udp),
            "SCTP" | "sctp" => Ok(Protocol::Sctp),
            _ => Err(format!("unknown protocol {s:?} (want TCP, UDP or SCTP)")),
        }
    }
}

/// A policy that could not be compiled: it is skipped, everything else still compiles.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
#[error("policy {policy}: {field}: {message}")]
pub struct PolicyError {
    pub policy: PolicyRef,
    /// Path of the offending field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

/// Which direction a rule or an isolation applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn datapath(self) -> u8 {
        match self {
            Direction::Ingress => common::policy::DIR_INGRESS,
            Direction::Egress => common::policy::DIR_EGRESS,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Validated policies.

#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub id: PolicyRef,
    pub pod_selector: Selector,
    /// `Some` iff the policy's types include Ingress (then it isolates the pods it selects).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    pub fn selects(&self, pod: &PodView) -> bool {
        !pod.host_network && pod.id.namespace == self.id.namespace && self.pod_selector.matches(&pod.labels)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Rule {
    /// `None`: the rule lists no peers (`from`/`to` empty or absent) and matches every peer.
    pub peers: Option<Vec<PeerSpec>>,
    /// `None`: the rule lists no ports and matches every port of every protocol.
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug)]
pub(crate) enum PeerSpec {
    Pods {
        namespaces: NsMatch,
        pods: Selector,
    },
    IpBlock {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
    /// An IPv6 block: valid, but matches no IPv4 peer.
    IpBlockV6,
}

#[derive(Clone, Debug)]
pub(crate) enum NsMatch {
    /// No namespaceSelector: the policy's own namespace.
    Own(String),
    Selector(Selector),
}

impl PeerSpec {
    /// Does the pod-selector part match a pod in `namespace` (labels `ns_labels`) with `labels`?
    pub fn matches_pod(&self, namespace: &str, ns_labels: &Labels, labels: &Labels) -> bool {
        match self {
            PeerSpec::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    NsMatch::Own(ns) => ns == namespace,
                    NsMatch::Selector(sel) => sel.matches(ns_labels),
                };
                ns_ok && pods.matches(labels)
            }
            PeerSpec::IpBlock { .. } | PeerSpec::IpBlockV6 => false,
        }
    }

    pub fn matches_ip(&self, ip: Ipv4Addr) -> bool {
        match self {
            PeerSpec::IpBlock { cidr, except } => cidr.contains(ip) && !except.iter().any(|e| e.contains(ip)),
            PeerSpec::Pods { .. } | PeerSpec::IpBlockV6 => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortSpec {
    pub proto: Protocol,
    pub port: PortMatch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortMatch {
    Any,
    Range(u16, u16),
    Named(String),
}

impl PortSpec {
    /// Does the port match `port/proto` at a destination whose named ports are `named`?
    pub fn matches(&self, port: u16, proto: Protocol, named: &NamedPorts) -> bool {
        if self.proto != proto {
            return false;
        }
        match &self.port {
            PortMatch::Any => true,
            PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
            PortMatch::Named(name) => named.resolve(name, proto) == Some(port),
        }
    }
}

/// A pod's named container ports: name → (protocol, number).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPorts(pub BTreeMap<String, (Protocol, u16)>);

impl NamedPorts {
    pub fn resolve(&self, name: &str, proto: Protocol) -> Option<u16> {
        self.0.get(name).filter(|(p, _)| *p == proto).map(|(_, n)| *n)
    }
}

impl fmt::Display for NamedPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, (proto, port))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={port}/{proto}")?;
        }
        Ok(())
    }
}

type FieldError = (String, String);

fn parse_selector(sel: &LabelSelector, path: &str) -> Result<Selector, FieldError> {
    Selector::parse(sel).map_err(|e| (format!("{path}.{}", e.field), e.message))
}

fn parse_peer(peer: &NetworkPolicyPeer, path: &str, policy_ns: &str) -> Result<PeerSpec, FieldError> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err((
                path.to_owned(),
                "ipBlock may not be combined with podSelector or namespaceSelector".into(),
            ));
        }
        let cidr = block
            .cidr
            .parse::<Cidr>()
            .map_err(|m| (format!("{path}.ipBlock.cidr"), m))?;
        let mut except = Vec::new();
        for (i, e) in block.except.iter().flatten().enumerate() {
            let field = format!("{path}.ipBlock.except[{i}]");
            let e = e.parse::<Cidr>().map_err(|m| (field.clone(), m))?;
            match (cidr, e) {
                (Cidr::V4(c), Cidr::V4(e)) if e.is_within(c) && e != c => except.push(e),
                (Cidr::V6, Cidr::V6) => {}
                _ => return Err((field, format!("must be strictly within cidr {:?}", block.cidr))),
            }
        }
        return Ok(match cidr {
            Cidr::V4(cidr) => PeerSpec::IpBlock { cidr, except },
            Cidr::V6 => PeerSpec::IpBlockV6,
        });
    }
    let namespaces = match &peer.namespace_selector {
        Some(sel) => NsMatch::Selector(parse_selector(sel, &format!("{path}.namespaceSelector"))?),
        None => NsMatch::Own(policy_ns.to_owned()),
    };
    let pods = match &peer.pod_selector {
        Some(sel) => parse_selector(sel, &format!("{path}.podSelector"))?,
        None if peer.namespace_selector.is_some() => Selector::everything(),
        None => {
            return Err((
                path.to_owned(),
                "must specify podSelector, namespaceSelector or ipBlock".into(),
            ));
        }
    };
    Ok(PeerSpec::Pods { namespaces, pods })
}

/// IANA service name rules, as the API server checks named ports.
fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn parse_port(p: &NetworkPolicyPort, path: &str) -> Result<PortSpec, FieldError> {
    let proto = match &p.protocol {
        None => Protocol::Tcp,
        Some(s) => s.parse().map_err(|m| (format!("{path}.protocol"), m))?,
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) => return Err((format!("{path}.endPort"), "endPort requires port".into())),
        (Some(IntOrString::Int(n)), end) => {
            let lo = u16::try_from(*n)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| (format!("{path}.port"), format!("{n} is not a port (1-65535)")))?;
            let hi = match end {
                None => lo,
                Some(e) => u16::try_from(e).ok().filter(|e| *e >= lo).ok_or_else(|| {
                    (
                        format!("{path}.endPort"),
                        format!("{e} must be a port (1-65535) not below port {lo}"),
                    )
                })?,
            };
            PortMatch::Range(lo, hi)
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err((
                format!("{path}.endPort"),
                "endPort may not be used with a named port".into(),
            ));
        }
        (Some(IntOrString::String(name)), None) => {
            if !valid_port_name(name) {
                return Err((
                    format!("{path}.port"),
                    format!("{name:?} is not a valid port name"),
                ));
            }
            PortMatch::Named(name.clone())
        }
    };
    Ok(PortSpec { proto, port })
}

fn parse_rule(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    path: &str,
    peer_field: &str,
    ns: &str,
) -> Result<Rule, FieldError> {
    let peers = match peers {
        Some(list) if !list.is_empty() => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| parse_peer(p, &format!("{path}.{peer_field}[{i}]"), ns))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => None,
    };
    let ports = match ports {
        Some(list) if !list.is_empty() => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| parse_port(p, &format!("{path}.ports[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => None,
    };
    Ok(Rule { peers, ports })
}

pub(crate) fn parse_policy(np: &NetworkPolicy) -> Result<Policy, PolicyError> {
    let id = ObjRef::new(
        np.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        np.metadata.name.clone().unwrap_or_default(),
    );
    let fail = |(field, message): FieldError| PolicyError {
        policy: id.clone(),
        field,
        message,
    };
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = parse_selector(&spec.pod_selector, "spec.podSelector").map_err(fail)?;
    // policyTypes defaults (when absent or empty) to Ingress, plus Egress when egress rules exist.
    let (mut has_ingress, mut has_egress) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            has_ingress = true;
            has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => has_ingress = true,
                    "Egress" => has_egress = true,
                    other => {
                        return Err(fail((
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (want Ingress or Egress)"),
                        )));
                    }
                }
            }
        }
    }
    let ns = id.namespace.clone();
    let ingress = if has_ingress {
        let rules = spec.ingress.iter().flatten().enumerate().map(|(i, r)| {
            parse_rule(
                r.from.as_ref(),
                r.ports.as_ref(),
                &format!("spec.ingress[{i}]"),
                "from",
                &ns,
            )
        });
        Some(rules.collect::<Result<Vec<_>, _>>().map_err(fail)?)
    } else {
        None
    };
    let egress = if has_egress {
        let rules = spec.egress.iter().flatten().enumerate().map(|(i, r)| {
            parse_rule(
                r.to.as_ref(),
                r.ports.as_ref(),
                &format!("spec.egress[{i}]"),
                "to",
                &ns,
            )
        });
        Some(rules.collect::<Result<Vec<_>, _>>().map_err(fail)?)
    } else {
        None
    };
    Ok(Policy {
        id,
        pod_selector,
        ingress,
        egress,
    })
}

// ---------------------------------------------------------------------------------------------------
// Pods and the cluster view.

#[derive(Clone, Debug)]
pub(crate) struct PodView {
    pub id: PodRef,
    pub labels: Labels,
    pub ns_labels: Labels,
    /// The pod's IPv4 address, if it has one.
    pub ip: Option<Ipv4Addr>,
    pub node: Option<String>,
    pub host_network: bool,
    /// Running or pending (not Succeeded/Failed): only such pods own their IP.
    pub active: bool,
    pub named_ports: NamedPorts,
}

impl PodView {
    /// A pod that policies can select and that is a pod peer (not a host-network pod).
    pub fn is_policy_pod(&self) -> bool {
        !self.host_network
    }

    /// A pod whose IP stands for it in the datapath.
    pub fn owns_ip(&self) -> bool {
        !self.host_network && self.active && self.ip.is_some()
    }
}

/// The validated input.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cluster {
    pub pods: Vec<PodView>,
    pub node_addrs: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Valid policies, sorted by namespace/name.
    pub policies: Vec<Policy>,
    /// Policies skipped because of errors, sorted.
    pub errors: Vec<PolicyError>,
}

fn pod_ipv4(pod: &Pod) -> Option<Ipv4Addr> {
    let status = pod.status.as_ref()?;
    let mut candidates = status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().flatten().map(|p| &p.ip));
    candidates.find_map(|s| s.parse::<Ipv4Addr>().ok())
}

fn named_ports(pod: &Pod) -> NamedPorts {
    let mut out = BTreeMap::new();
    let Some(spec) = &pod.spec else {
        return NamedPorts::default();
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            let (Some(name), Ok(num)) = (&p.name, u16::try_from(p.container_port)) else {
                continue;
            };
            let proto = p
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .parse()
                .unwrap_or(Protocol::Tcp);
            out.entry(name.clone()).or_insert((proto, num));
        }
    }
    NamedPorts(out)
}

impl Cluster {
    pub fn new(input: &PolicyInput) -> Self {
        let mut ns_labels: BTreeMap<String, Labels> = BTreeMap::new();
        for ns in &input.namespaces {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels
                .entry(NAMESPACE_NAME_LABEL.to_owned())
                .or_insert_with(|| name.clone());
            ns_labels.insert(name, labels);
        }
        let labels_of_ns = |ns: &str| {
            ns_labels
                .get(ns)
                .cloned()
                .unwrap_or_else(|| Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned())]))
        };
        let mut pods: Vec<PodView> = input
            .pods
            .iter()
            .map(|p| {
                let ns = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                PodView {
                    id: ObjRef::new(ns.clone(), p.metadata.name.clone().unwrap_or_default()),
                    labels: p.labels.to_map(),
                    ns_labels: labels_of_ns(&ns),
                    ip: pod_ipv4(p),
                    node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    host_network: p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false),
                    active: !matches!(phase, Some("Succeeded" | "Failed")),
                    named_ports: named_ports(p),
                }
            })
            .collect();
        pods.sort_by(|a, b| a.id.cmp(&b.id));
        pods.dedup_by(|a, b| a.id == b.id);

        let mut node_addrs = BTreeMap::new();
        for n in &input.nodes {
            let addrs = n
                .status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
                .collect();
            node_addrs.insert(n.metadata.name.clone().unwrap_or_default(), addrs);
        }

        let mut policies = Vec::new();
        let mut errors = Vec::new();
        for np in &input.policies {
            match parse_policy(np) {
                Ok(p) => policies.push(p),
                Err(e) => errors.push(e),
            }
        }
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        policies.dedup_by(|a, b| a.id == b.id);
        errors.sort();
        Self {
            pods,
            node_addrs,
            policies,
            errors,
        }
    }

    pub fn pod(&self, id: &PodRef) -> Option<&PodView> {
        self.pods
            .binary_search_by(|p| p.id.cmp(id))
            .ok()
            .map(|i| &self.pods[i])
    }

    /// The pod that owns `ip`, if any.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodView> {
        self.pods.iter().find(|p| p.owns_ip() && p.ip == Some(ip))
    }

    /// Policies that select `pod` and list `dir`.
    pub fn isolating(&self, pod: &PodView, dir: Direction) -> impl Iterator<Item = &Policy> {
        self.policies
            .iter()
            .filter(move |p| p.rules(dir).is_some() && p.selects(pod))
    }
}

/// The policies of `input` that are invalid (and are skipped by `explain` and `compile`), sorted.
pub fn policy_errors(input: &PolicyInput) -> Vec<PolicyError> {
    let mut errors: Vec<PolicyError> = input
        .policies
        .iter()
        .filter_map(|np| parse_policy(np).err())
        .collect();
    errors.sort();
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses one policy (YAML `spec`) in namespace `ns` and returns its error.
    fn error_of(spec: &str) -> PolicyError {
        let doc = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}"
        );
        let input = PolicyInput::from_yaml(&doc).unwrap();
        parse_policy(&input.policies[0]).expect_err("policy should be invalid")
    }

    #[test]
    fn errors_name_the_policy_and_the_field() {
        let cases = [
            (
                "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: banana}}]}]",
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                "  podSelector: {}\n  ingress: [{}, {from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/24, 11.0.0.0/24]}}]}]",
                "spec.ingress[1].from[1].ipBlock.except[1]",
            ),
            (
                "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]",
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                "  podSelector: {}\n  ingress: [{ports: [{port: 80, protocol: ICMP}]}]",
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                "  podSelector: {}\n  ingress: [{ports: [{port: 80}, {port: 70000}]}]",
                "spec.ingress[0].ports[1].port",
            ),
            (
                "  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]",
                "spec.ingress[0].ports[0].port",
            ),
            (
                "  podSelector: {}\n  egress: [{ports: [{port: 90, endPort: 80}]}]",
                "spec.egress[0].ports[0].endPort",
            ),
            (
                "  podSelector: {}\n  egress: [{ports: [{port: http, endPort: 80}]}]",
                "spec.egress[0].ports[0].endPort",
            ),
            (
                "  podSelector: {}\n  egress: [{ports: [{endPort: 80}]}]",
                "spec.egress[0].ports[0].endPort",
            ),
            (
                "  podSelector: {}\n  egress: [{ports: [{port: Not_A_Name}]}]",
                "spec.egress[0].ports[0].port",
            ),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}",
                "spec.podSelector.matchExpressions[0].operator",
            ),
            (
                "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: In}]}}]}]",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            ),
            (
                "  podSelector: {}\n  ingress: [{from: [{}]}]",
                "spec.ingress[0].from[0]",
            ),
            (
                "  podSelector: {}\n  ingress: [{from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]",
                "spec.ingress[0].from[0]",
            ),
            (
                "  podSelector: {}\n  policyTypes: [Ingress, Sideways]",
                "spec.policyTypes[1]",
            ),
        ];
        for (spec, field) in cases {
            let e = error_of(spec);
            assert_eq!(e.policy, ObjRef::new("ns", "p"), "{spec}");
            assert_eq!(e.field, field, "{spec}: {}", e.message);
            assert!(
                e.to_string().starts_with(&format!("policy ns/p: {field}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn policy_types_are_inferred() {
        let parse = |spec: &str| {
            let doc = format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}"
            );
            parse_policy(&PolicyInput::from_yaml(&doc).unwrap().policies[0]).unwrap()
        };
        let p = parse("  podSelector: {}");
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = parse("  podSelector: {}\n  egress: [{}]");
        assert!(p.ingress.is_some() && p.egress.is_some());
        let p = parse("  podSelector: {}\n  egress: []");
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = parse("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]");
        assert!(p.ingress.is_none() && p.egress.is_some_and(|e| e.is_empty()));
    }
}
