//! `cargo xtask k8s smoke`: the built binaries answer `--version`, then etcd, kube-apiserver and
//! kube-controller-manager run in a fresh netns and kubectl checks what each of them does.
//! Everything started is removed again, also on error; the state directory (logs, keys,
//! kubeconfig) is kept for reading afterwards.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{
    apiserver::{Config, ControlPlane},
    build::{self, Built},
    kubectl,
};
use crate::lab::{netns, process};

pub const NETNS: &str = "strait-k8ssmoke";
/// The apiserver's advertised address, added to the netns' lo: Endpoints refuse 127.0.0.0/8, and not
/// every kernel has dummy links. From TEST-NET-1 (RFC 5737): it cannot clash with a real network, and
/// nothing outside the netns sees it.
const ADVERTISE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// The kubectl to use; by default the first of kubectl.1.<minor>, kubectl.1.<minor±1> and
    /// kubectl (on PATH or beside it) within one minor version of the server.
    #[arg(long, env = "STRAIT_KUBECTL")]
    pub kubectl: Option<PathBuf>,
    /// Skip (successfully, saying so) instead of building when the cache has no build of this
    /// version: for CI runs that cannot afford a cold build.
    #[arg(long)]
    pub if_cached: bool,
}

pub fn command(root: &Path, version: &str, args: &SmokeArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("k8s smoke creates a network namespace: run it as root");
    }
    let started = Instant::now();
    let built = if args.if_cached {
        match build::lookup(root, version)? {
            Some(built) => built,
            None => {
                eprintln!(
                    "k8s smoke: skipped: no cached build of {version} in {} (cargo xtask k8s build makes one)",
                    root.display()
                );
                return Ok(());
            }
        }
    } else {
        build::ensure(root, version, false)?
    };
    check_versions(&built, version)?;
    let kubectl = match &args.kubectl {
        Some(k) => k.clone(),
        None => kubectl::find(version)?,
    };
    if !kubectl.is_file() {
        bail!("kubectl {} does not exist", kubectl.display());
    }
    let state = std::env::temp_dir().join(NETNS);
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;

    // The control plane is stopped (or, when it failed to start, dropped, which stops it) before
    // the netns goes; the guard also removes the netns should anything below return early.
    let ns = Netns::create(NETNS)?;
    let config = Config::loopback(NETNS, state.clone(), ADVERTISE, kubectl);
    let result = ControlPlane::start(&built, config).and_then(|mut cp| {
        let checked = checks(&cp, version);
        let stopped = cp.stop();
        checked.and(stopped)
    });
    let removed = ns.remove();
    eprintln!("k8s smoke: logs, keys and kubeconfig in {}", state.display());
    result?;
    removed?;
    eprintln!("k8s smoke: passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Each binary runs and reports the version it was built as.
fn check_versions(built: &Built, version: &str) -> Result<()> {
    for name in build::BINARIES {
        let bin = built.bin(name);
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("{name} --version failed ({}): {}", out.status, text.trim());
        }
        let first = text.lines().next().unwrap_or("").trim();
        if *name != "etcd" && !first.contains(version) {
            bail!("{name} --version says {first:?}, expected {version}");
        }
        eprintln!("k8s smoke: {name} --version: {first}");
    }
    Ok(())
}

