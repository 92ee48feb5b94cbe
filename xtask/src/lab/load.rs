//! `lab load`: new connections at a steady rate for a while, counted by outcome and by the pod that
//! answered — the traffic a restart or an upgrade must not disturb. Each attempt is a full exchange
//! (connect, request, answer, close), so a connection that opens but is never answered is a failure.
//! Pacing is per worker thread: attempt `i` starts at `i / rate`, and a late worker catches up without
//! bursting beyond its share; no attempt starts after `--seconds`, so a machine that cannot keep the
//! rate makes fewer attempts (and says so in `rate_per_s`) instead of running longer.

use std::{
    collections::BTreeMap,
    io::Read,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{
    cgroup, netns,
    probe::{self, Outcome},
    sockets::SocketOpts,
    source,
    spec::Proto,
    state::{Paths, State},
};

/// Longest run accepted: a load is for a test or a demo, never left running.
const MAX_SECONDS: f64 = 600.0;
const MAX_RATE: u32 = 20_000;
/// Failures listed individually (with their time) in the report; the rest are only counted.
const LISTED_FAILURES: usize = 20;
/// Answer times kept for the latency percentiles; later answers are counted but not timed, so a
/// long load at a high rate stays within a few MiB.
const TIMED_ANSWERS: usize = 1_000_000;

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Source: ns/pod, a pod name, node/NAME[:IP] or external[:IP].
    #[arg(long)]
    pub from: String,
    /// Destination IP:PORT (TCP).
    #[arg(long)]
    pub to: String,
    /// How long to keep the load up.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// New connections per second, over all workers.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Worker threads (each paces its share of the rate).
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    /// Per-attempt timeout.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// For the external client: the node service addresses are routed to.
    #[arg(long)]
    pub via: Option<String>,
    /// Stop as soon as this pod (`ns/name`) has answered, or `any` for the first answer: the
    /// moment a change reached the datapath, with `--seconds` as the bound.
    #[arg(long, value_name = "POD|any")]
    pub until_answered_by: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadJob {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub seconds: f64,
    pub rate: u32,
    pub workers: u32,
    pub timeout_ms: u64,
    pub socket: SocketOpts,
    #[serde(default)]
    pub until_answered_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// Seconds since the load started.
    pub at_s: f64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub from: String,
    pub to: String,
    pub attempts: u64,
    pub answered: u64,
    pub failed: u64,
    /// Attempts per second actually made (the requested rate is a target the machine may not reach).
    pub rate_per_s: f64,
    pub seconds: f64,
    /// Outcome → count (answered, refused, timeout, error).
    pub outcomes: BTreeMap<String, u64>,
    /// Pod that answered → count.
    pub answered_by: BTreeMap<String, u64>,
    /// The first failures, with when they happened.
    pub failures: Vec<Failure>,
    /// Wall clock when the load started (ms since the Unix epoch), so another process can line
    /// its own events up with `first_answer_s`.
    #[serde(default)]
    pub started_unix_ms: u64,
    /// The same moment in microseconds, for figures finer than a millisecond.
    #[serde(default)]
    pub started_unix_us: u64,
    /// Pod → seconds from the start to its first answer (the end of that exchange).
    #[serde(default)]
    pub first_answer_s: BTreeMap<String, f64>,
    /// Pod → seconds from the start to the beginning of the first attempt it answered: when the
    /// SYN that reached it was sent, so the datapath already led there (the exchange time after
    /// it is not the datapath's).
    #[serde(default)]
    pub first_answer_attempt_s: BTreeMap<String, f64>,
    /// Pod → seconds from the start to the beginning of the last attempt it answered: with one
    /// endpoint at a time, the datapath still led to it then.
    #[serde(default)]
    pub last_answer_attempt_s: BTreeMap<String, f64>,
    /// Exchange time of answered attempts (connect, request, answer), over the first answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Latency>,
    /// Set when `--until-answered-by` ended the load before `--seconds`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_early: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Answers timed (at most TIMED_ANSWERS).
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Option<Latency> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Some(Latency {
            samples: ms.len() as u64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: ms[ms.len() - 1],
        })
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[arg(long)]
    pub netns: String,
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

pub fn command(paths: &Paths, args: LoadArgs) -> Result<()> {
    let state = State::load(paths)?;
    if !(args.seconds > 0.0 && args.seconds <= MAX_SECONDS) {
        bail!("--seconds {}: must be in (0, {MAX_SECONDS}]", args.seconds);
    }
    if args.rate == 0 || args.rate > MAX_RATE {
        bail!("--rate {}: must be in 1..={MAX_RATE}", args.rate);
    }
    if args.workers == 0 || args.workers > 64 {
        bail!("--workers {}: must be in 1..=64", args.workers);
    }
    let (ip, port) = parse_to(&args.to)?;
    let src = source::resolve(&state, &args.from, args.via.as_deref())?;
    let job = LoadJob {
        ip,
        port,
        seconds: args.seconds,
        rate: args.rate,
        workers: args.workers,
        timeout_ms: args.timeout_ms,
        socket: src.socket,
        until_answered_by: args.until_answered_by.clone(),
    };
    let out = source::run_worker(paths, &src, "load-worker", &[], &serde_json::to_vec(&job)?)?;
    let mut report: LoadReport = serde_json::from_slice(&out).context("reading the load worker's report")?;
    report.from = src.label;
    report.to = args.to.clone();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} -> {}: {} attempts in {:.1} s ({:.0}/s), {} answered, {} failed",
            report.from,
            report.to,
            report.attempts,
            report.seconds,
            report.rate_per_s,
            report.answered,
            report.failed
        );
        if let Some(l) = &report.latency_ms {
            println!(
                "  exchange time: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                l.p50, l.p90, l.p99, l.max
            );
        }
        for (pod, n) in &report.answered_by {
            let first = report.first_answer_s.get(pod).copied().unwrap_or(f64::NAN);
            println!("  {n:>7}  {pod} (first at {first:.3} s)");
        }
        for f in &report.failures {
            println!(
                "  failed at {:.3} s: {:?} {}",
                f.at_s,
                f.outcome,
                f.error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    unix_us() / 1000
}

/// Microseconds since the Unix epoch (0 if the clock is before it): lines up events of separate
/// processes on this machine (they share the clock) finer than a millisecond.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn parse_to(to: &str) -> Result<(Ipv4Addr, u16)> {
    let (ip, port) = to
        .split_once(':')
        .with_context(|| format!("--to {to:?}: expected IP:PORT"))?;
    let ip = ip
        .parse()
        .with_context(|| format!("--to {to:?}: {ip:?} is not an IPv4 address"))?;
    let port = port
        .parse()
        .with_context(|| format!("--to {to:?}: {port:?} is not a port number"))?;
    Ok((ip, port))
}

/// `load-worker`: a LoadJob as JSON on stdin, the LoadReport as JSON on stdout.
pub fn worker(args: WorkerArgs) -> Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let job: LoadJob = serde_json::from_str(&input).context("reading the load job")?;
    netns::enter(&args.netns)?;
    if let Some(cg) = &args.cgroup {
        cgroup::join(cg)?;
    }
    serde_json::to_writer(std::io::stdout(), &run(&job))?;
    Ok(())
}

