//! Commands on the real control plane of a running lab: `lab control-plane start|stop|restart
//! COMPONENT` (e.g. an apiserver outage while traffic flows), `lab kubeconfig`, `lab kubectl`.

use std::{ffi::OsString, time::Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{
    cplane, process,
    state::{Paths, State},
};

#[derive(Debug, Subcommand)]
pub enum ControlPlaneCommand {
    /// Start a stopped component with its original command line; returns once it is ready.
    Start(ComponentArgs),
    /// SIGTERM, up to 15 s, then SIGKILL.
    Stop(ComponentArgs),
    /// Stop, then start.
    Restart(ComponentArgs),
}

#[derive(Debug, Args)]
pub struct ComponentArgs {
    /// etcd, kube-apiserver (or apiserver), kube-controller-manager (or controller-manager).
    pub component: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KubectlArgs {
    #[arg(last = true, required = true)]
    pub args: Vec<OsString>,
}

#[derive(Debug, Serialize)]
struct Report {
    component: String,
    action: &'static str,
    old_pid: Option<i32>,
    /// Whether the old process exited within the grace period of SIGTERM (stop, restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_cleanly: Option<bool>,
    new_pid: Option<i32>,
    /// From the start of the command until the component was ready again (start, restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    ready_ms: Option<u64>,
}

pub fn command(paths: &Paths, cmd: ControlPlaneCommand) -> Result<()> {
    let (args, action) = match &cmd {
        ControlPlaneCommand::Start(a) => (a, "start"),
        ControlPlaneCommand::Stop(a) => (a, "stop"),
        ControlPlaneCommand::Restart(a) => (a, "restart"),
    };
    let name = cplane::component_name(&args.component)?;
    let mut state = State::load(paths)?;
    let cp = state.control_plane.as_ref().with_context(|| {
        format!(
            "lab {} has no control plane (lab up --control-plane real)",
            paths.lab
        )
    })?;
    let old_pid = cp
        .components
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.pid)
        .filter(|p| process::alive(*p));
    let started = Instant::now();
    let mut report = Report {
        component: name.to_string(),
        action,
        old_pid,
        stopped_cleanly: None,
        new_pid: None,
        ready_ms: None,
    };
    if action != "start" {
        report.stopped_cleanly = Some(cplane::stop(&mut state, name)?);
        state.save(paths)?;
    }
    if action != "stop" {
        let result = cplane::start(paths, &mut state, name);
        // The pid is recorded even when readiness failed, so `down` finds the process.
        state.save(paths)?;
        report.new_pid = Some(result?);
        report.ready_ms = Some(started.elapsed().as_millis() as u64);
    }
    let human = format!(
        "{action} {name}: pid {} -> {}{}\n",
        old_pid.map_or("none".into(), |p| p.to_string()),
        report.new_pid.map_or("none".into(), |p| p.to_string()),
        match report.ready_ms {
            Some(ms) => format!(", ready after {ms} ms"),
            None => String::new(),
        }
    );
    super::output(args.json, &human, &report)?;
    if report.stopped_cleanly == Some(false) {
        bail!(
            "{name} did not exit within {:?} of SIGTERM and was killed",
            cplane::STOP_GRACE
        );
    }
    Ok(())
}

pub fn kubeconfig(paths: &Paths) -> Result<()> {
    let state = State::load(paths)?;
    let cp = state.control_plane.with_context(|| {
        format!(
            "lab {} has no control plane (lab up --control-plane real)",
            paths.lab
        )
    })?;
    println!("{}", cp.kubeconfig.display());
    Ok(())
}

/// Replaces this process with kubectl inside the control plane's netns: the apiserver's address
/// is a lab segment address, which the machine's own netns does not reach.
pub fn kubectl(paths: &Paths, args: &KubectlArgs) -> Result<()> {
    let state = State::load(paths)?;
    let cp = state.control_plane.with_context(|| {
        format!(
            "lab {} has no control plane (lab up --control-plane real)",
            paths.lab
        )
    })?;
    let mut argv: Vec<OsString> = vec![
        cp.kubectl.clone().into(),
        "--kubeconfig".into(),
        cp.kubeconfig.clone().into(),
    ];
    argv.extend(args.args.iter().cloned());
    process::enter_and_exec(&cp.netns, None, false, &argv)
}