fn checks(cp: &ControlPlane, version: &str) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(&cp.kubectl(&["version", "-o", "json"])?)
        .context("kubectl version -o json: not JSON")?;
    let server = v["serverVersion"]["gitVersion"].as_str().unwrap_or("");
    let client = v["clientVersion"]["gitVersion"].as_str().unwrap_or("");
    if server != version {
        bail!("kubectl version: the server says {server:?}, expected {version}");
    }
    eprintln!("k8s smoke: kubectl version: client {client}, server {server}");

    let ns = cp.kubectl(&["get", "ns", "-o", "name"])?;
    for want in ["namespace/default", "namespace/kube-system"] {
        if !ns.lines().any(|l| l == want) {
            bail!("kubectl get ns: no {want} in {:?}", ns.trim());
        }
    }
    eprintln!(
        "k8s smoke: kubectl get ns: {}",
        ns.split_whitespace().collect::<Vec<_>>().join(" ")
    );

    let ip = cp.kubectl(&["get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"])?;
    if ip != "10.96.0.1" {
        bail!("the kubernetes Service has ClusterIP {ip:?}, expected 10.96.0.1 (first of 10.96.0.0/16)");
    }
    let want = format!("{ADVERTISE}:6443");
    // The EndpointSlice, not the Endpoints object: it is what kube-proxy and the agent read, and
    // kubectl warns that v1 Endpoints is deprecated.
    let slice = "jsonpath={.items[0].endpoints[0].addresses[0]}:{.items[0].ports[0].port}";
    eventually(
        &format!("the kubernetes Service's EndpointSlice at {want}"),
        || {
            let got = cp.kubectl(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=kubernetes",
                "-o",
                slice,
            ])?;
            Ok((got == want).then_some(()).ok_or(got))
        },
    )?;
    eprintln!("k8s smoke: service kubernetes: ClusterIP {ip}, endpoint {want}");

    // RBAC is on and the static token maps to an admin: a namespaced write and a NodePort allocation
    // from the configured range both go through.
    cp.kubectl(&["create", "namespace", "strait-smoke"])?;
    cp.kubectl(&[
        "-n",
        "strait-smoke",
        "create",
        "service",
        "nodeport",
        "probe",
        "--tcp=80:8080",
    ])?;
    let port = cp.kubectl(&[
        "-n",
        "strait-smoke",
        "get",
        "svc",
        "probe",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])?;
    let n: u16 = port
        .trim()
        .parse()
        .with_context(|| format!("nodePort {port:?}"))?;
    if !(30000..=32767).contains(&n) {
        bail!("NodePort {n} outside --service-node-port-range 30000-32767");
    }
    let who = cp.kubectl(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])?;
    eprintln!("k8s smoke: as {who}: created namespace strait-smoke and NodePort service probe (port {n})");

    manifests_validate(cp)?;

    if cp.config.controller_manager {
        // Three controllers of kube-controller-manager, each seen by what it writes.
        let checks: [(&str, &[&str], &str); 3] = [
            (
                "ServiceAccount strait-smoke/default (serviceaccount controller)",
                &["-n", "strait-smoke", "get", "serviceaccounts", "-o", "name"],
                "serviceaccount/default",
            ),
            (
                "ConfigMap strait-smoke/kube-root-ca.crt (root-ca-cert-publisher)",
                &["-n", "strait-smoke", "get", "configmaps", "-o", "name"],
                "configmap/kube-root-ca.crt",
            ),
            (
                "an EndpointSlice for service probe (endpointslice controller)",
                &[
                    "-n",
                    "strait-smoke",
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=probe,endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io",
                    "-o",
                    "jsonpath={.items[*].metadata.labels.kubernetes\\.io/service-name}",
                ],
                "probe",
            ),
        ];
        for (what, args, want) in checks {
            eventually(what, || {
                let got = cp.kubectl(args)?;
                Ok(got.lines().any(|l| l.trim() == want).then_some(()).ok_or(got))
            })?;
            eprintln!("k8s smoke: kube-controller-manager made {what}");
        }
    }
    Ok(())
}

/// The deployment manifests (`manifests/`, through their kustomization) as a user applies them:
/// `--dry-run=client` (what the issue names; kubectl checks the objects against the server's
/// discovery) and `--dry-run=server` (the API server validates every field strictly and runs
/// admission, so a misspelt field or a wrong type fails here rather than in a cluster). Nothing is
/// persisted by either.
fn manifests_validate(cp: &ControlPlane) -> Result<()> {
    let dir = crate::workspace_root().join("manifests");
    let dir = dir.to_str().context("manifests path is not UTF-8")?;
    let want = [
        "serviceaccount/strait",
        "clusterrole.rbac.authorization.k8s.io/strait-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/strait-agent",
        "daemonset.apps/strait-agent",
    ];
    for mode in ["client", "server"] {
        let dry_run = format!("--dry-run={mode}");
        let out = cp.kubectl(&["apply", &dry_run, "--validate=strict", "-k", dir, "-o", "name"])?;
        let got: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let missing: Vec<&str> = want.iter().copied().filter(|w| !got.contains(w)).collect();
        if !missing.is_empty() {
            bail!("kubectl apply {dry_run} -k manifests: {missing:?} not among {got:?}");
        }
        eprintln!(
            "k8s smoke: kubectl apply {dry_run} -k manifests: {}",
            got.join(" ")
        );
    }
    Ok(())
}

/// Retries `check` once a second for up to 30 s: controllers act shortly after the objects they
/// watch appear. `Ok(Err(answer))` means not yet.
fn eventually(what: &str, mut check: impl FnMut() -> Result<std::result::Result<(), String>>) -> Result<()> {
    let mut last = String::new();
    for _ in 0..30 {
        match check() {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(answer)) => last = answer,
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("no {what} after 30 s (last answer: {:?})", last.trim())
}

/// The smoke test's netns: lo up, holding the advertised address too. Anything left
/// from an interrupted run is removed first; removing it stops every process still inside.
struct Netns {
    name: String,
    removed: bool,
}

impl Netns {
    fn create(name: &str) -> Result<Netns> {
        if netns::exists(name) {
            eprintln!("k8s smoke: removing netns {name} left from an earlier run");
            remove_netns(name)?;
        }
        netns::add(name)?;
        let ns = Netns {
            name: name.to_string(),
            removed: false,
        };
        netns::ip_batch(
            name,
            &["link set lo up".into(), format!("addr add {ADVERTISE}/32 dev lo")],
        )?;
        Ok(ns)
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove_netns(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_netns(&self.name);
        }
    }
}

fn remove_netns(name: &str) -> Result<()> {
    let Some(inode) = netns::inode(name) else {
        return Ok(());
    };
    let pids = process::pids_in_netns(&HashSet::from([inode]));
    if !pids.is_empty() {
        eprintln!(
            "k8s smoke: stopping {} process(es) still in netns {name}: {pids:?}",
            pids.len()
        );
        process::terminate(&pids, Duration::from_secs(10));
    }
    netns::delete(name)?;
    let left = process::pids_in_netns(&HashSet::from([inode]));
    if !left.is_empty() {
        bail!("processes {left:?} are still in the removed netns {name}");
    }
    Ok(())
}
