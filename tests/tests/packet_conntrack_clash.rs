//! Two frontends reaching one backend from the same client port: without care both connections would
//! share one reply tuple (backend:port → client:port) and the second would take over the first's
//! replies. The datapath gives the second connection another source port, as netfilter's NAT does.
//! Crafted packets through BPF_PROG_TEST_RUN; checksums verified independently of the datapath.

use std::net::Ipv4Addr;

use common::ct::ct_flags;
use tests::{
    datapath::{TestDatapath, TestService},
    packet::{self, Ipv4Packet, PROTO_SCTP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN},
    privilege,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const VIP_1: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

fn packet(proto: u8, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Ipv4Packet {
    match proto {
        PROTO_TCP => Ipv4Packet::tcp(src, sport, dst, dport),
        PROTO_UDP => Ipv4Packet::udp(src, sport, dst, dport),
        _ => Ipv4Packet::sctp(src, sport, dst, dport),
    }
}

fn answer(proto: u8, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut p = packet(proto, src, sport, dst, dport);
    if proto == PROTO_TCP {
        p.tcp_flags = TCP_SYN | TCP_ACK;
    }
    p.build()
}

fn assert_checksums(frame: &[u8], what: &str) {
    assert!(packet::ipv4_checksum_ok(frame), "{what}: IPv4 header checksum");
    assert!(packet::l4_checksum_ok(frame), "{what}: L4 checksum");
}

/// Both Services point at the same backend; the backend id is shared, as the agent allocates one id
/// per (address, port, protocol).
fn two_services(dp: &mut TestDatapath, proto: u8, backend: Ipv4Addr) {
    let mut first = TestService::new(VIP_1, 80, proto, 1);
    first.backends.push((backend, 8080));
    let mut second = TestService::new(VIP_2, 80, proto, 2);
    second.backends.push((backend, 8080));
    dp.add_service(&first);
    dp.add_service(&second);
}

#[test]
fn one_client_port_through_two_vips_to_one_backend_keeps_both_connections_apart() {
    if !privilege::require("one_client_port_through_two_vips_to_one_backend_keeps_both_connections_apart") {
        return;
    }
    for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
        let mut dp = TestDatapath::load(&format!("clash-{proto}"));
        two_services(&mut dp, proto, BACKEND);
        let what = |s: &str| format!("proto {proto}: {s}");

        let first = dp.run("tc_from_pod", &packet(proto, CLIENT, 40000, VIP_1, 80).build());
        assert_eq!(first.action, TC_ACT_OK);
        let seen = packet::read(&first.packet);
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (CLIENT, 40000, BACKEND, 8080),
            "{}",
            what("the first connection keeps its port")
        );

        let second = dp.run("tc_from_pod", &packet(proto, CLIENT, 40000, VIP_2, 80).build());
        assert_eq!(second.action, TC_ACT_OK);
        let seen = packet::read(&second.packet);
        let moved = seen.sport;
        assert_eq!((seen.src, seen.dst, seen.dport), (CLIENT, BACKEND, 8080));
        assert!(
            moved != 40000 && moved >= 1024,
            "{}",
            what(&format!(
                "the second connection needs another source port, got {moved}"
            ))
        );
        assert_checksums(&second.packet, &what("second request"));

        // Each answer goes back to its own VIP, and the client sees its own port again.
        let out = dp.run("tc_to_pod", &answer(proto, BACKEND, 8080, CLIENT, 40000));
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (VIP_1, 80, CLIENT, 40000),
            "{}",
            what("first answer")
        );
        let out = dp.run("tc_to_pod", &answer(proto, BACKEND, 8080, CLIENT, moved));
        assert_eq!(out.action, TC_ACT_OK);
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (VIP_2, 80, CLIENT, 40000),
            "{}",
            what("second answer")
        );
        assert_checksums(&out.packet, &what("second answer"));

        // Later packets of both connections keep their ports.
        let again = dp.run("tc_from_pod", &packet(proto, CLIENT, 40000, VIP_2, 80).build());
        assert_eq!(
            packet::read(&again.packet).sport,
            moved,
            "{}",
            what("second, again")
        );
        let again = dp.run("tc_from_pod", &packet(proto, CLIENT, 40000, VIP_1, 80).build());
        assert_eq!(
            packet::read(&again.packet).sport,
            40000,
            "{}",
            what("first, again")
        );

        let ct = dp.conntrack();
        assert_eq!(ct.len(), 4, "{}: {ct:?}", what("two entries per connection"));
        let reallocated: Vec<_> = ct
            .iter()
            .filter(|(_, e)| e.flags & ct_flags::PORT_SNAT != 0)
            .collect();
        assert_eq!(
            reallocated.len(),
            2,
            "{}: {ct:?}",
            what("the second connection is marked")
        );
        assert!(
            reallocated
                .iter()
                .all(|(_, e)| (e.client_port.get(), e.wire_port.get()) == (40000, moved)),
            "{}",
            what("both entries record both ports")
        );
    }
}

