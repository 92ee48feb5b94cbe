//! Direct server return for north-south traffic (`--nodeport-mode=dsr`): the entry node puts the
//! frontend into an IPv4 option (`common::dsr`) of the packets it forwards to a backend on another node;
//! the backend's node records it in conntrack, takes the option out and delivers the packet, and its pod's
//! answer leaves from the frontend straight to the client (`lb::from_pod`).

use aya_ebpf::{
    bindings::{BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, bpf_adj_room_mode::BPF_ADJ_ROOM_NET},
    helpers::bpf_xdp_adjust_head,
    programs::{TcContext, XdpContext},
};
use common::{
    ct::{CtEntry4, CtKey4, ct_flags},
    dsr::{self, Frontend, OPTION_LEN, OPTION_OFFSET},
    net::{Be16, Be32, proto},
};

use crate::{
    ct, fib,
    maps::STRAIT_CT4_V2 as CT4,
    parse::{ETH_HLEN, Ipv4Flow, ptr_at, tcp_flags},
};

const IP_FIXED: usize = 20;
const OPT: usize = OPTION_LEN as usize;
const OPT_AT: usize = ETH_HLEN + OPTION_OFFSET;

/// Whether a packet of a DSR connection carries the option: a TCP connection's first packet (SYN, and
/// its retransmissions) is enough, since the backend's node keeps what it read in conntrack; UDP and SCTP
/// have no such first packet, so every one carries it and the backend's node refreshes its entry.
#[inline(always)]
pub fn carries_option(flow: &Ipv4Flow) -> bool {
    flow.proto != proto::TCP || flow.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
}

#[inline(always)]
fn option_for(frontend_addr: u32, frontend_port: u16) -> [u8; OPT] {
    dsr::encode(Frontend {
        addr: Be32::from_raw(frontend_addr),
        port: Be16::from_raw(frontend_port),
    })
}

/// XDP: makes room for the option in front of the packet, moves the Ethernet and fixed IPv4 headers
/// into it and writes the option after them. `flow` is updated to the new layout. On error the packet
/// is as it was, or (when the header moved) the caller must drop it.
#[inline(always)]
pub fn xdp_insert(
    ctx: &XdpContext,
    flow: &mut Ipv4Flow,
    frontend_addr: u32,
    frontend_port: u16,
) -> Result<(), ()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ip = ptr_at::<[u8; IP_FIXED]>(start, end, ETH_HLEN).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    let grown = dsr::grown_header(unsafe { &*ip }, &option_for(frontend_addr, frontend_port)).ok_or(())?;
    // SAFETY: helper on the context this program runs on; a negative delta prepends room.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OPT as i32)) } != 0 {
        return Err(());
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let eth_old = ptr_at::<[u8; ETH_HLEN]>(start, end, OPT).ok_or(())?;
    let eth_new = ptr_at::<[u8; ETH_HLEN]>(start, end, 0).ok_or(())?;
    let ip_new = ptr_at::<[u8; IP_FIXED + OPT]>(start, end, ETH_HLEN).ok_or(())?;
    // SAFETY: every pointer was bounds-checked against data_end; the Ethernet header moves down first,
    // then the grown IPv4 header (built from a copy) overwrites what is left of the old one.
    unsafe {
        *eth_new = *eth_old;
        *ip_new = grown;
    }
    flow.l4 += OPT;
    flow.ip_len += OPTION_LEN as u16;
    Ok(())
}

/// tc: the same insertion with the skb helpers (for what XDP left to tc: an unresolved neighbour, SCTP,
/// no XDP at all). `flow` is updated to the new layout.
#[inline(always)]
pub fn tc_insert(
    ctx: &TcContext,
    flow: &mut Ipv4Flow,
    frontend_addr: u32,
    frontend_port: u16,
) -> Result<(), ()> {
    let old: [u8; IP_FIXED] = ctx.load(ETH_HLEN).map_err(|_| ())?;
    let grown = dsr::grown_header(&old, &option_for(frontend_addr, frontend_port)).ok_or(())?;
    // BPF_ADJ_ROOM_NET makes room right after the fixed IPv4 header, where the option goes; the grown
    // header is written over the fixed header and the new room together.
    ctx.adjust_room(OPT as i32, BPF_ADJ_ROOM_NET, 0).map_err(|_| ())?;
    ctx.store(ETH_HLEN, &grown, u64::from(BPF_F_RECOMPUTE_CSUM))
        .map_err(|_| ())?;
    flow.l4 += OPT;
    flow.ip_len += OPTION_LEN as u16;
    Ok(())
}

/// The backend's node, tc ingress of its device: a packet carrying the option gets a conntrack entry for
/// its reply direction (backend → client) flagged DSR with the frontend, then leaves without the option
/// for the backend. Anything else is left to the stack.
#[inline(always)]
pub fn deliver(ctx: &TcContext, flow: &mut Ipv4Flow) -> i32 {
    if flow.later_fragment || !crate::nat::has_ports(flow.proto) || flow.l4 < OPT_AT + OPT {
        return TC_ACT_OK;
    }
    let Ok(option) = ctx.load::<[u8; OPT]>(OPT_AT) else {
        return TC_ACT_OK;
    };
    let Some(frontend) = dsr::decode(&option) else {
        return TC_ACT_OK;
    };
    record(flow, frontend);
    if strip(ctx, flow, &option).is_err() {
        return crate::drop(common::event::DropReason::NatFailed);
    }
    fib::tc_redirect(ctx, flow)
}

/// The reply entry: the backend answering this client restores the frontend as its source.
#[inline(always)]
fn record(flow: &Ipv4Flow, frontend: Frontend) {
    let reply = CtKey4 {
        saddr: Be32::from_raw(flow.daddr),
        daddr: Be32::from_raw(flow.saddr),
        sport: Be16::from_raw(flow.dport),
        dport: Be16::from_raw(flow.sport),
        proto: flow.proto,
        _pad: 0,
        _pad2: 0,
    };
    if let Some(e) = ct::lookup(&reply)
        && e.flags & ct_flags::DSR != 0
        && e.orig_saddr == frontend.addr
        && e.wire_port == frontend.port
    {
        ct::touch(e, flow, 0);
        return;
    }
    let entry = CtEntry4 {
        backend_id: 0,
        rev_nat: 0,
        last_seen_ns: ct::now(),
        rewrite_addr: reply.saddr,
        rewrite_port: reply.sport,
        flags: ct_flags::REPLY | ct_flags::NODEPORT | ct_flags::DSR,
        orig_saddr: frontend.addr,
        client_port: reply.dport,
        wire_port: frontend.port,
    };
    let _ = CT4.insert(&reply, &entry, 0);
}

/// Takes the option out: the shrunk fixed header replaces the old one, then BPF_ADJ_ROOM_NET removes the
/// OPT bytes right after it, which are the option.
#[inline(always)]
fn strip(ctx: &TcContext, flow: &mut Ipv4Flow, option: &[u8; OPT]) -> Result<(), ()> {
    let old: [u8; IP_FIXED] = ctx.load(ETH_HLEN).map_err(|_| ())?;
    let shrunk = dsr::shrunk_header(&old, option).ok_or(())?;
    ctx.store(ETH_HLEN, &shrunk, u64::from(BPF_F_RECOMPUTE_CSUM))
        .map_err(|_| ())?;
    ctx.adjust_room(-(OPT as i32), BPF_ADJ_ROOM_NET, 0)
        .map_err(|_| ())?;
    flow.l4 -= OPT;
    flow.ip_len -= OPTION_LEN as u16;
    Ok(())
}
