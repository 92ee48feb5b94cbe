//! Entry points of the datapath. Each one is thin: it calls a module and maps the result to an action.
#![no_std]
#![no_main]

mod ct;
mod dsr;
mod events;
mod fib;
mod lb;
mod maps;
mod nat;
mod nodeport;
mod parse;
mod policy;
mod reject;
mod sctp;
mod sock;
mod stats;
mod xdp_nat;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_redirect,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use common::{
    event::{DropReason, direction, verdict},
    stats::StatIndex,
};
use events::Context;
use lb::Outcome;
use parse::Parsed;

/// tc ingress on a pod's host-side veth: everything the pod sends.
#[classifier]
pub fn tc_from_pod(ctx: TcContext) -> i32 {
    stats::count(StatIndex::FromPod, ctx.len());
    let ifindex = ifindex(&ctx);
    let pod_addr = iface_addr(ifindex);
    let mut flow = match parse::parse_tc(&ctx) {
        Parsed::Ipv4(flow) => flow,
        Parsed::NotIpv4 => return TC_ACT_OK,
        Parsed::Malformed => {
            return if policy::unreadable_allowed(pod_addr, true) {
                TC_ACT_OK
            } else {
                drop(DropReason::Malformed)
            };
        }
    };
    if pod_addr != 0 && pod_addr != flow.saddr {
        let cx = Context {
            ifindex,
            direction: direction::FROM_POD,
            service_addr: 0,
            service_port: 0,
        };
        events::report(&flow, &cx, verdict::DROPPED, DropReason::Spoofed, 0, 0, 0);
        return drop(DropReason::Spoofed);
    }
    let (service_addr, service_port) = (flow.daddr, flow.dport);
    let mut cx = Context {
        ifindex,
        direction: direction::FROM_POD,
        service_addr: 0,
        service_port: 0,
    };
    match lb::from_pod(&ctx, &mut flow) {
        Outcome::Pass => {}
        // A pod reaching itself through its Service: traffic to itself is never isolated.
        Outcome::RedirectBack => return redirect_back(&ctx),
        // The answer of a connection policy admitted on its way in: not judged again.
        Outcome::ToNetwork => return fib::tc_redirect(&ctx, &flow),
        Outcome::Reject => {
            events::count_drop(DropReason::ServiceRejected);
            cx.service_addr = service_addr;
            cx.service_port = service_port;
            events::report(
                &flow,
                &cx,
                verdict::REJECTED,
                DropReason::ServiceRejected,
                0,
                0,
                0,
            );
            return reject::refuse(&ctx, &flow);
        }
        Outcome::OutsideSourceRanges => {
            cx.service_addr = service_addr;
            cx.service_port = service_port;
            events::report(&flow, &cx, verdict::DROPPED, DropReason::SourceRange, 0, 0, 0);
            return drop(DropReason::SourceRange);
        }
        Outcome::Drop => return drop(DropReason::NoBackend),
    }
    if flow.daddr != service_addr || flow.dport != service_port {
        cx.service_addr = service_addr;
        cx.service_port = service_port;
    }
    match policy::from_pod(&flow, &cx) {
        Ok(()) => TC_ACT_OK,
        Err(reason) => drop(reason),
    }
}

/// tc egress on a pod's host-side veth: everything delivered to the pod.
#[classifier]
pub fn tc_to_pod(ctx: TcContext) -> i32 {
    stats::count(StatIndex::ToPod, ctx.len());
    let ifindex = ifindex(&ctx);
    let mut flow = match parse::parse_tc(&ctx) {
        Parsed::Ipv4(flow) => flow,
        Parsed::NotIpv4 => return TC_ACT_OK,
        Parsed::Malformed => {
            let pod_addr = iface_addr(ifindex);
            return if policy::unreadable_allowed(pod_addr, false) {
                TC_ACT_OK
            } else {
                drop(DropReason::Malformed)
            };
        }
    };
    // Policy and reverse NAT both read the packet's own conntrack entry: one lookup serves both.
    let own = ct::Shared::lookup(&ct::key_of(&flow));
    // Hairpin traffic was redirected here by the pod's own program: the pod reaching itself.
    if flow.saddr != lb::HAIRPIN_ADDR {
        let cx = Context {
            ifindex,
            direction: direction::TO_POD,
            service_addr: 0,
            service_port: 0,
        };
        if let Err(reason) = policy::to_pod(&flow, &cx, own) {
            return drop(reason);
        }
    }
    match lb::to_pod(&ctx, &mut flow, own) {
        Outcome::Pass => TC_ACT_OK,
        Outcome::RedirectBack => redirect_back(&ctx),
        Outcome::Reject | Outcome::Drop | Outcome::ToNetwork | Outcome::OutsideSourceRanges => {
            drop(DropReason::NatFailed)
        }
    }
}

