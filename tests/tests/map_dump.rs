//! The agent's dump of the load-balancing maps (what a start restores ids from and a resync diffs
//! against), read from the pins as the resync's thread reads them: the batched read returns exactly
//! what a walk of every map entry by entry returns, over more entries than one batch holds.

use std::collections::BTreeMap;

use aya::maps::HashMap;
use common::{
    lb::{Backend4, Lb4Key, Lb4Service, RevNat4},
    map_names,
};
use proxy_agent::datapath::{
    lb_maps::{DUMPED, dump},
    map_source::PinnedMaps,
};
use tests::{bench::synthetic_service, datapath::TestDatapath, privilege};

#[test]
fn the_dump_holds_every_entry_of_every_map() {
    if !privilege::require("the_dump_holds_every_entry_of_every_map") {
        return;
    }
    let mut dp = TestDatapath::load("map-dump");
    const SERVICES: u32 = 2_000;
    for i in 0..SERVICES {
        dp.add_service(&synthetic_service(i));
    }
    let pins = PinnedMaps::open(dp.pin_dir(), &DUMPED).unwrap();
    let dumped = dump(&pins).unwrap();
    // Three backends a Service: a frontend and three slots each, three backends, one rev-NAT id.
    assert_eq!(dumped.services.len(), (SERVICES * 4) as usize);
    assert_eq!(dumped.backends.len(), (SERVICES * 3) as usize);
    assert_eq!(dumped.revnat.len(), SERVICES as usize);
    assert_eq!(
        dumped.services,
        walk::<Lb4Key, Lb4Service>(&mut dp, map_names::LB4_SERVICES)
    );
    assert_eq!(
        dumped.backends,
        walk::<u32, Backend4>(&mut dp, map_names::LB4_BACKENDS)
    );
    assert_eq!(
        dumped.revnat,
        walk::<u32, RevNat4>(&mut dp, map_names::LB4_REVNAT)
    );
}

/// Map `name`, walked entry by entry (aya's iterator).
fn walk<K: aya::Pod + Ord, V: aya::Pod>(dp: &mut TestDatapath, name: &str) -> BTreeMap<K, V> {
    HashMap::<_, K, V>::try_from(dp.datapath.ebpf_mut().map(name).unwrap())
        .unwrap()
        .iter()
        .map(Result::unwrap)
        .collect()
}
