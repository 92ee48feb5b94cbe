//! A pass that touches only the frontends that changed. The full pass ([`super::desired()`] then
//! [`super::diff()`]) rebuilds and compares every entry: at 10k Services and 100k endpoints that is
//! ~230k map entries for a change of one. Here the last plan's frontends are compared with the new
//! plan's by allocation (the planner hands out the same `Arc` for an unchanged frontend), the written
//! state is updated in place for the ones that differ, and the operations come from [`super::diff()`]
//! over just the entries they touched — which gives the same operations in the same order as the full
//! pass, since every entry it leaves out is one the full pass finds unchanged.
//!
//! Backends and rev-NAT entries are shared between frontends (one pod behind two Services; the two
//! scopes of an externalTrafficPolicy Local frontend), so each carries a count of its users, and a
//! backend's LOCAL and TERMINATING flags are recomputed from counts the way [`super::desired()`]
//! merges them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use common::lb::{Backend4, Lb4Key, Lb4Service, MAX_SERVICE_ENTRIES, RevNat4, backend_flags};

use super::{DesiredMaps, Ids, MapOp, desired::backend_value, desired::key, diff};
use crate::lb::{Frontend, LbPlan};

/// Who uses each backend and rev-NAT id of a written state, and the frontends it was written from.
#[derive(Debug, Clone, Default)]
pub struct Users {
    frontends: crate::lb::Frontends,
    backends: HashMap<u32, BackendUsers>,
    revnat: HashMap<u32, u32>,
}

#[derive(Debug, Clone, Copy)]
struct BackendUsers {
    /// The backend without flags.
    base: Backend4,
    frontends: u32,
    local: u32,
    terminating: u32,
}

impl BackendUsers {
    fn value(&self) -> Backend4 {
        let mut flags = 0;
        if self.local > 0 {
            flags |= backend_flags::LOCAL;
        }
        // Terminating only while every frontend uses it as a terminating fallback.
        if self.terminating == self.frontends {
            flags |= backend_flags::TERMINATING;
        }
        Backend4 { flags, ..self.base }
    }
}

/// What an in-place pass produced: the operations, and the ids no entry uses any more (to release
/// once the operations are written).
#[derive(Debug, Default)]
pub struct Change {
    pub ops: Vec<MapOp>,
    pub unused_backends: Vec<u32>,
    pub unused_revnat: Vec<u32>,
}

/// The value each touched entry had before the pass (`None`: absent).
#[derive(Default)]
struct Touched {
    services: BTreeMap<Lb4Key, Option<Lb4Service>>,
    backends: BTreeMap<u32, Option<Backend4>>,
    revnat: BTreeMap<u32, Option<RevNat4>>,
}

impl Touched {
    fn service(&mut self, maps: &DesiredMaps, key: Lb4Key) {
        self.services
            .entry(key)
            .or_insert_with(|| maps.services.get(&key).copied());
    }
    fn backend(&mut self, maps: &DesiredMaps, id: u32) {
        self.backends
            .entry(id)
            .or_insert_with(|| maps.backends.get(&id).copied());
    }
    fn revnat(&mut self, maps: &DesiredMaps, id: u32) {
        self.revnat
            .entry(id)
            .or_insert_with(|| maps.revnat.get(&id).copied());
    }

    /// The touched entries before (as recorded) and after (as `maps` holds them now).
    fn before_after(&self, maps: &DesiredMaps) -> (DesiredMaps, DesiredMaps) {
        let mut before = DesiredMaps::default();
        let mut after = DesiredMaps::default();
        for (key, old) in &self.services {
            if let Some(v) = old {
                before.services.insert(*key, *v);
            }
            if let Some(v) = maps.services.get(key) {
                after.services.insert(*key, *v);
            }
        }
        for (id, old) in &self.backends {
            if let Some(v) = old {
                before.backends.insert(*id, *v);
            }
            if let Some(v) = maps.backends.get(id) {
                after.backends.insert(*id, *v);
            }
        }
        for (id, old) in &self.revnat {
            if let Some(v) = old {
                before.revnat.insert(*id, *v);
            }
            if let Some(v) = maps.revnat.get(id) {
                after.revnat.insert(*id, *v);
            }
        }
        (before, after)
    }
}

fn frontend_key(f: &Frontend) -> (u32, u16, u8, u8) {
    (u32::from(f.addr), f.port, f.proto as u8, f.scope)
}

impl Users {
    /// The users of a state written whole from `plan` (every frontend fitted), with ids from `ids`.
    /// `None` if an id is missing, which a complete pass never leaves.
    pub fn of(plan: &LbPlan, ids: &Ids) -> Option<Self> {
        let mut users = Self::default();
        for f in plan.frontends.iter() {
            users.add_counts(f, ids)?;
        }
        users.frontends = plan.frontends.clone();
        Some(users)
    }

    fn add_counts(&mut self, f: &Frontend, ids: &Ids) -> Option<(u32, Vec<u32>)> {
        let proto = f.proto.number();
        let rev_nat = ids.revnat(&(f.addr, f.port, proto))?;
        *self.revnat.entry(rev_nat).or_default() += 1;
        let mut backend_ids = Vec::with_capacity(f.backends.len());
        for b in &f.backends {
            let id = ids.backend(&(b.addr, b.port, proto))?;
            let value = backend_value(b, proto);
            let users = self.backends.entry(id).or_insert(BackendUsers {
                base: Backend4 { flags: 0, ..value },
                frontends: 0,
                local: 0,
                terminating: 0,
            });
            users.frontends += 1;
            users.local += u32::from(b.local);
            users.terminating += u32::from(b.terminating);
            backend_ids.push(id);
        }
        Some((rev_nat, backend_ids))
    }

