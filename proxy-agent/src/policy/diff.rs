//! Desired vs actual policy maps → ordered operations.

use common::policy::{IpCacheKey4, IpCacheValue4, PolicyEndpoint4};

use super::{PolicyMapsState, PolicyOp};
use crate::reconcile::diff::differing;

/// The operations that turn `actual` (A) into `desired` (D), ordered so that after every single
/// operation a flow that both A and D allow is still allowed (no transient deny of allowed traffic):
///
/// 1. upsert policy names (nothing reads them on the packet path);
/// 2. upsert policy entries: from here on every allow entry of A and of D is present;
/// 3. relax endpoints: an endpoint that stays but loses an isolation flag gets D's record with only
///    the flags it keeps (A ∩ D) — from here to step 6 an isolated direction is isolated in A and in D;
/// 4. upsert ipcache entries, longest prefix first;
/// 5. delete stale ipcache entries, shortest prefix first — during 4 and 5 every address resolves
///    either as in A or as in D (never to a third, intermediate prefix), and both have their entries;
/// 6. upsert endpoints (new ones, and isolation turned on: their D entries and D's ipcache are in place);
/// 7. delete endpoints of pods that left the node;
/// 8. delete stale policy entries: no endpoint or address relies on them any more;
/// 9. clear stale policy names.
///
/// The state map's `NONE_ISOLATED` is cleared before step 1 when D isolates some endpoint, and set after
/// step 9 when D isolates none: while it is set, no endpoint in the maps is isolated.
///
/// Unchanged entries produce no operation, so `diff(d, d)` is empty.
pub fn diff(desired: &PolicyMapsState, actual: &PolicyMapsState) -> Vec<PolicyOp> {
    // Each map walked once beside its other side (at 44k entries, a lookup per key into the other
    // side was most of a resync's policy pass).
    let names = differing(&desired.names, &actual.names);
    let policy = differing(&desired.policy, &actual.policy);
    let endpoints = differing(&desired.endpoints, &actual.endpoints);
    let ipcache = differing(&desired.ipcache, &actual.ipcache);
    let mut ops = Vec::new();
    if actual.none_isolated && !desired.none_isolated {
        ops.push(PolicyOp::SetState { none_isolated: false });
    }
    for &(r, want, _) in &names {
        if let Some(name) = want {
            ops.push(PolicyOp::UpsertName {
                policy_ref: *r,
                name: name.clone(),
            });
        }
    }
    for &(key, want, _) in &policy {
        if let Some(entry) = want {
            ops.push(PolicyOp::UpsertPolicy {
                key: *key,
                entry: *entry,
            });
        }
    }
    // Endpoint records as they stand after step 3 (of those that differ).
    let mut after_relax: Vec<Option<PolicyEndpoint4>> = Vec::with_capacity(endpoints.len());
    for &(key, want, have) in &endpoints {
        let mut now = have.copied();
        if let (Some(want), Some(have)) = (want, have) {
            let kept = have.flags & want.flags;
            if kept != have.flags {
                let relaxed = PolicyEndpoint4 { flags: kept, ..*want };
                ops.push(PolicyOp::UpsertEndpoint {
                    key: *key,
                    value: relaxed,
                });
                now = Some(relaxed);
            }
        }
        after_relax.push(now);
    }
    let by_len_desc = |k: &&IpCacheKey4| (std::cmp::Reverse(k.prefix_len), k.addr.get());
    let mut upserts: Vec<(&IpCacheKey4, &IpCacheValue4)> = ipcache
        .iter()
        .filter_map(|&(k, want, _)| Some((k, want?)))
        .collect();
    upserts.sort_by_key(|(k, _)| by_len_desc(k));
    for (key, value) in upserts {
        ops.push(PolicyOp::UpsertIpCache {
            key: *key,
            value: *value,
        });
    }
    let mut stale: Vec<&IpCacheKey4> = ipcache
        .iter()
        .filter(|(_, want, _)| want.is_none())
        .map(|&(k, _, _)| k)
        .collect();
    stale.sort_by_key(|k| (k.prefix_len, k.addr.get()));
    for key in stale {
        ops.push(PolicyOp::DeleteIpCache { key: *key });
    }
    for (&(key, want, _), now) in endpoints.iter().zip(&after_relax) {
        if let Some(want) = want
            && now.as_ref() != Some(want)
        {
            ops.push(PolicyOp::UpsertEndpoint {
                key: *key,
                value: *want,
            });
        }
    }
    for &(key, want, _) in &endpoints {
        if want.is_none() {
            ops.push(PolicyOp::DeleteEndpoint { key: *key });
        }
    }
    for &(key, want, _) in &policy {
        if want.is_none() {
            ops.push(PolicyOp::DeletePolicy { key: *key });
        }
    }
    for &(r, want, _) in &names {
        if want.is_none() {
            ops.push(PolicyOp::DeleteName { policy_ref: *r });
        }
    }
    if desired.none_isolated && !actual.none_isolated {
        ops.push(PolicyOp::SetState { none_isolated: true });
    }
    ops
}
