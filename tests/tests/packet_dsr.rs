//! Direct server return (`--nodeport-mode=dsr`) through BPF_PROG_TEST_RUN, in a node-shaped network
//! namespace of the test's own. Asserted: the entry node DNATs only (the client's address and port kept),
//! carries the frontend in the IPv4 option (decoded here independently of the datapath), and sends the
//! packet with XDP_TX or a tc redirect; the backend's node records a conntrack entry flagged DSR with the
//! frontend, delivers the packet without the option (byte for byte the packet a DNAT alone would give),
//! and its pod's answer leaves from the frontend address and port, straight to the client. Checksums
//! are verified independently of the datapath.

use std::net::Ipv4Addr;

use common::{
    config::{DatapathConfig, config_flags},
    ct::ct_flags,
    dsr,
    lb::svc_flags,
    net::{Be16, Be32},
};
use tests::{
    datapath::{TestDatapath, TestService},
    netns::{
        CLIENT, LOCAL_BACKEND, NODE, NODE_MAC, PEER_NODE_MAC as PEER_MAC, REMOTE_BACKEND,
        enter_node_netns as node_netns,
    },
    packet::{self, ETH_LEN, Ipv4Packet, PROTO_SCTP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN},
    privilege,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

/// The peer node 10.0.0.11 as the entry node of connections whose backend is on this node.
const PEER_NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

fn load(name: &str, flags: u32) -> TestDatapath {
    let mut dp = TestDatapath::load(name);
    dp.set_datapath_config(DatapathConfig {
        flags,
        maglev_size: 0,
        node_addr: u32::from_ne_bytes(NODE.octets()),
        local_port_min: 0,
        local_port_max: 0,
    });
    dp
}

fn assert_checksums(frame: &[u8], what: &str) {
    assert!(packet::ipv4_checksum_ok(frame), "{what}: IPv4 header checksum");
    assert!(packet::l4_checksum_ok(frame), "{what}: L4 checksum");
}

/// The frontend in the frame's DSR option, read by hand: the option must be the first one.
fn dsr_option(frame: &[u8]) -> Option<(Ipv4Addr, u16)> {
    let ihl = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    if ihl < 28 {
        return None;
    }
    let o = &frame[ETH_LEN + 20..ETH_LEN + 28];
    assert_eq!((o[0], o[1]), (158, 8), "the first option is DSR's: {o:?}");
    Some((
        Ipv4Addr::new(o[4], o[5], o[6], o[7]),
        u16::from_be_bytes([o[2], o[3]]),
    ))
}

fn build(proto: u8, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Ipv4Packet {
    match proto {
        PROTO_TCP => Ipv4Packet::tcp(src, sport, dst, dport),
        PROTO_UDP => Ipv4Packet::udp(src, sport, dst, dport),
        _ => Ipv4Packet::sctp(src, sport, dst, dport),
    }
}

fn with_option(mut p: Ipv4Packet, frontend: Ipv4Addr, port: u16) -> Ipv4Packet {
    p.options = dsr::encode(dsr::Frontend {
        addr: Be32::from_octets(frontend.octets()),
        port: Be16::new(port),
    })
    .to_vec();
    p
}

#[test]
fn entry_node_dnats_only_and_carries_the_frontend_in_an_ip_option() {
    if !privilege::require("entry_node_dnats_only_and_carries_the_frontend_in_an_ip_option") {
        return;
    }
    let ifindex = node_netns();
    let mut dp = load("dsr-entry", config_flags::NODEPORT_DSR);
    for (i, proto) in [PROTO_TCP, PROTO_UDP].into_iter().enumerate() {
        let mut svc = TestService::new(NODE, 30080, proto, 1 + i as u32);
        svc.flags = svc_flags::NODEPORT;
        svc.backends.push((REMOTE_BACKEND, 8080));
        dp.add_service(&svc);

        let request = build(proto, CLIENT, 40000, NODE, 30080).build();
        let out = dp.run_xdp_on("xdp_node", &request, ifindex);
        assert_eq!(out.action, XDP_TX, "proto {proto}: sent back out of the device");
        assert_eq!(
            out.packet.len(),
            request.len() + 8,
            "proto {proto}: 8 option bytes"
        );
        let seen = packet::read(&out.packet);
        assert_eq!((seen.src, seen.sport), (CLIENT, 40000), "proto {proto}: no SNAT");
        assert_eq!(
            (seen.dst, seen.dport),
            (REMOTE_BACKEND, 8080),
            "proto {proto}: DNAT"
        );
        assert_eq!(
            dsr_option(&out.packet),
            Some((NODE, 30080)),
            "proto {proto}: the frontend"
        );
        assert_eq!(
            (&out.packet[..6], &out.packet[6..12]),
            (&PEER_MAC[..], &NODE_MAC[..])
        );
        assert_checksums(&out.packet, "first packet");

        // Later packets of the flow keep their backend; a TCP connection's need no option (the
        // backend's node has it in conntrack), UDP datagrams carry it every time.
        let mut next = build(proto, CLIENT, 40000, NODE, 30080);
        next.tcp_flags = TCP_ACK;
        next.payload = b"second".to_vec();
        let out = dp.run_xdp_on("xdp_node", &next.build(), ifindex);
        assert_eq!(out.action, XDP_TX, "proto {proto}: later packet");
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (CLIENT, 40000, REMOTE_BACKEND, 8080)
        );
        let expected = (proto == PROTO_UDP).then_some((NODE, 30080));
        assert_eq!(
            dsr_option(&out.packet),
            expected,
            "proto {proto}: option on later packets"
        );
        assert_checksums(&out.packet, "later packet");
    }
    let entries = dp.conntrack();
    assert_eq!(
        entries.len(),
        4,
        "a forward and a reply entry per connection: {entries:?}"
    );
    for (k, e) in &entries {
        assert_eq!(
            e.flags & (ct_flags::NODEPORT | ct_flags::DSR | ct_flags::SNAT | ct_flags::SEEN_REPLY),
            ct_flags::NODEPORT | ct_flags::DSR,
            "{k:?}: DSR, no SNAT, no reply seen on the entry node"
        );
    }

    // A backend on this node is reached as in SNAT mode (DSR only concerns other nodes).
    let mut local = TestService::new(NODE, 30082, PROTO_TCP, 3);
    local.flags = svc_flags::NODEPORT;
    local.backends.push((LOCAL_BACKEND, 8080));
    dp.add_service(&local);
    dp.mark_backend_local(local.backend_id(0));
    let request = Ipv4Packet::tcp(CLIENT, 40003, NODE, 30082).build();
    assert_eq!(
        dp.run_xdp_on("xdp_node", &request, ifindex).action,
        XDP_PASS,
        "a veth: tc"
    );
    let out = dp.run("tc_from_node", &request);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let seen = packet::read(&out.packet);
    assert_eq!(
        (seen.src, seen.dst),
        (NODE, LOCAL_BACKEND),
        "SNAT to the node as before"
    );
    assert_eq!(dsr_option(&out.packet), None);

    // externalTrafficPolicy Local: unchanged, the client's address and no option.
    let mut etp_local = TestService::new(NODE, 30083, PROTO_TCP, 4);
    etp_local.flags = svc_flags::NODEPORT | svc_flags::EXT_POLICY_LOCAL;
    etp_local.backends.push((LOCAL_BACKEND, 8080));
    dp.add_service(&etp_local);
    let out = dp.run(
        "tc_from_node",
        &Ipv4Packet::tcp(CLIENT, 40004, NODE, 30083).build(),
    );
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let seen = packet::read(&out.packet);
    assert_eq!((seen.src, seen.dst), (CLIENT, LOCAL_BACKEND));
    assert_eq!(dsr_option(&out.packet), None);
}

#[test]
fn tc_inserts_the_option_for_what_xdp_leaves_and_snat_mode_adds_none() {
    if !privilege::require("tc_inserts_the_option_for_what_xdp_leaves_and_snat_mode_adds_none") {
        return;
    }
    node_netns();
    let mut dp = load("dsr-tc", config_flags::NODEPORT_DSR);
    for (i, proto) in [PROTO_TCP, PROTO_SCTP].into_iter().enumerate() {
        let mut svc = TestService::new(NODE, 30090, proto, 10 + i as u32);
        svc.flags = svc_flags::NODEPORT;
        svc.backends.push((REMOTE_BACKEND, 7777));
        dp.add_service(&svc);
        // As with no XDP attached: tc sees the client's first packet.
        let request = build(proto, CLIENT, 40010, NODE, 30090).build();
        let out = dp.run("tc_from_node", &request);
        assert_eq!(out.action, TC_ACT_REDIRECT, "proto {proto}");
        assert_eq!(out.packet.len(), request.len() + 8, "proto {proto}");
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (CLIENT, 40010, REMOTE_BACKEND, 7777)
        );
        assert_eq!(dsr_option(&out.packet), Some((NODE, 30090)), "proto {proto}");
        assert_checksums(&out.packet, "tc request");
    }

    // SNAT mode (the default), read at run time from the config: translated as before, no option.
    dp.set_datapath_config(DatapathConfig {
        flags: 0,
        maglev_size: 0,
        node_addr: u32::from_ne_bytes(NODE.octets()),
        local_port_min: 0,
        local_port_max: 0,
    });
    let mut svc = TestService::new(NODE, 30091, PROTO_TCP, 12);
    svc.flags = svc_flags::NODEPORT;
    svc.backends.push((REMOTE_BACKEND, 7777));
    dp.add_service(&svc);
    let out = dp.run(
        "tc_from_node",
        &Ipv4Packet::tcp(CLIENT, 40010, NODE, 30091).build(),
    );
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let seen = packet::read(&out.packet);
    assert_eq!((seen.src, seen.dst), (NODE, REMOTE_BACKEND));
    assert_eq!(dsr_option(&out.packet), None);
}

