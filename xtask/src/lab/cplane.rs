//! `lab up --control-plane real`: etcd, kube-apiserver and kube-controller-manager of the lab, in
//! their own netns `strait-<lab>-cp` on the node segment (so every node reaches the apiserver at the
//! control plane's segment address), in the cgroup `strait-<lab>/_control-plane`.
//!
//! Unlike `cargo xtask k8s smoke`, whose control plane lives as long as the command, these processes
//! outlive `lab up`: they are started detached (`process::spawn_detached`), their command lines are
//! kept in the state so `lab control-plane start` runs exactly the same again, and `lab down` stops
//! them in reverse order with a grace period each.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    api, netns, plan, process,
    state::{Component, ControlPlaneState, Paths, State},
};
use crate::k8s::{
    apiserver::{self, Config},
    build::Built,
    pki,
};

pub const ETCD: &str = "etcd";
pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// Start order; `lab down` stops them the other way round.
pub const COMPONENTS: [&str; 3] = [ETCD, APISERVER, CONTROLLER_MANAGER];

pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const NODE_PORT_RANGE: &str = "30000-32767";
const SECURE_PORT: u16 = 6443;

/// Only what the lab needs of kube-controller-manager: EndpointSlices for selector Services (the
/// point: the controller, not the lab, writes them), namespace deletion, the `default`
/// ServiceAccount of each namespace (the ServiceAccount admission plugin refuses pods without one)
/// and the garbage collector (EndpointSlices of a deleted Service go through their owner
/// reference). No node lifecycle controller: without a kubelet it would taint every node and evict
/// every pod.
const CONTROLLERS: [&str; 4] = ["endpointslice", "namespace", "serviceaccount", "garbagecollector"];

const ETCD_READY: Duration = Duration::from_secs(60);
const APISERVER_READY: Duration = Duration::from_secs(180);
const CONTROLLER_MANAGER_READY: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);
/// SIGTERM to exit: kube-apiserver drains its watches and etcd closes its database; on two busy
/// cores that can take seconds.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

pub fn netns_name(lab: &str) -> String {
    format!("{}cp", plan::prefix(lab))
}

fn log_name(component: &str) -> String {
    format!("cp-{component}")
}

/// The control plane's segment address: the lowest host address (from .2, leaving .1 to a
/// would-be gateway) that no node, pod or the external client uses.
pub fn pick_ip(state: &State) -> Result<Ipv4Addr> {
    let subnet = plan::Subnet::parse(&state.subnet).context("the lab's node subnet")?;
    let used = |ip: Ipv4Addr| {
        state
            .nodes
            .iter()
            .any(|n| n.ip == ip || n.addresses.contains(&ip))
            || state.pods.iter().any(|p| p.ip == ip)
            || state.external.ip == ip
            || state.external.addresses.contains(&ip)
    };
    let first = u32::from(subnet.net) + 2;
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used(*ip))
        .with_context(|| {
            format!(
                "the node subnet {} has no free address for the control plane",
                subnet.net
            )
        })
}

/// What `start_all` will run, before anything runs: names, addresses, paths and command lines (the
/// state is saved with it first, so `down` finds everything even if `up` dies midway).
pub fn plan(paths: &Paths, state: &State, built: &Built, kubectl: PathBuf) -> Result<ControlPlaneState> {
    let ip = pick_ip(state)?;
    let dir = paths.dir.join("control-plane");
    let server = format!("https://{ip}:{SECURE_PORT}");
    Ok(ControlPlaneState {
        netns: netns_name(&paths.lab),
        ip,
        cgroup: paths.control_plane_cgroup(),
        kubectl,
        server,
        kubeconfig: dir.join("kubeconfig"),
        agent_kubeconfig: dir.join("kubeconfig-agent"),
        kube_proxy_kubeconfig: dir.join("kubeconfig-kube-proxy"),
        kube_proxy_bin: built.bin("kube-proxy"),
        components: Vec::new(),
        dir,
    })
}

fn config(cp: &ControlPlaneState) -> Config {
    Config {
        netns: cp.netns.clone(),
        state_dir: cp.dir.clone(),
        // The apiserver listens on the segment address (what nodes dial); etcd stays on loopback,
        // only the apiserver talks to it.
        bind: cp.ip,
        etcd_bind: Ipv4Addr::LOCALHOST,
        advertise: cp.ip,
        secure_port: SECURE_PORT,
        etcd_client_port: 2379,
        etcd_peer_port: 2380,
        service_cidr: SERVICE_CIDR.into(),
        node_port_range: NODE_PORT_RANGE.into(),
        kubectl: cp.kubectl.clone(),
        controller_manager: true,
        controllers: Some(CONTROLLERS.iter().map(|c| c.to_string()).collect()),
    }
}

/// Keys and kubeconfig, then etcd, kube-apiserver and kube-controller-manager, each waited for
/// before the next starts. Pids go into `state` (saved after each start).
pub fn start_all(paths: &Paths, state: &mut State, built: &Built) -> Result<()> {
    let cp = state.control_plane.as_mut().context("no control plane planned")?;
    let cfg = config(cp);
    std::fs::create_dir_all(&cp.dir).with_context(|| format!("creating {}", cp.dir.display()))?;
    super::cgroup::create(&cp.cgroup)?;
    let pki = pki::create(&cp.dir, &[cp.ip, cfg.kubernetes_service_ip()?])?;
    std::fs::write(&cp.kubeconfig, pki::kubeconfig(&pki, &cp.server))
        .with_context(|| format!("writing {}", cp.kubeconfig.display()))?;
    let argv = |name: &str, args: Vec<String>| {
        let mut v = vec![built.bin(name).display().to_string()];
        v.extend(args);
        v
    };
    cp.components = vec![
        Component {
            name: ETCD.into(),
            argv: argv(ETCD, apiserver::etcd_args(&cfg)),
            pid: None,
        },
        Component {
            name: APISERVER.into(),
            argv: argv(APISERVER, apiserver::apiserver_args(&cfg, &pki)),
            pid: None,
        },
        Component {
            name: CONTROLLER_MANAGER.into(),
            argv: argv(
                CONTROLLER_MANAGER,
                apiserver::controller_manager_args(&cfg, &pki, &cp.kubeconfig),
            ),
            pid: None,
        },
    ];
    state.save(paths)?;
    for name in COMPONENTS {
        start(paths, state, name)?;
        state.save(paths)?;
    }
    Ok(())
}

