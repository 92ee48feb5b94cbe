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
