//! EndpointSlice change → new backend, per proxy: a selectorless Service (`churn/echo`) has one
//! endpoint in a slice the bench writes; the bench rewrites it to another backend while each
//! proxy's client connects to the Service ~1000 times a second. The clock starts when the bench's
//! own watch on the slice receives the write's resourceVersion (the moment the change is visible
//! to watchers of the API, as it is to the proxies) and stops when the client sent the first
//! connection the new backend answered (the datapath led there by then). The last connection the
//! old backend answered bounds the switch from below: the gap between the two is each figure's
//! resolution, reported alongside. Changes repeat up to a count and a time budget per size.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{
    SizeResult,
    lab_cli::{self, Kubectl, Load},
    objects::{self, PROXIES},
    slice_watch::SliceWatch,
};
use crate::lab::load::{LoadReport, unix_ms, unix_us};

/// How long a client keeps connecting before the write, so it is surely sending when the change
/// lands (its report says when it began; a late one leaves the change out for that proxy). Also
/// keeps writes over a second apart: kube-proxy syncs at most once a second by default, and the
/// figure is one change's, not a queue's.
const LEAD: Duration = Duration::from_millis(1000);

/// Probing rate and bound for a size: ~1 ms between connections where every proxy answered
/// within a few seconds in earlier runs; slower where kube-proxy took tens of seconds (10k
/// Services), so one client's connections stay below its ephemeral ports (28k) over the bound.
pub fn probe(services: usize) -> (u32, f64) {
    if services <= 2_000 {
        (1_000, 15.0)
    } else {
        (250, 60.0)
    }
}

/// Milliseconds from `from_unix_us` to `offset_s` seconds after a load that began at
/// `started_unix_us` (both on this machine's wall clock).
pub fn ms_after(from_unix_us: u64, started_unix_us: u64, offset_s: f64) -> f64 {
    (started_unix_us as f64 - from_unix_us as f64) / 1000.0 + offset_s * 1000.0
}

/// Up to `reps` changes within `budget`, each from the backend after the previous one; returns
/// the backend the slice points at in the end.
pub fn measure(
    kubectl: &Kubectl,
    size: &mut SizeResult,
    reps: usize,
    budget: Duration,
    mut backend: usize,
    notes: &mut Vec<String>,
) -> Result<usize> {
    let mut watch = SliceWatch::start(kubectl, objects::CHURN_NAMESPACE, objects::CHURN_SLICE)?;
    let end = Instant::now() + budget;
    let mut made = 0;
    while made < reps && Instant::now() < end {
        let next = (backend + 1) % objects::BACKENDS;
        once(kubectl, &mut watch, size, backend, next, notes)?;
        backend = next;
        made += 1;
    }
    if made < reps {
        notes.push(format!(
            "{} services: {made} EndpointSlice changes within the {budget:?} budget (of {reps})",
            size.services
        ));
    }
    Ok(backend)
}

