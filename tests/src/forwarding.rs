//! NodePort forwarding rate, our XDP path against the rules kube-proxy writes, for `strait-bench`
//! (group `nodeport-forwarding`).
//!
//! One node-shaped network namespace (`netns::enter_node_netns`): the node's device is `np0`, and the
//! other end of its veth, `np1`, plays the rest of the segment. A packet socket on `np1` sends frames
//! from the client to the node's NodePort (qdisc bypassed, 64 frames a `sendmmsg`); they arrive on
//! `np0` and leave through it towards the peer node, back to `np1`, where an XDP program drops them:
//! `np1`'s receive counter is what reached the wire. What `np0` runs decides the case:
//! - ours: `xdp_node` attached natively (conntrack hit, DNAT and SNAT, forwarding lookup, XDP_TX);
//! - kube-proxy: no XDP program, the stack with the rules kube-proxy writes for the same Service in
//!   iptables or nftables mode (conntrack, filter hooks, forwarding, the NAT kept by conntrack);
//! - the wire alone: a bare XDP_TX program attached natively, the floor (sending, the veth, the drop).
//!
//! A round's figure is the wall-clock time of sending `frames` frames divided by those that reached
//! `np1`, all on one CPU: a packet socket that bypasses the qdisc hands each frame to the veth in the
//! sender's context, and the receive work (the stack's backlog, or the veth's NAPI when an XDP program
//! is attached) runs when the sender turns bottom halves back on after each frame. The sender's own
//! cost is in every case (the wire case shows it); it makes the ratios smaller than the datapaths'
//! own. A veth hands our program an skb it first converts to an XDP buffer, which a NIC driver does not
//! do: that cost is ours here and would not be on a NIC. A round where fewer than 99% of the frames
//! arrived is an error, not a figure.

use std::{cell::RefCell, os::fd::AsRawFd as _, process::Command, rc::Rc, time::Instant};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};

use crate::{
    bench::{Case, GroupInfo, Measurement, Params, RoundFn, XDP_NODE, interleave, load_baselines},
    datapath::{TestDatapath, TestService},
    netns::{CLIENT, CLIENT_MAC, NODE, NODE_MAC, REMOTE_BACKEND},
    packet::{self, Ipv4Packet},
};

pub const BENCH_XDP_TX: &str = "bench_xdp_tx";
pub const BENCH_XDP_DROP: &str = "bench_xdp_drop";
const GROUP: &str = "nodeport-forwarding";
const NODE_PORT: u16 = 30080;
const TARGET_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40000;
/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// The node's device and the far end of its veth (see `netns::enter_node_netns`).
const NODE_DEV: &str = "np0";
const WIRE_DEV: &str = "np1";

pub const IPTABLES_CASE: &str = "kube-proxy iptables rules (stack, conntrack, forward)";
pub const NFTABLES_CASE: &str = "kube-proxy nftables rules (stack, conntrack, forward)";
pub const OURS_CASE: &str = "xdp_node (conntrack hit, DNAT + SNAT, XDP_TX)";
pub const WIRE_CASE: &str = "the wire alone (bare XDP_TX on the node's device)";
pub const STACK_FLOOR_CASE: &str = "received by the stack, dropped at its first hook (raw PREROUTING)";
pub const XDP_FLOOR_CASE: &str = "received by XDP on the node's device, dropped (bare XDP_DROP)";

/// What the node runs for NodePorts: kube-proxy's rules in one of its modes, or an XDP program
/// attached natively to its device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Node {
    Iptables,
    Nftables,
    Xdp(&'static str),
    /// The stack receives the frame and drops it at its first hook (raw PREROUTING, before
    /// conntrack): what receiving costs the kube-proxy cases before their rules do anything.
    StackDrop,
}

impl Node {
    /// Where the frames a round sent are counted: on the wire when the node forwards them, on the
    /// node's device when it drops them.
    fn counted_at(self) -> &'static str {
        match self {
            Node::StackDrop | Node::Xdp(BENCH_XDP_DROP) => NODE_DEV,
            _ => WIRE_DEV,
        }
    }
}

