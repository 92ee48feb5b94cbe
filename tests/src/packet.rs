//! Crafted packets for BPF_PROG_TEST_RUN: Ethernet + IPv4 + TCP/UDP with valid checksums, and readers
//! for the fields the tests assert on.

use std::net::Ipv4Addr;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_ICMP: u8 = 1;

pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An IPv4 packet in an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Ipv4Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// IPv4 options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    /// Fragment offset in 8-byte units; non-zero makes this a later fragment (no L4 header).
    pub frag_offset: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// UDP: send a zero ("no checksum") instead of computing one.
    pub udp_zero_checksum: bool,
}

impl Ipv4Packet {
    fn new(proto: u8, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            src,
            dst,
            proto,
            sport,
            dport,
            payload: b"hello".to_vec(),
            options: Vec::new(),
            frag_offset: 0,
            tcp_flags: TCP_SYN,
            seq: 1000,
            ack: 0,
            udp_zero_checksum: false,
        }
    }

    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self::new(PROTO_TCP, src, sport, dst, dport)
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self::new(PROTO_UDP, src, sport, dst, dport)
    }

    pub fn sctp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self::new(PROTO_SCTP, src, sport, dst, dport)
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = if self.frag_offset != 0 {
            self.payload.clone()
        } else {
            match self.proto {
                PROTO_TCP => self.tcp_segment(),
                PROTO_UDP => self.udp_datagram(),
                PROTO_SCTP => self.sctp_packet(),
                other => panic!("packet builder: protocol {other} not supported"),
            }
        };
        assert!(
            self.options.len().is_multiple_of(4) && self.options.len() <= 40,
            "IPv4 options: multiple of 4, at most 40"
        );
        let ihl = IPV4_LEN + self.options.len();
        let mut p = Vec::with_capacity(ETH_LEN + IPV4_LEN + l4.len());
        p.extend_from_slice(&HOST_MAC);
        p.extend_from_slice(&POD_MAC);
        p.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (ihl + l4.len()) as u16;
        let mut ip = vec![0u8; IPV4_LEN];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let frag: u16 = if self.frag_offset != 0 {
            self.frag_offset
        } else {
            0x4000
        }; // DF unless fragment
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let csum = checksum(&ip);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        p.extend_from_slice(&ip);
        p.extend_from_slice(&l4);
        p
    }

    fn pseudo_header(&self, l4_len: usize) -> Vec<u8> {
        let mut ph = Vec::with_capacity(12);
        ph.extend_from_slice(&self.src.octets());
        ph.extend_from_slice(&self.dst.octets());
        ph.push(0);
        ph.push(self.proto);
        ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
        ph
    }

    fn tcp_segment(&self) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&self.sport.to_be_bytes());
        t[2..4].copy_from_slice(&self.dport.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = self.tcp_flags;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t.extend_from_slice(&self.payload);
        let mut sum_input = self.pseudo_header(t.len());
        sum_input.extend_from_slice(&t);
        let csum = checksum(&sum_input);
        t[16..18].copy_from_slice(&csum.to_be_bytes());
        t
    }

    fn udp_datagram(&self) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&self.sport.to_be_bytes());
        u[2..4].copy_from_slice(&self.dport.to_be_bytes());
        let len = (8 + self.payload.len()) as u16;
        u[4..6].copy_from_slice(&len.to_be_bytes());
        u.extend_from_slice(&self.payload);
        let mut sum_input = self.pseudo_header(u.len());
        sum_input.extend_from_slice(&u);
        let csum = match checksum(&sum_input) {
            0 => 0xffff, // UDP sends a computed zero as all ones
            c => c,
        };
        if !self.udp_zero_checksum {
            u[6..8].copy_from_slice(&csum.to_be_bytes());
        }
        u
    }

    /// SCTP common header (ports, verification tag, CRC32c) and one DATA-like chunk of payload.
    fn sctp_packet(&self) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p[0..2].copy_from_slice(&self.sport.to_be_bytes());
        p[2..4].copy_from_slice(&self.dport.to_be_bytes());
        p[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        let chunk_len = 4 + self.payload.len();
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&(chunk_len as u16).to_be_bytes());
        p.extend_from_slice(&self.payload);
        while !p.len().is_multiple_of(4) {
            p.push(0);
        }
        let crc = crc32c(&p);
        p[8..12].copy_from_slice(&crc.to_le_bytes());
        p
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// CRC32c (Castagnoli), bit by bit: slow and obviously right, as a reference for the datapath's table.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The fields of a frame the tests assert on, read independently of the datapath's parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub l4: usize,
}

