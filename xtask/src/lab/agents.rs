//! One agent per node, started inside the node's netns and its `host` cgroup, in standalone mode on
//! the lab's manifests:
//! `<agent-bin> run --node N --manifests <state>/manifests --bpffs-root /sys/fs/bpf/strait/<lab>-<N>
//!  --cgroup-root /sys/fs/cgroup/unified/strait-<lab>/<N>/host --admin-addr 127.0.0.1:9970`,
//! or, with the real control plane, `--kubeconfig <state>/control-plane/kubeconfig-agent` (the
//! ServiceAccount of manifests/rbac.yaml) instead of `--manifests`. Nodes running kube-proxy get
//! no agent.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};

use super::{
    process,
    state::{BPFFS, NodeState, Paths, Proxy, State},
};

pub const ADMIN_ADDR: &str = "127.0.0.1:9970";

/// An agent that is still running after this long is taken as started.
const SETTLE: Duration = Duration::from_millis(1000);

pub fn log_name(node_dir: &str) -> String {
    format!("agent-{node_dir}")
}

/// The agent binary: `--agent-bin`, else `proxy-agent` next to this executable, built first when we run
/// under cargo (`cargo xtask lab up`), so the lab never runs a stale agent.
pub fn resolve_bin(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(bin) = given {
        let bin = std::fs::canonicalize(&bin)
            .with_context(|| format!("--agent-bin {}: not found", bin.display()))?;
        return Ok(bin);
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("proxy-agent");
    if let Some(cargo) = std::env::var_os("CARGO") {
        eprintln!("building the agent: cargo build --release -p proxy-agent");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace");
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "proxy-agent"])
            .current_dir(workspace)
            .stdin(Stdio::null())
            // Build output goes to stderr: stdout carries the --json document.
            .stdout(std::io::stderr())
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!(
                "building the agent failed (cargo build --release -p proxy-agent); fix it, or pass --no-agent"
            );
        }
    }
    if !bin.is_file() {
        bail!(
            "no agent binary at {} (build it, pass --agent-bin PATH, or --no-agent)",
            bin.display()
        );
    }
    Ok(bin)
}

pub(super) fn argv(paths: &Paths, state: &State, n: &NodeState, bin: &Path) -> Vec<OsString> {
    let source: [OsString; 2] = match &state.control_plane {
        Some(cp) => ["--kubeconfig".into(), cp.agent_kubeconfig.clone().into()],
        None => ["--manifests".into(), paths.manifests().into()],
    };
    let mut v: Vec<OsString> = vec![bin.into(), "run".into(), "--node".into(), n.name.clone().into()];
    v.extend(source);
    v.extend([
        "--bpffs-root".into(),
        n.bpffs_root.clone().into(),
        "--cgroup-root".into(),
        n.cgroup.clone().into(),
        "--admin-addr".into(),
        ADMIN_ADDR.into(),
        // The node devices are veth pairs: native XDP_TX on a veth is dropped unless its peer (the
        // segment bridge's port) runs XDP as well, so the lab uses generic XDP, where XDP_TX works.
        "--xdp-mode".into(),
        "generic".into(),
    ]);
    v.extend(state.agent_args.iter().map(OsString::from));
    v
}

/// How `lab agent restart` stops the running agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stop {
    /// SIGKILL: a crash; nothing of the agent runs after it.
    Kill,
    /// SIGTERM: an orderly stop, as a rolling update does.
    Term,
}