#[inline(always)]
fn drop(reason: DropReason) -> i32 {
    events::count_drop(reason);
    TC_ACT_SHOT
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the skb this program runs on.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The pod address the agent registered for this host veth, 0 if none. Not an `Option`: a `None`
/// carries an undefined payload that LLVM may spill, and the verifier rejects reading it.
#[inline(always)]
fn iface_addr(ifindex: u32) -> u32 {
    if common::iface::is_direct(ifindex) {
        return match maps::STRAIT_IFACES_DIRECT_V1.get(ifindex) {
            Some(a) => a.raw(),
            None => 0,
        };
    }
    // SAFETY: read-only copy of a map value.
    match unsafe { maps::STRAIT_IFACES_V1.get(&ifindex) } {
        Some(a) => a.raw(),
        None => 0,
    }
}

/// Sends the packet out of the interface it arrived on: from a pod's veth ingress that delivers it
/// back into the same pod. The pod addressed the frame to the host's MAC; delivered unchanged, the
/// pod would see a frame for another host and drop it, so the MAC addresses are swapped.
#[inline(always)]
fn redirect_back(ctx: &TcContext) -> i32 {
    if reject::swap_macs(ctx).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: helper without preconditions.
    unsafe { bpf_redirect(ifindex(ctx), 0) as i32 }
}

/// Host-network clients connecting to a Service: the socket is pointed at a backend.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

/// Host-network clients sending UDP datagrams to a Service without connecting.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

/// Answers to translated UDP sockets appear to come from the VIP.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx)
}

/// getpeername() of a translated socket names the VIP it connected to.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx)
}

/// XDP on the node's devices: traffic entering the node from its network. North-south service traffic
/// (TCP and UDP) whose next hop is back out of the same device is translated and sent here, without
/// an skb; everything else goes on to `tc_from_node` and the stack.
#[xdp]
pub fn xdp_node(ctx: XdpContext) -> u32 {
    let len = ctx.data_end().saturating_sub(ctx.data());
    stats::count(StatIndex::XdpNode, len as u32);
    let Parsed::Ipv4(flow) = parse::parse(ctx.data(), ctx.data_end()) else {
        return xdp_action::XDP_PASS;
    };
    // SCTP's CRC32c covers the whole packet: its rewrite is left to tc, which has the helpers.
    if flow.proto != common::net::proto::TCP && flow.proto != common::net::proto::UDP {
        return xdp_action::XDP_PASS;
    }
    match nodeport::plan(&flow) {
        nodeport::Plan::Pass | nodeport::Plan::Reject => xdp_action::XDP_PASS,
        nodeport::Plan::Drop(reason) => {
            events::count_drop(reason);
            xdp_action::XDP_DROP
        }
        nodeport::Plan::Translate(to) => {
            let mut out = flow;
            out.saddr = to.tuple.saddr;
            out.sport = to.tuple.sport;
            out.daddr = to.tuple.daddr;
            out.dport = to.tuple.dport;
            if to.dsr {
                out.ip_len += common::dsr::OPTION_LEN as u16;
            }
            // Only a next hop out of this same device can be reached with XDP_TX; a local backend (its
            // veth) or an unresolved neighbour is left to tc, which decides the same (conntrack).
            match fib::xdp_next_hop(&ctx, &out) {
                Some((ifindex, smac, dmac)) if ifindex == ctx.ingress_ifindex() as u32 => {
                    xdp_translate(&ctx, flow, &to, &smac, &dmac)
                }
                _ => xdp_action::XDP_PASS,
            }
        }
    }
}

/// Rewrites a north-south packet for XDP_TX, the DSR option first (it moves the headers the rewrite
/// then finds at their new offsets).
#[inline(always)]
fn xdp_translate(
    ctx: &XdpContext,
    mut flow: parse::Ipv4Flow,
    to: &nodeport::Rewrite,
    smac: &[u8; 6],
    dmac: &[u8; 6],
) -> u32 {
    if to.dsr {
        let (frontend_addr, frontend_port) = (flow.daddr, flow.dport);
        if dsr::xdp_insert(ctx, &mut flow, frontend_addr, frontend_port).is_err() {
            // The headers may have moved already: the packet cannot go on as it was.
            events::count_drop(DropReason::NatFailed);
            return xdp_action::XDP_DROP;
        }
    }
    match xdp_nat::apply(ctx, &flow, &to.tuple, smac, dmac) {
        Ok(()) => xdp_action::XDP_TX,
        Err(()) if to.dsr => {
            events::count_drop(DropReason::NatFailed);
            xdp_action::XDP_DROP
        }
        Err(()) => xdp_action::XDP_PASS,
    }
}

