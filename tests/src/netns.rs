//! A node-shaped network namespace for packet tests and benchmarks whose programs look up routes and
//! neighbours (bpf_fib_lookup): the calling thread moves into a new namespace of its own, which the
//! kernel frees when the thread ends; nothing outside it is touched.

use std::process::Command;

use std::net::Ipv4Addr;

pub const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const PEER_NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
pub const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
/// Reached through the peer node 10.0.0.11.
pub const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
/// Behind the veth `lxc0`, as a pod on this node.
pub const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

/// Runs `ip` with `args` (split on whitespace) in the calling thread's netns; panics on failure.
pub fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into a new, empty network namespace with loopback up.
pub fn enter_own_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    ip("link set lo up");
}

/// Moves the calling thread into a new network namespace shaped like a node: `np0` on the node
/// segment (10.0.0.10/24) with the peer node (10.0.0.11) and the client (10.0.0.254) as permanent
/// neighbours, 10.244.2.0/24 via the peer node, 203.0.113.0/24 via the client's router, a local pod
/// 10.244.1.11 behind the veth `lxc0`, forwarding on. Returns np0's ifindex.
pub fn enter_node_netns() -> u32 {
    enter_own_netns();
    ip("link add np0 address 02:00:00:00:00:0a type veth peer name np1 address 02:00:00:00:00:0c");
    ip("addr add 10.0.0.10/24 dev np0");
    ip("link set np0 up");
    ip("link set np1 up");
    ip("neigh replace 10.0.0.11 lladdr 02:00:00:00:00:0b dev np0 nud permanent");
    ip("neigh replace 10.0.0.254 lladdr 02:00:00:00:00:fe dev np0 nud permanent");
    ip("route add 10.244.2.0/24 via 10.0.0.11");
    ip("route add 203.0.113.0/24 via 10.0.0.254");
    ip("link add lxc0 type veth peer name lxc1");
    ip("link set lxc0 up");
    ip("link set lxc1 up");
    ip("route add 10.244.1.11/32 dev lxc0");
    ip("neigh replace 10.244.1.11 lladdr 02:00:00:00:00:11 dev lxc0 nud permanent");
    let out = Command::new("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .output()
        .expect("sysctl");
    assert!(
        out.status.success(),
        "sysctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    nix::net::if_::if_nametoindex("np0").expect("np0 ifindex")
}