pub fn read(frame: &[u8]) -> Seen {
    assert!(
        frame.len() >= ETH_LEN + IPV4_LEN,
        "frame too short: {} bytes",
        frame.len()
    );
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = ETH_LEN + ihl;
    let o = |i: usize| Ipv4Addr::new(ip[i], ip[i + 1], ip[i + 2], ip[i + 3]);
    let be16 = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
    let proto = ip[9];
    let has_ports = matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && frame.len() >= l4 + 4;
    Seen {
        src: o(12),
        dst: o(16),
        proto,
        sport: if has_ports { be16(l4) } else { 0 },
        dport: if has_ports { be16(l4 + 2) } else { 0 },
        tcp_flags: if proto == PROTO_TCP && frame.len() >= l4 + 14 {
            frame[l4 + 13]
        } else {
            0
        },
        seq: if proto == PROTO_TCP && frame.len() >= l4 + 8 {
            be32(l4 + 4)
        } else {
            0
        },
        ack: if proto == PROTO_TCP && frame.len() >= l4 + 12 {
            be32(l4 + 8)
        } else {
            0
        },
        l4,
    }
}

/// True when the frame's L4 checksum verifies (TCP/UDP over the pseudo-header, ICMP over its message,
/// SCTP by CRC32c). A zero UDP checksum ("none") counts as valid.
pub fn l4_checksum_ok(frame: &[u8]) -> bool {
    let s = read(frame);
    let ip = &frame[ETH_LEN..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let seg = &frame[s.l4..ETH_LEN + total];
    match s.proto {
        PROTO_TCP | PROTO_UDP => {
            if s.proto == PROTO_UDP && seg[6] == 0 && seg[7] == 0 {
                return true;
            }
            let mut input = Vec::new();
            input.extend_from_slice(&ip[12..20]);
            input.extend_from_slice(&[0, s.proto]);
            input.extend_from_slice(&(seg.len() as u16).to_be_bytes());
            input.extend_from_slice(seg);
            checksum(&input) == 0
        }
        PROTO_ICMP => checksum(seg) == 0,
        PROTO_SCTP => {
            let mut copy = seg.to_vec();
            let stored = u32::from_le_bytes([copy[8], copy[9], copy[10], copy[11]]);
            copy[8..12].copy_from_slice(&[0; 4]);
            crc32c(&copy) == stored
        }
        _ => true,
    }
}

/// RFC 1071 Internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// True when the IPv4 header checksum of a frame verifies.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    checksum(&frame[ETH_LEN..ETH_LEN + ihl]) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_carry_valid_checksums() {
        let p = Ipv4Packet::tcp(Ipv4Addr::new(10, 0, 0, 1), 1000, Ipv4Addr::new(10, 0, 0, 2), 80).build();
        assert!(ipv4_checksum_ok(&p));
        let mut ph = Vec::new();
        ph.extend_from_slice(&p[26..34]);
        ph.extend_from_slice(&[0, PROTO_TCP]);
        ph.extend_from_slice(&((p.len() - 34) as u16).to_be_bytes());
        ph.extend_from_slice(&p[34..]);
        assert_eq!(
            checksum(&ph),
            0,
            "TCP checksum must verify over pseudo-header + segment"
        );
    }
}
