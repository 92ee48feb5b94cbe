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
    let map = dp.map_mut(name)?;
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

    /// Runs of upserts into one map (a first sync is three long runs: backends, slots and service
    /// entries, rev-NAT) go in batches; everything else one by one, in order.
    fn apply_ops(&mut self, ops: &[MapOp]) -> Result<(), (usize, anyhow::Error)> {
        let mut i = 0;
        while i < ops.len() {
            let rest = &ops[i..];
            let done = match rest[0] {
                MapOp::UpsertBackend { .. } => {
                    self.upsert_run(map_names::LB4_BACKENDS, rest, |op| match *op {
                        MapOp::UpsertBackend { id, backend } => Some((id, backend)),
                        _ => None,
                    })
                }
                MapOp::UpsertService { .. } => {
                    self.upsert_run(map_names::LB4_SERVICES, rest, |op| match *op {
                        MapOp::UpsertService { key, value } => Some((key, value)),
                        _ => None,
                    })
                }
                MapOp::UpsertRevNat { .. } => self.upsert_run(map_names::LB4_REVNAT, rest, |op| match *op {
                    MapOp::UpsertRevNat { id, revnat } => Some((id, revnat)),
                    _ => None,
                }),
                _ => self.apply(&rest[0]).map(|()| 1).map_err(|e| (0, e)),
            }
            .map_err(|(k, e)| (i + k, e))?;
            i += done;
        }
        Ok(())
    }
}

impl AyaLbMaps<'_> {
    /// Writes the leading run of `ops` that `entry` reads (one kind, one map): in batches, or one by
    /// one where the kernel cannot. Returns how many operations that was; on failure, the index of
    /// the one that failed.
    fn upsert_run<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
        ops: &[MapOp],
        entry: impl Fn(&MapOp) -> Option<(K, V)>,
    ) -> Result<usize, (usize, anyhow::Error)> {
        let (keys, values): (Vec<K>, Vec<V>) = ops.iter().map_while(entry).unzip();
        let run = keys.len();
        if run >= 2 {
            let map = self
                .datapath
                .ebpf
                .map(name)
                .ok_or_else(|| (0, anyhow::anyhow!("map {name} missing from the object")))?;
            let batched = super::batch::update_hash(map, &keys, &values).map_err(|(k, e)| {
                (
                    k,
                    anyhow::Error::new(e).context(format!("batch update of map {name}")),
                )
            })?;
            if batched {
                return Ok(run);
            }
        }
        for (k, op) in ops[..run].iter().enumerate() {
            self.apply(op).map_err(|e| (k, e))?;
        }
        Ok(run)
    }
}
