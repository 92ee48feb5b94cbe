//! Pod interfaces: host-side veth ifindex → the address of the pod behind it (anti-spoofing, and the
//! endpoint whose policy applies to packets that cannot be parsed). Every packet a pod sends looks its
//! interface up, so interfaces whose ifindex fits [`DIRECT_SLOTS`] are kept in an array indexed by the
//! ifindex itself: the verifier turns an array lookup into a bounds check and an offset, where a hash
//! lookup is a call that hashes the key. Larger ifindexes (a node that has created more interfaces than
//! that since boot: ifindexes are allocated cyclically and grow with every pod) go to a hash map.

/// Slots of the direct table: 256 KiB of addresses; a slot holding 0 has no pod.
pub const DIRECT_SLOTS: u32 = 65_536;

/// Whether `ifindex` has a slot in the direct table (the other ones live in the hash map).
#[inline(always)]
pub fn is_direct(ifindex: u32) -> bool {
    ifindex < DIRECT_SLOTS
}
