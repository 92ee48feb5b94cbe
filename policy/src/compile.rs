//! Compiles the policies that concern one node into the datapath maps of `common::policy`.
//!
//! How each NetworkPolicy feature stays exact in a per-packet lookup:
//! - Pod peers (selectors) become pod identities: a selector only reads namespace name, namespace labels
//!   and pod labels, which an identity fixes, so "identity matches" = "pod matches".
//! - `ipBlock` peers become CIDR classes. Every prefix named by a cidr or an except of a policy that
//!   matters to this node is declared; an address's class is its longest declared prefix. A block
//!   `{cidr C, except E..}` allows the classes of declared prefixes P with P ⊆ C and P ⊄ every E: for
//!   an address x with class P*, x ∈ C ⟺ P* ⊆ C (C is declared and contains x, P* is the longest) and
//!   x ∈ E ⟺ P* ⊆ E likewise, so the block matches x exactly. Pod /32s carry their class too, so
//!   ipBlocks match pod IPs.
//! - Named ports, ingress: resolved on the endpoint itself (the destination).
//! - Named ports, egress: the destination is the peer. For selector peers and rules without peers the
//!   entry is keyed by each peer identity that declares the name (identities include the named-port
//!   table, see `IdentityKey`, so one number per identity). For `ipBlock` peers an identity is too
//!   coarse (pods with one identity can be inside and outside the block), so each matching pod's /32 is
//!   declared as a prefix of its own and the entry is keyed by that /32's class.
//! - `endPort` ranges become the fewest port prefixes (`net::port_range_prefixes`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use common::net::Be32;
use common::policy::{
    IpCacheKey4, IpCacheValue4, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, PolicyEndpoint4,
    PolicyEndpointKey4, PolicyEntry, PolicyKey, endpoint_flags, entry_flags, identity,
};

use crate::identity::{Allocations, Exhausted, IdentityKey, allocate};
use crate::model::{
    Cluster, Direction, PeerSpec, PodRef, PodView, Policy, PolicyError, PolicyInput, PolicyRef, PortMatch,
    Protocol, Rule,
};
use crate::net::{Ipv4Net, port_range_prefixes};

/// A local pod as the datapath knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub pod: PodRef,
    pub ip: Ipv4Addr,
    pub identity: u32,
    /// `common::policy::endpoint_flags`.
    pub flags: u32,
}

/// The desired policy state of one node: the three maps plus the tables that give their numbers a
/// meaning (for `policy list`, `identity list`, flow logs and drop reasons).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDesired {
    pub node: String,
    pub ipcache: BTreeMap<IpCacheKey4, IpCacheValue4>,
    pub endpoints: BTreeMap<PolicyEndpointKey4, PolicyEndpoint4>,
    pub policy: BTreeMap<PolicyKey, PolicyEntry>,
    /// identity → what it stands for (pod identities only; reserved ones are constants).
    pub identities: BTreeMap<u32, IdentityKey>,
    /// CIDR class → its declared prefix.
    pub cidr_classes: BTreeMap<u32, Ipv4Net>,
    /// `PolicyEntry::policy_ref` → namespace/name.
    pub policies: BTreeMap<u16, PolicyRef>,
    /// endpoint id → local pod.
    pub endpoint_table: BTreeMap<u32, EndpointInfo>,
    /// Pass to the next `compile` to keep every number stable.
    pub allocations: Allocations,
    /// Policies skipped because they are invalid.
    pub errors: Vec<PolicyError>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
}

/// Compiles `input` for the node `node`. Invalid policies are skipped and listed in
/// `PolicyDesired::errors`; the result is an error only when numbers run out.
pub fn compile(
    input: &PolicyInput,
    node: &str,
    previous: &Allocations,
) -> Result<PolicyDesired, CompileError> {
    compile_cluster(&Cluster::new(input), node, previous)
}

