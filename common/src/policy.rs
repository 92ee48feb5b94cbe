//! NetworkPolicy maps. The compiler (`policy` crate) fills them; the tc programs read them.
//!
//! - `IPCACHE4` (LPM trie): IPv4 prefix → `{identity, cidr_class}`. Every pod IP has a /32 entry with the
//!   pod's label-set identity; every prefix named in an `ipBlock` (cidr or except) has an entry with
//!   identity `WORLD` and its own CIDR class. A pod /32 also carries the class of the longest declared
//!   prefix containing it, so ONE longest-prefix lookup gives a peer both its identity and its CIDR class
//!   (this is what keeps `ipBlock` with `except` exact while still matching pod IPs). A miss means
//!   `{WORLD, 0}`.
//! - `POLICY_ENDPOINTS4` (hash): local pod IP → endpoint id, identity, isolation flags.
//! - `POLICY` (LPM trie): (endpoint, direction, peer, proto, port prefix) → the allowing policy/rule.
//!   Endpoint, peer and direction are always fully specified; the port is a prefix (so `endPort`
//!   ranges are a few entries) and the protocol is wildcarded only together with the port.
//!
//! Lookup the datapath performs for a packet src → dst (after DNAT), proto, dst port:
//! 1. `s = IPCACHE4[src]`, `d = IPCACHE4[dst]` (miss → identity `WORLD`, class 0).
//! 2. Egress, if `src` is a local endpoint with `EGRESS_ISOLATED`: allowed iff one of
//!    `POLICY[(ep, EGRESS, p, proto, port)]` hits for `p` in `d.identity`, `d.cidr_class` (if non-zero),
//!    `PEER_ANY`, in that order (the first hit names the rule).
//! 3. Ingress, if `dst` is a local endpoint with `INGRESS_ISOLATED`: allowed if `s.identity == HOST`
//!    (kubelet probes), else iff one of the three lookups with `s` hits.
//! 4. A flow is allowed when neither step denied it (a non-isolated or non-local side does not filter).

use crate::net::{Be16, Be32};

/// Map names (pinned under the project directory). A layout change gets a new suffix.
pub mod map_names {
    pub const POLICY: &str = "STRAIT_POLICY_V1";
    pub const IPCACHE4: &str = "STRAIT_IPCACHE4_V1";
    pub const POLICY_ENDPOINTS4: &str = "STRAIT_POLICY_EP4_V1";
    pub const POLICY_STATE: &str = "STRAIT_POLICY_STATE_V1";
}

/// Flags of the policy state map (one `u32`, index 0), written by the agent's policy reconciler.
pub mod policy_state {
    /// No endpoint on this node is isolated in either direction, so policy has nothing to decide and
    /// the programs skip the endpoint lookup (a hash lookup per packet, each way). Set only after the
    /// last isolation is gone from the endpoints map, and cleared before the first one is written; a
    /// new map holds 0, so a datapath whose agent has not written it yet enforces as before.
    pub const NONE_ISOLATED: u32 = 1 << 0;
}

pub const MAX_POLICY_ENTRIES: u32 = 262_144;
pub const MAX_IPCACHE_ENTRIES: u32 = 131_072;
pub const MAX_POLICY_ENDPOINTS: u32 = 4_096;

/// Reserved identities. Pod identities start at `FIRST_POD_IDENTITY` and stay below `MAX_IDENTITY`.
pub mod identity {
    /// Not an identity (and, as a policy peer, `PEER_ANY`).
    pub const NONE: u32 = 0;
    /// The node itself (its addresses). Always allowed into the node's local pods.
    pub const HOST: u32 = 1;
    /// An address that is no pod and not the local node.
    pub const WORLD: u32 = 2;
    pub const FIRST_POD_IDENTITY: u32 = 256;
    /// Exclusive upper bound of identities; CIDR classes live above it.
    pub const MAX_IDENTITY: u32 = 1 << 24;
    /// CIDR class ids are `CIDR_CLASS_BASE | n` (n ≥ 1); class 0 = no declared prefix matches.
    pub const CIDR_CLASS_BASE: u32 = 1 << 24;
    /// `PolicyKey::peer_id` of an entry that allows any peer.
    pub const PEER_ANY: u32 = 0;