#[test]
fn a_connection_back_to_the_same_vip_reuses_its_own_reply_tuple() {
    if !privilege::require("a_connection_back_to_the_same_vip_reuses_its_own_reply_tuple") {
        return;
    }
    // The forward entry gone (evicted, expired) while its reply entry lingers: the client reconnecting
    // from the same port to the same VIP is that connection again, not a clash.
    let mut dp = TestDatapath::load("clash-same");
    two_services(&mut dp, PROTO_UDP, BACKEND);
    let _ = dp.run(
        "tc_from_pod",
        &packet(PROTO_UDP, CLIENT, 40001, VIP_1, 80).build(),
    );
    let forward = dp
        .conntrack()
        .into_iter()
        .find(|(_, e)| e.flags & ct_flags::FORWARD != 0)
        .expect("forward entry")
        .0;
    dp.remove_conntrack(&forward);
    let out = dp.run(
        "tc_from_pod",
        &packet(PROTO_UDP, CLIENT, 40001, VIP_1, 80).build(),
    );
    let seen = packet::read(&out.packet);
    assert_eq!(
        (seen.sport, seen.dst),
        (40001, BACKEND),
        "no new port for the same connection"
    );
    assert!(
        dp.conntrack()
            .iter()
            .all(|(_, e)| e.flags & ct_flags::PORT_SNAT == 0)
    );
}

#[test]
fn a_backend_reaching_itself_through_two_vips_from_one_port_gets_both_answers() {
    if !privilege::require("a_backend_reaching_itself_through_two_vips_from_one_port_gets_both_answers") {
        return;
    }
    let mut dp = TestDatapath::load("clash-hairpin");
    two_services(&mut dp, PROTO_TCP, CLIENT);
    let out = dp.run(
        "tc_from_pod",
        &packet(PROTO_TCP, CLIENT, 40002, VIP_1, 80).build(),
    );
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let seen = packet::read(&out.packet);
    assert_eq!((seen.src, seen.sport), (HAIRPIN, 40002));
    let out = dp.run(
        "tc_from_pod",
        &packet(PROTO_TCP, CLIENT, 40002, VIP_2, 80).build(),
    );
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let seen = packet::read(&out.packet);
    let moved = seen.sport;
    assert_eq!((seen.src, seen.dst, seen.dport), (HAIRPIN, CLIENT, 8080));
    assert_ne!(moved, 40002, "the second hairpin connection needs another port");
    assert_checksums(&out.packet, "second hairpin request");

    for (port, vip) in [(40002, VIP_1), (moved, VIP_2)] {
        let out = dp.run("tc_from_pod", &answer(PROTO_TCP, CLIENT, 8080, HAIRPIN, port));
        assert_eq!(out.action, TC_ACT_REDIRECT);
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (vip, 80, CLIENT, 40002),
            "hairpin answer on port {port}"
        );
        assert_checksums(&out.packet, "hairpin answer");
    }
}
