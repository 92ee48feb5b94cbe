//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), the pure part: a set of backends → the
//! lookup table the XDP datapath will index with a flow hash.
//!
//! Why Maglev for north-south traffic: a load balancer in front of the nodes may send the packets of
//! one connection to different nodes (ECMP rehash, a node added). Every node builds the same table
//! from the same backends, so whichever node a packet reaches picks the same backend without shared
//! state; and a backend change moves few flows that were not on the backend that changed.
//!
//! The table depends only on the backends' names and the table size: names are hashed with a fixed,
//! seeded function defined here (never `std`'s randomly keyed hasher), and backends are sorted and
//! de-duplicated first, so input order and duplicates do not matter.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr};

use common::lb::SCOPE_EXTERNAL;

use super::{FrontendKind, LbPlan, Proto};

/// The flag that sets the table size; named in every error about it.
pub const FLAG: &str = "--maglev-table-size";
/// 16381 entries: close to 2^14, prime, ≥ 100 entries per backend up to 163 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;
/// Smaller tables cannot spread even a handful of backends evenly.
pub const MIN_TABLE_SIZE: u32 = 251;
/// The kernel keeps each table as one map value of fixed capacity (`common::lb::MAGLEV_MAX`, 64 KiB),
/// replaced whole so no flow sees half a table; a larger table would cost that much per Service even
/// when the flag asks for less.
pub const MAX_TABLE_SIZE: u32 = common::lb::MAGLEV_MAX as u32;
/// Maglev's balance guarantee weakens as backends approach the table size; the paper's advice is a
/// table at least 100 times larger than the backend set.
pub const ENTRIES_PER_BACKEND: u32 = 100;

/// A validated table size: prime (so that every skip visits every slot) and within
/// [`MIN_TABLE_SIZE`]..=[`MAX_TABLE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSize(u32);

impl TableSize {
    pub fn new(m: u32) -> Result<Self, String> {
        if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&m) {
            return Err(format!(
                "{FLAG} {m}: must be between {MIN_TABLE_SIZE} and {MAX_TABLE_SIZE}"
            ));
        }
        if !is_prime(m) {
            return Err(format!(
                "{FLAG} {m}: must be a prime (e.g. 251, 1021, 4093, 8191, 16381)"
            ));
        }
        Ok(Self(m))
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// `Err` (a warning, the table is still built) when `backends` is too many for an even spread.
    pub fn check_backends(self, backends: usize) -> Result<(), String> {
        if backends as u64 * u64::from(ENTRIES_PER_BACKEND) <= u64::from(self.0) {
            return Ok(());
        }
        Err(format!(
            "{backends} backends with {FLAG} {}: fewer than {ENTRIES_PER_BACKEND} entries per backend, \
             the spread is uneven (raise {FLAG} to a prime ≥ {})",
            self.0,
            backends as u64 * u64::from(ENTRIES_PER_BACKEND)
        ))
    }
}

impl Default for TableSize {
    fn default() -> Self {
        Self(DEFAULT_TABLE_SIZE)
    }
}

impl FromStr for TableSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let m = s
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{FLAG} {s:?}: not a number"))?;
        Self::new(m)
    }
}

impl fmt::Display for TableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// FNV-1a (64 bit) over `seed` then `bytes`, finished with MurmurHash3's 64-bit finaliser. FNV-1a alone
/// is well defined but mixes its last bytes poorly, and backend names ("10.244.1.11:8080",
/// "10.244.1.12:8080") differ in few, late bytes; the finaliser spreads that difference over every bit.
/// Fixed constants: the same value on every node, build and architecture.
pub fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in seed.to_le_bytes().iter().chain(bytes) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Seeds of the two hashes that give a backend its permutation (any two distinct constants do; these
/// are fixed forever, as changing them reshuffles every table).
const OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
const SKIP_SEED: u64 = 0x6d61_676c_6576_0002;

/// A Maglev lookup table: `entries[i]` is an index into `backends`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevTable {
    /// Sorted, without duplicates.
    pub backends: Vec<String>,
    /// `size` entries; empty when there are no backends.
    pub entries: Vec<u32>,
}

impl MaglevTable {
    /// How many entries each backend holds, in `backends` order.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.backends.len()];
        for &e in &self.entries {
            counts[e as usize] += 1;
        }
        counts
    }

    /// The backend a flow with hash `flow_hash` goes to (what the datapath will do: hash mod size).
    pub fn pick(&self, flow_hash: u64) -> Option<&str> {
        if self.entries.is_empty() {
            return None;
        }
        let slot = (flow_hash % self.entries.len() as u64) as usize;
        Some(&self.backends[self.entries[slot] as usize])
    }
}

