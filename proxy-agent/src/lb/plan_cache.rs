//! The planner with a memory: the same plan as [`super::plan()`], but a pass re-plans only the Services
//! whose inputs changed since the last one (the Service object, the set of its EndpointSlices, the
//! Node). Inputs are compared by allocation: the sources keep an unchanged object in the same `Arc`
//! from one snapshot to the next (see `crate::snapshot`), so "changed" costs a pointer comparison, and
//! a change of one EndpointSlice costs planning one Service instead of 10k. The cache holds the `Arc`s
//! it compared, so that an address cannot be reused by another object while it is remembered.
//!
//! What stays linear in the number of objects is pointer work: finding each object's entry, grouping
//! slices by Service, and putting the Services' frontends together in namespace/name order (the
//! first Service to claim an address keeps it, which is a property of all Services at once).

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Node;

use super::{
    HealthCheck, LbPlan, Rejected,
    endpoints::{ServiceSlice, read_slice},
    plan::{Assembly, FrontendKey, NodeView, ServicePlan, frontend_key, namespaced, plan_service},
};
use crate::{
    slim::{EndpointSlice, Service},
    snapshot::Snapshot,
};

/// (namespace, name) of a Service, shared by the Service's entry and its slices' entries so that
/// grouping compares pointers, not strings.
type ServiceKey = super::ServiceName;

fn ptr<T>(object: &Arc<T>) -> usize {
    Arc::as_ptr(object) as usize
}

/// Keys here are addresses of live allocations: one multiply spreads them well enough, at a
/// fraction of SipHash's cost over 20k lookups a pass.
#[derive(Default, Clone, Copy)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        let x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }
}

type ByAddress<V> = HashMap<usize, V, BuildHasherDefault<AddressHasher>>;

/// Positions of the slices of one Service, or of the Services of one key: almost always one, held
/// inline (a `Vec` pushed to once allocates room for four: 32 bytes for 8, 10k times in each of
/// two maps at the agent bench's scale).
type Positions = smallvec::SmallVec<[usize; 1]>;

#[derive(Default)]
pub struct PlanCache {
    node: Option<CachedNode>,
    /// Bumped when the node's view changes; every Service planned under an older one is re-planned.
    node_generation: u64,
    slices: ByAddress<CachedSlice>,
    /// The valid slices of each Service (by its key's address), in slice-name order.
    groups: ByAddress<Positions>,
    services: ByAddress<CachedService>,
    /// Every key in use, once: a set of the shared keys themselves (looked up by their contents), not a
    /// map from a second copy of the names.
    keys: HashSet<ServiceKey>,
    /// The snapshot's Services (as addresses) the last time they were sorted, and that order.
    sorted_from: Vec<usize>,
    order: Vec<usize>,
    /// The Services (addresses) of each key, for re-planning the Services of changed slices without
    /// a walk over all of them.
    by_key: ByAddress<Positions>,
    /// The last pass's slices (addresses, snapshot then derived order): a pass compares position by
    /// position and looks up only the positions that differ.
    slice_order: Vec<usize>,
    /// The last plan's rejected objects, kept while nothing that reports any changed.
    rejected: Vec<Rejected>,
    /// The last plan's frontends and health checks, patched in place when a pass re-planned Services
    /// without changing which addresses they claim.
    frontends: super::Frontends,
    health_checks: Vec<HealthCheck>,
    /// Claims the last assembly refused (two Services on one address or health-check port): while
    /// there are any, who gets what may change with any Service, so passes assemble from scratch.
    conflicts: Vec<Rejected>,
    assembled: bool,
    pass: u64,
    /// Services planned (not taken from the cache) by the last pass.
    replanned: usize,
    /// Passes that walked every slice (not just the positions that changed).
    slice_walks: u64,
}

struct CachedNode {
    name: String,
    object: Option<Arc<Node>>,
    view: NodeView,
}

struct CachedSlice {
    _object: Arc<EndpointSlice>,
    /// The rejection boxed: rare, and inline it would size every entry of the map (10k at the agent
    /// bench's scale) to its five fields.
    read: Option<Result<(ServiceKey, ServiceSlice), Box<Rejected>>>,
    /// Position in the last snapshot (the merge order of equally named slices).
    position: usize,
    seen: u64,
}

