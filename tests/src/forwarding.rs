//! NodePort forwarding rate, our XDP path against the rules kube-proxy writes, for `strait-bench`
//! (group `nodeport-forwarding`).
//!
//! One node-shaped network namespace (`netns::enter_node_netns`): the node's device is `np0`, and the
//! other end of its veth, `np1`, plays the rest of the segment. Frames circulate: `np1` runs
//! `bench_xdp_reflect`, which overwrites every frame the node sends it with the client's frame to the
//! NodePort and sends it back to the node, so 64 frames put in once by a packet socket keep the node
//! forwarding as fast as it can, with no sender. `np1`'s receive counter over a window counts the
//! frames the node forwarded; one CPU does all of it (the veths' NAPI runs where it was scheduled,
//! the CPU that put the frames in, to which the thread is pinned). What `np0` runs decides the case:
//! - ours: `xdp_node` attached natively: it gets the frame as a NIC driver gives it (an XDP buffer, no
//!   skb), conntrack hit, DNAT and SNAT, forwarding lookup, XDP_TX;
//! - kube-proxy: a bare XDP_PASS program (so the frame arrives the same way, then becomes an skb as a
//!   driver would build it) and the stack with the rules kube-proxy writes for the same Service in
//!   iptables or nftables mode: conntrack, filter hooks, forwarding, the NAT kept by conntrack;
//! - references: the stack forwarding a frame addressed to the backend with no rules at all (what
//!   kube-proxy's rules add to plain forwarding), and a bare XDP_TX on `np0` (the loop's own cost).
//!
//! What the setting changes, in both directions:
//! - the loop's far end costs the stack's cases more: the frame the stack sends is an skb, which
//!   `np1` converts back to an XDP buffer before it can reflect it (the plain-forwarding reference
//!   pays that too);
//! - a veth has no qdisc, where a NIC's transmit queue has one that the stack's frames go through and
//!   XDP_TX does not; ICMP redirects are off and there is one flow, so conntrack stays cache-hot;
//! - `iptables` here is the nf_tables backend (as on most current distributions).
//!
//! The measured flow is answered once by the backend before kube-proxy's rounds (`ensure_replied`),
//! so conntrack treats it as established, as a request/response flow; its NAT is set up by whichever
//! rules see it first (established packets never walk the NAT chains). Before measuring, every case
//! forwards 1000 frames of a flow of its own, 990 or more of which must come back, and kube-proxy's
//! cases must show that flow translated in their conntrack table. `bench_xdp_reflect` sends round only
//! frames forwarded to the backend, so the count is of forwarded frames.

use std::{cell::RefCell, os::fd::AsRawFd as _, process::Command, rc::Rc, time::Duration, time::Instant};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};
use common::bench::{DST_AT, FRAME_LEN, FrameSlot, RUN_AT};

use crate::{
    bench::{
        BENCH_XDP_BARE, Case, GroupInfo, Measurement, Params, RoundFn, XDP_NODE, interleave, load_baselines,
    },
    datapath::TestDatapath,
    netns::{CLIENT, CLIENT_MAC, NODE, NODE_MAC, PEER_NODE_MAC, REMOTE_BACKEND},
    packet::{self, Ipv4Packet},
};

pub const BENCH_XDP_TX: &str = "bench_xdp_tx";
pub const BENCH_XDP_REFLECT: &str = "bench_xdp_reflect";
const FRAME_MAP: &str = "BENCH_FRAME";
const GROUP: &str = "nodeport-forwarding";
const NODE_PORT: u16 = 30080;
const TARGET_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40000;
/// Frames put in the loop (and per `sendmmsg`): fewer than a veth queue holds (256).
const BATCH: usize = 64;
/// The node's device and the far end of its veth (see `netns::enter_node_netns`).
const NODE_DEV: &str = "np0";
const WIRE_DEV: &str = "np1";

pub const IPTABLES_CASE: &str = "kube-proxy iptables rules (skb, conntrack, filter, forward)";
pub const NFTABLES_CASE: &str = "kube-proxy nftables rules (skb, conntrack, filter, forward)";
pub const OURS_CASE: &str = "xdp_node (conntrack hit, DNAT + SNAT, XDP_TX)";
pub const PLAIN_CASE: &str = "the stack forwarding, no rules, no NAT (frame addressed to the backend)";
pub const BOUNCE_CASE: &str = "the loop alone (bare XDP_TX on the node's device)";