pub(crate) fn compile_cluster(
    cluster: &Cluster,
    node: &str,
    previous: &Allocations,
) -> Result<PolicyDesired, CompileError> {
    // Pods that own their IP, first one per IP (two live pods never share one; stale ones are not live).
    let mut by_ip: BTreeMap<Ipv4Addr, &PodView> = BTreeMap::new();
    for p in cluster.pods.iter().filter(|p| p.owns_ip()) {
        by_ip.entry(p.ip.expect("owns_ip")).or_insert(p);
    }
    let local: Vec<&PodView> = by_ip
        .values()
        .copied()
        .filter(|p| p.node.as_deref() == Some(node))
        .collect();

    // Identities.
    let keys: BTreeSet<IdentityKey> = by_ip.values().map(|p| IdentityKey::of(p)).collect();
    let identities = allocate(
        &keys,
        &previous.identities,
        identity::FIRST_POD_IDENTITY,
        identity::MAX_IDENTITY,
        "identity",
    )?;

    // Policies that matter here: those selecting a local endpoint.
    let relevant: Vec<&Policy> = cluster
        .policies
        .iter()
        .filter(|p| local.iter().any(|e| p.selects(e)))
        .collect();
    let policy_keys: BTreeSet<PolicyRef> = cluster.policies.iter().map(|p| p.id.clone()).collect();
    let prev_policies = previous
        .policies
        .iter()
        .map(|(k, v)| (k.clone(), u32::from(*v)))
        .collect();
    let policy_ids: BTreeMap<PolicyRef, u16> =
        allocate(&policy_keys, &prev_policies, 1, u32::from(u16::MAX) + 1, "policy")?
            .into_iter()
            .map(|(k, v)| (k, u16::try_from(v).expect("below u16::MAX")))
            .collect();

    // Declared prefixes: every cidr/except of relevant policies, plus the /32 of each pod that an
    // egress ipBlock rule with a named port reaches (see the module comment).
    let mut declared: BTreeSet<Ipv4Net> = BTreeSet::new();
    for p in &relevant {
        for (dir, rule) in rules_of(p) {
            for peer in rule.peers.iter().flatten() {
                let PeerSpec::IpBlock { cidr, except } = peer else {
                    continue;
                };
                declared.insert(*cidr);
                declared.extend(except.iter().copied());
                if dir == Direction::Egress {
                    let named = rule
                        .ports
                        .iter()
                        .flatten()
                        .any(|s| matches!(s.port, PortMatch::Named(_)));
                    if named {
                        let inside = by_ip.keys().filter(|ip| peer.matches_ip(**ip));
                        declared.extend(inside.map(|ip| Ipv4Net::host(*ip)));
                    }
                }
            }
        }
    }
    let classes = allocate(
        &declared,
        &previous.cidr_classes,
        identity::CIDR_CLASS_BASE | 1,
        u32::MAX,
        "CIDR class",
    )?;
    let class_of = |ip: Ipv4Addr| {
        // Longest declared prefix containing ip.
        (0..=32u8)
            .rev()
            .find_map(|len| classes.get(&Ipv4Net::new(ip, len)))
            .copied()
            .unwrap_or(0)
    };

    // ipcache: declared prefixes (world), then the node's own addresses and the pods (/32, with their class).
    let mut ipcache = BTreeMap::new();
    for (net, class) in &classes {
        ipcache.insert(
            ipcache_key(net.addr(), net.prefix_len()),
            IpCacheValue4 {
                identity: identity::WORLD,
                cidr_class: *class,
            },
        );
    }
    for ip in cluster.node_addrs.get(node).into_iter().flatten() {
        ipcache.insert(
            ipcache_key(*ip, 32),
            IpCacheValue4 {
                identity: identity::HOST,
                cidr_class: class_of(*ip),
            },
        );
    }
    // A live pod's IP is the pod's, whatever else claims the address.
    for (ip, pod) in &by_ip {
        let id = identities[&IdentityKey::of(pod)];
        ipcache.insert(
            ipcache_key(*ip, 32),
            IpCacheValue4 {
                identity: id,
                cidr_class: class_of(*ip),
            },
        );
    }

    // Endpoints.
    let ep_keys: BTreeSet<PodRef> = local.iter().map(|p| p.id.clone()).collect();
    let ep_ids = allocate(
        &ep_keys,
        &previous.endpoints,
        1,
        identity::MAX_IDENTITY,
        "endpoint",
    )?;

    let ctx = Ctx {
        identities: &identities,
        classes: &classes,
        by_ip: &by_ip,
    };
    let mut policy = BTreeMap::new();
    let mut endpoints = BTreeMap::new();
    let mut endpoint_table = BTreeMap::new();
    for pod in &local {
        let ep = ep_ids[&pod.id];
        let mut flags = 0;
        for dir in [Direction::Ingress, Direction::Egress] {
            let isolating: Vec<&&Policy> = relevant
                .iter()
                .filter(|p| p.rules(dir).is_some() && p.selects(pod))
                .collect();
            if isolating.is_empty() {
                continue;
            }
            flags |= match dir {
                Direction::Ingress => endpoint_flags::INGRESS_ISOLATED,
                Direction::Egress => endpoint_flags::EGRESS_ISOLATED,
            };
            for p in isolating {
                for (ri, rule) in p.rules(dir).unwrap_or_default().iter().enumerate() {
                    let value = PolicyEntry {
                        policy_ref: policy_ids[&p.id],
                        rule_index: u16::try_from(ri).unwrap_or(u16::MAX),
                        flags: entry_flags::NONE,
                        _pad: 0,
                    };
                    for (peer, sel) in ctx.rule_entries(pod, dir, rule) {
                        for key in keys_for(ep, dir, peer, sel) {
                            policy.entry(key).or_insert(value);
                        }
                    }
                }
            }
        }
        let ip = pod.ip.expect("local pods own their IP");
        let id = identities[&IdentityKey::of(pod)];
        endpoints.insert(
            PolicyEndpointKey4 {
                addr: Be32::from_octets(ip.octets()),
            },
            PolicyEndpoint4 {
                endpoint_id: ep,
                identity: id,
                flags,
            },
        );
        endpoint_table.insert(
            ep,
            EndpointInfo {
                pod: pod.id.clone(),
                ip,
                identity: id,
                flags,
            },
        );
    }

    Ok(PolicyDesired {
        node: node.to_owned(),
        ipcache,
        endpoints,
        policy,
        identities: identities.iter().map(|(k, v)| (*v, k.clone())).collect(),
        cidr_classes: classes.iter().map(|(k, v)| (*v, *k)).collect(),
        policies: policy_ids.iter().map(|(k, v)| (*v, k.clone())).collect(),
        endpoint_table,
        allocations: Allocations {
            identities,
            endpoints: ep_ids,
            cidr_classes: classes,
            policies: policy_ids,
        },
        errors: cluster.errors.clone(),
    })
}

