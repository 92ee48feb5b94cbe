//! ClusterIP translation through BPF_PROG_TEST_RUN: crafted packets into tc_from_pod / tc_to_pod with
//! seeded service maps; asserted verdicts, addresses, ports and checksums (verified independently of the
//! datapath), and conntrack state.

use std::net::Ipv4Addr;

use common::{
    ct::{CtEntry4, CtKey4, ct_flags},
    lb::RevNat4,
    map_names,
    net::{Be16, Be32},
};
use tests::{
    datapath::{TestDatapath, TestService},
    packet::{self, Ipv4Packet, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN},
    privilege,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND_A: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const BACKEND_B: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 6);
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

fn one_backend(proto: u8, rev_nat: u32) -> TestService {
    let mut svc = TestService::new(VIP, 80, proto, rev_nat);
    svc.backends.push((BACKEND_A, 8080));
    svc
}

fn assert_checksums(frame: &[u8], what: &str) {
    assert!(packet::ipv4_checksum_ok(frame), "{what}: IPv4 header checksum");
    assert!(packet::l4_checksum_ok(frame), "{what}: L4 checksum");
}

#[test]
fn service_translation_round_trip_for_tcp_udp_sctp() {
    if !privilege::require("service_translation_round_trip_for_tcp_udp_sctp") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-rt");
    for (i, proto) in [PROTO_TCP, PROTO_UDP, PROTO_SCTP].into_iter().enumerate() {
        dp.add_service(&one_backend(proto, 1 + i as u32));
        let request = match proto {
            PROTO_TCP => Ipv4Packet::tcp(CLIENT, 40000, VIP, 80),
            PROTO_UDP => Ipv4Packet::udp(CLIENT, 40000, VIP, 80),
            _ => Ipv4Packet::sctp(CLIENT, 40000, VIP, 80),
        };
        let out = dp.run("tc_from_pod", &request.build());
        assert_eq!(out.action, TC_ACT_OK, "proto {proto}: request verdict");
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport),
            (CLIENT, 40000),
            "proto {proto}: source untouched"
        );
        assert_eq!(
            (seen.dst, seen.dport),
            (BACKEND_A, 8080),
            "proto {proto}: DNAT to the backend"
        );
        assert_checksums(&out.packet, &format!("proto {proto} request"));

        let reply = match proto {
            PROTO_TCP => {
                let mut r = Ipv4Packet::tcp(BACKEND_A, 8080, CLIENT, 40000);
                r.tcp_flags = TCP_SYN | TCP_ACK;
                r
            }
            PROTO_UDP => Ipv4Packet::udp(BACKEND_A, 8080, CLIENT, 40000),
            _ => Ipv4Packet::sctp(BACKEND_A, 8080, CLIENT, 40000),
        };
        let out = dp.run("tc_to_pod", &reply.build());
        assert_eq!(out.action, TC_ACT_OK, "proto {proto}: reply verdict");
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport),
            (VIP, 80),
            "proto {proto}: reply comes from VIP:port"
        );
        assert_eq!(
            (seen.dst, seen.dport),
            (CLIENT, 40000),
            "proto {proto}: reply reaches the client"
        );
        assert_checksums(&out.packet, &format!("proto {proto} reply"));
    }
    let ct = dp.conntrack();
    assert_eq!(ct.len(), 6, "a forward and a reply entry per connection: {ct:?}");
    assert!(
        ct.iter()
            .filter(|(_, e)| e.flags & ct_flags::REPLY != 0)
            .all(|(_, e)| e.flags & ct_flags::SEEN_REPLY != 0)
    );
}

#[test]
fn udp_without_checksum_keeps_it_zero() {
    if !privilege::require("udp_without_checksum_keeps_it_zero") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-udp0");
    dp.add_service(&one_backend(PROTO_UDP, 1));
    let mut p = Ipv4Packet::udp(CLIENT, 40001, VIP, 80);
    p.udp_zero_checksum = true;
    let out = dp.run("tc_from_pod", &p.build());
    assert_eq!(out.action, TC_ACT_OK);
    let seen = packet::read(&out.packet);
    assert_eq!(seen.dst, BACKEND_A);
    assert_eq!(
        &out.packet[seen.l4 + 6..seen.l4 + 8],
        &[0, 0],
        "a zero UDP checksum must stay zero"
    );
    assert!(packet::ipv4_checksum_ok(&out.packet));
}

