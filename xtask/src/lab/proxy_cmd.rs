//! `lab proxy stop NODE [--cleanup]` and `lab proxy start NODE`: whichever proxy a node runs (our
//! agent, kube-proxy iptables or nftables), stopped and started the same way, so a programming-from-
//! cold measurement treats all three alike. `--cleanup` runs the proxy's own cleanup after the stop
//! (`proxy-agent cleanup`, `kube-proxy --cleanup`) and checks that nothing of its datapath is left.

use std::{
    ffi::OsString,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{
    agents, kubeproxy, process,
    state::{NodeState, Paths, Proxy, State},
};
use crate::lab::load::unix_ms;

/// A proxy still running this long after SIGTERM gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A started proxy still running after this long is taken as started.
const SETTLE: Duration = Duration::from_millis(1000);
/// How long `kube-proxy --cleanup` may run. In iptables mode with 10k Services (~110k chains) its
/// `iptables-restore --noflush` ran for over 20 minutes of CPU on this lab's machines (iptables-nft)
/// without finishing; past this bound it is killed and the node's rules are flushed instead.
const KUBE_PROXY_CLEANUP_BOUND: Duration = Duration::from_secs(120);

#[derive(clap::Subcommand, Debug)]
pub enum ProxyCommand {
    /// SIGTERM the node's proxy (SIGKILL after 10 s); with --cleanup, then remove its datapath.
    Stop(StopArgs),
    /// Start the node's proxy again (the lab's agent binary, or kube-proxy in the node's mode).
    Start(StartArgs),
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    pub node: String,
    /// Run the proxy's own cleanup after it stopped and check that its datapath is gone.
    #[arg(long)]
    pub cleanup: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    pub node: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct StopReport {
    pub node: String,
    pub proxy: Proxy,
    pub pid: Option<i32>,
    pub stop_ms: f64,
    /// The cleanup's own output (ours: its JSON report; kube-proxy: its log lines).
    pub cleanup: Option<String>,
    pub cleanup_ms: Option<f64>,
    /// kube-proxy's cleanup did not finish within its bound: it was killed and the node's rules
    /// flushed (`nft flush ruleset` in the node's netns, which holds only kube-proxy's rules).
    pub cleanup_timed_out: bool,
}

#[derive(Debug, Serialize)]
pub struct StartReport {
    pub node: String,
    pub proxy: Proxy,
    pub pid: i32,
    /// When the process was spawned (Unix ms): programming from cold counts from here.
    pub started_unix_ms: u64,
}

pub fn command(paths: &Paths, c: ProxyCommand) -> Result<()> {
    match c {
        ProxyCommand::Stop(a) => {
            let r = stop(paths, &a.node, a.cleanup)?;
            let human = format!(
                "{} of node {} stopped (pid {}) in {:.0} ms{}\n",
                name(r.proxy)?,
                r.node,
                r.pid.map_or("none".into(), |p| p.to_string()),
                r.stop_ms,
                r.cleanup_ms
                    .map_or(String::new(), |ms| format!(", cleaned up in {ms:.0} ms"))
            );
            super::output(a.json, &human, &r)
        }
        ProxyCommand::Start(a) => {
            let r = start(paths, &a.node)?;
            let human = format!("{} of node {} started (pid {})\n", name(r.proxy)?, r.node, r.pid);
            super::output(a.json, &human, &r)
        }
    }
}

/// The proxy as `lab up --proxy` names it.
fn name(p: Proxy) -> Result<String> {
    Ok(serde_json::to_value(p)?.as_str().unwrap_or_default().to_string())
}

fn node_index(state: &State, node: &str) -> Result<usize> {
    state
        .nodes
        .iter()
        .position(|n| n.name == node)
        .with_context(|| format!("no node {node} in lab {}", state.name))
}

fn stop(paths: &Paths, node: &str, cleanup: bool) -> Result<StopReport> {
    let mut state = State::load(paths)?;
    let idx = node_index(&state, node)?;
    let n = state.nodes[idx].clone();
    let pid = match n.proxy {
        Proxy::Strait => n.agent_pid,
        _ => n.kube_proxy_pid,
    }
    .filter(|&p| process::alive(p));
    let t = Instant::now();
    if let Some(p) = pid {
        process::terminate(&[p], STOP_GRACE);
        if process::alive(p) {
            bail!("the proxy of node {node} (pid {p}) survived SIGKILL");
        }
        end_group(p);
    }
    let stop_ms = t.elapsed().as_secs_f64() * 1000.0;
    match n.proxy {
        Proxy::Strait => state.nodes[idx].agent_pid = None,
        _ => state.nodes[idx].kube_proxy_pid = None,
    }
    state.save(paths)?;
    let mut report = StopReport {
        node: node.to_string(),
        proxy: n.proxy,
        pid,
        stop_ms,
        cleanup: None,
        cleanup_ms: None,
        cleanup_timed_out: false,
    };
    if cleanup {
        let t = Instant::now();
        let out = match n.proxy.kube_proxy_mode() {
            None => {
                let bin = state
                    .agent_bin
                    .clone()
                    .context("this lab runs no agents (it was started with --no-agent)")?;
                let out = in_node(
                    paths,
                    &n,
                    &[
                        bin.into(),
                        "cleanup".into(),
                        "--bpffs-root".into(),
                        n.bpffs_root.clone().into(),
                        "-o".into(),
                        "json".into(),
                    ],
                )?;
                if n.bpffs_root.exists() {
                    bail!(
                        "node {node}: {} still exists after proxy-agent cleanup",
                        n.bpffs_root.display()
                    );
                }
                out
            }
            Some(mode) => {
                let cp = state
                    .control_plane
                    .as_ref()
                    .context("kube-proxy needs --control-plane real")?;
                let argv = [
                    cp.kube_proxy_bin.clone().into(),
                    "--cleanup".into(),
                    format!("--proxy-mode={mode}").into(),
                ];
                match in_node_bounded(paths, &n, &argv, KUBE_PROXY_CLEANUP_BOUND)? {
                    Some(out) => out,
                    None => {
                        report.cleanup_timed_out = true;
                        in_node(paths, &n, &["nft".into(), "flush".into(), "ruleset".into()])?;
                        format!(
                            "kube-proxy --cleanup did not finish within {} s: killed, and the \
                             node's rules flushed (nft flush ruleset)",
                            KUBE_PROXY_CLEANUP_BOUND.as_secs()
                        )
                    }
                }
            }
        };
        report.cleanup_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
        report.cleanup = Some(out);
        let left = datapath_left(paths, &n)?;
        if !left.is_empty() {
            bail!(
                "node {node}: after the cleanup of {} there is still: {}",
                name(n.proxy)?,
                left.join("; ")
            );
        }
    }
    Ok(report)
}

fn start(paths: &Paths, node: &str) -> Result<StartReport> {
    let mut state = State::load(paths)?;
    let idx = node_index(&state, node)?;
    let n = state.nodes[idx].clone();
    let running = match n.proxy {
        Proxy::Strait => n.agent_pid,
        _ => n.kube_proxy_pid,
    };
    if let Some(p) = running.filter(|&p| process::alive(p)) {
        bail!("the proxy of node {node} already runs (pid {p}): `lab proxy stop {node}` first");
    }
    let started_unix_ms = unix_ms();
    let (mut child, log) = match n.proxy.kube_proxy_mode() {
        None => {
            let bin = state
                .agent_bin
                .clone()
                .context("this lab runs no agents (it was started with --no-agent)")?;
            let argv = agents::argv(paths, &state, &n, &bin);
            let log = agents::log_name(&super::layout::node_dir(&n.name));
            (
                process::spawn_detached(paths, &log, &n.netns, &n.cgroup, &argv)?,
                log,
            )
        }
        Some(mode) => {
            let cp = state
                .control_plane
                .as_ref()
                .context("kube-proxy needs --control-plane real")?;
            let log = kubeproxy::log_name(&super::layout::node_dir(&n.name));
            (kubeproxy::spawn(paths, cp, &n, mode)?, log)
        }
    };
    let pid = child.id() as i32;
    match n.proxy {
        Proxy::Strait => state.nodes[idx].agent_pid = Some(pid),
        _ => state.nodes[idx].kube_proxy_pid = Some(pid),
    }
    state.save(paths)?;
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let log = paths.log(&log);
            bail!(
                "the proxy of node {node} exited ({status}); its log {} ends:\n    {}",
                log.display(),
                process::log_tail(&log, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(StartReport {
        node: node.to_string(),
        proxy: n.proxy,
        pid,
        started_unix_ms,
    })
}

/// Kills the process group `leader` leads and waits (up to 5 s) until none of it is alive. A stopped
/// proxy (the lab starts each as the leader of a session and group of its own) goes with what it
/// started: kube-proxy's `iptables-restore` or `nft` would otherwise go on (at 10k Services for
/// minutes, on the CPU the next measurement uses).
fn end_group(leader: i32) {
    let group = nix::unistd::Pid::from_raw(leader);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while process::group_alive(leader) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`in_node`] with a time bound: `None` when the command ran past `bound` and was killed, with every
/// process it started (kube-proxy's cleanup runs iptables-restore).
fn in_node_bounded(
    paths: &Paths,
    n: &NodeState,
    argv: &[OsString],
    bound: Duration,
) -> Result<Option<String>> {
    let what = format!("{} on node {}", Path::new(&argv[0]).display(), n.name);
    run_bounded(exec_in_node(paths, n, argv)?, bound, &what)
}

/// `argv` as `lab exec` runs it in the node's netns and cgroup.
fn exec_in_node(paths: &Paths, n: &NodeState, argv: &[OsString]) -> Result<Command> {
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "--name", &paths.lab, "exec"])
        .arg(format!("node/{}", n.name))
        .arg("--")
        .args(argv);
    Ok(cmd)
}

/// Runs `cmd` in a process group of its own for at most `bound`; past it the whole group is killed
/// and the answer is `None`. Output (stdout and stderr) goes through a file, so a chatty command
/// cannot block on a full pipe while nobody reads it.
fn run_bounded(mut cmd: Command, bound: Duration, what: &str) -> Result<Option<String>> {
    use std::os::unix::process::CommandExt;
    let log_path =
        std::env::temp_dir().join(format!("strait-bounded-{}-{}.log", std::process::id(), unix_ms()));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("sharing the log file")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("running {what}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the command")? {
            break Some(status);
        }
        if started.elapsed() >= bound {
            end_group(child.id() as i32);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    match status {
        None => Ok(None),
        Some(s) if s.success() => Ok(Some(text)),
        Some(s) => bail!("{what} failed ({s}): {}", text.trim()),
    }
}

/// Runs `argv` to completion in the node's netns and cgroup (`lab exec`); its stdout and stderr,
/// or an error naming the command and its output.
fn in_node(paths: &Paths, n: &NodeState, argv: &[OsString]) -> Result<String> {
    let out = exec_in_node(paths, n, argv)?
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?} on node {}", argv[0], n.name))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "{} on node {} failed ({}): {}",
            Path::new(&argv[0]).display(),
            n.name,
            out.status,
            text.trim()
        );
    }
    Ok(text)
}

