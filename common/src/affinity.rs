//! sessionAffinity: ClientIP — the backend a client used last, per service, for the service's timeout.

use crate::net::Be32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AffinityKey4 {
    /// The service's rev-NAT id: one per (VIP, port, protocol), so it names the frontend.
    pub rev_nat: u32,
    pub client: Be32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
}

pub const MAX_AFFINITY_ENTRIES: u32 = 65_536;

const _: () = assert!(core::mem::size_of::<AffinityKey4>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

#[cfg(feature = "user")]
mod pod_impls {
    #![allow(
        unsafe_code,
        reason = "aya::Pod for repr(C) types whose padding is spelled out"
    )]
    use super::*;
    unsafe impl aya::Pod for AffinityKey4 {}
    unsafe impl aya::Pod for AffinityValue {}
}
