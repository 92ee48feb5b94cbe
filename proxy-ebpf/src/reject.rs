//! Refusing a client of a Service without endpoints, as kube-proxy's REJECT rule does: TCP gets a RST,
//! UDP and SCTP an ICMP port unreachable. The packet is turned into the answer in place and sent back
//! out of the interface it arrived on, so the client learns at once instead of timing out.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use common::net::proto;

use crate::parse::{ETH_HLEN, Ipv4Flow, ptr_at, tcp_flags};

const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// ICMP quotes the offending IP header and the first 8 bytes of its payload.
const ICMP_QUOTE: usize = IP_HLEN + 8;

/// Answers the packet described by `flow` and returns the tc action.
#[inline(never)]
pub fn refuse(ctx: &TcContext, flow: &Ipv4Flow) -> i32 {
    // IP options would shift every offset below; such clients get a silent drop instead.
    if flow.l4 != ETH_HLEN + IP_HLEN {
        return TC_ACT_SHOT;
    }
    let built = match flow.proto {
        proto::TCP => tcp_rst(ctx, flow),
        proto::UDP | proto::SCTP => icmp_port_unreachable(ctx, flow),
        _ => Err(()),
    };
    if built.is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: reading the ifindex of the skb this program runs on.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: helper without preconditions; flags 0 = egress of that interface, i.e. back to the pod.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

#[inline(always)]
pub fn swap_macs(ctx: &TcContext) -> Result<(), ()> {
    let eth = ptr_at::<[u8; 12]>(ctx.data(), ctx.data_end(), 0).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    let macs = unsafe { &mut *eth };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    *macs = swapped;
    Ok(())
}

/// Sum of a 20-byte IPv4 header as the kernel would compute it, written into its checksum field.
#[inline(always)]
fn fill_ip_header(ip: &mut [u8; IP_HLEN]) {
    ip[10] = 0;
    ip[11] = 0;
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < IP_HLEN {
        sum += u32::from(u16::from_be_bytes([ip[i], ip[i + 1]]));
        i += 2;
    }
    let csum = fold(sum);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

fn tcp_rst(ctx: &TcContext, flow: &Ipv4Flow) -> Result<(), ()> {
    if flow.tcp_flags & tcp_flags::RST != 0 {
        return Err(()); // never answer a RST
    }
    let l4 = ETH_HLEN + IP_HLEN;
    let tcp = ptr_at::<[u8; TCP_HLEN]>(ctx.data(), ctx.data_end(), l4).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    let tcp_in = unsafe { *tcp };
    let seq = u32::from_be_bytes([tcp_in[4], tcp_in[5], tcp_in[6], tcp_in[7]]);
    let ack = u32::from_be_bytes([tcp_in[8], tcp_in[9], tcp_in[10], tcp_in[11]]);
    let doff = usize::from(tcp_in[12] >> 4) * 4;
    let payload = usize::from(flow.ip_len).saturating_sub(IP_HLEN + doff) as u32;
    let mut consumed = payload;
    if flow.tcp_flags & tcp_flags::SYN != 0 {
        consumed += 1;
    }
    if flow.tcp_flags & tcp_flags::FIN != 0 {
        consumed += 1;
    }
    // RFC 9293 3.10.7.1: answer an ACK with seq=its ack; otherwise seq 0 and ACK the segment.
    let (rst_seq, rst_ack, flags) = if flow.tcp_flags & tcp_flags::ACK != 0 {
        (ack, 0u32, tcp_flags::RST)
    } else {
        (0u32, seq.wrapping_add(consumed), tcp_flags::RST | tcp_flags::ACK)
    };
    // SAFETY: helper on this program's skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (l4 + TCP_HLEN) as u32, 0) } != 0 {
        return Err(());
    }
    swap_macs(ctx)?;
    let ip = ptr_at::<[u8; IP_HLEN]>(ctx.data(), ctx.data_end(), ETH_HLEN).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &mut *ip };
    let (src, dst) = ([ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]]);
    ip[1] = 0;
    ip[2..4].copy_from_slice(&((IP_HLEN + TCP_HLEN) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[7] = 0;
    ip[8] = 64;
    ip[12..16].copy_from_slice(&dst);
    ip[16..20].copy_from_slice(&src);
    fill_ip_header(ip);

    let tcp = ptr_at::<[u8; TCP_HLEN]>(ctx.data(), ctx.data_end(), l4).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    let tcp = unsafe { &mut *tcp };
    let mut out = [0u8; TCP_HLEN];
    out[0..2].copy_from_slice(&tcp_in[2..4]);
    out[2..4].copy_from_slice(&tcp_in[0..2]);
    out[4..8].copy_from_slice(&rst_seq.to_be_bytes());
    out[8..12].copy_from_slice(&rst_ack.to_be_bytes());
    out[12] = 5 << 4;
    out[13] = flags;
    // Checksum: pseudo-header (new src = old dst) plus the header itself.
    let mut sum: u32 = 0;
    for pair in [
        [dst[0], dst[1]],
        [dst[2], dst[3]],
        [src[0], src[1]],
        [src[2], src[3]],
    ] {
        sum += u32::from(u16::from_be_bytes(pair));
    }
    sum += u32::from(proto::TCP) + TCP_HLEN as u32;
    let mut i = 0;
    while i < TCP_HLEN {
        sum += u32::from(u16::from_be_bytes([out[i], out[i + 1]]));
        i += 2;
    }
    out[16..18].copy_from_slice(&fold(sum).to_be_bytes());
    *tcp = out;
    Ok(())
}

fn icmp_port_unreachable(ctx: &TcContext, flow: &Ipv4Flow) -> Result<(), ()> {
    let _ = flow;
    // Room for the new IP and ICMP headers in front of the offending packet, which becomes the quote.
    ctx.adjust_room((IP_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| ())?;
    let total = ETH_HLEN + IP_HLEN + ICMP_HLEN + ICMP_QUOTE;
    // SAFETY: helper on this program's skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, total as u32, 0) } != 0 {
        return Err(());
    }
    swap_macs(ctx)?;
    let quote_off = ETH_HLEN + IP_HLEN + ICMP_HLEN;
    let quoted = ptr_at::<[u8; ICMP_QUOTE]>(ctx.data(), ctx.data_end(), quote_off).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    let quoted = unsafe { &*quoted };
    let (client, vip) = (
        [quoted[12], quoted[13], quoted[14], quoted[15]],
        [quoted[16], quoted[17], quoted[18], quoted[19]],
    );

    let ip = ptr_at::<[u8; IP_HLEN]>(ctx.data(), ctx.data_end(), ETH_HLEN).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &mut *ip };
    *ip = [0; IP_HLEN];
    ip[0] = 0x45;
    ip[1] = 0xc0;
    ip[2..4].copy_from_slice(&((IP_HLEN + ICMP_HLEN + ICMP_QUOTE) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto::ICMP;
    ip[12..16].copy_from_slice(&vip);
    ip[16..20].copy_from_slice(&client);
    fill_ip_header(ip);

    let icmp_off = ETH_HLEN + IP_HLEN;
    let icmp = ptr_at::<[u8; ICMP_HLEN + ICMP_QUOTE]>(ctx.data(), ctx.data_end(), icmp_off).ok_or(())?;
    // SAFETY: bounds checked by ptr_at.
    let icmp = unsafe { &mut *icmp };
    icmp[..ICMP_HLEN].copy_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    // SAFETY: `icmp` is a checked region of ICMP_HLEN + ICMP_QUOTE bytes (a multiple of 4).
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            icmp.as_mut_ptr().cast(),
            (ICMP_HLEN + ICMP_QUOTE) as u32,
            0,
        )
    };
    if sum < 0 {
        return Err(());
    }
    let csum = fold(sum as u32);
    // csum_diff sums 32-bit words in memory order; folding gives the checksum in network order bytes.
    icmp[2..4].copy_from_slice(&csum.to_ne_bytes());
    Ok(())
}
