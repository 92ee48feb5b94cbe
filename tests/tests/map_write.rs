//! The reconciler's writes to the load-balancing maps of a loaded datapath: runs of upserts go to the
//! kernel in batches (BPF_MAP_UPDATE_BATCH), and the maps must end up exactly as the same operations
//! applied one by one leave them (the in-memory maps of the reconciler's tests), over runs longer than
//! one batch, with deletes and rewrites of the same keys in between; a write that fails names the
//! operation it failed at, with the ones before it written.

use common::{
    lb::{Backend4, Lb4Key, Lb4Service, MAX_REVNAT, RevNat4},
    net::{Be16, Be32},
};
use proxy_agent::{
    datapath::{
        batch,
        lb_maps::{DUMPED, dump},
        map_source::PinnedMaps,
    },
    reconcile::{FakeMaps, LbMaps, MapOp},
};
use tests::{datapath::TestDatapath, privilege};

fn backend(id: u32, port: u16) -> MapOp {
    MapOp::UpsertBackend {
        id,
        backend: Backend4 {
            addr: Be32::from_octets([10, 1, (id >> 8) as u8, id as u8]),
            port: Be16::new(port),
            proto: 6,
            flags: 0,
        },
    }
}

fn key(i: u32, slot: u16) -> Lb4Key {
    Lb4Key {
        addr: Be32::from_octets([10, 96, (i >> 8) as u8, i as u8]),
        port: Be16::new(80),
        slot,
        proto: 6,
        scope: 0,
        _pad: [0; 2],
    }
}

fn revnat(id: u32) -> MapOp {
    MapOp::UpsertRevNat {
        id,
        revnat: RevNat4 {
            addr: Be32::from_octets([10, 96, (id >> 8) as u8, id as u8]),
            port: Be16::new(80),
            _pad: 0,
        },
    }
}

#[test]
fn batched_writes_leave_the_maps_as_single_writes_do() {
    if !privilege::require("batched_writes_leave_the_maps_as_single_writes_do") {
        return;
    }
    let mut dp = TestDatapath::load("map-write");
    // More than one batch (4096) in each long run.
    const SERVICES: u32 = 3_000;
    let mut ops = Vec::new();
    ops.extend((1..=2 * SERVICES).map(|id| backend(id, 8080)));
    for i in 0..SERVICES {
        for slot in 1..=2 {
            ops.push(MapOp::UpsertService {
                key: key(i, slot),
                value: Lb4Service {
                    backend_id: 2 * i + u32::from(slot),
                    ..Default::default()
                },
            });
        }
    }
    ops.extend((0..SERVICES).map(|i| MapOp::UpsertService {
        key: key(i, 0),
        value: Lb4Service {
            count: 2,
            rev_nat: i + 1,
            ..Default::default()
        },
    }));
    ops.extend((1..=SERVICES).map(revnat));
    // Short runs and single operations between long ones: deletes (one of an absent key), then the
    // same keys written again with other values, in the order given.
    ops.push(MapOp::DeleteBackend { id: 7 });
    ops.push(MapOp::DeleteBackend {
        id: 2 * SERVICES + 100,
    });
    ops.push(backend(7, 9090));
    ops.push(MapOp::DeleteService { key: key(5, 0) });
    ops.push(MapOp::DeleteRevNat { id: 6 });
    ops.extend((1..=5_000).map(|id| backend(id, 9443)));
    ops.push(revnat(6));

    let mut fake = FakeMaps::default();
    for op in &ops {
        fake.apply(op).unwrap();
    }
    dp.datapath
        .lb_maps()
        .apply_ops(&ops)
        .map_err(|(i, e)| format!("op {i}: {e:#}"))
        .unwrap();

    let pins = PinnedMaps::open(dp.pin_dir(), &DUMPED).unwrap();
    let written = dump(&pins).unwrap();
    assert_eq!(written.backends.len(), (2 * SERVICES) as usize);
    assert_eq!(written.backends[&7].port, Be16::new(9443));
    assert_eq!(written.backends[&(2 * SERVICES)].port, Be16::new(8080));
    assert!(!written.services.contains_key(&key(5, 0)));
    assert_eq!(written.services.len(), (3 * SERVICES - 1) as usize);
    assert_eq!(written.revnat.len(), SERVICES as usize);
    assert_eq!(written.backends, fake.maps.backends);
    assert_eq!(written.services, fake.maps.services);
    assert_eq!(written.revnat, fake.maps.revnat);

    // And the runs above went in batches: this kernel takes them for these maps (else the writes
    // fell back to one by one, and this test would not have checked the batches).
    let map = dp.datapath.ebpf_mut().map(common::map_names::LB4_REVNAT).unwrap();
    let (id, value) = match revnat(SERVICES + 1) {
        MapOp::UpsertRevNat { id, revnat } => (id, revnat),
        _ => unreachable!(),
    };
    let batched = batch::update_hash(map, &[id], &[value])
        .map_err(|(_, e)| e)
        .unwrap();
    assert!(
        batched,
        "the kernel refused a batch update of {}",
        common::map_names::LB4_REVNAT
    );
}

#[test]
fn a_batch_that_does_not_fit_names_the_first_entry_left_out() {
    if !privilege::require("a_batch_that_does_not_fit_names_the_first_entry_left_out") {
        return;
    }
    let mut dp = TestDatapath::load("map-write-full");
    // One more rev-NAT id than the map holds, in one run.
    let ops: Vec<MapOp> = (1..=MAX_REVNAT + 1).map(revnat).collect();
    let (failed, e) = dp.datapath.lb_maps().apply_ops(&ops).unwrap_err();
    assert_eq!(failed, MAX_REVNAT as usize, "{e:#}");
    let pins = PinnedMaps::open(dp.pin_dir(), &DUMPED).unwrap();
    let written = dump(&pins).unwrap();
    assert_eq!(written.revnat.len(), MAX_REVNAT as usize);
    assert!(written.revnat.contains_key(&MAX_REVNAT));
    assert!(!written.revnat.contains_key(&(MAX_REVNAT + 1)));
}
