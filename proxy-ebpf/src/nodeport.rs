//! North-south service translation: traffic entering the node from its network for a NodePort, an
//! externalIP or a LoadBalancer IP, and the replies of such connections coming back from a backend on
//! another node. Decides only; the caller rewrites the packet (XDP by hand, tc with the skb helpers) and
//! forwards it, so the XDP fast path and the tc path behind it make the same choice for a flow.

use aya_ebpf::maps::lpm_trie::Key;
use common::{
    config::config_flags,
    ct::{CtEntry4, CtKey4, ct_flags},
    event::DropReason,
    lb::{Backend4, MAGLEV_MAX, SCOPE_EXTERNAL, SourceRangeKey4, backend_flags, svc_flags},
    net::{Be16, Be32, proto},
};

use crate::{
    ct,
    lb::{self, Frontend},
    maps::{
        STRAIT_CONFIG_V2 as CONFIG, STRAIT_LB4_BACKENDS_V2 as BACKENDS, STRAIT_LB4_MAGLEV_V1 as MAGLEV,
        STRAIT_LB4_SOURCE_RANGES_V1 as SOURCE_RANGES,
    },
    nat::Tuple,
    parse::Ipv4Flow,
};

/// Addresses and ports a packet must leave with (raw network order).
#[derive(Clone, Copy)]
pub struct Rewrite {
    pub tuple: Tuple,
    /// Direct server return: the packet also carries the frontend it was addressed to (`dsr`).
    pub dsr: bool,
}

pub enum Plan {
    /// Not north-south service traffic: leave it to the stack.
    Pass,
    /// A service without usable endpoints whose clients are refused (RST / ICMP unreachable).
    Reject,
    Drop(DropReason),
    Translate(Rewrite),
}

/// Frontend kinds reachable from outside the cluster; ClusterIPs are not served to external clients.
const EXTERNAL_KINDS: u16 = svc_flags::NODEPORT | svc_flags::EXTERNAL_IP | svc_flags::LOADBALANCER;

#[inline(always)]
pub fn plan(flow: &Ipv4Flow) -> Plan {
    if flow.later_fragment || !crate::nat::has_ports(flow.proto) {
        return Plan::Pass;
    }
    let key = ct::key_of(flow);
    if let Some(entry) = ct::lookup(&key)
        && entry.flags & ct_flags::NODEPORT != 0
    {
        if entry.flags & ct_flags::REPLY != 0 {
            return reply(entry, flow);
        }
        // As east-west: UDP re-balances once its backend is gone, TCP and SCTP keep theirs.
        if flow.proto != proto::UDP || backend(entry.backend_id).is_some() {
            let snat = entry.flags & ct_flags::SNAT != 0;
            let rewrite = Rewrite {
                tuple: Tuple {
                    saddr: if snat { node_addr() } else { flow.saddr },
                    sport: entry.wire_port.raw(),
                    daddr: entry.rewrite_addr.raw(),
                    dport: entry.rewrite_port.raw(),
                },
                dsr: entry.flags & ct_flags::DSR != 0 && crate::dsr::carries_option(flow),
            };
            ct::touch(entry, flow, 0);
            return Plan::Translate(rewrite);
        }
    }
    new_connection(flow, &key)
}

/// A reply from a backend: back to the client, from the address and port it connected to.
#[inline(always)]
fn reply(entry: &mut CtEntry4, flow: &Ipv4Flow) -> Plan {
    let Some(rev) = lb::frontend_of(entry) else {
        return Plan::Drop(DropReason::NatFailed);
    };
    let (daddr, dport) = ct::reply_destination(entry, flow);
    let rewrite = Rewrite {
        tuple: Tuple {
            saddr: rev.addr.raw(),
            sport: rev.port.raw(),
            daddr,
            dport,
        },
        dsr: false,
    };
    ct::touch(entry, flow, ct_flags::SEEN_REPLY);
    Plan::Translate(rewrite)
}

