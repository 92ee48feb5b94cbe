//! bpf(2) commands aya does not offer: issued directly, with the command's part of `union bpf_attr`
//! laid out by the caller in a zeroed buffer.
#![allow(unsafe_code, reason = "the bpf(2) system call")]

use std::io;

/// Size of the `union bpf_attr` region the commands used here read; the rest stays zero.
pub const ATTR_SIZE: usize = 64;

pub fn sys_bpf(cmd: libc::c_long, attr: &mut [u8; ATTR_SIZE]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a buffer as large as the size passed, laid out as the command's part of
    // `union bpf_attr`; pointers in it are the caller's to keep valid for the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_SIZE as libc::c_uint) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Writes `value` at `offset` of `attr`.
pub fn put_u64(attr: &mut [u8; ATTR_SIZE], offset: usize, value: u64) {
    attr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

pub fn put_u32(attr: &mut [u8; ATTR_SIZE], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

pub fn get_u32(attr: &[u8; ATTR_SIZE], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&attr[offset..offset + 4]);
    u32::from_ne_bytes(b)
}
