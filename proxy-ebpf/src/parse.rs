//! Packet parsing with bounds checks the verifier can see. Nothing here writes to the packet.

use aya_ebpf::programs::TcContext;
use common::net::proto;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;

/// Typed pointer into the packet, or `None` when `T` at `offset` would run past the end.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// An IPv4 packet's addressing, read once and passed to every stage.
#[derive(Clone, Copy)]
pub struct Ipv4Flow {
    /// Offset of the L4 header (after IP options).
    pub l4: usize,
    /// Raw network-order values, as in the packet.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// A fragment other than the first: it carries no L4 header.
    pub later_fragment: bool,
    /// Total length of the IP packet (header + payload), host order.
    pub ip_len: u16,
    /// SCTP: a port was rewritten and the CRC32c must be redone (`nat::finish`) before the packet leaves.
    pub crc_stale: bool,
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// What parsing found.
pub enum Parsed {
    /// Not IPv4 (ARP, IPv6 until its datapath lands): passed untouched.
    NotIpv4,
    /// IPv4 whose headers are cut short or malformed.
    Malformed,
    Ipv4(Ipv4Flow),
}

#[inline(always)]
pub fn parse_tc(ctx: &TcContext) -> Parsed {
    // Headers may sit beyond the linear part of the skb. Pulling is a helper call that costs on every
    // packet, so it is done only when the linear part is shorter than Ethernet + IPv4 with options +
    // TCP and the packet itself is longer than that.
    const HEADERS: usize = ETH_HLEN + 60 + 20;
    let linear = ctx.data_end().saturating_sub(ctx.data());
    if linear < HEADERS && (ctx.len() as usize) > linear {
        let _ = ctx.pull_data(HEADERS as u32);
    }
    parse(ctx.data(), ctx.data_end())
}

#[inline(always)]
pub fn parse(start: usize, end: usize) -> Parsed {
    let Some(eth_type) = ptr_at::<[u8; 2]>(start, end, 12) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    if u16::from_be_bytes(unsafe { *eth_type }) != ETH_P_IP {
        return Parsed::NotIpv4;
    }
    let Some(ip) = ptr_at::<[u8; 20]>(start, end, ETH_HLEN) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    let ip_len = u16::from_be_bytes([ip[2], ip[3]]);
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let mut flow = Ipv4Flow {
        l4: ETH_HLEN + ihl,
        saddr: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        daddr: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        sport: 0,
        dport: 0,
        proto: ip[9],
        tcp_flags: 0,
        later_fragment: frag & 0x1fff != 0,
        ip_len,
        crc_stale: false,
    };
    if flow.later_fragment {
        return Parsed::Ipv4(flow);
    }
    match flow.proto {
        proto::TCP => {
            let Some(tcp) = ptr_at::<[u8; 14]>(start, end, flow.l4) else {
                return Parsed::Malformed;
            };
            // SAFETY: bounds checked by ptr_at.
            let tcp = unsafe { &*tcp };
            flow.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
            flow.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
            flow.tcp_flags = tcp[13];
        }
        proto::UDP | proto::SCTP => {
            // UDP and SCTP both start with source and destination port.
            let Some(ports) = ptr_at::<[u8; 4]>(start, end, flow.l4) else {
                return Parsed::Malformed;
            };
            // SAFETY: bounds checked by ptr_at.
            let ports = unsafe { &*ports };
            flow.sport = u16::from_ne_bytes([ports[0], ports[1]]);
            flow.dport = u16::from_ne_bytes([ports[2], ports[3]]);
        }
        _ => {}
    }
    Parsed::Ipv4(flow)
}
