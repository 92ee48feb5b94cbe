//! Reconcile behaviour on [`FakeMaps`] (which checks after every operation that nothing the datapath
//! follows dangles): idempotence, id restore across restarts, the operation order, recovery from a
//! failure in the middle of a pass, and frontends that do not fit.

use std::net::Ipv4Addr;

use crate::slim::Endpoint;
use common::lb::{Lb4Key, svc_flags};

use super::*;
use crate::{
    lb::{
        plan,
        tests::{check_golden, load},
    },
    snapshot::Snapshot,
};

fn plan_of(name: &str) -> (Snapshot, String, LbPlan) {
    let (snapshot, node, _) = load(name);
    let p = plan(&snapshot, &node);
    (snapshot, node, p)
}

/// Edits the endpoints of one EndpointSlice.
fn edit_slice(snapshot: &mut Snapshot, name: &str, edit: impl FnOnce(&mut Vec<Endpoint>)) {
    let slice = snapshot
        .endpoint_slices
        .iter_mut()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no slice {name}"));
    std::sync::Arc::make_mut(slice).edit_endpoints(edit);
}

fn endpoint(ip: &str, node: &str) -> Endpoint {
    Endpoint {
        address: ip.into(),
        node_name: Some(node.into()),
        ..Default::default()
    }
}

/// The phase of an operation in the documented order (see [`diff`]).
fn phase(op: &MapOp, desired: &DesiredMaps) -> u8 {
    match op {
        MapOp::UpsertBackend { .. } => 1,
        MapOp::UpsertService { key, .. } if key.slot != 0 => 2,
        MapOp::UpsertRevNat { .. } => 3,
        MapOp::UpsertService { .. } => 4,
        MapOp::DeleteService { key }
            if key.slot != 0 && desired.services.contains_key(&Lb4Key { slot: 0, ..*key }) =>
        {
            5
        }
        MapOp::DeleteService { .. } => 6,
        MapOp::DeleteRevNat { .. } | MapOp::DeleteBackend { .. } => 7,
    }
}

fn assert_ordered(ops: &[MapOp], desired: &DesiredMaps) {
    let phases: Vec<u8> = ops.iter().map(|op| phase(op, desired)).collect();
    assert!(
        phases.windows(2).all(|w| w[0] <= w[1]),
        "operations out of order: {phases:?}\n{}",
        render_ops(ops)
    );
}

fn render_ops(ops: &[MapOp]) -> String {
    ops.iter().map(|op| format!("{op}\n")).collect()
}

/// The maps hold exactly what a fresh reconcile with the same ids would write, and every id in use
/// is in the maps.
fn assert_no_leaks(reconciler: &Reconciler, maps: &FakeMaps, plan: &LbPlan) {
    let mut ids = reconciler.ids().clone();
    let (wanted, _) = desired(plan, &mut ids);
    assert_eq!(dump::render(&maps.maps), dump::render(&wanted));
    assert_eq!(
        reconciler.ids().len(),
        (maps.maps.backends.len(), maps.maps.revnat.len()),
        "ids in use vs map entries"
    );
    maps.maps.check_references().expect("consistent maps");
}

#[test]
fn a_second_pass_performs_no_operation() {
    let (_, _, plan) = plan_of("external");
    let mut maps = FakeMaps::new();
    let mut reconciler = Reconciler::default();
    let first = reconciler.reconcile(&plan, &mut maps).unwrap();
    assert!(!first.ops.is_empty());
    assert_ordered(&first.ops, &maps.maps);
    assert_eq!(maps.applied, first.ops);
    let second = reconciler.reconcile(&plan, &mut maps).unwrap();
    assert_eq!(second.ops, vec![]);
    assert!(diff(&maps.maps, &maps.maps).is_empty());
}

#[test]
fn a_restarted_reconciler_keeps_every_id_and_changes_nothing() {
    for name in ["clusterip", "external", "standalone", "topology"] {
        let (_, _, plan) = plan_of(name);
        let mut maps = FakeMaps::new();
        Reconciler::default().reconcile(&plan, &mut maps).unwrap();
        let before = maps.maps.clone();

        // A new agent process: only the pinned maps survive.
        let mut restarted = Reconciler::restore(&maps).unwrap();
        let outcome = restarted.reconcile(&plan, &mut maps).unwrap();
        assert_eq!(outcome.ops, vec![], "{name}: a restart rewrote entries");
        assert_eq!(maps.maps, before);
        assert_eq!(
            restarted.ids().len(),
            (before.backends.len(), before.revnat.len())
        );
    }
}

