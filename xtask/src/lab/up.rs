//! `lab up FILE`: validate everything first, then build; a failure midway removes what was built.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{
    agents, api, cgroup, cplane, down, external, kubeproxy, layout, manifests, netns, plan, pods, spec,
    state::{Paths, Proxy, State},
    topology,
};
use crate::k8s::{self, build::Built};

/// Where the nodes read the cluster from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlPlane {
    /// The lab writes manifests/objects.yaml; the agents run in standalone mode.
    #[default]
    Manifests,
    /// etcd, kube-apiserver and kube-controller-manager in netns strait-<lab>-cp; objects go
    /// through the API, the agents watch it (needs `cargo xtask k8s build`).
    Real,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Multi-document YAML of Node, Namespace, Pod, Service, EndpointSlice, NetworkPolicy objects.
    pub file: PathBuf,
    /// Agent binary (default: proxy-agent next to xtask, built first when run through cargo).
    #[arg(long, conflicts_with = "no_agent")]
    pub agent_bin: Option<PathBuf>,
    /// Build the lab without agents (plain routing between pods).
    #[arg(long)]
    pub no_agent: bool,
    /// An extra argument for every node's agent (repeat for more), e.g. `--agent-arg=--nodeport-mode=dsr`.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// A client address for the external client, besides those of the file's ExternalClient
    /// (repeat for more): `--from external:IP` sends from it.
    #[arg(long = "external-address", value_name = "IP")]
    pub external_addresses: Vec<String>,
    /// `manifests` (default) or `real`: a real etcd + kube-apiserver + kube-controller-manager.
    #[arg(long, value_enum, env = "STRAIT_LAB_CONTROL_PLANE", default_value_t = ControlPlane::Manifests)]
    pub control_plane: ControlPlane,
    /// What serves Services: `MODE` for every node or `NODE=MODE` for one (repeat); MODE is
    /// `strait` (default), `kube-proxy-iptables` or `kube-proxy-nftables` (real control plane only).
    #[arg(long = "proxy", value_name = "[NODE=]MODE")]
    pub proxies: Vec<String>,
    /// kubectl for the real control plane (default: one within a minor version of the apiserver).
    #[arg(long, env = "STRAIT_KUBECTL")]
    pub kubectl: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn command(paths: &Paths, args: UpArgs) -> Result<()> {
    let leftovers = netns::list(&plan::prefix(&paths.lab));
    if paths.dir.exists() || !leftovers.is_empty() {
        bail!(
            "lab {:?} already exists (or was left over): run `lab down --name {}` first",
            paths.lab,
            paths.lab
        );
    }
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let mut objects = spec::parse(&text).with_context(|| format!("{} is refused", args.file.display()))?;
    add_external_addresses(&mut objects, &args.external_addresses);
    let cluster = spec::validate(objects)?;
    let mut state = layout::layout(paths, &cluster, None)?;
    set_proxies(&mut state, &args.proxies, args.control_plane)?;
    state.agent_args = args.agent_args.clone();
    let built = match args.control_plane {
        ControlPlane::Manifests => None,
        ControlPlane::Real => {
            let (built, kubectl) = k8s_binaries(args.kubectl.clone())?;
            state.control_plane = Some(cplane::plan(paths, &state, &built, kubectl)?);
            Some(built)
        }
    };
    // Nodes given to kube-proxy need no agent; with none left, none is built or resolved.
    let agent_bin = if args.no_agent || state.nodes.iter().all(|n| n.proxy != Proxy::Strait) {
        None
    } else {
        Some(agents::resolve_bin(args.agent_bin)?)
    };

    eprintln!(
        "building lab {}: {} nodes, {} pods, node subnet {}",
        paths.lab,
        state.nodes.len(),
        state.pods.len(),
        state.subnet
    );
    if let Err(e) = build(paths, &mut state, &cluster, agent_bin.as_deref(), built.as_ref()) {
        eprintln!("lab up failed, removing what was built");
        if let Err(e2) = down::teardown(paths) {
            eprintln!("  teardown also failed: {e2:#}");
        }
        return Err(e.context(format!("lab {} was not built", paths.lab)));
    }
    super::output(args.json, &human(&state), &state)
}

