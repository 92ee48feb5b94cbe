//! NetworkPolicy enforcement through BPF_PROG_TEST_RUN: seeded ipcache, endpoint and policy maps (the
//! layouts `policy::compile` produces), crafted packets through tc_to_pod (ingress) and tc_from_pod
//! (egress), asserted verdicts and drop counters. Includes stateful replies, CIDR classes, port ranges,
//! fragments, truncated headers, spoofing, post-DNAT enforcement and the revoke/keep modes.

use std::net::Ipv4Addr;

use common::{
    config::config_flags,
    event::DropReason,
    policy::{DIR_EGRESS, DIR_INGRESS, POLICY_PREFIX_ANY_PORT, PolicyKey, endpoint_flags, identity},
};
use tests::{
    datapath::{TestDatapath, TestService},
    packet::{self, Ipv4Packet, PROTO_TCP, PROTO_UDP, TCP_ACK},
    privilege,
};

const OK: u32 = 0;
const SHOT: u32 = 2;

const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const FRIEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 4);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const EP: u32 = 7;
const FRIEND_ID: u32 = 300;
const STRANGER_ID: u32 = 301;
/// BPF_PROG_TEST_RUN gives skbs the loopback device.
const TEST_IFINDEX: u32 = 1;

fn isolated(name: &str, flags: u32) -> TestDatapath {
    let mut dp = TestDatapath::load(name);
    dp.add_ipcache(FRIEND, 32, FRIEND_ID, 0);
    dp.add_ipcache(STRANGER, 32, STRANGER_ID, 0);
    dp.add_ipcache(NODE, 32, identity::HOST, 0);
    dp.add_ipcache(POD, 32, 400, 0);
    dp.add_endpoint(POD, EP, 400, flags);
    dp
}

fn to_pod(dp: &mut TestDatapath, p: &Ipv4Packet) -> u32 {
    dp.run("tc_to_pod", &p.build()).action
}

fn from_pod(dp: &mut TestDatapath, p: &Ipv4Packet) -> u32 {
    dp.run("tc_from_pod", &p.build()).action
}

#[test]
fn ingress_rules_by_identity_port_and_host() {
    if !privilege::require("ingress_rules_by_identity_port_and_host") {
        return;
    }
    let mut dp = isolated("pol-ingress", endpoint_flags::INGRESS_ISOLATED);
    dp.add_policy(PolicyKey::lookup(EP, DIR_INGRESS, FRIEND_ID, PROTO_TCP, 80), 1, 0);
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::tcp(FRIEND, 40000, POD, 80)),
        OK,
        "allowed peer and port"
    );
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::tcp(FRIEND, 40001, POD, 81)),
        SHOT,
        "port not allowed"
    );
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::udp(FRIEND, 40002, POD, 80)),
        SHOT,
        "protocol not allowed"
    );
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::tcp(STRANGER, 40003, POD, 80)),
        SHOT,
        "peer not allowed"
    );
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::tcp(NODE, 40004, POD, 81)),
        OK,
        "the node always reaches its pods"
    );
    assert_eq!(dp.drops(DropReason::PolicyIngress), 3);
    // Egress is not isolated: the pod's own connections leave freely.
    assert_eq!(from_pod(&mut dp, &Ipv4Packet::tcp(POD, 50000, STRANGER, 443)), OK);
}

#[test]
fn replies_of_allowed_connections_pass_without_a_rule() {
    if !privilege::require("replies_of_allowed_connections_pass_without_a_rule") {
        return;
    }
    let both = endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED;
    let mut dp = isolated("pol-stateful", both);
    dp.add_policy(PolicyKey::lookup(EP, DIR_INGRESS, FRIEND_ID, PROTO_TCP, 80), 1, 0);
    dp.add_policy(PolicyKey::lookup(EP, DIR_EGRESS, FRIEND_ID, PROTO_UDP, 53), 2, 0);
    // Inbound connection allowed; the pod's answer has no egress rule but is a reply.
    assert_eq!(to_pod(&mut dp, &Ipv4Packet::tcp(FRIEND, 40000, POD, 80)), OK);
    let mut answer = Ipv4Packet::tcp(POD, 80, FRIEND, 40000);
    answer.tcp_flags = packet::TCP_SYN | TCP_ACK;
    assert_eq!(from_pod(&mut dp, &answer), OK, "reply of an accepted connection");
    // The same packet without the connection before it is egress the policy does not allow.
    assert_eq!(
        from_pod(&mut dp, &Ipv4Packet::tcp(POD, 80, FRIEND, 40999)),
        SHOT,
        "no connection, no reply"
    );
    // Outbound UDP allowed; its answer has no ingress rule but is a reply.
    assert_eq!(from_pod(&mut dp, &Ipv4Packet::udp(POD, 5353, FRIEND, 53)), OK);
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::udp(FRIEND, 53, POD, 5353)),
        OK,
        "reply of an allowed query"
    );
    assert_eq!(
        from_pod(&mut dp, &Ipv4Packet::udp(POD, 5353, STRANGER, 53)),
        SHOT,
        "egress to a stranger"
    );
    assert_eq!(dp.drops(DropReason::PolicyEgress), 2);
}

