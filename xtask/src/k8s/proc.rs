//! One long-running child (etcd, kube-apiserver) started inside a named netns, its output in a log
//! file, stopped with SIGTERM, a bounded wait and then SIGKILL; also when dropped, so an error on the
//! way out of a smoke run leaves no process behind.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

pub struct Supervised {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Supervised {
    /// `ip netns exec` execs the program in place, so the child's pid is the program's own and
    /// signals reach it directly.
    pub fn start(
        name: &str,
        netns: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Supervised> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(program).args(args);
        Supervised::spawn(name, cmd, log).with_context(|| format!("in netns {netns}"))
    }

    /// Starts `cmd` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Supervised> {
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Supervised {
            name: name.to_string(),
            log,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// None while running; the exit status once it has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of its log, for saying why it is not up.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n    ")
    }

    /// SIGTERM, up to `grace` for a clean exit, then SIGKILL. Returns whether it exited on its own.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop(Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str) -> Supervised {
        let log = std::env::temp_dir().join(format!("strait-proc-test-{}-{name}.log", std::process::id()));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Supervised::spawn(name, cmd, log).unwrap()
    }

    #[test]
    fn sigterm_ends_a_process_that_honours_it() {
        let mut p = sh("honours", "exec sleep 30");
        assert!(p.exited().is_none());
        let t = Instant::now();
        assert!(p.stop(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(5));
        let _ = std::fs::remove_file(&p.log);
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed_after_the_grace_time() {
        // The trap must be in place before the signal comes: wait for the line that says so.
        let mut p = sh("ignores", "trap '' TERM; echo ready; while :; do sleep 0.1; done");
        let t = Instant::now();
        while !p.log_tail(1).contains("ready") && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!p.stop(Duration::from_millis(300)));
        assert!(p.exited().is_none(), "stopped: no child left to wait for");
        let _ = std::fs::remove_file(&p.log);
    }

    #[test]
    fn an_early_exit_is_seen_with_its_output() {
        let mut p = sh("dies", "echo cannot start; exit 3");
        let t = Instant::now();
        let status = loop {
            if let Some(s) = p.exited() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "sh did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.log_tail(5), "cannot start");
        let _ = std::fs::remove_file(&p.log);
    }
}
