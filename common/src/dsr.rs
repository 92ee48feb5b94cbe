//! The IPv4 option that carries a north-south connection's frontend from the node it entered to the
//! node of its backend, in direct server return (`--nodeport-mode=dsr`).
//!
//! Layout (8 bytes, so the header stays a multiple of 4 without padding): type, length, the frontend port,
//! the frontend address, both network order. The entry node puts it first, right after the fixed
//! 20-byte header, so the backend's node finds it at one fixed offset.
//!
//! The type is 158 = copied flag set, class 0, number 30: the value RFC 4727 sets aside for experiments,
//! so it means nothing to a router or host that meets it. Linux ignores options it does not know on
//! packets it receives or forwards; "copied" keeps it in every fragment if a router splits the packet.

use crate::net::{Be16, Be32};

pub const OPTION_TYPE: u8 = 158;
pub const OPTION_LEN: u8 = 8;
/// The option's offset from the start of the IPv4 header.
pub const OPTION_OFFSET: usize = 20;

/// The frontend a DSR packet was addressed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub addr: Be32,
    pub port: Be16,
}

/// The option's bytes for `frontend`.
pub fn encode(frontend: Frontend) -> [u8; 8] {
    let a = frontend.addr.octets();
    let p = frontend.port.get().to_be_bytes();
    [OPTION_TYPE, OPTION_LEN, p[0], p[1], a[0], a[1], a[2], a[3]]
}

/// The frontend in `bytes` when they are this option.
pub fn decode(bytes: &[u8; 8]) -> Option<Frontend> {
    if bytes[0] != OPTION_TYPE || bytes[1] != OPTION_LEN {
        return None;
    }
    Some(Frontend {
        addr: Be32::from_octets([bytes[4], bytes[5], bytes[6], bytes[7]]),
        port: Be16::new(u16::from_be_bytes([bytes[2], bytes[3]])),
    })
}

#[inline(always)]
fn word(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

/// The fixed 20-byte IPv4 header `old` with `option` placed right after it: header length and total
/// length grow by 8, the checksum is updated for both and for the option's words. Options `old`
/// already had follow the new one unchanged. `None` when the header has no room left (60 bytes).
#[inline(always)]
pub fn grown_header(old: &[u8; 20], option: &[u8; 8]) -> Option<[u8; 28]> {
    let ihl = old[0] & 0x0f;
    if ihl > 13 {
        return None;
    }
    let len = u16::from_be_bytes([old[2], old[3]]).checked_add(u16::from(OPTION_LEN))?;
    let mut out = [0u8; 28];
    out[..20].copy_from_slice(old);
    out[0] = (old[0] & 0xf0) | (ihl + 2);
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out[20..].copy_from_slice(option);
    let diff = crate::csum::diff16(word(old, 0), word(&out, 0))
        + crate::csum::diff16(word(old, 2), word(&out, 2))
        + crate::csum::diff16(0, word(option, 0))
        + crate::csum::diff16(0, word(option, 2))
        + crate::csum::diff16(0, word(option, 4))
        + crate::csum::diff16(0, word(option, 6));
    let csum = crate::csum::updated(word(old, 10), diff).to_ne_bytes();
    out[10] = csum[0];
    out[11] = csum[1];
    Some(out)
}

/// The fixed 20-byte IPv4 header `old` once `option` (right after it) is removed: the reverse of
/// `grown_header`.
#[inline(always)]
pub fn shrunk_header(old: &[u8; 20], option: &[u8; 8]) -> Option<[u8; 20]> {
    let ihl = old[0] & 0x0f;
    if ihl < 7 {
        return None;
    }
    let len = u16::from_be_bytes([old[2], old[3]]).checked_sub(u16::from(OPTION_LEN))?;
    let mut out = *old;
    out[0] = (old[0] & 0xf0) | (ihl - 2);
    out[2..4].copy_from_slice(&len.to_be_bytes());
    let diff = crate::csum::diff16(word(old, 0), word(&out, 0))
        + crate::csum::diff16(word(old, 2), word(&out, 2))
        + crate::csum::diff16(word(option, 0), 0)
        + crate::csum::diff16(word(option, 2), 0)
        + crate::csum::diff16(word(option, 4), 0)
        + crate::csum::diff16(word(option, 6), 0);
    let csum = crate::csum::updated(word(old, 10), diff).to_ne_bytes();
    out[10] = csum[0];
    out[11] = csum[1];
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071, written out independently of `csum`.
    fn checksum(b: &[u8]) -> u16 {
        let mut sum: u32 = b
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn header() -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 203, 0, 113, 9, 10, 244, 2, 11,
        ];
        let c = checksum(&h).to_be_bytes();
        h[10..12].copy_from_slice(&c);
        h
    }

    #[test]
    fn option_round_trips() {
        let f = Frontend {
            addr: Be32::from_octets([10, 0, 0, 10]),
            port: Be16::new(30080),
        };
        let bytes = encode(f);
        assert_eq!(bytes, [158, 8, 0x75, 0x80, 10, 0, 0, 10]);
        assert_eq!(decode(&bytes), Some(f));
        assert_eq!(decode(&[7, 8, 0, 0, 0, 0, 0, 0]), None, "another option type");
        assert_eq!(decode(&[158, 12, 0, 0, 0, 0, 0, 0]), None, "another length");
    }

    #[test]
    fn growing_and_shrinking_keep_the_header_valid() {
        let old = header();
        let opt = encode(Frontend {
            addr: Be32::from_octets([10, 0, 0, 10]),
            port: Be16::new(30080),
        });
        let grown = grown_header(&old, &opt).unwrap();
        assert_eq!(grown[0], 0x47, "IHL 7");
        assert_eq!(u16::from_be_bytes([grown[2], grown[3]]), 68);
        assert_eq!(checksum(&grown), 0, "a valid header sums to zero");
        let mut fixed = [0u8; 20];
        fixed.copy_from_slice(&grown[..20]);
        let shrunk = shrunk_header(&fixed, &opt).unwrap();
        assert_eq!(shrunk, old);
        assert_eq!(shrunk_header(&old, &opt), None, "nothing to remove");
        let mut full = old;
        full[0] = 0x4e;
        assert_eq!(grown_header(&full, &opt), None, "no room in a 56-byte header");
    }
}