#[test]
fn cidr_classes_any_peer_and_port_ranges() {
    if !privilege::require("cidr_classes_any_peer_and_port_ranges") {
        return;
    }
    let mut dp = isolated("pol-cidr", endpoint_flags::INGRESS_ISOLATED);
    let class = identity::CIDR_CLASS_BASE | 1;
    dp.add_ipcache(Ipv4Addr::new(192, 168, 1, 0), 24, identity::WORLD, class);
    dp.add_policy(PolicyKey::lookup(EP, DIR_INGRESS, class, PROTO_TCP, 443), 3, 1);
    assert_eq!(
        to_pod(
            &mut dp,
            &Ipv4Packet::tcp(Ipv4Addr::new(192, 168, 1, 7), 1, POD, 443)
        ),
        OK,
        "inside the CIDR"
    );
    assert_eq!(
        to_pod(
            &mut dp,
            &Ipv4Packet::tcp(Ipv4Addr::new(192, 168, 2, 7), 1, POD, 443)
        ),
        SHOT,
        "outside it"
    );
    // ports 8080-8095 for any peer: one prefix (12 significant port bits).
    let mut range = PolicyKey::lookup(EP, DIR_INGRESS, identity::PEER_ANY, PROTO_UDP, 8080);
    range.prefix_len = POLICY_PREFIX_ANY_PORT + 12;
    dp.add_policy(range, 4, 0);
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::udp(STRANGER, 1, POD, 8090)),
        OK,
        "inside the port range"
    );
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::udp(STRANGER, 1, POD, 8096)),
        SHOT,
        "past the range"
    );
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::udp(STRANGER, 1, POD, 8079)),
        SHOT,
        "before the range"
    );
}

#[test]
fn fragments_truncation_and_spoofing_never_bypass() {
    if !privilege::require("fragments_truncation_and_spoofing_never_bypass") {
        return;
    }
    let mut dp = isolated(
        "pol-bypass",
        endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED,
    );
    dp.register_iface(TEST_IFINDEX, POD);
    dp.add_policy(
        PolicyKey::lookup(EP, DIR_INGRESS, identity::PEER_ANY, PROTO_TCP, 80),
        1,
        0,
    );
    let mut frag = Ipv4Packet::tcp(FRIEND, 40000, POD, 80);
    frag.frag_offset = 100;
    assert_eq!(
        to_pod(&mut dp, &frag),
        SHOT,
        "a later fragment carries no ports to judge"
    );
    let truncated = Ipv4Packet::tcp(FRIEND, 40000, POD, 80).build()[..36].to_vec();
    assert_eq!(dp.run("tc_to_pod", &truncated).action, SHOT, "a cut TCP header");
    let mut bad_ihl = Ipv4Packet::tcp(FRIEND, 40000, POD, 80).build();
    bad_ihl[14] = 0x43; // IHL 3: shorter than an IPv4 header
    assert_eq!(
        dp.run("tc_to_pod", &bad_ihl).action,
        SHOT,
        "a malformed IPv4 header"
    );
    assert_eq!(dp.drops(DropReason::Fragment), 1);
    assert_eq!(dp.drops(DropReason::Malformed), 2);
    // IP options do not hide the ports.
    let mut opts = Ipv4Packet::tcp(STRANGER, 40000, POD, 81);
    opts.options = vec![1, 1, 1, 0];
    assert_eq!(
        to_pod(&mut dp, &opts),
        SHOT,
        "options shift the header, the verdict stays"
    );
    // Spoofing: the pod behind this veth is POD; another source is dropped.
    assert_eq!(
        from_pod(&mut dp, &Ipv4Packet::tcp(FRIEND, 40000, STRANGER, 80)),
        SHOT
    );
    assert_eq!(dp.drops(DropReason::Spoofed), 1);
}

#[test]
fn revoke_drops_the_next_packet_keep_lets_it_through() {
    if !privilege::require("revoke_drops_the_next_packet_keep_lets_it_through") {
        return;
    }
    for (mode, flags, expect) in [("revoke", 0, SHOT), ("keep", config_flags::KEEP_ESTABLISHED, OK)] {
        let mut dp = isolated(&format!("pol-{mode}"), endpoint_flags::INGRESS_ISOLATED);
        dp.set_config(flags);
        let rule = PolicyKey::lookup(EP, DIR_INGRESS, FRIEND_ID, PROTO_TCP, 80);
        dp.add_policy(rule, 1, 0);
        assert_eq!(
            to_pod(&mut dp, &Ipv4Packet::tcp(FRIEND, 40000, POD, 80)),
            OK,
            "{mode}: allowed first"
        );
        dp.remove_policy(rule);
        let mut next = Ipv4Packet::tcp(FRIEND, 40000, POD, 80);
        next.tcp_flags = TCP_ACK;
        assert_eq!(
            to_pod(&mut dp, &next),
            expect,
            "{mode}: the established connection after the policy went"
        );
        assert_eq!(
            to_pod(&mut dp, &Ipv4Packet::tcp(FRIEND, 40001, POD, 80)),
            SHOT,
            "{mode}: new connections"
        );
    }
}

