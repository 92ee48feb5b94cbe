//! Forwarding decisions from the kernel's own routing and neighbour tables (bpf_fib_lookup), so a
//! translated packet leaves by the route the node would use, without a detour through the stack (which
//! would drop it: after SNAT its source is one of the node's own addresses, a martian on input).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, bpf_fib_lookup as FibParams},
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};

use crate::parse::Ipv4Flow;

const AF_INET: u8 = 2;

/// Where a packet with this (already rewritten) flow would leave, looked up as if it arrived on
/// `ifindex`. Returns the helper's result code and the filled parameters.
#[inline(always)]
fn lookup(ctx: *mut core::ffi::c_void, ifindex: u32, flow: &Ipv4Flow) -> (i64, FibParams) {
    // SAFETY: an all-zero bpf_fib_lookup is a valid starting point; the fields used are set below.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = flow.proto;
    params.sport = flow.sport;
    params.dport = flow.dport;
    params.__bindgen_anon_1.tot_len = flow.ip_len;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = flow.saddr;
    params.__bindgen_anon_4.ipv4_dst = flow.daddr;
    // SAFETY: `params` is a valid bpf_fib_lookup of the size passed.
    let ret = unsafe { bpf_fib_lookup(ctx, &mut params, core::mem::size_of::<FibParams>() as i32, 0) };
    (ret, params)
}

/// The egress interface and MAC addresses for `flow`, when the route and the neighbour are both known.
#[inline(always)]
pub fn xdp_next_hop(ctx: &XdpContext, flow: &Ipv4Flow) -> Option<(u32, [u8; 6], [u8; 6])> {
    let ingress = ctx.ingress_ifindex() as u32;
    let (ret, params) = lookup(ctx.ctx as *mut _, ingress, flow);
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return None;
    }
    Some((params.ifindex, params.smac, params.dmac))
}

/// Sends the (already rewritten) packet out where the routing table says, resolving the neighbour if
/// needed; without a route it is handed to the stack.
#[inline(always)]
pub fn tc_redirect(ctx: &TcContext, flow: &Ipv4Flow) -> i32 {
    // SAFETY: reading a field of the skb this program runs on.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    let (ret, params) = lookup(ctx.skb.skb as *mut _, ingress, flow);
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && ret != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return TC_ACT_OK;
    }
    // SAFETY: helper without pointer arguments (no next-hop given: the kernel resolves it).
    unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}
