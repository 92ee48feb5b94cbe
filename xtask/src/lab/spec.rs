//! The lab file: a multi-document YAML of standard Kubernetes objects. `parse` reads it into typed
//! k8s-openapi objects; `validate` checks the whole cluster before anything is built, and digests the
//! parts the lab builds (nodes, pods, ports). Every refusal names the object (`Kind ns/name`) and field.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::Ipv4Addr,
};

use anyhow::{Result, bail};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Serialize};

use super::{
    external::{self, ExternalClient},
    plan::{self, Subnet},
};

pub const KINDS: &str =
    "Node, Namespace, Pod, Service, EndpointSlice, NetworkPolicy, and the lab's own ExternalClient";

#[derive(Debug, Clone)]
pub enum Object {
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    /// Not a Kubernetes object: the external client's addresses (see `external.rs`).
    ExternalClient(Box<ExternalClient>),
}

/// Identity of an object: two objects with one key are the same object (`apply` replaces it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Node(_) => "Node",
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::NetworkPolicy(_) => "NetworkPolicy",
            Object::ExternalClient(_) => external::KIND,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::ExternalClient(o) => &o.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Node(o) => &mut o.metadata,
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::ExternalClient(o) => &mut o.metadata,
        }
    }

    fn namespaced(&self) -> bool {
        !matches!(
            self,
            Object::Node(_) | Object::Namespace(_) | Object::ExternalClient(_)
        )
    }

    pub fn key(&self) -> Key {
        let meta = self.meta();
        Key {
            kind: self.kind(),
            namespace: if self.namespaced() {
                meta.namespace.clone()
            } else {
                None
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The object as a YAML value, with apiVersion and kind (k8s-openapi's Serialize adds them).
    pub fn to_value(&self) -> serde_yaml::Value {
        let v = match self {
            Object::Node(o) => serde_yaml::to_value(o),
            Object::Namespace(o) => serde_yaml::to_value(o),
            Object::Pod(o) => serde_yaml::to_value(o),
            Object::Service(o) => serde_yaml::to_value(o),
            Object::EndpointSlice(o) => serde_yaml::to_value(o),
            Object::NetworkPolicy(o) => serde_yaml::to_value(o),
            Object::ExternalClient(o) => serde_yaml::to_value(o),
        };
        v.expect("k8s-openapi objects serialize")
    }
}

/// One typed document. Errors carry the path of the offending field (`spec.containers[0].ports`).
fn typed<T: for<'de> Deserialize<'de>>(value: serde_yaml::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

/// Parses every document of `text` (empty documents are skipped). Refuses the file on the first bad
/// document, naming it by position, kind and name.
pub fn parse(text: &str) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| anyhow::anyhow!("document {n}: malformed YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let ns = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|v| v.as_str());
        let what = match ns {
            Some(ns) => format!("document {n} ({kind} {ns}/{name})"),
            None => format!("document {n} ({kind} {name})"),
        };
        let object = match kind.as_str() {
            "Node" => typed(value).map(Object::Node),
            "Namespace" => typed(value).map(Object::Namespace),
            "Pod" => typed(value).map(Object::Pod),
            "Service" => typed(value).map(Object::Service),
            "EndpointSlice" => typed(value).map(Object::EndpointSlice),
            "NetworkPolicy" => typed(value).map(Object::NetworkPolicy),
            external::KIND => typed(value).map(Object::ExternalClient),
            "" => bail!("{what}: kind is missing (the lab accepts {KINDS})"),
            other => bail!("{what}: unknown kind {other:?} (the lab accepts {KINDS})"),
        };
        let mut object = object.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        if object.meta().name.as_deref().unwrap_or("").is_empty() {
            bail!("{what}: metadata.name is missing");
        }
        // Namespaced objects without a namespace live in `default`, as with kubectl; written explicitly
        // so that every reader of the manifests agrees.
        if object.namespaced() && object.meta().namespace.is_none() {
            object.meta_mut().namespace = Some("default".to_string());
        }
        out.push(object);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// Kubernetes spelling (`TCP`), as in manifests.
    pub fn k8s(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

impl std::str::FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Proto, String> {
        Proto::parse(s).ok_or_else(|| format!("{s:?}: expected tcp, udp or sctp"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Further IPv4 InternalIP/ExternalIP addresses (secondary addresses of the node).
    pub addresses: Vec<Ipv4Addr>,
    pub pod_cidr: Option<Subnet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<PortInfo>,
}

impl PodInfo {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A validated lab file: the objects as given, plus what the lab builds from them.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub objects: Vec<Object>,
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
    pub subnet: Subnet,
    /// The external client's extra addresses (ExternalClient spec.addresses).
    pub external_addresses: Vec<Ipv4Addr>,
}

/// Checks everything the lab relies on; refuses with every problem found, one line each.
pub fn validate(objects: Vec<Object>) -> Result<Cluster> {
    let mut errors = Vec::new();
    check_duplicates(&objects, &mut errors);

    let mut nodes = Vec::new();
    for o in &objects {
        if let Object::Node(n) = o {
            match node_info(n) {
                Ok(info) => nodes.push(info),
                Err(e) => errors.push(format!("{}: {e}", o.key())),
            }
        }
    }
    let subnet = match plan::node_subnet(&nodes.iter().map(|n| n.ip).collect::<Vec<_>>()) {
        Ok(s) => s,
        Err(i) => {
            errors.push(format!(
                "Node {}: status.addresses[InternalIP] {} is not in one subnet (/{} or narrower) with Node {} ({}): \
                 the nodes share one L2 segment",
                nodes[i].name,
                nodes[i].ip,
                plan::WIDEST_NODE_PREFIX,
                nodes[0].name,
                nodes[0].ip
            ));
            Subnet::new(nodes[0].ip, 24)
        }
    };
    for n in &nodes {
        if n.ip == subnet.net || n.ip == subnet.broadcast() {
            errors.push(format!(
                "Node {}: status.addresses[InternalIP] {} is the network or broadcast address of the node subnet {subnet}",
                n.name, n.ip
            ));
        }
    }

    // Every address the lab assigns must be unique: node IPs and pod IPs share the lab's routing.
    let mut ip_owner: HashMap<Ipv4Addr, String> = HashMap::new();
    for n in &nodes {
        let who = format!("the status.addresses[InternalIP] of Node {}", n.name);
        if let Some(prev) = ip_owner.insert(n.ip, who) {
            errors.push(format!(
                "Node {}: status.addresses[InternalIP] {} is also {prev}",
                n.name, n.ip
            ));
        }
        for a in &n.addresses {
            let field = format!("Node {}: status.addresses {a}", n.name);
            if !subnet.contains(*a) || *a == subnet.net || *a == subnet.broadcast() {
                errors.push(format!(
                    "{field} is not a host address of the node subnet {subnet} (further node addresses \
                     are secondary addresses on the segment)"
                ));
            } else if let Some(prev) = ip_owner.insert(*a, format!("an address of Node {}", n.name)) {
                errors.push(format!("{field} is also {prev}"));
            }
        }
    }

    let mut pods = Vec::new();
    for o in &objects {
        let Object::Pod(p) = o else { continue };
        let key = o.key();
        match pod_info(p) {
            Ok(info) => {
                let mut ok = true;
                let pod = format!("Pod {}", info.full_name());
                match nodes.iter().find(|n| n.name == info.node) {
                    None => {
                        errors.push(format!(
                            "{pod}: spec.nodeName {:?} names no Node in the file",
                            info.node
                        ));
                        ok = false;
                    }
                    Some(node) => {
                        if let Some(cidr) = node.pod_cidr.filter(|c| !c.contains(info.ip)) {
                            errors.push(format!(
                                "{pod}: status.podIP {} is outside spec.podCIDR {cidr} of its Node {}",
                                info.ip, node.name
                            ));
                            ok = false;
                        }
                    }
                }
                if subnet.contains(info.ip) {
                    errors.push(format!(
                        "{pod}: status.podIP {} lies in the node subnet {subnet}",
                        info.ip
                    ));
                    ok = false;
                }
                if info.ip == plan::POD_GATEWAY || info.ip.is_loopback() || info.ip.is_unspecified() {
                    errors.push(format!("{pod}: status.podIP {} is reserved by the lab", info.ip));
                    ok = false;
                }
                let who = format!("the status.podIP of {pod}");
                if let Some(prev) = ip_owner.get(&info.ip) {
                    errors.push(format!("{pod}: status.podIP {} is also {prev}", info.ip));
                    ok = false;
                } else {
                    ip_owner.insert(info.ip, who);
                }
                if ok {
                    pods.push(info);
                }
            }
            Err(es) => errors.extend(es.into_iter().map(|e| format!("{key}: {e}"))),
        }
    }

    let clients: Vec<&ExternalClient> = objects
        .iter()
        .filter_map(|o| match o {
            Object::ExternalClient(e) => Some(&**e),
            _ => None,
        })
        .collect();
    let mut external_addresses = Vec::new();
    if let [first, more @ ..] = clients.as_slice() {
        for other in more {
            errors.push(format!(
                "{} {}: only one ExternalClient per lab (the first is {})",
                external::KIND,
                other.metadata.name.as_deref().unwrap_or_default(),
                first.metadata.name.as_deref().unwrap_or_default()
            ));
        }
        external_addresses = external::check_addresses(first, subnet, &mut errors);
        for a in &external_addresses {
            if let Some(prev) = ip_owner.get(a) {
                errors.push(format!(
                    "{} {}: spec.addresses {a} is also {prev}",
                    external::KIND,
                    first.metadata.name.as_deref().unwrap_or_default()
                ));
            }
        }
    }

    if !errors.is_empty() {
        bail!(
            "the lab file is refused, nothing was built:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(Cluster {
        objects,
        nodes,
        pods,
        subnet,
        external_addresses,
    })
}

fn check_duplicates(objects: &[Object], errors: &mut Vec<String>) {
    let mut seen: BTreeMap<Key, usize> = BTreeMap::new();
    for (i, o) in objects.iter().enumerate() {
        if let Some(first) = seen.insert(o.key(), i) {
            errors.push(format!(
                "{}: metadata.name is declared twice (objects {} and {} of the file)",
                o.key(),
                first + 1,
                i + 1
            ));
        }
    }
}

fn node_info(n: &Node) -> Result<NodeInfo, String> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let addresses = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    let internal = addresses
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .ok_or("status.addresses has no InternalIP")?;
    let ip: Ipv4Addr = internal.address.parse().map_err(|_| {
        format!(
            "status.addresses[InternalIP] {:?} is not an IPv4 address",
            internal.address
        )
    })?;
    let pod_cidr = match n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
        None => None,
        Some(c) => Some(Subnet::parse(c).ok_or(format!("spec.podCIDR {c:?} is not an IPv4 CIDR"))?),
    };
    // Every other InternalIP/ExternalIP is a secondary address; IPv6 ones are left out (the lab is
    // IPv4), anything else that is not an address is refused.
    let mut more = Vec::new();
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if !matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") || std::ptr::eq(a, internal) {
            continue;
        }
        match a.address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) if v4 != ip && !more.contains(&v4) => more.push(v4),
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "status.addresses[{i}] ({}) {:?} is not an IP address",
                    a.type_, a.address
                ));
            }
        }
    }
    Ok(NodeInfo {
        name,
        ip,
        pod_cidr,
        addresses: more,
    })
}

