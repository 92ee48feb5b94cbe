//! East-west service load balancing on a pod's host veth: service lookup, backend pick, DNAT on the
//! way out of the pod; reverse NAT of replies on the way in.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use aya_ebpf::programs::TcContext;
use common::{
    affinity::{AffinityKey4, AffinityValue},
    ct::{CtEntry4, CtKey4, ct_flags},
    lb::{Backend4, Lb4Key, Lb4Service, RevNat4, SCOPE_EXTERNAL, SCOPE_INTERNAL, svc_flags},
    net::{Be16, Be32, proto},
};

use crate::{
    ct,
    maps::{
        STRAIT_LB4_AFFINITY_V2 as AFFINITY, STRAIT_LB4_BACKENDS_V2 as BACKENDS,
        STRAIT_LB4_REVNAT_V2 as REVNAT, STRAIT_LB4_SERVICES_V2 as SERVICES,
    },
    nat, nodeport,
    parse::Ipv4Flow,
};

/// Source address a backend sees when it reaches its own Service and is picked: a pod would drop a
/// packet arriving with its own address as source (martian), so hairpin flows are SNATed to this
/// link-local address, which no pod or node owns.
pub const HAIRPIN_ADDR: u32 = u32::from_ne_bytes([169, 254, 42, 1]);

pub enum Outcome {
    /// Not a service flow, or translated in place: continue.
    Pass,
    /// Translated, and must be sent back out of the interface it came from (hairpin).
    RedirectBack,
    /// A reply restored for a client outside the node: routed out directly (its source is now a node
    /// or service address, which the stack would refuse as input).
    ToNetwork,
    /// Service without usable endpoints: refuse the client.
    Reject,
    /// A LoadBalancer IP whose loadBalancerSourceRanges leave the client out: dropped, as kube-proxy.
    OutsideSourceRanges,
    Drop,
}

#[inline(always)]
pub fn service(addr: u32, port: u16, proto: u8, scope: u8, slot: u16) -> Option<&'static Lb4Service> {
    let key = Lb4Key {
        addr: Be32::from_raw(addr),
        port: Be16::from_raw(port),
        slot,
        proto,
        scope,
        _pad: [0; 2],
    };
    // SAFETY: read-only use of a map value.
    unsafe { SERVICES.get(&key) }
}

#[inline(always)]
fn backend(id: u32) -> Option<&'static Backend4> {
    // SAFETY: read-only use of a map value.
    unsafe { BACKENDS.get(&id) }
}

/// Packets a pod sends (tc ingress of its host veth).
#[inline(always)]
pub fn from_pod(ctx: &TcContext, flow: &mut Ipv4Flow) -> Outcome {
    if flow.later_fragment || !nat::has_ports(flow.proto) {
        return Outcome::Pass;
    }
    if flow.daddr == HAIRPIN_ADDR {
        return hairpin_reply(ctx, flow);
    }
    let forward = ct::key_of(flow);
    if let Some(entry) = ct::lookup(&forward) {
        if entry.flags & ct_flags::NODEPORT != 0 && entry.flags & ct_flags::REPLY != 0 {
            // A local backend answering a client outside the node: restored here, then routed out. With
            // DSR the frontend (on another node) is in the entry itself.
            let rev = if entry.flags & ct_flags::DSR != 0 && entry.flags & ct_flags::FRONTEND == 0 {
                RevNat4 {
                    addr: entry.orig_saddr,
                    port: entry.wire_port,
                    _pad: 0,
                }
            } else {
                match frontend_of(entry) {
                    Some(rev) => rev,
                    None => return Outcome::Drop,
                }
            };
            return match restore(ctx, flow, entry, &rev) {
                Ok(()) => Outcome::ToNetwork,
                Err(()) => Outcome::Drop,
            };
        }
        // UDP has no connection to keep: once its backend is gone it picks again below, at once,
        // instead of black-holing until the entry expires (kube-proxy's stale-UDP problem).
        if entry.flags & ct_flags::FORWARD != 0
            && (flow.proto != proto::UDP || backend(entry.backend_id).is_some())
        {
            let be = Backend4 {
                addr: entry.rewrite_addr,
                port: entry.rewrite_port,
                proto: flow.proto,
                flags: 0,
            };
            let snat_addr = if entry.flags & ct_flags::SNAT != 0 {
                HAIRPIN_ADDR
            } else {
                0
            };
            let wire_port = entry.wire_port.raw();
            ct::touch(entry, flow, 0);
            return translate(ctx, flow, &be, snat_addr, wire_port);
        }
    }
    let frontend = match lookup_frontend(flow.daddr, flow.dport, flow.proto) {
        Lookup::NotService => return Outcome::Pass,
        Lookup::Drop => return Outcome::Drop,
        Lookup::Found(f) => f,
    };
    let svc = frontend.svc;
    // kube-proxy's firewall chain judges pods reaching a LoadBalancer IP by their own address too.
    if svc.flags & svc_flags::SOURCE_RANGES != 0 && !nodeport::source_allowed(svc.rev_nat, flow.saddr) {
        return Outcome::OutsideSourceRanges;
    }
    if svc.count == 0 {
        return if svc.flags & svc_flags::REJECT != 0 {
            Outcome::Reject
        } else {
            Outcome::Drop
        };
    }
    let Some((backend_id, be)) = pick(flow.saddr, flow.daddr, flow.dport, flow.proto, &frontend) else {
        return Outcome::Drop;
    };
    let hairpin = be.addr.raw() == flow.saddr;
    let snat_addr = if hairpin { HAIRPIN_ADDR } else { 0 };
    let mut reply = CtKey4 {
        saddr: be.addr,
        daddr: Be32::from_raw(if hairpin { HAIRPIN_ADDR } else { flow.saddr }),
        sport: be.port,
        dport: Be16::from_raw(flow.sport),
        proto: flow.proto,
        _pad: 0,
        _pad2: 0,
    };
    // Nothing to avoid: the client's sockets are its own namespace's, and no socket has HAIRPIN_ADDR.
    let Some(wire_port) = ct::wire_port(&mut reply, svc.rev_nat, (0, 0)) else {
        return Outcome::Drop;
    };
    let translation = ct::Translation {
        backend_id,
        backend: be,
        rev_nat: svc.rev_nat,
        frontend_addr: flow.daddr,
        frontend_port: flow.dport,
        snat_from: if hairpin { flow.saddr } else { 0 },
        client_port: flow.sport,
        wire_port,
        extra_flags: 0,
    };
    if ct::create(&forward, &reply, &translation).is_err() {
        return Outcome::Drop;
    }
    translate(ctx, flow, be, snat_addr, wire_port)
}