/// Rules in the node's namespace.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rules {
    None,
    Iptables,
    Nftables,
}

/// What the node runs, and what the client sends it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Node {
    rules: Rules,
    /// Attached natively to np0.
    program: &'static str,
    /// The client addresses the backend itself instead of the NodePort.
    direct: bool,
}

const IPTABLES: Node = Node {
    rules: Rules::Iptables,
    program: BENCH_XDP_BARE,
    direct: false,
};
const NFTABLES: Node = Node {
    rules: Rules::Nftables,
    program: BENCH_XDP_BARE,
    direct: false,
};
const OURS: Node = Node {
    rules: Rules::None,
    program: XDP_NODE,
    direct: false,
};
const PLAIN: Node = Node {
    rules: Rules::None,
    program: BENCH_XDP_BARE,
    direct: true,
};
const BOUNCE: Node = Node {
    rules: Rules::None,
    program: BENCH_XDP_TX,
    direct: false,
};

impl Node {
    /// Where the node sends the client's frame: to the backend, except the bare XDP_TX, which sends
    /// it back untouched.
    fn forwards_to(self) -> std::net::Ipv4Addr {
        if self.program == BENCH_XDP_TX {
            NODE
        } else {
            REMOTE_BACKEND
        }
    }
}

/// The node as it is now; switched between rounds, never while one is measured.
#[derive(Default)]
struct NodeState {
    rules: Option<Rules>,
    link: Option<(&'static str, XdpLinkId)>,
}

impl NodeState {
    fn switch(&mut self, dp: &mut TestDatapath, to: Node) -> anyhow::Result<()> {
        if self.rules != Some(to.rules) {
            match self.rules {
                Some(Rules::Iptables) => {
                    run_with_input("iptables-restore", &[], "*nat\nCOMMIT\n*filter\nCOMMIT\n")?;
                    // With the nf_tables backend the emptied tables keep their hooks (and the nat
                    // table keeps conntrack on) until the tables are deleted. A legacy backend has
                    // no nft tables to delete (these fail) and keeps its hooks until the namespace
                    // goes; this machine's iptables is the nf_tables one.
                    for table in ["nat", "filter"] {
                        let _ = run_with_input("nft", &["-f", "-"], &format!("delete table ip {table}\n"));
                    }
                }
                Some(Rules::Nftables) => run_with_input("nft", &["-f", "-"], "delete table ip kube-proxy\n")?,
                _ => {}
            }
            self.rules = None;
            match to.rules {
                Rules::Iptables => run_with_input("iptables-restore", &[], &iptables_rules())?,
                Rules::Nftables => run_with_input("nft", &["-f", "-"], &nftables_rules())?,
                Rules::None => {}
            }
            self.rules = Some(to.rules);
        }
        if self.link.as_ref().map(|(p, _)| *p) != Some(to.program) {
            if let Some((prog, link)) = self.link.take() {
                xdp_program(dp, prog)?
                    .detach(link)
                    .with_context(|| format!("detaching {prog} from {NODE_DEV}"))?;
            }
            let link = xdp_program(dp, to.program)?
                .attach(NODE_DEV, XdpMode::Driver)
                .with_context(|| format!("attaching {} natively to {NODE_DEV}", to.program))?;
            self.link = Some((to.program, link));
        }
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
        // The frames are put in the loop from this CPU, so the veths' NAPI runs there.
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

/// How long a round counts forwarded frames.
fn window(p: &Params) -> Duration {
    Duration::from_millis(if p.mode == "quick" { 100 } else { 300 })
}

fn cases(p: &Params) -> anyhow::Result<(Vec<Measurement>, String)> {
    // A forwarded packet that leaves through the interface it came in on makes the stack send ICMP
    // redirects to the client; kube-proxy nodes with one NIC do the same, but they are not what is
    // measured here.
    sysctl("net.ipv4.conf.all.send_redirects=0")?;
    sysctl("net.ipv4.conf.np0.send_redirects=0")?;
    let mut dp = TestDatapath::load("bench-forwarding");
    load_baselines(&mut dp)?;
    for name in [BENCH_XDP_TX, BENCH_XDP_REFLECT] {
        xdp_program(&mut dp, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    set_frame(&mut dp, &client_frame(CLIENT_PORT, false), REMOTE_BACKEND, false)?;
    xdp_program(&mut dp, BENCH_XDP_REFLECT)?
        .attach(WIRE_DEV, XdpMode::Driver)
        .with_context(|| format!("attaching {BENCH_XDP_REFLECT} natively to {WIRE_DEV}"))?;
    crate::bench::seed_nodeport(
        &mut dp,
        NODE_PORT,
        packet::PROTO_UDP,
        (REMOTE_BACKEND, TARGET_PORT),
    );

    // Our path, checked once the way the packet tests check it: translated and sent back out.
    let first = crate::bench::test_run(&mut dp, XDP_NODE, &client_frame(CLIENT_PORT, false), 1)?;
    let seen = packet::read(&first.packet);
    ensure!(
        first.action == crate::bench::XDP_TX
            && (seen.src, seen.dst, seen.dport) == (NODE, REMOTE_BACKEND, TARGET_PORT),
        "xdp_node on the NodePort frame: action {} and {seen:?} instead of XDP_TX to \
         {REMOTE_BACKEND}:{TARGET_PORT} from {NODE}",
        first.action
    );
    let state = Rc::new(RefCell::new(NodeState::default()));
    // Every case forwards before it is measured, on a flow of its own (client port), with np1
    // dropping instead of reflecting.
    for (k, node) in [IPTABLES, NFTABLES, OURS, PLAIN, BOUNCE].into_iter().enumerate() {
        state.borrow_mut().switch(&mut dp, node)?;
        let port = CLIENT_PORT + 1 + k as u16;
        let frame = client_frame(port, node.direct);
        set_frame(&mut dp, &frame, node.forwards_to(), false)?;
        let before = rx_packets(WIRE_DEV)?;
        Sender::open(WIRE_DEV, &frame)?.send(1000)?;
        let arrived = rx_packets(WIRE_DEV)?.saturating_sub(before);
        ensure!(
            arrived >= 990,
            "{node:?}: {arrived} of 1000 frames came back to {WIRE_DEV}"
        );
        if node.rules != Rules::None {
            kube_proxy_translated(port).with_context(|| format!("kube-proxy's {:?} rules", node.rules))?;
        }
    }
    let check = format!(
        "NodePort forwarding: {CLIENT}:{CLIENT_PORT} -> {NODE}:{NODE_PORT}/UDP frames sent to np0 come back \
         on np1 as {NODE} -> {REMOTE_BACKEND}:{TARGET_PORT} via the peer node, through xdp_node attached \
         natively to np0 (checked once: XDP_TX, DNAT + SNAT) and through kube-proxy's iptables and \
         nftables rules (each on a flow of its own: 990 or more of 1000 frames come back, and the \
         conntrack entry shows the DNAT to the backend and the masquerade)"
    );
    let window = window(p);
    let case = |name: &str, node: Node, baseline: Option<usize>| {
        let state = state.clone();
        let round: RoundFn<'static> = Box::new(move |dp: &mut TestDatapath, _round: usize| {
            state.borrow_mut().switch(dp, node)?;
            loop_round(dp, node, window).with_context(|| format!("{node:?}"))
        });
        Case {
            name: name.into(),
            program: node.program,
            method: "frames in a loop",
            baseline,
            round,
        }
    };
    let cases = vec![
        case(IPTABLES_CASE, IPTABLES, None),
        case(NFTABLES_CASE, NFTABLES, Some(0)),
        case(OURS_CASE, OURS, Some(0)),
        case(PLAIN_CASE, PLAIN, Some(0)),
        case(BOUNCE_CASE, BOUNCE, Some(0)),
    ];
    let info = GroupInfo {
        name: GROUP.into(),
        ..Default::default()
    };
    Ok((interleave(&mut dp, &info, p.rounds, cases)?, check))
}

/// One round: `BATCH` frames put in the loop, the frames the node forwards counted over `window`,
/// the loop stopped; ns of wall clock per forwarded frame.
fn loop_round(dp: &mut TestDatapath, node: Node, window: Duration) -> anyhow::Result<f64> {
    let frame = client_frame(CLIENT_PORT, node.direct);
    let to = node.forwards_to();
    if node.rules != Rules::None {
        set_frame(dp, &frame, to, false)?;
        ensure_replied(&frame)?;
    }
    set_frame(dp, &frame, to, true)?;
    let result = (|| {
        Sender::open(WIRE_DEV, &frame)?.send(BATCH as u32)?;
        std::thread::sleep(Duration::from_millis(20));
        let (c0, t0) = (rx_packets(WIRE_DEV)?, Instant::now());
        std::thread::sleep(window / 2);
        let (c1, t1) = (rx_packets(WIRE_DEV)?, Instant::now());
        std::thread::sleep(window / 2);
        let (c2, t2) = (rx_packets(WIRE_DEV)?, Instant::now());
        let (first, second) = (c1.saturating_sub(c0), c2.saturating_sub(c1));
        let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
        // While frames wait in the queues the CPU is saturated whatever their number, so a few
        // lost change little; a loop that loses them steadily slows to a crawl as it empties. A
        // half slower than the other by less than that is other work on this CPU (the median over
        // rounds takes care of it).
        ensure!(
            first >= 500 && rate(second, t2 - t1) >= 0.5 * rate(first, t1 - t0),
            "the loop is losing frames: {first} forwarded in the first half of {window:?}, {second} \
             in the second"
        );
        Ok((t2 - t0).as_nanos() as f64 / (first + second) as f64)
    })();
    let stopped = set_frame(dp, &frame, to, false);
    // Whatever is still in flight is dropped at np1 within a turn of the loop.
    std::thread::sleep(Duration::from_millis(10));
    let ns = result?;
    stopped?;
    Ok(ns)
}

/// Makes the measured flow an answered one in the node's conntrack table, as request/response
/// traffic to a NodePort is (every packet of a flow never answered is NEW to conntrack and walks
/// kube-proxy's `ctstate NEW` rules): the client's frame once if the flow is not there, then one
/// answer from the backend to the masquerade port the table shows. The answer is translated back to
/// the client and dropped at np1.
fn ensure_replied(frame: &[u8]) -> anyhow::Result<()> {
    let original = format!("src={CLIENT} dst={NODE} sport={CLIENT_PORT} dport={NODE_PORT} ");
    let entry = || -> anyhow::Result<Option<String>> {
        Ok(conntrack_table()?
            .lines()
            .find(|l| l.contains(&original))
            .map(str::to_owned))
    };
    if entry()?.is_none() {
        Sender::open(WIRE_DEV, frame)?.send(1)?;
    }
    let line = entry()?.with_context(|| format!("no conntrack entry {original}..."))?;
    if !line.contains("[UNREPLIED]") {
        return Ok(());
    }
    let masq_port = masquerade_port(&line).with_context(|| format!("no reply tuple in {line}"))?;
    let mut answer = Ipv4Packet::udp(REMOTE_BACKEND, TARGET_PORT, NODE, masq_port);
    answer.payload = vec![0xa5; 18];
    let mut answer = answer.build();
    answer[0..6].copy_from_slice(&NODE_MAC);
    answer[6..12].copy_from_slice(&PEER_NODE_MAC);
    Sender::open(WIRE_DEV, &answer)?.send(1)?;
    let line = entry()?.with_context(|| format!("the conntrack entry {original}... went away"))?;
    ensure!(
        !line.contains("[UNREPLIED]"),
        "the backend's answer did not reach conntrack: {line}"
    );
    Ok(())
}

/// The destination port of a conntrack line's reply tuple (the second `dport=`): the port the node
/// masqueraded the client's flow to.
fn masquerade_port(line: &str) -> Option<u16> {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix("dport="))
        .nth(1)?
        .parse()
        .ok()
}

/// Writes the client's frame, the destination it must come back with and the run flag for
/// `bench_xdp_reflect`.
fn set_frame(dp: &mut TestDatapath, frame: &[u8], to: std::net::Ipv4Addr, run: bool) -> anyhow::Result<()> {
    ensure!(
        frame.len() == FRAME_LEN,
        "the frame is {} bytes, not {FRAME_LEN}",
        frame.len()
    );
    let mut slot: FrameSlot = [0; common::bench::FRAME_SLOT];
    slot[..FRAME_LEN].copy_from_slice(frame);
    slot[DST_AT..DST_AT + 4].copy_from_slice(&to.octets());
    slot[RUN_AT] = u8::from(run);
    let map = dp
        .datapath
        .ebpf_mut()
        .map_mut(FRAME_MAP)
        .with_context(|| format!("map {FRAME_MAP} missing from the object"))?;
    let mut array: aya::maps::Array<_, FrameSlot> = aya::maps::Array::try_from(map)
        .with_context(|| format!("{FRAME_MAP} is not an array of frame slots"))?;
    array
        .set(0, slot, 0)
        .with_context(|| format!("writing {FRAME_MAP}"))?;
    Ok(())
}

fn xdp_program<'a>(dp: &'a mut TestDatapath, name: &str) -> anyhow::Result<&'a mut Xdp> {
    Ok(dp
        .datapath
        .ebpf_mut()
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("{name} missing from the object"))?
        .try_into()?)
}

