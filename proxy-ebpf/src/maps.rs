//! Every map of the datapath, in one place. Names carry a layout version (see `common::map_names`).
//! Maps are pinned by name so they outlive the agent process (restart and upgrade keep their contents).
use aya_ebpf::{macros::map, maps::PerCpuArray};
use common::stats::{ProgStats, STAT_SLOTS};

#[map]
pub static STRAIT_PROG_STATS_V1: PerCpuArray<ProgStats> = PerCpuArray::pinned(STAT_SLOTS, 0);
