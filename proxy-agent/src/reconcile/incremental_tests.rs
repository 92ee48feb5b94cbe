//! The in-place pass against the full one: over random sequences of plans, a reconciler that changes
//! only what changed performs exactly the operations of one that recomputes and diffs everything, and
//! both leave the same maps and ids.

use std::{net::Ipv4Addr, sync::Arc};

use common::lb::{SCOPE_EXTERNAL, SCOPE_INTERNAL, svc_flags};

use super::super::{DesiredMaps, FakeMaps, Ids, Reconciler};
use crate::lb::{Frontend, FrontendKind, LbPlan, PlannedBackend, Proto, ServicePortRef};

/// xorshift64: deterministic and enough to shuffle plans.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn random_frontend(rng: &mut Rng, addr: Ipv4Addr, port: u16, proto: Proto, scope: u8) -> Frontend {
    let mut backends: Vec<PlannedBackend> = (0..rng.below(5))
        .map(|_| {
            // A small pool, so that frontends share backends and flags must merge.
            let n = rng.below(8) as u8;
            PlannedBackend {
                addr: Ipv4Addr::new(10, 244, 0, n),
                port: 8080 + u16::from(n % 2),
                local: n.is_multiple_of(3),
                terminating: rng.chance(30),
                node_name: None,
            }
        })
        .collect();
    backends.sort_by_key(|b| (b.addr, b.port));
    backends.dedup_by_key(|b| (b.addr, b.port));
    let flags = if backends.is_empty() { svc_flags::REJECT } else { 0 };
    Frontend {
        service: ServicePortRef {
            service: std::sync::Arc::new(("ns".into(), format!("s{}", addr.octets()[3]))),
            port_name: String::new(),
        },
        kind: FrontendKind::ClusterIp,
        addr,
        port,
        proto,
        scope,
        flags,
        affinity_timeout: 0,
        backends,
        source_ranges: None,
    }
}

/// The next plan: most frontends kept (same allocation), some rebuilt equal, some changed, some
/// removed, some added.
fn evolve(rng: &mut Rng, last: &[Arc<Frontend>]) -> LbPlan {
    let mut frontends: Vec<Arc<Frontend>> = Vec::new();
    for f in last {
        match rng.below(10) {
            0 => {}
            1 => frontends.push(Arc::new((**f).clone())),
            2 => frontends.push(Arc::new(random_frontend(rng, f.addr, f.port, f.proto, f.scope))),
            _ => frontends.push(f.clone()),
        }
    }
    for _ in 0..rng.below(4) {
        let addr = Ipv4Addr::new(10, 96, 0, rng.below(12) as u8);
        let proto = [Proto::Tcp, Proto::Udp, Proto::Sctp][rng.below(3) as usize];
        let scope = if rng.chance(20) {
            SCOPE_INTERNAL
        } else {
            SCOPE_EXTERNAL
        };
        let port = 80 + rng.below(2) as u16;
        let key = (addr, port, proto, scope);
        if !frontends
            .iter()
            .any(|f| (f.addr, f.port, f.proto, f.scope) == key)
        {
            frontends.push(Arc::new(random_frontend(rng, addr, port, proto, scope)));
        }
    }
    frontends.sort_by_key(|f| (f.addr, f.port, f.proto, f.scope));
    LbPlan {
        frontends: frontends.into(),
        ..LbPlan::default()
    }
}

#[test]
fn changing_in_place_performs_the_operations_of_a_full_pass() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15);
        let (mut fast, mut full) = (Reconciler::default(), Reconciler::default());
        let (mut fast_maps, mut full_maps) = (FakeMaps::new(), FakeMaps::new());
        let mut plan = LbPlan::default();
        for pass in 0..60 {
            plan = evolve(&mut rng, &plan.frontends);
            let a = fast.reconcile(&plan, &mut fast_maps).unwrap();
            full.require_dump();
            let b = full.reconcile(&plan, &mut full_maps).unwrap();
            assert_eq!(a, b, "seed {seed} pass {pass}");
            assert_eq!(fast_maps.maps, full_maps.maps, "seed {seed} pass {pass}");
            assert_eq!(fast.ids().len(), full.ids().len(), "seed {seed} pass {pass}");
        }
        assert_eq!(fast.full_passes(), 1, "seed {seed}: only the first pass is full");
    }
}