fn pod_info(p: &Pod) -> Result<PodInfo, Vec<String>> {
    let mut errors = Vec::new();
    let spec = p.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        errors
            .push("spec.hostNetwork is not supported by the lab (every pod gets its own netns)".to_string());
    }
    let node = spec.and_then(|s| s.node_name.clone()).unwrap_or_default();
    if node.is_empty() {
        errors
            .push("spec.nodeName is missing (the lab does not schedule: say where the pod runs)".to_string());
    }
    let ip = match p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        None | Some("") => {
            errors.push("status.podIP is missing (the lab does not allocate addresses)".to_string());
            None
        }
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errors.push(format!("status.podIP {s:?} is not an IPv4 address"));
                None
            }
        },
    };

    let mut ports: Vec<PortInfo> = Vec::new();
    let mut where_declared: HashMap<(u16, Proto), String> = HashMap::new();
    for (ci, c) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (pi, cp) in c.ports.as_deref().unwrap_or_default().iter().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let Ok(port) = u16::try_from(cp.container_port)
                .map_err(drop)
                .and_then(|p| if p == 0 { Err(()) } else { Ok(p) })
            else {
                errors.push(format!(
                    "{field}.containerPort {} is not a port number",
                    cp.container_port
                ));
                continue;
            };
            let protocol = match cp.protocol.as_deref() {
                None => Proto::Tcp,
                Some(s) => match s {
                    "TCP" => Proto::Tcp,
                    "UDP" => Proto::Udp,
                    "SCTP" => Proto::Sctp,
                    other => {
                        errors.push(format!("{field}.protocol {other:?} is not TCP, UDP or SCTP"));
                        continue;
                    }
                },
            };
            if let Some(prev) = where_declared.insert((port, protocol), field.clone()) {
                errors.push(format!(
                    "{field}: port {port}/{} clashes with {prev} in the same pod",
                    protocol.k8s()
                ));
                continue;
            }
            ports.push(PortInfo {
                name: cp.name.clone(),
                port,
                protocol,
            });
        }
    }
    match (errors.is_empty(), ip) {
        (true, Some(ip)) => Ok(PodInfo {
            namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: p.metadata.name.clone().unwrap_or_default(),
            node,
            ip,
            ports,
        }),
        _ => Err(errors),
    }
}

