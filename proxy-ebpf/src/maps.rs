//! Every map of the datapath, in one place. Names carry a layout version (see `common::map_names`).
//! Maps are pinned by name so they outlive the agent process (restart and upgrade keep their contents).
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use common::{
    affinity::{AffinityKey4, AffinityValue, MAX_AFFINITY_ENTRIES},
    ct::{CtEntry4, CtKey4, MAX_CT_ENTRIES},
    lb::{Backend4, Lb4Key, Lb4Service, MAX_BACKENDS, MAX_REVNAT, MAX_SERVICE_ENTRIES, RevNat4},
    stats::{ProgStats, STAT_SLOTS},
};

#[map]
pub static STRAIT_PROG_STATS_V1: PerCpuArray<ProgStats> = PerCpuArray::pinned(STAT_SLOTS, 0);

#[map]
pub static STRAIT_LB4_SERVICES_V1: HashMap<Lb4Key, Lb4Service> = HashMap::pinned(MAX_SERVICE_ENTRIES, 0);

#[map]
pub static STRAIT_LB4_BACKENDS_V1: HashMap<u32, Backend4> = HashMap::pinned(MAX_BACKENDS, 0);

#[map]
pub static STRAIT_LB4_REVNAT_V1: HashMap<u16, RevNat4> = HashMap::pinned(MAX_REVNAT, 0);

#[map]
pub static STRAIT_LB4_AFFINITY_V1: LruHashMap<AffinityKey4, AffinityValue> =
    LruHashMap::pinned(MAX_AFFINITY_ENTRIES, 0);

#[map]
pub static STRAIT_CT4_V1: LruHashMap<CtKey4, CtEntry4> = LruHashMap::pinned(MAX_CT_ENTRIES, 0);