/// Builds the table for `names` (any order, duplicates ignored). Each backend walks its own permutation
/// of the slots and, round after round, claims the next free one; so every backend holds either
/// ⌊M/N⌋ or ⌈M/N⌉ entries, and a backend that leaves mostly frees only its own entries.
pub fn build<S: AsRef<str>>(size: TableSize, names: &[S]) -> MaglevTable {
    let mut backends: Vec<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
    backends.sort();
    backends.dedup();
    let m = u64::from(size.get());
    if backends.is_empty() {
        return MaglevTable {
            backends,
            entries: Vec::new(),
        };
    }
    // (offset, skip) of each backend's permutation: slot j of backend i is (offset + j·skip) mod M.
    // skip ∈ 1..M and M prime, so the permutation visits every slot.
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|name| {
            let offset = stable_hash(OFFSET_SEED, name.as_bytes()) % m;
            let skip = stable_hash(SKIP_SEED, name.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    const FREE: u32 = u32::MAX;
    let mut entries = vec![FREE; m as usize];
    let mut next = vec![0u64; backends.len()];
    let mut filled = 0u64;
    'rounds: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % m;
            while entries[slot as usize] != FREE {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            entries[slot as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'rounds;
            }
        }
    }
    MaglevTable { backends, entries }
}

/// The stable name a backend is hashed by: the same string on every node for the same endpoint.
pub fn backend_name(addr: Ipv4Addr, port: u16) -> String {
    format!("{addr}:{port}")
}

/// The tables the XDP datapath needs: one per external frontend address:port/protocol (NodePort,
/// externalIP, LoadBalancer; external scope only, as traffic that starts on this node never passes
/// XDP) that has backends. Keyed like the frontend, so the map writer can look up its rev-NAT id.
/// `warnings` lists frontends with too many backends for the table size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredMaglev {
    pub tables: BTreeMap<(Ipv4Addr, u16, Proto), MaglevTable>,
    pub warnings: Vec<String>,
}

fn external_frontends(plan: &LbPlan) -> impl Iterator<Item = &super::Frontend> {
    plan.frontends
        .iter()
        .filter(|f| f.kind != FrontendKind::ClusterIp && f.scope == SCOPE_EXTERNAL && !f.backends.is_empty())
        .map(|f| &**f)
}

/// The frontends whose backends are too many for `size` (cheap: no table is built).
pub fn warnings(plan: &LbPlan, size: TableSize) -> Vec<String> {
    external_frontends(plan)
        .filter_map(|f| {
            size.check_backends(f.backends.len())
                .err()
                .map(|w| format!("Service {} {}:{}/{}: {w}", f.service, f.addr, f.port, f.proto))
        })
        .collect()
}

pub fn desired(plan: &LbPlan, size: TableSize) -> DesiredMaglev {
    let mut out = DesiredMaglev {
        warnings: warnings(plan, size),
        ..Default::default()
    };
    // Frontends of one Service port share their backends; build each distinct set once.
    let mut cache: BTreeMap<Vec<String>, MaglevTable> = BTreeMap::new();
    for f in external_frontends(plan) {
        let mut names: Vec<String> = f.backends.iter().map(|b| backend_name(b.addr, b.port)).collect();
        names.sort();
        names.dedup();
        let table = cache
            .entry(names)
            .or_insert_with_key(|names| build(size, names))
            .clone();
        out.tables.insert((f.addr, f.port, f.proto), table);
    }
    out
}

/// A stable text form (golden tests): per table, the backends and the entries as indices, 64 a line.
pub fn render(desired: &DesiredMaglev) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for ((addr, port, proto), t) in &desired.tables {
        let _ = writeln!(out, "{addr}:{port}/{proto} size={}", t.entries.len());
        for (i, (b, n)) in t.backends.iter().zip(t.counts()).enumerate() {
            let _ = writeln!(out, "  [{i}] {b} entries={n}");
        }
        // Single digits need no separator, and keep a 64-entry line short.
        let sep = if t.backends.len() <= 10 { "" } else { " " };
        for chunk in t.entries.chunks(64) {
            let line: Vec<String> = chunk.iter().map(u32::to_string).collect();
            let _ = writeln!(out, "  {}", line.join(sep));
        }
    }
    for w in &desired.warnings {
        let _ = writeln!(out, "WARNING {w}");
    }
    out
}

#[cfg(test)]
#[path = "maglev_tests.rs"]
mod tests;