/// `--external-address` joins the file's ExternalClient (one is made when the file has none), so the
/// addresses are validated with the rest and kept by later `apply`s.
fn add_external_addresses(objects: &mut Vec<spec::Object>, addresses: &[String]) {
    if addresses.is_empty() {
        return;
    }
    let found = objects.iter_mut().find_map(|o| match o {
        spec::Object::ExternalClient(e) => Some(e),
        _ => None,
    });
    match found {
        Some(e) => e.spec.addresses.extend(addresses.iter().cloned()),
        None => {
            let mut e = external::ExternalClient::with_addresses(&[]);
            e.spec.addresses = addresses.to_vec();
            objects.push(spec::Object::ExternalClient(Box::new(e)));
        }
    }
}

/// `--proxy MODE` / `--proxy NODE=MODE`: kube-proxy needs the real control plane to read from.
fn set_proxies(state: &mut State, given: &[String], cp: ControlPlane) -> Result<()> {
    use clap::ValueEnum;
    for g in given {
        let (node, mode) = match g.split_once('=') {
            Some((n, m)) => (Some(n), m),
            None => (None, g.as_str()),
        };
        let proxy = Proxy::from_str(mode, false).map_err(|_| {
            anyhow::anyhow!("--proxy {g}: {mode:?} is not strait, kube-proxy-iptables or kube-proxy-nftables")
        })?;
        if proxy != Proxy::Strait && cp != ControlPlane::Real {
            bail!("--proxy {g}: kube-proxy reads an apiserver; add --control-plane real");
        }
        match node {
            Some(name) => {
                let n = state
                    .nodes
                    .iter_mut()
                    .find(|n| n.name == name)
                    .with_context(|| format!("--proxy {g}: no Node {name} in the file"))?;
                n.proxy = proxy;
            }
            None => state.nodes.iter_mut().for_each(|n| n.proxy = proxy),
        }
    }
    Ok(())
}

/// The cached Kubernetes build (never built here: a cold build takes 12 minutes) and a kubectl.
fn k8s_binaries(kubectl: Option<PathBuf>) -> Result<(Built, PathBuf)> {
    let root = match std::env::var_os("STRAIT_K8S_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => k8s::default_cache_root()?,
    };
    let version = std::env::var("STRAIT_K8S_VERSION").unwrap_or_else(|_| k8s::KUBERNETES_VERSION.into());
    let built = k8s::build::lookup(&root, &version)?.with_context(|| {
        format!(
            "--control-plane real: no cached build of Kubernetes {version} in {} (run `cargo xtask k8s build`)",
            root.display()
        )
    })?;
    let kubectl = match kubectl {
        Some(k) => k,
        None => k8s::kubectl::find(&version)?,
    };
    Ok((built, kubectl))
}

fn build(
    paths: &Paths,
    state: &mut State,
    cluster: &spec::Cluster,
    agent_bin: Option<&std::path::Path>,
    built: Option<&Built>,
) -> Result<()> {
    std::fs::create_dir_all(&paths.dir).with_context(|| format!("creating {}", paths.dir.display()))?;
    // Saved before anything runs, so `down` finds pids and names even if this process dies midway.
    state.save(paths)?;
    agents::ensure_bpffs()?;
    topology::build(state)?;
    for n in &state.nodes {
        cgroup::create(&n.cgroup)?;
    }
    if let Some(built) = built {
        cplane::start_all(paths, state, built)?;
        let cp = state.control_plane.clone().expect("planned with the build");
        api::bootstrap(&cp)?;
        api::register_nodes(&cp, &cluster.objects)?;
    }
    manifests::write_user_objects(paths, &cluster.objects)?;
    if state.control_plane.is_none() {
        manifests::write(paths, &cluster.objects)?;
    }
    let all: Vec<String> = state.pods.iter().map(|p| p.name.clone()).collect();
    pods::start_all(paths, state, &all)?;
    state.save(paths)?;
    if let Some(cp) = state.control_plane.clone() {
        api::apply(&cp, state, &cluster.objects, &[])?;
        api::wait_endpoint_slices(&cp, &cluster.objects)?;
        kubeproxy::start_all(paths, state)?;
    }
    if let Some(bin) = agent_bin {
        agents::start_all(paths, state, bin)?;
        state.save(paths)?;
    }
    Ok(())
}

