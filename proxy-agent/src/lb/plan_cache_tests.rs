//! The cached planner against the fresh one, on the golden scenarios and on edits of them.

use std::sync::Arc;

use k8s_openapi::api::discovery::v1::Endpoint;

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
        for (a, b) in first.frontends.iter().zip(&second.frontends) {
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
            slice.endpoints.push(Endpoint {
                addresses: vec![format!("10.244.99.{}", i + 1)],
                node_name: Some(node.clone()),
                ..Default::default()
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
        spec.external_ips = spec.cluster_ip.clone().map(|ip| vec![ip]);
    }
    let mut cache = PlanCache::default();
    let first = cache.plan(&snapshot, &[], &node);
    assert_eq!(first, plan(&snapshot, &node));
    for j in 0..snapshot.endpoint_slices.len() {
        Arc::make_mut(&mut snapshot.endpoint_slices[j]).endpoints.pop();
        assert_eq!(
            cache.plan(&snapshot, &[], &node),
            plan(&snapshot, &node),
            "slice {j}"
        );
    }
}
