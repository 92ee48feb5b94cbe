//! SCTP's checksum is a CRC32c over the whole packet, so a port rewrite means recomputing it; no kernel
//! helper does that, and this is why other eBPF proxies leave SCTP ports alone. Table-driven, read in
//! 64-byte chunks so the verifier sees two small bounded loops.

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};

/// Packets longer than this are refused rather than sent with a wrong checksum. Covers a 1500-byte MTU
/// with room; jumbo SCTP through a translated port is out of scope.
const MAX_SCTP_BYTES: usize = 2048;
const CHUNK: usize = 64;

static CRC32C_TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    // Reflected Castagnoli polynomial.
    const POLY: u32 = 0x82f6_3b78;
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

#[inline(always)]
fn table(i: u32) -> u32 {
    // The mask keeps the index provably inside the table for the verifier and the compiler alike.
    match CRC32C_TABLE.get((i & 0xff) as usize) {
        Some(v) => *v,
        None => 0,
    }
}

/// Recomputes the CRC32c of the SCTP packet starting at `l4` and stores it in the common header.
#[inline(never)]
pub fn fix_crc32c(ctx: &TcContext, l4: usize) -> Result<(), ()> {
    let total = ctx.len() as usize;
    if total < l4 + 12 {
        return Err(());
    }
    let len = total - l4;
    if len > MAX_SCTP_BYTES {
        return Err(());
    }
    ctx.store(l4 + 8, &0u32, 0).map_err(|_| ())?;
    let mut crc = !0u32;
    let mut buf = [0u8; CHUNK];
    for chunk in 0..MAX_SCTP_BYTES / CHUNK {
        let off = chunk * CHUNK;
        if off >= len {
            break;
        }
        let n = if len - off >= CHUNK { CHUNK } else { len - off };
        if n == 0 {
            return Err(());
        }
        // Masked so the verifier sees a length in 1..=CHUNK (it rejects a possible zero-sized read).
        let n = ((n - 1) & (CHUNK - 1)) + 1;
        // SAFETY: `buf` has CHUNK bytes and n <= CHUNK.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                (l4 + off) as u32,
                buf.as_mut_ptr().cast(),
                n as u32,
            )
        };
        if ret != 0 {
            return Err(());
        }
        for (i, byte) in buf.iter().enumerate() {
            if i >= n {
                break;
            }
            crc = table(crc ^ u32::from(*byte)) ^ (crc >> 8);
        }
    }
    // The kernel stores the final value little-endian (sctp_compute_cksum returns __le32).
    let sum = (!crc).to_le();
    ctx.store(l4 + 8, &sum, 0).map_err(|_| ())
}