fn rules_of(p: &Policy) -> impl Iterator<Item = (Direction, &Rule)> {
    let ing = p.ingress.iter().flatten().map(|r| (Direction::Ingress, r));
    ing.chain(p.egress.iter().flatten().map(|r| (Direction::Egress, r)))
}

fn ipcache_key(addr: Ipv4Addr, len: u8) -> IpCacheKey4 {
    IpCacheKey4 {
        prefix_len: u32::from(len),
        addr: Be32::from_octets(addr.octets()),
    }
}

/// What a rule allows on the port side of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortSel {
    AnyProto,
    Range(Protocol, u16, u16),
}

struct Ctx<'a> {
    identities: &'a BTreeMap<IdentityKey, u32>,
    classes: &'a BTreeMap<Ipv4Net, u32>,
    by_ip: &'a BTreeMap<Ipv4Addr, &'a PodView>,
}

impl Ctx<'_> {
    /// Peer ids a peer entry stands for (named ports aside).
    fn peer_ids(&self, peer: &PeerSpec) -> Vec<u32> {
        match peer {
            PeerSpec::Pods { .. } => self
                .identities
                .iter()
                .filter(|(k, _)| peer.matches_pod(&k.namespace, &k.namespace_labels, &k.labels))
                .map(|(_, id)| *id)
                .collect(),
            PeerSpec::IpBlock { cidr, except } => self
                .classes
                .iter()
                .filter(|(p, _)| p.is_within(*cidr) && !except.iter().any(|e| p.is_within(*e)))
                .map(|(_, c)| *c)
                .collect(),
            PeerSpec::IpBlockV6 => Vec::new(),
        }
    }

    /// (peer id, port selection) pairs of one rule at endpoint `pod`.
    fn rule_entries(&self, pod: &PodView, dir: Direction, rule: &Rule) -> Vec<(u32, PortSel)> {
        let mut out = Vec::new();
        let peers: Vec<Option<&PeerSpec>> = match &rule.peers {
            None => vec![None],
            Some(ps) => ps.iter().map(Some).collect(),
        };
        let Some(ports) = &rule.ports else {
            for peer in &peers {
                match peer {
                    None => out.push((identity::PEER_ANY, PortSel::AnyProto)),
                    Some(p) => out.extend(self.peer_ids(p).into_iter().map(|id| (id, PortSel::AnyProto))),
                }
            }
            return out;
        };
        for spec in ports {
            let proto = spec.proto;
            let numbered = match &spec.port {
                PortMatch::Any => Some(PortSel::Range(proto, 0, u16::MAX)),
                PortMatch::Range(lo, hi) => Some(PortSel::Range(proto, *lo, *hi)),
                PortMatch::Named(_) => None,
            };
            for peer in &peers {
                match (&spec.port, numbered) {
                    (_, Some(sel)) => match peer {
                        None => out.push((identity::PEER_ANY, sel)),
                        Some(p) => out.extend(self.peer_ids(p).into_iter().map(|id| (id, sel))),
                    },
                    (PortMatch::Named(name), None) if dir == Direction::Ingress => {
                        // The endpoint is the destination: one number for every peer.
                        let Some(n) = pod.named_ports.resolve(name, proto) else {
                            continue;
                        };
                        let sel = PortSel::Range(proto, n, n);
                        match peer {
                            None => out.push((identity::PEER_ANY, sel)),
                            Some(p) => out.extend(self.peer_ids(p).into_iter().map(|id| (id, sel))),
                        }
                    }
                    (PortMatch::Named(name), None) => out.extend(self.egress_named(*peer, name, proto)),
                    _ => {}
                }
            }
        }
        out
    }

    /// Egress to a named port: resolved on each destination (see the module comment).
    fn egress_named(&self, peer: Option<&PeerSpec>, name: &str, proto: Protocol) -> Vec<(u32, PortSel)> {
        let by_identity = |keep: &dyn Fn(&IdentityKey) -> bool| -> Vec<(u32, PortSel)> {
            self.identities
                .iter()
                .filter(|(k, _)| keep(k))
                .filter_map(|(k, id)| {
                    k.named_ports
                        .resolve(name, proto)
                        .map(|n| (*id, PortSel::Range(proto, n, n)))
                })
                .collect()
        };
        match peer {
            None => by_identity(&|_| true),
            Some(p @ PeerSpec::Pods { .. }) => {
                by_identity(&|k| p.matches_pod(&k.namespace, &k.namespace_labels, &k.labels))
            }
            Some(p @ PeerSpec::IpBlock { .. }) => self
                .by_ip
                .iter()
                .filter(|(ip, _)| p.matches_ip(**ip))
                .filter_map(|(ip, pod)| {
                    let n = pod.named_ports.resolve(name, proto)?;
                    let class = self.classes.get(&Ipv4Net::host(*ip))?;
                    Some((*class, PortSel::Range(proto, n, n)))
                })
                .collect(),
            Some(PeerSpec::IpBlockV6) => Vec::new(),
        }
    }
}

