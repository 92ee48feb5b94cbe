//! Named network namespaces (`/run/netns/<name>`, the `ip netns` convention, so `ip netns exec` and
//! `ip -n` work on them too) and running things inside them. Nothing here touches the root netns:
//! configuration goes through `ip -n <netns>` or a thread that has entered the netns.

use std::{
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

pub fn add(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "add", name])).with_context(|| format!("creating netns {name}"))
}

pub fn delete(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "delete", name])).with_context(|| format!("deleting netns {name}"))
}

/// Named netns whose name starts with `prefix`, sorted.
pub fn list(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The netns' inode: what `/proc/<pid>/ns/net` links to (`net:[<inode>]`) for processes inside it.
pub fn inode(name: &str) -> Option<u64> {
    std::fs::metadata(path(name)).ok().map(|m| m.ino())
}

/// Runs `ip` commands in `netns`, one per line, in one `ip -batch` process; stops at the first failure.
pub fn ip_batch(netns: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (is iproute2 installed?)")?;
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(lines.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -n {netns}: {}\n  commands were:\n    {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            lines.join("\n    ")
        );
    }
    Ok(())
}

/// Moves the calling thread into the named netns. Network namespaces are per thread: only this thread
/// (and processes or threads it starts afterwards) see the new one; sockets keep the netns they were
/// opened in.
pub fn enter(name: &str) -> Result<()> {
    let file = std::fs::File::open(path(name)).with_context(|| format!("opening netns {name}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {name}"))
}

/// Runs `f` on a fresh thread inside the named netns (so the caller's netns never changes).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
}

/// Writes sysctls (`net.ipv4.ip_forward` style keys) of the named netns: `/proc/sys/net` shows the
/// netns of the thread that opens it.
pub fn sysctls(name: &str, settings: &[(&str, &str)]) -> Result<()> {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let netns = name.to_string();
    in_netns(name, move || {
        for (key, value) in &settings {
            let file = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&file, value).with_context(|| format!("netns {netns}: setting {key}={value}"))?;
        }
        Ok(())
    })
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
