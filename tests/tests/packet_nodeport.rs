//! North-south translation through BPF_PROG_TEST_RUN: crafted packets into `xdp_node`, `tc_from_node` and
//! (for replies of local backends) `tc_from_pod`, run in a network namespace of the test's own whose
//! routes and neighbours the programs' forwarding lookups read. Asserted: verdicts (XDP_TX for a next hop
//! back out of the device, XDP_PASS to tc for what XDP leaves, redirects from tc), addresses, ports, MAC
//! addresses, checksums verified independently of the datapath, drops by reason.

use std::net::Ipv4Addr;

use common::{config::DatapathConfig, ct::ct_flags, event::DropReason, lb::svc_flags};
use tests::{
    datapath::{TestDatapath, TestService},
    netns::{
        CLIENT, CLIENT_MAC, LOCAL_BACKEND, NODE, NODE_MAC, PEER_NODE_MAC as PEER_MAC, REMOTE_BACKEND,
        enter_node_netns as node_netns,
    },
    packet::{self, Ipv4Packet, PROTO_SCTP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN},
    privilege,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const INSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 130);

fn load(name: &str, maglev_size: u32) -> TestDatapath {
    let mut dp = TestDatapath::load(name);
    dp.set_datapath_config(DatapathConfig {
        flags: 0,
        maglev_size,
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

fn macs(frame: &[u8]) -> ([u8; 6], [u8; 6]) {
    (frame[..6].try_into().unwrap(), frame[6..12].try_into().unwrap())
}

#[test]
fn xdp_sends_node_port_traffic_to_a_remote_backend_and_its_reply_back() {
    if !privilege::require("xdp_sends_node_port_traffic_to_a_remote_backend_and_its_reply_back") {
        return;
    }
    let ifindex = node_netns();
    let mut dp = load("np-remote", 0);
    for (i, proto) in [PROTO_TCP, PROTO_UDP].into_iter().enumerate() {
        let mut svc = TestService::new(NODE, 30080, proto, 1 + i as u32);
        svc.flags = svc_flags::NODEPORT;
        svc.backends.push((REMOTE_BACKEND, 8080));
        dp.add_service(&svc);
        let build = |src, sport, dst, dport| match proto {
            PROTO_TCP => Ipv4Packet::tcp(src, sport, dst, dport),
            _ => Ipv4Packet::udp(src, sport, dst, dport),
        };

        let out = dp.run_xdp_on("xdp_node", &build(CLIENT, 40000, NODE, 30080).build(), ifindex);
        assert_eq!(out.action, XDP_TX, "proto {proto}: sent back out of the device");
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport),
            (NODE, 40000),
            "proto {proto}: SNAT to the node"
        );
        assert_eq!(
            (seen.dst, seen.dport),
            (REMOTE_BACKEND, 8080),
            "proto {proto}: DNAT"
        );
        assert_eq!(
            macs(&out.packet),
            (PEER_MAC, NODE_MAC),
            "proto {proto}: to the peer node's MAC"
        );
        assert_checksums(&out.packet, "request");

        let mut reply = build(REMOTE_BACKEND, 8080, NODE, 40000);
        reply.tcp_flags = TCP_SYN | TCP_ACK;
        let out = dp.run_xdp_on("xdp_node", &reply.build(), ifindex);
        assert_eq!(out.action, XDP_TX, "proto {proto}: reply sent back out");
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport),
            (NODE, 30080),
            "proto {proto}: from the NodePort"
        );
        assert_eq!(
            (seen.dst, seen.dport),
            (CLIENT, 40000),
            "proto {proto}: to the client"
        );
        assert_eq!(
            macs(&out.packet),
            (CLIENT_MAC, NODE_MAC),
            "proto {proto}: to the client's MAC"
        );
        assert_checksums(&out.packet, "reply");
    }
    let entries = dp.conntrack();
    assert_eq!(
        entries.len(),
        4,
        "a forward and a reply entry per connection: {entries:?}"
    );
    assert!(
        entries
            .iter()
            .all(|(_, e)| e.flags & ct_flags::NODEPORT != 0 && e.flags & ct_flags::SNAT != 0)
    );
}