#[test]
fn ip_options_shift_the_l4_header_and_are_translated() {
    if !privilege::require("ip_options_shift_the_l4_header_and_are_translated") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-opts");
    dp.add_service(&one_backend(PROTO_TCP, 1));
    let mut p = Ipv4Packet::tcp(CLIENT, 40002, VIP, 80);
    p.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let out = dp.run("tc_from_pod", &p.build());
    assert_eq!(out.action, TC_ACT_OK);
    let seen = packet::read(&out.packet);
    assert_eq!(seen.l4, 14 + 24);
    assert_eq!((seen.dst, seen.dport), (BACKEND_A, 8080));
    assert_checksums(&out.packet, "options");
}

#[test]
fn non_service_fragments_and_truncated_packets_pass_untouched() {
    if !privilege::require("non_service_fragments_and_truncated_packets_pass_untouched") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-pass");
    dp.add_service(&one_backend(PROTO_TCP, 1));
    let other = Ipv4Packet::tcp(CLIENT, 40003, BACKEND_B, 80).build();
    let wrong_port = Ipv4Packet::tcp(CLIENT, 40003, VIP, 81).build();
    let wrong_proto = Ipv4Packet::udp(CLIENT, 40003, VIP, 80).build();
    let mut frag = Ipv4Packet::tcp(CLIENT, 40003, VIP, 80);
    frag.frag_offset = 10;
    let frag = frag.build();
    let truncated = Ipv4Packet::tcp(CLIENT, 40003, VIP, 80).build()[..36].to_vec();
    for (what, p) in [
        ("other destination", other),
        ("other port", wrong_port),
        ("other protocol", wrong_proto),
        ("later fragment", frag),
        ("truncated TCP header", truncated),
    ] {
        let out = dp.run("tc_from_pod", &p);
        assert_eq!(out.action, TC_ACT_OK, "{what}");
        assert_eq!(out.packet, p, "{what}: unchanged");
    }
    assert!(
        dp.conntrack().is_empty(),
        "nothing tracked for untranslated packets"
    );
}

#[test]
fn open_connection_keeps_its_backend_and_a_deleted_backend_rebalances() {
    if !privilege::require("open_connection_keeps_its_backend_and_a_deleted_backend_rebalances") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-stable");
    let svc = one_backend(PROTO_UDP, 1);
    dp.add_service(&svc);
    let first = dp.run("tc_from_pod", &Ipv4Packet::udp(CLIENT, 40004, VIP, 80).build());
    assert_eq!(packet::read(&first.packet).dst, BACKEND_A);
    // The endpoint set changes: slot 1 now names backend B. The open flow keeps A while A exists.
    let b_id = 77;
    dp.add_backend(b_id, BACKEND_B, 9090, PROTO_UDP);
    dp.set_slot(&svc, 1, b_id);
    let again = dp.run("tc_from_pod", &Ipv4Packet::udp(CLIENT, 40004, VIP, 80).build());
    assert_eq!(
        packet::read(&again.packet).dst,
        BACKEND_A,
        "established flow keeps its backend"
    );
    let fresh = dp.run("tc_from_pod", &Ipv4Packet::udp(CLIENT, 40005, VIP, 80).build());
    assert_eq!(
        packet::read(&fresh.packet).dst,
        BACKEND_B,
        "new flows use the new slots"
    );
    // Backend A is deleted: the next datagram of the old flow re-balances at once (no stale UDP flow).
    dp.remove_backend(svc.backend_id(0));
    let moved = dp.run("tc_from_pod", &Ipv4Packet::udp(CLIENT, 40004, VIP, 80).build());
    let seen = packet::read(&moved.packet);
    assert_eq!(
        (seen.dst, seen.dport),
        (BACKEND_B, 9090),
        "flow of a deleted backend moves"
    );
    assert_checksums(&moved.packet, "re-balanced");
}

#[test]
fn tcp_connection_outlives_its_endpoint() {
    if !privilege::require("tcp_connection_outlives_its_endpoint") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-tcpkeep");
    let svc = one_backend(PROTO_TCP, 1);
    dp.add_service(&svc);
    let syn = dp.run("tc_from_pod", &Ipv4Packet::tcp(CLIENT, 40010, VIP, 80).build());
    assert_eq!(packet::read(&syn.packet).dst, BACKEND_A);
    // The endpoint turns not-ready and leaves the Service; its pod still serves the open connection.
    let b_id = 77;
    dp.add_backend(b_id, BACKEND_B, 9090, PROTO_TCP);
    dp.set_slot(&svc, 1, b_id);
    dp.remove_backend(svc.backend_id(0));
    let mut ack = Ipv4Packet::tcp(CLIENT, 40010, VIP, 80);
    ack.tcp_flags = TCP_ACK;
    let out = dp.run("tc_from_pod", &ack.build());
    let seen = packet::read(&out.packet);
    assert_eq!(
        (seen.dst, seen.dport),
        (BACKEND_A, 8080),
        "the open TCP connection keeps its backend"
    );
    assert_checksums(&out.packet, "kept");
}

