//! Desired vs actual map contents → ordered operations.

use std::{cmp::Ordering, collections::BTreeMap};

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
    let backends = differing(&desired.backends, &actual.backends);
    let services = differing(&desired.services, &actual.services);
    let revnat = differing(&desired.revnat, &actual.revnat);
    let mut ops = Vec::new();
    for &(&id, wanted, _) in &backends {
        if let Some(backend) = wanted {
            ops.push(MapOp::UpsertBackend {
                id,
                backend: *backend,
            });
        }
    }
    for &(key, wanted, _) in &services {
        if let Some(value) = wanted
            && key.slot != 0
        {
            ops.push(MapOp::UpsertService {
                key: *key,
                value: *value,
            });
        }
    }
    for &(&id, wanted, _) in &revnat {
        if let Some(revnat) = wanted {
            ops.push(MapOp::UpsertRevNat { id, revnat: *revnat });
        }
    }
    for &(key, wanted, _) in &services {
        if let Some(value) = wanted
            && key.slot == 0
        {
            ops.push(MapOp::UpsertService {
                key: *key,
                value: *value,
            });
        }
    }
    let frontend_of = |key: &Lb4Key| Lb4Key { slot: 0, ..*key };
    let gone: Vec<&Lb4Key> = services
        .iter()
        .filter(|(_, wanted, _)| wanted.is_none())
        .map(|(key, _, _)| *key)
        .collect();
    for key in &gone {
        if key.slot != 0 && desired.services.contains_key(&frontend_of(key)) {
            ops.push(MapOp::DeleteService { key: **key });
        }
    }
    for key in &gone {
        if key.slot == 0 {
            ops.push(MapOp::DeleteService { key: **key });
        }
    }
    for key in &gone {
        if key.slot != 0 && !desired.services.contains_key(&frontend_of(key)) {
            ops.push(MapOp::DeleteService { key: **key });
        }
    }
    for &(&id, wanted, _) in &revnat {
        if wanted.is_none() {
            ops.push(MapOp::DeleteRevNat { id });
        }
    }
    for &(&id, wanted, _) in &backends {
        if wanted.is_none() {
            ops.push(MapOp::DeleteBackend { id });
        }
    }
    ops
}

/// The keys whose entries differ (present on one side only, or with another value), in key order,
/// with the desired and the actual value. One walk over both sorted maps side by side: at 100k
/// entries, a lookup per key into the other map cost more than everything else in a pass.
pub(crate) fn differing<'a, K: Ord, V: PartialEq>(
    desired: &'a BTreeMap<K, V>,
    actual: &'a BTreeMap<K, V>,
) -> Vec<(&'a K, Option<&'a V>, Option<&'a V>)> {
    let mut out = Vec::new();
    let mut d = desired.iter().peekable();
    let mut a = actual.iter().peekable();
    loop {
        let order = match (d.peek(), a.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((dk, _)), Some((ak, _))) => dk.cmp(ak),
        };
        match order {
            Ordering::Less => {
                let (k, v) = d.next().expect("peeked");
                out.push((k, Some(v), None));
            }
            Ordering::Greater => {
                let (k, v) = a.next().expect("peeked");
                out.push((k, None, Some(v)));
            }
            Ordering::Equal => {
                let (k, dv) = d.next().expect("peeked");
                let (_, av) = a.next().expect("peeked");
                if dv != av {
                    out.push((k, Some(dv), Some(av)));
                }
            }
        }
    }
    out
}
