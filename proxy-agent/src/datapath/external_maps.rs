//! The Maglev and source-range maps of the loaded datapath, behind [`ExternalMaps`].

use anyhow::{Context, Result};
use aya::maps::{
    HashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use common::{
    lb::{MAGLEV_MAX, MaglevTable, SourceRangeKey4},
    map_names,
    net::Be32,
};
use policy::net::Ipv4Net;

use super::{Datapath, MapSource};
use crate::{
    lb::maglev::TableSize,
    reconcile::external::{ExternalMaps, ExternalState, fingerprint},
};

pub struct AyaExternalMaps<'a> {
    datapath: &'a mut Datapath,
}

impl Datapath {
    pub fn external_maps(&mut self) -> AyaExternalMaps<'_> {
        AyaExternalMaps { datapath: self }
    }
}

fn range_key(rev_nat: u32, net: Ipv4Net) -> Key<SourceRangeKey4> {
    Key::new(
        32 + u32::from(net.prefix_len()),
        SourceRangeKey4 {
            rev_nat,
            saddr: Be32::from_octets(net.addr().octets()),
        },
    )
}

impl AyaExternalMaps<'_> {
    fn maglev(&mut self) -> Result<HashMap<&mut MapData, u32, MaglevTable>> {
        let map = self.datapath.map_mut(map_names::LB4_MAGLEV)?;
        HashMap::try_from(map)
            .with_context(|| format!("map {} has an unexpected type", map_names::LB4_MAGLEV))
    }

    fn ranges(&mut self) -> Result<LpmTrie<&mut MapData, SourceRangeKey4, u8>> {
        let map = self.datapath.map_mut(map_names::LB4_SOURCE_RANGES)?;
        LpmTrie::try_from(map)
            .with_context(|| format!("map {} has an unexpected type", map_names::LB4_SOURCE_RANGES))
    }
}

impl ExternalMaps for AyaExternalMaps<'_> {
    fn dump(&self, size: TableSize) -> Result<ExternalState> {
        let mut out = ExternalState::default();
        let used = (size.get() as usize).min(MAGLEV_MAX);
        let map = self.datapath.map(map_names::LB4_MAGLEV)?;
        let tables: HashMap<&MapData, u32, MaglevTable> = HashMap::try_from(map)?;
        for key in tables.keys() {
            let rev_nat = key.context("reading the Maglev map")?;
            // Tables are 64 KiB each: read one at a time, keep only the fingerprint.
            let table = tables.get(&rev_nat, 0).context("reading a Maglev table")?;
            out.maglev
                .insert(rev_nat, fingerprint(&table.backend_ids[..used]));
        }
        let map = self.datapath.map(map_names::LB4_SOURCE_RANGES)?;
        let trie: LpmTrie<&MapData, SourceRangeKey4, u8> = LpmTrie::try_from(map)?;
        for key in trie.keys() {
            let key = key.context("reading the source-range map")?;
            let data = key.data();
            let len = key.prefix_len().saturating_sub(32).min(32) as u8;
            let addr = std::net::Ipv4Addr::from(data.saddr.get());
            out.source_ranges.insert((data.rev_nat, Ipv4Net::new(addr, len)));
        }
        Ok(out)
    }

    fn put_maglev(&mut self, rev_nat: u32, backend_ids: &[u32]) -> Result<()> {
        let mut table = Box::new(MaglevTable {
            backend_ids: [0; MAGLEV_MAX],
        });
        let n = backend_ids.len().min(MAGLEV_MAX);
        table.backend_ids[..n].copy_from_slice(&backend_ids[..n]);
        self.maglev()?
            .insert(rev_nat, *table, 0)
            .with_context(|| format!("writing the Maglev table of rev-NAT id {rev_nat}"))
    }

    fn delete_maglev(&mut self, rev_nat: u32) -> Result<()> {
        match self.maglev()?.remove(&rev_nat) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting the Maglev table of rev-NAT id {rev_nat}")),
        }
    }

    fn put_source_range(&mut self, rev_nat: u32, net: Ipv4Net) -> Result<()> {
        self.ranges()?
            .insert(&range_key(rev_nat, net), 1, 0)
            .with_context(|| format!("writing source range {net} of rev-NAT id {rev_nat}"))
    }

    fn delete_source_range(&mut self, rev_nat: u32, net: Ipv4Net) -> Result<()> {
        match self.ranges()?.remove(&range_key(rev_nat, net)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting source range {net} of rev-NAT id {rev_nat}")),
        }
    }
}
