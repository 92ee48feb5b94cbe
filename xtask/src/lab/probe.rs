//! Real traffic from inside the lab. Probes run in a worker process (`xtask lab probe-worker`, see
//! `source.rs`) in the source's netns and cgroup. The worker runs its jobs on a bounded number of
//! threads, which inherit the netns, and prints the results as JSON.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{
    cgroup, netns,
    responder::Answer,
    sctp,
    sockets::{self, SocketOpts},
    source::{self, Source},
    spec::Proto,
    state::{Paths, State},
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Answered,
    Refused,
    Timeout,
    /// Something in the lab failed: the default of results that never got further.
    #[default]
    Error,
}

/// One attempt, in the LAB.md shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
    /// For `error`: what failed in the lab. For `refused`: how (reset, unreachable...), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Attempt {
    fn plain(outcome: Outcome, text: Option<String>) -> Attempt {
        Attempt {
            outcome,
            answered_by: None,
            client_seen: None,
            ms: None,
            error: text,
        }
    }
    pub fn answered(&self) -> bool {
        self.outcome == Outcome::Answered
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: usize,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    pub count: u32,
    pub timeout_ms: u64,
    #[serde(default)]
    pub socket: SocketOpts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    pub id: usize,
    pub attempts: Vec<Attempt>,
}

/// `DST:PORT[/PROTO]`: DST is `ns/pod`, a unique pod name, `node/NAME` or an IPv4 address; PORT a number
/// or, for a pod, one of its port names. Returns (ip, port, proto, label of DST).
pub fn resolve_target(state: &State, to: &str) -> Result<(Ipv4Addr, u16, Proto)> {
    let (rest, proto) = match to.rsplit_once('/') {
        Some((r, p)) if Proto::parse(p).is_some() => (r, Proto::parse(p).expect("checked")),
        _ => (to, Proto::Tcp),
    };
    let (dst, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("--to {to}: expected DST:PORT[/PROTO]"))?;
    if let Ok(ip) = dst.parse::<Ipv4Addr>() {
        let port = port
            .parse()
            .with_context(|| format!("--to {to}: {port:?} is not a port number"))?;
        return Ok((ip, port, proto));
    }
    if let Some(node) = dst.strip_prefix("node/") {
        let n = state
            .node(node)
            .with_context(|| format!("no node {node} in the lab"))?;
        let port = port
            .parse()
            .with_context(|| format!("--to {to}: {port:?} is not a port number"))?;
        return Ok((n.ip, port, proto));
    }
    let pod = state.pod(dst)?;
    let port = match port.parse::<u16>() {
        Ok(p) => p,
        Err(_) => pod
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(port) && p.protocol == proto)
            .map(|p| p.port)
            .with_context(|| format!("pod {} declares no port named {port:?} for {proto}", pod.name))?,
    };
    Ok((pod.ip, port, proto))
}

/// One attempt from the current thread's netns.
pub fn attempt(ip: Ipv4Addr, port: u16, proto: Proto, timeout: Duration, opts: &SocketOpts) -> Attempt {
    let addr = SocketAddrV4::new(ip, port);
    let start = Instant::now();
    let result = match proto {
        Proto::Tcp => tcp(addr, timeout, start, opts),
        Proto::Udp => udp(addr, timeout, opts),
        Proto::Sctp => sctp::exchange(addr, timeout, opts),
    };
    answer(result, start)
}

/// Milliseconds since `start`, two decimals.
pub fn ms_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// The attempt a responder's line (or the error instead of one) makes.
pub fn answer(result: std::io::Result<String>, start: Instant) -> Attempt {
    match result {
        Ok(line) => {
            let ms = ms_since(start);
            match serde_json::from_str::<Answer>(line.trim()) {
                Ok(a) => Attempt {
                    outcome: Outcome::Answered,
                    answered_by: Some(a.pod),
                    client_seen: Some(a.client),
                    ms: Some(ms),
                    error: None,
                },
                Err(_) => Attempt::plain(
                    Outcome::Error,
                    Some(format!("unexpected answer {:?}", line.trim())),
                ),
            }
        }
        Err(e) => classify(&e),
    }
}

