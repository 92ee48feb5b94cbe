//! The forwarding benchmark's frame map (`BENCH_FRAME`, see tests/src/forwarding.rs): one entry the
//! benchmark writes and `bench_xdp_reflect` reads. Nothing of the agent's uses it.

/// Bytes of the map's value.
pub const FRAME_SLOT: usize = 64;
/// The frame itself: its first bytes of the value (a 60-byte Ethernet frame, the minimum).
pub const FRAME_LEN: usize = 60;
/// The value's last byte: 1 while `bench_xdp_reflect` sends frames back to the node, 0 to drop them.
pub const RUN_AT: usize = FRAME_SLOT - 1;

pub type FrameSlot = [u8; FRAME_SLOT];

const _: () = assert!(FRAME_LEN < RUN_AT);