#[test]
fn backend_node_records_the_frontend_delivers_without_the_option_and_answers_from_the_frontend() {
    if !privilege::require(
        "backend_node_records_the_frontend_delivers_without_the_option_and_answers_from_the_frontend",
    ) {
        return;
    }
    node_netns();
    // The backend's node: its own NodePort mode does not matter for what arrives marked.
    let mut dp = load("dsr-backend", 0);
    for proto in [PROTO_TCP, PROTO_UDP] {
        let plain = build(proto, CLIENT, 40020, LOCAL_BACKEND, 8080);
        let marked = with_option(plain.clone(), PEER_NODE, 30080).build();
        let out = dp.run("tc_from_node", &marked);
        assert_eq!(
            out.action, TC_ACT_REDIRECT,
            "proto {proto}: towards the pod's veth"
        );
        assert_eq!(
            out.packet,
            plain.build(),
            "proto {proto}: the option taken out, nothing else changed"
        );
        assert_checksums(&out.packet, "delivered");

        let entries = dp.conntrack();
        let (_, entry) = entries
            .iter()
            .find(|(k, _)| {
                k.proto == proto
                    && k.saddr == Be32::from_octets(LOCAL_BACKEND.octets())
                    && k.sport == Be16::new(8080)
                    && k.daddr == Be32::from_octets(CLIENT.octets())
                    && k.dport == Be16::new(40020)
            })
            .unwrap_or_else(|| panic!("proto {proto}: no reply entry in {entries:?}"));
        assert_eq!(entry.flags, ct_flags::REPLY | ct_flags::NODEPORT | ct_flags::DSR);
        assert_eq!(
            (entry.orig_saddr, entry.wire_port),
            (Be32::from_octets(PEER_NODE.octets()), Be16::new(30080)),
            "proto {proto}: the frontend"
        );

        let mut reply = build(proto, LOCAL_BACKEND, 8080, CLIENT, 40020);
        reply.tcp_flags = TCP_SYN | TCP_ACK;
        let out = dp.run("tc_from_pod", &reply.build());
        assert_eq!(out.action, TC_ACT_REDIRECT, "proto {proto}: routed out directly");
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport),
            (PEER_NODE, 30080),
            "proto {proto}: from the frontend"
        );
        assert_eq!(
            (seen.dst, seen.dport),
            (CLIENT, 40020),
            "proto {proto}: to the client"
        );
        assert_checksums(&out.packet, "reply");
    }

    // Another option, or none, is not DSR's: left to the stack untouched.
    let mut other = Ipv4Packet::tcp(CLIENT, 40021, LOCAL_BACKEND, 8080);
    other.options = vec![7, 7, 4, 0, 0, 0, 0, 1]; // record route, one empty slot
    for p in [
        other.build(),
        Ipv4Packet::tcp(CLIENT, 40022, LOCAL_BACKEND, 8080).build(),
    ] {
        let out = dp.run("tc_from_node", &p);
        assert_eq!((out.action, &out.packet), (TC_ACT_OK, &p));
    }
}