pub fn classify(e: &std::io::Error) -> Attempt {
    let how = |s: &str| Some(s.to_string());
    match (e.kind(), e.raw_os_error()) {
        (ErrorKind::ConnectionRefused, _) => Attempt::plain(Outcome::Refused, how("connection refused")),
        (ErrorKind::ConnectionReset, _) => Attempt::plain(Outcome::Refused, how("connection reset")),
        (ErrorKind::UnexpectedEof, _) => Attempt::plain(Outcome::Refused, how("closed without an answer")),
        (ErrorKind::TimedOut | ErrorKind::WouldBlock, _) => Attempt::plain(Outcome::Timeout, None),
        // ICMP unreachable (a reject), or no route at all in the source netns: either way the
        // datapath did not deliver; the text tells which.
        (_, Some(libc::EHOSTUNREACH | libc::EHOSTDOWN)) => {
            Attempt::plain(Outcome::Refused, how("host unreachable"))
        }
        // SCTP (raw socket): ICMP protocol unreachable, a netns with no SCTP listener at all.
        (_, Some(libc::ENOPROTOOPT)) => Attempt::plain(Outcome::Refused, how("protocol unreachable")),
        (_, Some(libc::ENETUNREACH)) => {
            Attempt::plain(Outcome::Refused, how("network unreachable (no route)"))
        }
        _ => Attempt::plain(Outcome::Error, Some(e.to_string())),
    }
}

fn tcp(addr: SocketAddrV4, timeout: Duration, start: Instant, opts: &SocketOpts) -> std::io::Result<String> {
    let stream = sockets::tcp_connect(addr, opts, timeout)?;
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))?;
    stream.set_nodelay(true)?;
    (&stream).write_all(b"probe\n")?;
    let mut line = String::new();
    let n = BufReader::new(&stream).take(64 * 1024).read_line(&mut line)?;
    if n == 0 {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    Ok(line)
}

fn udp(addr: SocketAddrV4, timeout: Duration, opts: &SocketOpts) -> std::io::Result<String> {
    let socket = sockets::udp_connect(addr, opts)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"probe\n")?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Pause between TCP attempts that reuse one fixed source port.
const FIXED_PORT_TCP_PAUSE: Duration = Duration::from_millis(20);

/// Runs jobs on at most `parallel` threads of the current netns; attempts of one job run in order.
pub fn run_jobs(jobs: Vec<Job>, parallel: usize) -> Vec<JobResult> {
    let queue = Arc::new(Mutex::new(jobs));
    let results = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let (queue, results) = (queue.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let Some(job) = queue.lock().expect("queue").pop() else {
                        break;
                    };
                    let timeout = Duration::from_millis(job.timeout_ms.max(1));
                    let attempts = (0..job.count)
                        .map(|i| {
                            if i > 0 && job.proto == Proto::Tcp && job.socket.source_port.is_some() {
                                // The previous attempt closed the same 4-tuple with a reset; under
                                // load the server's netns may handle it after our next SYN (another
                                // CPU's backlog), which then meets the old connection and waits a
                                // 1 s SYN retransmit. A short pause lets the reset land first.
                                std::thread::sleep(FIXED_PORT_TCP_PAUSE);
                            }
                            attempt(job.ip, job.port, job.proto, timeout, &job.socket)
                        })
                        .collect();
                    results
                        .lock()
                        .expect("results")
                        .push(JobResult { id: job.id, attempts });
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut out = std::mem::take(&mut *results.lock().expect("results"));
    out.sort_by_key(|r| r.id);
    out
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub netns: String,
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
}

/// `probe-worker`: jobs as JSON on stdin, results as JSON on stdout.
pub fn worker(args: WorkerArgs) -> Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let jobs: Vec<Job> = serde_json::from_str(&input).context("reading jobs")?;
    // Before any thread exists: setns moves only the calling thread, new threads inherit it.
    netns::enter(&args.netns)?;
    if let Some(cg) = &args.cgroup {
        cgroup::join(cg)?;
    }
    let results = run_jobs(jobs, args.parallel);
    serde_json::to_writer(std::io::stdout(), &results)?;
    Ok(())
}

