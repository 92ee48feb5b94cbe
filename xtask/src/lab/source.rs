//! Where lab traffic starts (`--from`): a pod, a node's host network or the external client, with the
//! local address and routing it asks for; and the worker processes that run client code there.
//!
//! Client code runs in a separate process (`xtask lab probe-worker`, `http-worker`) that enters the
//! source's netns and joins its cgroup before opening any socket: the netns alone would do for pods,
//! but a client on a node must be a host process of that node (in its `host` cgroup), or the agent's
//! socket hooks would never see it.

use std::{
    io::Write,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::{
    external,
    sockets::SocketOpts,
    state::{Paths, State},
};

pub const FORMS: &str = "ns/pod, a unique pod name, node/NAME[:IP] or external[:IP]";

#[derive(Debug, Clone)]
pub struct Source {
    /// The source as reports name it: `shop/client-1`, `node/n1:127.0.0.1`, `external:203.0.113.2`.
    pub label: String,
    pub netns: String,
    /// The cgroup client processes join (pods and nodes; the external client has none of its own).
    pub cgroup: Option<PathBuf>,
    pub socket: SocketOpts,
    /// The node service addresses are routed to (external client only).
    pub via: Option<String>,
}

/// `--from SRC` (and `--via NODE` for the external client).
pub fn resolve(state: &State, from: &str, via: Option<&str>) -> Result<Source> {
    let (base, ip) = match from.split_once(':') {
        Some((b, ip)) => (b, Some(ip)),
        None => (from, None),
    };
    let bind = ip
        .map(|t| {
            t.parse::<Ipv4Addr>()
                .with_context(|| format!("--from {from}: {t:?} is not an IPv4 address (forms: {FORMS})"))
        })
        .transpose()?;
    if base.is_empty() {
        bail!("--from {from:?}: expected {FORMS}");
    }
    if base == "external" {
        if let Some(ip) = bind {
            external::check_bind(state, ip)?;
        }
        let via = via.map(str::to_string).or(state.external.default_via.clone());
        let mark = match via.as_deref() {
            Some(node) => Some(external::via_mark(state, node)?),
            None => None,
        };
        return Ok(Source {
            label: from.to_string(),
            netns: state.external.netns.clone(),
            cgroup: None,
            socket: SocketOpts {
                bind,
                source_port: None,
                mark,
            },
            via,
        });
    }
    if let Some(v) = via {
        bail!("--via {v}: only the external client is routed through a node (--from external[:IP])");
    }
    if let Some(name) = base.strip_prefix("node/") {
        let n = state
            .node(name)
            .with_context(|| format!("--from {from}: no node {name} in the lab (forms: {FORMS})"))?;
        if let Some(ip) = bind {
            if ip != n.ip && !n.addresses.contains(&ip) && !ip.is_loopback() {
                let held: Vec<String> = std::iter::once(n.ip)
                    .chain(n.addresses.iter().copied())
                    .map(|a| a.to_string())
                    .chain(["127.0.0.1".to_string()])
                    .collect();
                bail!(
                    "--from {from}: node {name} has no address {ip} (it has {}; further node addresses come \
                     from the Node's status.addresses)",
                    held.join(", ")
                );
            }
        }
        return Ok(Source {
            label: from.to_string(),
            netns: n.netns.clone(),
            cgroup: Some(n.cgroup.clone()),
            socket: SocketOpts {
                bind,
                ..Default::default()
            },
            via: None,
        });
    }
    let p = state
        .pod(base)
        .with_context(|| format!("--from {from}: expected {FORMS}"))?;
    if bind.is_some() {
        bail!(
            "--from {from}: a pod sends from its one address {}; `:IP` is for node/NAME and external",
            p.ip
        );
    }
    Ok(Source {
        label: p.name.clone(),
        netns: p.netns.clone(),
        cgroup: Some(p.cgroup.clone()),
        socket: SocketOpts::default(),
        via: None,
    })
}

/// Runs `xtask lab <worker> --netns N [--cgroup C] ARGS...` with `input` on stdin and returns its
/// stdout; a failed worker is an error carrying its stderr.
pub fn run_worker(
    paths: &Paths,
    source: &Source,
    worker: &str,
    args: &[String],
    input: &[u8],
) -> Result<Vec<u8>> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "--name", &paths.lab, worker, "--netns", &source.netns])
        .args(args);
    if let Some(cg) = &source.cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting a {worker}"))?;
    child.stdin.take().context("worker stdin")?.write_all(input)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{worker} in {} failed: {}",
            source.netns,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{layout::layout, spec, state::Paths};

    const FILE: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.10}, {type: InternalIP, address: 10.0.0.20}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 10.0.0.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: [{name: c}]}
status: {podIP: 10.244.1.2}
---
apiVersion: lab.strait.dev/v1
kind: ExternalClient
metadata: {name: external}
spec: {addresses: [203.0.113.2]}
";

    fn state() -> State {
        let c = spec::validate(spec::parse(FILE).unwrap()).unwrap();
        layout(&Paths::new("t"), &c, None).unwrap()
    }

    fn refused(from: &str, via: Option<&str>) -> String {
        format!("{:#}", resolve(&state(), from, via).unwrap_err())
    }

    #[test]
    fn forms() {
        let s = state();
        let e = resolve(&s, "external", None).unwrap();
        assert_eq!(e.netns, "strait-t-external");
        assert_eq!(e.via.as_deref(), Some("n1"));
        assert_eq!(e.socket.mark, Some(external::MARK_BASE));
        let e = resolve(&s, "external:203.0.113.2", Some("n2")).unwrap();
        assert_eq!(e.socket.bind, Some(Ipv4Addr::new(203, 0, 113, 2)));
        assert_eq!(e.socket.mark, Some(external::MARK_BASE + 1));
        let n = resolve(&s, "node/n1:10.0.0.20", None).unwrap();
        assert_eq!(n.socket.bind, Some(Ipv4Addr::new(10, 0, 0, 20)));
        assert!(n.cgroup.unwrap().ends_with("n1/host"));
        assert!(resolve(&s, "node/n1:127.0.0.1", None).is_ok());
        let p = resolve(&s, "a", None).unwrap();
        assert_eq!((p.label.as_str(), p.socket), ("x/a", SocketOpts::default()));
    }

    #[test]
    fn refusals_say_what_is_accepted() {
        assert!(
            refused("node/n1:10.0.0.11", None)
                .contains("node n1 has no address 10.0.0.11 (it has 10.0.0.10, 10.0.0.20, 127.0.0.1")
        );
        assert!(refused("node/n9", None).contains(FORMS));
        assert!(refused("x/zz", None).contains(FORMS));
        assert!(refused("external:1.2.3", None).contains("not an IPv4 address"));
        assert!(refused("x/a:10.244.1.2", None).contains("`:IP` is for node/NAME and external"));
        assert!(refused("x/a", Some("n2")).contains("only the external client"));
        assert!(refused("external", Some("n7")).contains("--via n7: no such node"));
    }
}