/// DNAT to the backend; the source is rewritten too when the connection was hairpinned (`snat_addr`,
/// 0 for none) or its port reallocated after a clash (`wire_port` differs from the client's).
#[inline(always)]
fn translate(ctx: &TcContext, flow: &mut Ipv4Flow, be: &Backend4, snat_addr: u32, wire_port: u16) -> Outcome {
    let to = nat::Tuple {
        saddr: if snat_addr != 0 { snat_addr } else { flow.saddr },
        sport: wire_port,
        daddr: be.addr.raw(),
        dport: be.port.raw(),
    };
    if nat::rewrite(ctx, flow, &to).is_err() || nat::finish(ctx, flow).is_err() {
        return Outcome::Drop;
    }
    if snat_addr != 0 {
        return Outcome::RedirectBack;
    }
    Outcome::Pass
}

/// A service frontend: its slot-0 entry and the scope its backend slots live in.
pub struct Frontend {
    pub svc: &'static Lb4Service,
    pub scope: u8,
}

pub enum Lookup {
    NotService,
    Found(Frontend),
    /// The Service exists but this client may not use it (internalTrafficPolicy Local without a
    /// local endpoint): dropped, as kube-proxy does.
    Drop,
}

/// The frontend for (VIP, port, protocol), all raw network order. The internal scope (local
/// endpoints only) replaces the default one when the Service has it: clients here are inside the
/// cluster.
#[inline(always)]
pub fn lookup_frontend(addr: u32, port: u16, proto: u8) -> Lookup {
    let Some(svc) = service(addr, port, proto, SCOPE_EXTERNAL, 0) else {
        return Lookup::NotService;
    };
    if svc.flags & svc_flags::HAS_INTERNAL_SCOPE == 0 {
        return Lookup::Found(Frontend {
            svc,
            scope: SCOPE_EXTERNAL,
        });
    }
    match service(addr, port, proto, SCOPE_INTERNAL, 0) {
        Some(internal) => Lookup::Found(Frontend {
            svc: internal,
            scope: SCOPE_INTERNAL,
        }),
        None => Lookup::Drop,
    }
}

