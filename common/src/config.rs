//! Datapath settings the agent writes at start (one array map, index 0), so a restart with other
//! flags changes behaviour without reloading programs.

pub mod config_flags {
    /// `--policy-established=keep`: a connection a policy once allowed stays allowed when the policy
    /// changes. Default (flag clear) is `revoke`: every packet of the forward direction is checked.
    pub const KEEP_ESTABLISHED: u32 = 1 << 0;
    /// `--nodeport-mode=dsr`: external traffic (externalTrafficPolicy Cluster) for a backend on another
    /// node keeps the client's address and carries the frontend to the backend's node in an IPv4 option
    /// (`common::dsr`); the backend's node answers the client directly. Clear: SNAT to this node.
    pub const NODEPORT_DSR: u32 = 1 << 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    pub flags: u32,
    /// Entries used in each Maglev table (`--maglev-table-size`, ≤ `lb::MAGLEV_MAX`); 0 until the agent
    /// has written it, and then external traffic picks at random like internal traffic.
    pub maglev_size: u32,
    /// The node's address, network order: the source external traffic is SNATed to when its backend is
    /// elsewhere (externalTrafficPolicy Cluster), whichever node address or service IP it arrived on.
    pub node_addr: u32,
    /// The node's ephemeral port range (`net.ipv4.ip_local_port_range`, host order; both 0: unknown).
    /// External traffic SNATed to `node_addr` never leaves from a port in it: the node's own sockets
    /// take their ports from there, unseen by conntrack here, and a backend's answer to such a socket
    /// would otherwise match an SNAT entry and be reverse-translated to an outside client.
    pub local_port_min: u16,
    pub local_port_max: u16,
}

const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 16);

#[cfg(feature = "user")]
mod pod_impls {
    #![allow(
        unsafe_code,
        reason = "aya::Pod for a repr(C) type whose padding is spelled out"
    )]
    unsafe impl aya::Pod for super::DatapathConfig {}
}