#[test]
fn a_restart_with_a_changed_plan_keeps_the_ids_of_what_stays() {
    let (mut snapshot, node, plan1) = plan_of("clusterip");
    let mut maps = FakeMaps::new();
    Reconciler::default().reconcile(&plan1, &mut maps).unwrap();
    let ids_before = Ids::restore(&maps.maps);

    // While the agent was down, the SCTP Service went away and a backend was added to "sticky".
    snapshot
        .services
        .retain(|s| s.metadata.name.as_deref() != Some("sctp-echo"));
    edit_slice(&mut snapshot, "sticky-1", |eps| {
        eps.push(endpoint("10.244.3.13", "node-c"))
    });
    let plan2 = plan(&snapshot, &node);

    let mut restarted = Reconciler::restore(&maps).unwrap();
    let outcome = restarted.reconcile(&plan2, &mut maps).unwrap();
    assert_ordered(&outcome.ops, &maps.maps);
    for f in plan2.frontends.iter() {
        let key = (f.addr, f.port, f.proto.number());
        if let Some(old) = ids_before.revnat(&key) {
            assert_eq!(restarted.ids().revnat(&key), Some(old), "{}", f.service);
        }
        for b in &f.backends {
            let key = (b.addr, b.port, f.proto.number());
            if let Some(old) = ids_before.backend(&key) {
                assert_eq!(restarted.ids().backend(&key), Some(old));
            }
        }
    }
    assert_no_leaks(&restarted, &maps, &plan2);
}

#[test]
fn endpoint_removed_and_added_ops_come_in_the_safe_order() {
    let (mut snapshot, node, plan1) = plan_of("clusterip");
    let mut maps = FakeMaps::new();
    let mut reconciler = Reconciler::default();
    reconciler.reconcile(&plan1, &mut maps).unwrap();

    // dns loses 10.244.1.5 (slot 1 of three frontends) — slot 1 must be rewritten before the count
    // shrinks and slot 2 goes; sticky gains a backend — the backend and slot before the count grows.
    edit_slice(&mut snapshot, "dns-abcde", |eps| {
        eps.retain(|e| e.address.to_string() != "10.244.1.5")
    });
    edit_slice(&mut snapshot, "sticky-1", |eps| {
        eps.push(endpoint("10.244.3.13", "node-c"))
    });
    let plan2 = plan(&snapshot, &node);
    let outcome = reconciler.reconcile(&plan2, &mut maps).unwrap();
    assert_ordered(&outcome.ops, &maps.maps);
    assert_no_leaks(&reconciler, &maps, &plan2);
    check_golden("clusterip-endpoint-change.ops", &render_ops(&outcome.ops));

    // Back again: the freed ids are reused.
    let outcome = reconciler.reconcile(&plan1, &mut maps).unwrap();
    assert_ordered(&outcome.ops, &maps.maps);
    assert_no_leaks(&reconciler, &maps, &plan1);
    let dns = (Ipv4Addr::new(10, 244, 1, 5), 53, 17);
    assert!(reconciler.ids().backend(&dns).is_some_and(|id| id <= 12));
}

#[test]
fn service_removed_deletes_frontend_then_slots_then_revnat_and_backends() {
    let (mut snapshot, node, plan1) = plan_of("conditions");
    let mut maps = FakeMaps::new();
    let mut reconciler = Reconciler::default();
    reconciler.reconcile(&plan1, &mut maps).unwrap();
    snapshot
        .services
        .retain(|s| s.metadata.name.as_deref() != Some("mixed"));
    let plan2 = plan(&snapshot, &node);
    let outcome = reconciler.reconcile(&plan2, &mut maps).unwrap();
    assert_ordered(&outcome.ops, &maps.maps);
    // 10.244.1.1:8080 is still a backend of "draining": it stays, now only as a terminating fallback.
    assert_eq!(
        render_ops(&outcome.ops),
        "upsert BE 1 10.244.1.1:8080/TCP flags=local+terminating\n\
         delete SVC 10.96.2.1:80/TCP slot=0\n\
         delete SVC 10.96.2.1:80/TCP slot=1\n\
         delete SVC 10.96.2.1:80/TCP slot=2\n\
         delete REVNAT 1\n\
         delete BE 2\n"
    );
    assert_no_leaks(&reconciler, &maps, &plan2);
}