#[derive(clap::Args, Debug)]
pub struct RestartArgs {
    /// The node whose agent is restarted.
    pub node: String,
    #[arg(long, value_enum, default_value_t = Stop::Kill)]
    pub signal: Stop,
    /// Start this binary instead of the one running (an upgrade); default: the lab's agent binary.
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct RestartReport {
    pub node: String,
    pub signal: Stop,
    pub old_pid: Option<i32>,
    pub new_pid: i32,
    pub agent_bin: PathBuf,
    /// Milliseconds from the signal until the new agent process was running.
    pub gap_ms: f64,
}

/// Stops a node's agent (SIGKILL or SIGTERM), waits until it is gone, and starts the agent again —
/// the same binary, or another one (`--agent-bin`) to show an upgrade.
pub fn restart(paths: &Paths, args: RestartArgs) -> Result<()> {
    let mut state = State::load(paths)?;
    let bin = match &args.agent_bin {
        Some(b) => {
            std::fs::canonicalize(b).with_context(|| format!("--agent-bin {}: not found", b.display()))?
        }
        None => state
            .agent_bin
            .clone()
            .context("this lab runs no agents (it was started with --no-agent)")?,
    };
    let idx = state
        .nodes
        .iter()
        .position(|n| n.name == args.node)
        .with_context(|| format!("no node {} in the lab", args.node))?;
    if state.nodes[idx].proxy != Proxy::Strait {
        bail!(
            "node {} runs kube-proxy ({:?}), not our agent",
            args.node,
            state.nodes[idx].proxy
        );
    }
    let old_pid = state.nodes[idx].agent_pid;
    let start = Instant::now();
    if let Some(pid) = old_pid.filter(|&p| process::alive(p)) {
        let signal = match args.signal {
            Stop::Kill => nix::sys::signal::Signal::SIGKILL,
            Stop::Term => nix::sys::signal::Signal::SIGTERM,
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .with_context(|| format!("signalling the agent of node {} (pid {pid})", args.node))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while process::alive(pid) {
            if Instant::now() > deadline {
                bail!(
                    "the agent of node {} (pid {pid}) is still running 10 s after {:?}",
                    args.node,
                    args.signal
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let n = &state.nodes[idx];
    let dir = super::layout::node_dir(&n.name);
    let mut child = process::spawn_detached(
        paths,
        &log_name(&dir),
        &n.netns,
        &n.cgroup,
        &argv(paths, &state, n, &bin),
    )?;
    let gap_ms = start.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(SETTLE);
    if let Some(status) = child.try_wait()? {
        let log = paths.log(&log_name(&dir));
        bail!(
            "the restarted agent of node {} exited ({status}); its log {} ends:\n    {}",
            args.node,
            log.display(),
            process::log_tail(&log, 10)
        );
    }
    let new_pid = child.id() as i32;
    state.nodes[idx].agent_pid = Some(new_pid);
    state.save(paths)?;
    let report = RestartReport {
        node: args.node.clone(),
        signal: args.signal,
        old_pid,
        new_pid,
        agent_bin: bin,
        gap_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "agent of node {} restarted ({:?}): pid {} -> {} ({}), new process running {:.1} ms after the signal",
            report.node,
            report.signal,
            old_pid.map_or("none".into(), |p| p.to_string()),
            new_pid,
            report.agent_bin.display(),
            gap_ms
        );
    }
    Ok(())
}

/// bpffs at /sys/fs/bpf (agents pin their maps under it).
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == BPFFS && f[2] == "bpf"
    });
    if !mounted {
        mount(Some("bpffs"), BPFFS, Some("bpf"), MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    }
    std::fs::create_dir_all(Path::new(BPFFS).join("strait"))?;
    Ok(())
}

/// Starts every node's agent and records the pids; fails (naming the node and its log) if one exits
/// within the first second.
pub fn start_all(paths: &Paths, state: &mut State, bin: &Path) -> Result<()> {
    let mut started = Vec::new();
    for n in state.nodes.iter().filter(|n| n.proxy == Proxy::Strait) {
        let dir = super::layout::node_dir(&n.name);
        let child = process::spawn_detached(
            paths,
            &log_name(&dir),
            &n.netns,
            &n.cgroup,
            &argv(paths, state, n, bin),
        )?;
        started.push((n.name.clone(), dir, child));
    }
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        for (node, dir, child) in started.iter_mut() {
            if let Some(status) = child.try_wait()? {
                let log = paths.log(&log_name(dir));
                bail!(
                    "the agent of node {node} exited ({status}); its log {} ends:\n    {}",
                    log.display(),
                    process::log_tail(&log, 10)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (node, _, child) in &started {
        if let Some(n) = state.nodes.iter_mut().find(|n| &n.name == node) {
            n.agent_pid = Some(child.id() as i32);
        }
    }
    state.agent_bin = Some(bin.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{layout::layout, spec};

    const FILE: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.10}]}
";

    #[test]
    fn agent_args_follow_the_labs_own() {
        let paths = Paths::new("t");
        let cluster = spec::validate(spec::parse(FILE).unwrap()).unwrap();
        let mut state = layout(&paths, &cluster, None).unwrap();
        let plain = argv(&paths, &state, &state.nodes[0], Path::new("/bin/agent"));
        state.agent_args = vec!["--nodeport-mode=dsr".into()];
        let with = argv(&paths, &state, &state.nodes[0], Path::new("/bin/agent"));
        assert_eq!(with.len(), plain.len() + 1);
        assert_eq!(with[..plain.len()], plain[..]);
        assert_eq!(with.last().unwrap(), "--nodeport-mode=dsr");
        // A relaid-out lab (apply) keeps them.
        let again = layout(&paths, &cluster, Some(&state)).unwrap();
        assert_eq!(again.agent_args, state.agent_args);
    }
}
