//! Programming from cold: with N Services (10 endpoints each) already in the API, each proxy in turn
//! is stopped, its datapath removed by its own cleanup (`lab proxy stop --cleanup`: `proxy-agent
//! cleanup`, `kube-proxy --cleanup`), and started again (`lab proxy start`); the time runs from the
//! start until a sample of Services (the last created, the middle, the first) all answer through
//! it. The same for all three proxies: clients connecting ~100 times a second per Service from the
//! start on, the first answer per Service, the slowest of the sample.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    first_answer_unix_ms,
    lab_cli::{lab, strings},
    objects::{self, PROXIES},
};

/// One proxy's cold starts at one size.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cold {
    /// Per round: process start → every sampled Service answered, ms.
    pub serving_ms: Vec<f64>,
    /// Per round: process start → the last-created Service answered, ms.
    pub last_service_ms: Vec<f64>,
    /// Rounds where a sampled Service never answered within the bound (not in `serving_ms`).
    pub missed: usize,
    /// Rounds left out: a Service answered before the proxy started (see the notes).
    #[serde(default)]
    pub invalid: usize,
    /// Per round: how long the proxy's own cleanup ran.
    pub cleanup_ms: Vec<f64>,
}

/// The Services a cold start waits for: the last created first (the one the new-Service figure
/// uses), then the middle and the first.
pub fn sample(n: usize) -> Vec<usize> {
    let mut v = vec![n - 1, n / 2, 0];
    v.dedup();
    v
}

/// How long a proxy may take from start to serving `n` Services before the round counts as missed.
fn bound(n: usize) -> Duration {
    Duration::from_secs_f64((60.0 + n as f64 * 0.012).min(300.0))
}

/// `rounds` cold starts of every proxy at `n` Services (order rotated by round). `pids` is updated
/// with the restarted processes.
pub fn measure(
    n: usize,
    rounds: usize,
    pids: &mut BTreeMap<String, i32>,
    notes: &mut Vec<String>,
) -> Result<BTreeMap<String, Cold>> {
    let mut out: BTreeMap<String, Cold> = BTreeMap::new();
    for r in 0..rounds {
        for k in 0..PROXIES.len() {
            let p = &PROXIES[(k + r) % PROXIES.len()];
            eprintln!(
                "xtask bench e2e: {n} services, cold start of {} ({} of {rounds})",
                p.mode,
                r + 1
            );
            let cold = out.entry(p.mode.to_string()).or_default();
            let (pid, one) = once(p, n, notes)?;
            pids.insert(p.mode.to_string(), pid);
            cold.cleanup_ms.push(one.cleanup_ms);
            match one.per_service_ms.iter().copied().collect::<Option<Vec<f64>>>() {
                _ if one.invalid => cold.invalid += 1,
                Some(all) => {
                    cold.serving_ms.push(all.iter().copied().fold(f64::MIN, f64::max));
                    cold.last_service_ms.push(all[0]);
                }
                None => cold.missed += 1,
            }
        }
    }
    Ok(out)
}

struct Once {
    cleanup_ms: f64,
    /// Per sampled Service (in `sample` order): start → first answer.
    per_service_ms: Vec<Option<f64>>,
    /// A Service answered before the start.
    invalid: bool,
}

fn once(p: &objects::Proxy, n: usize, notes: &mut Vec<String>) -> Result<(i32, Once)> {
    let stop: Value =
        serde_json::from_str(&lab(&strings(&["proxy", "stop", p.node, "--cleanup", "--json"]))?)
            .context("parsing `lab proxy stop --json`")?;
    let cleanup_ms = stop["cleanup_ms"]
        .as_f64()
        .context("`lab proxy stop --json` has no cleanup_ms")?;
    if stop["cleanup_timed_out"].as_bool() == Some(true) {
        notes.push(format!(
            "{n} services, cold start of {}: its own cleanup did not finish within the lab's bound \
             ({cleanup_ms:.0} ms): killed, and the node's rules flushed before the start",
            p.mode
        ));
    }
    let limit = bound(n);
    let targets = sample(n);
    let watchers: Vec<_> = targets
        .iter()
        .map(|&i| {
            let to = format!("{}:{}", objects::vip(i), objects::SERVICE_PORT);
            super::watch_until_served(p.client(), to, limit)
        })
        .collect();
    // The clients must be sending before the proxy starts; their reports say when they began.
    std::thread::sleep(Duration::from_millis(1500));
    let start: Value = serde_json::from_str(&lab(&strings(&["proxy", "start", p.node, "--json"]))?)
        .context("parsing `lab proxy start --json`")?;
    let started = start["started_unix_ms"]
        .as_u64()
        .context("`lab proxy start --json` has no started_unix_ms")? as f64;
    let pid = start["pid"]
        .as_i64()
        .context("`lab proxy start --json` has no pid")? as i32;
    let mut per_service_ms = Vec::new();
    let mut invalid = false;
    for (&i, w) in targets.iter().zip(watchers) {
        let report = w.join().expect("watcher thread")?;
        let name = objects::service_name(i);
        if report.started_unix_ms as f64 > started {
            notes.push(format!(
                "{n} services, cold start of {}: the client of {name} started {:.0} ms after the proxy",
                p.mode,
                report.started_unix_ms as f64 - started
            ));
        }
        let mut first = first_answer_unix_ms(&report, None);
        if let Some(at) = first
            && at < started
        {
            // The cleanup was checked; what answers is most likely a connection of an earlier
            // round still in the node's conntrack with its NAT. Not a cold start: left out.
            notes.push(format!(
                "{n} services, cold start of {}: {name} answered {:.0} ms before the proxy started; \
                 round left out",
                p.mode,
                started - at
            ));
            invalid = true;
            first = None;
        }
        if first.is_none() && !invalid {
            notes.push(format!(
                "{n} services, cold start of {}: {name} never answered within {limit:?} of the start",
                p.mode
            ));
        }
        per_service_ms.push(first.map(|at| at - started));
    }
    Ok((
        pid,
        Once {
            cleanup_ms,
            per_service_ms,
            invalid,
        },
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sample_is_last_middle_first_without_repeats() {
        assert_eq!(super::sample(1000), vec![999, 500, 0]);
        assert_eq!(super::sample(2), vec![1, 0]);
        assert_eq!(super::sample(1), vec![0]);
    }
}
