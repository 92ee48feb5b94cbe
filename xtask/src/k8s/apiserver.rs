//! A real control plane for tests and the lab: etcd, kube-apiserver and (optionally)
//! kube-controller-manager started inside a named netns, with a static admin token, RBAC, a
//! service-account signing key and a self-signed serving certificate, plus a kubeconfig to reach
//! it. Logs and data stay in the state directory.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{build::Built, pki, proc::Supervised};
use crate::lab::netns;

/// How the control plane is laid out; `Config::loopback` is the smoke test's.
#[derive(Debug, Clone)]
pub struct Config {
    pub netns: String,
    /// Logs, etcd data, keys and the kubeconfig.
    pub state_dir: PathBuf,
    /// Where the apiserver listens, and the address in every kubeconfig.
    pub bind: Ipv4Addr,
    /// Where etcd listens: only the apiserver talks to it, so loopback whenever the apiserver is
    /// reachable from elsewhere.
    pub etcd_bind: Ipv4Addr,
    /// What the apiserver publishes as the `kubernetes` Service's endpoint. Endpoints may not be
    /// loopback addresses, so this must be an address of a real interface in the netns.
    pub advertise: Ipv4Addr,
    pub secure_port: u16,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub service_cidr: String,
    pub node_port_range: String,
    pub kubectl: PathBuf,
    /// Also run kube-controller-manager (EndpointSlices for selector Services, ServiceAccounts,
    /// the kube-root-ca.crt ConfigMap, garbage collection).
    pub controller_manager: bool,
    /// kube-controller-manager's `--controllers`; `None`: its defaults (everything on by default).
    pub controllers: Option<Vec<String>>,
}

impl Config {
    pub fn loopback(netns: &str, state_dir: PathBuf, advertise: Ipv4Addr, kubectl: PathBuf) -> Config {
        Config {
            netns: netns.to_string(),
            state_dir,
            bind: Ipv4Addr::LOCALHOST,
            etcd_bind: Ipv4Addr::LOCALHOST,
            advertise,
            secure_port: 6443,
            etcd_client_port: 2379,
            etcd_peer_port: 2380,
            service_cidr: "10.96.0.0/16".into(),
            node_port_range: "30000-32767".into(),
            kubectl,
            controller_manager: true,
            controllers: None,
        }
    }

    pub fn server_url(&self) -> String {
        format!("https://{}:{}", self.bind, self.secure_port)
    }

    pub fn etcd_url(&self) -> String {
        format!("http://{}:{}", self.etcd_bind, self.etcd_client_port)
    }

    /// The first address of the service range: the `kubernetes` Service's ClusterIP.
    pub fn kubernetes_service_ip(&self) -> Result<Ipv4Addr> {
        let base: Ipv4Addr = self
            .service_cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("service CIDR {:?} is not IPv4 a.b.c.d/n", self.service_cidr))?;
        Ok(Ipv4Addr::from(u32::from(base) + 1))
    }
}

/// Bounds on waiting for readiness: on two busy cores the apiserver's post-start hooks (RBAC
/// bootstrap policy among them) take tens of seconds.
const ETCD_READY: Duration = Duration::from_secs(60);
const APISERVER_READY: Duration = Duration::from_secs(180);
const CONTROLLER_MANAGER_READY: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);
const STOP_GRACE: Duration = Duration::from_secs(15);

pub struct ControlPlane {
    pub config: Config,
    pub kubeconfig: PathBuf,
    /// In start order; stopped in reverse (each before what it depends on), also when dropped.
    procs: Vec<Supervised>,
}

impl ControlPlane {
    /// Starts etcd and waits for it to be healthy, the apiserver and waits for `/readyz`, then (if
    /// configured) kube-controller-manager and waits until its service-account controller has acted.
    /// On any error, whatever was started is stopped again (by drop).
    pub fn start(built: &Built, config: Config) -> Result<ControlPlane> {
        let dir = &config.state_dir;
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
        let pki = pki::create(
            dir,
            &[config.bind, config.advertise, config.kubernetes_service_ip()?],
        )?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, pki::kubeconfig(&pki, &config.server_url()))
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let mut cp = ControlPlane {
            config,
            kubeconfig,
            procs: Vec::new(),
        };

        cp.start_one("etcd", &built.bin("etcd"), etcd_args(&cp.config))?;
        let etcd = SocketAddr::from((cp.config.etcd_bind, cp.config.etcd_client_port));
        cp.wait_until(
            &format!("etcd healthy at {}", cp.config.etcd_url()),
            ETCD_READY,
            |cp| {
                let body = netns::in_netns(&cp.config.netns, move || http_get(etcd, "/health"))?;
                Ok(body.contains("\"health\":\"true\"").then_some(()).ok_or(body))
            },
        )?;

        cp.start_one(
            "kube-apiserver",
            &built.bin("kube-apiserver"),
            apiserver_args(&cp.config, &pki),
        )?;
        let what = format!("kube-apiserver ready at {}", cp.config.server_url());
        cp.wait_until(&what, APISERVER_READY, |cp| {
            let body = cp.kubectl(&["get", "--raw", "/readyz"])?;
            Ok((body.trim() == "ok").then_some(()).ok_or(body))
        })?;