/// Backend choice: the client's previous backend under sessionAffinity, else a random slot.
#[inline(always)]
pub fn pick(
    client: u32,
    addr: u32,
    port: u16,
    proto: u8,
    frontend: &Frontend,
) -> Option<(u32, &'static Backend4)> {
    let svc = frontend.svc;
    let affinity_key = AffinityKey4 {
        rev_nat: svc.rev_nat,
        client: Be32::from_raw(client),
    };
    let now = ct::now();
    if svc.flags & svc_flags::AFFINITY != 0 {
        // SAFETY: read-only use of a map value.
        if let Some(prev) = unsafe { AFFINITY.get(&affinity_key) } {
            let fresh =
                now.saturating_sub(prev.last_used_ns) < u64::from(svc.affinity_timeout) * 1_000_000_000;
            if fresh && let Some(be) = backend(prev.backend_id) {
                let id = prev.backend_id;
                let value = AffinityValue {
                    backend_id: id,
                    _pad: 0,
                    last_used_ns: now,
                };
                let _ = AFFINITY.insert(&affinity_key, &value, 0);
                return Some((id, be));
            }
        }
    }
    // `count` is read once: the map value may change under us, and a zero must not reach the modulo.
    let count = u32::from(svc.count);
    // SAFETY: helper without preconditions.
    let slot = unsafe { bpf_get_prandom_u32() }.checked_rem(count)? as u16 + 1;
    let slot_entry = service(addr, port, proto, frontend.scope, slot)?;
    let id = slot_entry.backend_id;
    let be = backend(id)?;
    if svc.flags & svc_flags::AFFINITY != 0 {
        let value = AffinityValue {
            backend_id: id,
            _pad: 0,
            last_used_ns: now,
        };
        let _ = AFFINITY.insert(&affinity_key, &value, 0);
    }
    Some((id, be))
}

/// A hairpinned backend answering: restore VIP:port as source and the pod itself as destination, then
/// send it straight back into the pod.
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, flow: &mut Ipv4Flow) -> Outcome {
    let key = ct::key_of(flow);
    let Some(entry) = ct::lookup(&key) else {
        return Outcome::Drop;
    };
    if entry.flags & ct_flags::REPLY == 0 || entry.flags & ct_flags::SNAT == 0 {
        return Outcome::Drop;
    }
    let Some(rev) = frontend_of(entry) else {
        return Outcome::Drop;
    };
    match restore(ctx, flow, entry, &rev) {
        Ok(()) => Outcome::RedirectBack,
        Err(()) => Outcome::Drop,
    }
}

/// The frontend a reply entry restores: held in the entry itself, or, in entries written before it
/// was (see `ct_flags::FRONTEND`), found by the entry's rev-NAT id. `None`: an entry of neither kind
/// (policy's marker for an untranslated connection), or a rev-NAT id that is gone.
#[inline(always)]
pub fn frontend_of(entry: &CtEntry4) -> Option<RevNat4> {
    if entry.flags & ct_flags::FRONTEND != 0 {
        return Some(RevNat4 {
            addr: entry.rewrite_addr,
            port: entry.rewrite_port,
            _pad: 0,
        });
    }
    // SAFETY: read-only copy of a map value.
    unsafe { REVNAT.get(&entry.rev_nat) }.copied()
}

/// Reverse NAT of a reply: the source becomes the VIP:port the client connected to, the destination the
/// client as it sent (its own address again after SNAT, its own port again after a clash).
#[inline(always)]
fn restore(ctx: &TcContext, flow: &mut Ipv4Flow, entry: &mut CtEntry4, rev: &RevNat4) -> Result<(), ()> {
    let (client, client_port) = ct::reply_destination(entry, flow);
    ct::touch(entry, flow, ct_flags::SEEN_REPLY);
    let to = nat::Tuple {
        saddr: rev.addr.raw(),
        sport: rev.port.raw(),
        daddr: client,
        dport: client_port,
    };
    nat::rewrite(ctx, flow, &to)?;
    nat::finish(ctx, flow)
}

/// Packets delivered to a pod (tc egress of its host veth): replies of translated connections get
/// their source rewritten back to the VIP:port the client connected to. `own` is the packet's
/// conntrack entry (looked up once for policy and this).
#[inline(always)]
pub fn to_pod(ctx: &TcContext, flow: &mut Ipv4Flow, own: ct::Shared) -> Outcome {
    if flow.later_fragment || !nat::has_ports(flow.proto) {
        return Outcome::Pass;
    }
    let Some(entry) = own.entry() else {
        return Outcome::Pass;
    };
    // Hairpin and north-south replies are restored where they leave their backend instead.
    if entry.flags & ct_flags::REPLY == 0 || entry.flags & (ct_flags::SNAT | ct_flags::NODEPORT) != 0 {
        return Outcome::Pass;
    }
    // A reply entry without a frontend is policy's marker for an untranslated connection.
    let Some(rev) = frontend_of(entry) else {
        return Outcome::Pass;
    };
    match restore(ctx, flow, entry, &rev) {
        Ok(()) => Outcome::Pass,
        Err(()) => Outcome::Drop,
    }
}