#[test]
fn a_failure_in_the_middle_of_a_pass_is_finished_by_the_next_without_leaks() {
    let (mut snapshot, node, plan1) = plan_of("clusterip");
    edit_slice(&mut snapshot, "dns-abcde", |eps| {
        eps.retain(|e| e.address.to_string() != "10.244.1.5");
        eps.push(endpoint("10.244.3.5", "node-c"));
    });
    snapshot
        .services
        .retain(|s| s.metadata.name.as_deref() != Some("sticky-short"));
    let plan2 = plan(&snapshot, &node);

    for (from, to) in [(&plan1, &plan2), (&plan2, &plan1)] {
        let total = {
            let mut maps = FakeMaps::new();
            let mut r = Reconciler::default();
            r.reconcile(from, &mut maps).unwrap();
            r.reconcile(to, &mut maps).unwrap().ops.len()
        };
        assert!(total > 5);
        for fail_at in 0..total {
            let mut maps = FakeMaps::new();
            let mut reconciler = Reconciler::default();
            reconciler.reconcile(from, &mut maps).unwrap();
            maps.fail_after = Some(fail_at);
            let err = reconciler.reconcile(to, &mut maps).unwrap_err();
            assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
            maps.maps
                .check_references()
                .expect("a partial pass leaves consistent maps");

            // The retry may come from the same process or from a restarted one.
            for restart in [false, true] {
                let mut maps = maps.clone();
                let mut reconciler = if restart {
                    Reconciler::restore(&maps).unwrap()
                } else {
                    reconciler.clone()
                };
                let retry = reconciler.reconcile(to, &mut maps).unwrap();
                assert_ordered(&retry.ops, &maps.maps);
                assert_no_leaks(&reconciler, &maps, to);
                assert_eq!(reconciler.reconcile(to, &mut maps).unwrap().ops, vec![]);
            }
        }
    }
}

#[test]
fn duplicate_backend_entries_found_at_start_collapse_to_one_id() {
    let (_, _, plan) = plan_of("conditions");
    let mut maps = FakeMaps::new();
    Reconciler::default().reconcile(&plan, &mut maps).unwrap();
    // A leftover copy of backend 1 under id 9 with a slot pointing at it (e.g. from an older agent).
    let be = maps.maps.backends[&1];
    maps.maps.backends.insert(9, be);
    let slot = maps
        .maps
        .services
        .iter_mut()
        .find(|(k, v)| k.slot != 0 && v.backend_id == 1)
        .unwrap();
    slot.1.backend_id = 9;

    let mut reconciler = Reconciler::restore(&maps).unwrap();
    let outcome = reconciler.reconcile(&plan, &mut maps).unwrap();
    assert_ordered(&outcome.ops, &maps.maps);
    assert!(outcome.ops.contains(&MapOp::DeleteBackend { id: 9 }));
    assert_no_leaks(&reconciler, &maps, &plan);
}

#[test]
fn a_frontend_that_does_not_fit_is_left_out_whole() {
    let (_, _, plan) = plan_of("clusterip");
    // Room for 4 backends: dns/TCP and dns/UDP take 2 each; nothing else fits.
    let mut reconciler = Reconciler::with_ids(Ids::with_limits(4, 100));
    let mut maps = FakeMaps::new();
    let outcome = reconciler.reconcile(&plan, &mut maps).unwrap();
    let unfit: Vec<String> = outcome.unfit.iter().map(|u| u.frontend.clone()).collect();
    assert_eq!(
        unfit,
        [
            "10.96.0.10:9153/TCP",
            "10.96.1.20:7777/SCTP",
            "10.96.1.30:80/TCP",
            "10.96.1.31:80/TCP"
        ]
    );
    assert!(outcome.unfit.iter().all(|u| u.reason.contains("backend id")));
    let frontends: Vec<_> = maps.maps.services.iter().filter(|(k, _)| k.slot == 0).collect();
    assert_eq!(frontends.len(), 2);
    assert!(
        frontends
            .iter()
            .all(|(_, v)| v.count == 2 && v.flags & svc_flags::REJECT == 0)
    );
    maps.maps.check_references().unwrap();
    assert_eq!(reconciler.reconcile(&plan, &mut maps).unwrap().ops, vec![]);
}

