//! Connection tracking for translated flows.
//!
//! Two entries per service connection, both keyed by a tuple exactly as it appears on the wire:
//! - forward: client → VIP (before DNAT), value names the chosen backend, so an open connection keeps it;
//! - reply: backend → client (after DNAT), value names the rev-NAT id, so the reply's source is
//!   rewritten back to VIP:port.
//!
//! Policy uses the same table: a connection a policy allowed gets an entry for its forward tuple
//! (after DNAT) marked EGRESS_OK / INGRESS_OK, and one for its reply tuple marked REPLY, so the answer
//! passes without a rule of its own (stateful). A service's reply entry doubles as that marker.
//!
//! Field names say what they hold in the direction the key describes; nothing is "reversed".

use crate::net::{Be16, Be32};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtKey4 {
    pub saddr: Be32,
    pub daddr: Be32,
    pub sport: Be16,
    pub dport: Be16,
    pub proto: u8,
    /// Padding, zero. A byte and a half-word rather than `[u8; 3]`: the BPF backend zeroes an odd
    /// three-byte array with a call to `memset`, which every key built on the packet path paid.
    pub _pad: u8,
    pub _pad2: u16,
}

pub mod ct_flags {
    /// Entry for the client → VIP direction.
    pub const FORWARD: u16 = 1 << 0;
    /// Entry for the backend → client direction.
    pub const REPLY: u16 = 1 << 1;
    /// TCP: a FIN was seen (the sweeper expires such entries quickly).
    pub const SEEN_FIN: u16 = 1 << 2;
    /// TCP: a RST was seen.
    pub const SEEN_RST: u16 = 1 << 3;
    /// The reply direction has carried a packet (TCP: the connection was answered).
    pub const SEEN_REPLY: u16 = 1 << 4;
    /// The client's source was rewritten (hairpin: a backend reaching its own Service).
    pub const SNAT: u16 = 1 << 5;
    /// Policy: the source pod's egress policy allowed this connection (entry keyed post-DNAT).
    pub const EGRESS_OK: u16 = 1 << 6;
    /// Policy: the destination pod's ingress policy allowed this connection.
    pub const INGRESS_OK: u16 = 1 << 7;
    /// The client's source port was rewritten (`client_port` → `wire_port`) because the reply tuple it
    /// would have had was already taken by another translated connection: the same client port reaching
    /// one backend through two VIPs (or a VIP and a NodePort). netfilter resolves such clashes the same
    /// way, by picking another source port. External traffic SNATed to the node also moves when its port
    /// is in the node's ephemeral range (`DatapathConfig::local_port_min`).
    pub const PORT_SNAT: u16 = 1 << 8;
    /// North-south: a connection from outside the node to a NodePort, externalIP or LoadBalancer IP,
    /// translated on the node's device (XDP, or tc where XDP cannot finish). Its replies are rewritten
    /// where they arrive: on the node's device from a backend elsewhere, or leaving a local backend's veth.
    /// With SNAT (externalTrafficPolicy Cluster) `orig_saddr` holds the external client's address.
    pub const NODEPORT: u16 = 1 << 9;
    /// North-south in direct server return: the backend's answer goes from its own node straight to the
    /// client. On the entry node both entries carry it (the reply entry only ever sees a reply if the
    /// route changes, so `SEEN_REPLY` stays clear); on the backend's node the reply entry (backend →
    /// client) carries it, with the frontend the client addressed in `orig_saddr` and `wire_port`.
    pub const DSR: u16 = 1 << 10;
    /// A reply entry that holds its frontend in `rewrite_addr` / `rewrite_port`. Reply entries written
    /// by a datapath older than this flag hold the backend there, and are restored through the rev-NAT
    /// map by their `rev_nat` id instead (both ways stay readable, so an upgrade keeps open connections).
    pub const FRONTEND: u16 = 1 << 11;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry4 {
    pub backend_id: u32,
    pub rev_nat: u32,
    /// bpf_ktime_get_ns() of the last packet; the userspace sweeper expires by protocol and state.
    pub last_seen_ns: u64,
    /// Where this direction is translated to. A forward entry: the backend chosen (the new
    /// destination). Kept in the entry (not only its id) so a TCP or SCTP connection stays with its
    /// backend while that pod lives, even after the endpoint left the Service (not ready, removed from
    /// the slice) — as kube-proxy's conntrack does. UDP flows instead re-balance once the backend id is
    /// gone, so a deleted backend does not black-hole them. A reply entry with `FRONTEND`: the frontend
    /// (VIP:port, node IP:NodePort) the client addressed, the answers' new source; kept here for the same
    /// reason, and so restoring a reply costs no rev-NAT lookup.
    pub rewrite_addr: Be32,
    pub rewrite_port: Be16,
    pub flags: u16,
    /// With SNAT: the client's own address, which its source was rewritten from (hairpin: the backend
    /// itself; north-south: the external client). A DSR reply entry on the backend's node: the frontend
    /// address the reply must leave from.
    pub orig_saddr: Be32,
    /// The client's source port as the client sent it, and as it leaves this node (they differ only
    /// with PORT_SNAT). Both entries of a connection carry both, so each direction can restore the other.
    /// A DSR reply entry on the backend's node: `wire_port` is the frontend port the reply leaves from.
    pub client_port: Be16,
    pub wire_port: Be16,
}

pub const MAX_CT_ENTRIES: u32 = 262_144;

const _: () = assert!(core::mem::size_of::<CtKey4>() == 16);
const _: () = assert!(core::mem::size_of::<CtEntry4>() == 32);

#[cfg(feature = "user")]
mod pod_impls {
    #![allow(
        unsafe_code,
        reason = "aya::Pod for repr(C) types whose padding is spelled out"
    )]
    use super::*;
    unsafe impl aya::Pod for CtKey4 {}
    unsafe impl aya::Pod for CtEntry4 {}
}