fn once(
    kubectl: &Kubectl,
    watch: &mut SliceWatch,
    size: &mut SizeResult,
    old: usize,
    new: usize,
    notes: &mut Vec<String>,
) -> Result<()> {
    let n = size.services;
    let new_pod = format!("{}/{}", objects::NAMESPACE, objects::backend(new));
    let old_pod = format!("{}/{}", objects::NAMESPACE, objects::backend(old));
    let to = format!("{}:{}", objects::CHURN_VIP, objects::SERVICE_PORT);
    let (rate, seconds) = probe(n);
    let clients: Vec<_> = PROXIES
        .iter()
        .map(|p| {
            let (from, to, pod) = (p.client(), to.clone(), new_pod.clone());
            std::thread::spawn(move || {
                lab_cli::load(&Load {
                    from: &from,
                    to,
                    rate,
                    workers: 8,
                    seconds,
                    timeout_ms: 200,
                    until_answered_by: Some(&pod),
                    via: None,
                })
            })
        })
        .collect();
    std::thread::sleep(LEAD);
    let t = Instant::now();
    let version = kubectl
        .run(
            &["apply", "-f", "-", "-o", "jsonpath={.metadata.resourceVersion}"],
            Some(&objects::churn_slice(new)),
        )?
        .trim()
        .to_string();
    let returned_us = unix_us();
    let written = unix_ms() as f64;
    size.change_kubectl_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    let visible_us = watch
        .seen(&version, Duration::from_secs(10))
        .with_context(|| format!("{n} services: watching the change to {new_pod}"))?;
    match visible_us {
        Some(v) => size
            .change_watch_vs_kubectl_ms
            .push((v as f64 - returned_us as f64) / 1000.0),
        None => notes.push(format!(
            "{n} services: the watch never showed resourceVersion {version} (change to {new_pod}) \
             within 10 s; that change has no API-visible figures"
        )),
    }
    for (p, c) in PROXIES.iter().zip(clients) {
        let report = c.join().expect("client thread")?;
        let mode = p.mode.to_string();
        if !report.answered_by.contains_key(&old_pod) {
            notes.push(format!(
                "EndpointSlice change {old_pod} → {new_pod}, {mode}: no answer from the old backend \
                 before the change (the client may have started late)"
            ));
        }
        // The figure kept for earlier readers: kubectl's return → end of the first new answer.
        match super::first_answer_unix_ms(&report, Some(&new_pod)) {
            Some(at) => size.change_ms.entry(mode.clone()).or_default().push(at - written),
            None => {
                *size.change_missed.entry(mode.clone()).or_default() += 1;
                notes.push(format!(
                    "EndpointSlice change {old_pod} → {new_pod}: {mode} never answered from the new \
                     backend within {seconds} s"
                ));
                continue;
            }
        }
        let Some(visible) = visible_us else { continue };
        match switch(&report, visible, &old_pod, &new_pod) {
            Some((ms, window)) => {
                size.change_visible_ms.entry(mode.clone()).or_default().push(ms);
                if let Some(w) = window {
                    size.change_window_ms.entry(mode).or_default().push(w);
                }
            }
            None => {
                *size.change_left_out.entry(mode.clone()).or_default() += 1;
                notes.push(format!(
                    "{n} services, EndpointSlice change {old_pod} → {new_pod}, {mode}: the client \
                     began {:.1} ms after the change was visible; left out",
                    (report.started_unix_us as f64 - visible as f64) / 1000.0
                ));
            }
        }
    }
    Ok(())
}

/// From the change being visible to the first connection the new backend answered, and the gap
/// since the last one the old backend answered (None if it never did); None when the client was
/// not yet sending at the change.
fn switch(report: &LoadReport, visible_us: u64, old_pod: &str, new_pod: &str) -> Option<(f64, Option<f64>)> {
    if report.started_unix_us > visible_us {
        return None;
    }
    let first_new = *report.first_answer_attempt_s.get(new_pod)?;
    let window = report
        .last_answer_attempt_s
        .get(old_pod)
        .map(|last_old| (first_new - last_old) * 1000.0);
    Some((ms_after(visible_us, report.started_unix_us, first_new), window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_line_up_across_processes_at_microseconds() {
        // Visible at t0 + 2.5 ms; the load began at t0 and sent the first new-backend
        // connection 4.0 ms in: 1.5 ms after the change.
        let t0 = 1_796_000_000_000_000;
        assert!((ms_after(t0 + 2_500, t0, 0.004) - 1.5).abs() < 1e-9);
        // A datapath faster than the bench's watch gives a negative figure, kept as measured.
        assert!((ms_after(t0 + 2_500, t0, 0.001) + 1.5).abs() < 1e-9);
    }

    #[test]
    fn the_switch_is_bracketed_by_the_last_old_and_first_new_answer() {
        let t0 = 1_796_000_000_000_000;
        let mut r = LoadReport {
            started_unix_us: t0,
            ..LoadReport::default()
        };
        r.last_answer_attempt_s.insert("bench/web-1".into(), 1.010);
        r.first_answer_attempt_s.insert("bench/web-2".into(), 1.012);
        let (ms, window) = switch(&r, t0 + 1_005_000, "bench/web-1", "bench/web-2").unwrap();
        assert!((ms - 7.0).abs() < 1e-6, "{ms}");
        assert!((window.unwrap() - 2.0).abs() < 1e-6);
        // A client that began after the change cannot time it.
        assert!(switch(&r, t0 - 1, "bench/web-1", "bench/web-2").is_none());
        // No answer from the new backend: nothing to report.
        assert!(switch(&r, t0 + 1, "bench/web-1", "bench/web-3").is_none());
    }

    #[test]
    fn probing_stays_within_a_clients_ephemeral_ports() {
        for n in [10, 1_000, 10_000, 100_000] {
            let (rate, seconds) = probe(n);
            assert!(
                f64::from(rate) * seconds <= 28_000.0,
                "{n}: {rate}/s for {seconds} s"
            );
        }
    }
}
