//! The conntrack sweeper: expires entries by protocol and state (the LRU only evicts under pressure),
//! and removes UDP flows whose backend was deleted, so nothing keeps pointing at a gone endpoint.
//! It opens the pinned maps itself, so a sweep never holds the agent's datapath lock.

use std::{collections::BTreeSet, path::Path, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use common::{
    ct::{CtEntry4, CtKey4, MAX_CT_ENTRIES, ct_flags},
    lb::{Backend4, MAX_BACKENDS},
    map_names,
    net::proto,
};
use serde::{Deserialize, Serialize};

use super::batch;

/// How long an idle entry lives, by protocol and state. TCP follows Cilium's defaults (6 h established,
/// short once a FIN or RST was seen, a minute before the first answer); UDP and others a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: Duration,
    pub tcp_opening: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_opening: Duration::from_secs(60),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            other: Duration::from_secs(60),
        }
    }
}

/// Why an entry goes, or `None` when it stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    BackendGone,
}

/// The decision for one entry (pure). `now_ns` and `last_seen_ns` are CLOCK_MONOTONIC, as
/// bpf_ktime_get_ns() reports.
pub fn expiry(
    key: &CtKey4,
    entry: &CtEntry4,
    now_ns: u64,
    t: &Timeouts,
    backend_exists: impl Fn(u32) -> bool,
) -> Option<Expiry> {
    // UDP has no connection to keep alive: a flow of a deleted backend must re-balance, not linger.
    if key.proto == proto::UDP && entry.backend_id != 0 && !backend_exists(entry.backend_id) {
        return Some(Expiry::BackendGone);
    }
    let limit = match key.proto {
        proto::TCP if entry.flags & (ct_flags::SEEN_FIN | ct_flags::SEEN_RST) != 0 => t.tcp_closing,
        proto::TCP if entry.flags & (ct_flags::SEEN_REPLY | ct_flags::REPLY) == 0 => t.tcp_opening,
        proto::TCP | proto::SCTP => t.tcp_established,
        proto::UDP => t.udp,
        _ => t.other,
    };
    let idle = Duration::from_nanos(now_ns.saturating_sub(entry.last_seen_ns));
    (idle > limit).then_some(Expiry::Idle)
}

/// Conntrack pressure and sweeper activity, shown by `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CtStats {
    pub entries: u64,
    pub max: u64,
    pub gc_runs: u64,
    pub expired_idle: u64,
    pub expired_backend_gone: u64,
}

pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A pinned hash map, for removals, and every entry it held when read.
type Read<K, V> = (HashMap<MapData, K, V>, Vec<(K, V)>);

/// Every entry of a pinned hash map: read in batches, or walked entry by entry where the kernel cannot
/// read the map in batches (skipping entries that vanish meanwhile, as the LRU's do).
pub(crate) fn entries<K: aya::Pod + Default, V: aya::Pod + Default>(
    pin_dir: &Path,
    name: &str,
    limit: u32,
) -> Result<Read<K, V>> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data)?;
    let batched = batch::read_hash(&map, limit as usize).with_context(|| format!("reading map {name}"))?;
    let map: HashMap<MapData, K, V> = HashMap::try_from(map)?;
    // Entries the LRU removed while we walked are skipped: nothing to do for them.
    let all = batched.unwrap_or_else(|| map.iter().filter_map(Result::ok).collect());
    Ok((map, all))
}

/// One pass over the pinned conntrack map.
pub fn sweep(pin_dir: &Path, t: &Timeouts, stats: &mut CtStats) -> Result<()> {
    let (_, backends) = entries::<u32, Backend4>(pin_dir, map_names::LB4_BACKENDS, MAX_BACKENDS)?;
    let live: BTreeSet<u32> = backends.into_iter().map(|(id, _)| id).collect();
    let (mut ct, all) = entries::<CtKey4, CtEntry4>(pin_dir, map_names::CT4, MAX_CT_ENTRIES)?;
    let now = monotonic_ns();
    let mut doomed = Vec::new();
    let mut entries = 0u64;
    for (key, entry) in all {
        entries += 1;
        if let Some(why) = expiry(&key, &entry, now, t, |id| live.contains(&id)) {
            doomed.push((key, why));
        }
    }
    for (key, why) in doomed {
        if ct.remove(&key).is_ok() {
            entries = entries.saturating_sub(1);
            match why {
                Expiry::Idle => stats.expired_idle += 1,
                Expiry::BackendGone => stats.expired_backend_gone += 1,
            }
        }
    }
    stats.entries = entries;
    stats.max = u64::from(MAX_CT_ENTRIES);
    stats.gc_runs += 1;
    Ok(())
}

