//! NetworkPolicy enforcement on a pod's host veth, exactly the lookup `policy::simulate` specifies:
//! the peer's identity and CIDR class from the ipcache, then up to three LPM lookups in the policy map
//! (identity, CIDR class, any peer). Stateful through conntrack: a connection a policy allowed gets a
//! reply entry, so its answers need no rule of their own. Applied to the post-DNAT destination.

use aya_ebpf::maps::lpm_trie::Key;
use common::{
    config::config_flags,
    ct::{CtEntry4, CtKey4, ct_flags},
    event::{DropReason, direction, verdict},
    net::{Be32, proto},
    policy::{
        DIR_EGRESS, DIR_INGRESS, IpCacheValue4, PolicyEndpoint4, PolicyEndpointKey4, PolicyKey,
        endpoint_flags, identity, policy_state,
    },
};

use crate::{
    ct,
    events::{self, Context},
    maps::{
        STRAIT_CONFIG_V2 as CONFIG, STRAIT_CT4_V2 as CT4, STRAIT_IPCACHE4_V1 as IPCACHE,
        STRAIT_POLICY_EP4_V1 as ENDPOINTS, STRAIT_POLICY_STATE_V1 as STATE, STRAIT_POLICY_V1 as POLICY,
    },
    parse::Ipv4Flow,
};

const BPF_NOEXIST: u64 = 1;

enum Decision {
    Allowed { policy_ref: u16, rule_index: u16 },
    Denied,
}

/// Whether no endpoint on this node is isolated (`policy_state::NONE_ISOLATED`): then policy decides
/// nothing and the endpoint lookup is skipped.
#[inline(always)]
fn none_isolated() -> bool {
    match STATE.get(0) {
        Some(flags) => *flags & policy_state::NONE_ISOLATED != 0,
        None => false,
    }
}

#[inline(always)]
pub fn endpoint_of(addr: u32) -> Option<PolicyEndpoint4> {
    // SAFETY: read-only copy of a map value.
    unsafe {
        ENDPOINTS
            .get(&PolicyEndpointKey4 {
                addr: Be32::from_raw(addr),
            })
            .copied()
    }
}

#[inline(always)]
fn peer_of(addr: u32) -> IpCacheValue4 {
    let key = Key::new(32, Be32::from_raw(addr));
    match IPCACHE.get(&key) {
        Some(v) => *v,
        None => IpCacheValue4 {
            identity: identity::WORLD,
            cidr_class: 0,
        },
    }
}

#[inline(always)]
fn keep_established() -> bool {
    match CONFIG.get(0) {
        Some(c) => c.flags & config_flags::KEEP_ESTABLISHED != 0,
        None => false,
    }
}

#[inline(always)]
fn lookup(endpoint_id: u32, dir: u8, peer: u32, proto: u8, port: u16) -> Option<(u16, u16)> {
    let k = PolicyKey::lookup(endpoint_id, dir, peer, proto, port);
    let key = Key::new(k.prefix_len, k.data());
    POLICY.get(&key).map(|e| (e.policy_ref, e.rule_index))
}

#[inline(always)]
fn decide(ep: &PolicyEndpoint4, dir: u8, peer: &IpCacheValue4, proto: u8, port: u16) -> Decision {
    if dir == DIR_INGRESS && peer.identity == identity::HOST {
        // The node itself (kubelet probes) always reaches its pods.
        return Decision::Allowed {
            policy_ref: 0,
            rule_index: 0,
        };
    }
    if let Some((policy_ref, rule_index)) = lookup(ep.endpoint_id, dir, peer.identity, proto, port) {
        return Decision::Allowed {
            policy_ref,
            rule_index,
        };
    }
    if peer.cidr_class != 0
        && let Some((policy_ref, rule_index)) = lookup(ep.endpoint_id, dir, peer.cidr_class, proto, port)
    {
        return Decision::Allowed {
            policy_ref,
            rule_index,
        };
    }
    if let Some((policy_ref, rule_index)) = lookup(ep.endpoint_id, dir, identity::PEER_ANY, proto, port) {
        return Decision::Allowed {
            policy_ref,
            rule_index,
        };
    }
    Decision::Denied
}

#[inline(always)]
fn policy_port(flow: &Ipv4Flow) -> u16 {
    match flow.proto {
        proto::TCP | proto::UDP | proto::SCTP => u16::from_be(flow.dport),
        _ => 0,
    }
}

