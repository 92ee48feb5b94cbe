//! A real control plane for tests and the lab: etcd and kube-apiserver started inside a named netns,
//! with a static admin token, RBAC, a service-account signing key and a self-signed serving
//! certificate, plus a kubeconfig to reach it. Logs and data stay in the state directory.

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
    /// Where etcd and the apiserver listen.
    pub bind: Ipv4Addr,
    /// What the apiserver publishes as the `kubernetes` Service's endpoint. Endpoints may not be
    /// loopback addresses, so this must be an address of a real interface in the netns.
    pub advertise: Ipv4Addr,
    pub secure_port: u16,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub service_cidr: String,
    pub node_port_range: String,
    pub kubectl: PathBuf,
}

impl Config {
    pub fn loopback(netns: &str, state_dir: PathBuf, advertise: Ipv4Addr, kubectl: PathBuf) -> Config {
        Config {
            netns: netns.to_string(),
            state_dir,
            bind: Ipv4Addr::LOCALHOST,
            advertise,
            secure_port: 6443,
            etcd_client_port: 2379,
            etcd_peer_port: 2380,
            service_cidr: "10.96.0.0/16".into(),
            node_port_range: "30000-32767".into(),
            kubectl,
        }
    }

    pub fn server_url(&self) -> String {
        format!("https://{}:{}", self.bind, self.secure_port)
    }

    fn etcd_url(&self) -> String {
        format!("http://{}:{}", self.bind, self.etcd_client_port)
    }

    /// The first address of the service range: the `kubernetes` Service's ClusterIP.
    fn kubernetes_service_ip(&self) -> Result<Ipv4Addr> {
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
const POLL: Duration = Duration::from_millis(500);
const STOP_GRACE: Duration = Duration::from_secs(15);

pub struct ControlPlane {
    pub config: Config,
    pub kubeconfig: PathBuf,
    // Dropped in this order: the apiserver before the etcd it writes to.
    apiserver: Option<Supervised>,
    etcd: Option<Supervised>,
}

impl ControlPlane {
    /// Starts etcd, waits for it to be healthy, starts the apiserver and waits for `/readyz`.
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
            apiserver: None,
            etcd: None,
        };

        let etcd = cp.start_one("etcd", &built.bin("etcd"), etcd_args(&cp.config))?;
        cp.etcd = Some(etcd);
        cp.wait_etcd()?;
        let args = apiserver_args(&cp.config, &pki);
        let apiserver = cp.start_one("kube-apiserver", &built.bin("kube-apiserver"), args)?;
        cp.apiserver = Some(apiserver);
        cp.wait_apiserver()?;
        Ok(cp)
    }

    fn start_one(&self, name: &str, program: &Path, args: Vec<String>) -> Result<Supervised> {
        let log = self.config.state_dir.join("logs").join(format!("{name}.log"));
        let p = Supervised::start(name, &self.config.netns, program, &args, log)?;
        eprintln!(
            "k8s: started {name} (pid {}) in netns {}",
            p.pid().unwrap_or(0),
            self.config.netns
        );
        Ok(p)
    }

    fn wait_etcd(&mut self) -> Result<()> {
        let addr = SocketAddr::from((self.config.bind, self.config.etcd_client_port));
        let netns = self.config.netns.clone();
        let deadline = Instant::now() + ETCD_READY;
        let mut last = String::new();
        while Instant::now() < deadline {
            check_running(self.etcd.as_mut())?;
            let ns = netns.clone();
            match netns::in_netns(&netns, move || http_get(addr, "/health").map(|b| (ns, b))) {
                Ok((_, body)) if body.contains("\"health\":\"true\"") => return Ok(()),
                Ok((_, body)) => last = body,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "etcd at {} not healthy after {:?} (last answer: {last}); log {}",
            self.config.etcd_url(),
            ETCD_READY,
            self.etcd
                .as_ref()
                .map(|p| p.log.display().to_string())
                .unwrap_or_default()
        )
    }

    fn wait_apiserver(&mut self) -> Result<()> {
        let deadline = Instant::now() + APISERVER_READY;
        let mut last = String::new();
        while Instant::now() < deadline {
            check_running(self.apiserver.as_mut())?;
            match self.kubectl(&["get", "--raw", "/readyz"]) {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "kube-apiserver at {} not ready after {:?} (last answer: {}); log {}",
            self.config.server_url(),
            APISERVER_READY,
            last.trim(),
            self.apiserver
                .as_ref()
                .map(|p| p.log.display().to_string())
                .unwrap_or_default()
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

    /// Stops the apiserver, then etcd. Names any that had to be killed.
    pub fn stop(&mut self) -> Result<()> {
        let mut killed = Vec::new();
        for p in [self.apiserver.take(), self.etcd.take()].into_iter().flatten() {
            let mut p = p;
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

fn check_running(p: Option<&mut Supervised>) -> Result<()> {
    if let Some(p) = p
        && let Some(status) = p.exited()
    {
        bail!(
            "{} exited ({status}); last lines of {}:\n    {}",
            p.name,
            p.log.display(),
            p.log_tail(20)
        );
    }
    Ok(())
}

fn etcd_args(c: &Config) -> Vec<String> {
    let client = c.etcd_url();
    let peer = format!("http://{}:{}", c.bind, c.etcd_peer_port);
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

fn apiserver_args(c: &Config, p: &pki::Pki) -> Vec<String> {
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
        "--profiling=false".into(),
    ]
}

/// A plain-HTTP GET (etcd's client port), returning the body. Runs in whatever netns the calling
/// thread is in.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
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