/// The LPM keys of one (endpoint, direction, peer, port selection). Bits past the prefix are zero, so
/// equal prefixes are equal keys (the kernel trie treats them as one entry).
fn keys_for(ep: u32, dir: Direction, peer: u32, sel: PortSel) -> Vec<PolicyKey> {
    let base = PolicyKey::lookup(ep, dir.datapath(), peer, 0, 0);
    match sel {
        PortSel::AnyProto => vec![PolicyKey {
            prefix_len: POLICY_PREFIX_ANY_PROTO,
            ..base
        }],
        PortSel::Range(proto, lo, hi) => port_range_prefixes(lo, hi)
            .into_iter()
            .map(|(v, bits)| PolicyKey {
                prefix_len: POLICY_PREFIX_ANY_PORT + u32::from(bits),
                proto: proto.number(),
                port: common::net::Be16::new(v),
                ..base
            })
            .collect(),
    }
}

fn peer_name(d: &PolicyDesired, peer: u32) -> String {
    match peer {
        identity::PEER_ANY => "any".into(),
        identity::HOST => "host".into(),
        identity::WORLD => "world".into(),
        p if identity::is_cidr_class(p) => d
            .cidr_classes
            .get(&p)
            .map_or_else(|| format!("class {p:#x}"), |n| format!("cidr {n}")),
        p => format!("id {p}"),
    }
}