struct CachedService {
    object: Arc<Service>,
    key: ServiceKey,
    /// `None` until planned. Boxed: inline, the plan would size each of the map's buckets (16k at the
    /// agent bench's 10k Services, a third of them empty) to its 120 bytes.
    plan: Option<Box<ServicePlan>>,
    node_generation: u64,
    seen: u64,
}

fn intern(keys: &mut HashSet<ServiceKey>, key: (String, String)) -> ServiceKey {
    if let Some(known) = keys.get(&key) {
        return known.clone();
    }
    let key = Arc::new(key);
    keys.insert(key.clone());
    key
}

/// What a Service's plan claims, without what it routes to: equal shapes claim the same addresses.
fn shape(plan: &ServicePlan) -> impl Iterator<Item = (FrontendKey, Option<FrontendKey>)> + '_ {
    plan.claims
        .iter()
        .map(|c| (frontend_key(&c.frontend), c.internal.as_deref().map(frontend_key)))
}

impl PlanCache {
    /// The plan of node `node_name` (see [`super::plan_with_derived`]).
    pub fn plan(&mut self, snapshot: &Snapshot, derived: &[Arc<EndpointSlice>], node_name: &str) -> LbPlan {
        self.pass += 1;
        let pass = self.pass;
        let node = snapshot
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node_name));
        let same_node = self.node.as_ref().is_some_and(|c| {
            c.name == node_name
                && match (&c.object, node) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        });
        if !same_node {
            self.node = Some(CachedNode {
                name: node_name.to_string(),
                object: node.cloned(),
                view: NodeView::new(node.map(|n| &**n), node_name),
            });
            self.node_generation += 1;
        }
        let Self {
            node,
            node_generation,
            slices,
            groups,
            services,
            keys,
            sorted_from,
            order,
            by_key,
            slice_order,
            rejected,
            frontends,
            health_checks,
            conflicts,
            assembled,
            replanned,
            slice_walks,
            ..
        } = self;
        let view = &node.as_ref().expect("set above").view;

        // Slices: new ones join their Service's group, gone ones leave it; either way the Service is
        // planned again. When the snapshot has as many slices as the last one, only the positions
        // whose allocation differs are looked at (one slice rewritten: one position).
        let mut dirty: HashSet<usize, BuildHasherDefault<AddressHasher>> = HashSet::default();
        let all_slices = || snapshot.endpoint_slices.iter().chain(derived);
        let count = snapshot.endpoint_slices.len() + derived.len();
        // A rejected slice came or went: the rejected list is put together again.
        let mut rejected_changed = !same_node;
        // Interned keys are dropped only when a slice or Service went (a walk over all of them).
        let mut removed = false;
        // Each allocation at most once (the full walk below keeps one entry per allocation).
        if count == slice_order.len() && slices.len() == count && *assembled {
            let moved: Vec<(usize, &Arc<EndpointSlice>)> = all_slices()
                .enumerate()
                .filter(|(i, object)| slice_order[*i] != ptr(object))
                .collect();
            let arrived: HashSet<usize, BuildHasherDefault<AddressHasher>> =
                moved.iter().map(|(_, o)| ptr(o)).collect();
            for &(position, object) in &moved {
                let at = ptr(object);
                let old = std::mem::replace(&mut slice_order[position], at);
                if !arrived.contains(&old) {
                    let gone = slices.remove(&old).expect("a remembered slice has an entry");
                    rejected_changed |= leave_group(groups, &mut dirty, old, &gone);
                    // Its key goes too if nothing else holds it (the interning map aside).
                    if let Some(Ok((key, _))) = gone.read {
                        if Arc::strong_count(&key) == 2 {
                            keys.remove(&key);
                        }
                    }
                }
                match slices.entry(at) {
                    std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().position = position,
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let entry = e.insert(read_entry(keys, object, position, pass));
                        rejected_changed |= join_group(groups, &mut dirty, at, entry);
                    }
                }
            }
        }
        if slices.len() != count || slice_order.len() != count || !*assembled {
            removed = true;
            rejected_changed = true;
            *slice_walks += 1;
            slice_order.clear();
            for (position, object) in all_slices().enumerate() {
                let at = ptr(object);
                slice_order.push(at);
                let entry = slices.entry(at).or_insert_with(|| {
                    let entry = read_entry(keys, object, position, pass);
                    join_group(groups, &mut dirty, at, &entry);
                    entry
                });
                entry.seen = pass;
                entry.position = position;
            }
            slices.retain(|at, e| {
                if e.seen == pass {
                    return true;
                }
                leave_group(groups, &mut dirty, *at, e);
                false
            });
        }
        // kube-proxy merges a Service's slices in name order; equally named ones (possible with
        // hand-written manifests) stay in snapshot order.
        for key in &dirty {
            if let Some(group) = groups.get_mut(key) {
                group.sort_by(|a, b| {
                    let (a, b) = (&slices[a], &slices[b]);
                    (slice_name(a), a.position).cmp(&(slice_name(b), b.position))
                });
            }
        }

        let mut reassemble = !*assembled || !conflicts.is_empty();
        let services_same = sorted_from.len() == snapshot.services.len()
            && sorted_from
                .iter()
                .zip(&snapshot.services)
                .all(|(a, b)| *a == ptr(b));
        if !services_same {
            for object in &snapshot.services {
                services
                    .entry(ptr(object))
                    .or_insert_with(|| CachedService {
                        object: object.clone(),
                        key: intern(keys, namespaced(object)),
                        plan: None,
                        node_generation: 0,
                        seen: pass,
                    })
                    .seen = pass;
            }
            services.retain(|_, e| e.seen == pass);
            // Stable: Services with the same namespace/name stay in snapshot order.
            let current: Vec<usize> = snapshot.services.iter().map(ptr).collect();
            let mut sorted = current.clone();
            sorted.sort_by(|a, b| services[a].key.cmp(&services[b].key));
            by_key.clear();
            for at in &sorted {
                by_key.entry(ptr(&services[at].key)).or_default().push(*at);
            }
            *order = sorted;
            *sorted_from = current;
            reassemble = true;
            rejected_changed = true;
        }
        if removed || !services_same {
            keys.retain(|k| Arc::strong_count(k) > 1);
        }

        *replanned = 0;
        let mut patches: Vec<usize> = Vec::new();
        // With the same Services and node, only those of changed slices can need a plan.
        let candidates: Vec<usize> = if services_same && same_node && *assembled {
            let mut c: Vec<usize> = dirty
                .iter()
                .filter_map(|key| by_key.get(key))
                .flatten()
                .copied()
                .collect();
            // Patches land in the assembly's order, as a full walk would make them.
            c.sort_by(|a, b| services[a].key.cmp(&services[b].key));
            c
        } else {
            order.clone()
        };
        for at in &candidates {
            let entry = services.get_mut(at).expect("every Service has an entry");
            let key = ptr(&entry.key);
            if entry.plan.is_some() && entry.node_generation == *node_generation && !dirty.contains(&key) {
                continue;
            }
            let read: Vec<&ServiceSlice> = groups
                .get(&key)
                .into_iter()
                .flatten()
                .filter_map(|at| match &slices[at].read {
                    Some(Ok((_, s))) => Some(s),
                    _ => None,
                })
                .collect();
            let new = plan_service(&entry.object, &entry.key, &read, view);
            entry.node_generation = *node_generation;
            *replanned += 1;
            if entry.plan.as_ref().is_none_or(|old| old.rejected != new.rejected) {
                rejected_changed = true;
            }
            match entry.plan.replace(Box::new(new)) {
                Some(old)
                    if !reassemble
                        && shape(&old).eq(shape(entry.plan.as_ref().expect("just set")))
                        && old.health_check.map(|h| h.0)
                            == entry.plan.as_ref().and_then(|p| p.health_check.map(|h| h.0)) =>
                {
                    patches.push(*at);
                }
                _ => reassemble = true,
            }
        }

        if reassemble {
            let mut assembly = Assembly::default();
            for at in order.iter() {
                assembly.add(services[at].plan.as_ref().expect("planned above"));
            }
            *conflicts = assembly.conflicts;
            *frontends = Arc::new(assembly.frontends.into_values().collect());
            *health_checks = assembly.health_checks.into_values().collect();
            *assembled = true;
        } else {
            // Same claims, no conflicts: each Service keeps exactly the addresses it had. The list
            // is copied once if the last plan's holders still share it.
            let mut list = (!patches.is_empty()).then(|| Arc::make_mut(frontends));
            for at in &patches {
                let frontends = list.as_deref_mut().expect("patches need the list");
                let plan = services[at].plan.as_ref().expect("planned above");
                // A Service claiming one address twice keeps its first claim, as in the assembly.
                let mut done = Vec::new();
                for claim in &plan.claims {
                    if done.contains(&frontend_key(&claim.frontend)) {
                        continue;
                    }
                    for f in std::iter::once(&claim.frontend).chain(&claim.internal) {
                        let key = frontend_key(f);
                        if done.contains(&key) {
                            continue;
                        }
                        let i = frontends
                            .binary_search_by_key(&key, |f| frontend_key(f))
                            .expect("an unconflicted claim is in the plan");
                        frontends[i] = f.clone();
                        done.push(key);
                    }
                }
                if let Some((port, local_endpoints)) = plan.health_check
                    && let Ok(i) = health_checks.binary_search_by_key(&port, |h| h.port)
                {
                    health_checks[i].local_endpoints = local_endpoints;
                }
            }
        }

        if reassemble || rejected_changed {
            let mut all = view.rejected.clone();
            all.extend(slices.values().filter_map(|e| match &e.read {
                Some(Err(r)) => Some((**r).clone()),
                _ => None,
            }));
            for at in order.iter() {
                let plan = services[at].plan.as_ref().expect("planned above");
                all.extend(plan.rejected.iter().cloned());
            }
            all.extend(conflicts.iter().cloned());
            all.sort();
            *rejected = all;
        }
        LbPlan {
            frontends: frontends.clone(),
            health_checks: health_checks.clone(),
            rejected: rejected.clone(),
            snat_addr: view.snat_addr,
        }
    }

    /// How many Services the last pass planned anew (the others came from the cache).
    pub fn replanned(&self) -> usize {
        self.replanned
    }

    #[cfg(test)]
    fn slice_walks(&self) -> u64 {
        self.slice_walks
    }

    #[cfg(test)]
    fn interned(&self) -> usize {
        self.keys.len()
    }
}