/// How often the sweeper walks the table: often enough that closed TCP entries (10 s) and UDP flows of
/// deleted backends do not linger, rarely enough to stay cheap at 256k entries.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

static STATS: std::sync::Mutex<CtStats> = std::sync::Mutex::new(CtStats {
    entries: 0,
    max: MAX_CT_ENTRIES as u64,
    gc_runs: 0,
    expired_idle: 0,
    expired_backend_gone: 0,
});

/// The sweeper's latest figures.
pub fn stats() -> CtStats {
    STATS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Runs the sweeper on its own thread for the life of the agent, on the pinned maps of `pin_dir`.
pub fn spawn_sweeper(pin_dir: std::path::PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("ct-sweeper".into())
        .spawn(move || {
            crate::background::lower_this_thread();
            let timeouts = Timeouts::default();
            loop {
                std::thread::sleep(SWEEP_EVERY);
                let mut s = stats();
                match sweep(&pin_dir, &timeouts, &mut s) {
                    Ok(()) => *STATS.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = s,
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "conntrack sweep failed; retrying"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the conntrack sweeper");
    }
}

#[cfg(test)]
mod tests {
    use common::net::{Be16, Be32};

    use super::*;

    fn key(p: u8) -> CtKey4 {
        CtKey4 {
            saddr: Be32::from_octets([10, 0, 0, 1]),
            daddr: Be32::from_octets([10, 96, 0, 1]),
            sport: Be16::new(1000),
            dport: Be16::new(80),
            proto: p,
            _pad: 0,
            _pad2: 0,
        }
    }

    fn entry(flags: u16, backend_id: u32, last_seen_s: u64) -> CtEntry4 {
        CtEntry4 {
            flags,
            backend_id,
            last_seen_ns: last_seen_s * 1_000_000_000,
            ..Default::default()
        }
    }

    const NOW: u64 = 100_000 * 1_000_000_000;

    #[test]
    fn tcp_lives_by_state() {
        let t = Timeouts::default();
        let all = |_| true;
        let established = entry(ct_flags::FORWARD | ct_flags::SEEN_REPLY, 1, 100_000 - 3600);
        assert_eq!(
            expiry(&key(proto::TCP), &established, NOW, &t, all),
            None,
            "an hour idle is fine"
        );
        let opening = entry(ct_flags::FORWARD, 1, 100_000 - 61);
        assert_eq!(
            expiry(&key(proto::TCP), &opening, NOW, &t, all),
            Some(Expiry::Idle),
            "never answered"
        );
        let closing = entry(
            ct_flags::FORWARD | ct_flags::SEEN_REPLY | ct_flags::SEEN_FIN,
            1,
            100_000 - 11,
        );
        assert_eq!(
            expiry(&key(proto::TCP), &closing, NOW, &t, all),
            Some(Expiry::Idle),
            "closed"
        );
    }

    #[test]
    fn udp_of_a_deleted_backend_goes_at_once() {
        let t = Timeouts::default();
        let fresh = entry(ct_flags::FORWARD, 7, 100_000);
        assert_eq!(
            expiry(&key(proto::UDP), &fresh, NOW, &t, |id| id != 7),
            Some(Expiry::BackendGone)
        );
        assert_eq!(expiry(&key(proto::UDP), &fresh, NOW, &t, |_| true), None);
        // Policy-only entries (no backend) are judged by time alone.
        let policy = entry(ct_flags::EGRESS_OK, 0, 100_000 - 61);
        assert_eq!(
            expiry(&key(proto::UDP), &policy, NOW, &t, |_| false),
            Some(Expiry::Idle)
        );
        // TCP keeps its backend even when the endpoint left the Service.
        let tcp = entry(ct_flags::FORWARD | ct_flags::SEEN_REPLY, 7, 100_000);
        assert_eq!(expiry(&key(proto::TCP), &tcp, NOW, &t, |_| false), None);
    }
}
