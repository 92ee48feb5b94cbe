//! A pod's life in the lab beyond its wiring: its cgroup and its responder.

use std::{
    ffi::OsString,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    cgroup, process,
    spec::Proto,
    state::{Paths, PodState, State},
    topology,
};

/// How long responders get to bind their sockets.
const READY_WITHIN: Duration = Duration::from_secs(10);

fn log_name(p: &PodState) -> String {
    format!("pod-{}", p.key)
}

/// Starts the responder of `p` (its cgroup must exist) and returns the child, not yet known to be ready.
pub fn start_responder(paths: &Paths, p: &PodState) -> Result<Child> {
    let exe = std::env::current_exe()?;
    let mut argv: Vec<OsString> = vec![
        exe.into(),
        "lab-responder".into(),
        "--pod".into(),
        p.name.clone().into(),
    ];
    let mut numbers: Vec<u16> = p.ports.iter().map(|d| d.port).collect();
    numbers.sort_unstable();
    numbers.dedup();
    for n in numbers {
        argv.extend(["--port".into(), n.to_string().into()]);
    }
    for d in p.ports.iter().filter(|d| d.protocol == Proto::Sctp) {
        argv.extend(["--sctp-port".into(), d.port.to_string().into()]);
    }
    let ready = paths.ready(&p.key);
    let _ = std::fs::remove_file(&ready);
    argv.extend(["--ready-file".into(), ready.into()]);
    process::spawn_detached(paths, &log_name(p), &p.netns, &p.cgroup, &argv)
}

/// Waits until every started responder has bound its sockets; names the first that died or is late.
pub fn wait_ready(paths: &Paths, started: &mut [(&PodState, Child)]) -> Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let mut pending = None;
        for (p, child) in started.iter_mut() {
            if paths.ready(&p.key).exists() {
                continue;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the responder of Pod {} exited ({status}); its log {} ends:\n    {}",
                    p.name,
                    paths.log(&log_name(p)).display(),
                    process::log_tail(&paths.log(&log_name(p)), 5)
                );
            }
            pending = Some(p.name.clone());
        }
        match pending {
            None => return Ok(()),
            Some(name) if Instant::now() > deadline => {
                bail!("the responder of Pod {name} did not bind its ports within {READY_WITHIN:?}")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Starts the responders of `pods` and waits for them; records their pids in `state`.
pub fn start_all(paths: &Paths, state: &mut State, names: &[String]) -> Result<()> {
    let mut started = Vec::new();
    for p in state.pods.iter().filter(|p| names.contains(&p.name)) {
        cgroup::create(&p.cgroup)?;
        started.push((p, start_responder(paths, p)?));
    }
    wait_ready(paths, &mut started)?;
    let pids: Vec<(String, i32)> = started
        .iter()
        .map(|(p, c)| (p.name.clone(), c.id() as i32))
        .collect();
    for (name, pid) in pids {
        if let Some(p) = state.pods.iter_mut().find(|p| p.name == name) {
            p.responder_pid = Some(pid);
        }
    }
    Ok(())
}

/// Stops a pod's processes and removes its wiring, cgroup and files (`state` is the state it was
/// built with, for the routes other nodes hold to it).
pub fn remove(paths: &Paths, state: &State, p: &PodState) -> Result<()> {
    let mut pids = cgroup::procs(&p.cgroup);
    pids.extend(process::read_pid_file(&paths.pid(&log_name(p))));
    if let Some(ino) = super::netns::inode(&p.netns) {
        pids.extend(process::pids_in_netns(&[ino].into_iter().collect()));
    }
    pids.sort_unstable();
    pids.dedup();
    process::terminate(&pids, Duration::from_secs(2));
    topology::remove_pod(state, p)?;
    cgroup::kill_and_remove(&p.cgroup)?;
    let _ = std::fs::remove_file(paths.pid(&log_name(p)));
    let _ = std::fs::remove_file(paths.ready(&p.key));
    Ok(())
}
