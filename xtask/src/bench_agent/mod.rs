//! The agent at scale (part of `cargo xtask bench`): one agent in a network namespace of its own, fed
//! a synthetic cluster as manifests (10k Services × 10 endpoints, 10k pods, 1k NetworkPolicies in the
//! full run). Measured: time from start to the first full sync (service and policy maps programmed),
//! resident memory after it and at peak, CPU time, and the time from one EndpointSlice change on disk
//! to the agent's map write, repeated. The agent's own admin endpoint says when a pass has written.

pub mod objects;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use objects::Scale;

const NETNS: &str = "strait-benchagent";
const PIN_DIR: &str = "/sys/fs/bpf/strait/benchagent";
const ADMIN: &str = "127.0.0.1:9970";
const SYNC_LIMIT: Duration = Duration::from_secs(180);
const CHANGE_LIMIT: Duration = Duration::from_secs(30);
/// Between two changes (100 in the full run: about 13 s, past one resync).
const CHANGE_SPACING: Duration = Duration::from_millis(125);

#[derive(Debug, Serialize)]
pub struct AgentBench {
    pub scale: Scale,
    pub first_sync_ms: f64,
    /// The first full pass, as the agent's log times it: reading the source, programming the service
    /// maps, programming the policy maps.
    pub first_pass: Option<FirstPass>,
    pub rss_after_sync_mib: f64,
    /// The same split as the kernel counts it: anonymous (heap, stacks, the allocator's pages) and
    /// file-backed (the binary's text and read-only data that were touched, libraries, mapped files).
    pub rss_anon_after_sync_mib: f64,
    pub rss_file_after_sync_mib: f64,
    /// The agent's allocator after the first sync (its `/metrics`): live allocations, and what it
    /// holds resident (part of the anonymous figure).
    pub heap_allocated_after_sync_mib: Option<f64>,
    pub heap_resident_after_sync_mib: Option<f64>,
    pub rss_peak_mib: f64,
    /// User + system CPU time of the agent from start to the first full sync, and over the changes.
    pub cpu_sync_s: f64,
    pub cpu_changes_s: f64,
    /// One figure per EndpointSlice change: from the rename of the written file to the end of the
    /// map write, as the agent stamps it (`lb.last_write_unix_us` in its status; same clock).
    pub change_ms: Vec<f64>,
    pub change_p50_ms: f64,
    pub change_p99_ms: f64,
    /// The same changes until the bench's status poll (every 2 ms) first showed the write: the
    /// figure above plus the poll's delay.
    pub change_seen_p50_ms: f64,
    pub change_seen_p99_ms: f64,
    pub frontends: u64,
    pub policy_entries: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct FirstPass {
    pub read_ms: f64,
    pub services_ms: f64,
    pub policy_ms: f64,
}

impl FirstPass {
    /// From the agent's debug line of its first full pass (`reconcile pass … resync=true read_ms=…`).
    fn from_log(log: &str) -> Option<Self> {
        let line = log
            .lines()
            .map(strip_ansi)
            .find(|l| l.contains("reconcile pass") && l.contains("resync=true"))?;
        let field = |name: &str| -> Option<f64> {
            let rest = line.split(&format!(" {name}=")).nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        };
        Some(Self {
            read_ms: field("read_ms")?,
            services_ms: field("services_ms")?,
            policy_ms: field("policy_ms")?,
        })
    }

