//! Socket-level translation for host-network clients (cgroup connect/sendmsg/recvmsg/getpeername
//! hooks): the destination is rewritten at the socket, so a UDP socket needs to map the backend's
//! answers back to the VIP it addressed, per socket.

use crate::net::{Be16, Be32};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SockRevNatKey4 {
    pub cookie: u64,
    pub backend_addr: Be32,
    pub backend_port: Be16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatValue4 {
    pub addr: Be32,
    pub port: Be16,
    pub _pad: u16,
    pub rev_nat: u32,
}

pub const MAX_SOCK_REVNAT: u32 = 65_536;

const _: () = assert!(core::mem::size_of::<SockRevNatKey4>() == 16);
const _: () = assert!(core::mem::size_of::<SockRevNatValue4>() == 12);

#[cfg(feature = "user")]
mod pod_impls {
    #![allow(
        unsafe_code,
        reason = "aya::Pod for repr(C) types whose padding is spelled out"
    )]
    use super::*;
    unsafe impl aya::Pod for SockRevNatKey4 {}
    unsafe impl aya::Pod for SockRevNatValue4 {}
}