/// `base` with every object of `update` added or replacing the object with the same key.
pub fn merge(base: &[Object], update: Vec<Object>) -> Vec<Object> {
    let mut out: Vec<Object> = base.to_vec();
    for o in update {
        let key = o.key();
        match out.iter_mut().find(|b| b.key() == key) {
            Some(slot) => *slot = o,
            None => out.push(o),
        }
    }
    out
}

/// `base` without the objects of `remove` (matched by key). Returns the keys that were not there.
pub fn remove(base: &[Object], remove: &[Object]) -> (Vec<Object>, Vec<Key>) {
    let keys: Vec<Key> = remove.iter().map(Object::key).collect();
    let missing = keys
        .iter()
        .filter(|k| !base.iter().any(|b| &b.key() == *k))
        .cloned()
        .collect();
    let kept = base
        .iter()
        .filter(|b| !keys.contains(&b.key()))
        .cloned()
        .collect();
    (kept, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.10}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 10.0.0.11}]}
";

    fn pod(ns: &str, name: &str, node: &str, ip: &str) -> String {
        format!(
            "
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  containers:
  - name: c
    image: x
    ports: [{{name: http, containerPort: 8080}}, {{containerPort: 8080, protocol: UDP}}]
status: {{podIP: {ip}}}
"
        )
    }

    fn check(text: &str) -> Result<Cluster> {
        validate(parse(text)?)
    }

    fn refused(text: &str) -> String {
        format!("{:#}", check(text).expect_err("should be refused"))
    }

    #[test]
    fn good_file() {
        let text = format!(
            "{NODES}{}{}",
            pod("x", "a", "n1", "10.244.1.2"),
            pod("y", "b", "n2", "10.244.2.2")
        );
        let c = check(&text).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.pods.len(), 2);
        assert_eq!(c.subnet.to_string(), "10.0.0.0/24");
        assert_eq!(c.pods[0].ports.len(), 2);
        assert_eq!(c.pods[1].full_name(), "y/b");
    }

    #[test]
    fn unknown_kind() {
        let e = refused(&format!(
            "{NODES}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: x}}\n"
        ));
        assert!(
            e.contains("unknown kind \"ConfigMap\"") && e.contains("ConfigMap x/cm"),
            "{e}"
        );
    }

    #[test]
    fn malformed_yaml() {
        let e = refused(&format!("{NODES}---\nkind: Pod\nmetadata: {{name: [\n"));
        assert!(e.contains("document 3") && e.contains("malformed YAML"), "{e}");
    }

    #[test]
    fn wrong_field_type_names_the_field() {
        let e = refused(&format!(
            "{NODES}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x}}\nspec:\n  nodeName: n1\n  \
             containers: [{{name: c, ports: [{{containerPort: http}}]}}]\nstatus: {{podIP: 10.244.1.2}}\n"
        ));
        assert!(
            e.contains("Pod x/a") && e.contains("spec.containers[0].ports[0].containerPort"),
            "{e}"
        );
    }

    #[test]
    fn pod_without_ip() {
        let text = format!(
            "{NODES}{}",
            pod("x", "a", "n1", "10.244.1.2").replace("status: {podIP: 10.244.1.2}", "")
        );
        let e = refused(&text);
        assert!(e.contains("Pod x/a: status.podIP is missing"), "{e}");
    }

    #[test]
    fn pod_without_node() {
        let text = format!(
            "{NODES}{}",
            pod("x", "a", "n1", "10.244.1.2").replace("nodeName: n1", "")
        );
        let e = refused(&text);
        assert!(e.contains("Pod x/a: spec.nodeName is missing"), "{e}");
    }

    #[test]
    fn pod_on_undeclared_node() {
        let e = refused(&format!("{NODES}{}", pod("x", "a", "n9", "10.244.1.2")));
        assert!(e.contains("Pod x/a: spec.nodeName \"n9\" names no Node"), "{e}");
    }

    #[test]
    fn duplicate_pod_ip_names_both() {
        let e = refused(&format!(
            "{NODES}{}{}",
            pod("x", "a", "n1", "10.244.1.2"),
            pod("y", "b", "n2", "10.244.1.2")
        ));
        assert!(
            e.contains("Pod y/b: status.podIP 10.244.1.2 is also the status.podIP of Pod x/a"),
            "{e}"
        );
    }

    #[test]
    fn pod_ip_equal_to_node_ip() {
        let e = refused(&format!("{NODES}{}", pod("x", "a", "n1", "10.0.0.11")));
        assert!(e.contains("Pod x/a: status.podIP 10.0.0.11"), "{e}");
    }

    #[test]
    fn duplicate_name() {
        let e = refused(&format!(
            "{NODES}{}{}",
            pod("x", "a", "n1", "10.244.1.2"),
            pod("x", "a", "n2", "10.244.2.2")
        ));
        assert!(e.contains("Pod x/a: metadata.name is declared twice"), "{e}");
    }

    #[test]
    fn port_clash() {
        let text = format!(
            "{NODES}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x}}\nspec:\n  nodeName: n1\n  \
             containers:\n  - {{name: c1, ports: [{{containerPort: 80}}]}}\n  - {{name: c2, ports: [{{containerPort: 80, \
             protocol: TCP}}]}}\nstatus: {{podIP: 10.244.1.2}}\n"
        );
        let e = refused(&text);
        assert!(
            e.contains(
                "Pod x/a: spec.containers[1].ports[0]: port 80/TCP clashes with spec.containers[0].ports[0]"
            ),
            "{e}"
        );
    }

    #[test]
    fn node_ips_not_in_one_subnet() {
        let text = format!(
            "{NODES}---\napiVersion: v1\nkind: Node\nmetadata: {{name: n3}}\nstatus: {{addresses: [{{type: InternalIP, \
             address: 192.168.1.1}}]}}\n"
        );
        let e = refused(&text);
        assert!(
            e.contains("Node n3: status.addresses[InternalIP] 192.168.1.1 is not in one subnet"),
            "{e}"
        );
    }

    #[test]
    fn node_secondary_addresses() {
        let text = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [\
                    {type: InternalIP, address: 10.0.0.10}, {type: Hostname, address: n1}, \
                    {type: InternalIP, address: 'fd00::1'}, {type: ExternalIP, address: 10.0.0.20}]}\n";
        let c = check(text).unwrap();
        assert_eq!(
            c.nodes[0].addresses,
            vec!["10.0.0.20".parse::<Ipv4Addr>().unwrap()]
        );
        let e = refused(&text.replace("10.0.0.20", "192.168.7.1"));
        assert!(
            e.contains("Node n1: status.addresses 192.168.7.1 is not a host address of the node subnet"),
            "{e}"
        );
        let e = refused(&format!("{text}{}", pod("x", "a", "n1", "10.0.0.20")));
        assert!(e.contains("status.podIP 10.0.0.20"), "{e}");
        let e = refused(&text.replace("address: n1}", "address: n1}, {type: InternalIP, address: nope}"));
        assert!(
            e.contains("Node n1: status.addresses[2] (InternalIP) \"nope\" is not an IP address"),
            "{e}"
        );
    }

    #[test]
    fn node_without_internal_ip() {
        let e = refused("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n");
        assert!(e.contains("Node n1: status.addresses has no InternalIP"), "{e}");
    }

    #[test]
    fn default_namespace_and_merge() {
        let objs = parse(&format!(
            "{NODES}{}",
            pod("x", "a", "n1", "10.244.1.2").replace(", namespace: x", "")
        ))
        .unwrap();
        assert_eq!(objs[2].key().to_string(), "Pod default/a");
        let update = parse(&pod("default", "a", "n2", "10.244.2.9")).unwrap();
        let merged = merge(&objs, update);
        assert_eq!(merged.len(), 3);
        let c = validate(merged.clone()).unwrap();
        assert_eq!(c.pods[0].node, "n2");
        let (kept, missing) = remove(
            &merged,
            &parse(&pod("default", "zz", "n1", "10.244.1.3")).unwrap(),
        );
        assert_eq!(kept.len(), 3);
        assert_eq!(missing.len(), 1);
    }
}