#[test]
fn replies_are_restored_from_the_entry_and_older_entries_through_the_rev_nat_map() {
    if !privilege::require("replies_are_restored_from_the_entry_and_older_entries_through_the_rev_nat_map") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-frontend");
    dp.add_service(&one_backend(PROTO_TCP, 1));
    let syn = dp.run("tc_from_pod", &Ipv4Packet::tcp(CLIENT, 40020, VIP, 80).build());
    assert_eq!(packet::read(&syn.packet).dst, BACKEND_A);
    let reply_key = CtKey4 {
        saddr: Be32::from_octets(BACKEND_A.octets()),
        daddr: Be32::from_octets(CLIENT.octets()),
        sport: Be16::new(8080),
        dport: Be16::new(40020),
        proto: PROTO_TCP,
        _pad: 0,
        _pad2: 0,
    };
    let entry = dp
        .conntrack()
        .into_iter()
        .find(|(k, _)| *k == reply_key)
        .map(|(_, e)| e)
        .expect("the connection's reply entry");
    assert_eq!(entry.flags & ct_flags::FRONTEND, ct_flags::FRONTEND, "{entry:?}");
    assert_eq!(
        (entry.rewrite_addr, entry.rewrite_port),
        (Be32::from_octets(VIP.octets()), Be16::new(80)),
        "the reply entry holds the frontend"
    );
    let reply = || {
        let mut r = Ipv4Packet::tcp(BACKEND_A, 8080, CLIENT, 40020);
        r.tcp_flags = TCP_ACK;
        r.build()
    };
    // Runs the backend's answer through tc_to_pod; checks verdict, addressing and checksums.
    let answer = |dp: &mut TestDatapath, want: (Ipv4Addr, u16, Ipv4Addr, u16), what: &str| {
        let out = dp.run("tc_to_pod", &reply());
        assert_eq!(out.action, TC_ACT_OK, "{what}");
        let seen = packet::read(&out.packet);
        assert_eq!((seen.src, seen.sport, seen.dst, seen.dport), want, "{what}");
        assert_checksums(&out.packet, what);
    };
    // The Service's rev-NAT entry goes (the Service was deleted): as with kube-proxy's conntrack, the
    // open connection's answers still come from VIP:port.
    dp.hash_map::<u32, RevNat4>(map_names::LB4_REVNAT)
        .remove(&1)
        .unwrap();
    answer(&mut dp, (VIP, 80, CLIENT, 40020), "restored from the entry");

    // An entry as a datapath before FRONTEND wrote it (the backend in the rewrite fields): restored
    // through the rev-NAT map, so connections opened before an upgrade keep working after it.
    let older = CtEntry4 {
        rewrite_addr: Be32::from_octets(BACKEND_A.octets()),
        rewrite_port: Be16::new(8080),
        flags: entry.flags & !ct_flags::FRONTEND,
        ..entry
    };
    dp.hash_map::<CtKey4, CtEntry4>(map_names::CT4)
        .insert(reply_key, older, 0)
        .unwrap();
    answer(
        &mut dp,
        (BACKEND_A, 8080, CLIENT, 40020),
        "an older entry whose rev-NAT id is gone is left alone",
    );
    let rev = RevNat4 {
        addr: Be32::from_octets(VIP.octets()),
        port: Be16::new(80),
        _pad: 0,
    };
    dp.hash_map::<u32, RevNat4>(map_names::LB4_REVNAT)
        .insert(1, rev, 0)
        .unwrap();
    answer(
        &mut dp,
        (VIP, 80, CLIENT, 40020),
        "restored through the rev-NAT map",
    );
}

