//! Per-program packet counters: a per-CPU array indexed by [`StatIndex`].

/// Which attach point a counter belongs to. The value is the index into the stats map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatIndex {
    /// tc ingress on a pod's host-side veth: packets the pod sent.
    FromPod = 0,
    /// tc egress on a pod's host-side veth: packets delivered to the pod.
    ToPod = 1,
    /// XDP on a node device: packets arriving at the node from its network.
    XdpNode = 2,
    /// tc ingress on a node device: what XDP passed on (north-south traffic it could not finish).
    FromNode = 3,
}

impl StatIndex {
    pub const ALL: [StatIndex; 4] = [
        StatIndex::FromPod,
        StatIndex::ToPod,
        StatIndex::XdpNode,
        StatIndex::FromNode,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            StatIndex::FromPod => "tc_from_pod",
            StatIndex::ToPod => "tc_to_pod",
            StatIndex::XdpNode => "xdp_node",
            StatIndex::FromNode => "tc_from_node",
        }
    }
}

/// Number of slots in the stats map.
pub const STAT_SLOTS: u32 = 8;

/// The stats map's slot counting flow records the events ring had no room for (in `packets`): the
/// packet itself is never affected, but `proxy-agent flows` misses those records.
pub const EVENTS_LOST_SLOT: u32 = 4;

/// One counter slot (per CPU in the kernel; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<ProgStats>() == 16);

#[cfg(feature = "user")]
#[allow(unsafe_code, reason = "ProgStats is repr(C) with no padding")]
unsafe impl aya::Pod for ProgStats {}