pub fn human(state: &State) -> String {
    let mut s = format!(
        "lab {} is up (state in {})\n",
        state.name,
        state.state_dir.display()
    );
    s.push_str(&format!("  segment {} ({})\n", state.segment_netns, state.subnet));
    if let Some(cp) = &state.control_plane {
        s.push_str(&format!(
            "  control plane {} {} (kubeconfig {})\n",
            cp.server,
            cp.netns,
            cp.kubeconfig.display()
        ));
    }
    for n in &state.nodes {
        let agent = match (n.agent_pid, n.kube_proxy_pid) {
            (Some(p), _) => format!("agent pid {p}"),
            (None, Some(p)) => format!("kube-proxy ({:?}) pid {p}", n.proxy),
            (None, None) => "no agent".into(),
        };
        s.push_str(&format!(
            "  node {:<12} {:<15} {}  {agent}\n",
            n.name, n.ip, n.netns
        ));
    }
    for p in &state.pods {
        s.push_str(&format!(
            "  pod  {:<20} {:<15} on {:<10} {} ({})\n",
            p.name, p.ip, p.node, p.netns, p.host_veth
        ));
    }
    s.push_str(&format!(
        "  external {} {}{}\n",
        state.external.ip,
        state.external.netns,
        if state.external.addresses.is_empty() {
            String::new()
        } else {
            format!(
                " (client addresses {})",
                state
                    .external
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_per_node_or_for_all_and_only_with_the_real_control_plane() {
        let file = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
                    status: {addresses: [{type: InternalIP, address: 10.0.0.10}]}\n---\n\
                    apiVersion: v1\nkind: Node\nmetadata: {name: n2}\n\
                    status: {addresses: [{type: InternalIP, address: 10.0.0.11}]}\n";
        let cluster = spec::validate(spec::parse(file).unwrap()).unwrap();
        let mut state = layout::layout(&Paths::new("t"), &cluster, None).unwrap();
        set_proxies(
            &mut state,
            &["kube-proxy-nftables".into(), "n1=kube-proxy-iptables".into()],
            ControlPlane::Real,
        )
        .unwrap();
        assert_eq!(state.nodes[0].proxy, Proxy::KubeProxyIptables);
        assert_eq!(state.nodes[1].proxy, Proxy::KubeProxyNftables);
        let e = set_proxies(
            &mut state,
            &["n1=kube-proxy-iptables".into()],
            ControlPlane::Manifests,
        );
        assert!(format!("{:#}", e.unwrap_err()).contains("add --control-plane real"));
        let e = set_proxies(&mut state, &["n9=strait".into()], ControlPlane::Real);
        assert!(format!("{:#}", e.unwrap_err()).contains("no Node n9"));
        let e = set_proxies(&mut state, &["ipvs".into()], ControlPlane::Real);
        assert!(format!("{:#}", e.unwrap_err()).contains("\"ipvs\" is not"));
    }

    #[test]
    fn command_line_addresses_join_the_file_or_make_an_external_client() {
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
                    status: {addresses: [{type: InternalIP, address: 10.0.0.10}]}\n";
        let mut objects = spec::parse(node).unwrap();
        add_external_addresses(&mut objects, &["203.0.113.9".into()]);
        let c = spec::validate(objects).unwrap();
        assert_eq!(
            c.external_addresses,
            vec!["203.0.113.9".parse::<std::net::Ipv4Addr>().unwrap()]
        );

        let with = format!(
            "{node}---\napiVersion: lab.strait.dev/v1\nkind: ExternalClient\nmetadata: {{name: external}}\n\
             spec: {{addresses: [203.0.113.2]}}\n"
        );
        let mut objects = spec::parse(&with).unwrap();
        add_external_addresses(&mut objects, &["203.0.113.2".into(), "10.0.0.99".into()]);
        let e = format!("{:#}", spec::validate(objects).unwrap_err());
        assert!(
            e.contains("spec.addresses[1]: 203.0.113.2 is listed twice"),
            "{e}"
        );
        assert!(
            e.contains("spec.addresses[2]: 10.0.0.99 lies in the node subnet"),
            "{e}"
        );
    }
}