#[test]
fn a_full_id_space_falls_back_to_a_full_pass_with_the_same_result() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed * 0xD1B5_4A32_D192_ED03);
        // Room for a few backends only: some passes leave frontends out.
        let (mut fast, mut full) = (
            Reconciler::with_ids(Ids::with_limits(6, 64)),
            Reconciler::with_ids(Ids::with_limits(6, 64)),
        );
        let (mut fast_maps, mut full_maps) = (FakeMaps::new(), FakeMaps::new());
        let mut plan = LbPlan::default();
        for pass in 0..40 {
            plan = evolve(&mut rng, &plan.frontends);
            let a = fast.reconcile(&plan, &mut fast_maps).unwrap();
            full.require_dump();
            let b = full.reconcile(&plan, &mut full_maps).unwrap();
            assert_eq!(a.unfit, b.unfit, "seed {seed} pass {pass}");
            assert_eq!(fast_maps.maps, full_maps.maps, "seed {seed} pass {pass}");
            fast_maps.maps.check_references().unwrap();
        }
    }
}

#[test]
fn a_failed_write_in_place_is_finished_by_the_next_pass() {
    let mut rng = Rng(7);
    let mut reconciler = Reconciler::default();
    let mut maps = FakeMaps::new();
    let mut plan = evolve(&mut rng, &[]);
    while plan.frontends.len() < 6 {
        plan = evolve(&mut rng, &plan.frontends);
    }
    reconciler.reconcile(&plan, &mut maps).unwrap();
    let mut failed = false;
    for _ in 0..50 {
        let next = evolve(&mut rng, &plan.frontends);
        maps.fail_after = Some(0);
        if reconciler.reconcile(&next, &mut maps).is_err() {
            failed = true;
            // The next pass starts from a dump and leaves exactly the plan's entries.
            let dumps = reconciler.dumps();
            reconciler.reconcile(&next, &mut maps).unwrap();
            assert_eq!(reconciler.dumps(), dumps + 1);
            let (wanted, _) = super::super::desired(&next, &mut reconciler.ids().clone());
            assert_eq!(maps.maps, wanted);
            assert_eq!(reconciler.reconcile(&next, &mut maps).unwrap().ops, vec![]);
            break;
        }
        maps.fail_after = None;
        plan = next;
    }
    assert!(failed, "some pass had an operation to fail");
}

/// A resync of an unchanged plan diffs the dump against the state last written (no recomputation)
/// and keeps the users, so the changes after it are still made in place, with the full pass's result.
#[test]
fn a_resync_of_the_same_plan_keeps_changing_in_place() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed * 0xA076_1D64_78BD_642F);
        let (mut fast, mut full) = (Reconciler::default(), Reconciler::default());
        let (mut fast_maps, mut full_maps) = (FakeMaps::new(), FakeMaps::new());
        let mut plan = LbPlan::default();
        for pass in 0..40 {
            plan = evolve(&mut rng, &plan.frontends);
            fast.reconcile(&plan, &mut fast_maps).unwrap();
            if pass % 3 == 0 {
                // Someone removes an entry behind the agent's back; the resync puts it back.
                if let Some(&k) = fast_maps.maps.services.keys().next() {
                    fast_maps.maps.services.remove(&k);
                }
                assert!(fast.resync_from(fast_maps.maps.clone(), fast.writes()));
                fast.reconcile(&plan, &mut fast_maps).unwrap();
            }
            full.require_dump();
            full.reconcile(&plan, &mut full_maps).unwrap();
            assert_eq!(fast_maps.maps, full_maps.maps, "seed {seed} pass {pass}");
        }
        assert_eq!(
            fast.full_passes(),
            1 + 14,
            "seed {seed}: the first pass and the resyncs are full, the rest in place"
        );
        assert_eq!(fast.resyncs_from_written(), 14, "seed {seed}");
    }
}