#[inline(always)]
fn new_connection(flow: &Ipv4Flow, forward: &CtKey4) -> Plan {
    let Some(svc) = lb::service(flow.daddr, flow.dport, flow.proto, SCOPE_EXTERNAL, 0) else {
        return Plan::Pass;
    };
    if svc.flags & EXTERNAL_KINDS == 0 {
        return Plan::Pass;
    }
    if svc.flags & svc_flags::SOURCE_RANGES != 0 && !source_allowed(svc.rev_nat, flow.saddr) {
        return Plan::Drop(DropReason::SourceRange);
    }
    if svc.count == 0 {
        return if svc.flags & svc_flags::REJECT != 0 {
            Plan::Reject
        } else {
            Plan::Drop(DropReason::NoBackend)
        };
    }
    let frontend = Frontend {
        svc,
        scope: SCOPE_EXTERNAL,
    };
    let picked = if svc.flags & svc_flags::AFFINITY != 0 {
        lb::pick(flow.saddr, flow.daddr, flow.dport, flow.proto, &frontend)
    } else {
        maglev_pick(flow, svc.rev_nat)
            .or_else(|| lb::pick(flow.saddr, flow.daddr, flow.dport, flow.proto, &frontend))
    };
    let Some((backend_id, be)) = picked else {
        return Plan::Drop(DropReason::NoBackend);
    };
    // externalTrafficPolicy Local keeps the client's address; Cluster SNATs to this node so the
    // backend's answer comes back through here to be reverse-translated, unless the backend is on another
    // node and DSR is on: then the client's address is kept too and the backend's node answers directly.
    let local_policy = svc.flags & svc_flags::EXT_POLICY_LOCAL != 0;
    let dsr = !local_policy
        && be.flags & backend_flags::LOCAL == 0
        && datapath_flags() & config_flags::NODEPORT_DSR != 0;
    let snat_addr = if local_policy || dsr { 0 } else { node_addr() };
    if !local_policy && !dsr && snat_addr == 0 {
        return Plan::Drop(DropReason::NatFailed);
    }
    let mut reply = CtKey4 {
        saddr: be.addr,
        daddr: Be32::from_raw(if snat_addr != 0 { snat_addr } else { flow.saddr }),
        sport: be.port,
        dport: Be16::from_raw(flow.sport),
        proto: flow.proto,
        _pad: 0,
        _pad2: 0,
    };
    // With DSR the answer is matched on the backend's node by the port the client sent, so it is never
    // reallocated here; the reply entry kept on this node is the record of the translation only.
    let wire_port = if dsr {
        flow.sport
    } else {
        // SNATed to the node, the connection must not take a port the node's own sockets may hold.
        let avoid = if snat_addr != 0 { local_ports() } else { (0, 0) };
        let Some(port) = ct::wire_port(&mut reply, svc.rev_nat, avoid) else {
            return Plan::Drop(DropReason::ConntrackFull);
        };
        port
    };
    let translation = ct::Translation {
        backend_id,
        backend: be,
        rev_nat: svc.rev_nat,
        frontend_addr: flow.daddr,
        frontend_port: flow.dport,
        snat_from: if snat_addr != 0 { flow.saddr } else { 0 },
        client_port: flow.sport,
        wire_port,
        extra_flags: if dsr {
            ct_flags::NODEPORT | ct_flags::DSR
        } else {
            ct_flags::NODEPORT
        },
    };
    if ct::create(forward, &reply, &translation).is_err() {
        return Plan::Drop(DropReason::ConntrackFull);
    }
    Plan::Translate(Rewrite {
        tuple: Tuple {
            saddr: if snat_addr != 0 { snat_addr } else { flow.saddr },
            sport: wire_port,
            daddr: be.addr.raw(),
            dport: be.port.raw(),
        },
        dsr: dsr && crate::dsr::carries_option(flow),
    })
}

#[inline(always)]
fn backend(id: u32) -> Option<&'static Backend4> {
    // SAFETY: read-only use of a map value.
    unsafe { BACKENDS.get(&id) }
}

#[inline(always)]
fn datapath_flags() -> u32 {
    CONFIG.get(0).map_or(0, |c| c.flags)
}

/// The node's ephemeral port range (host order; (0, 0) until the agent has written it).
#[inline(always)]
fn local_ports() -> (u16, u16) {
    CONFIG
        .get(0)
        .map_or((0, 0), |c| (c.local_port_min, c.local_port_max))
}

#[inline(always)]
pub fn node_addr() -> u32 {
    CONFIG.get(0).map_or(0, |c| c.node_addr)
}

/// loadBalancerSourceRanges: whether `saddr` is in a range of the frontend (rev-NAT id). Shared by
/// every client: outside (here), pods (`lb::from_pod`) and the node itself (`sock`).
#[inline(always)]
pub fn source_allowed(rev_nat: u32, saddr: u32) -> bool {
    let key = Key::new(
        64,
        SourceRangeKey4 {
            rev_nat,
            saddr: Be32::from_raw(saddr),
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// The backend the frontend's Maglev table gives this flow: the same on every node, since the table
/// and the hash are, so a flow that an outside router moves between nodes keeps its backend.
#[inline(always)]
fn maglev_pick(flow: &Ipv4Flow, rev_nat: u32) -> Option<(u32, &'static Backend4)> {
    let size = CONFIG.get(0).map_or(0, |c| c.maglev_size);
    if size == 0 {
        return None;
    }
    // SAFETY: read-only use of a map value.
    let table = unsafe { MAGLEV.get(&rev_nat) }?;
    let index = (flow_hash(flow) % size) as usize;
    if index >= MAGLEV_MAX {
        return None;
    }
    let id = table.backend_ids[index];
    backend(id).map(|be| (id, be))
}

/// A hash of the 5-tuple with fixed constants (murmur3's finaliser over a mixed word): identical on every
/// node and build, unlike a randomly keyed hash.
#[inline(always)]
fn flow_hash(flow: &Ipv4Flow) -> u32 {
    let ports = (u32::from(u16::from_be(flow.sport)) << 16) | u32::from(u16::from_be(flow.dport));
    let mut h = u32::from_be(flow.saddr).wrapping_mul(0x9e37_79b1);
    h ^= u32::from_be(flow.daddr).rotate_left(13).wrapping_mul(0x85eb_ca6b);
    h ^= ports.wrapping_mul(0xc2b2_ae35);
    h ^= u32::from(flow.proto);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
