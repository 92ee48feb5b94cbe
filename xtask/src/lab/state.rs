//! What a running lab is made of, kept in `/run/strait/labs/<lab>/state.json`. Every command other than
//! `up` starts from it; `down` also works without it (it finds leftovers by name prefix).
//!
//! State dir layout:
//! ```text
//! /run/strait/labs/<lab>/
//!   state.json             this file: nodes, pods, netns names, veths, pids
//!   objects.user.yaml      the objects as given (up, then merged by apply/delete)
//!   manifests/objects.yaml what the agents read: the objects plus Namespaces and derived
//!                          EndpointSlices (replaced atomically)
//!   logs/<what>.log        one per responder (`pod-<key>`) and agent (`agent-<node>`)
//!   pids/<what>.pid        the same names
//!   ready/<key>            a responder writes it once all its sockets are bound
//!   clients/conn-<label>.{json,sock}  a long-lived connection: its state and control socket
//!   clients/flow-<label>.{json,sock}  a UDP flow: the same
//!   control-plane/         --control-plane real: pki/, etcd/, kubeconfig (admin),
//!                          kubeconfig-agent, kubeconfig-kube-proxy; logs and pids `cp-<name>`,
//!                          kube-proxy's `kube-proxy-<node>`
//! ```

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::spec::PortInfo;

pub const LABS_DIR: &str = "/run/strait/labs";
pub const CGROUP2: &str = "/sys/fs/cgroup/unified";
pub const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Clone)]
pub struct Paths {
    pub lab: String,
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(lab: &str) -> Paths {
        Paths {
            lab: lab.to_string(),
            dir: Path::new(LABS_DIR).join(lab),
        }
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }
    pub fn log(&self, what: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{what}.log"))
    }
    pub fn pid(&self, what: &str) -> PathBuf {
        self.dir.join("pids").join(format!("{what}.pid"))
    }
    pub fn ready(&self, key: &str) -> PathBuf {
        self.dir.join("ready").join(key)
    }
    /// The lab's cgroup v2 subtree: `<lab>/<node>/host` and `<lab>/<node>/pods/<pod key>` under it.
    pub fn cgroup_root(&self) -> PathBuf {
        Path::new(CGROUP2).join(format!("strait-{}", self.lab))
    }
    pub fn node_cgroup(&self, node: &str) -> PathBuf {
        self.cgroup_root().join(node).join("host")
    }
    pub fn pod_cgroup(&self, node: &str, key: &str) -> PathBuf {
        self.cgroup_root().join(node).join("pods").join(key)
    }
    /// Processes of the external client (connections, flows). `_` keeps it apart from node
    /// directories, which never start with one (see `layout::node_dir`).
    pub fn external_cgroup(&self) -> PathBuf {
        self.cgroup_root().join("_external")
    }
    /// The control plane's processes (`lab up --control-plane real`).
    pub fn control_plane_cgroup(&self) -> PathBuf {
        self.cgroup_root().join("_control-plane")
    }
    /// State and control sockets of long-lived connections and flows.
    pub fn clients(&self) -> PathBuf {
        self.dir.join("clients")
    }
    pub fn bpffs_root(&self, node: &str) -> PathBuf {
        Path::new(BPFFS)
            .join("strait")
            .join(format!("{}-{node}", self.lab))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub state_dir: PathBuf,
    pub segment_netns: String,
    /// The node segment, e.g. `10.0.0.0/24`.
    pub subnet: String,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    pub external: ExternalState,
    /// Agent binary when agents run; `None` after `up --no-agent`.
    pub agent_bin: Option<PathBuf>,
    /// `lab up --agent-arg`: extra arguments every node's agent runs with (also after a restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_args: Vec<String>,
    /// `lab up --control-plane real`: the etcd, kube-apiserver and kube-controller-manager the nodes
    /// read; `None`: the agents read `manifests/` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneState>,
}

/// What serves Services on a node: our agent, or upstream kube-proxy (real control plane only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Proxy {
    #[default]
    Strait,
    KubeProxyIptables,
    KubeProxyNftables,
}

