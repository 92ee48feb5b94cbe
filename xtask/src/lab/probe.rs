//! Real traffic from inside the lab. Probes run in a worker process (`xtask lab probe-worker`) that
//! enters the source's netns and joins its cgroup before opening any socket: the netns alone would do
//! for pods, but a probe from a node must be a host process of that node (in its `host` cgroup), or the
//! agent's socket hooks would never see it. The worker runs its jobs on a bounded number of threads,
//! which inherit the netns, and prints the results as JSON.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{
    cgroup, netns,
    responder::Answer,
    sctp,
    spec::Proto,
    state::{Paths, State},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Answered,
    Refused,
    Timeout,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    pub id: usize,
    pub attempts: Vec<Attempt>,
}

/// Where a probe starts: a netns, the cgroup its processes belong to, and a name for the output.
#[derive(Debug, Clone)]
pub struct Source {
    pub label: String,
    pub netns: String,
    pub cgroup: Option<PathBuf>,
}

pub fn resolve_source(state: &State, src: &str) -> Result<Source> {
    if src == "external" {
        return Ok(Source {
            label: src.into(),
            netns: state.external.netns.clone(),
            cgroup: None,
        });
    }
    if let Some(node) = src.strip_prefix("node/") {
        let n = state
            .node(node)
            .with_context(|| format!("no node {node} in the lab"))?;
        return Ok(Source {
            label: src.into(),
            netns: n.netns.clone(),
            cgroup: Some(n.cgroup.clone()),
        });
    }
    let p = state.pod(src)?;
    Ok(Source {
        label: p.name.clone(),
        netns: p.netns.clone(),
        cgroup: Some(p.cgroup.clone()),
    })
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
pub fn attempt(ip: Ipv4Addr, port: u16, proto: Proto, timeout: Duration) -> Attempt {
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
    let start = Instant::now();
    let result = match proto {
        Proto::Tcp => tcp(addr, timeout, start),
        Proto::Udp => udp(addr, timeout),
        Proto::Sctp => sctp::exchange(SocketAddrV4::new(ip, port), timeout),
    };
    match result {
        Ok(line) => {
            let ms = (start.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
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

fn classify(e: &std::io::Error) -> Attempt {
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

fn tcp(addr: SocketAddr, timeout: Duration, start: Instant) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
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

fn udp(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let socket = UdpSocket::bind(("0.0.0.0", 0))?;
    // Connected, so an ICMP port unreachable comes back as ECONNREFUSED and only the address we
    // sent to can answer (a reply with an un-rewritten source is dropped, as for a real client).
    socket.connect(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"probe\n")?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

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
                        .map(|_| attempt(job.ip, job.port, job.proto, timeout))
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
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "lab",
        "--name",
        &paths.lab,
        "probe-worker",
        "--netns",
        &source.netns,
    ])
    .args(["--parallel", &parallel.to_string()]);
    if let Some(cg) = &source.cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a probe worker")?;
    child
        .stdin
        .take()
        .context("worker stdin")?
        .write_all(&serde_json::to_vec(jobs)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "probe worker in {} failed: {}",
            source.netns,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("reading probe worker results")
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// `ns/pod`, a unique pod name, `node/NAME` or `external`.
    #[arg(long)]
    pub from: String,
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
    let source = resolve_source(&state, &args.from)?;
    let (ip, port, proto) = resolve_target(&state, &args.to)?;
    let job = Job {
        id: 0,
        ip,
        port,
        proto,
        count: args.count,
        timeout_ms: args.timeout_ms,
    };
    let result = run_worker(paths, &source, &[job], 1)?
        .pop()
        .context("probe worker returned nothing")?;
    let report = ProbeReport {
        from: source.label,
        to: format!("{ip}:{port}/{proto}"),
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
    let mut s = format!("{} -> {}\n", r.from, r.to);
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