    pub fn programming_ms(&self) -> f64 {
        self.services_ms + self.policy_ms
    }
}

/// The log's colours (tracing writes ANSI escapes) taken out.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn run(agent: &Path, quick: bool) -> Result<AgentBench> {
    let scale = if quick { Scale::quick() } else { Scale::full() };
    let dir = std::env::temp_dir().join(format!("strait-bench-agent-{}", std::process::id()));
    let objects_dir = dir.join("objects");
    objects::write(&objects_dir, scale)?;
    cleanup_namespace();
    sh(&["ip", "netns", "add", NETNS])?;
    let guard = Guard { dir: dir.clone() };
    sh(&["ip", "-n", NETNS, "link", "set", "lo", "up"])?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let start = Instant::now();
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NETNS}"))
        .arg("--")
        .arg(agent)
        .args(["run", "--node", objects::NODE, "--manifests"])
        .arg(&objects_dir)
        .args([
            "--bpffs-root",
            PIN_DIR,
            "--admin-addr",
            ADMIN,
            "--healthz-addr",
            "127.0.0.1:10256",
        ])
        // The daemon's per-pass timings (read / services / policy) land in the kept log.
        .env("RUST_LOG", "info,proxy_agent::daemon=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the agent under nsenter")?;
    let mut agent_proc = AgentProc { child };
    let status = wait_for(SYNC_LIMIT, &mut agent_proc, &dir, |s| {
        s["sync"]["synced"] == true
            && s["lb"]["frontends"].as_u64().unwrap_or(0) >= u64::from(scale.services)
            && s["policy"]["policies"].as_u64().unwrap_or(0) >= u64::from(scale.policies)
    })?;
    let first_sync_ms = start.elapsed().as_secs_f64() * 1000.0;
    let first_pass = FirstPass::from_log(&std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default());
    let pid = agent_proc.child.id();
    let rss_after_sync_mib = proc_status_kib(pid, "VmRSS")? as f64 / 1024.0;
    let rss_anon_after_sync_mib = proc_status_kib(pid, "RssAnon")? as f64 / 1024.0;
    let rss_file_after_sync_mib = proc_status_kib(pid, "RssFile")? as f64 / 1024.0;
    let cpu_sync_s = cpu_seconds(pid)?;
    let metrics = http_get("/metrics").unwrap_or_default();
    let heap_mib = |name: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map(|b| b / (1024.0 * 1024.0))
    };
    let heap_allocated_after_sync_mib = heap_mib("strait_agent_heap_allocated_bytes");
    let heap_resident_after_sync_mib = heap_mib("strait_agent_heap_resident_bytes");

    let iterations = if quick { 20 } else { 100 };
    let files = scale.services.div_ceil(objects::SLICES_PER_FILE);
    let mut change_ms = Vec::new();
    let mut seen_ms = Vec::new();
    for k in 0..iterations {
        let before = get_status()?["lb"]["total_ops"].as_u64().unwrap_or(0);
        // A different file each time, one endpoint of one Service moved.
        let first = (k * 7919 % files) * objects::SLICES_PER_FILE;
        let service = first + k % objects::SLICES_PER_FILE.min(scale.services - first);
        let text = objects::slice_file_text(first, scale, Some((service, k + 1)));
        let name = objects::slice_file(first);
        // Written to a temporary name and renamed, so the agent never reads half a file.
        let tmp = objects_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        let t = Instant::now();
        let renamed_us = unix_us();
        std::fs::rename(&tmp, objects_dir.join(&name))?;
        let s = wait_for(CHANGE_LIMIT, &mut agent_proc, &dir, |s| {
            s["lb"]["total_ops"].as_u64().unwrap_or(0) > before
        })?;
        let seen = t.elapsed().as_secs_f64() * 1000.0;
        seen_ms.push(seen);
        let written_us = s["lb"]["last_write_unix_us"]
            .as_u64()
            .context("the agent's status has no lb.last_write_unix_us (an older agent?)")?;
        change_ms.push(written_us.saturating_sub(renamed_us) as f64 / 1000.0);
        // Spread so that the full run's changes span more than the agent's 10 s resync: a change that
        // arrives during one waits for it, and the figures should say so.
        std::thread::sleep(CHANGE_SPACING);
    }
    let rss_peak_mib = proc_status_kib(pid, "VmHWM")? as f64 / 1024.0;
    let cpu_changes_s = cpu_seconds(pid)? - cpu_sync_s;
    drop(agent_proc);
    drop(guard);
    let mut sorted = change_ms.clone();
    sorted.sort_by(f64::total_cmp);
    seen_ms.sort_by(f64::total_cmp);
    Ok(AgentBench {
        scale,
        first_sync_ms,
        first_pass,
        rss_after_sync_mib,
        rss_anon_after_sync_mib,
        heap_allocated_after_sync_mib,
        heap_resident_after_sync_mib,
        rss_file_after_sync_mib,
        rss_peak_mib,
        cpu_sync_s,
        cpu_changes_s,
        change_p50_ms: percentile(&sorted, 0.50),
        change_p99_ms: percentile(&sorted, 0.99),
        change_seen_p50_ms: percentile(&seen_ms, 0.50),
        change_seen_p99_ms: percentile(&seen_ms, 0.99),
        change_ms,
        frontends: status["lb"]["frontends"].as_u64().unwrap_or(0),
        policy_entries: status["policy"]["entries"].as_u64().unwrap_or(0),
    })
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Nearest-rank percentile of sorted figures.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