#[test]
fn random_pick_spreads_over_all_backends() {
    if !privilege::require("random_pick_spreads_over_all_backends") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-spread");
    let mut svc = TestService::new(VIP, 80, PROTO_TCP, 1);
    svc.backends = vec![
        (BACKEND_A, 8080),
        (BACKEND_B, 8080),
        (Ipv4Addr::new(10, 244, 4, 7), 8080),
    ];
    dp.add_service(&svc);
    let mut hits = std::collections::BTreeMap::<Ipv4Addr, u32>::new();
    for port in 0..300u16 {
        let out = dp.run(
            "tc_from_pod",
            &Ipv4Packet::tcp(CLIENT, 20000 + port, VIP, 80).build(),
        );
        *hits.entry(packet::read(&out.packet).dst).or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(
        hits.values().all(|&n| n >= 45),
        "each backend gets at least 15%: {hits:?}"
    );
}

#[test]
fn session_affinity_sticks_to_one_backend() {
    if !privilege::require("session_affinity_sticks_to_one_backend") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-affinity");
    let mut svc = TestService::new(VIP, 80, PROTO_TCP, 1);
    svc.backends = vec![(BACKEND_A, 8080), (BACKEND_B, 8080)];
    svc.flags = common::lb::svc_flags::AFFINITY;
    svc.affinity_timeout = 10800;
    dp.add_service(&svc);
    let mut seen = std::collections::BTreeSet::new();
    for port in 0..50u16 {
        let out = dp.run(
            "tc_from_pod",
            &Ipv4Packet::tcp(CLIENT, 30000 + port, VIP, 80).build(),
        );
        seen.insert(packet::read(&out.packet).dst);
    }
    assert_eq!(
        seen.len(),
        1,
        "50 connections from one client reach one backend: {seen:?}"
    );
}

#[test]
fn hairpin_to_itself_is_snated_and_sent_back() {
    if !privilege::require("hairpin_to_itself_is_snated_and_sent_back") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-hairpin");
    let mut svc = TestService::new(VIP, 80, PROTO_TCP, 1);
    svc.backends = vec![(CLIENT, 8080)];
    dp.add_service(&svc);
    let out = dp.run("tc_from_pod", &Ipv4Packet::tcp(CLIENT, 40006, VIP, 80).build());
    assert_eq!(out.action, TC_ACT_REDIRECT, "sent straight back into the pod");
    let seen = packet::read(&out.packet);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (HAIRPIN, 40006, CLIENT, 8080)
    );
    assert_checksums(&out.packet, "hairpin request");
    // The pod answers the hairpin address; the answer must come back from VIP:port.
    let mut answer = Ipv4Packet::tcp(CLIENT, 8080, HAIRPIN, 40006);
    answer.tcp_flags = TCP_SYN | TCP_ACK;
    let out = dp.run("tc_from_pod", &answer.build());
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let seen = packet::read(&out.packet);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (VIP, 80, CLIENT, 40006)
    );
    assert_checksums(&out.packet, "hairpin reply");
}

#[test]
fn no_endpoints_refuses_tcp_with_rst_and_udp_with_icmp() {
    if !privilege::require("no_endpoints_refuses_tcp_with_rst_and_udp_with_icmp") {
        return;
    }
    let mut dp = TestDatapath::load("clusterip-reject");
    for (rev_nat, proto) in [(1, PROTO_TCP), (2, PROTO_UDP), (3, PROTO_SCTP)] {
        let mut svc = TestService::new(VIP, 80, proto, rev_nat);
        svc.flags = common::lb::svc_flags::REJECT;
        dp.add_service(&svc);
    }
    let syn = Ipv4Packet::tcp(CLIENT, 40007, VIP, 80);
    let out = dp.run("tc_from_pod", &syn.build());
    assert_eq!(out.action, TC_ACT_REDIRECT, "RST sent back to the pod");
    let rst = packet::read(&out.packet);
    assert_eq!((rst.src, rst.sport, rst.dst, rst.dport), (VIP, 80, CLIENT, 40007));
    assert_eq!(rst.tcp_flags, TCP_RST | TCP_ACK);
    assert_eq!(
        rst.ack,
        syn.seq + 1 + syn.payload.len() as u32,
        "RST acknowledges the SYN and its data"
    );
    assert_eq!(out.packet.len(), 14 + 20 + 20, "RST carries no payload");
    assert_checksums(&out.packet, "RST");

    for (proto, request) in [
        (PROTO_UDP, Ipv4Packet::udp(CLIENT, 40008, VIP, 80).build()),
        (PROTO_SCTP, Ipv4Packet::sctp(CLIENT, 40008, VIP, 80).build()),
    ] {
        let out = dp.run("tc_from_pod", &request);
        assert_eq!(out.action, TC_ACT_REDIRECT, "proto {proto}: ICMP sent back");
        let icmp = packet::read(&out.packet);
        assert_eq!((icmp.src, icmp.dst, icmp.proto), (VIP, CLIENT, PROTO_ICMP));
        assert_eq!(
            &out.packet[34..36],
            &[3, 3],
            "destination unreachable / port unreachable"
        );
        assert_eq!(
            &out.packet[42..62],
            &request[14..34],
            "quotes the offending IP header"
        );
        assert_eq!(
            &out.packet[62..70],
            &request[34..42],
            "and the first 8 bytes of its payload"
        );
        assert_checksums(&out.packet, "ICMP");
    }

    let mut rst_in = Ipv4Packet::tcp(CLIENT, 40009, VIP, 80);
    rst_in.tcp_flags = TCP_RST;
    assert_eq!(
        dp.run("tc_from_pod", &rst_in.build()).action,
        TC_ACT_SHOT,
        "a RST is never answered"
    );
}
