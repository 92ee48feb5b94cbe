//! Where a dump reads maps from: the loaded object (the daemon's own handles), or the pins under a
//! bpffs root, opened anew — so a thread of its own can read the maps while the daemon writes them
//! (see `crate::resync_dumper`).

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use aya::maps::{Map, MapData};

use super::{Datapath, batch};

pub trait MapSource {
    fn map(&self, name: &str) -> Result<&Map>;
}

impl MapSource for Datapath {
    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map {name} missing from the object"))
    }
}

impl Datapath {
    /// The loaded object's map `name`, for writing.
    pub(crate) fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the object"))
    }
}

/// Maps opened from their pins (`ROOT/NAME`), each a handle of its own.
pub struct PinnedMaps {
    maps: BTreeMap<String, Map>,
}

impl PinnedMaps {
    pub fn open(root: &Path, names: &[&str]) -> Result<Self> {
        let mut maps = BTreeMap::new();
        for name in names {
            let path = root.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned map {}", path.display()))?;
            let map = Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))?;
            maps.insert((*name).to_owned(), map);
        }
        Ok(Self { maps })
    }
}

impl MapSource for PinnedMaps {
    fn map(&self, name: &str) -> Result<&Map> {
        self.maps
            .get(name)
            .with_context(|| format!("map {name} was not opened"))
    }
}

/// Every entry of the hash map `name` of `src` (at most about `limit`), read in batches where the kernel
/// can (a resync reads ~220k entries at 10k Services: two bpf(2) calls each, walked one by one).
pub fn hash_entries<K: aya::Pod + Default, V: aya::Pod + Default>(
    src: &dyn MapSource,
    name: &str,
    limit: u32,
) -> Result<Vec<(K, V)>> {
    let map = src.map(name)?;
    if let Some(all) = batch::read_hash(map, limit as usize).with_context(|| format!("reading map {name}"))? {
        return Ok(all);
    }
    aya::maps::HashMap::<&MapData, K, V>::try_from(map)
        .with_context(|| format!("map {name} has an unexpected type"))?
        .iter()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading map {name}"))
}

/// A delete of a key that is not there counts as done: the key may be gone already (a resync's dump
/// older than the last pass, or a write behind the agent's back). aya reports it as KeyNotFound or as
/// ENOENT from the syscall, depending on the map type.
pub fn absent_ok(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}
