//! The cached planner against the fresh one, on the golden scenarios and on edits of them.

use std::sync::Arc;

use crate::slim::Endpoint;

use super::PlanCache;
use crate::lb::{plan, tests::load};

const SCENARIOS: [&str; 9] = [
    "clusterip",
    "conditions",
    "external",
    "north-south",
    "skipped",
    "slices",
    "standalone",
    "topology",
    "traffic-policy",
];

#[test]
fn an_unchanged_snapshot_is_planned_from_the_cache_and_equals_a_fresh_plan() {
    let mut cache = PlanCache::default();
    for name in SCENARIOS {
        let (snapshot, node, _) = load(name);
        let first = cache.plan(&snapshot, &[], &node);
        assert_eq!(first, plan(&snapshot, &node), "{name}");
        assert_eq!(cache.replanned(), snapshot.services.len(), "{name}: all new");
        let second = cache.plan(&snapshot, &[], &node);
        assert_eq!(second, first, "{name}");
        assert_eq!(cache.replanned(), 0, "{name}: nothing changed");
        for (a, b) in first.frontends.iter().zip(second.frontends.iter()) {
            assert!(
                Arc::ptr_eq(a, b),
                "{name}: an unchanged frontend keeps its allocation"
            );
        }
    }
}

#[test]
fn a_changed_slice_replans_its_service_only() {
    for name in ["clusterip", "slices", "topology", "traffic-policy", "north-south"] {
        let (mut snapshot, node, _) = load(name);
        let mut cache = PlanCache::default();
        cache.plan(&snapshot, &[], &node);
        for i in 0..snapshot.endpoint_slices.len() {
            let slice = Arc::make_mut(&mut snapshot.endpoint_slices[i]);
            slice.edit_endpoints(|e| {
                e.push(Endpoint {
                    address: format!("10.244.99.{}", i + 1).as_str().into(),
                    node_name: Some(node.as_str().into()),
                    ..Default::default()
                })
            });
            let cached = cache.plan(&snapshot, &[], &node);
            assert_eq!(cached, plan(&snapshot, &node), "{name}: slice {i}");
            assert!(
                cache.replanned() <= 1,
                "{name}: slice {i} replanned {}",
                cache.replanned()
            );
        }
    }
}

#[test]
fn removed_and_added_objects_and_a_node_change_give_the_fresh_plan() {
    for name in SCENARIOS {
        let (mut snapshot, node, _) = load(name);
        let mut cache = PlanCache::default();
        cache.plan(&snapshot, &[], &node);
        // A Service goes, then a slice, then the first Service comes back as a new object.
        if let Some(gone) = snapshot.services.pop() {
            assert_eq!(
                cache.plan(&snapshot, &[], &node),
                plan(&snapshot, &node),
                "{name}"
            );
            snapshot.endpoint_slices.pop();
            assert_eq!(
                cache.plan(&snapshot, &[], &node),
                plan(&snapshot, &node),
                "{name}"
            );
            snapshot.services.insert(0, Arc::new((*gone).clone()));
            assert_eq!(
                cache.plan(&snapshot, &[], &node),
                plan(&snapshot, &node),
                "{name}"
            );
        }
        // The node's addresses change: every Service is planned again.
        if let Some(n) = snapshot
            .nodes
            .iter_mut()
            .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
        {
            Arc::make_mut(n).metadata.labels = None;
            let cached = cache.plan(&snapshot, &[], &node);
            assert_eq!(cached, plan(&snapshot, &node), "{name}");
            assert_eq!(cache.replanned(), snapshot.services.len(), "{name}");
        }
        // Another node's view of the same objects.
        assert_eq!(
            cache.plan(&snapshot, &[], "elsewhere"),
            plan(&snapshot, "elsewhere"),
            "{name}"
        );
    }
}

#[test]
fn a_service_claiming_one_address_twice_keeps_its_first_claim_when_patched() {
    let (mut snapshot, node, _) = load("clusterip");
    // The clusterIP as an externalIP too: each port's ExternalIp claim is a silent duplicate of its
    // ClusterIp claim, which must stay.
    for service in &mut snapshot.services {
        let spec = Arc::make_mut(service).spec.as_mut().unwrap();
        spec.external_ips = spec
            .cluster_ip
            .clone()
            .map(|ip| vec![ip.into_string()].into_boxed_slice());
    }
    let mut cache = PlanCache::default();
    let first = cache.plan(&snapshot, &[], &node);
    assert_eq!(first, plan(&snapshot, &node));
    for j in 0..snapshot.endpoint_slices.len() {
        Arc::make_mut(&mut snapshot.endpoint_slices[j]).edit_endpoints(|e| {
            e.pop();
        });
        assert_eq!(
            cache.plan(&snapshot, &[], &node),
            plan(&snapshot, &node),
            "slice {j}"
        );
    }
}