fn flags_name(flags: u32) -> String {
    let mut names = Vec::new();
    if flags & endpoint_flags::INGRESS_ISOLATED != 0 {
        names.push("ingress-isolated");
    }
    if flags & endpoint_flags::EGRESS_ISOLATED != 0 {
        names.push("egress-isolated");
    }
    if names.is_empty() {
        "not-isolated".into()
    } else {
        names.join(",")
    }
}

impl std::fmt::Display for PolicyDesired {
    /// A stable text dump of every map and table (golden tests, `policy list`, `identity list`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "node {}", self.node)?;
        writeln!(f, "identities:")?;
        for (id, key) in &self.identities {
            writeln!(f, "  {id} {key}")?;
        }
        writeln!(f, "cidr-classes:")?;
        for (class, net) in &self.cidr_classes {
            writeln!(f, "  {class:#x} {net}")?;
        }
        writeln!(f, "policies:")?;
        for (r, p) in &self.policies {
            writeln!(f, "  {r} {p}")?;
        }
        writeln!(f, "endpoints:")?;
        for (ep, info) in &self.endpoint_table {
            writeln!(
                f,
                "  {ep} {} {} id {} {}",
                info.pod,
                info.ip,
                info.identity,
                flags_name(info.flags)
            )?;
        }
        writeln!(f, "ipcache:")?;
        for (k, v) in &self.ipcache {
            let addr = Ipv4Addr::from(k.addr.octets());
            writeln!(
                f,
                "  {addr}/{} -> {} class {:#x}",
                k.prefix_len,
                peer_name(self, v.identity),
                v.cidr_class
            )?;
        }
        writeln!(f, "policy:")?;
        let mut entries: Vec<_> = self.policy.iter().collect();
        entries.sort_by_key(|(k, _)| k.listing_order());
        for (k, v) in entries {
            let dir = if k.direction == common::policy::DIR_INGRESS {
                "ingress"
            } else {
                "egress"
            };
            let proto = match (k.prefix_len, Protocol::from_number(k.proto)) {
                (POLICY_PREFIX_ANY_PROTO, _) => "any".to_owned(),
                (_, Some(p)) => p.to_string(),
                (_, None) => k.proto.to_string(),
            };
            let port = if k.prefix_len <= POLICY_PREFIX_ANY_PORT {
                "any".to_owned()
            } else {
                let size = 1u32 << (common::policy::POLICY_PREFIX_FULL - k.prefix_len);
                let lo = u32::from(k.port.get());
                if size == 1 {
                    lo.to_string()
                } else {
                    format!("{lo}-{}", lo + size - 1)
                }
            };
            let policy = self
                .policies
                .get(&v.policy_ref)
                .map_or_else(|| format!("#{}", v.policy_ref), ToString::to_string);
            writeln!(
                f,
                "  ep {} {dir} peer {} {proto} {port} -> {policy} rule {}",
                k.endpoint_id,
                peer_name(self, k.peer_id),
                v.rule_index
            )?;
        }
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{Explainer, Flow, Peer};
    use crate::simulate::{ipcache_lookup, keys_are_canonical, simulate};

