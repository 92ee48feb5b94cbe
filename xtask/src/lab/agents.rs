//! One agent per node, started inside the node's netns and its `host` cgroup, in standalone mode on
//! the lab's manifests:
//! `<agent-bin> run --node N --manifests <state>/manifests --bpffs-root /sys/fs/bpf/strait/<lab>-<N>
//!  --cgroup-root /sys/fs/cgroup/unified/strait-<lab>/<N>/host --admin-addr 127.0.0.1:9970`

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
    state::{BPFFS, Paths, State},
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
    for n in &state.nodes {
        let dir = super::layout::node_dir(&n.name);
        let argv: Vec<OsString> = vec![
            bin.into(),
            "run".into(),
            "--node".into(),
            n.name.clone().into(),
            "--manifests".into(),
            paths.manifests().into(),
            "--bpffs-root".into(),
            n.bpffs_root.clone().into(),
            "--cgroup-root".into(),
            n.cgroup.clone().into(),
            "--admin-addr".into(),
            ADMIN_ADDR.into(),
        ];
        let child = process::spawn_detached(paths, &log_name(&dir), &n.netns, &n.cgroup, &argv)?;
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