impl Proxy {
    /// kube-proxy's `--proxy-mode`, `None` for our agent.
    pub fn kube_proxy_mode(self) -> Option<&'static str> {
        match self {
            Proxy::Strait => None,
            Proxy::KubeProxyIptables => Some("iptables"),
            Proxy::KubeProxyNftables => Some("nftables"),
        }
    }
}

/// The lab's control plane: its own netns on the segment, its processes, its credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlPlaneState {
    pub netns: String,
    /// Its segment address: the apiserver listens and is advertised there.
    pub ip: Ipv4Addr,
    /// Keys, etcd data, kubeconfigs: `<state dir>/control-plane`.
    pub dir: PathBuf,
    pub cgroup: PathBuf,
    pub kubectl: PathBuf,
    /// `https://<ip>:6443`.
    pub server: String,
    /// Admin (system:masters) kubeconfig: `lab kubeconfig`, `lab kubectl`, the lab itself.
    pub kubeconfig: PathBuf,
    /// ServiceAccount kube-system/strait, bound by manifests/rbac.yaml: what the agents use.
    pub agent_kubeconfig: PathBuf,
    /// ServiceAccount kube-system/kube-proxy, bound to system:node-proxier.
    pub kube_proxy_kubeconfig: PathBuf,
    pub kube_proxy_bin: PathBuf,
    /// In start order (etcd, kube-apiserver, kube-controller-manager); stopped in reverse.
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    /// Program and arguments, kept so `lab control-plane start` runs exactly the same again.
    pub argv: Vec<String>,
    pub pid: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub pod_cidr: Option<String>,
    /// Further addresses of the node (its other InternalIP/ExternalIP entries), on eth0 next to `ip`.
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    pub cgroup: PathBuf,
    pub bpffs_root: PathBuf,
    pub agent_pid: Option<i32>,
    /// Our agent (default) or upstream kube-proxy; kube-proxy runs with the real control plane only.
    #[serde(default)]
    pub proxy: Proxy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_proxy_pid: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    /// `namespace/name`
    pub name: String,
    pub namespace: String,
    pub pod: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub host_veth: String,
    /// Short unique key: netns suffix, cgroup, log and pid file name.
    pub key: String,
    pub cgroup: PathBuf,
    pub ports: Vec<PortInfo>,
    pub responder_pid: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalState {
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Service addresses meant for outside clients (spec.externalIPs, spec.loadBalancerIP,
    /// status.loadBalancer.ingress[].ip): the external client routes them to the nodes, as an L3
    /// load balancer in front of the cluster would.
    #[serde(default)]
    pub service_ips: Vec<Ipv4Addr>,
    /// ClusterIPs, routed from outside like `service_ips` (kube-proxy serves them to any source).
    #[serde(default)]
    pub cluster_ips: Vec<Ipv4Addr>,
    /// More client addresses (the lab file's ExternalClient, `lab up --external-address`), /32 each
    /// on eth0 next to `ip`; every node routes them back via `ip`.
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    /// The node that service addresses are routed to unless a client picks another (`--via`).
    #[serde(default)]
    pub default_via: Option<String>,
}

impl State {
    pub fn load(paths: &Paths) -> Result<State> {
        let text = std::fs::read_to_string(paths.state()).with_context(|| {
            format!(
                "lab {:?} is not up (no {}); start it with `lab up FILE`",
                paths.lab,
                paths.state().display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", paths.state().display()))
    }

    pub fn save(&self, paths: &Paths) -> Result<()> {
        write_atomically(&paths.state(), serde_json::to_string_pretty(self)?.as_bytes())
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A pod by `ns/name`, or by bare name when that is unique in the lab.
    pub fn pod(&self, name: &str) -> Result<&PodState> {
        if name.contains('/') {
            return self
                .pods
                .iter()
                .find(|p| p.name == name)
                .with_context(|| format!("no pod {name} in the lab"));
        }
        let found: Vec<&PodState> = self.pods.iter().filter(|p| p.pod == name).collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => anyhow::bail!("no pod named {name} in the lab"),
            many => anyhow::bail!(
                "pod name {name} is ambiguous ({}); say namespace/name",
                many.iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Readers (agents, other commands) never see a half-written file: write a temporary, then rename.
/// The temporary's name does not end in `.yaml`, so an agent reading the directory skips it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .context("path without a file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
