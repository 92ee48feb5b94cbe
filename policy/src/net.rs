//! IPv4 prefixes and port-range prefixes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix with host bits cleared. Orders by address, then by length (shorter first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// Host bits of `addr` are cleared. Panics if `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Self {
        assert!(len <= 32, "prefix length {len} > 32");
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        }
    }

    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, len: 32 }
    }

    pub fn addr(self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(self) -> u8 {
        self.len
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }

    /// `self ⊆ other`.
    pub fn is_within(self, other: Ipv4Net) -> bool {
        self.len >= other.len && other.contains(self.addr)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A parsed `ipBlock` CIDR: IPv6 prefixes are valid input but match no IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    V4(Ipv4Net),
    V6,
}

impl FromStr for Cidr {
    type Err = String;

    /// `a.b.c.d/len` (host bits are allowed and cleared, as the API server accepts them) or an IPv6
    /// prefix. A bare address without `/len` is rejected, as the API server does.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (no /length)"))?;
        if let Ok(a) = addr.parse::<Ipv4Addr>() {
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?;
            return Ok(Cidr::V4(Ipv4Net::new(a, len)));
        }
        if addr.parse::<std::net::Ipv6Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128) {
            return Ok(Cidr::V6);
        }
        Err(format!("{s:?} is not a valid CIDR"))
    }
}

/// Splits the inclusive port range `lo..=hi` into the fewest aligned prefixes `(value, prefix_bits)`
/// (prefix_bits 0..=16 over the 16-bit port), in ascending order. `0..=65535` is `[(0, 0)]`.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    let (mut cur, end) = (u32::from(lo), u32::from(hi));
    while cur <= end {
        // Largest block aligned at `cur` that fits in the range.
        let mut size = if cur == 0 {
            1 << 16
        } else {
            1u32 << cur.trailing_zeros().min(16)
        };
        while cur + size - 1 > end {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros();
        out.push((
            u16::try_from(cur).expect("port fits u16"),
            u8::try_from(bits).expect("bits ≤ 16"),
        ));
        cur += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        match s.parse::<Cidr>().unwrap() {
            Cidr::V4(n) => n,
            Cidr::V6 => panic!("v6"),
        }
    }

    #[test]
    fn prefixes_contain_and_nest() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert!(net("10.0.0.0/8").contains("10.255.0.1".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(net("10.1.0.0/16").is_within(net("10.0.0.0/8")));
        assert!(net("10.0.0.0/8").is_within(net("10.0.0.0/8")));
        assert!(!net("10.0.0.0/8").is_within(net("10.1.0.0/16")));
        assert!(!net("11.0.0.0/16").is_within(net("10.0.0.0/8")));
        assert!("10.0.0.1".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("banana/8".parse::<Cidr>().is_err());
        assert_eq!("fd00::/64".parse::<Cidr>(), Ok(Cidr::V6));
    }

    /// Checks minimality and exact coverage against a brute-force expansion.
    fn check(lo: u16, hi: u16, expect: &[(u16, u8)]) {
        let got = port_range_prefixes(lo, hi);
        assert_eq!(got, expect, "{lo}..={hi}");
        let mut covered = Vec::new();
        for (v, bits) in &got {
            let size = 1u32 << (16 - bits);
            assert_eq!(u32::from(*v) % size, 0, "aligned");
            covered.extend((u32::from(*v)..u32::from(*v) + size).map(|p| u16::try_from(p).unwrap()));
        }
        assert_eq!(covered, (lo..=hi).collect::<Vec<_>>());
    }

    #[test]
    fn port_ranges_become_minimal_prefixes() {
        check(80, 80, &[(80, 16)]);
        check(0, 65535, &[(0, 0)]);
        check(80, 81, &[(80, 15)]);
        check(81, 82, &[(81, 16), (82, 16)]);
        check(1024, 2047, &[(1024, 6)]);
        check(
            1,
            65535,
            &[
                (1, 16),
                (2, 15),
                (4, 14),
                (8, 13),
                (16, 12),
                (32, 11),
                (64, 10),
                (128, 9),
                (256, 8),
                (512, 7),
                (1024, 6),
                (2048, 5),
                (4096, 4),
                (8192, 3),
                (16384, 2),
                (32768, 1),
            ],
        );
        check(32000, 32768, &[(32000, 8), (32256, 7), (32768, 16)]);
        check(65535, 65535, &[(65535, 16)]);
        assert!(port_range_prefixes(5, 4).is_empty());
        // Worst case stays small: at most 2*16-2 prefixes.
        let worst = (0..=65535u16)
            .step_by(997)
            .map(|lo| port_range_prefixes(lo, 65534).len())
            .max()
            .unwrap();
        assert!(worst <= 30, "{worst}");
    }
}