/// Starts a worker for `source` and returns its results (one per job, by id).
pub fn run_worker(paths: &Paths, source: &Source, jobs: &[Job], parallel: usize) -> Result<Vec<JobResult>> {
    let out = source::run_worker(
        paths,
        source,
        "probe-worker",
        &["--parallel".to_string(), parallel.to_string()],
        &serde_json::to_vec(jobs)?,
    )?;
    serde_json::from_slice(&out).context("reading probe worker results")
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// `ns/pod`, a unique pod name, `node/NAME[:IP]` (a node's host network, bound to one of its
    /// addresses or 127.0.0.1) or `external[:IP]` (the external client, from one of its addresses).
    #[arg(long)]
    pub from: String,
    /// For `--from external`: the node service addresses are routed to (default: the first node).
    #[arg(long, value_name = "NODE")]
    pub via: Option<String>,
    /// Fixed source port for every attempt (TCP, UDP, SCTP), to follow one 5-tuple over time.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub source_port: Option<u16>,
    /// `DST:PORT[/PROTO]`: DST is `ns/pod`, a pod name, `node/NAME` or any IPv4 (ClusterIP, node IP,
    /// LB IP); PROTO tcp (default), udp or sctp.
    #[arg(long)]
    pub to: String,
    /// Attempts, one after another, each on a new connection or socket (new source port).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct ProbeReport {
    from: String,
    to: String,
    /// The node service addresses went to (external client only).
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_port: Option<u16>,
    attempts: Vec<Attempt>,
    summary: BTreeMap<String, u32>,
}

pub fn summary(attempts: &[Attempt]) -> BTreeMap<String, u32> {
    let mut s = BTreeMap::new();
    for a in attempts {
        let key = match a.outcome {
            Outcome::Answered => a.answered_by.clone().unwrap_or_default(),
            Outcome::Refused => "refused".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Error => "error".into(),
        };
        *s.entry(key).or_insert(0) += 1;
    }
    s
}

pub fn command(paths: &Paths, args: ProbeArgs) -> Result<()> {
    let state = State::load(paths)?;
    let mut source = source::resolve(&state, &args.from, args.via.as_deref())?;
    source.socket.source_port = args.source_port;
    let (ip, port, proto) = resolve_target(&state, &args.to)?;
    let job = Job {
        id: 0,
        ip,
        port,
        proto,
        count: args.count,
        timeout_ms: args.timeout_ms,
        socket: source.socket,
    };
    let result = run_worker(paths, &source, &[job], 1)?
        .pop()
        .context("probe worker returned nothing")?;
    let report = ProbeReport {
        from: source.label,
        to: format!("{ip}:{port}/{proto}"),
        via: source.via,
        source_port: args.source_port,
        summary: summary(&result.attempts),
        attempts: result.attempts,
    };
    let human = render(&report);
    if args.json {
        eprint!("{human}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{human}");
    }
    Ok(())
}

fn render(r: &ProbeReport) -> String {
    let via = r.via.as_ref().map(|v| format!(" via {v}")).unwrap_or_default();
    let mut s = format!("{} -> {}{via}\n", r.from, r.to);
    for (i, a) in r.attempts.iter().enumerate() {
        let line = match a.outcome {
            Outcome::Answered => format!(
                "answered by {} (saw client {}) in {:.2} ms",
                a.answered_by.as_deref().unwrap_or("?"),
                a.client_seen.as_deref().unwrap_or("?"),
                a.ms.unwrap_or(0.0)
            ),
            Outcome::Refused => format!("refused ({})", a.error.as_deref().unwrap_or("")),
            Outcome::Timeout => "timeout".into(),
            Outcome::Error => format!("error: {}", a.error.as_deref().unwrap_or("")),
        };
        s.push_str(&format!("  {:>3}  {line}\n", i + 1));
    }
    let sum: Vec<String> = r.summary.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    s.push_str(&format!("  summary: {}\n", sum.join(", ")));
    s
}
