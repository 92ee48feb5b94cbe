//! Command line: `run` starts the node agent; the other commands inspect a running one.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9970";

#[derive(Parser)]
#[command(
    name = "proxy-agent",
    version,
    about = "strait: eBPF service proxy and NetworkPolicy agent"
)]
pub struct Cli {
    /// Log filter at start (`info`, `debug`, `info,proxy_agent::datapath=trace`; `RUST_LOG` wins when
    /// set). A running agent's filter is changed with `proxy-agent log-level`.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the node agent: load and attach the datapath, then keep it in step with the cluster.
    Run(RunArgs),
    /// What the running agent on this node has attached, its sync state and packet counters.
    Status(StatusArgs),
    /// Flow records of the datapath (drops and new connections), with pod and policy names.
    Flows(FlowsArgs),
    /// NetworkPolicy: what is programmed for each local pod, and why a flow is allowed or denied.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Pod identities (label sets) the policy datapath uses.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Service frontends programmed in the datapath, with their backends.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Backends in the datapath (id, address, flags), read from the pinned map.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Conntrack entries (tuple, direction, backend, flags, idle time), read from the pinned map.
    #[command(subcommand)]
    Ct(CtCommand),
    /// Show the running agent's log filter, or set it (`debug`, `info,proxy_agent::datapath=trace`).
    LogLevel(LogLevelArgs),
    /// Remove every attachment and pin the agent leaves in the kernel (tc filters, XDP and socket-hook
    /// links, maps), as `kube-proxy --cleanup` does. Stop the agent first.
    Cleanup(CleanupArgs),
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Per local pod: endpoint id, identity, isolation per direction, the policies selecting it, entries.
    List(StatusArgs),
    /// Is a flow allowed, and by which policy and rule (or which policies isolate the pod)?
    Explain(ExplainArgs),
}

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Identity number → namespace and labels, and the pods that have it.
    List(StatusArgs),
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Frontends with their backends, flags and state, as the service maps hold them.
    List(StatusArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// Source: NS/POD, or an IPv4 address (a pod's address is that pod).
    #[arg(long)]
    pub from: String,
    /// Destination pod and port (after service translation): NS/POD:PORT[/PROTO], protocol TCP by default.
    #[arg(long)]
    pub to: String,
    /// Explain offline from these Kubernetes manifests (file or directory) instead of asking the agent.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::Args, Debug, Clone)]
pub struct FlowsArgs {
    /// Keep printing new records as they arrive (polls the agent every 200 ms).
    #[arg(short, long)]
    pub follow: bool,
    /// Only records after this sequence number (`seq` in `-o json`).
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Only the last N records (before following).
    #[arg(long)]
    pub last: Option<usize>,
    #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// `json`: one JSON record a line.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Name of the Node object this agent serves (in a DaemonSet: from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Standalone mode: read Kubernetes objects from this YAML file or directory instead of an API server.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig of the API server to watch; default: the in-cluster service account, else
    /// `KUBECONFIG` or `~/.kube/config`. Not together with `--manifests`.
    #[arg(long, conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Directory on the BPF filesystem where maps are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/strait")]
    pub bpffs_root: PathBuf,
    /// Refuse to start unless /sys/fs/bpf is already a BPF filesystem, instead of mounting one. In a
    /// container without Bidirectional mount propagation (which Kubernetes grants only to privileged
    /// containers) a bpffs the agent mounted would die with the container, and with it every pin that
    /// makes restarts hitless.
    #[arg(long)]
    pub require_host_bpffs: bool,
    /// cgroup v2 directory whose sockets the socket-level hooks will serve (never the machine's root by
    /// default in tests; in a DaemonSet, the host's cgroup2 root).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Node devices for the XDP program; default: the interfaces that carry the Node's addresses.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// XDP attach mode on the node devices: `auto` (native where the driver has it, else generic),
    /// `native`, or `generic`.
    #[arg(long, value_enum, default_value_t = crate::datapath::attach::XdpModeChoice::Auto)]
    pub xdp_mode: crate::datapath::attach::XdpModeChoice,
    /// What happens to an open connection when a policy no longer allows it: `revoke` drops its next
    /// packet (every forward packet is judged against the current policy); `keep` lets a connection
    /// once allowed run to its end.
    #[arg(long, value_enum, default_value_t = PolicyEstablished::Revoke)]
    pub policy_established: PolicyEstablished,
    /// Address of the admin endpoint (/status, /healthz).
    #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// kube-proxy's health endpoint (/healthz, /livez, /readyz), where load balancers already probe.
    #[arg(long, default_value = crate::healthz::DEFAULT_ADDR)]
    pub healthz_addr: SocketAddr,
    /// Entries of each Service's Maglev table for traffic from outside the node (a prime, ≥ 100 per
    /// backend for an even spread; the same on every node, or nodes pick different backends).
    #[arg(long, default_value_t = crate::lb::maglev::TableSize::default())]
    pub maglev_table_size: crate::lb::maglev::TableSize,
    /// How a NodePort / externalIP / LoadBalancer connection (externalTrafficPolicy Cluster) reaches a
    /// backend on another node: `snat` rewrites the client's address to this node's, so the answer comes
    /// back through here; `dsr` keeps the client's address and carries the frontend in an IPv4 option, so
    /// the backend's node answers the client directly (every node must run a strait datapath).
    #[arg(long, value_enum, default_value_t = NodePortMode::Snat)]
    pub nodeport_mode: NodePortMode,
}

#[derive(Subcommand)]
pub enum BackendCommand {
    List(PinnedArgs),
}

#[derive(Subcommand)]
pub enum CtCommand {
    List {
        #[command(flatten)]
        args: PinnedArgs,
        /// Only the number of entries.
        #[arg(long)]
        count: bool,
    },
}

/// Commands that read the pinned maps directly (they work while the agent is down).
#[derive(clap::Args, Debug, Clone)]
pub struct PinnedArgs {
    /// The pin directory the agent runs with.
    #[arg(long, default_value = "/sys/fs/bpf/strait")]
    pub bpffs_root: PathBuf,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LogLevelArgs {
    /// The new filter; without it, the current one is printed.
    pub level: Option<String>,
    /// Admin endpoint of the agent to ask.
    #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CleanupArgs {
    /// The pin directory the agent ran with.
    #[arg(long, default_value = "/sys/fs/bpf/strait")]
    pub bpffs_root: PathBuf,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Admin endpoint of the agent to ask.
    #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyEstablished {
    Revoke,
    Keep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NodePortMode {
    Snat,
    Dsr,
}

impl NodePortMode {
    /// The mode a datapath config flag word selects.
    pub fn of_flags(flags: u32) -> Self {
        if flags & common::config::config_flags::NODEPORT_DSR != 0 {
            Self::Dsr
        } else {
            Self::Snat
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Snat => "snat",
            Self::Dsr => "dsr",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => crate::daemon::run(args),
        Command::Status(args) => crate::status::print(&args),
        Command::Cleanup(args) => crate::cleanup::run(&args),
        Command::LogLevel(args) => log_level(&args),
        Command::Backend(BackendCommand::List(args)) => crate::pinned_view::print_backends(&args),
        Command::Ct(CtCommand::List { args, count }) => crate::pinned_view::print_ct(&args, count),
        Command::Flows(args) => crate::flows::print(&args),
        Command::Policy(PolicyCommand::List(args)) => crate::policy::view::print_policy_list(&args),
        Command::Policy(PolicyCommand::Explain(args)) => crate::policy::view::print_explain(&args),
        Command::Identity(IdentityCommand::List(args)) => crate::policy::view::print_identity_list(&args),
        Command::Service(ServiceCommand::List(args)) => {
            let view: crate::status::ServicesView = crate::status::get_json(args.admin_addr, "/services")?;
            write_stdout(&match args.output {
                Output::Json => serde_json::to_string_pretty(&view)? + "\n",
                Output::Table => crate::status::render_services(&view),
            })
        }
    }
}

fn log_level(args: &LogLevelArgs) -> Result<()> {
    let Some(level) = &args.level else {
        return write_stdout(&crate::status::get_text(args.admin_addr, "/loglevel")?);
    };
    // Checked here too, so a typo is answered before anything is sent.
    crate::logging::parse(level)?;
    let url = format!("http://{}/loglevel", args.admin_addr);
    let mut resp = ureq::put(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .send(level.as_bytes())
        .map_err(|e| anyhow::anyhow!("asking the agent at {url} (is `proxy-agent run` running?): {e}"))?;
    let body = resp.body_mut().read_to_string()?;
    if !resp.status().is_success() {
        anyhow::bail!("{url}: {}: {}", resp.status(), body.trim());
    }
    write_stdout(&body)
}

/// Writes command output; a closed pipe (`status | head`) ends the command quietly instead of panicking.
pub fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, NodePortMode};

    fn run_args(extra: &[&str]) -> Result<super::RunArgs, clap::Error> {
        let mut argv = vec!["proxy-agent", "run", "--node", "n1"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(args),
            _ => unreachable!("parsed `run`"),
        }
    }

    #[test]
    fn nodeport_mode_defaults_to_snat_and_takes_dsr() {
        assert_eq!(run_args(&[]).unwrap().nodeport_mode, NodePortMode::Snat);
        let dsr = run_args(&["--nodeport-mode", "dsr"]).unwrap().nodeport_mode;
        assert_eq!(dsr, NodePortMode::Dsr);
        assert_eq!(
            NodePortMode::of_flags(common::config::config_flags::NODEPORT_DSR),
            dsr
        );
        assert_eq!(
            NodePortMode::of_flags(common::config::config_flags::KEEP_ESTABLISHED),
            NodePortMode::Snat
        );
    }

    #[test]
    fn a_bad_nodeport_mode_names_the_flag_and_the_choices() {
        let err = run_args(&["--nodeport-mode", "tunnel"]).expect_err("rejected");
        let text = err.to_string();
        assert!(
            text.contains("'tunnel'") && text.contains("--nodeport-mode"),
            "{text}"
        );
        assert!(text.contains("snat") && text.contains("dsr"), "{text}");
    }
}