#[test]
fn policy_sees_the_backend_and_its_target_port() {
    if !privilege::require("policy_sees_the_backend_and_its_target_port") {
        return;
    }
    let mut dp = isolated("pol-dnat", endpoint_flags::EGRESS_ISOLATED);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let mut svc = TestService::new(vip, 80, PROTO_TCP, 1);
    svc.backends = vec![(FRIEND, 8080)];
    dp.add_service(&svc);
    let mut other = TestService::new(vip, 81, PROTO_TCP, 2);
    other.backends = vec![(STRANGER, 8080)];
    dp.add_service(&other);
    // Egress allows the backend pod on its target port, not the VIP or the service port.
    dp.add_policy(
        PolicyKey::lookup(EP, DIR_EGRESS, FRIEND_ID, PROTO_TCP, 8080),
        1,
        0,
    );
    let out = dp.run("tc_from_pod", &Ipv4Packet::tcp(POD, 40000, vip, 80).build());
    assert_eq!(out.action, OK, "to a backend the policy allows");
    assert_eq!(packet::read(&out.packet).dst, FRIEND);
    assert_eq!(
        from_pod(&mut dp, &Ipv4Packet::tcp(POD, 40001, vip, 81)),
        SHOT,
        "the other service's backend is not allowed"
    );
    // The translated reply passes the pod's ingress... and is rewritten back to the VIP.
    let mut reply = Ipv4Packet::tcp(FRIEND, 8080, POD, 40000);
    reply.tcp_flags = packet::TCP_SYN | TCP_ACK;
    let out = dp.run("tc_to_pod", &reply.build());
    assert_eq!(out.action, OK);
    assert_eq!(packet::read(&out.packet).src, vip);
}

#[test]
fn spoofing_is_refused_on_interfaces_in_either_table() {
    if !privilege::require("spoofing_is_refused_on_interfaces_in_either_table") {
        return;
    }
    // An interface whose ifindex is past the direct table (a node that has created that many since
    // boot), in a netns of this test's own.
    let high = common::iface::DIRECT_SLOTS + 4464;
    tests::netns::enter_own_netns();
    tests::netns::ip(&format!(
        "link add pod-high index {high} type veth peer name pod-high-peer"
    ));
    tests::netns::ip("link set pod-high up");
    let mut dp = TestDatapath::load("pol-ifaces");
    for ifindex in [TEST_IFINDEX, high] {
        dp.register_iface(ifindex, POD);
        let own = Ipv4Packet::tcp(POD, 40000, STRANGER, 80).build();
        let spoofed = Ipv4Packet::tcp(FRIEND, 40000, STRANGER, 80).build();
        assert_eq!(
            dp.run_tc_on("tc_from_pod", &own, ifindex).action,
            OK,
            "ifindex {ifindex}: own"
        );
        assert_eq!(
            dp.run_tc_on("tc_from_pod", &spoofed, ifindex).action,
            SHOT,
            "ifindex {ifindex}: spoofed"
        );
        dp.forget_iface(ifindex);
        assert_eq!(
            dp.run_tc_on("tc_from_pod", &spoofed, ifindex).action,
            OK,
            "ifindex {ifindex}: forgotten, nothing to check against"
        );
    }
    assert_eq!(dp.drops(DropReason::Spoofed), 2);
}

#[test]
fn the_state_map_skips_policy_only_when_it_says_no_endpoint_is_isolated() {
    if !privilege::require("the_state_map_skips_policy_only_when_it_says_no_endpoint_is_isolated") {
        return;
    }
    let mut dp = isolated(
        "pol-state",
        endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED,
    );
    let inbound = Ipv4Packet::tcp(STRANGER, 40000, POD, 80);
    let outbound = Ipv4Packet::tcp(POD, 40001, STRANGER, 80);
    assert_eq!(to_pod(&mut dp, &inbound), SHOT, "a new map holds 0: enforced");
    assert_eq!(from_pod(&mut dp, &outbound), SHOT);
    // What the agent writes only once no endpoint is isolated (its diff orders it last), written here
    // through the agent's own writer: the programs then skip the endpoint lookup altogether, so this
    // isolated endpoint is not consulted.
    dp.set_none_isolated(true);
    assert_eq!(to_pod(&mut dp, &inbound), OK, "skipped");
    assert_eq!(from_pod(&mut dp, &outbound), OK, "skipped");
    dp.set_none_isolated(false);
    assert_eq!(
        to_pod(&mut dp, &Ipv4Packet::tcp(STRANGER, 40002, POD, 80)),
        SHOT,
        "cleared: enforced again"
    );
}