    /// A pod on `node` at `ip` with `labels` (YAML flow map) and named ports (`name=port`, TCP).
    fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: &str, ports: &[(&str, u16)]) -> String {
        let ports: Vec<String> = ports
            .iter()
            .map(|(n, p)| format!("{{name: {n}, containerPort: {p}}}"))
            .collect();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, ports: [{}]}}]}}\nstatus: {{podIP: {ip}}}\n",
            ports.join(", ")
        )
    }

    fn input(docs: &[String]) -> PolicyInput {
        PolicyInput::from_yaml(&docs.join("---\n")).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Checks one TCP flow on the compiled maps of `nodes` against `explain` and the expected verdict.
    fn check(input: &PolicyInput, nodes: &[&str], from: &str, to: &str, port: u16, want: bool) {
        let maps: Vec<PolicyDesired> = nodes
            .iter()
            .map(|n| compile(input, n, &Allocations::default()).unwrap())
            .collect();
        let cluster = Cluster::new(input);
        let (src, dst) = (
            cluster.pod(&from.parse().unwrap()).unwrap(),
            cluster.pod(&to.parse().unwrap()).unwrap(),
        );
        let (src_ip, dst_ip) = (src.ip.unwrap(), dst.ip.unwrap());
        let mut sim = true;
        for d in &maps {
            assert!(keys_are_canonical(d));
            let v = simulate(d, src_ip, dst_ip, common::net::proto::TCP, port);
            sim &= v.allowed();
        }
        let flow = Flow {
            from: Peer::Pod(src.id.clone()),
            to: dst.id.clone(),
            port,
            protocol: Protocol::Tcp,
        };
        let ex = Explainer::new(input).explain(&flow).unwrap();
        assert_eq!(ex.allowed, want, "explain {from} -> {to}:{port}: {ex}");
        assert_eq!(sim, want, "datapath {from} -> {to}:{port} ({ex})");
    }

    const WEB: &str = "{app: web}";

    #[test]
    fn egress_named_ports_are_exact_per_destination_pod() {
        let docs = vec![
            pod("x", "c", "n1", "10.1.0.1", "{pod: c}", &[]),
            pod("y", "s1", "n2", "10.9.0.1", WEB, &[("http", 8080)]),
            pod("y", "s2", "n2", "10.9.0.2", WEB, &[("http", 9090)]),
            // Same identity as s1 (labels and ports), outside the ipBlock below.
            pod("y", "s3", "n2", "10.8.0.3", WEB, &[("http", 8080)]),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: to-web, namespace: x}\n\
             spec:\n  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]\n  egress:\n  \
             - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: http}]\n"
                .into(),
        ];
        let inp = input(&docs);
        let d = compile(&inp, "n1", &Allocations::default()).unwrap();
        // s1 and s2 share labels but not their `http`: two identities; s1 and s3 share one.
        let id = |a: &str| ipcache_lookup(&d, ip(a)).identity;
        assert_ne!(id("10.9.0.1"), id("10.9.0.2"));
        assert_eq!(id("10.9.0.1"), id("10.8.0.3"));
        for (to, port, want) in [
            ("y/s1", 8080, true),
            ("y/s1", 9090, false),
            ("y/s2", 9090, true),
            ("y/s2", 8080, false),
        ] {
            check(&inp, &["n1", "n2"], "x/c", to, port, want);
        }

        // The same through an ipBlock: only pods inside the block, each on its own number, even though s3
        // has s1's identity.
        let mut docs = docs;
        docs[4] = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: to-block, namespace: x}\n\
                   spec:\n  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]\n  egress:\n  \
                   - to: [{ipBlock: {cidr: 10.9.0.0/16}}]\n    ports: [{port: http}]\n"
            .into();
        let inp = input(&docs);
        for (to, port, want) in [
            ("y/s1", 8080, true),
            ("y/s1", 9090, false),
            ("y/s2", 9090, true),
            ("y/s2", 8080, false),
            ("y/s3", 8080, false),
        ] {
            check(&inp, &["n1", "n2"], "x/c", to, port, want);
        }
        let d = compile(&inp, "n1", &Allocations::default()).unwrap();
        let declared: Vec<String> = d.cidr_classes.values().map(ToString::to_string).collect();
        assert_eq!(declared, ["10.9.0.0/16", "10.9.0.1/32", "10.9.0.2/32"]);
    }

    #[test]
    fn ingress_named_ports_resolve_on_each_endpoint() {
        let docs = vec![
            pod("x", "c", "n1", "10.1.0.1", "{pod: c}", &[]),
            pod("y", "s1", "n2", "10.9.0.1", WEB, &[("http", 8080)]),
            pod("y", "s2", "n2", "10.9.0.2", WEB, &[("http", 9090)]),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-http, namespace: y}\n\
             spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: http}]}]\n"
                .into(),
        ];
        let inp = input(&docs);
        for (to, port, want) in [
            ("y/s1", 8080, true),
            ("y/s1", 9090, false),
            ("y/s2", 9090, true),
            ("y/s2", 8080, false),
        ] {
            check(&inp, &["n1", "n2"], "x/c", to, port, want);
        }
    }

    #[test]
    fn cidr_classes_carve_excepts_and_cover_pod_ips() {
        let docs = vec![
            pod("x", "a", "n1", "10.1.2.3", "{pod: a}", &[]),
            pod("x", "b", "n1", "10.2.0.1", "{pod: b}", &[]),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p1, namespace: x}\n\
             spec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  \
             - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n"
                .into(),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p2, namespace: x}\n\
             spec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.1.2.0/24}}]\n"
                .into(),
        ];
        let inp = input(&docs);
        let d = compile(&inp, "n1", &Allocations::default()).unwrap();
        let class = |net: &str| {
            *d.allocations
                .cidr_classes
                .get(
                    &net.parse::<crate::net::Cidr>()
                        .map(|c| match c {
                            crate::net::Cidr::V4(n) => n,
                            crate::net::Cidr::V6 => unreachable!(),
                        })
                        .unwrap(),
                )
                .unwrap()
        };
        let (c8, c16, c24) = (class("10.0.0.0/8"), class("10.1.0.0/16"), class("10.1.2.0/24"));
        assert!([c8, c16, c24].iter().all(|c| identity::is_cidr_class(*c)));
        // An address's class is its longest declared prefix; pod /32s carry theirs.
        assert_eq!(ipcache_lookup(&d, ip("10.1.2.3")).cidr_class, c24);
        assert_eq!(
            ipcache_lookup(&d, ip("10.1.2.3")).identity,
            d.endpoint_table[&1].identity
        );
        assert_eq!(
            ipcache_lookup(&d, ip("10.1.9.9")),
            IpCacheValue4 {
                identity: identity::WORLD,
                cidr_class: c16
            }
        );
        assert_eq!(ipcache_lookup(&d, ip("10.7.0.1")).cidr_class, c8);
        assert_eq!(
            ipcache_lookup(&d, ip("11.0.0.1")),
            IpCacheValue4 {
                identity: identity::WORLD,
                cidr_class: 0
            }
        );
        // p1 (10/8 except 10.1/16) allows exactly class 10/8: not 10.1/16, not 10.1.2/24 inside it.
        let ep_a = d.allocations.endpoints[&"x/a".parse().unwrap()];
        let peers: BTreeSet<u32> = d
            .policy
            .keys()
            .filter(|k| k.endpoint_id == ep_a)
            .map(|k| k.peer_id)
            .collect();
        assert_eq!(peers, BTreeSet::from([c8]));
        let v = |src: &str, dst: &str| simulate(&d, ip(src), ip(dst), common::net::proto::TCP, 80).allowed();
        assert!(v("10.7.0.1", "10.1.2.3"));
        assert!(!v("10.1.9.9", "10.1.2.3"));
        assert!(!v("10.1.2.9", "10.1.2.3"));
        assert!(!v("11.0.0.1", "10.1.2.3"));
        // p2 matches the pod a (a pod IP inside an ipBlock) and outside addresses alike.
        assert!(v("10.1.2.3", "10.2.0.1"));
        assert!(v("10.1.2.200", "10.2.0.1"));
        assert!(!v("10.1.3.1", "10.2.0.1"));
    }

    #[test]
    fn numbers_stay_stable_across_recompiles() {
        let mut docs = vec![
            pod("x", "m", "n1", "10.1.0.1", "{pod: m}", &[]),
            pod("x", "n", "n1", "10.1.0.2", "{pod: n}", &[]),
            pod("y", "o", "n2", "10.2.0.1", "{pod: o}", &[]),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
             spec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.2.0.0/16}}]}]\n"
                .into(),
        ];
        let first = compile(&input(&docs), "n1", &Allocations::default()).unwrap();
        // New pods whose label sets (and names) sort before every existing one, and a new prefix.
        docs.push(pod("a", "a", "n1", "10.1.0.3", "{aaa: first}", &[]));
        docs.push(pod("x", "a", "n1", "10.1.0.4", "{pod: a}", &[]));
        docs.push(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\n\
             spec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n"
                .into(),
        );
        let inp = input(&docs);
        let second = compile(&inp, "n1", &first.allocations).unwrap();
        for (k, v) in &first.allocations.identities {
            assert_eq!(second.allocations.identities.get(k), Some(v), "identity of {k}");
        }
        for (k, v) in &first.allocations.endpoints {
            assert_eq!(second.allocations.endpoints.get(k), Some(v), "endpoint {k}");
        }
        for (k, v) in &first.allocations.cidr_classes {
            assert_eq!(second.allocations.cidr_classes.get(k), Some(v), "class of {k}");
        }
        for (k, v) in &first.allocations.policies {
            assert_eq!(second.allocations.policies.get(k), Some(v), "policy {k}");
        }
        // Existing addresses keep their identity (their class may change: 10.0.0.0/8 is new).
        for (k, v) in &first.ipcache {
            assert_eq!(second.ipcache.get(k).map(|v| v.identity), Some(v.identity));
        }
        // Without the previous allocation the newcomers would have taken the low numbers.
        let fresh = compile(&inp, "n1", &Allocations::default()).unwrap();
        assert_ne!(fresh.allocations.identities, second.allocations.identities);
        // Recompiling with its own allocations is a fixed point.
        assert_eq!(compile(&inp, "n1", &second.allocations).unwrap(), second);
    }

    #[test]
    fn invalid_policies_are_reported_and_the_rest_compiles() {
        let docs = vec![
            pod("x", "a", "n1", "10.1.0.1", "{pod: a}", &[]),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\n\
             spec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80, protocol: ICMP}]}]\n"
                .into(),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: good, namespace: x}\n\
             spec:\n  podSelector: {}\n  policyTypes: [Egress]\n"
                .into(),
        ];
        let d = compile(&input(&docs), "n1", &Allocations::default()).unwrap();
        assert_eq!(d.errors.len(), 1);
        assert_eq!(
            d.errors[0].to_string(),
            "policy x/bad: spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\" (want TCP, UDP or SCTP)"
        );
        assert_eq!(d.endpoint_table[&1].flags, endpoint_flags::EGRESS_ISOLATED);
        assert_eq!(
            d.policies.values().map(ToString::to_string).collect::<Vec<_>>(),
            ["x/good"]
        );
    }

    #[test]
    fn host_and_non_local_pods() {
        let docs = vec![
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n".into(),
            pod("x", "a", "n1", "10.1.0.1", "{pod: a}", &[]),
            pod("x", "b", "n2", "10.1.0.2", "{pod: b}", &[]),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x, labels: {pod: h}}\n\
             spec: {nodeName: n1, hostNetwork: true, containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n"
                .into(),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\n\
             spec:\n  podSelector: {}\n"
                .into(),
        ];
        let d = compile(&input(&docs), "n1", &Allocations::default()).unwrap();
        // Only x/a is a local endpoint: x/b is elsewhere, x/h is on the host network.
        assert_eq!(
            d.endpoint_table
                .values()
                .map(|e| e.pod.to_string())
                .collect::<Vec<_>>(),
            ["x/a"]
        );
        assert_eq!(ipcache_lookup(&d, ip("10.0.0.1")).identity, identity::HOST);
        let v = simulate(&d, ip("10.0.0.1"), ip("10.1.0.1"), common::net::proto::TCP, 10250);
        assert_eq!(v.ingress, crate::simulate::SimStep::HostAllowed);
        let v = simulate(&d, ip("10.1.0.2"), ip("10.1.0.1"), common::net::proto::TCP, 80);
        assert!(!v.allowed());
        assert_eq!(v.egress, crate::simulate::SimStep::NotLocal);
    }
}
