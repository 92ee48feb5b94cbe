//! `cargo xtask lab`: a Kubernetes-like cluster made of network namespaces, built from one YAML file of
//! standard Kubernetes objects, with real traffic (`probe`, `matrix`) and an agent per node.
//! See docs in ARCHITECTURE.md ("The lab") and LAB.md (the `--json` shapes, a contract).
//!
//! Module map: `spec` parses and validates the file, `plan` names and addresses things (pure),
//! `layout` turns a cluster into the `state` to build, `topology` wires netns/veths/routes, `pods`
//! adds and removes pods with their responders, `agents` starts the node agents, `manifests` writes
//! what the agents read, `external` is the client outside the cluster and the router in front of it,
//! `source` resolves `--from` and runs client workers there, `probe`/`matrix`/`http_probe` send
//! traffic, `conn`/`flow` keep TCP connections and UDP flows going in background daemons
//! (`control`), `down` removes everything. With `--control-plane real`: `cplane` runs etcd,
//! kube-apiserver and kube-controller-manager in the lab, `api` puts the objects through it,
//! `kubeproxy` runs upstream kube-proxy on chosen nodes, `cplane_cmd` holds `lab control-plane`,
//! `lab kubeconfig` and `lab kubectl`, `proxy_cmd` stops, cleans and starts any node's proxy.

mod agents;
pub(crate) mod api;
mod apply;
mod cgroup;
mod conn;
mod control;
mod cplane;
mod cplane_cmd;
mod down;
mod external;
mod flow;
mod http;
mod http_probe;
mod kubeproxy;
mod layout;
pub(crate) mod load;
mod manifests;
mod matrix;
pub(crate) mod netns;
mod plan;
mod pods;
mod probe;
pub(crate) mod process;
mod proxy_cmd;
pub mod responder;
mod sctp;
mod sockets;
mod source;
mod spec;
mod state;
mod status;
mod topology;
mod up;

use std::{ffi::OsString, path::PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};

