//! The resync's diff, computed off the daemon's loop. At 10k Services the diff of a dump against the
//! state last written took 5–8 ms on the loop every 10 s (after the dump itself had moved to a thread
//! of its own), and a change arriving meanwhile waited for it. The resync's request hands the dumper
//! thread the state the reconciler wrote, shared (a pass that writes before the dumper is done copies
//! it first), the thread diffs its dump against it, and the loop applies that diff — except for the
//! keys it wrote itself since the request: for those the maps hold what it wrote, whatever the dump
//! saw, and a write behind the agent's back at the same moment is left to the next resync.

use std::collections::BTreeSet;

use common::lb::Lb4Key;

use super::{DesiredMaps, MapOp, diff::diff};

/// One operation on an in-memory copy of the maps (the test maps').
pub fn apply(state: &mut DesiredMaps, op: &MapOp) {
    match *op {
        MapOp::UpsertBackend { id, backend } => {
            state.backends.insert(id, backend);
        }
        MapOp::UpsertService { key, value } => {
            state.services.insert(key, value);
        }
        MapOp::UpsertRevNat { id, revnat } => {
            state.revnat.insert(id, revnat);
        }
        MapOp::DeleteService { key } => {
            state.services.remove(&key);
        }
        MapOp::DeleteRevNat { id } => {
            state.revnat.remove(&id);
        }
        MapOp::DeleteBackend { id } => {
            state.backends.remove(&id);
        }
    }
}

/// The operations that bring the maps as dumped to the state written when the resync asked, and the
/// ids the dump holds that state does not (orphans: never handed out until the next dump).
#[derive(Debug, Clone, Default)]
pub struct ResyncDiff {
    pub ops: Vec<MapOp>,
    pub orphan_backends: Vec<u32>,
    pub orphan_revnat: Vec<u32>,
}

impl ResyncDiff {
    pub fn of(written: &DesiredMaps, dump: &DesiredMaps) -> Self {
        Self {
            ops: diff(written, dump),
            orphan_backends: absent(dump.backends.keys(), written.backends.keys()),
            orphan_revnat: absent(dump.revnat.keys(), written.revnat.keys()),
        }
    }
}

/// The ids of `present` (ascending) that `known` (ascending) lacks.
fn absent<'a>(present: impl Iterator<Item = &'a u32>, known: impl Iterator<Item = &'a u32>) -> Vec<u32> {
    let mut known = known.peekable();
    present
        .filter(|id| {
            while known.next_if(|k| *k < *id).is_some() {}
            known.peek() != Some(id)
        })
        .copied()
        .collect()
}

/// The keys written since a resync asked for its dump.
#[derive(Debug, Clone, Default)]
pub struct Touched {
    services: BTreeSet<Lb4Key>,
    backends: BTreeSet<u32>,
    revnat: BTreeSet<u32>,
}

impl Touched {
    pub fn record(&mut self, ops: &[MapOp]) {
        for op in ops {
            match *op {
                MapOp::UpsertBackend { id, .. } | MapOp::DeleteBackend { id } => {
                    self.backends.insert(id);
                }
                MapOp::UpsertService { key, .. } | MapOp::DeleteService { key } => {
                    self.services.insert(key);
                }
                MapOp::UpsertRevNat { id, .. } | MapOp::DeleteRevNat { id } => {
                    self.revnat.insert(id);
                }
            }
        }
    }

    pub fn has_service(&self, key: &Lb4Key) -> bool {
        self.services.contains(key)
    }

    pub fn contains(&self, op: &MapOp) -> bool {
        match op {
            MapOp::UpsertBackend { id, .. } | MapOp::DeleteBackend { id } => self.backends.contains(id),
            MapOp::UpsertService { key, .. } | MapOp::DeleteService { key } => self.services.contains(key),
            MapOp::UpsertRevNat { id, .. } | MapOp::DeleteRevNat { id } => self.revnat.contains(id),
        }
    }
}