    pub const fn is_cidr_class(id: u32) -> bool {
        id >= CIDR_CLASS_BASE
    }
}

/// `PolicyKey::direction`.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Prefix lengths of `PolicyKey` (bits after the `prefix_len` header): endpoint, peer and direction
/// (72 bits) are always specified; 80 = also the protocol (any port); 96 = exact port.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
pub const POLICY_PREFIX_FULL: u32 = 96;

/// Policy LPM key. Field order is the bit order of the prefix: the port is last and in network order so
/// that a port prefix is a numeric range. `endpoint_id`/`peer_id` are host order: they are never
/// partially masked, so their byte order does not matter to the trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub prefix_len: u32,
    pub endpoint_id: u32,
    /// A pod identity, a CIDR class, or `PEER_ANY`.
    pub peer_id: u32,
    pub direction: u8,
    /// IP protocol number; 0 in an any-protocol entry (prefix 72).
    pub proto: u8,
    pub port: Be16,
}

impl PolicyKey {
    /// The key the datapath looks up: everything specified.
    pub const fn lookup(endpoint_id: u32, direction: u8, peer_id: u32, proto: u8, port: u16) -> Self {
        Self {
            prefix_len: POLICY_PREFIX_FULL,
            endpoint_id,
            peer_id,
            direction,
            proto,
            port: Be16::new(port),
        }
    }
}

/// `PolicyEntry::flags` (reserved: all entries allow today).
pub mod entry_flags {
    pub const NONE: u16 = 0;
}

/// What a `PolicyKey` hit means: which policy (index into the agent's policy table) and which rule of
/// that policy allowed the packet, so a verdict can be explained.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    pub policy_ref: u16,
    pub rule_index: u16,
    pub flags: u16,
    pub _pad: u16,
}

/// `IPCACHE4` key (LPM trie): `prefix_len` 0..=32, then the address in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpCacheKey4 {
    pub prefix_len: u32,
    pub addr: Be32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpCacheValue4 {
    /// Pod identity, `HOST`, or `WORLD`.
    pub identity: u32,
    /// CIDR class of the longest declared `ipBlock` prefix containing the entry (0 = none).
    pub cidr_class: u32,
}

/// `POLICY_ENDPOINTS4` key: a local pod's IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEndpointKey4 {
    pub addr: Be32,
}

/// `PolicyEndpoint4::flags`.
pub mod endpoint_flags {
    /// Some policy selecting the pod lists Ingress: default deny for ingress.
    pub const INGRESS_ISOLATED: u32 = 1 << 0;
    /// Some policy selecting the pod lists Egress: default deny for egress.
    pub const EGRESS_ISOLATED: u32 = 1 << 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEndpoint4 {
    pub endpoint_id: u32,
    pub identity: u32,
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<PolicyKey>() == 16);
const _: () = assert!(core::mem::size_of::<PolicyEntry>() == 8);
const _: () = assert!(core::mem::size_of::<IpCacheKey4>() == 8);
const _: () = assert!(core::mem::size_of::<IpCacheValue4>() == 8);
const _: () = assert!(core::mem::size_of::<PolicyEndpointKey4>() == 4);
const _: () = assert!(core::mem::size_of::<PolicyEndpoint4>() == 12);
// The prefix covers exactly the bytes after the header.
const _: () = assert!((core::mem::size_of::<PolicyKey>() as u32 - 4) * 8 == POLICY_PREFIX_FULL);

#[cfg(feature = "user")]
mod pod_impls {
    #![allow(
        unsafe_code,
        reason = "aya::Pod for repr(C) types whose padding is spelled out"
    )]
    use super::*;
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyEntry {}
    unsafe impl aya::Pod for IpCacheKey4 {}
    unsafe impl aya::Pod for IpCacheValue4 {}
    unsafe impl aya::Pod for PolicyEndpointKey4 {}
    unsafe impl aya::Pod for PolicyEndpoint4 {}
}