#[test]
fn fake_maps_refuse_an_operation_that_would_dangle() {
    let (_, _, plan) = plan_of("clusterip");
    let mut maps = FakeMaps::new();
    Reconciler::default().reconcile(&plan, &mut maps).unwrap();
    let err = maps.apply(&MapOp::DeleteBackend { id: 1 }).unwrap_err();
    assert!(err.to_string().contains("dangling"), "{err}");
    assert!(maps.maps.backends.contains_key(&1));
}

#[test]
fn passes_diff_against_the_state_written_and_dump_only_when_asked() {
    let (_, _, plan) = plan_of("external");
    let mut maps = FakeMaps::new();
    let mut reconciler = Reconciler::restore(&maps).unwrap();
    assert_eq!(reconciler.dumps(), 1, "the start reads the pinned maps");
    reconciler.reconcile(&plan, &mut maps).unwrap();
    for _ in 0..3 {
        assert_eq!(reconciler.reconcile(&plan, &mut maps).unwrap().ops, vec![]);
    }
    assert_eq!(reconciler.dumps(), 1, "no dump without a failure or a resync");
    reconciler.require_dump();
    assert_eq!(reconciler.reconcile(&plan, &mut maps).unwrap().ops, vec![]);
    assert_eq!(reconciler.dumps(), 2);
}

#[test]
fn a_write_failure_makes_the_next_pass_start_from_a_dump_and_nothing_is_lost() {
    let (mut snapshot, node, plan1) = plan_of("clusterip");
    let mut maps = FakeMaps::new();
    let mut reconciler = Reconciler::default();
    reconciler.reconcile(&plan1, &mut maps).unwrap();
    edit_slice(&mut snapshot, "dns-abcde", |eps| {
        eps.push(endpoint("10.244.3.5", "node-c"));
    });
    let plan2 = plan(&snapshot, &node);
    // The second write of the pass fails: the maps hold part of plan2, the reconciler must not
    // believe they hold all of it (or plan1).
    maps.fail_after = Some(1);
    assert!(reconciler.reconcile(&plan2, &mut maps).is_err());
    let dumps = reconciler.dumps();
    let retry = reconciler.reconcile(&plan2, &mut maps).unwrap();
    assert_eq!(reconciler.dumps(), dumps + 1, "the retry dumps the maps");
    assert!(!retry.ops.is_empty(), "the rest of plan2 is written");
    assert_no_leaks(&reconciler, &maps, &plan2);
    // And back: the in-memory state is exact again.
    reconciler.reconcile(&plan1, &mut maps).unwrap();
    assert_no_leaks(&reconciler, &maps, &plan1);
}

#[test]
fn the_resync_prunes_an_entry_written_behind_the_agents_back() {
    let (_, _, plan) = plan_of("clusterip");
    let mut maps = FakeMaps::new();
    let mut reconciler = Reconciler::default();
    reconciler.reconcile(&plan, &mut maps).unwrap();
    let clean = maps.maps.clone();
    // Someone else adds a frontend with one slot and its backend, and changes a backend of ours.
    let stray_backend = *maps.maps.backends.values().next().unwrap();
    maps.maps.backends.insert(4000, stray_backend);
    let stray = super::desired::key(Ipv4Addr::new(10, 96, 99, 99), 80, 6, 0, 0);
    maps.maps.services.insert(
        stray,
        common::lb::Lb4Service {
            count: 1,
            ..Default::default()
        },
    );
    maps.maps.services.insert(
        Lb4Key { slot: 1, ..stray },
        common::lb::Lb4Service {
            backend_id: 4000,
            ..Default::default()
        },
    );
    let (&ours, _) = maps.maps.backends.iter().next().unwrap();
    maps.maps.backends.get_mut(&ours).unwrap().flags ^= common::lb::backend_flags::TERMINATING;
    // Between resyncs the agent trusts what it wrote.
    assert_eq!(reconciler.reconcile(&plan, &mut maps).unwrap().ops, vec![]);
    // The resync's dump, read elsewhere with nothing written since: diffed against the state last
    // written (the same plan), which prunes as well as a pass that recomputes everything.
    assert!(reconciler.resync_from(maps.maps.clone(), reconciler.writes()));
    let resync = reconciler.reconcile(&plan, &mut maps).unwrap();
    assert_eq!(reconciler.resyncs_from_written(), 1);
    // Our backend back to what it was, the stray frontend, its slot and its backend gone.
    assert_eq!(resync.ops.len(), 4, "{}", render_ops(&resync.ops));
    assert_eq!(maps.maps, clean);
    assert_eq!(reconciler.reconcile(&plan, &mut maps).unwrap().ops, vec![]);
}
