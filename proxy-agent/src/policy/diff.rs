//! Desired vs actual policy maps → ordered operations.

use common::policy::{IpCacheKey4, PolicyEndpoint4};

use super::{PolicyMapsState, PolicyOp};

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
/// Unchanged entries produce no operation, so `diff(d, d)` is empty.
pub fn diff(desired: &PolicyMapsState, actual: &PolicyMapsState) -> Vec<PolicyOp> {
    let mut ops = Vec::new();
    for (r, name) in &desired.names {
        if actual.names.get(r) != Some(name) {
            ops.push(PolicyOp::UpsertName {
                policy_ref: *r,
                name: name.clone(),
            });
        }
    }
    for (key, entry) in &desired.policy {
        if actual.policy.get(key) != Some(entry) {
            ops.push(PolicyOp::UpsertPolicy {
                key: *key,
                entry: *entry,
            });
        }
    }
    // Endpoint records as they stand after step 3.
    let mut endpoints = actual.endpoints.clone();
    for (key, want) in &desired.endpoints {
        let Some(have) = actual.endpoints.get(key) else {
            continue;
        };
        let kept = have.flags & want.flags;
        if kept != have.flags {
            let relaxed = PolicyEndpoint4 { flags: kept, ..*want };
            ops.push(PolicyOp::UpsertEndpoint {
                key: *key,
                value: relaxed,
            });
            endpoints.insert(*key, relaxed);
        }
    }
    let by_len_desc = |k: &&IpCacheKey4| (std::cmp::Reverse(k.prefix_len), k.addr.get());
    let mut upserts: Vec<&IpCacheKey4> = desired
        .ipcache
        .iter()
        .filter(|(k, v)| actual.ipcache.get(k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    upserts.sort_by_key(by_len_desc);
    for key in upserts {
        ops.push(PolicyOp::UpsertIpCache {
            key: *key,
            value: desired.ipcache[key],
        });
    }
    let mut stale: Vec<&IpCacheKey4> = actual
        .ipcache
        .keys()
        .filter(|k| !desired.ipcache.contains_key(k))
        .collect();
    stale.sort_by_key(|k| (k.prefix_len, k.addr.get()));
    for key in stale {
        ops.push(PolicyOp::DeleteIpCache { key: *key });
    }
    for (key, want) in &desired.endpoints {
        if endpoints.get(key) != Some(want) {
            ops.push(PolicyOp::UpsertEndpoint {
                key: *key,
                value: *want,
            });
        }
    }
    for key in actual.endpoints.keys() {
        if !desired.endpoints.contains_key(key) {
            ops.push(PolicyOp::DeleteEndpoint { key: *key });
        }
    }
    for key in actual.policy.keys() {
        if !desired.policy.contains_key(key) {
            ops.push(PolicyOp::DeletePolicy { key: *key });
        }
    }
    for r in actual.names.keys() {
        if !desired.names.contains_key(r) {
            ops.push(PolicyOp::DeleteName { policy_ref: *r });
        }
    }
    ops
}
