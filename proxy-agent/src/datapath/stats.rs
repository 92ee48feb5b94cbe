//! Per-program packet counters, summed over CPUs.

use anyhow::{Context, Result};
use aya::maps::PerCpuArray;
use common::{
    map_names,
    stats::{ProgStats, StatIndex},
};
use serde::Serialize;

use super::Datapath;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Datapath {
    /// `(program name, counter)` for each attach point.
    pub fn counters(&self) -> Result<Vec<(&'static str, Counter)>> {
        let map = self
            .ebpf
            .map(map_names::PROG_STATS)
            .with_context(|| format!("map {} missing from the object", map_names::PROG_STATS))?;
        let array: PerCpuArray<_, ProgStats> = PerCpuArray::try_from(map)?;
        StatIndex::ALL
            .iter()
            .map(|&index| {
                let per_cpu = array
                    .get(&(index as u32), 0)
                    .with_context(|| format!("reading counter {}", index.name()))?;
                let sum = per_cpu.iter().fold(Counter::default(), |acc, s| Counter {
                    packets: acc.packets + s.packets,
                    bytes: acc.bytes + s.bytes,
                });
                Ok((index.name(), sum))
            })
            .collect()
    }
}
