//! `lab status` (what exists and whether its processes run) and `lab exec` (a command inside a lab netns).

use std::ffi::OsString;

use anyhow::Result;
use serde::Serialize;

use super::{
    netns, plan, process,
    state::{Paths, State},
};

#[derive(Debug, Serialize)]
struct Status {
    name: String,
    up: bool,
    /// Every netns with the lab's prefix, whether the state knows it or not.
    netns: Vec<String>,
    state: Option<State>,
    agents_running: Vec<String>,
    responders_running: Vec<String>,
    /// Processes the state lists that are not running.
    dead: Vec<String>,
}

pub fn command(paths: &Paths, json: bool) -> Result<()> {
    let state = State::load(paths).ok();
    let mut st = Status {
        name: paths.lab.clone(),
        up: state.is_some(),
        netns: netns::list(&plan::prefix(&paths.lab)),
        state: None,
        agents_running: Vec::new(),
        responders_running: Vec::new(),
        dead: Vec::new(),
    };
    if let Some(s) = &state {
        for n in &s.nodes {
            match n.agent_pid {
                Some(pid) if process::alive(pid) => st.agents_running.push(n.name.clone()),
                Some(_) => st.dead.push(format!("agent of node {}", n.name)),
                None => {}
            }
        }
        // kube-proxies and the control plane: listed in `dead` when they should run and do not
        // (a component stopped with `lab control-plane stop` has no pid and is not listed).
        for n in &s.nodes {
            if let Some(pid) = n.kube_proxy_pid.filter(|p| !process::alive(*p)) {
                st.dead.push(format!("kube-proxy of node {} (pid {pid})", n.name));
            }
        }
        for c in s.control_plane.iter().flat_map(|cp| &cp.components) {
            if let Some(pid) = c.pid.filter(|p| !process::alive(*p)) {
                st.dead.push(format!("{} (pid {pid})", c.name));
            }
        }
        for p in &s.pods {
            match p.responder_pid {
                Some(pid) if process::alive(pid) => st.responders_running.push(p.name.clone()),
                _ => st.dead.push(format!("responder of pod {}", p.name)),
            }
        }
    }
    st.state = state;
    let human = match &st.state {
        None if st.netns.is_empty() => format!("lab {} does not exist\n", paths.lab),
        None => format!(
            "lab {} has no state but left netns behind: {:?} (run lab down)\n",
            paths.lab, st.netns
        ),
        Some(s) => format!(
            "{}  agents running: {}/{}, responders running: {}/{}{}\n",
            super::up::human(s),
            st.agents_running.len(),
            s.nodes.iter().filter(|n| n.agent_pid.is_some()).count(),
            st.responders_running.len(),
            s.pods.len(),
            if st.dead.is_empty() {
                String::new()
            } else {
                format!("\n  not running: {}", st.dead.join(", "))
            }
        ),
    };
    super::output(json, &human, &st)
}

/// Runs `argv` in the target's netns (and cgroup, for nodes and pods), replacing this process.
pub fn exec(paths: &Paths, target: &str, argv: &[OsString]) -> Result<()> {
    let state = State::load(paths)?;
    let (ns, cg) = match target {
        "external" => (state.external.netns.clone(), None),
        "segment" | "seg" => (state.segment_netns.clone(), None),
        "control-plane" | "cp" => match &state.control_plane {
            Some(cp) => (cp.netns.clone(), None),
            None => anyhow::bail!(
                "lab {} has no control plane (lab up --control-plane real)",
                state.name
            ),
        },
        t => {
            let node = t.strip_prefix("node/").unwrap_or(t);
            match state.node(node) {
                Some(n) => (n.netns.clone(), Some(n.cgroup.clone())),
                None => {
                    let p = state.pod(t)?;
                    (p.netns.clone(), Some(p.cgroup.clone()))
                }
            }
        }
    };
    process::enter_and_exec(&ns, cg.as_deref(), false, argv)
}
