//! The forwarding benchmark's frame map (`BENCH_FRAME`, see tests/src/forwarding.rs): one entry the
//! benchmark writes and `bench_xdp_reflect` reads. Nothing of the agent's uses it.

/// Bytes of the map's value.
pub const FRAME_SLOT: usize = 68;
/// The client's frame: the value's first bytes (a 60-byte Ethernet frame, the minimum).
pub const FRAME_LEN: usize = 60;
/// Where the value holds the IPv4 destination (network order) a frame must have been forwarded to
/// for `bench_xdp_reflect` to send it round again; anything else the node sends is dropped.
pub const DST_AT: usize = FRAME_LEN;
/// The IPv4 destination's offset in a frame (Ethernet header, then the IPv4 header's field).
pub const FRAME_DST_OFFSET: usize = 14 + 16;
/// 1 while `bench_xdp_reflect` sends frames round, 0 to drop them.
pub const RUN_AT: usize = DST_AT + 4;

pub type FrameSlot = [u8; FRAME_SLOT];

const _: () = assert!(RUN_AT < FRAME_SLOT && FRAME_DST_OFFSET + 4 <= FRAME_LEN);
