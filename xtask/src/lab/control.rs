//! Background clients of a lab (long-lived TCP connections, UDP flows): one small daemon process per
//! label, started like the responders (`spawn-in`: its own session, the source's netns and cgroup, so
//! its sockets are the source's sockets), holding its socket until told to stop, until `lab down`, or
//! until its lifetime ends.
//!
//! Files, under `<state dir>/clients/`: `<kind>-<label>.json` (what the daemon is and its state,
//! written by the daemon) and `<kind>-<label>.sock` (its control socket: one JSON request line, one
//! JSON reply line per connection). Pathname unix sockets belong to no netns, so the CLI reaches a
//! daemon in any of the lab's namespaces. Log and pid files are the lab's usual `<kind>-<label>`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    cgroup, process,
    source::Source,
    state::{Paths, write_atomically},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Conn,
    Flow,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Conn => "conn",
            Kind::Flow => "flow",
        }
    }
}

/// Labels name files: 1 to 32 of `a-z0-9-_`.
pub fn check_label(label: &str) -> Result<()> {
    let ok = label
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if label.is_empty() || label.len() > 32 || !ok {
        bail!("--label {label:?}: use 1 to 32 characters from a-z, 0-9, '-' and '_'");
    }
    Ok(())
}

/// `conn-<label>`: the log, pid and clients file stem.
pub fn stem(kind: Kind, label: &str) -> String {
    format!("{}-{label}", kind.word())
}

pub fn state_file(paths: &Paths, kind: Kind, label: &str) -> PathBuf {
    paths.clients().join(format!("{}.json", stem(kind, label)))
}

pub fn socket_file(paths: &Paths, kind: Kind, label: &str) -> PathBuf {
    paths.clients().join(format!("{}.sock", stem(kind, label)))
}

/// The daemon's last word about itself, or `None` when it never wrote one.
pub fn read_state(paths: &Paths, kind: Kind, label: &str) -> Option<Value> {
    let text = std::fs::read_to_string(state_file(paths, kind, label)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write_state(path: &Path, state: &Value) -> Result<()> {
    write_atomically(path, serde_json::to_string_pretty(state)?.as_bytes())
}

fn pid(paths: &Paths, kind: Kind, label: &str) -> Option<i32> {
    process::read_pid_file(&paths.pid(&stem(kind, label)))
}

pub fn running(paths: &Paths, kind: Kind, label: &str) -> bool {
    pid(paths, kind, label).is_some_and(process::alive)
}

/// Removes the files of a label whose daemon is gone.
pub fn forget(paths: &Paths, kind: Kind, label: &str) {
    let _ = std::fs::remove_file(state_file(paths, kind, label));
    let _ = std::fs::remove_file(socket_file(paths, kind, label));
    let _ = std::fs::remove_file(paths.pid(&stem(kind, label)));
}

/// Starts the daemon `argv` for `label` in `source`'s netns and cgroup and waits (up to `within`)
/// until it says it holds its socket (state file with a `state` other than `starting`). A label in
/// use is refused; one whose daemon died is reused.
pub fn start(
    paths: &Paths,
    kind: Kind,
    label: &str,
    source: &Source,
    argv: &[std::ffi::OsString],
    within: Duration,
) -> Result<Value> {
    let what = stem(kind, label);
    if running(paths, kind, label) {
        let old = read_state(paths, kind, label).unwrap_or(Value::Null);
        bail!(
            "{} {label} is already open (from {} to {}); close it first or pick another --label",
            kind.word(),
            old["from"].as_str().unwrap_or("?"),
            old["to"].as_str().unwrap_or("?")
        );
    }
    forget(paths, kind, label);
    std::fs::create_dir_all(paths.clients())?;
    let cg = match &source.cgroup {
        Some(cg) => cg.clone(),
        None => paths.external_cgroup(),
    };
    cgroup::create(&cg)?;
    let mut child = process::spawn_detached(paths, &what, &source.netns, &cg, argv)?;
    wait_started(paths, kind, label, &mut child, within)
}

fn wait_started(
    paths: &Paths,
    kind: Kind,
    label: &str,
    child: &mut Child,
    within: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(state) = read_state(paths, kind, label) {
            if state["state"] != "starting" {
                return Ok(state);
            }
        }
        if let Some(status) = child.try_wait()? {
            let log = paths.log(&stem(kind, label));
            forget(paths, kind, label);
            bail!(
                "the {} daemon {label} exited ({status}); its log {} ends:\n    {}",
                kind.word(),
                log.display(),
                process::log_tail(&log, 5)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the {} daemon {label} did not start within {within:?}",
                kind.word()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one request to the daemon of `label` and returns its reply.
pub fn request(paths: &Paths, kind: Kind, label: &str, req: &Value, timeout: Duration) -> Result<Value> {
    let sock = socket_file(paths, kind, label);
    let gone = || {
        let log = paths.log(&stem(kind, label));
        anyhow::anyhow!(
            "{} {label} is gone: its daemon is not running (closed, its source pod removed, or its lifetime \
             ended); its log {} ends:\n    {}",
            kind.word(),
            log.display(),
            process::log_tail(&log, 3)
        )
    };
    if read_state(paths, kind, label).is_none() && !sock.exists() {
        bail!(
            "no {} labelled {label} in lab {} (see `lab {} list`)",
            kind.word(),
            paths.lab,
            kind.word()
        );
    }
    if !running(paths, kind, label) {
        return Err(gone());
    }
    let stream = UnixStream::connect(&sock).map_err(|_| gone())?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .with_context(|| format!("waiting for the {} daemon {label}", kind.word()))?;
    if reply.is_empty() {
        return Err(gone());
    }
    serde_json::from_str(&reply).with_context(|| format!("reading the reply of {} {label}", kind.word()))
}

/// Every label of `kind` with a state file, sorted.
pub fn labels(paths: &Paths, kind: Kind) -> Vec<String> {
    let prefix = format!("{}-", kind.word());
    let mut out: Vec<String> = std::fs::read_dir(paths.clients())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| {
            n.strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// Waits (bounded) for the daemon of `label` to exit after it was told to.
pub fn wait_exit(paths: &Paths, kind: Kind, label: &str, within: Duration) {
    let Some(pid) = pid(paths, kind, label) else {
        return;
    };
    let deadline = Instant::now() + within;
    while process::alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if process::alive(pid) {
        process::terminate(&[pid], Duration::from_secs(1));
    }
}

/// The daemon side: answers requests on `listener` one at a time with `handle`, which returns the
/// reply and whether to stop. Returns after a stop.
pub fn serve(listener: &UnixListener, mut handle: impl FnMut(&Value) -> (Value, bool)) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let (reply, stop) = handle(&req);
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        let _ = (&stream).write_all(&out);
        if stop {
            return;
        }
    }
}

/// Ends the daemon after `lifetime` whatever it is doing, so a forgotten one never outlives it. Its
/// state file stays, so `check` can say it is gone.
pub fn exit_after(lifetime: Duration, socket: PathBuf) {
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        eprintln!("lifetime of {lifetime:?} ended");
        let _ = std::fs::remove_file(socket);
        std::process::exit(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        assert!(check_label("web-1_a").is_ok());
        assert!(check_label("").is_err());
        assert!(check_label("A").is_err());
        assert!(check_label("a/b").is_err());
        assert!(check_label(&"x".repeat(33)).is_err());
        assert_eq!(stem(Kind::Flow, "dns"), "flow-dns");
    }
}
