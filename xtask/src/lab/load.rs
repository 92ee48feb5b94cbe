//! `lab load`: new connections at a steady rate for a while, counted by outcome and by the pod that
//! answered — the traffic a restart or an upgrade must not disturb. Each attempt is a full exchange
//! (connect, request, answer, close), so a connection that opens but is never answered is a failure.
//! Pacing is per worker thread: attempt `i` starts at `i / rate`, and a late worker catches up without
//! bursting beyond its share.

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
        for (pod, n) in &report.answered_by {
            println!("  {n:>7}  {pod}");
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
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(job.seconds);
    let per_worker = f64::from(job.rate) / f64::from(job.workers);
    let timeout = Duration::from_millis(job.timeout_ms.max(1));
    let threads: Vec<_> = (0..job.workers)
        .map(|w| {
            let (report, job) = (report.clone(), job.clone());
            std::thread::spawn(move || {
                // Workers start staggered so their attempts interleave instead of coinciding.
                let offset = f64::from(w) / f64::from(job.workers) / per_worker;
                for i in 0u64.. {
                    let due = start + Duration::from_secs_f64(offset + i as f64 / per_worker);
                    if due >= end {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
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
                        *r.answered_by
                            .entry(a.answered_by.unwrap_or_default())
                            .or_default() += 1;
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
}