/// A resync takes a dump read elsewhere only if no pass wrote since it was asked for (then it is a
/// picture of the maps), and ends with the full pass's maps; an entry removed behind the agent's back
/// comes back.
#[test]
fn a_resync_from_a_dump_read_elsewhere_ends_with_the_full_result() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed * 0x2545_F491_4F6C_DD1D);
        let (mut fast, mut full) = (Reconciler::default(), Reconciler::default());
        let (mut fast_maps, mut full_maps) = (FakeMaps::new(), FakeMaps::new());
        let mut plan = LbPlan::default();
        let (mut early, mut late) = (None, None);
        let (mut taken, mut refused) = (0, 0);
        for pass in 0..40 {
            // Asked before a pass that changes the plan, and before one that does not.
            match pass % 3 {
                0 => early = Some((fast_maps.maps.clone(), fast.writes())),
                1 => late = Some((fast_maps.maps.clone(), fast.writes())),
                _ => {}
            }
            if pass % 3 != 1 {
                plan = evolve(&mut rng, &plan.frontends);
            }
            if pass % 3 == 2 {
                // One dump a resync: in turn the one read before a pass that wrote, and the other.
                let chosen = if (pass / 3) % 2 == 0 {
                    early.take()
                } else {
                    late.take()
                };
                for (mut dump, at) in chosen.into_iter() {
                    let unchanged = fast.writes() == at;
                    if unchanged && let Some(&k) = dump.services.keys().next() {
                        fast_maps.maps.services.remove(&k);
                        dump.services.remove(&k);
                    }
                    // A dump read across writes is taken too, with the state last written.
                    assert!(fast.resync_from(dump, at), "seed {seed} pass {pass}");
                    if unchanged {
                        taken += 1;
                    } else {
                        refused += 1;
                    }
                }
            }
            fast.reconcile(&plan, &mut fast_maps).unwrap();
            full.require_dump();
            full.reconcile(&plan, &mut full_maps).unwrap();
            // Ids may differ (an id the older dump still showed stays held until the next dump),
            // what they stand for may not.
            assert_eq!(
                by_frontend(&fast_maps.maps),
                by_frontend(&full_maps.maps),
                "seed {seed} pass {pass}"
            );
            fast_maps.maps.check_references().unwrap();
            let slots = fast_maps.maps.services.len();
            let frontends = by_frontend(&fast_maps.maps);
            let entries: usize = frontends.values().map(|(_, _, b)| 1 + b.len()).sum();
            assert_eq!(slots, entries, "seed {seed} pass {pass}: no stray slot");
            let used: std::collections::BTreeSet<u32> = fast_maps
                .maps
                .services
                .values()
                .map(|v| v.backend_id)
                .filter(|&id| id != 0)
                .collect();
            assert_eq!(
                used.len(),
                fast_maps.maps.backends.len(),
                "seed {seed} pass {pass}: no unused backend left"
            );
            assert_eq!(
                fast_maps.maps.revnat.len(),
                full_maps.maps.revnat.len(),
                "seed {seed} pass {pass}: no unused rev-NAT left"
            );
        }
        assert_eq!(taken + refused, 13, "seed {seed}");
        assert!(
            taken > 0 && refused > 0,
            "seed {seed}: {taken} taken, {refused} refused"
        );
    }
}

/// Each frontend (slot 0) with its flags and count, its rev-NAT entry and its backends in slot order,
/// ids resolved.
fn by_frontend(
    maps: &DesiredMaps,
) -> std::collections::BTreeMap<
    common::lb::Lb4Key,
    (
        common::lb::Lb4Service,
        common::lb::RevNat4,
        Vec<common::lb::Backend4>,
    ),
> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in maps.services.iter().filter(|(k, _)| k.slot == 0) {
        let backends = (1..=v.count)
            .map(|slot| {
                let s = maps.services[&common::lb::Lb4Key { slot, ..*k }];
                maps.backends[&s.backend_id]
            })
            .collect();
        let revnat = maps.revnat[&v.rev_nat];
        out.insert(
            *k,
            (common::lb::Lb4Service { rev_nat: 0, ..*v }, revnat, backends),
        );
    }
    out
}

/// A resync diffed elsewhere (against the state written as it was when the resync asked, shared),
/// applied after passes that wrote in between, repairs what was changed behind the agent's back and
/// ends with the full pass's maps: the keys written since the request are left as written.
#[test]
fn a_resync_diffed_elsewhere_ends_with_the_full_result() {
    use super::super::resync::ResyncDiff;
    let mut taken = 0;
    for seed in 1..=20u64 {
        let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15);
        let (mut fast, mut full) = (Reconciler::default(), Reconciler::default());
        let (mut fast_maps, mut full_maps) = (FakeMaps::new(), FakeMaps::new());
        let mut plan = LbPlan::default();
        let mut asked = None;
        for pass in 0..45 {
            match pass % 5 {
                // The resync asks, with the state written now; passes until the dump is read write
                // and must leave that state as it was.
                1 => {
                    asked = fast.resync_request().map(|(t, written)| {
                        let copy = DesiredMaps::clone(&written);
                        (t, written, copy)
                    });
                }
                // Behind the agent's back, then the dump is read (a pass or two after the request),
                // diffed against the state of the request, and applied after another pass.
                3 => {
                    // A frontend entry (its slots stay: nothing dangles for the fake's checks) that the
                    // agent has not written since the request: one it wrote since and one changed
                    // behind its back after that are the next resync's (the dump diff skips the keys
                    // written since the request, whose dump values may be older than the write).
                    let touched = fast.touched.clone().unwrap_or_default();
                    let frontends = fast_maps
                        .maps
                        .services
                        .keys()
                        .filter(|k| k.slot == 0 && !touched.has_service(k));
                    if let Some(&k) = frontends.clone().nth(rng.below(4) as usize) {
                        fast_maps.maps.services.remove(&k);
                    }
                    let stray = 60_000 + rng.below(100) as u32;
                    fast_maps.maps.backends.insert(stray, Default::default());
                }
                _ => {}
            }
            let dump = (pass % 5 == 3).then(|| fast_maps.maps.clone());
            plan = evolve(&mut rng, &plan.frontends);
            fast.reconcile(&plan, &mut fast_maps).unwrap();
            if let Some(dump) = dump
                && let Some((ticket, written, copy)) = asked.take()
            {
                assert_eq!(
                    *written, copy,
                    "seed {seed} pass {pass}: the shared state stood still"
                );
                let diff = ResyncDiff::of(&written, &dump);
                drop(written);
                plan = evolve(&mut rng, &plan.frontends);
                fast.reconcile(&plan, &mut fast_maps).unwrap();
                if fast.resync_with(diff, ticket, &mut fast_maps).unwrap().is_some() {
                    taken += 1;
                } else {
                    // Void (the state written was replaced since): the daemon asks again, and in
                    // the end reads the maps on the loop, as here.
                    fast.require_dump();
                    fast.reconcile(&plan, &mut fast_maps).unwrap();
                }
            }
            full.require_dump();
            full.reconcile(&plan, &mut full_maps).unwrap();
            if pass % 5 != 3 {
                continue;
            }
            assert_eq!(
                by_frontend(&fast_maps.maps),
                by_frontend(&full_maps.maps),
                "seed {seed} pass {pass}"
            );
            assert!(
                !fast_maps.maps.backends.keys().any(|&id| id >= 60_000),
                "seed {seed} pass {pass}: the stray backend is gone"
            );
            assert_eq!(
                &fast_maps.maps,
                &**fast.written.as_ref().unwrap(),
                "seed {seed} pass {pass}: the maps hold what was written"
            );
        }
    }
    assert!(taken > 100, "only {taken} resyncs applied");
}