/// The node as it is now; switched between rounds, never while one is measured.
struct NodeState {
    current: Option<Node>,
    link: Option<(&'static str, XdpLinkId)>,
}

impl NodeState {
    fn switch(&mut self, dp: &mut TestDatapath, to: Node) -> anyhow::Result<()> {
        if self.current == Some(to) {
            return Ok(());
        }
        if let Some((prog, link)) = self.link.take() {
            xdp_program(dp, prog)?
                .detach(link)
                .with_context(|| format!("detaching {prog} from {NODE_DEV}"))?;
        }
        match self.current {
            Some(Node::Iptables) => {
                run_with_input("iptables-restore", &[], "*nat\nCOMMIT\n*filter\nCOMMIT\n")?
            }
            Some(Node::Nftables) => run_with_input("nft", &["-f", "-"], "delete table ip kube-proxy\n")?,
            Some(Node::StackDrop) => run_with_input("iptables-restore", &[], "*raw\nCOMMIT\n")?,
            _ => {}
        }
        self.current = None;
        match to {
            Node::Iptables => run_with_input("iptables-restore", &[], &iptables_rules())?,
            Node::Nftables => run_with_input("nft", &["-f", "-"], &nftables_rules())?,
            Node::StackDrop => {
                run_with_input("iptables-restore", &[], "*raw\n-A PREROUTING -j DROP\nCOMMIT\n")?
            }
            Node::Xdp(prog) => {
                let link = xdp_program(dp, prog)?
                    .attach(NODE_DEV, XdpMode::Driver)
                    .with_context(|| format!("attaching {prog} natively to {NODE_DEV}"))?;
                self.link = Some((prog, link));
            }
        }
        self.current = Some(to);
        Ok(())
    }
}

/// The group, measured on a thread of its own in a namespace it made: the rules, attachments and
/// devices go with the namespace when the thread ends.
pub fn forwarding_group(p: &Params, checks: &mut Vec<String>) -> anyhow::Result<Vec<Measurement>> {
    let p = p.clone();
    let (out, check) = std::thread::spawn(move || -> anyhow::Result<(Vec<Measurement>, String)> {
        let np0 = crate::netns::enter_node_netns();
        crate::bench::set_xdp_ingress(np0);
        // One CPU does everything (see the module documentation), also when the receive work is
        // deferred to ksoftirqd: the one the thread is on now.
        let cpu = nix::sched::sched_getcpu().context("sched_getcpu")?;
        let mut one = nix::sched::CpuSet::new();
        one.set(cpu).context("CpuSet")?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one)
            .with_context(|| format!("pinning the benchmark thread to CPU {cpu}"))?;
        cases(&p)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the NodePort forwarding benchmark thread panicked"))??;
    checks.push(check);
    Ok(out)
}

/// Frames per round: the stack's path takes a few µs a frame, so a full round is about a second.
fn frames_per_round(p: &Params) -> u32 {
    if p.mode == "quick" { 50_000 } else { 250_000 }
}

fn cases(p: &Params) -> anyhow::Result<(Vec<Measurement>, String)> {
    // A forwarded packet that leaves through the interface it came in on makes the stack send ICMP
    // redirects to the client; kube-proxy nodes with one NIC do the same, but they are not what is
    // measured here.
    sysctl("net.ipv4.conf.all.send_redirects=0")?;
    sysctl("net.ipv4.conf.np0.send_redirects=0")?;
    let mut dp = TestDatapath::load("bench-forwarding");
    load_baselines(&mut dp)?;
    for name in [BENCH_XDP_TX, BENCH_XDP_DROP] {
        xdp_program(&mut dp, name)?.load()?;
    }
    // The wire's end drops what arrives (and, with a program attached, has the receive queue that an
    // XDP_TX towards it needs).
    xdp_program(&mut dp, BENCH_XDP_DROP)?
        .attach(WIRE_DEV, XdpMode::Driver)
        .with_context(|| format!("attaching {BENCH_XDP_DROP} natively to {WIRE_DEV}"))?;
    dp.set_datapath_config(common::config::DatapathConfig {
        flags: 0,
        maglev_size: 0,
        node_addr: u32::from_ne_bytes(NODE.octets()),
        local_port_min: 0,
        local_port_max: 0,
    });
    let mut svc = TestService::new(NODE, NODE_PORT, packet::PROTO_UDP, 1);
    svc.flags = common::lb::svc_flags::NODEPORT;
    svc.backends.push((REMOTE_BACKEND, TARGET_PORT));
    dp.add_service(&svc);

    let frame = client_frame(CLIENT_PORT);
    // Our path, checked once the way the packet tests check it: translated and sent back out.
    let first = crate::bench::test_run(&mut dp, XDP_NODE, &frame, 1)?;
    let seen = packet::read(&first.packet);
    ensure!(
        first.action == 3 && (seen.src, seen.dst, seen.dport) == (NODE, REMOTE_BACKEND, TARGET_PORT),
        "xdp_node on the NodePort frame: action {} and {seen:?} instead of XDP_TX to \
         {REMOTE_BACKEND}:{TARGET_PORT} from {NODE}",
        first.action
    );
    let sender = Rc::new(Sender::open(WIRE_DEV, &client_frame(CLIENT_PORT))?);
    let state = Rc::new(RefCell::new(NodeState {
        current: None,
        link: None,
    }));
    // Every case forwards before it is measured: each node set-up once, 1000 frames that must arrive.
    let nodes = [
        Node::Iptables,
        Node::Nftables,
        Node::Xdp(XDP_NODE),
        Node::Xdp(BENCH_XDP_TX),
        Node::StackDrop,
        Node::Xdp(BENCH_XDP_DROP),
    ];
    for (k, node) in nodes.into_iter().enumerate() {
        state.borrow_mut().switch(&mut dp, node)?;
        // A flow of its own (client port), so that kube-proxy's rules are seen to translate it.
        let port = CLIENT_PORT + 1 + k as u16;
        let check = Sender::open(WIRE_DEV, &client_frame(port))?;
        forward(&check, 1000, node.counted_at()).with_context(|| format!("forwarding through {node:?}"))?;
        if matches!(node, Node::Iptables | Node::Nftables) {
            kube_proxy_translated(port).with_context(|| format!("kube-proxy's {node:?} rules"))?;
        }
    }
    let check = format!(
        "NodePort forwarding: {CLIENT}:{CLIENT_PORT} -> {NODE}:{NODE_PORT}/UDP frames sent on np1 reach \
         np1 again as {NODE} -> {REMOTE_BACKEND}:{TARGET_PORT} via the peer node, through xdp_node \
         attached natively to np0 (checked once: XDP_TX, DNAT + SNAT) and through kube-proxy's \
         iptables and nftables rules (each on a flow of its own: 99% or more of 1000 frames arrive, \
         and the conntrack entry shows the DNAT to the backend and the masquerade)"
    );
    let n = frames_per_round(p);
    let case = |name: &str, node: Node, program: &'static str, baseline: Option<usize>| {
        let state = state.clone();
        let sender = sender.clone();
        let round: RoundFn<'static> = Box::new(move |dp: &mut TestDatapath, _round: usize| {
            state.borrow_mut().switch(dp, node)?;
            forward(&sender, n, node.counted_at())
        });
        Case {
            name: name.into(),
            program,
            method: "frames sent",
            baseline,
            round,
        }
    };
    let cases = vec![
        case(IPTABLES_CASE, Node::Iptables, "", None),
        case(NFTABLES_CASE, Node::Nftables, "", Some(0)),
        case(OURS_CASE, Node::Xdp(XDP_NODE), XDP_NODE, Some(0)),
        case(WIRE_CASE, Node::Xdp(BENCH_XDP_TX), BENCH_XDP_TX, Some(0)),
        case(STACK_FLOOR_CASE, Node::StackDrop, "", Some(0)),
        case(XDP_FLOOR_CASE, Node::Xdp(BENCH_XDP_DROP), BENCH_XDP_DROP, Some(0)),
    ];
    let info = GroupInfo {
        name: GROUP.into(),
        ..Default::default()
    };
    let out = interleave(&mut dp, &info, p.rounds, cases);
    // Detach before the datapath (and its programs) is dropped.
    let _ = state.borrow_mut().switch(&mut dp, Node::Iptables);
    Ok((out?, check))
}

