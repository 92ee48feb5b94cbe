//! Upstream kube-proxy instead of our agent on chosen nodes (`lab up --control-plane real --proxy
//! [NODE=]kube-proxy-iptables|kube-proxy-nftables`), so one lab compares both datapaths. Started like
//! the agent: detached, in the node's netns and its `host` cgroup, with its own kubeconfig
//! (ServiceAccount kube-system/kube-proxy, ClusterRole system:node-proxier).

use std::{
    ffi::OsString,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    netns, process,
    state::{ControlPlaneState, NodeState, Paths, State},
};

/// kube-proxy's health endpoint, inside the node's netns only.
const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";
/// Its first full sync of the rules; the apiserver is up by then.
const READY: Duration = Duration::from_secs(60);

pub fn log_name(node_dir: &str) -> String {
    format!("kube-proxy-{node_dir}")
}

fn argv(cp: &ControlPlaneState, n: &NodeState, mode: &str) -> Vec<OsString> {
    vec![
        cp.kube_proxy_bin.clone().into(),
        format!("--kubeconfig={}", cp.kube_proxy_kubeconfig.display()).into(),
        // kube-proxy finds its Node by this name, to learn the node IPs; the lab registered it.
        format!("--hostname-override={}", n.name).into(),
        format!("--proxy-mode={mode}").into(),
        // nf_conntrack_max is read-only outside the root netns: 0 leaves it alone (kube-proxy
        // exits otherwise). The TCP timeouts likewise: 0 keeps the netns' values.
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        format!("--healthz-bind-address={HEALTHZ}").into(),
        format!("--metrics-bind-address={METRICS}").into(),
    ]
}

/// Starts kube-proxy on every node whose proxy is one of its modes and waits until each reports
/// healthy (its rules are written); fails naming the node and the log otherwise.
pub fn start_all(paths: &Paths, state: &mut State) -> Result<()> {
    let cp = state
        .control_plane
        .clone()
        .context("kube-proxy needs --control-plane real")?;
    for i in 0..state.nodes.len() {
        let n = &state.nodes[i];
        let Some(mode) = n.proxy.kube_proxy_mode() else {
            continue;
        };
        let dir = super::layout::node_dir(&n.name);
        let mut child = spawn(paths, &cp, n, mode)?;
        state.nodes[i].kube_proxy_pid = Some(child.id() as i32);
        state.save(paths)?;
        let n = &state.nodes[i];
        wait_healthy(paths, n, &dir, &mut child)?;
        eprintln!("kube-proxy ({mode}) runs on node {} (pid {})", n.name, child.id());
    }
    Ok(())
}

/// Starts kube-proxy in `mode` on node `n`, detached; returns at once (its rules come later).
pub(super) fn spawn(
    paths: &Paths,
    cp: &ControlPlaneState,
    n: &NodeState,
    mode: &str,
) -> Result<std::process::Child> {
    // A real node's default route lets its own sockets' packets to a ClusterIP reach
    // kube-proxy's OUTPUT DNAT (routing comes first, and fails without a route); lab nodes
    // have no default route, so the service range gets one. Our agent needs none: its socket
    // hooks rewrite the address at connect.
    netns::ip_batch(
        &n.netns,
        &[format!("route replace {} dev eth0", super::cplane::SERVICE_CIDR)],
    )?;
    let dir = super::layout::node_dir(&n.name);
    process::spawn_detached(paths, &log_name(&dir), &n.netns, &n.cgroup, &argv(cp, n, mode))
}

fn wait_healthy(paths: &Paths, n: &NodeState, dir: &str, child: &mut std::process::Child) -> Result<()> {
    let deadline = Instant::now() + READY;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let log = paths.log(&log_name(dir));
            bail!(
                "kube-proxy on node {} exited ({status}); its log {} ends:\n    {}",
                n.name,
                log.display(),
                process::log_tail(&log, 15)
            );
        }
        // /healthz says 200 from the start, before kube-proxy has seen a Service; its first
        // rules sync waits for the Service and EndpointSlice informers, so a sync timestamp in
        // its metrics means every Service of the lab is in the rules.
        match netns::in_netns(&n.netns, || {
            let health = get(HEALTHZ.parse()?, "/healthz")?;
            let metrics = get(METRICS.parse()?, "/metrics")?;
            Ok((health, metrics))
        }) {
            Ok((health, metrics))
                if health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200") =>
            {
                if synced(&metrics) {
                    return Ok(());
                }
                last = "healthy, but no rules sync in its metrics yet".into();
            }
            Ok((health, _)) => last = health.lines().next().unwrap_or_default().to_string(),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!(
        "kube-proxy on node {} not healthy within {READY:?} (last answer: {last}); log {}",
        n.name,
        paths.log(&log_name(dir)).display()
    )
}

/// Whether kube-proxy's metrics show a completed rules sync (`…_last_timestamp_seconds` above 0).
fn synced(metrics: &str) -> bool {
    metrics
        .lines()
        .filter(|l| l.starts_with("kubeproxy_sync_proxy_rules_last_timestamp_seconds"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .any(|t| t > 0.0)
}

/// One plain-HTTP GET: the whole response, status line first.
fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading from {addr}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sync_timestamp_means_synced() {
        let before = "# HELP x\nkubeproxy_sync_proxy_rules_last_timestamp_seconds 0\n";
        let after = "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7960944e+09\n";
        assert!(!super::synced(before));
        assert!(super::synced(after));
        assert!(!super::synced(
            "kubeproxy_sync_proxy_rules_duration_seconds_count 3\n"
        ));
    }
}
