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

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{
    LbPlan, Rejected,
    endpoints::{ServiceSlice, read_slice},
    plan::{Assembly, NodeView, ServicePlan, namespaced, plan_service},
};
use crate::snapshot::Snapshot;

/// (namespace, name) of a Service, shared by the Service's entry and its slices' entries so that
/// grouping compares pointers, not strings.
type ServiceKey = Arc<(String, String)>;

fn ptr<T>(object: &Arc<T>) -> usize {
    Arc::as_ptr(object) as usize
}

#[derive(Default)]
pub struct PlanCache {
    node: Option<CachedNode>,
    /// Bumped when the node's view changes; every Service planned under an older one is re-planned.
    node_generation: u64,
    slices: HashMap<usize, CachedSlice>,
    services: HashMap<usize, CachedService>,
    keys: HashMap<(String, String), ServiceKey>,
    /// The snapshot's Services (as pointers) the last time they were sorted, and that order.
    sorted_from: Vec<usize>,
    order: Vec<usize>,
    pass: u64,
    /// Services planned (not taken from the cache) by the last pass.
    replanned: usize,
}

struct CachedNode {
    name: String,
    object: Option<Arc<Node>>,
    view: NodeView,
}

struct CachedSlice {
    _object: Arc<EndpointSlice>,
    read: Option<Result<(ServiceKey, ServiceSlice), Rejected>>,
    seen: u64,
}

struct CachedService {
    object: Arc<Service>,
    key: ServiceKey,
    /// The slices the plan was made from, in slice-name order; `None` before the first plan.
    slices: Option<Vec<usize>>,
    node_generation: u64,
    plan: ServicePlan,
    seen: u64,
}

fn intern(keys: &mut HashMap<(String, String), ServiceKey>, key: (String, String)) -> ServiceKey {
    keys.entry(key.clone()).or_insert_with(|| Arc::new(key)).clone()
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
            services,
            keys,
            sorted_from,
            order,
            replanned,
            ..
        } = self;
        let view = &node.as_ref().expect("set above").view;

        // EndpointSlices grouped by Service, each group in snapshot order (then derived ones).
        let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut rejected = view.rejected.clone();
        for object in snapshot.endpoint_slices.iter().chain(derived) {
            let at = ptr(object);
            let entry = slices.entry(at).or_insert_with(|| CachedSlice {
                _object: object.clone(),
                read: read_slice(object)
                    .map(|read| read.map(|s| (intern(keys, (s.namespace.clone(), s.service.clone())), s))),
                seen: pass,
            });
            entry.seen = pass;
            match &entry.read {
                Some(Ok((key, _))) => groups.entry(ptr(key)).or_default().push(at),
                Some(Err(r)) => rejected.push(r.clone()),
                None => {}
            }
        }
        // kube-proxy merges a Service's slices in name order; a stable sort keeps duplicates (possible
        // with hand-written manifests) in snapshot order.
        for group in groups.values_mut().filter(|g| g.len() > 1) {
            group.sort_by(|a, b| slice_name(slices, *a).cmp(slice_name(slices, *b)));
        }

        for object in &snapshot.services {
            services
                .entry(ptr(object))
                .or_insert_with(|| CachedService {
                    object: object.clone(),
                    key: intern(keys, namespaced(object)),
                    slices: None,
                    node_generation: 0,
                    plan: ServicePlan::default(),
                    seen: pass,
                })
                .seen = pass;
        }
        let current: Vec<usize> = snapshot.services.iter().map(ptr).collect();
        if *sorted_from != current {
            // Stable: Services with the same namespace/name stay in snapshot order.
            let mut sorted = current.clone();
            sorted.sort_by(|a, b| services[a].key.cmp(&services[b].key));
            *order = sorted;
            *sorted_from = current;
        }

        *replanned = 0;
        let mut assembly = Assembly::default();
        for at in order.iter() {
            let entry = services.get_mut(at).expect("every Service has an entry");
            let group = groups.get(&ptr(&entry.key)).map_or(&[][..], Vec::as_slice);
            if entry.node_generation != *node_generation || entry.slices.as_deref() != Some(group) {
                let read: Vec<&ServiceSlice> = group
                    .iter()
                    .filter_map(|at| match &slices[at].read {
                        Some(Ok((_, s))) => Some(s),
                        _ => None,
                    })
                    .collect();
                entry.plan = plan_service(&entry.object, &read, view);
                entry.slices = Some(group.to_vec());
                entry.node_generation = *node_generation;
                *replanned += 1;
            }
            assembly.add(&entry.plan);
        }

        let before = (slices.len(), services.len());
        slices.retain(|_, e| e.seen == pass);
        services.retain(|_, e| e.seen == pass);
        if (slices.len(), services.len()) != before {
            keys.retain(|_, k| Arc::strong_count(k) > 1);
        }

        rejected.extend(assembly.rejected);
        rejected.sort();
        LbPlan {
            frontends: assembly.frontends.into_values().collect(),
            health_checks: assembly.health_checks.into_values().collect(),
            rejected,
            snat_addr: view.snat_addr,
        }
    }

    /// How many Services the last pass planned anew (the others came from the cache).
    pub fn replanned(&self) -> usize {
        self.replanned
    }
}

fn slice_name(slices: &HashMap<usize, CachedSlice>, at: usize) -> &str {
    match &slices[&at].read {
        Some(Ok((_, s))) => &s.name,
        _ => "",
    }
}

#[cfg(test)]
#[path = "plan_cache_tests.rs"]
mod tests;
