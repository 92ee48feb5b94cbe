//! Every map of the datapath, in one place. Names carry a layout version (see `common::map_names`).
//! Maps are pinned by name so they outlive the agent process (restart and upgrade keep their contents).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use common::{
    affinity::{AffinityKey4, AffinityValue, MAX_AFFINITY_ENTRIES},
    config::DatapathConfig,
    ct::{CtEntry4, CtKey4, MAX_CT_ENTRIES},
    event::{DROP_REASON_SLOTS, EVENTS_RING_BYTES},
    iface::DIRECT_SLOTS,
    lb::{
        Backend4, Lb4Key, Lb4Service, MAX_BACKENDS, MAX_MAGLEV_TABLES, MAX_REVNAT, MAX_SERVICE_ENTRIES,
        MAX_SOURCE_RANGES, MaglevTable, RevNat4, SourceRangeKey4,
    },
    net::Be32,
    policy::{
        IpCacheValue4, MAX_IPCACHE_ENTRIES, MAX_POLICIES, MAX_POLICY_ENDPOINTS, MAX_POLICY_ENTRIES,
        PolicyEndpoint4, PolicyEndpointKey4, PolicyEntry, PolicyKeyData, PolicyName,
    },
    sock::{MAX_SOCK_REVNAT, SockRevNatKey4, SockRevNatValue4},
    stats::{ProgStats, STAT_SLOTS},
};

/// BPF_F_NO_PREALLOC: LPM tries require it; the service maps use it so their capacity (sized for 100k
/// frontends) costs kernel memory only as entries are added.
const NO_PREALLOC: u32 = 1;

#[map]
pub static STRAIT_PROG_STATS_V1: PerCpuArray<ProgStats> = PerCpuArray::pinned(STAT_SLOTS, 0);

#[map]
pub static STRAIT_LB4_SERVICES_V2: HashMap<Lb4Key, Lb4Service> =
    HashMap::pinned(MAX_SERVICE_ENTRIES, NO_PREALLOC);

#[map]
pub static STRAIT_LB4_BACKENDS_V2: HashMap<u32, Backend4> = HashMap::pinned(MAX_BACKENDS, NO_PREALLOC);

#[map]
pub static STRAIT_LB4_REVNAT_V2: HashMap<u32, RevNat4> = HashMap::pinned(MAX_REVNAT, NO_PREALLOC);

#[map]
pub static STRAIT_LB4_AFFINITY_V2: LruHashMap<AffinityKey4, AffinityValue> =
    LruHashMap::pinned(MAX_AFFINITY_ENTRIES, 0);

#[map]
pub static STRAIT_CT4_V2: LruHashMap<CtKey4, CtEntry4> = LruHashMap::pinned(MAX_CT_ENTRIES, 0);

/// Socket-level reverse NAT for host-network UDP clients: (socket cookie, backend) → VIP.
#[map]
pub static STRAIT_SOCK_REVNAT4_V2: LruHashMap<SockRevNatKey4, SockRevNatValue4> =
    LruHashMap::pinned(MAX_SOCK_REVNAT, 0);

#[map]
pub static STRAIT_POLICY_V1: LpmTrie<PolicyKeyData, PolicyEntry> =
    LpmTrie::pinned(MAX_POLICY_ENTRIES, NO_PREALLOC);

#[map]
pub static STRAIT_IPCACHE4_V1: LpmTrie<Be32, IpCacheValue4> =
    LpmTrie::pinned(MAX_IPCACHE_ENTRIES, NO_PREALLOC);

#[map]
pub static STRAIT_POLICY_EP4_V1: HashMap<PolicyEndpointKey4, PolicyEndpoint4> =
    HashMap::pinned(MAX_POLICY_ENDPOINTS, 0);

/// `common::policy::policy_state` flags (index 0).
#[map]
pub static STRAIT_POLICY_STATE_V1: Array<u32> = Array::pinned(1, 0);

#[map]
pub static STRAIT_POLICY_NAMES_V1: Array<PolicyName> = Array::pinned(MAX_POLICIES, 0);

/// New connections let through by each policy, per CPU (index: `policy_ref`).
#[map]
pub static STRAIT_POLICY_STATS_V1: PerCpuArray<u64> = PerCpuArray::pinned(MAX_POLICIES, 0);

/// Drops by reason, per CPU (index: `DropReason`).
#[map]
pub static STRAIT_DROP_STATS_V1: PerCpuArray<u64> = PerCpuArray::pinned(DROP_REASON_SLOTS, 0);

/// Flow records for `proxy-agent flows`: drops and new connections.
#[map]
pub static STRAIT_EVENTS_V2: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

/// Settings written by the agent (index 0).
#[map]
pub static STRAIT_CONFIG_V2: Array<DatapathConfig> = Array::pinned(1, 0);

/// Host-side veth ifindex → the address of the pod behind it (see `common::iface`): ifindexes below
/// `DIRECT_SLOTS` in the array, indexed by the ifindex itself (0: no pod), larger ones in the hash map.
#[map]
pub static STRAIT_IFACES_DIRECT_V1: Array<Be32> = Array::pinned(DIRECT_SLOTS, 0);

#[map]
pub static STRAIT_IFACES_V1: HashMap<u32, Be32> = HashMap::pinned(MAX_POLICY_ENDPOINTS, 0);

/// rev-NAT id of an external frontend → its Maglev table (see `common::lb::MaglevTable`).
#[map]
pub static STRAIT_LB4_MAGLEV_V1: HashMap<u32, MaglevTable> = HashMap::pinned(MAX_MAGLEV_TABLES, NO_PREALLOC);

/// loadBalancerSourceRanges: (rev-NAT id, source prefix) → 1.
#[map]
pub static STRAIT_LB4_SOURCE_RANGES_V1: LpmTrie<SourceRangeKey4, u8> =
    LpmTrie::pinned(MAX_SOURCE_RANGES, NO_PREALLOC);

/// The forwarding benchmark's frame and run flag (`common::bench`). Not pinned: only the benchmark
/// writes it; the agent's copy stays empty and no attached program reads it.
#[map]
pub static BENCH_FRAME: Array<common::bench::FrameSlot> = Array::with_max_entries(1, 0);