/// The calling thread's namespace's conntrack table, one entry a line.
fn conntrack_table() -> anyhow::Result<String> {
    std::fs::read_to_string("/proc/thread-self/net/nf_conntrack")
        .context("reading this namespace's conntrack table")
}

/// Whether the conntrack table holds the flow from the client's `port` as kube-proxy translates it:
/// answered by the backend's target port, to the node's address (DNAT and masquerade).
fn kube_proxy_translated(port: u16) -> anyhow::Result<()> {
    let table = conntrack_table()?;
    let original = format!("src={CLIENT} dst={NODE} sport={port} dport={NODE_PORT} ");
    let reply = format!("src={REMOTE_BACKEND} dst={NODE} sport={TARGET_PORT} ");
    ensure!(
        table.lines().any(|l| l.contains(&original) && l.contains(&reply)),
        "no conntrack entry {original}... with reply {reply}...; the table:\n{table}"
    );
    Ok(())
}

/// A 60-byte UDP frame from the client's `port` to the NodePort (or, `direct`, to the backend
/// itself), addressed to np0 (the stack takes it only with np0's MAC).
fn client_frame(port: u16, direct: bool) -> Vec<u8> {
    let (dst, dport) = if direct {
        (REMOTE_BACKEND, TARGET_PORT)
    } else {
        (NODE, NODE_PORT)
    };
    let mut pk = Ipv4Packet::udp(CLIENT, port, dst, dport);
    pk.payload = vec![0x5a; 18];
    let mut frame = pk.build();
    frame[0..6].copy_from_slice(&NODE_MAC);
    frame[6..12].copy_from_slice(&CLIENT_MAC);
    frame
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
            // frame; the kernel reads them and writes only each header's `msg_len`.
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

/// The device's received-packets counter, in the calling thread's namespace. Read from procfs
/// rather than with `ip`: a child process would run on the measured CPU (it inherits the pinning).
fn rx_packets(dev: &str) -> anyhow::Result<u64> {
    let table = std::fs::read_to_string("/proc/thread-self/net/dev").context("reading net/dev")?;
    rx_packets_in(&table, dev).with_context(|| format!("no receive count for {dev} in net/dev"))
}

/// `dev`'s received packets in a `net/dev` table (`  name: rx_bytes rx_packets ...`).
fn rx_packets_in(table: &str, dev: &str) -> Option<u64> {
    table.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        (name.trim() == dev).then_some(())?;
        counters.split_whitespace().nth(1)?.parse().ok()
    })
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
  chain filter-forward {{ type filter hook forward priority -110; ct state invalid drop; ct state new jump service-endpoints-check; ct state new jump cluster-ips-check; }}
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
    fn reads_a_device_s_received_packets_from_net_dev() {
        let table = "Inter-|   Receive                            |  Transmit\n \
                     face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n    \
                     lo:     120       2    0    0    0     0          0         0      120       2\n   \
                     np1: 9876543  164609    0    0    0     0          0         0     4200      70\n";
        assert_eq!(rx_packets_in(table, "np1"), Some(164_609));
        assert_eq!(rx_packets_in(table, "lo"), Some(2));
        assert_eq!(rx_packets_in(table, "np0"), None);
    }

    #[test]
    fn the_masquerade_port_is_the_reply_tuple_s_destination() {
        let line = "ipv4     2 udp      17 29 src=10.0.0.254 dst=10.0.0.10 sport=40000 dport=30080 \
                    [UNREPLIED] src=10.244.2.11 dst=10.0.0.10 sport=8080 dport=61723 mark=0 zone=0 use=2";
        assert_eq!(masquerade_port(line), Some(61723));
        assert_eq!(masquerade_port("src=1.2.3.4 dport=80"), None);
    }

    #[test]
    fn the_frame_is_for_the_node_port_and_addressed_to_np0() {
        let frame = client_frame(CLIENT_PORT, false);
        assert_eq!(frame.len(), FRAME_LEN);
        assert_eq!(&frame[0..6], &NODE_MAC);
        let seen = packet::read(&frame);
        assert_eq!((seen.src, seen.dst, seen.dport), (CLIENT, NODE, NODE_PORT));
    }
}
