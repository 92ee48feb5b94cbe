//! Crafted packets for BPF_PROG_TEST_RUN: Ethernet + IPv4 + TCP/UDP with valid checksums, and readers
//! for the fields the tests assert on.

use std::net::Ipv4Addr;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

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
}

impl Ipv4Packet {
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            src,
            dst,
            proto: PROTO_TCP,
            sport,
            dport,
            payload: b"hello".to_vec(),
        }
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            src,
            dst,
            proto: PROTO_UDP,
            sport,
            dport,
            payload: b"hello".to_vec(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = match self.proto {
            PROTO_TCP => self.tcp_segment(),
            PROTO_UDP => self.udp_datagram(),
            other => panic!("packet builder: protocol {other} not supported"),
        };
        let mut p = Vec::with_capacity(ETH_LEN + IPV4_LEN + l4.len());
        p.extend_from_slice(&HOST_MAC);
        p.extend_from_slice(&POD_MAC);
        p.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (IPV4_LEN + l4.len()) as u16;
        let mut ip = [0u8; IPV4_LEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
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
        t[4..8].copy_from_slice(&1u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x02; // SYN
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
        u[6..8].copy_from_slice(&csum.to_be_bytes());
        u
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
