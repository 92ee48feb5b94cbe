//! Hash maps in batches: reading a whole map with BPF_MAP_LOOKUP_BATCH (a few system calls per
//! thousand entries, where aya's iterator makes two per entry: next key, then lookup; the conntrack
//! sweeper reads up to 256k entries every few seconds), and writing runs of entries with
//! BPF_MAP_UPDATE_BATCH (a first sync at 10k Services writes ~130k load-balancing entries).
#![allow(
    unsafe_code,
    reason = "the kernel writes map entries into the buffers handed to it"
)]

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::maps::Map;

use super::bpf_sys::{ATTR_SIZE, get_u32, put_u32, put_u64, sys_bpf};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Entries asked for per call.
const PER_CALL: usize = 4096;

/// Every entry of `map` (keys `K`, values `V`, as the map was created with), read in batches;
/// `Ok(None)` when the map is no hash map or the kernel cannot read it in batches, so the caller walks
/// it instead. Entries changed while the map is read may or may not be seen, as with any walk of a live
/// map. Reads at most about `limit` entries.
pub fn read_hash<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &Map,
    limit: usize,
) -> io::Result<Option<Vec<(K, V)>>> {
    let (Map::HashMap(data) | Map::LruHashMap(data)) = map else {
        return Ok(None);
    };
    match read_all(data.fd().as_fd(), limit) {
        Ok(all) => Ok(Some(all)),
        Err(e) if unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every entry of the hash map behind `map`, or the error of the first call that failed.
fn read_all<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    limit: usize,
) -> io::Result<Vec<(K, V)>> {
    let mut all = Vec::new();
    let mut keys = vec![K::default(); PER_CALL];
    let mut values = vec![V::default(); PER_CALL];
    // The position between calls; for hash maps a bucket index (4 bytes). Room for any map's token.
    let mut position = [0u8; 64];
    let mut next = [0u8; 64];
    let mut first = true;
    // Each call returns at least one entry or ends the walk; bounded anyway.
    for _ in 0..=limit / PER_CALL + 1_024 {
        let mut attr = [0u8; ATTR_SIZE];
        put_u64(&mut attr, 0, if first { 0 } else { position.as_ptr() as u64 });
        put_u64(&mut attr, 8, next.as_mut_ptr() as u64);
        put_u64(&mut attr, 16, keys.as_mut_ptr() as u64);
        put_u64(&mut attr, 24, values.as_mut_ptr() as u64);
        put_u32(&mut attr, 32, PER_CALL as u32);
        put_u32(&mut attr, 36, map.as_raw_fd() as u32);
        let result = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The kernel writes back how many entries it copied, also with the ENOENT that ends the walk.
        let copied = (get_u32(&attr, 32) as usize).min(PER_CALL);
        all.extend(
            keys[..copied]
                .iter()
                .copied()
                .zip(values[..copied].iter().copied()),
        );
        match result {
            Ok(_) if all.len() < limit => {}
            Ok(_) => return Ok(all),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(all),
            Err(e) => return Err(e),
        }
        position = next;
        first = false;
    }
    Ok(all)
}

/// Writes `keys[i]` → `values[i]` into the hash map behind `map`, in order, in calls of up to
/// `PER_CALL` entries (flags `BPF_ANY`). `Ok(false)`: the map is no hash map or the kernel cannot write
/// it in batches, and nothing was written, so the caller writes one by one. `Err((written, e))`: the
/// entries before `written` are in the map; the one at `written` failed with `e`.
pub fn update_hash<K: aya::Pod, V: aya::Pod>(
    map: &Map,
    keys: &[K],
    values: &[V],
) -> Result<bool, (usize, io::Error)> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let (Map::HashMap(data) | Map::LruHashMap(data)) = map else {
        return Ok(false);
    };
    let fd = data.fd().as_fd();
    let mut written = 0;
    while written < keys.len() {
        let n = (keys.len() - written).min(PER_CALL);
        let mut attr = [0u8; ATTR_SIZE];
        put_u64(&mut attr, 16, keys[written..].as_ptr() as u64);
        put_u64(&mut attr, 24, values[written..].as_ptr() as u64);
        put_u32(&mut attr, 32, n as u32);
        put_u32(&mut attr, 36, fd.as_raw_fd() as u32);
        let result = sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        // The kernel writes back how many entries it wrote, also when one failed.
        let done = (get_u32(&attr, 32) as usize).min(n);
        match result {
            Ok(_) => written += n,
            Err(e) if written == 0 && done == 0 && unsupported(&e) => return Ok(false),
            Err(e) => return Err((written + done, e)),
        }
    }
    Ok(true)
}

/// The kernel's own "not supported" (ENOTSUPP, not a user-space errno), which bpf(2) returns for a map
/// type without batch operations.
const KERNEL_ENOTSUPP: i32 = 524;

/// Whether `e` says the kernel cannot read this map in batches.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | KERNEL_ENOTSUPP)
    )
}