/// Runs the load from the current netns (worker threads inherit it).
pub fn run(job: &LoadJob) -> LoadReport {
    let started_unix_us = unix_us();
    let report = Arc::new(Mutex::new(LoadReport {
        started_unix_ms: started_unix_us / 1000,
        started_unix_us,
        ..LoadReport::default()
    }));
    let timed = Arc::new(Mutex::new(Vec::<f64>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(job.seconds);
    let per_worker = f64::from(job.rate) / f64::from(job.workers);
    let timeout = Duration::from_millis(job.timeout_ms.max(1));
    let threads: Vec<_> = (0..job.workers)
        .map(|w| {
            let (report, job, timed, done) = (report.clone(), job.clone(), timed.clone(), done.clone());
            std::thread::spawn(move || {
                // Workers start staggered so their attempts interleave instead of coinciding.
                let offset = f64::from(w) / f64::from(job.workers) / per_worker;
                for i in 0u64.. {
                    let due = start + Duration::from_secs_f64(offset + i as f64 / per_worker);
                    // A machine that cannot keep the rate ends at the time given, not after
                    // rate × seconds attempts: `rate_per_s` then says what it reached.
                    if due >= end || Instant::now() >= end || done.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let begun_s = start.elapsed().as_secs_f64();
                    let a = probe::attempt(job.ip, job.port, Proto::Tcp, timeout, &job.socket);
                    let at_s = start.elapsed().as_secs_f64();
                    let mut r = report.lock().expect("report");
                    r.attempts += 1;
                    let outcome = serde_json::to_value(a.outcome)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    *r.outcomes.entry(outcome).or_default() += 1;
                    if a.answered() {
                        r.answered += 1;
                        let pod = a.answered_by.unwrap_or_default();
                        r.first_answer_s.entry(pod.clone()).or_insert(at_s);
                        // Workers overlap: keep the earliest first and the latest last attempt.
                        let first = r.first_answer_attempt_s.entry(pod.clone()).or_insert(begun_s);
                        *first = first.min(begun_s);
                        let last = r.last_answer_attempt_s.entry(pod.clone()).or_insert(begun_s);
                        *last = last.max(begun_s);
                        if let Some(ms) = a.ms {
                            let mut t = timed.lock().expect("timed");
                            if t.len() < TIMED_ANSWERS {
                                t.push(ms);
                            }
                        }
                        if job
                            .until_answered_by
                            .as_deref()
                            .is_some_and(|want| want == "any" || want == pod)
                        {
                            r.stopped_early = true;
                            done.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        *r.answered_by.entry(pod).or_default() += 1;
                    } else {
                        r.failed += 1;
                        if r.failures.len() < LISTED_FAILURES {
                            r.failures.push(Failure {
                                at_s,
                                outcome: a.outcome,
                                error: a.error,
                            });
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut r = std::mem::take(&mut *report.lock().expect("report"));
    r.seconds = start.elapsed().as_secs_f64();
    r.rate_per_s = r.attempts as f64 / r.seconds.max(1e-9);
    r.latency_ms = Latency::of(std::mem::take(&mut *timed.lock().expect("timed")));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_checked() {
        assert_eq!(
            parse_to("10.96.0.10:80").unwrap(),
            (Ipv4Addr::new(10, 96, 0, 10), 80)
        );
        assert!(format!("{:#}", parse_to("10.96.0.10").unwrap_err()).contains("expected IP:PORT"));
        assert!(format!("{:#}", parse_to("web:80").unwrap_err()).contains("not an IPv4 address"));
        assert!(format!("{:#}", parse_to("10.96.0.10:http").unwrap_err()).contains("not a port number"));
    }

    #[test]
    fn latency_percentiles_come_from_the_sorted_answers() {
        assert!(Latency::of(Vec::new()).is_none());
        let l = Latency::of((1..=100).rev().map(f64::from).collect()).unwrap();
        assert_eq!(
            (l.samples, l.p50, l.p90, l.p99, l.max),
            (100, 51.0, 90.0, 99.0, 100.0)
        );
        let one = Latency::of(vec![0.4]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (0.4, 0.4, 0.4));
    }
}
