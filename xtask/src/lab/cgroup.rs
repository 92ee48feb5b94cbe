//! The lab's cgroup v2 subtree. cgroups are not per netns, so socket hooks attach to a cgroup: each lab
//! node gets `strait-<lab>/<node>/host` (its agent and host-side processes) and
//! `strait-<lab>/<node>/pods/<pod>` (one per pod, its responder). No controllers are enabled: the
//! cgroups only group processes, so processes may live in inner nodes and nothing is limited.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub fn create(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating cgroup {}", path.display()))
}

/// Moves the calling process (all its threads) into the cgroup.
pub fn join(path: &Path) -> Result<()> {
    std::fs::write(path.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining cgroup {}", path.display()))
}

/// Processes in the cgroup (not its children).
pub fn procs(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process of the subtree (`cgroup.kill`), waits until it is empty, and removes the
/// directories, deepest first. Returns the removed directories. A missing subtree is fine.
pub fn kill_and_remove(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    // cgroup.kill (Linux 5.14+) SIGKILLs the whole subtree at once, forks included.
    let _ = std::fs::write(root.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while populated(root) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut dirs = Vec::new();
    collect_dirs(root, &mut dirs);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    let mut removed = Vec::new();
    for d in dirs {
        std::fs::remove_dir(&d).with_context(|| format!("removing cgroup {}", d.display()))?;
        removed.push(d);
    }
    Ok(removed)
}

fn populated(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_dirs(&e.path(), out);
        }
    }
}