use state::Paths;

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Lab name: prefix of everything the lab creates (`strait-<name>-…`), so labs never collide.
    #[arg(long, global = true, env = "STRAIT_LAB", default_value = "lab")]
    pub name: String,
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Stop a node's agent (SIGKILL by default) and start it again, or start another binary.
    Restart(agents::RestartArgs),
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Validate FILE, then build the lab: segment, nodes, pods, external client, responders, agents.
    Up(up::UpArgs),
    /// Add or change objects of a running lab (pods are built, rebuilt or kept as needed).
    Apply(apply::FileArgs),
    /// Remove the objects of FILE from a running lab (pods are torn down).
    Delete(apply::FileArgs),
    /// Send real traffic from a pod, node or the external client and report who answered.
    Probe(probe::ProbeArgs),
    /// Every pod to every pod on one port: `.` allowed, `X` denied.
    Matrix(matrix::MatrixArgs),
    /// One HTTP GET from a pod, node or the external client: status, headers, body, who answered.
    Http(http_probe::HttpArgs),
    /// Long-lived TCP connections held in the background: open, check, close, list.
    #[command(subcommand)]
    Conn(conn::ConnCommand),
    /// UDP flows sending in the background: start, check, stop, list.
    #[command(subcommand)]
    Flow(flow::FlowCommand),
    /// New TCP connections at a steady rate for a while, counted by outcome and by who answered.
    Load(load::LoadArgs),
    /// Node agents: `restart NODE [--signal kill|term] [--agent-bin PATH]`.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Any node's proxy (our agent or kube-proxy): `stop NODE [--cleanup]`, `start NODE`.
    #[command(subcommand)]
    Proxy(proxy_cmd::ProxyCommand),
    /// The real control plane: `start|stop|restart COMPONENT` (etcd, kube-apiserver,
    /// kube-controller-manager).
    #[command(subcommand, name = "control-plane")]
    ControlPlane(cplane_cmd::ControlPlaneCommand),
    /// Print the path of the real control plane's admin kubeconfig.
    Kubeconfig,
    /// Run kubectl with the admin kubeconfig inside the control plane's netns: `lab kubectl -- get pods -A`.
    Kubectl(cplane_cmd::KubectlArgs),
    /// Remove everything the lab created (also after a crash). Idempotent.
    Down(JsonArgs),
    /// What exists: netns, nodes, pods, and whether their processes run.
    Status(JsonArgs),
    /// Run a command in a netns of the lab: `node/NAME` (or NAME), `ns/pod` (or a unique pod name),
    /// `external` or `segment`. Node and pod commands also join that node's or pod's cgroup.
    Exec(ExecArgs),
    /// Internal: enter a netns and cgroup, start a session, exec the command (for lab processes).
    #[command(hide = true)]
    SpawnIn(SpawnArgs),
    /// Internal: run probe jobs (JSON on stdin) inside a netns.
    #[command(hide = true)]
    ProbeWorker(probe::WorkerArgs),
    /// Internal: run one HTTP request (JSON on stdin) inside a netns.
    #[command(hide = true)]
    HttpWorker(http_probe::WorkerArgs),
    /// Internal: run a load (JSON on stdin) inside a netns.
    #[command(hide = true)]
    LoadWorker(load::WorkerArgs),
    /// Internal: the daemon holding one long-lived connection (its spec as JSON).
    #[command(hide = true)]
    ConnDaemon { spec: String },
    /// Internal: the daemon sending one UDP flow (its spec as JSON).
    #[command(hide = true)]
    FlowDaemon { spec: String },
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// One JSON document on stdout; human text goes to stderr.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub target: String,
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct SpawnArgs {
    #[arg(long)]
    pub netns: String,
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

pub fn run(args: LabArgs) -> Result<()> {
    plan::check_lab_name(&args.name)?;
    let paths = Paths::new(&args.name);
    match args.command {
        LabCommand::Up(a) => up::command(&paths, a),
        LabCommand::Apply(a) => apply::command(&paths, a, apply::Mode::Apply),
        LabCommand::Delete(a) => apply::command(&paths, a, apply::Mode::Delete),
        LabCommand::Probe(a) => probe::command(&paths, a),
        LabCommand::Matrix(a) => matrix::command(&paths, a),
        LabCommand::Down(a) => down::command(&paths, a.json),
        LabCommand::Status(a) => status::command(&paths, a.json),
        LabCommand::Exec(a) => status::exec(&paths, &a.target, &a.command),
        LabCommand::SpawnIn(a) => process::enter_and_exec(&a.netns, a.cgroup.as_deref(), true, &a.command),
        LabCommand::ProbeWorker(a) => probe::worker(a),
        LabCommand::Http(a) => http_probe::command(&paths, a),
        LabCommand::Conn(c) => conn::command(&paths, c),
        LabCommand::Flow(c) => flow::command(&paths, c),
        LabCommand::HttpWorker(a) => http_probe::worker(a),
        LabCommand::LoadWorker(a) => load::worker(a),
        LabCommand::Load(a) => load::command(&paths, a),
        LabCommand::Agent(AgentCommand::Restart(a)) => agents::restart(&paths, a),
        LabCommand::Proxy(c) => proxy_cmd::command(&paths, c),
        LabCommand::ControlPlane(c) => cplane_cmd::command(&paths, c),
        LabCommand::Kubeconfig => cplane_cmd::kubeconfig(&paths),
        LabCommand::Kubectl(a) => cplane_cmd::kubectl(&paths, &a),
        LabCommand::ConnDaemon { spec } => conn::daemon(&spec),
        LabCommand::FlowDaemon { spec } => flow::daemon(&spec),
    }
}

/// Prints a command's result: with `--json`, the JSON document on stdout and the human text on
/// stderr; without, the human text on stdout.
pub(crate) fn output<T: serde::Serialize>(json: bool, human: &str, value: &T) -> Result<()> {
    if json {
        eprint!("{human}");
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{human}");
    }
    Ok(())
}