#[test]
fn a_connection_through_both_nodes_reaches_the_backend_with_the_clients_address() {
    if !privilege::require("a_connection_through_both_nodes_reaches_the_backend_with_the_clients_address") {
        return;
    }
    node_netns();
    // Entry and backend node are two datapaths in one namespace: the entry node's service names the
    // pod behind lxc0 as a backend elsewhere, so what it sends is what the backend's node receives.
    let mut entry = load("dsr-both-entry", config_flags::NODEPORT_DSR);
    let mut svc = TestService::new(NODE, 30100, PROTO_TCP, 20);
    svc.flags = svc_flags::NODEPORT;
    svc.backends.push((LOCAL_BACKEND, 8080));
    entry.add_service(&svc);
    let mut backend_node = load("dsr-both-backend", 0);

    let sent = entry.run(
        "tc_from_node",
        &Ipv4Packet::tcp(CLIENT, 40030, NODE, 30100).build(),
    );
    assert_eq!(sent.action, TC_ACT_REDIRECT);
    let got = backend_node.run("tc_from_node", &sent.packet);
    assert_eq!(got.action, TC_ACT_REDIRECT);
    let seen = packet::read(&got.packet);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (CLIENT, 40030, LOCAL_BACKEND, 8080)
    );
    assert_eq!(dsr_option(&got.packet), None);
    assert_checksums(&got.packet, "delivered");

    let mut reply = Ipv4Packet::tcp(LOCAL_BACKEND, 8080, CLIENT, 40030);
    reply.tcp_flags = TCP_SYN | TCP_ACK;
    let out = backend_node.run("tc_from_pod", &reply.build());
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let seen = packet::read(&out.packet);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (NODE, 30100, CLIENT, 40030)
    );
    assert_checksums(&out.packet, "reply");
}