#[test]
fn local_backends_and_sctp_are_left_to_tc_which_translates_and_redirects() {
    if !privilege::require("local_backends_and_sctp_are_left_to_tc_which_translates_and_redirects") {
        return;
    }
    let ifindex = node_netns();
    let mut dp = load("np-local", 0);
    // externalTrafficPolicy Local, backend on this node: the client's address is kept.
    let mut local = TestService::new(NODE, 30081, PROTO_TCP, 2);
    local.flags = svc_flags::NODEPORT | svc_flags::EXT_POLICY_LOCAL;
    local.backends.push((LOCAL_BACKEND, 8080));
    dp.add_service(&local);
    let request = Ipv4Packet::tcp(CLIENT, 40001, NODE, 30081).build();
    let out = dp.run_xdp_on("xdp_node", &request, ifindex);
    assert_eq!(
        out.action, XDP_PASS,
        "the next hop is a pod's veth: tc finishes it"
    );
    assert_eq!(out.packet, request, "XDP leaves the packet as it was");
    let out = dp.run("tc_from_node", &request);
    assert_eq!(out.action, TC_ACT_REDIRECT, "redirected towards the pod");
    let seen = packet::read(&out.packet);
    assert_eq!(
        (seen.src, seen.sport),
        (CLIENT, 40001),
        "eTP Local keeps the client"
    );
    assert_eq!((seen.dst, seen.dport), (LOCAL_BACKEND, 8080));
    assert_checksums(&out.packet, "eTP Local request");

    // The pod's answer leaves its veth already restored, then is routed out.
    let mut reply = Ipv4Packet::tcp(LOCAL_BACKEND, 8080, CLIENT, 40001);
    reply.tcp_flags = TCP_SYN | TCP_ACK;
    let out = dp.run("tc_from_pod", &reply.build());
    assert_eq!(out.action, TC_ACT_REDIRECT, "routed out of the node directly");
    let seen = packet::read(&out.packet);
    assert_eq!((seen.src, seen.sport), (NODE, 30081));
    assert_eq!((seen.dst, seen.dport), (CLIENT, 40001));
    assert_checksums(&out.packet, "eTP Local reply");

    // SCTP: the CRC32c covers the whole packet and is redone at tc.
    let mut sctp = TestService::new(NODE, 30077, PROTO_SCTP, 3);
    sctp.flags = svc_flags::NODEPORT;
    sctp.backends.push((REMOTE_BACKEND, 7777));
    dp.add_service(&sctp);
    let request = Ipv4Packet::sctp(CLIENT, 40002, NODE, 30077).build();
    let out = dp.run_xdp_on("xdp_node", &request, ifindex);
    assert_eq!(out.action, XDP_PASS, "SCTP is left to tc");
    assert_eq!(out.packet, request);
    let out = dp.run("tc_from_node", &request);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let seen = packet::read(&out.packet);
    assert_eq!((seen.src, seen.dst, seen.dport), (NODE, REMOTE_BACKEND, 7777));
    assert_checksums(&out.packet, "SCTP request");
}

#[test]
fn source_ranges_drop_outsiders_and_maglev_decides_the_backend() {
    if !privilege::require("source_ranges_drop_outsiders_and_maglev_decides_the_backend") {
        return;
    }
    let ifindex = node_netns();
    let mut dp = load("np-lb", 251);
    let mut lb = TestService::new(LB_IP, 80, PROTO_TCP, 4);
    lb.flags = svc_flags::LOADBALANCER | svc_flags::SOURCE_RANGES;
    for last in [11, 12, 13] {
        lb.backends.push((Ipv4Addr::new(10, 244, 2, last), 8080));
    }
    dp.add_service(&lb);
    dp.add_source_range(4, Ipv4Addr::new(203, 0, 113, 0), 25);
    // Every entry of the table names the second backend: the table, not chance, decides.
    dp.set_maglev(4, &[lb.backend_id(1)]);
    for sport in 41000..41010 {
        let out = dp.run_xdp_on(
            "xdp_node",
            &Ipv4Packet::tcp(INSIDE, sport, LB_IP, 80).build(),
            ifindex,
        );
        assert_eq!(out.action, XDP_TX, "port {sport}: inside the ranges");
        let seen = packet::read(&out.packet);
        assert_eq!(
            seen.dst,
            Ipv4Addr::new(10, 244, 2, 12),
            "port {sport}: the Maglev table's backend"
        );
        assert_checksums(&out.packet, "LB request");
    }
    let before = dp.drops(DropReason::SourceRange);
    let out = dp.run_xdp_on(
        "xdp_node",
        &Ipv4Packet::tcp(OUTSIDE, 41000, LB_IP, 80).build(),
        ifindex,
    );
    assert_eq!(out.action, XDP_DROP, "outside loadBalancerSourceRanges");
    assert_eq!(dp.drops(DropReason::SourceRange), before + 1);
}