/// tc ingress on the node's devices: north-south traffic XDP passed on (a backend on this node, SCTP,
/// a neighbour not yet resolved, a refusal to send, or no XDP at all), translated with the skb helpers
/// and redirected to where the routing table says.
#[classifier]
pub fn tc_from_node(ctx: TcContext) -> i32 {
    stats::count(StatIndex::FromNode, ctx.len());
    let Parsed::Ipv4(mut flow) = parse::parse_tc(&ctx) else {
        return TC_ACT_OK;
    };
    match nodeport::plan(&flow) {
        // Not a frontend, but possibly a DSR packet for a backend of this node.
        nodeport::Plan::Pass => dsr::deliver(&ctx, &mut flow),
        nodeport::Plan::Reject => {
            events::count_drop(DropReason::ServiceRejected);
            reject::refuse(&ctx, &flow)
        }
        nodeport::Plan::Drop(reason) => drop(reason),
        nodeport::Plan::Translate(to) => {
            let (frontend_addr, frontend_port) = (flow.daddr, flow.dport);
            if to.dsr && dsr::tc_insert(&ctx, &mut flow, frontend_addr, frontend_port).is_err() {
                return drop(DropReason::NatFailed);
            }
            if nat::rewrite(&ctx, &mut flow, &to.tuple).is_err() || nat::finish(&ctx, &mut flow).is_err() {
                return drop(DropReason::NatFailed);
            }
            fib::tc_redirect(&ctx, &flow)
        }
    }
}

/// Baseline for benchmarks: the cheapest possible tc program, measured in the same run as the real
/// ones so per-packet costs are reported as ratios. Never attached.
#[classifier]
pub fn bench_tc_bare(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Reference for benchmarks: what parsing a packet and one conntrack lookup cost on their own, the
/// least an established flow must do. Passes the packet when its conntrack entry exists, drops it
/// otherwise (so a benchmark can check it measured a hit). Never attached.
#[classifier]
pub fn bench_tc_ct(ctx: TcContext) -> i32 {
    let Parsed::Ipv4(flow) = parse::parse_tc(&ctx) else {
        return TC_ACT_SHOT;
    };
    match ct::lookup(&ct::key_of(&flow)) {
        Some(_) => TC_ACT_OK,
        None => TC_ACT_SHOT,
    }
}

/// Baseline for benchmarks: the cheapest possible XDP program. Never attached.
#[xdp]
pub fn bench_xdp_bare(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Reference for the forwarding benchmark (tests/src/forwarding.rs), attached there to the node's
/// device: sends every frame back out where it came from, untouched, so the benchmark measures its
/// loop's own cost. Never attached by the agent.
#[xdp]
pub fn bench_xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// The forwarding benchmark's loop: a frame the node forwarded to the expected destination is
/// overwritten with the client's frame (`maps::BENCH_FRAME`) and sent to the node again, so a few
/// frames keep the node forwarding with no sender. Anything else, and everything while the run flag
/// is 0, is dropped. Never attached by the agent.
#[xdp]
pub fn bench_xdp_reflect(ctx: XdpContext) -> u32 {
    use common::bench::{DST_AT, FRAME_DST_OFFSET, FRAME_LEN, RUN_AT};
    let Some(slot) = maps::BENCH_FRAME.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let start = ctx.data();
    if slot[RUN_AT] == 0 || start + FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the packet holds FRAME_LEN bytes from `start` (checked just above), the destination
    // lies within them, and the map value holds more than FRAME_LEN bytes; the two never overlap.
    unsafe {
        let dst = (start + FRAME_DST_OFFSET) as *const [u8; 4];
        if core::ptr::read_unaligned(dst)
            != [slot[DST_AT], slot[DST_AT + 1], slot[DST_AT + 2], slot[DST_AT + 3]]
        {
            return xdp_action::XDP_DROP;
        }
        core::ptr::copy_nonoverlapping(slot.as_ptr(), start as *mut u8, FRAME_LEN);
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No panic is reachable in verified code; the loop only satisfies the type.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