    /// Brings `maps` (the state last written from `self`'s frontends) to `plan`'s, allocating ids for
    /// what is new, and returns the operations [`super::diff()`] would give for the whole maps.
    /// `None` when the change cannot be made in place (the services map or an id space would be
    /// full, so which frontends fit depends on all of them; or the state is not what `self` says):
    /// `maps` and `self` are then unusable and the caller falls back to a full pass from a dump.
    pub fn update(&mut self, plan: &LbPlan, ids: &mut Ids, maps: &mut DesiredMaps) -> Option<Change> {
        let last = std::mem::take(&mut self.frontends);
        let (gone, new) = changed_frontends(&last, &plan.frontends);
        if gone.is_empty() && new.is_empty() {
            self.frontends = plan.frontends.clone();
            return Some(Change::default());
        }
        // `self.frontends` stays empty if this returns early: the caller then drops `self`.
        let entries = |fs: &[&Arc<Frontend>]| fs.iter().map(|f| 1 + f.backends.len()).sum::<usize>();
        let after = (maps.services.len() + entries(&new)).checked_sub(entries(&gone))?;
        if after > MAX_SERVICE_ENTRIES as usize {
            return None;
        }
        let mut touched = Touched::default();
        for f in &gone {
            self.remove(f, ids, maps, &mut touched)?;
        }
        for f in &new {
            self.add(f, ids, maps, &mut touched)?;
        }
        let mut change = Change::default();
        for id in touched.backends.keys() {
            match self.backends.get(id) {
                Some(users) if users.frontends > 0 => {
                    maps.backends.insert(*id, users.value());
                }
                _ => {
                    self.backends.remove(id);
                    maps.backends.remove(id);
                    change.unused_backends.push(*id);
                }
            }
        }
        for id in touched.revnat.keys() {
            if self.revnat.get(id).is_none_or(|n| *n == 0) {
                self.revnat.remove(id);
                maps.revnat.remove(id);
                change.unused_revnat.push(*id);
            }
        }
        let (before, after) = touched.before_after(maps);
        change.ops = diff(&after, &before);
        self.frontends = plan.frontends.clone();
        Some(change)
    }

    fn remove(
        &mut self,
        f: &Frontend,
        ids: &Ids,
        maps: &mut DesiredMaps,
        touched: &mut Touched,
    ) -> Option<()> {
        let proto = f.proto.number();
        let rev_nat = ids.revnat(&(f.addr, f.port, proto))?;
        let count = self.revnat.get_mut(&rev_nat)?;
        *count = count.checked_sub(1)?;
        touched.revnat(maps, rev_nat);
        for slot in 0..=f.backends.len() {
            let key = key(f.addr, f.port, proto, f.scope, u16::try_from(slot).ok()?);
            touched.service(maps, key);
            maps.services.remove(&key)?;
        }
        for b in &f.backends {
            let id = ids.backend(&(b.addr, b.port, proto))?;
            let users = self.backends.get_mut(&id)?;
            users.frontends = users.frontends.checked_sub(1)?;
            users.local -= u32::from(b.local).min(users.local);
            users.terminating -= u32::from(b.terminating).min(users.terminating);
            touched.backend(maps, id);
        }
        Some(())
    }

    /// As [`super::desired()`] adds one frontend: rev-NAT id first, then the backends' in order.
    fn add(
        &mut self,
        f: &Frontend,
        ids: &mut Ids,
        maps: &mut DesiredMaps,
        touched: &mut Touched,
    ) -> Option<()> {
        let proto = f.proto.number();
        ids.alloc_revnat(&(f.addr, f.port, proto))?;
        for b in &f.backends {
            ids.alloc_backend(&(b.addr, b.port, proto))?;
        }
        let (rev_nat, backend_ids) = self.add_counts(f, ids)?;
        touched.revnat(maps, rev_nat);
        maps.revnat.insert(rev_nat, super::desired::revnat_value(f));
        let slot0 = key(f.addr, f.port, proto, f.scope, 0);
        touched.service(maps, slot0);
        maps.services
            .insert(slot0, super::desired::frontend_value(f, rev_nat)?);
        for (slot, id) in backend_ids.into_iter().enumerate() {
            let key = key(f.addr, f.port, proto, f.scope, u16::try_from(slot + 1).ok()?);
            touched.service(maps, key);
            maps.services.insert(
                key,
                Lb4Service {
                    backend_id: id,
                    ..Default::default()
                },
            );
            touched.backend(maps, id);
        }
        Some(())
    }
}

/// Frontends of `old` that are gone or changed, and frontends of `new` that are new or changed, each in
/// key order. Both lists are sorted by the planner's key; equal allocations are unchanged without a
/// look inside.
fn changed_frontends<'a>(
    old: &'a [Arc<Frontend>],
    new: &'a [Arc<Frontend>],
) -> (Vec<&'a Arc<Frontend>>, Vec<&'a Arc<Frontend>>) {
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        // Most frontends are the very same allocation: no look inside (at 10k frontends, reading
        // each one's key costs a cache miss apiece).
        if let (Some(a), Some(b)) = (old.get(i), new.get(j))
            && Arc::ptr_eq(a, b)
        {
            i += 1;
            j += 1;
            continue;
        }
        let order = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => frontend_key(a).cmp(&frontend_key(b)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                gone.push(&old[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                added.push(&new[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if !Arc::ptr_eq(&old[i], &new[j]) && old[i] != new[j] {
                    gone.push(&old[i]);
                    added.push(&new[j]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    (gone, added)
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod tests;
