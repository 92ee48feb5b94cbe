//! Per-program packet counters, summed over CPUs.

use anyhow::{Context, Result};
use aya::maps::PerCpuArray;
use common::{
    map_names,
    stats::{EVENTS_LOST_SLOT, ProgStats, StatIndex},
};
use serde::Serialize;

use super::{Datapath, MapSource};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Datapath {
    fn prog_stats(&self) -> Result<PerCpuArray<&aya::maps::MapData, ProgStats>> {
        let map = self.map(map_names::PROG_STATS)?;
        Ok(PerCpuArray::try_from(map)?)
    }

    /// Flow records the events ring had no room for, summed over CPUs.
    pub fn flow_records_lost(&self) -> Result<u64> {
        let per_cpu = self
            .prog_stats()?
            .get(&EVENTS_LOST_SLOT, 0)
            .context("reading the lost flow records counter")?;
        Ok(per_cpu.iter().fold(0u64, |acc, s| acc.wrapping_add(s.packets)))
    }

    /// `(program name, counter)` for each attach point.
    pub fn counters(&self) -> Result<Vec<(&'static str, Counter)>> {
        let array = self.prog_stats()?;
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