fn read_entry(
    keys: &mut HashSet<ServiceKey>,
    object: &Arc<EndpointSlice>,
    position: usize,
    pass: u64,
) -> CachedSlice {
    let read = read_slice(object).map(|read| {
        read.map(|s| {
            (
                intern(keys, (s.namespace().to_owned(), s.service().to_owned())),
                s,
            )
        })
        .map_err(Box::new)
    });
    CachedSlice {
        _object: object.clone(),
        read,
        position,
        seen: pass,
    }
}

/// Adds a new slice to its Service's group (marking the Service for planning); true if the slice was
/// rejected.
fn join_group(
    groups: &mut ByAddress<Positions>,
    dirty: &mut HashSet<usize, BuildHasherDefault<AddressHasher>>,
    at: usize,
    entry: &CachedSlice,
) -> bool {
    match &entry.read {
        Some(Ok((key, _))) => {
            groups.entry(ptr(key)).or_default().push(at);
            dirty.insert(ptr(key));
            false
        }
        Some(Err(_)) => true,
        None => false,
    }
}

/// Takes a gone slice out of its Service's group (marking the Service for planning); true if the
/// slice was rejected.
fn leave_group(
    groups: &mut ByAddress<Positions>,
    dirty: &mut HashSet<usize, BuildHasherDefault<AddressHasher>>,
    at: usize,
    entry: &CachedSlice,
) -> bool {
    match &entry.read {
        Some(Ok((key, _))) => {
            let group = groups.get_mut(&ptr(key)).expect("a valid slice is in its group");
            group.retain(|s| *s != at);
            if group.is_empty() {
                groups.remove(&ptr(key));
            }
            dirty.insert(ptr(key));
            false
        }
        Some(Err(_)) => true,
        None => false,
    }
}

fn slice_name(slice: &CachedSlice) -> &str {
    match &slice.read {
        Some(Ok((_, s))) => s.name(),
        _ => "",
    }
}

#[cfg(test)]
#[path = "plan_cache_tests.rs"]
mod tests;
