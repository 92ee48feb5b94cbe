//! A pure model of the datapath's policy decision over the compiled maps: exactly the lookups the tc
//! programs do (see `common::policy`), with LPM tries matched bit by bit on the keys' byte layout. It is
//! the executable spec of the kernel side, and the conformance tests check it against `explain`.

use std::net::Ipv4Addr;

use common::net::Be32;
use common::policy::{
    DIR_EGRESS, DIR_INGRESS, IpCacheKey4, IpCacheValue4, PolicyEndpointKey4, PolicyEntry, PolicyKey,
    endpoint_flags, identity,
};

use crate::compile::PolicyDesired;

/// The decision of one direction on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimStep {
    /// The pod on that side is not a local endpoint: another node (or nobody) decides.
    NotLocal,
    NotIsolated,
    /// Ingress from the node itself.
    HostAllowed,
    /// A policy entry matched: the allowing policy/rule and the peer id it matched on.
    Allowed {
        entry: PolicyEntry,
        peer_id: u32,
    },
    /// Isolated and no entry matched.
    Denied {
        endpoint_id: u32,
    },
}

impl SimStep {
    pub fn is_denied(self) -> bool {
        matches!(self, SimStep::Denied { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimVerdict {
    pub egress: SimStep,
    pub ingress: SimStep,
}

impl SimVerdict {
    pub fn allowed(self) -> bool {
        !self.egress.is_denied() && !self.ingress.is_denied()
    }
}

/// The policy verdict of this node's maps for a packet `src → dst` (dst after DNAT) with IP protocol
/// `proto` and destination port `port` (0 for protocols without ports).
pub fn simulate(d: &PolicyDesired, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> SimVerdict {
    let s = ipcache_lookup(d, src);
    let t = ipcache_lookup(d, dst);
    let egress = match endpoint(d, src) {
        None => SimStep::NotLocal,
        Some(ep) if ep.flags & endpoint_flags::EGRESS_ISOLATED == 0 => SimStep::NotIsolated,
        Some(ep) => policy_lookup(d, ep.endpoint_id, DIR_EGRESS, t, proto, port),
    };
    let ingress = match endpoint(d, dst) {
        None => SimStep::NotLocal,
        Some(ep) if ep.flags & endpoint_flags::INGRESS_ISOLATED == 0 => SimStep::NotIsolated,
        Some(_) if s.identity == identity::HOST => SimStep::HostAllowed,
        Some(ep) => policy_lookup(d, ep.endpoint_id, DIR_INGRESS, s, proto, port),
    };
    SimVerdict { egress, ingress }
}

fn endpoint(d: &PolicyDesired, ip: Ipv4Addr) -> Option<common::policy::PolicyEndpoint4> {
    d.endpoints
        .get(&PolicyEndpointKey4 {
            addr: Be32::from_octets(ip.octets()),
        })
        .copied()
}

/// `IPCACHE4` longest-prefix lookup; a miss is `{WORLD, 0}`.
pub fn ipcache_lookup(d: &PolicyDesired, ip: Ipv4Addr) -> IpCacheValue4 {
    let want = ip.octets();
    d.ipcache
        .iter()
        .filter(|(k, _)| prefix_eq(&k.addr.octets(), &want, k.prefix_len))
        .max_by_key(|(k, _)| k.prefix_len)
        .map_or(
            IpCacheValue4 {
                identity: identity::WORLD,
                cidr_class: 0,
            },
            |(_, v)| *v,
        )
}

/// Three lookups, in the order the datapath does them: the peer's identity, its CIDR class, any peer.
fn policy_lookup(d: &PolicyDesired, ep: u32, dir: u8, peer: IpCacheValue4, proto: u8, port: u16) -> SimStep {
    let mut peers = vec![peer.identity];
    if peer.cidr_class != 0 {
        peers.push(peer.cidr_class);
    }
    peers.push(identity::PEER_ANY);
    for peer_id in peers {
        if let Some(entry) = lpm(d, &PolicyKey::lookup(ep, dir, peer_id, proto, port)) {
            return SimStep::Allowed { entry, peer_id };
        }
    }
    SimStep::Denied { endpoint_id: ep }
}

/// The bytes of a `PolicyKey` after `prefix_len`, as they lie in memory (what the kernel trie compares).
pub fn policy_key_data(k: &PolicyKey) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&k.endpoint_id.to_ne_bytes());
    b[4..8].copy_from_slice(&k.peer_id.to_ne_bytes());
    b[8] = k.direction;
    b[9] = k.proto;
    b[10..12].copy_from_slice(&k.port.raw().to_ne_bytes());
    b
}

fn lpm(d: &PolicyDesired, key: &PolicyKey) -> Option<PolicyEntry> {
    let want = policy_key_data(key);
    d.policy
        .iter()
        .filter(|(k, _)| prefix_eq(&policy_key_data(k), &want, k.prefix_len))
        .max_by_key(|(k, _)| k.prefix_len)
        .map(|(_, v)| *v)
}

/// Are the first `bits` bits (most significant bit of byte 0 first) equal?
pub fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let bits = usize::try_from(bits).unwrap_or(usize::MAX).min(a.len() * 8);
    let (full, rest) = (bits / 8, bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

/// True when every key's bits past its prefix are zero (the kernel would merge keys that differ only
/// there, so the compiler must not produce them).
pub fn keys_are_canonical(d: &PolicyDesired) -> bool {
    let policy_ok = d.policy.keys().all(|k| {
        let data = policy_key_data(k);
        data == masked(&data, k.prefix_len)
    });
    let ipcache_ok = d.ipcache.keys().all(|k: &IpCacheKey4| {
        let data = k.addr.octets();
        k.prefix_len <= 32 && data == masked(&data, k.prefix_len)
    });
    policy_ok && ipcache_ok
}

fn masked<const N: usize>(data: &[u8; N], bits: u32) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, byte) in data.iter().enumerate() {
        let start = u32::try_from(i * 8).unwrap_or(u32::MAX);
        if bits >= start + 8 {
            out[i] = *byte;
        } else if bits > start {
            out[i] = byte & (0xffu8 << (8 - (bits - start)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_compare() {
        assert!(prefix_eq(&[0b1010_0000], &[0b1011_1111], 3));
        assert!(!prefix_eq(&[0b1010_0000], &[0b1011_1111], 4));
        assert!(prefix_eq(&[1, 2, 3], &[1, 2, 4], 16));
        assert!(!prefix_eq(&[1, 2, 3], &[1, 2, 4], 24));
        assert!(prefix_eq(&[9], &[7], 0));
        assert_eq!(masked(&[0xff, 0xff], 12), [0xff, 0xf0]);
    }
}