#[inline(always)]
fn reversed(key: &CtKey4) -> CtKey4 {
    CtKey4 {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        proto: key.proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// Marks a connection allowed in `flag`'s direction and makes sure its replies are recognised. Only
/// the first packet pays for the inserts; later ones just refresh the entry.
#[inline(always)]
fn track(key: &CtKey4, existing: Option<&'static mut CtEntry4>, flag: u16, flow: &Ipv4Flow) {
    match existing {
        Some(e) if e.flags & flag != 0 => {
            ct::touch(e, flow, 0);
            return;
        }
        Some(e) => ct::touch(e, flow, flag),
        None => {
            let entry = CtEntry4 {
                flags: flag,
                last_seen_ns: ct::now(),
                ..Default::default()
            };
            let _ = CT4.insert(key, &entry, 0);
        }
    }
    // A service's reply entry (with its rev-NAT id) may already be there: never overwrite it.
    let reply = CtEntry4 {
        flags: ct_flags::REPLY,
        last_seen_ns: ct::now(),
        ..Default::default()
    };
    let _ = CT4.insert(&reversed(key), &reply, BPF_NOEXIST);
}

/// Policy for one side of a flow. `ep` is the local pod on this side: the source for `FROM_POD`
/// (egress policy), the destination for `TO_POD` (ingress policy).
#[inline(always)]
fn enforce(
    flow: &Ipv4Flow,
    cx: &Context,
    ep: &PolicyEndpoint4,
    shared: Option<ct::Shared>,
) -> Result<(), DropReason> {
    let (dir, isolated_flag, ok_flag, peer_addr, deny_reason) = if cx.direction == direction::FROM_POD {
        (
            DIR_EGRESS,
            endpoint_flags::EGRESS_ISOLATED,
            ct_flags::EGRESS_OK,
            flow.daddr,
            DropReason::PolicyEgress,
        )
    } else {
        (
            DIR_INGRESS,
            endpoint_flags::INGRESS_ISOLATED,
            ct_flags::INGRESS_OK,
            flow.saddr,
            DropReason::PolicyIngress,
        )
    };
    if ep.flags & (endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED) == 0 {
        // Neither direction isolated: nothing to decide, no state to keep.
        return Ok(());
    }
    let isolated = ep.flags & isolated_flag != 0;
    if flow.later_fragment {
        // No ports to judge by: an isolated pod never lets a fragment decide for itself.
        return if isolated {
            Err(DropReason::Fragment)
        } else {
            Ok(())
        };
    }
    let key = ct::key_of(flow);
    let entry = match shared {
        Some(shared) => shared.entry(),
        None => ct::lookup(&key),
    };
    if let Some(e) = &entry {
        if e.flags & ct_flags::REPLY != 0 {
            return Ok(()); // the answer of a connection accepted earlier
        }
        if e.flags & ok_flag != 0 && (!isolated || keep_established()) {
            return Ok(());
        }
    }
    let is_new = entry.as_ref().is_none_or(|e| e.flags & ok_flag == 0);
    if !isolated {
        track(&key, entry, ok_flag, flow);
        return Ok(());
    }
    match decide(ep, dir, &peer_of(peer_addr), flow.proto, policy_port(flow)) {
        Decision::Allowed {
            policy_ref,
            rule_index,
        } => {
            track(&key, entry, ok_flag, flow);
            if is_new {
                events::count_policy_allow(policy_ref);
                events::report(
                    flow,
                    cx,
                    verdict::FORWARDED,
                    DropReason::None,
                    policy_ref,
                    rule_index,
                    ep.endpoint_id,
                );
            }
            Ok(())
        }
        Decision::Denied => {
            events::report(flow, cx, verdict::DROPPED, deny_reason, 0, 0, ep.endpoint_id);
            Err(deny_reason)
        }
    }
}

/// Egress policy of the sending pod (tc ingress of its veth), after service translation.
#[inline(always)]
pub fn from_pod(flow: &Ipv4Flow, cx: &Context) -> Result<(), DropReason> {
    if none_isolated() {
        return Ok(());
    }
    match endpoint_of(flow.saddr) {
        Some(ep) => enforce(flow, cx, &ep, None),
        None => Ok(()),
    }
}

/// Ingress policy of the receiving pod (tc egress of its veth). `own` is the packet's conntrack entry,
/// which the reverse NAT after this reads too. A connection this admits gets its entry inserted
/// here, unseen by `own`: that entry is never a reply entry, the only kind reverse NAT acts on.
#[inline(always)]
pub fn to_pod(flow: &Ipv4Flow, cx: &Context, own: ct::Shared) -> Result<(), DropReason> {
    if none_isolated() {
        return Ok(());
    }
    match endpoint_of(flow.daddr) {
        Some(ep) => enforce(flow, cx, &ep, Some(own)),
        None => Ok(()),
    }
}

/// A packet whose headers cannot be read, on the veth of the pod at `pod_addr` (0: unknown): dropped when that pod
/// is isolated in `dir` (it must not bypass policy), passed otherwise (the stack will judge it).
#[inline(always)]
pub fn unreadable_allowed(pod_addr: u32, from_pod: bool) -> bool {
    if pod_addr == 0 || none_isolated() {
        return true;
    }
    let Some(ep) = endpoint_of(pod_addr) else {
        return true;
    };
    let flag = if from_pod {
        endpoint_flags::EGRESS_ISOLATED
    } else {
        endpoint_flags::INGRESS_ISOLATED
    };
    ep.flags & flag == 0
}