/// kube-proxy's firewall judges every client of a LoadBalancer IP by loadBalancerSourceRanges, pods
/// included; the Service's ClusterIP stays open to them.
#[test]
fn pods_reaching_a_load_balancer_ip_are_judged_by_its_source_ranges() {
    if !privilege::require("pods_reaching_a_load_balancer_ip_are_judged_by_its_source_ranges") {
        return;
    }
    let mut dp = load("np-lb-pod", 0);
    let backend = Ipv4Addr::new(10, 244, 2, 11);
    let mut lb = TestService::new(LB_IP, 80, PROTO_TCP, 5);
    lb.flags = svc_flags::LOADBALANCER | svc_flags::SOURCE_RANGES;
    lb.backends.push((backend, 8080));
    dp.add_service(&lb);
    let cluster_ip = Ipv4Addr::new(10, 96, 0, 20);
    let mut cip = TestService::new(cluster_ip, 80, PROTO_TCP, 6);
    cip.backends.push((backend, 8080));
    dp.add_service(&cip);
    dp.add_source_range(5, Ipv4Addr::new(10, 244, 1, 0), 24);

    let inside = Ipv4Addr::new(10, 244, 1, 5);
    let out = dp.run("tc_from_pod", &Ipv4Packet::tcp(inside, 42000, LB_IP, 80).build());
    assert_eq!(out.action, TC_ACT_OK, "a pod inside the ranges");
    let seen = packet::read(&out.packet);
    assert_eq!((seen.src, seen.dst, seen.dport), (inside, backend, 8080));
    assert_checksums(&out.packet, "pod inside the ranges");

    let outside = Ipv4Addr::new(10, 244, 3, 5);
    let before = dp.drops(DropReason::SourceRange);
    let out = dp.run("tc_from_pod", &Ipv4Packet::tcp(outside, 42001, LB_IP, 80).build());
    assert_eq!(out.action, TC_ACT_SHOT, "a pod outside the ranges");
    assert_eq!(dp.drops(DropReason::SourceRange), before + 1);

    let out = dp.run(
        "tc_from_pod",
        &Ipv4Packet::tcp(outside, 42002, cluster_ip, 80).build(),
    );
    assert_eq!(out.action, TC_ACT_OK, "the ClusterIP is not guarded");
    assert_eq!(packet::read(&out.packet).dst, backend);
}

#[test]
fn other_traffic_passes_and_a_service_without_endpoints_is_refused_at_tc() {
    if !privilege::require("other_traffic_passes_and_a_service_without_endpoints_is_refused_at_tc") {
        return;
    }
    let ifindex = node_netns();
    let mut dp = load("np-other", 0);
    let mut empty = TestService::new(NODE, 30099, PROTO_TCP, 5);
    empty.flags = svc_flags::NODEPORT | svc_flags::REJECT;
    dp.add_service(&empty);
    // Not a service, and a ClusterIP (never served to outside clients): untouched.
    let mut cluster_ip = TestService::new(Ipv4Addr::new(10, 96, 0, 10), 80, PROTO_TCP, 6);
    cluster_ip.backends.push((REMOTE_BACKEND, 8080));
    dp.add_service(&cluster_ip);
    for (what, p) in [
        (
            "ssh to the node",
            Ipv4Packet::tcp(CLIENT, 40000, NODE, 22).build(),
        ),
        (
            "a ClusterIP from outside",
            Ipv4Packet::tcp(CLIENT, 40000, Ipv4Addr::new(10, 96, 0, 10), 80).build(),
        ),
    ] {
        let out = dp.run_xdp_on("xdp_node", &p, ifindex);
        assert_eq!((out.action, &out.packet), (XDP_PASS, &p), "{what}");
        let out = dp.run("tc_from_node", &p);
        assert_eq!(
            (out.action, &out.packet),
            (0, &p),
            "{what}: tc_from_node passes it too"
        );
    }
    let request = Ipv4Packet::tcp(CLIENT, 40000, NODE, 30099).build();
    let out = dp.run_xdp_on("xdp_node", &request, ifindex);
    assert_eq!(out.action, XDP_PASS, "the refusal is built at tc");
    let out = dp.run("tc_from_node", &request);
    assert_eq!(out.action, TC_ACT_REDIRECT, "RST sent back");
    let seen = packet::read(&out.packet);
    assert_eq!((seen.src, seen.dst), (NODE, CLIENT));
    assert_ne!(seen.tcp_flags & TCP_RST, 0);
    assert_checksums(&out.packet, "RST");
}

