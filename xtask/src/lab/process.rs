//! Long-running lab processes (responders, agents): started detached inside a netns and cgroup, found
//! again by pid file or by scanning `/proc/*/ns/net`, and stopped.
//!
//! A process is started as `xtask lab spawn-in --netns N --cgroup C -- CMD...`: that hidden command
//! starts a new session (detached from the terminal, so Ctrl-C on `lab up` does not reach it), enters
//! the netns, joins the cgroup and then execs CMD. Doing this in a fresh process before exec means every
//! socket CMD opens is in the right netns and cgroup from the start, with no `pre_exec` (unsafe) code.

use std::{
    collections::HashSet,
    ffi::{CString, OsString},
    fs::OpenOptions,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{cgroup, netns, state::Paths};

/// Starts `argv` detached in `netns` + `cgroup`, output appended to the log `what`, pid in the pid
/// file `what`. Returns the child so the caller can notice an early death.
pub fn spawn_detached(
    paths: &Paths,
    what: &str,
    netns: &str,
    cgroup: &Path,
    argv: &[OsString],
) -> Result<Child> {
    let log_path = paths.log(what);
    std::fs::create_dir_all(log_path.parent().expect("log dir"))?;
    std::fs::create_dir_all(paths.pid(what).parent().expect("pid dir"))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    let child = Command::new(exe)
        .args([
            "lab", "--name", &paths.lab, "spawn-in", "--netns", netns, "--cgroup",
        ])
        .arg(cgroup)
        .arg("--")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    std::fs::write(paths.pid(what), child.id().to_string())?;
    Ok(child)
}

/// The `spawn-in` / `exec` side: optionally a new session, then netns, cgroup, exec. Never returns on
/// success. Must run before any other thread exists (setns moves only the calling thread).
pub fn enter_and_exec(
    netns_name: &str,
    cgroup_dir: Option<&Path>,
    new_session: bool,
    argv: &[OsString],
) -> Result<()> {
    if argv.is_empty() {
        bail!("no command given");
    }
    if new_session {
        nix::unistd::setsid().context("setsid")?;
    }
    netns::enter(netns_name)?;
    if let Some(dir) = cgroup_dir {
        cgroup::join(dir)?;
    }
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("argument with NUL")?;
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    bail!("executing {:?}: {err}", argv[0])
}

/// A process's state letter and process group, from `/proc/<pid>/stat`.
fn state_and_group(pid: &str) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name, which may itself contain spaces; then the
    // parent and the process group.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.to_string();
    let group = rest.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// Alive and not a zombie (a child of ours that died stays a zombie until we exit, and an orphan
/// stays one here too: this machine's init does not reap).
pub fn alive(pid: i32) -> bool {
    state_and_group(&pid.to_string()).is_some_and(|(state, _)| state != "Z")
}

/// Some process of group `pgid` is alive (not a zombie).
pub fn group_alive(pgid: i32) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| state_and_group(&pid))
        .any(|(state, group)| group == pgid && state != "Z")
}

pub fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Pid files under `<state dir>/pids`.
pub fn pid_files(paths: &Paths) -> Vec<PathBuf> {
    std::fs::read_dir(paths.dir.join("pids"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// The netns inode a process is in.
pub fn netns_inode(pid: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The process' cgroup v2 path, relative to the cgroup2 root (`/strait-lab/n1/host`).
pub fn cgroup_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Every process whose netns is one of `inodes` (what `ip netns pids` does, for many netns at once).
pub fn pids_in_netns(inodes: &HashSet<u64>) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| netns_inode(*pid).is_some_and(|ino| inodes.contains(&ino)))
        .collect()
}

/// SIGTERM, then SIGKILL whatever is still alive after `grace`. Returns how many were signalled.
pub fn terminate(pids: &[i32], grace: Duration) -> usize {
    let live: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    for pid in &live {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while live.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in live.iter().filter(|p| alive(**p)) {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    live.len()
}

/// Last lines of a log, for error messages about a process that died.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n    ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_and_its_group_are_alive_and_a_reaped_one_is_not() {
        let me = std::process::id() as i32;
        assert!(super::alive(me));
        assert!(super::group_alive(nix::unistd::getpgrp().as_raw()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!super::alive(pid));
    }
}