fn xdp_program<'a>(dp: &'a mut TestDatapath, name: &str) -> anyhow::Result<&'a mut Xdp> {
    Ok(dp
        .datapath
        .ebpf_mut()
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("{name} missing from the object"))?
        .try_into()?)
}

/// Whether the conntrack table holds the flow from the client's `port` as kube-proxy translates it:
/// answered by the backend's target port, to the node's address (DNAT and masquerade).
fn kube_proxy_translated(port: u16) -> anyhow::Result<()> {
    let table = std::fs::read_to_string("/proc/thread-self/net/nf_conntrack")
        .context("reading this namespace's conntrack table")?;
    let original = format!("src={CLIENT} dst={NODE} sport={port} dport={NODE_PORT} ");
    let reply = format!("src={REMOTE_BACKEND} dst={NODE} sport={TARGET_PORT} ");
    ensure!(
        table.lines().any(|l| l.contains(&original) && l.contains(&reply)),
        "no conntrack entry {original}... with reply {reply}...; the table:\n{table}"
    );
    Ok(())
}

/// A 60-byte UDP frame from the client's `port` to the NodePort, addressed to np0 (the stack takes it
/// as its own only with np0's MAC).
fn client_frame(port: u16) -> Vec<u8> {
    let mut pk = Ipv4Packet::udp(CLIENT, port, NODE, NODE_PORT);
    pk.payload = vec![0x5a; 18];
    let mut frame = pk.build();
    frame[0..6].copy_from_slice(&NODE_MAC);
    frame[6..12].copy_from_slice(&CLIENT_MAC);
    frame
}

