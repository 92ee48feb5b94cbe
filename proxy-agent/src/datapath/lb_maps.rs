//! The load-balancing maps of the loaded datapath, behind the reconciler's [`LbMaps`] trait.

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use common::{
    lb::{Backend4, Lb4Key, Lb4Service, MAX_BACKENDS, MAX_REVNAT, MAX_SERVICE_ENTRIES, RevNat4},
    map_names,
};

use super::{Datapath, MapSource, map_source::hash_entries};
use crate::reconcile::{DesiredMaps, LbMaps, MapOp};

pub struct AyaLbMaps<'a> {
    datapath: &'a mut Datapath,
}

impl Datapath {
    pub fn lb_maps(&mut self) -> AyaLbMaps<'_> {
        AyaLbMaps { datapath: self }
    }
}

fn hash_mut<'m, K: aya::Pod, V: aya::Pod>(
    dp: &'m mut Datapath,
    name: &str,
) -> Result<HashMap<&'m mut MapData, K, V>> {
    let map = dp
        .ebpf
        .map_mut(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    HashMap::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// The load-balancing maps' contents, read from `src` (the loaded object, or pins).
pub fn dump(src: &dyn MapSource) -> Result<DesiredMaps> {
    // Collected, not inserted one by one: a map built from an iterator sorts its entries and fills its
    // nodes in order, and the resync's diff walks it several times faster than one built in hash order.
    Ok(DesiredMaps {
        services: hash_entries::<Lb4Key, Lb4Service>(src, map_names::LB4_SERVICES, MAX_SERVICE_ENTRIES)?
            .into_iter()
            .collect(),
        backends: hash_entries::<u32, Backend4>(src, map_names::LB4_BACKENDS, MAX_BACKENDS)?
            .into_iter()
            .collect(),
        revnat: hash_entries::<u32, RevNat4>(src, map_names::LB4_REVNAT, MAX_REVNAT)?
            .into_iter()
            .collect(),
    })
}

/// The maps [`dump`] reads.
pub const DUMPED: [&str; 3] = [
    map_names::LB4_SERVICES,
    map_names::LB4_BACKENDS,
    map_names::LB4_REVNAT,
];

impl LbMaps for AyaLbMaps<'_> {
    fn dump(&self) -> Result<DesiredMaps> {
        dump(&*self.datapath)
    }

    fn apply(&mut self, op: &MapOp) -> Result<()> {
        let dp = &mut *self.datapath;
        match *op {
            MapOp::UpsertBackend { id, backend } => {
                hash_mut::<u32, Backend4>(dp, map_names::LB4_BACKENDS)?.insert(id, backend, 0)?;
            }
            MapOp::UpsertService { key, value } => {
                hash_mut::<Lb4Key, Lb4Service>(dp, map_names::LB4_SERVICES)?.insert(key, value, 0)?;
            }
            MapOp::UpsertRevNat { id, revnat } => {
                hash_mut::<u32, RevNat4>(dp, map_names::LB4_REVNAT)?.insert(id, revnat, 0)?;
            }
            MapOp::DeleteService { key } => {
                super::absent_ok(hash_mut::<Lb4Key, Lb4Service>(dp, map_names::LB4_SERVICES)?.remove(&key))?;
            }
            MapOp::DeleteRevNat { id } => {
                super::absent_ok(hash_mut::<u32, RevNat4>(dp, map_names::LB4_REVNAT)?.remove(&id))?;
            }
            MapOp::DeleteBackend { id } => {
                super::absent_ok(hash_mut::<u32, Backend4>(dp, map_names::LB4_BACKENDS)?.remove(&id))?;
            }
        }
        Ok(())
    }
}