struct AgentProc {
    child: Child,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the namespace, the agent's pins and the objects, however the run ended.
struct Guard {
    dir: PathBuf,
}

/// The agent's log of the last run stays here for a look at where its passes spent their time.
pub const KEPT_LOG: &str = "/tmp/strait-bench-agent.log";

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = std::fs::copy(self.dir.join("agent.log"), KEPT_LOG);
        cleanup_namespace();
        let _ = std::fs::remove_dir_all(PIN_DIR);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cleanup_namespace() {
    let _ = Command::new("ip")
        .args(["netns", "del", NETNS])
        .stderr(Stdio::null())
        .status();
}

fn sh(argv: &[&str]) -> Result<()> {
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !status.success() {
        bail!("{} failed ({status})", argv.join(" "));
    }
    Ok(())
}

/// Polls the agent's /status (every 2 ms) until `done`, the agent exits, or `limit` passes.
fn wait_for(
    limit: Duration,
    agent: &mut AgentProc,
    dir: &Path,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(exit) = agent.child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            bail!(
                "the agent exited ({exit}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if let Ok(s) = get_status() {
            if done(&s) {
                return Ok(s);
            }
            last = s;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!(
        "the agent did not get there within {limit:?}; last status: sync {} lb {} policy {}",
        last["sync"],
        last["lb"],
        last["policy"]
    )
}

/// GET /status from inside the agent's namespace.
fn get_status() -> Result<Value> {
    Ok(serde_json::from_str(&http_get("/status")?)?)
}

/// The body of a GET of `path` on the agent's admin address, from a thread that enters the agent's
/// namespace (the socket stays there).
fn http_get(path: &'static str) -> Result<String> {
    let body = std::thread::spawn(move || -> Result<String> {
        let ns = std::fs::File::open(format!("/run/netns/{NETNS}"))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = TcpStream::connect_timeout(&ADMIN.parse()?, Duration::from_secs(1))?;
        // The agent answers between passes; a resync at full size holds it for seconds.
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("admin request thread panicked"))??;
    body.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .context("no HTTP body")
}

/// utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat, in clock ticks).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are counted from its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .context("short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    // USER_HZ, the unit of /proc's times: 100 on every architecture Linux builds for but alpha and ia64.
    Ok(ticks as f64 / 100.0)
}

fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} missing from /proc/{pid}/status"))
}

/// "met", or by how much a figure misses its target (`limit`, in the figure's unit).
fn verdict(value: f64, limit: f64, unit: &str, inclusive: bool) -> String {
    let met = if inclusive { value <= limit } else { value < limit };
    if met {
        "met".into()
    } else {
        format!(
            "**missed** by {:.1} {unit} ({:.1}×)",
            value - limit,
            value / limit
        )
    }
}

