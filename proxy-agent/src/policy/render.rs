//! A stable text dump of the policy maps as they are in the kernel (golden tests, debugging):
//!
//! ```text
//! NAME 1 x/allow-b
//! IPCACHE 10.1.0.1/32 identity=256 class=0x0
//! EP 10.1.0.1 id=1 identity=256 flags=ingress-isolated
//! POLICY ep=1 ingress peer=257 TCP 80 -> ref=1 rule=0
//! ```
//!
//! Unlike the compiler's dump (`PolicyDesired`'s Display), this one needs no table: it shows raw numbers,
//! exactly what a dump of the pinned maps holds.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use common::policy::{
    DIR_INGRESS, IpCacheKey4, IpCacheValue4, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO,
    POLICY_PREFIX_FULL, PolicyEndpoint4, PolicyEndpointKey4, PolicyEntry, PolicyKey, endpoint_flags,
    identity,
};
use policy::Protocol;

use super::PolicyMapsState;

pub fn flags_text(flags: u32) -> String {
    let mut names = Vec::new();
    if flags & endpoint_flags::INGRESS_ISOLATED != 0 {
        names.push("ingress-isolated".to_owned());
    }
    if flags & endpoint_flags::EGRESS_ISOLATED != 0 {
        names.push("egress-isolated".to_owned());
    }
    let unknown = flags & !(endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED);
    if unknown != 0 {
        names.push(format!("{unknown:#x}"));
    }
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    }
}

pub fn peer_text(peer: u32) -> String {
    match peer {
        identity::PEER_ANY => "any".into(),
        identity::HOST => "host".into(),
        identity::WORLD => "world".into(),
        p if identity::is_cidr_class(p) => format!("{p:#x}"),
        p => p.to_string(),
    }
}

/// `ep=1 ingress peer=257 TCP 80-95` (protocol and port `any` when wildcarded).
pub fn policy_key_text(k: &PolicyKey) -> String {
    let dir = if k.direction == DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    };
    let proto = match (k.prefix_len, Protocol::from_number(k.proto)) {
        (p, _) if p <= POLICY_PREFIX_ANY_PROTO => "any".to_owned(),
        (_, Some(p)) => p.to_string(),
        (_, None) => format!("proto{}", k.proto),
    };
    let port = if k.prefix_len <= POLICY_PREFIX_ANY_PORT {
        "any".to_owned()
    } else {
        let size = 1u32 << (POLICY_PREFIX_FULL - k.prefix_len.min(POLICY_PREFIX_FULL));
        let lo = u32::from(k.port.get());
        if size == 1 {
            lo.to_string()
        } else {
            format!("{lo}-{}", lo + size - 1)
        }
    };
    format!(
        "ep={} {dir} peer={} {proto} {port}",
        k.endpoint_id,
        peer_text(k.peer_id)
    )
}

pub fn policy_line(k: &PolicyKey, v: &PolicyEntry) -> String {
    format!(
        "POLICY {} -> ref={} rule={}",
        policy_key_text(k),
        v.policy_ref,
        v.rule_index
    )
}

pub fn ipcache_key_text(k: &IpCacheKey4) -> String {
    format!("{}/{}", Ipv4Addr::from(k.addr.octets()), k.prefix_len)
}

pub fn ipcache_line(k: &IpCacheKey4, v: &IpCacheValue4) -> String {
    format!(
        "IPCACHE {} identity={} class={:#x}",
        ipcache_key_text(k),
        peer_text(v.identity),
        v.cidr_class
    )
}

pub fn endpoint_line(k: &PolicyEndpointKey4, v: &PolicyEndpoint4) -> String {
    format!(
        "EP {} id={} identity={} flags={}",
        Ipv4Addr::from(k.addr.octets()),
        v.endpoint_id,
        v.identity,
        flags_text(v.flags)
    )
}

pub fn name_line(r: u16, name: &str) -> String {
    format!("NAME {r} {name}")
}

/// The whole dump, one entry a line: names, ipcache (by address, then prefix length), endpoints (by
/// address), policy entries (by endpoint, direction, peer, protocol, port).
pub fn render(m: &PolicyMapsState) -> String {
    let mut out = String::new();
    for (r, name) in &m.names {
        let _ = writeln!(out, "{}", name_line(*r, name));
    }
    let mut ipcache: Vec<_> = m.ipcache.iter().collect();
    ipcache.sort_by_key(|(k, _)| (k.addr.get(), k.prefix_len));
    for (k, v) in ipcache {
        let _ = writeln!(out, "{}", ipcache_line(k, v));
    }
    let mut eps: Vec<_> = m.endpoints.iter().collect();
    eps.sort_by_key(|(k, _)| k.addr.get());
    for (k, v) in eps {
        let _ = writeln!(out, "{}", endpoint_line(k, v));
    }
    let mut entries: Vec<_> = m.policy.iter().collect();
    entries.sort_by_key(|(k, _)| k.listing_order());
    for (k, v) in entries {
        let _ = writeln!(out, "{}", policy_line(k, v));
    }
    out
}
