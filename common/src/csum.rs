//! Incremental Internet checksum updates (RFC 1624) for code without the kernel's checksum helpers (XDP),
//! on raw network-order values read as native integers: the one's-complement sum does not depend on the
//! byte order as long as every operand is read the same way.

/// One's-complement sum of 64-bit partial sums folded to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// A checksum after fields whose one's-complement difference is `diff` changed.
#[inline(always)]
pub fn updated(csum: u16, diff: u64) -> u16 {
    !fold(u64::from(!csum) + diff)
}

/// The difference a 32-bit field makes going from `old` to `new`.
#[inline(always)]
pub fn diff32(old: u32, new: u32) -> u64 {
    u64::from(!old) + u64::from(new)
}

/// The difference a 16-bit field makes going from `old` to `new` (0 for a word added or removed).
#[inline(always)]
pub fn diff16(old: u16, new: u16) -> u64 {
    u64::from(!old) + u64::from(new)
}