/// Starts one component from its kept command line and waits until it is ready.
pub fn start(paths: &Paths, state: &mut State, name: &str) -> Result<i32> {
    let cp = state
        .control_plane
        .as_mut()
        .context("this lab has no control plane")?;
    let idx = cp
        .components
        .iter()
        .position(|c| c.name == name)
        .with_context(|| format!("no control-plane component {name}"))?;
    if let Some(pid) = cp.components[idx].pid.filter(|p| process::alive(*p)) {
        bail!("{name} is already running (pid {pid})");
    }
    let argv: Vec<std::ffi::OsString> = cp.components[idx].argv.iter().map(Into::into).collect();
    let mut child = process::spawn_detached(paths, &log_name(name), &cp.netns, &cp.cgroup, &argv)?;
    let pid = child.id() as i32;
    cp.components[idx].pid = Some(pid);
    eprintln!("control plane: started {name} (pid {pid}) in netns {}", cp.netns);
    let cp = cp.clone();
    wait_ready(paths, &cp, name, &mut child)?;
    Ok(pid)
}

fn wait_ready(paths: &Paths, cp: &ControlPlaneState, name: &str, child: &mut Child) -> Result<()> {
    let (what, limit) = match name {
        ETCD => ("etcd healthy on 127.0.0.1:2379", ETCD_READY),
        APISERVER => ("kube-apiserver's /readyz ok", APISERVER_READY),
        _ => (
            "kube-controller-manager's serviceaccount controller (ServiceAccount default/default)",
            CONTROLLER_MANAGER_READY,
        ),
    };
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let log = paths.log(&log_name(name));
            bail!(
                "waiting for {what}: {name} exited ({status}); its log {} ends:\n    {}",
                log.display(),
                process::log_tail(&log, 20)
            );
        }
        match check(cp, name) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(POLL);
    }
    bail!(
        "no {what} after {limit:?} (last error: {}); log {}",
        last.trim(),
        paths.log(&log_name(name)).display()
    )
}

fn check(cp: &ControlPlaneState, name: &str) -> Result<bool> {
    match name {
        ETCD => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 2379));
            let body = netns::in_netns(&cp.netns, move || apiserver::http_get(addr, "/health"))?;
            Ok(body.contains("\"health\":\"true\""))
        }
        APISERVER => Ok(api::kubectl(cp, &["get", "--raw", "/readyz"])?.trim() == "ok"),
        _ => {
            let names = api::kubectl(cp, &["-n", "default", "get", "serviceaccounts", "-o", "name"])?;
            Ok(names.lines().any(|l| l == "serviceaccount/default"))
        }
    }
}

/// SIGTERM, up to `STOP_GRACE` for the process to exit, then SIGKILL. Returns whether it exited on
/// its own (`true` too when it was not running).
pub fn stop(state: &mut State, name: &str) -> Result<bool> {
    let cp = state
        .control_plane
        .as_mut()
        .context("this lab has no control plane")?;
    let c = cp
        .components
        .iter_mut()
        .find(|c| c.name == name)
        .with_context(|| format!("no control-plane component {name}"))?;
    let clean = match c.pid.filter(|p| process::alive(*p)) {
        Some(pid) => stop_pid(pid),
        None => true,
    };
    c.pid = None;
    Ok(clean)
}

/// Used by `stop` and by `lab down` (which may have only pid files).
pub fn stop_pid(pid: i32) -> bool {
    use nix::{
        sys::signal::{Signal, kill},
        unistd::Pid,
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while process::alive(pid) {
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Pid files of the control plane in stop order (last started first), for `lab down`.
pub fn pid_files_in_stop_order(paths: &Paths) -> Vec<(String, PathBuf)> {
    COMPONENTS
        .iter()
        .rev()
        .map(|c| (c.to_string(), paths.pid(&log_name(c))))
        .collect()
}

/// `lab control-plane start|stop|restart`: `apiserver` and `controller-manager` are accepted for
/// the two long names.
pub fn component_name(given: &str) -> Result<&'static str> {
    Ok(match given {
        "etcd" => ETCD,
        "apiserver" | "kube-apiserver" => APISERVER,
        "controller-manager" | "kube-controller-manager" => CONTROLLER_MANAGER,
        other => {
            bail!("no control-plane component {other:?} (etcd, kube-apiserver, kube-controller-manager)")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{layout::layout, spec};

    #[test]
    fn the_control_plane_takes_the_lowest_free_address_from_dot_two() {
        let file = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.2}, {type: InternalIP, address: 10.0.0.3}]}
";
        let state = layout(
            &Paths::new("t"),
            &spec::validate(spec::parse(file).unwrap()).unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(pick_ip(&state).unwrap(), Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(netns_name("t"), "strait-t-cp");
        assert_eq!(component_name("apiserver").unwrap(), APISERVER);
        assert!(component_name("kubelet").is_err());
    }
}