/// Ports below this are never chosen for a rewritten source port: a privileged source port can mean
/// something to a server.
pub const NAT_PORT_MIN: u16 = 1024;

/// Unprivileged ports a rewritten source port may take: 1024–65535.
const NAT_PORTS: u32 = 65_536 - NAT_PORT_MIN as u32;

/// The part of `avoid_min..=avoid_max` (host order; `avoid_min` 0: none) that rewritten source ports keep
/// out of, as its first port and length (length 0: nothing avoided). Clipped to the unprivileged ports;
/// a range that would leave no port is ignored rather than leave the connection without one.
#[inline(always)]
fn avoided(avoid_min: u16, avoid_max: u16) -> (u32, u32) {
    let lo = if avoid_min < NAT_PORT_MIN {
        NAT_PORT_MIN
    } else {
        avoid_min
    } as u32;
    let hi = avoid_max as u32;
    let len = if avoid_min == 0 || hi < lo { 0 } else { hi - lo + 1 };
    (lo, if len >= NAT_PORTS { 0 } else { len })
}

/// Whether `port` (host order) is one [`nat_port`] keeps out of.
#[inline(always)]
pub fn is_avoided(port: u16, avoid_min: u16, avoid_max: u16) -> bool {
    let (lo, len) = avoided(avoid_min, avoid_max);
    let port = port as u32;
    len != 0 && lo <= port && port < lo + len
}

/// How many ports [`nat_port`] picks from with this range avoided.
pub fn nat_port_count(avoid_min: u16, avoid_max: u16) -> u32 {
    NAT_PORTS - avoided(avoid_min, avoid_max).1
}

/// The unprivileged port number `r` picks (uniformly, modulo the count) among those outside the avoided
/// range (see [`avoided`]).
#[inline(always)]
pub fn nat_port(r: u32, avoid_min: u16, avoid_max: u16) -> u16 {
    let (lo, len) = avoided(avoid_min, avoid_max);
    let port = NAT_PORT_MIN as u32 + r % (NAT_PORTS - len);
    let port = if len != 0 && port >= lo { port + len } else { port };
    port as u16
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeSet;

    use super::*;

    /// Every `r` over one period of the modulus, as the ports it gives.
    fn ports(avoid_min: u16, avoid_max: u16, period: u32) -> std::vec::Vec<u16> {
        (0..period).map(|r| nat_port(r, avoid_min, avoid_max)).collect()
    }

    #[test]
    fn without_a_range_every_unprivileged_port_is_picked_once_per_period() {
        let got = ports(0, 0, 64_512);
        assert_eq!((got[0], got[64_511]), (1024, 65_535));
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 64_512);
        assert_eq!(nat_port(64_512, 0, 0), 1024, "the period wraps");
    }

    #[test]
    fn the_ephemeral_range_is_never_picked_and_every_other_port_is() {
        // Linux's default net.ipv4.ip_local_port_range.
        let allowed = 64_512 - (60_999 - 32_768 + 1);
        let got = ports(32_768, 60_999, allowed);
        assert!(got.iter().all(|p| *p >= 1024 && !(32_768..=60_999).contains(p)));
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), allowed as usize);
        assert_eq!((got[32_767 - 1024], got[32_768 - 1024]), (32_767, 61_000));
        assert_eq!(*got.last().unwrap(), 65_535);
        assert_eq!(nat_port(allowed, 32_768, 60_999), 1024, "the period wraps");
        assert_eq!(
            nat_port(u32::MAX, 32_768, 60_999),
            got[(u32::MAX % allowed) as usize]
        );
    }

    #[test]
    fn a_range_reaching_below_1024_or_covering_everything_is_clipped_or_ignored() {
        let got = ports(1, 2000, 64_512 - 977);
        assert!(got.iter().all(|p| *p > 2000));
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 64_512 - 977);
        assert_eq!(ports(1024, 65_535, 64_512), ports(0, 0, 64_512));
        assert_eq!(
            ports(40_000, 30_000, 64_512),
            ports(0, 0, 64_512),
            "an empty range"
        );
    }

    #[test]
    fn is_avoided_and_the_count_agree_with_the_picks() {
        let ranges = [
            (0, 0),
            (32_768, 60_999),
            (1, 2000),
            (1024, 65_535),
            (40_000, 30_000),
            (65_535, 65_535),
        ];
        for (lo, hi) in ranges {
            let count = nat_port_count(lo, hi);
            let picked: BTreeSet<u16> = ports(lo, hi, count).into_iter().collect();
            assert_eq!(picked.len() as u32, count, "{lo}-{hi}");
            for port in 1024..=u16::MAX {
                assert_eq!(
                    is_avoided(port, lo, hi),
                    !picked.contains(&port),
                    "{lo}-{hi}: {port}"
                );
            }
        }
    }
}