pub fn markdown(b: &AgentBench) -> String {
    let s = b.scale;
    let first_pass = match b.first_pass {
        Some(p) => format!(
            "| of which the first pass: reading every manifest / programming (service maps {:.0} ms + policy maps {:.0} ms) | {:.0} ms / {:.0} ms | < 1 s programming: {} |\n",
            p.services_ms,
            p.policy_ms,
            p.read_ms,
            p.programming_ms(),
            verdict(p.programming_ms(), 1000.0, "ms", false),
        ),
        None => "| of which the first pass | not found in the agent's log | |\n".into(),
    };
    format!(
        "\n## The agent at scale\n\n{} Services × {} endpoints ({} endpoints), {} pods on {} nodes, {} \
         NetworkPolicies, as manifests (standalone source, {} EndpointSlices a file); one agent in a network \
         namespace of its own.\n\n\
         | figure | value | target (issue) |\n|---|---|---|\n\
         | start to first full sync (service and policy maps programmed: {} frontends, {} policy entries) | {:.0} ms | < 1 s: {} |\n\
         {first_pass}\
         | resident memory after the first sync | {:.1} MiB | ≤ 64 MiB: {} |\n\
         | of which anonymous / file-backed | {:.1} / {:.1} MiB | |\n\
         | the allocator (in the anonymous figure): live allocations / resident | {} | |\n\
         | peak resident memory (sync and {} endpoint changes) | {:.1} MiB | ≤ 64 MiB: {} |\n\
         | EndpointSlice change on disk → map write, p50 / p99 of {} | {:.2} / {:.2} ms | < 5 ms p99: {} |\n\
         | the same, until the bench's status poll showed the write | {:.2} / {:.2} ms | |\n\
         | CPU time (user + system): start to first sync / the {} changes | {:.2} s / {:.2} s | |\n\n\
         The change figures run from the rename of one rewritten slice file (the bench's clock) to the end of \
         the map write (the agent's stamp `lb.last_write_unix_us` in its status; the same machine's clock); \
         the second row is when the bench's status poll, every 2 ms, first showed the write. Changes are \
         125 ms apart, so the full run's span the agent's 10 s resync. They include inotify waking the agent, its debounce (0.3 ms), re-reading \
         and parsing that one file, and planning and diffing every Service; they do not include the datapath \
         seeing the entry, which is immediate once written. The first-sync figure includes starting the \
         process, loading and verifying the eBPF programs, and the first pass; the row below it splits the \
         pass as the agent's log times it (reading is the standalone source's YAML parsing; in a cluster it \
         is the API server's lists). Per-pass timings are in the agent's log \
         ({KEPT_LOG}).\n",
        s.services,
        s.endpoints_per_service,
        s.services * s.endpoints_per_service,
        s.pods,
        s.nodes,
        s.policies,
        objects::SLICES_PER_FILE,
        b.frontends,
        b.policy_entries,
        b.first_sync_ms,
        verdict(b.first_sync_ms, 1000.0, "ms", false),
        b.rss_after_sync_mib,
        verdict(b.rss_after_sync_mib, 64.0, "MiB", true),
        b.rss_anon_after_sync_mib,
        b.rss_file_after_sync_mib,
        match (b.heap_allocated_after_sync_mib, b.heap_resident_after_sync_mib) {
            (Some(a), Some(r)) => format!("{a:.1} / {r:.1} MiB"),
            _ => "not reported".to_owned(),
        },
        b.change_ms.len(),
        b.rss_peak_mib,
        verdict(b.rss_peak_mib, 64.0, "MiB", true),
        b.change_ms.len(),
        b.change_p50_ms,
        b.change_p99_ms,
        verdict(b.change_p99_ms, 5.0, "ms", false),
        b.change_seen_p50_ms,
        b.change_seen_p99_ms,
        b.change_ms.len(),
        b.cpu_sync_s,
        b.cpu_changes_s,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pass_is_read_from_the_agents_log() {
        let log = "\u{1b}[2m2026-12-06T18:25:01Z\u{1b}[0m INFO service maps updated\n\
                   2026-12-06T18:25:01Z DEBUG proxy_agent::daemon: reconcile pass \u{1b}[3mchanged\u{1b}[0m\u{1b}[2m=\u{1b}[0mNode resync=true \
                   read_ms=775.5 services_ms=279.75 policy_ms=376.8 lb_dumps=2\n\
                   DEBUG reconcile pass changed=EndpointSlice resync=false read_ms=0.7 services_ms=0.9 policy_ms=0.1\n";
        let p = FirstPass::from_log(log).expect("found");
        assert_eq!(
            p,
            FirstPass {
                read_ms: 775.5,
                services_ms: 279.75,
                policy_ms: 376.8
            }
        );
        assert!((p.programming_ms() - 656.55).abs() < 1e-9);
        assert_eq!(FirstPass::from_log("no such line"), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn a_missed_target_says_by_how_much() {
        assert_eq!(verdict(4.0, 5.0, "ms", false), "met");
        assert_eq!(verdict(64.0, 64.0, "MiB", true), "met");
        assert_eq!(verdict(7.5, 5.0, "ms", false), "**missed** by 2.5 ms (1.5×)");
        assert!(verdict(5.0, 5.0, "ms", false).starts_with("**missed**"));
    }
}
