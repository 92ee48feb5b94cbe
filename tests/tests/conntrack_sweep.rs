//! The agent's conntrack sweeper on the real pinned maps: it reads the whole table (in batches, more
//! entries than one batch holds), removes what expired or points at a deleted UDP backend, keeps the
//! rest, and counts both.

use std::net::Ipv4Addr;

use common::{
    ct::{CtEntry4, CtKey4, ct_flags},
    map_names,
    net::proto,
    net::{Be16, Be32},
};
use proxy_agent::datapath::{
    batch,
    conntrack::{CtStats, Timeouts, monotonic_ns, sweep},
};
use tests::{datapath::TestDatapath, privilege};

fn key(i: u32, p: u8) -> CtKey4 {
    CtKey4 {
        saddr: Be32::from_octets([10, 1, (i >> 8) as u8, i as u8]),
        daddr: Be32::from_octets([10, 96, 0, 1]),
        sport: Be16::new(20_000 + (i % 40_000) as u16),
        dport: Be16::new(80),
        proto: p,
        _pad: 0,
        _pad2: 0,
    }
}

#[test]
fn the_sweeper_reads_every_entry_and_removes_only_what_expired() {
    if !privilege::require("the_sweeper_reads_every_entry_and_removes_only_what_expired") {
        return;
    }
    let mut dp = TestDatapath::load("ct-sweep");
    const LIVE_BACKEND: u32 = 7;
    const GONE_BACKEND: u32 = 8;
    dp.add_backend(LIVE_BACKEND, Ipv4Addr::new(10, 244, 1, 7), 8080, proto::UDP);
    let now = monotonic_ns();
    let hour_ago = now.saturating_sub(3_600 * 1_000_000_000);
    // 10k entries: more than one batch. Every fifth a UDP flow to a deleted backend, every third of
    // the others a TCP entry idle for an hour before its first answer (expired: 60 s); the rest stay:
    // UDP flows to a live backend and established TCP.
    let (mut idle, mut gone) = (Vec::new(), Vec::new());
    let mut kept = Vec::new();
    {
        let mut ct = dp.hash_map::<CtKey4, CtEntry4>(map_names::CT4);
        for i in 0..10_000u32 {
            let (list, p, last_seen_ns, backend_id, flags) = if i % 5 == 0 {
                (&mut gone, proto::UDP, now, GONE_BACKEND, ct_flags::FORWARD)
            } else if i % 3 == 0 {
                (&mut idle, proto::TCP, hour_ago, 0, ct_flags::FORWARD)
            } else if i % 7 == 0 {
                (&mut kept, proto::UDP, now, LIVE_BACKEND, ct_flags::FORWARD)
            } else {
                let established = ct_flags::FORWARD | ct_flags::SEEN_REPLY;
                (&mut kept, proto::TCP, now, 0, established)
            };
            let k = key(i, p);
            list.push(k);
            let e = CtEntry4 {
                last_seen_ns,
                backend_id,
                flags,
                ..Default::default()
            };
            ct.insert(k, e, 0).unwrap();
        }
    }
    // The fast path is what is tested here: this kernel reads the table in batches.
    let data = aya::maps::MapData::from_pin(dp.pin_dir().join(map_names::CT4)).unwrap();
    let map = aya::maps::Map::from_map_data(data).unwrap();
    let read = batch::read_hash::<CtKey4, CtEntry4>(&map, 1 << 20)
        .unwrap()
        .expect("this kernel reads the conntrack table in batches");
    assert_eq!(read.len(), 10_000, "every entry, once");
    let distinct: std::collections::BTreeSet<CtKey4> = read.iter().map(|(k, _)| *k).collect();
    assert_eq!(distinct.len(), 10_000);
    let mut stats = CtStats::default();
    sweep(dp.pin_dir(), &Timeouts::default(), &mut stats).unwrap();
    assert_eq!(stats.expired_idle, idle.len() as u64, "{stats:?}");
    assert_eq!(stats.expired_backend_gone, gone.len() as u64, "{stats:?}");
    assert_eq!(stats.entries, kept.len() as u64, "{stats:?}");
    assert_eq!(stats.gc_runs, 1);
    let ct = dp.hash_map::<CtKey4, CtEntry4>(map_names::CT4);
    for k in idle.iter().chain(&gone) {
        assert!(ct.get(k, 0).is_err(), "{k:?} should be gone");
    }
    for k in &kept {
        assert!(ct.get(k, 0).is_ok(), "{k:?} should stay");
    }
    // A second pass finds nothing more to do.
    let mut again = CtStats::default();
    sweep(dp.pin_dir(), &Timeouts::default(), &mut again).unwrap();
    assert_eq!(
        (again.entries, again.expired_idle, again.expired_backend_gone),
        (kept.len() as u64, 0, 0)
    );
}
