//! Service load-balancing maps (Cilium's slot layout, which we found the clearest):
//! - `LB4_SERVICES`: (VIP, port, proto, scope, slot) → service. Slot 0 is the frontend (backend count,
//!   rev-NAT id, flags); slots 1..=count hold backend ids, so picking a backend is one more lookup.
//! - `LB4_BACKENDS`: backend id → address, port, flags.
//! - `LB4_REVNAT`: rev-NAT id → the VIP:port replies must appear to come from. Reply conntrack entries
//!   hold their frontend themselves (`ct_flags::FRONTEND`); this map restores those written before.

use crate::net::{Be16, Be32};

/// `scope` of an `Lb4Key`: the lookup for traffic from outside the node (eTP) vs inside (iTP).
pub const SCOPE_EXTERNAL: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb4Key {
    pub addr: Be32,
    pub port: Be16,
    /// 0 = the frontend entry; 1..=count = backend slots.
    pub slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub _pad: [u8; 2],
}

/// Service flags (`Lb4Service::flags`).
pub mod svc_flags {
    /// sessionAffinity: ClientIP.
    pub const AFFINITY: u16 = 1 << 0;
    /// No usable endpoint: refuse the client (TCP RST / ICMP port unreachable) as kube-proxy's REJECT.
    pub const REJECT: u16 = 1 << 1;
    /// A second entry with `scope = SCOPE_INTERNAL` exists for the same (addr, port, proto): traffic that
    /// starts on this node (a local pod or the host) looks that one up instead. Used by NodePort /
    /// externalIP / LoadBalancer frontends with externalTrafficPolicy Local, whose node-local traffic
    /// is "short-circuited" to the cluster-wide endpoints as kube-proxy does. ClusterIP traffic is
    /// always internal, so a ClusterIP frontend has one entry whose backends already honour
    /// internalTrafficPolicy and topology. Set on both entries of the pair (with the same
    /// `rev_nat`), so that whichever was looked up says which scope its slots are under.
    pub const HAS_INTERNAL_SCOPE: u16 = 1 << 2;
    pub const NODEPORT: u16 = 1 << 3;
    pub const EXTERNAL_IP: u16 = 1 << 4;
    pub const LOADBALANCER: u16 = 1 << 5;
    /// The Service has usable endpoints elsewhere but none for this entry (a traffic policy of Local
    /// with no endpoint on this node): drop silently, as kube-proxy's DROP rule ("has no local
    /// endpoints"), instead of REJECT's refusal.
    pub const DROP: u16 = 1 << 6;
    /// externalTrafficPolicy Local: external clients reach only node-local backends and keep their
    /// source address (no SNAT).
    pub const EXT_POLICY_LOCAL: u16 = 1 << 7;
    /// loadBalancerSourceRanges: only sources in `LB4_SOURCE_RANGES` under this frontend's rev-NAT id
    /// are served; others are dropped, as kube-proxy's firewall chain does.
    pub const SOURCE_RANGES: u16 = 1 << 8;
}

/// Capacity of one Maglev table: the largest `--maglev-table-size` (a prime). Each external frontend's
/// table is one value of this size in `LB4_MAGLEV`, replaced whole, so a reader sees the old table or
/// the new one, never a mix; only the first `DatapathConfig::maglev_size` entries are used.
pub const MAGLEV_MAX: usize = 16_381;

/// One frontend's Maglev table: backend ids, indexed by flow hash modulo the table size.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MaglevTable {
    pub backend_ids: [u32; MAGLEV_MAX],
}

/// Frontends with a Maglev table; hash map without preallocation, so only used tables cost memory
/// (64 KiB each).
pub const MAX_MAGLEV_TABLES: u32 = 65_536;

/// `LB4_SOURCE_RANGES` LPM key data: the frontend's rev-NAT id (always matched whole) and the client
/// source address. The LPM prefix length is 32 + the range's prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRangeKey4 {
    pub rev_nat: u32,
    pub saddr: Be32,
}

pub const MAX_SOURCE_RANGES: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4Service {
    /// In a backend slot: the backend id. In the frontend (slot 0): unused.
    pub backend_id: u32,
    /// Frontend: number of backend slots.
    pub count: u16,
    pub flags: u16,
    /// Frontend: rev-NAT id, so replies are rewritten back to this VIP:port. 32 bits: one id per
    /// (VIP, port, protocol), and a cluster may have more than 65,535 of those.
    pub rev_nat: u32,
    /// sessionAffinity timeout in seconds (0 = no affinity).
    pub affinity_timeout: u32,
}

/// Backend flags (`Backend4::flags`).
pub mod backend_flags {
    /// The backend runs on this node.
    pub const LOCAL: u8 = 1 << 0;
    /// Serving but terminating: used only when no ready backend exists (KEP-1669).
    pub const TERMINATING: u8 = 1 << 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend4 {
    pub addr: Be32,
    pub port: Be16,
    pub proto: u8,
    pub flags: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNat4 {
    pub addr: Be32,
    pub port: Be16,
    pub _pad: u16,
}

/// Capacities sized for 100k frontends with 3 backends each (a frontend takes 1 + backends entries).
/// These hash maps are created without preallocation, so the caps cost memory only when filled.
pub const MAX_SERVICE_ENTRIES: u32 = 524_288;
pub const MAX_BACKENDS: u32 = 524_288;
pub const MAX_REVNAT: u32 = 262_144;

const _: () = assert!(core::mem::size_of::<Lb4Key>() == 12);
const _: () = assert!(core::mem::size_of::<Lb4Service>() == 16);
const _: () = assert!(core::mem::size_of::<Backend4>() == 8);
const _: () = assert!(core::mem::size_of::<RevNat4>() == 8);
const _: () = assert!(core::mem::size_of::<MaglevTable>() == 4 * MAGLEV_MAX);
const _: () = assert!(core::mem::size_of::<SourceRangeKey4>() == 8);

#[cfg(feature = "user")]
mod pod_impls {
    #![allow(
        unsafe_code,
        reason = "aya::Pod for repr(C) types whose padding is spelled out"
    )]
    use super::*;
    unsafe impl aya::Pod for Lb4Key {}
    unsafe impl aya::Pod for Lb4Service {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for RevNat4 {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for SourceRangeKey4 {}
}