/// Sends `frames` frames and returns ns of wall clock per frame counted as received on `dev`.
fn forward(sender: &Sender, frames: u32, dev: &str) -> anyhow::Result<f64> {
    let before = rx_packets(dev)?;
    let t = Instant::now();
    sender.send(frames)?;
    let elapsed = t.elapsed();
    let arrived = rx_packets(dev)?.saturating_sub(before);
    ensure!(
        arrived * 100 >= u64::from(frames) * 99,
        "{arrived} of {frames} frames reached {dev}"
    );
    Ok(elapsed.as_nanos() as f64 / arrived as f64)
}

/// A packet socket bound to one device that only sends (protocol 0: it receives nothing), bypassing
/// the qdisc as traffic generators do.
struct Sender {
    fd: std::os::fd::OwnedFd,
    frame: Vec<u8>,
}

impl Sender {
    fn open(dev: &str, frame: &[u8]) -> anyhow::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(dev).with_context(|| format!("no device {dev}"))?;
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        ensure!(raw >= 0, "socket(AF_PACKET): {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a descriptor this process just opened and nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: the option value is a c_int that lives across the call, its size passed with it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(
            rc == 0,
            "PACKET_QDISC_BYPASS: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value before the fields are set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a sockaddr_ll that lives across the call, its size passed with it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(rc == 0, "bind to {dev}: {}", std::io::Error::last_os_error());
        Ok(Self {
            fd,
            frame: frame.to_vec(),
        })
    }

    /// Sends `frames` copies of the frame, `BATCH` per system call.
    fn send(&self, frames: u32) -> anyhow::Result<()> {
        let mut iov = libc::iovec {
            iov_base: self.frame.as_ptr().cast_mut().cast(),
            iov_len: self.frame.len(),
        };
        // SAFETY: mmsghdr is plain data; all-zero (no name, no control data) is valid.
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for m in &mut msgs {
            m.msg_hdr.msg_iov = std::ptr::from_mut(&mut iov);
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut left = frames as usize;
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while left > 0 {
            ensure!(
                Instant::now() < deadline,
                "sending {frames} frames took over 60 s"
            );
            let batch = left.min(BATCH);
            // SAFETY: `msgs` holds `batch` initialised headers pointing at `iov`, which points at the
            // frame; the kernel only reads them.
            let sent = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), batch as u32, 0) };
            if sent > 0 {
                left -= sent as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            // The receiving queue is full: its softirq work was handed to ksoftirqd, which runs on
            // this CPU (the thread is pinned to it) once the sender yields. The frame is sent again.
            ensure!(err.raw_os_error() == Some(libc::ENOBUFS), "sendmmsg: {err}");
            std::thread::yield_now();
        }
        Ok(())
    }
}

/// The device's received-packets counter (`ip -s`, in the calling thread's namespace).
fn rx_packets(dev: &str) -> anyhow::Result<u64> {
    let out = Command::new("ip")
        .args(["-j", "-s", "link", "show", "dev", dev])
        .output()
        .context("running ip -s link")?;
    ensure!(
        out.status.success(),
        "ip -s link show {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing ip -j output")?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .with_context(|| format!("no rx packet count for {dev} in ip's output"))
}

fn sysctl(setting: &str) -> anyhow::Result<()> {
    let out = Command::new("sysctl")
        .args(["-qw", setting])
        .output()
        .context("running sysctl")?;
    ensure!(
        out.status.success(),
        "sysctl {setting}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn run_with_input(cmd: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {cmd}"))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What kube-proxy's iptables mode (v1.34) writes for one UDP NodePort Service (ClusterIP