/// What is left of any proxy's datapath in the node's netns: kube-proxy's iptables chains and
/// nftables tables, our tc and XDP programs (`bpftool net show`).
fn datapath_left(paths: &Paths, n: &NodeState) -> Result<Vec<String>> {
    let mut left = Vec::new();
    let iptables = in_node(paths, n, &["iptables-save".into()])?;
    let chains = iptables
        .lines()
        .filter(|l| l.starts_with(":KUBE-SVC-") || l.starts_with(":KUBE-SERVICES"))
        .count();
    if chains > 0 {
        left.push(format!("{chains} kube-proxy iptables chains"));
    }
    let tables = in_node(paths, n, &["nft".into(), "list".into(), "tables".into()])?;
    left.extend(
        tables
            .lines()
            .filter(|l| l.trim_end().ends_with(" kube-proxy"))
            .map(|l| format!("nftables {}", l.trim())),
    );
    let net: serde_json::Value = serde_json::from_str(&in_node(
        paths,
        n,
        &["bpftool".into(), "-j".into(), "net".into(), "show".into()],
    )?)
    .context("parsing `bpftool -j net show`")?;
    for kind in ["xdp", "tc"] {
        let attached: usize = net
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v[kind].as_array())
            .map(Vec::len)
            .sum();
        if attached > 0 {
            left.push(format!("{attached} {kind} BPF programs attached"));
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use std::{process::Command, time::Duration};

    use super::run_bounded;

    #[test]
    fn a_bounded_command_answers_with_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let out = run_bounded(cmd, Duration::from_secs(10), "sh").unwrap();
        assert_eq!(out.as_deref(), Some("out\nerr\n"));
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo why >&2; exit 3"]);
        let err = run_bounded(failing, Duration::from_secs(10), "sh").unwrap_err();
        assert!(err.to_string().contains("why"), "{err}");
    }

    #[test]
    fn past_its_bound_the_command_and_what_it_started_are_killed() {
        let marker = format!("strait-bounded-test-{}", std::process::id());
        let mut cmd = Command::new("sh");
        // A grandchild that outlives its parent unless the whole group is killed.
        cmd.args(["-c", &format!("sh -c 'sleep 30; echo {marker}' & sleep 30")]);
        let t = std::time::Instant::now();
        assert_eq!(run_bounded(cmd, Duration::from_millis(300), "sh").unwrap(), None);
        assert!(t.elapsed() < Duration::from_secs(5));
        // The grandchild's command line holds the marker; none may be left.
        std::thread::sleep(Duration::from_millis(200));
        let left = Command::new("pgrep").args(["-f", &marker]).output().unwrap();
        assert!(
            left.stdout.is_empty(),
            "left running: {}",
            String::from_utf8_lossy(&left.stdout)
        );
    }
}
