//! Desired vs actual map contents → ordered operations.

use super::{DesiredMaps, MapOp};
use common::lb::Lb4Key;

/// The operations that turn `actual` into `desired`, in an order that keeps every reference the
/// datapath follows valid after each single operation (see [`DesiredMaps::check_references`]):
///
/// 1. upsert backends (new or changed);
/// 2. upsert backend slots 1..N (they point at backends that now exist);
/// 3. upsert rev-NAT entries;
/// 4. upsert frontends (slot 0, with the new count: every slot up to it exists now);
/// 5. delete stale slots of frontends that stay (beyond the new count, no longer reachable);
/// 6. delete orphan frontends (slot 0 first, then their slots);
/// 7. delete orphan rev-NAT entries and backends: nothing points at them any more.
///
/// Unchanged entries produce no operation, so `diff(d, d)` is empty.
pub fn diff(desired: &DesiredMaps, actual: &DesiredMaps) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for (&id, backend) in &desired.backends {
        if actual.backends.get(&id) != Some(backend) {
            ops.push(MapOp::UpsertBackend {
                id,
                backend: *backend,
            });
        }
    }
    let changed = |key: &Lb4Key| actual.services.get(key) != desired.services.get(key);
    for (key, value) in desired.services.iter().filter(|(k, _)| k.slot != 0) {
        if changed(key) {
            ops.push(MapOp::UpsertService {
                key: *key,
                value: *value,
            });
        }
    }
    for (&id, revnat) in &desired.revnat {
        if actual.revnat.get(&id) != Some(revnat) {
            ops.push(MapOp::UpsertRevNat { id, revnat: *revnat });
        }
    }
    for (key, value) in desired.services.iter().filter(|(k, _)| k.slot == 0) {
        if changed(key) {
            ops.push(MapOp::UpsertService {
                key: *key,
                value: *value,
            });
        }
    }
    let frontend_of = |key: &Lb4Key| Lb4Key { slot: 0, ..*key };
    let gone = |key: &&Lb4Key| !desired.services.contains_key(key);
    for key in actual.services.keys().filter(gone) {
        if key.slot != 0 && desired.services.contains_key(&frontend_of(key)) {
            ops.push(MapOp::DeleteService { key: *key });
        }
    }
    for key in actual.services.keys().filter(gone) {
        if key.slot == 0 {
            ops.push(MapOp::DeleteService { key: *key });
        }
    }
    for key in actual.services.keys().filter(gone) {
        if key.slot != 0 && !desired.services.contains_key(&frontend_of(key)) {
            ops.push(MapOp::DeleteService { key: *key });
        }
    }
    for &id in actual.revnat.keys() {
        if !desired.revnat.contains_key(&id) {
            ops.push(MapOp::DeleteRevNat { id });
        }
    }
    for &id in actual.backends.keys() {
        if !desired.backends.contains_key(&id) {
            ops.push(MapOp::DeleteBackend { id });
        }
    }
    ops
}