/// 10.96.0.10:80, nodePort 30080, externalTrafficPolicy Cluster) with one endpoint on another node,
/// chains and rules in its order; the hashed chain names shortened.
fn iptables_rules() -> String {
    let svc = "KUBE-SVC-BENCHWEBUDP";
    let ext = "KUBE-EXT-BENCHWEBUDP";
    let sep = "KUBE-SEP-BENCHWEB0";
    let b = REMOTE_BACKEND;
    format!(
        "*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:{ext} - [0:0]
:{svc} - [0:0]
:{sep} - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p udp -m comment --comment \"bench/web:udp\" -m udp --dport {NODE_PORT} -j {ext}
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"bench/web:udp cluster IP\" -m udp --dport 80 -j {svc}
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A {ext} -m comment --comment \"masquerade traffic for bench/web:udp external destinations\" -j KUBE-MARK-MASQ
-A {ext} -j {svc}
-A {svc} ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p udp -m comment --comment \"bench/web:udp cluster IP\" -m udp --dport 80 -j KUBE-MARK-MASQ
-A {svc} -m comment --comment \"bench/web:udp -> {b}:{TARGET_PORT}\" -j {sep}
-A {sep} -s {b}/32 -m comment --comment \"bench/web:udp\" -j KUBE-MARK-MASQ
-A {sep} -p udp -m comment --comment \"bench/web:udp\" -m udp -j DNAT --to-destination {b}:{TARGET_PORT}
COMMIT
"
    )
}

/// What kube-proxy's nftables mode (v1.34) writes for the same Service, in its table `ip kube-proxy`
/// (chains and maps of its layout; the per-Service chain names shortened).
fn nftables_rules() -> String {
    let b = REMOTE_BACKEND;
    format!(
        "table ip kube-proxy {{
  comment \"rules for kube-proxy\"
  set cluster-ips {{ type ipv4_addr; elements = {{ 10.96.0.10 }} }}
  set nodeport-ips {{ type ipv4_addr; elements = {{ {NODE} }} }}
  map no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map no-endpoint-nodeports {{ type inet_proto . inet_service : verdict; }}
  map firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map service-nodeports {{ type inet_proto . inet_service : verdict; }}
  chain filter-prerouting {{ type filter hook prerouting priority -110; ct state new jump firewall-check; }}
  chain filter-input {{ type filter hook input priority -110; ct state new jump nodeport-endpoints-check; ct state new jump service-endpoints-check; }}
  chain filter-forward {{ type filter hook forward priority -110; ct state new jump service-endpoints-check; ct state new jump cluster-ips-check; }}
  chain filter-output {{ type filter hook output priority -110; ct state new jump service-endpoints-check; ct state new jump firewall-check; }}
  chain filter-output-post-dnat {{ type filter hook output priority -90; ct state new jump cluster-ips-check; }}
  chain nat-prerouting {{ type nat hook prerouting priority -100; jump services; }}
  chain nat-output {{ type nat hook output priority -100; jump services; }}
  chain nat-postrouting {{ type nat hook postrouting priority 100; jump masquerading; }}
  chain mark-for-masquerade {{ mark set mark or 0x4000; }}
  chain masquerading {{ mark and 0x4000 == 0 return; mark set mark xor 0x4000; masquerade fully-random; }}
  chain services {{ ip daddr . meta l4proto . th dport vmap @service-ips; ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports; }}
  chain service-endpoints-check {{ ip daddr . meta l4proto . th dport vmap @no-endpoint-services; }}
  chain nodeport-endpoints-check {{ ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports; }}
  chain firewall-check {{ ip daddr . meta l4proto . th dport vmap @firewall-ips; }}
  chain cluster-ips-check {{ ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"; ip daddr {{ 10.96.0.0/12 }} drop comment \"Drop traffic to unallocated ClusterIPs\"; }}
  chain endpoint-bench-web-udp-0 {{ ip saddr {b} jump mark-for-masquerade; meta l4proto udp dnat to {b}:{TARGET_PORT}; }}
  chain service-bench-web-udp {{ ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade; numgen random mod 1 vmap {{ 0 : goto endpoint-bench-web-udp-0 }}; }}
  chain external-bench-web-udp {{ jump mark-for-masquerade; goto service-bench-web-udp; }}
}}
add element ip kube-proxy service-ips {{ 10.96.0.10 . udp . 80 : goto service-bench-web-udp }}
add element ip kube-proxy service-nodeports {{ udp . {NODE_PORT} : goto external-bench-web-udp }}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_for_the_node_port_and_addressed_to_np0() {
        let frame = client_frame(CLIENT_PORT);
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[0..6], &NODE_MAC);
        let seen = packet::read(&frame);
        assert_eq!((seen.src, seen.dst, seen.dport), (CLIENT, NODE, NODE_PORT));
    }
}