/// SNATed to the node, a connection never takes a source port from the node's ephemeral range: a node's
/// own socket on that port talking to the same backend would see its answers reverse-translated to
/// the outside client (kube-proxy's conntrack moves the NATed connection's port on such a clash).
#[test]
fn snat_to_the_node_stays_out_of_the_nodes_ephemeral_ports() {
    if !privilege::require("snat_to_the_node_stays_out_of_the_nodes_ephemeral_ports") {
        return;
    }
    let ifindex = node_netns();
    let mut dp = TestDatapath::load("np-ephemeral");
    dp.set_datapath_config(DatapathConfig {
        flags: 0,
        maglev_size: 0,
        node_addr: u32::from_ne_bytes(NODE.octets()),
        local_port_min: 32768,
        local_port_max: 60999,
    });
    let ephemeral = 32768..=60999;
    for (i, proto) in [PROTO_TCP, PROTO_UDP].into_iter().enumerate() {
        let mut svc = TestService::new(NODE, 30053, proto, 1 + i as u32);
        svc.flags = svc_flags::NODEPORT;
        svc.backends.push((REMOTE_BACKEND, 5353));
        dp.add_service(&svc);
        let build = |src, sport, dst, dport| match proto {
            PROTO_TCP => Ipv4Packet::tcp(src, sport, dst, dport),
            _ => Ipv4Packet::udp(src, sport, dst, dport),
        };

        let out = dp.run_xdp_on("xdp_node", &build(CLIENT, 20000, NODE, 30053).build(), ifindex);
        assert_eq!(out.action, XDP_TX, "proto {proto}");
        let seen = packet::read(&out.packet);
        assert_eq!(
            (seen.src, seen.sport),
            (NODE, 20000),
            "proto {proto}: a port outside the range is kept"
        );

        for sport in [32768, 40000, 60999] {
            let out = dp.run_xdp_on("xdp_node", &build(CLIENT, sport, NODE, 30053).build(), ifindex);
            assert_eq!(out.action, XDP_TX, "proto {proto} port {sport}");
            let seen = packet::read(&out.packet);
            assert_eq!(seen.src, NODE, "proto {proto} port {sport}: SNAT");
            assert!(
                seen.sport >= 1024 && !ephemeral.contains(&seen.sport),
                "proto {proto} port {sport}: moved out of the node's range, to {}",
                seen.sport
            );
            assert_checksums(&out.packet, "request");

            let mut reply = build(REMOTE_BACKEND, 5353, NODE, seen.sport);
            reply.tcp_flags = TCP_SYN | TCP_ACK;
            let out = dp.run_xdp_on("xdp_node", &reply.build(), ifindex);
            assert_eq!(out.action, XDP_TX, "proto {proto} port {sport}: reply");
            let back = packet::read(&out.packet);
            assert_eq!(
                (back.src, back.sport, back.dst, back.dport),
                (NODE, 30053, CLIENT, sport),
                "proto {proto} port {sport}: the reply reaches the client's own port"
            );

            // The node's own socket on the client's port, answered by the same backend: left to the stack.
            let own = build(REMOTE_BACKEND, 5353, NODE, sport).build();
            let out = dp.run_xdp_on("xdp_node", &own, ifindex);
            assert_eq!(
                out.action, XDP_PASS,
                "proto {proto} port {sport}: the node's own answer"
            );
            assert_eq!(out.packet, own, "proto {proto} port {sport}: untouched");
        }
    }
}