/// The bytes after `prefix_len` in a [`PolicyKey`]: LPM maps are declared with this as their key data
/// (aya's `Key<[u32; 3]>` has exactly the layout of `PolicyKey`). Words rather than `[u8; 12]`: the
/// BPF backend built the byte array with calls to `memset` and a store per byte, on every policy
/// lookup of a packet into an isolated pod.
pub type PolicyKeyData = [u32; 3];

impl PolicyKey {
    /// The order entries are listed in dumps and tables: by endpoint, direction, peer, protocol and
    /// port (host order), then prefix length.
    pub fn listing_order(&self) -> (u32, u8, u32, u8, u16, u32) {
        (
            self.endpoint_id,
            self.direction,
            self.peer_id,
            self.proto,
            self.port.get(),
            self.prefix_len,
        )
    }

    pub fn data(&self) -> PolicyKeyData {
        let port = self.port.raw().to_ne_bytes();
        [
            self.endpoint_id,
            self.peer_id,
            u32::from_ne_bytes([self.direction, self.proto, port[0], port[1]]),
        ]
    }

    pub fn from_data(prefix_len: u32, d: &PolicyKeyData) -> Self {
        let last = d[2].to_ne_bytes();
        Self {
            prefix_len,
            endpoint_id: d[0],
            peer_id: d[1],
            direction: last[0],
            proto: last[1],
            port: Be16::from_raw(u16::from_ne_bytes([last[2], last[3]])),
        }
    }
}

/// Names of the policies a [`PolicyEntry::policy_ref`] points at, kept in the datapath (an array map
/// indexed by `policy_ref`) so flow records can be named by any reader, and ids restored at restart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyName {
    pub len: u16,
    pub _pad: u16,
    /// `namespace/name`, UTF-8, `len` bytes used.
    pub name: [u8; 252],
}

impl Default for PolicyName {
    fn default() -> Self {
        Self {
            len: 0,
            _pad: 0,
            name: [0; 252],
        }
    }
}

pub const MAX_POLICIES: u32 = 4_096;

pub mod policy_map_names {
    pub const POLICY_NAMES: &str = "STRAIT_POLICY_NAMES_V1";
}

const _: () = assert!(core::mem::size_of::<PolicyName>() == 256);

#[cfg(feature = "user")]
mod name_pod_impl {
    #![allow(
        unsafe_code,
        reason = "aya::Pod for a repr(C) type whose padding is spelled out"
    )]
    unsafe impl aya::Pod for super::PolicyName {}
}

#[cfg(test)]
mod key_data_tests {
    use super::*;

    #[test]
    fn key_data_round_trips() {
        let k = PolicyKey::lookup(7, DIR_EGRESS, 300, 6, 8080);
        assert_eq!(PolicyKey::from_data(k.prefix_len, &k.data()), k);
    }

    #[test]
    fn key_data_is_laid_out_as_the_key_after_its_prefix_length() {
        // The LPM trie matches these bytes in memory order: endpoint, peer, direction, protocol, port.
        let k = PolicyKey::lookup(0x0102_0304, DIR_INGRESS, 0x0a0b_0c0d, 17, 0x1f90);
        let bytes: [u8; 12] = {
            let mut b = [0u8; 12];
            for (i, w) in k.data().iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            b
        };
        let mut want = [0u8; 12];
        want[..4].copy_from_slice(&0x0102_0304u32.to_ne_bytes());
        want[4..8].copy_from_slice(&0x0a0b_0c0du32.to_ne_bytes());
        want[8] = DIR_INGRESS;
        want[9] = 17;
        want[10..].copy_from_slice(&0x1f90u16.to_be_bytes());
        assert_eq!(bytes, want);
    }
}