/// xorshift64: deterministic edits.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Random sequences of the edits sources make (a slice rewritten, made invalid, moved to another
/// Service, reordered, removed, added; a Service rewritten or reordered): after each, the cached plan
/// equals the fresh one, whichever of the cache's paths (positions compared, or a full walk) it took.
#[test]
fn random_edits_give_the_fresh_plan() {
    for name in SCENARIOS {
        for seed in 1..=12u64 {
            let (mut snapshot, node, _) = load(name);
            let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15);
            let mut cache = PlanCache::default();
            cache.plan(&snapshot, &[], &node);
            let services: Vec<String> = snapshot
                .services
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect();
            for step in 0..40 {
                let slices = snapshot.endpoint_slices.len();
                let edit = rng.below(9);
                match edit {
                    0..=2 if slices > 0 => {
                        let i = rng.below(slices);
                        let n = rng.below(250) + 1;
                        let slice = Arc::make_mut(&mut snapshot.endpoint_slices[i]);
                        if rng.below(2) == 0 || slice.endpoints.is_empty() {
                            slice.edit_endpoints(|e| {
                                e.push(Endpoint {
                                    address: format!("10.244.77.{n}").as_str().into(),
                                    node_name: Some(node.as_str().into()),
                                    ..Default::default()
                                })
                            });
                        } else {
                            slice.edit_endpoints(|e| {
                                e.pop();
                            });
                        }
                    }
                    3 if slices > 0 => {
                        let i = rng.below(slices);
                        Arc::make_mut(&mut snapshot.endpoint_slices[i]).edit_endpoints(|e| {
                            e.push(Endpoint {
                                address: "10.244.300.1".into(),
                                ..Default::default()
                            })
                        });
                    }
                    4 if slices > 0 && !services.is_empty() => {
                        let i = rng.below(slices);
                        let service = services[rng.below(services.len())].clone();
                        let slice = Arc::make_mut(&mut snapshot.endpoint_slices[i]);
                        slice
                            .metadata
                            .labels
                            .get_or_insert_default()
                            .insert("kubernetes.io/service-name".into(), service);
                    }
                    5 if slices > 1 => {
                        let (i, j) = (rng.below(slices), rng.below(slices));
                        snapshot.endpoint_slices.swap(i, j);
                    }
                    6 if slices > 0 => {
                        let i = rng.below(slices);
                        if rng.below(2) == 0 {
                            snapshot.endpoint_slices.remove(i);
                        } else {
                            let mut copy = (*snapshot.endpoint_slices[i]).clone();
                            copy.metadata.name = Some(format!("copy-{step}"));
                            snapshot.endpoint_slices.push(Arc::new(copy));
                        }
                    }
                    7 if !snapshot.services.is_empty() => {
                        let i = rng.below(snapshot.services.len());
                        let service = Arc::make_mut(&mut snapshot.services[i]);
                        if let Some(ports) = service.spec.as_mut().and_then(|s| s.ports.as_mut())
                            && let Some(p) = ports.first_mut()
                        {
                            p.port = p.port % 1000 + 1;
                        }
                    }
                    8 if snapshot.services.len() > 1 => {
                        let n = snapshot.services.len();
                        snapshot.services.swap(rng.below(n), rng.below(n));
                    }
                    _ => {}
                }
                let walks = cache.slice_walks();
                assert_eq!(
                    cache.plan(&snapshot, &[], &node),
                    plan(&snapshot, &node),
                    "{name} seed {seed} step {step} edit {edit}"
                );
                let names: std::collections::BTreeSet<(Option<&String>, Option<&String>)> = snapshot
                    .services
                    .iter()
                    .map(|s| (s.metadata.namespace.as_ref(), s.metadata.name.as_ref()))
                    .chain(
                        snapshot
                            .endpoint_slices
                            .iter()
                            .map(|s| (s.metadata.namespace.as_ref(), s.service_name.as_ref())),
                    )
                    .collect();
                assert!(
                    cache.interned() <= names.len(),
                    "{name} seed {seed} step {step}: keys of gone objects are dropped"
                );
                if snapshot.endpoint_slices.len() == slices {
                    assert_eq!(
                        cache.slice_walks(),
                        walks,
                        "{name} seed {seed} step {step} edit {edit}: as many slices, found by position"
                    );
                }
            }
        }
    }
}

#[test]
fn one_rewritten_slice_of_many_is_found_by_position() {
    let (mut snapshot, node, _) = load("clusterip");
    let mut cache = PlanCache::default();
    cache.plan(&snapshot, &[], &node);
    assert_eq!(cache.slice_walks(), 1);
    let last = snapshot.endpoint_slices.len() - 1;
    Arc::make_mut(&mut snapshot.endpoint_slices[last]).edit_endpoints(|e| {
        e.pop();
    });
    assert_eq!(cache.plan(&snapshot, &[], &node), plan(&snapshot, &node));
    assert_eq!(cache.replanned(), 1);
    assert_eq!(cache.slice_walks(), 1, "found by position");
    // The same allocation twice (no source does this): the walk keeps one entry per allocation.
    snapshot.endpoint_slices.push(snapshot.endpoint_slices[0].clone());
    assert_eq!(cache.plan(&snapshot, &[], &node), plan(&snapshot, &node));
    Arc::make_mut(&mut snapshot.endpoint_slices[0]).edit_endpoints(|e| {
        e.pop();
    });
    assert_eq!(cache.plan(&snapshot, &[], &node), plan(&snapshot, &node));
}
