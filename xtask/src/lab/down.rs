//! `lab down`: removes everything a lab created, found by name prefix as well as from the state file,
//! so it also cleans up after a crashed run whose state is gone or stale. Idempotent.
//!
//! Order: agents and kube-proxies first (SIGTERM, time to detach their programs), then the control
//! plane one process at a time, last started first (kube-controller-manager, kube-apiserver, etcd:
//! each stops while what it talks to still runs), then every other process in a lab netns or the
//! lab cgroup, then the cgroups, netns, bpffs pins and the state dir. Every step runs even
//! if an earlier one failed; the failures are reported together.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use serde::Serialize;

use super::{
    cgroup, cplane, netns, plan, process,
    state::{BPFFS, Paths, State},
};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub name: String,
    pub existed: bool,
    pub processes_stopped: usize,
    /// Control-plane processes that did not exit within the grace period of SIGTERM and were killed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub killed: Vec<String>,
    pub netns_removed: Vec<String>,
    pub cgroups_removed: Vec<PathBuf>,
    pub bpf_pins_removed: Vec<PathBuf>,
    pub state_dir_removed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

pub fn command(paths: &Paths, json: bool) -> Result<()> {
    let report = teardown(paths)?;
    let human = if !report.existed {
        format!("lab {} does not exist; nothing to remove\n", paths.lab)
    } else {
        format!(
            "lab {} removed: {} processes stopped, {} netns, {} cgroups, {} bpffs pins\n",
            paths.lab,
            report.processes_stopped,
            report.netns_removed.len(),
            report.cgroups_removed.len(),
            report.bpf_pins_removed.len()
        )
    };
    super::output(json, &human, &report)?;
    if !report.errors.is_empty() {
        bail!(
            "lab {} was not removed completely:\n  {}",
            paths.lab,
            report.errors.join("\n  ")
        );
    }
    Ok(())
}

/// Pins of this lab: `/sys/fs/bpf/strait/<lab>-*` (lab names have no `-`, so no other lab matches).
fn bpf_pins(lab: &str) -> Vec<PathBuf> {
    let dir = std::path::Path::new(BPFFS).join("strait");
    let prefix = format!("{lab}-");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

pub fn teardown(paths: &Paths) -> Result<Report> {
    let lab = paths.lab.as_str();
    let names = netns::list(&plan::prefix(lab));
    let cgroup_root = paths.cgroup_root();
    let pins = bpf_pins(lab);
    let mut report = Report {
        name: lab.to_string(),
        ..Default::default()
    };
    report.existed = paths.dir.exists() || !names.is_empty() || cgroup_root.exists() || !pins.is_empty();
    if !report.existed {
        return Ok(report);
    }
    let state = State::load(paths).ok();

    // Processes: ours are in a lab netns or in the lab's cgroup. A pid from a pid file or the state is
    // only signalled when it still is, so a stale file never kills an unrelated process.
    let inodes: HashSet<u64> = names.iter().filter_map(|n| netns::inode(n)).collect();
    let cg_prefix = format!("/strait-{lab}/");
    let ours = |pid: i32| {
        process::netns_inode(pid).is_some_and(|i| inodes.contains(&i))
            || process::cgroup_of(pid).is_some_and(|c| c.starts_with(&cg_prefix))
    };
    let mut agents: Vec<i32> = state
        .iter()
        .flat_map(|s| s.nodes.iter().filter_map(|n| n.agent_pid))
        .collect();
    let mut others: Vec<i32> = state
        .iter()
        .flat_map(|s| s.pods.iter().filter_map(|p| p.responder_pid))
        .collect();
    agents.extend(
        state
            .iter()
            .flat_map(|s| s.nodes.iter().filter_map(|n| n.kube_proxy_pid)),
    );
    let control_plane = cplane::pid_files_in_stop_order(paths);
    for f in process::pid_files(paths) {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if control_plane.iter().any(|(_, p)| *p == f) {
            continue;
        }
        if let Some(pid) = process::read_pid_file(&f) {
            if name.starts_with("agent-") || name.starts_with("kube-proxy-") {
                agents.push(pid)
            } else {
                others.push(pid)
            }
        }
    }
    agents.retain(|p| ours(*p));
    report.processes_stopped += process::terminate(&agents, Duration::from_secs(5));
    for (name, file) in control_plane {
        let Some(pid) = process::read_pid_file(&file).filter(|p| process::alive(*p) && ours(*p)) else {
            continue;
        };
        report.processes_stopped += 1;
        if !cplane::stop_pid(pid) {
            report.killed.push(name);
        }
    }
    others.extend(process::pids_in_netns(&inodes));
    others.retain(|p| ours(*p));
    others.sort_unstable();
    others.dedup();
    report.processes_stopped += process::terminate(&others, Duration::from_secs(2));

    match cgroup::kill_and_remove(&cgroup_root) {
        Ok(removed) => report.cgroups_removed = removed,
        Err(e) => report.errors.push(format!("{e:#}")),
    }
    // Pods before nodes before the segment: each deletion takes its veths along.
    let mut ordered = names.clone();
    ordered.sort_by_key(|n| {
        if n.contains("-pod-") {
            0
        } else if n.ends_with("-seg") {
            2
        } else {
            1
        }
    });
    for n in ordered {
        match netns::delete(&n) {
            Ok(()) => report.netns_removed.push(n),
            Err(e) => report.errors.push(format!("{e:#}")),
        }
    }
    for pin in pins {
        match std::fs::remove_dir_all(&pin).or_else(|_| std::fs::remove_file(&pin)) {
            Ok(()) => report.bpf_pins_removed.push(pin),
            Err(e) => report.errors.push(format!("removing {}: {e}", pin.display())),
        }
    }
    if paths.dir.exists() {
        match std::fs::remove_dir_all(&paths.dir) {
            Ok(()) => report.state_dir_removed = true,
            Err(e) => report
                .errors
                .push(format!("removing {}: {e}", paths.dir.display())),
        }
    }
    Ok(report)
}