        if cp.config.controller_manager {
            let args = controller_manager_args(&cp.config, &pki, &cp.kubeconfig);
            cp.start_one(
                "kube-controller-manager",
                &built.bin("kube-controller-manager"),
                args,
            )?;
            // Its own /healthz says only that it serves; a ServiceAccount it created says that its
            // controllers run against this apiserver.
            let what =
                "kube-controller-manager's service-account controller (ServiceAccount default/default)";
            cp.wait_until(what, CONTROLLER_MANAGER_READY, |cp| {
                let names = cp.kubectl(&["-n", "default", "get", "serviceaccounts", "-o", "name"])?;
                Ok(names
                    .lines()
                    .any(|l| l == "serviceaccount/default")
                    .then_some(())
                    .ok_or(names))
            })?;
        }
        Ok(cp)
    }

    fn start_one(&mut self, name: &str, program: &Path, args: Vec<String>) -> Result<()> {
        let log = self.config.state_dir.join("logs").join(format!("{name}.log"));
        let p = Supervised::start(name, &self.config.netns, program, &args, log)?;
        eprintln!(
            "k8s: started {name} (pid {}) in netns {}",
            p.pid().unwrap_or(0),
            self.config.netns
        );
        self.procs.push(p);
        Ok(())
    }

    /// Polls `check` every POLL until it returns `Ok(Ok(()))`, for at most `limit`. `Ok(Err(text))`
    /// is a "not yet" with the last answer, an `Err` one that failed outright; both are retried, but
    /// a process that exited ends the wait at once, with its log.
    fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&ControlPlane) -> Result<std::result::Result<(), String>>,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            for p in &mut self.procs {
                if let Some(status) = p.exited() {
                    bail!(
                        "waiting for {what}: {} exited ({status}); last lines of {}:\n    {}",
                        p.name,
                        p.log.display(),
                        p.log_tail(20)
                    );
                }
            }
            match check(self) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(answer)) => last = answer,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(POLL);
        }
        let logs = self.config.state_dir.join("logs");
        bail!(
            "no {what} after {limit:?} (last answer: {}); logs in {}",
            last.trim(),
            logs.display()
        )
    }

    /// `kubectl --kubeconfig <ours> ARGS` run inside the netns; stdout on success, an error with
    /// stderr otherwise.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.config.netns])
            .arg(&self.config.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout", "10s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.config.kubectl.display()))?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops every process, last started first. Names any that had to be killed.
    pub fn stop(&mut self) -> Result<()> {
        let mut killed = Vec::new();
        while let Some(mut p) = self.procs.pop() {
            if !p.stop(STOP_GRACE) {
                killed.push(p.name.clone());
            }
        }
        if !killed.is_empty() {
            bail!(
                "did not exit within {STOP_GRACE:?} of SIGTERM and were killed: {}",
                killed.join(", ")
            );
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

pub fn etcd_args(c: &Config) -> Vec<String> {
    let client = c.etcd_url();
    let peer = format!("http://{}:{}", c.etcd_bind, c.etcd_peer_port);
    vec![
        "--name=strait".into(),
        format!("--data-dir={}", c.state_dir.join("etcd").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=strait={peer}"),
        // The data is thrown away with the state directory; fsync only slows a test down.
        "--unsafe-no-fsync".into(),
    ]
}

pub fn apiserver_args(c: &Config, p: &pki::Pki) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        format!("--etcd-servers={}", c.etcd_url()),
        format!("--bind-address={}", c.bind),
        format!("--advertise-address={}", c.advertise),
        format!("--secure-port={}", c.secure_port),
        format!("--tls-cert-file={}", path(&p.serving_cert)),
        format!("--tls-private-key-file={}", path(&p.serving_key)),
        // Without it the apiserver would write self-signed certificates under /var/run/kubernetes.
        format!("--cert-dir={}", path(&c.state_dir.join("pki"))),
        format!("--token-auth-file={}", path(&p.token_file)),
        "--authorization-mode=RBAC".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", path(&p.sa_pub)),
        format!("--service-account-signing-key-file={}", path(&p.sa_key)),
        format!("--service-cluster-ip-range={}", c.service_cidr),
        format!("--service-node-port-range={}", c.node_port_range),
        // With the default (0) an apiserver asked to stop waits for open watches to end by
        // themselves, which a client's watch (the agents', the controller-manager's) does only at
        // its timeout, minutes later; SIGTERM then took more than 15 s. Set, the apiserver ends
        // the watches and waits for them at most this long (measured: it exits within a second).
        "--shutdown-watch-termination-grace-period=5s".into(),
        "--profiling=false".into(),
    ]
}

pub fn controller_manager_args(c: &Config, p: &pki::Pki, kubeconfig: &Path) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    let kubeconfig = path(kubeconfig);
    let controllers = c
        .controllers
        .as_ref()
        .map(|list| format!("--controllers={}", list.join(",")));
    let mut args = vec![
        format!("--kubeconfig={kubeconfig}"),
        // No --authentication/authorization-kubeconfig: they look up a client CA the apiserver here
        // does not have (no --client-ca-file), and nothing calls the controller-manager's own
        // endpoint beyond /healthz, which stays open without them.
        format!("--bind-address={}", c.bind),
        format!("--cert-dir={}", path(&c.state_dir.join("pki/controller-manager"))),
        // One instance: a leader election would only delay the start.
        "--leader-elect=false".into(),
        format!("--service-account-private-key-file={}", path(&p.sa_key)),
        // Published to every namespace as the kube-root-ca.crt ConfigMap, which pods use to trust
        // the apiserver.
        format!("--root-ca-file={}", path(&p.ca_cert)),
        format!("--service-cluster-ip-range={}", c.service_cidr),
        "--profiling=false".into(),
        // The client defaults (20 requests/s, burst 30) make the EndpointSlice controller take
        // about 8 minutes for 10k Services; large clusters raise them the same way, and the
        // benchmarks create that many.
        "--kube-api-qps=500".into(),
        "--kube-api-burst=1000".into(),
        "--concurrent-service-endpoint-syncs=10".into(),
    ];
    args.extend(controllers);
    args
}

/// A plain-HTTP GET (etcd's client port), returning the body. Runs in whatever netns the calling
/// thread is in.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading from {addr}"))?;
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(text.clone(), |(_, body)| body.to_string()))
}
