//! Data shapes shared by the kernel programs (`proxy-ebpf`) and the agent (`proxy-agent`).
//!
//! Everything here is `#[repr(C)]`, padding is spelled out as named fields, and each type's size is
//! asserted at compile time so both sides agree on the layout of every map.
#![no_std]
#![deny(unsafe_code)]

pub mod affinity;
pub mod bench;
pub mod config;
pub mod csum;
pub mod ct;
pub mod dsr;
pub mod event;
pub mod iface;
pub mod lb;
pub mod net;
pub mod policy;
pub mod sock;
pub mod stats;

/// Project name; also the directory under the BPF filesystem where maps are pinned.
pub const PROJECT: &str = "strait";

/// Names of the maps as they appear in the object file and under the pin directory.
/// A layout change gets a new suffix so an old pinned map is never read with the new layout.
pub mod map_names {
    pub const PROG_STATS: &str = "STRAIT_PROG_STATS_V1";
    pub const LB4_SERVICES: &str = "STRAIT_LB4_SERVICES_V2";
    pub const LB4_BACKENDS: &str = "STRAIT_LB4_BACKENDS_V2";
    pub const LB4_REVNAT: &str = "STRAIT_LB4_REVNAT_V2";
    pub const CT4: &str = "STRAIT_CT4_V2";
    pub const LB4_AFFINITY: &str = "STRAIT_LB4_AFFINITY_V2";
    pub const EVENTS: &str = "STRAIT_EVENTS_V2";
    pub const DROP_STATS: &str = "STRAIT_DROP_STATS_V1";
    pub const POLICY_STATS: &str = "STRAIT_POLICY_STATS_V1";
    pub const SOCK_REVNAT4: &str = "STRAIT_SOCK_REVNAT4_V2";
    pub const CONFIG: &str = "STRAIT_CONFIG_V2";
    pub const IFACES: &str = "STRAIT_IFACES_V1";
    pub const IFACES_DIRECT: &str = "STRAIT_IFACES_DIRECT_V1";
    pub const LB4_MAGLEV: &str = "STRAIT_LB4_MAGLEV_V1";
    pub const LB4_SOURCE_RANGES: &str = "STRAIT_LB4_SOURCE_RANGES_V1";
    /// Pins an older datapath left that no current map reads: the agent removes them at start, so an
    /// upgrade does not keep their kernel memory until `cleanup` (programs that still use one keep it
    /// until they are replaced; a pin's removal never takes a map away from its users).
    /// `STRAIT_EVENTS_V1`: the 1 MiB events ring, now 256 KiB under V2.
    pub const RETIRED: &[&str] = &["STRAIT_EVENTS_V1"];
    pub use crate::policy::{
        map_names::{IPCACHE4, POLICY, POLICY_ENDPOINTS4, POLICY_STATE},
        policy_map_names::POLICY_NAMES,
    };
}

/// Names of the programs in the object file.
pub mod prog_names {
    pub const TC_FROM_POD: &str = "tc_from_pod";
    pub const TC_TO_POD: &str = "tc_to_pod";
    pub const XDP_NODE: &str = "xdp_node";
    pub const TC_FROM_NODE: &str = "tc_from_node";
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
}
