//! BPF_PROG_TEST_RUN packet tables for the foundation programs: each program passes traffic untouched
//! and counts it in its own counter slot.

use std::net::Ipv4Addr;

use tests::{datapath::TestDatapath, packet::Ipv4Packet, privilege};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

struct Case {
    desc: &'static str,
    program: &'static str,
    packet: Vec<u8>,
    expect_action: u32,
}

fn cases() -> Vec<Case> {
    let pod = Ipv4Addr::new(10, 244, 1, 2);
    let peer = Ipv4Addr::new(10, 244, 2, 3);
    let tcp = Ipv4Packet::tcp(pod, 40000, peer, 8080).build();
    let udp = Ipv4Packet::udp(pod, 40001, peer, 53).build();
    // Programs must not trip over truncated packets. XDP sees raw frames, so it gets a cut IPv4 header;
    // the kernel refuses to build a test skb without a whole IPv4 header, so tc gets a cut TCP header.
    let truncated_l3 = tcp[..20].to_vec();
    let truncated_l4 = tcp[..38].to_vec();
    vec![
        Case {
            desc: "pod sends TCP",
            program: "tc_from_pod",
            packet: tcp.clone(),
            expect_action: TC_ACT_OK,
        },
        Case {
            desc: "pod sends UDP",
            program: "tc_from_pod",
            packet: udp.clone(),
            expect_action: TC_ACT_OK,
        },
        Case {
            desc: "TCP delivered to pod",
            program: "tc_to_pod",
            packet: tcp.clone(),
            expect_action: TC_ACT_OK,
        },
        Case {
            desc: "truncated to pod",
            program: "tc_to_pod",
            packet: truncated_l4,
            expect_action: TC_ACT_OK,
        },
        Case {
            desc: "node receives TCP",
            program: "xdp_node",
            packet: tcp,
            expect_action: XDP_PASS,
        },
        Case {
            desc: "node receives UDP",
            program: "xdp_node",
            packet: udp,
            expect_action: XDP_PASS,
        },
        Case {
            desc: "truncated at node",
            program: "xdp_node",
            packet: truncated_l3,
            expect_action: XDP_PASS,
        },
    ]
}

#[test]
fn programs_pass_packets_unchanged_and_count_them() {
    if !privilege::require("programs_pass_packets_unchanged_and_count_them") {
        return;
    }
    let mut dp = TestDatapath::load("counters");
    let before: std::collections::BTreeMap<_, _> = dp.datapath.counters().unwrap().into_iter().collect();
    let mut expected_packets: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut expected_bytes: std::collections::BTreeMap<&str, u64> = Default::default();
    for case in cases() {
        let out = dp.run(case.program, &case.packet);
        assert_eq!(out.action, case.expect_action, "{}: verdict", case.desc);
        assert_eq!(
            out.packet, case.packet,
            "{}: the packet must leave unchanged",
            case.desc
        );
        *expected_packets.entry(case.program).or_default() += 1;
        *expected_bytes.entry(case.program).or_default() += case.packet.len() as u64;
    }
    let after: std::collections::BTreeMap<_, _> = dp.datapath.counters().unwrap().into_iter().collect();
    for (program, packets) in expected_packets {
        assert_eq!(
            after[program].packets - before[program].packets,
            packets,
            "{program}: packets counted"
        );
        assert_eq!(
            after[program].bytes - before[program].bytes,
            expected_bytes[program],
            "{program}: bytes counted"
        );
    }
}

#[test]
fn maps_are_pinned_where_the_agent_was_told() {
    if !privilege::require("maps_are_pinned_where_the_agent_was_told") {
        return;
    }
    let dp = TestDatapath::load("pins");
    let pinned = dp.datapath.pin_dir.join(common::map_names::PROG_STATS);
    assert!(pinned.exists(), "{} should exist", pinned.display());
}

#[test]
fn flow_records_the_ring_has_no_room_for_are_counted() {
    if !privilege::require("flow_records_the_ring_has_no_room_for_are_counted") {
        return;
    }
    let mut dp = TestDatapath::load("lost-records");
    let pod = Ipv4Addr::new(10, 244, 1, 2);
    dp.register_iface(1, pod);
    // Each spoofed packet is dropped and reported; nothing reads the ring, so it fills up. A record
    // takes 48 bytes plus the ring's 8-byte header.
    let ring = u64::from(common::event::EVENTS_RING_BYTES);
    let attempts = ring / 56 + 1000;
    let spoofed = Ipv4Packet::tcp(Ipv4Addr::new(10, 244, 9, 9), 40000, pod, 80).build();
    for _ in 0..attempts {
        assert_eq!(dp.run("tc_from_pod", &spoofed).action, TC_ACT_SHOT);
    }
    let lost = dp.datapath.flow_records_lost().expect("reading the counter");
    assert!(
        (1000..=attempts - ring / 64).contains(&lost),
        "{lost} of {attempts} records lost with a {ring}-byte ring"
    );
}
