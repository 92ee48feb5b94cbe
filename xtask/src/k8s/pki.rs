//! Credentials for a throwaway control plane, made with the `openssl` command: a CA and the
//! apiserver's serving certificate signed by it, the service-account signing key, a static bearer
//! token for an admin user, and the kubeconfig that uses them.
//!
//! A CA and a separate leaf rather than one self-signed certificate: `openssl req -x509` marks its
//! certificate `CA:TRUE`, and rustls (the agent's kube client) refuses a CA certificate as a
//! server's own (`CaUsedAsEndEntity`); Go's TLS would accept it, so kubectl alone never showed it.

use std::{
    io::Read,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

pub const ADMIN_USER: &str = "strait-admin";

/// Files in a control plane's state directory.
pub struct Pki {
    /// What clients trust (kubeconfig `certificate-authority`, the kube-root-ca.crt ConfigMap).
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub token_file: PathBuf,
    pub token: String,
}

/// Makes everything under `dir/pki`. `ips` go into the serving certificate's subjectAltName: the
/// address clients dial and the `kubernetes` Service's ClusterIP that pods will use.
pub fn create(dir: &Path, ips: &[Ipv4Addr]) -> Result<Pki> {
    let dir = dir.join("pki");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = dir.join("ca.key");
    let p = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        token_file: dir.join("tokens.csv"),
        token: random_hex(32)?,
    };
    let mut san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    san.extend(
        [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ]
        .iter()
        .map(|d| format!("DNS:{d}")),
    );
    // P-256 rather than RSA: key generation is instant and both TLS and service-account tokens
    // (ES256) accept it.
    openssl(
        Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-days",
                "30",
                "-subj",
                "/CN=strait-lab-ca",
            ])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&p.ca_cert),
        "making the control plane's CA",
    )?;
    let csr = dir.join("apiserver.csr");
    openssl(
        Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-subj", "/CN=kube-apiserver"])
            .arg("-keyout")
            .arg(&p.serving_key)
            .arg("-out")
            .arg(&csr),
        "making the apiserver's key and signing request",
    )?;
    // The leaf's extensions come from a file: `openssl x509 -req` does not copy a request's.
    let ext = dir.join("apiserver.ext");
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
            san.join(",")
        ),
    )
    .with_context(|| format!("writing {}", ext.display()))?;
    openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "30", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&p.ca_cert)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-CAcreateserial", "-extfile"])
            .arg(&ext)
            .arg("-out")
            .arg(&p.serving_cert),
        "signing the apiserver serving certificate",
    )?;
    openssl(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-out",
            ])
            .arg(&p.sa_key),
        "making the service-account signing key",
    )?;
    openssl(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&p.sa_key)
            .arg("-out")
            .arg(&p.sa_pub),
        "extracting the service-account public key",
    )?;
    // token,user,uid,"groups": system:masters is bound to cluster-admin by RBAC's bootstrap policy.
    std::fs::write(
        &p.token_file,
        format!("{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n", p.token),
    )
    .with_context(|| format!("writing {}", p.token_file.display()))?;
    Ok(p)
}

/// A kubeconfig for `server` that trusts the CA and sends the admin token.
pub fn kubeconfig(pki: &Pki, server: &str) -> String {
    kubeconfig_for(&pki.ca_cert, server, ADMIN_USER, &pki.token)
}

/// A kubeconfig for `server` that trusts the CA certificate `ca` and sends `token` as `user`.
pub fn kubeconfig_for(ca: &Path, server: &str, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: strait\n  cluster:\n    server: {server}\n    \
certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n\
- name: strait\n  context:\n    cluster: strait\n    user: {user}\ncurrent-context: strait\n",
        ca = ca.display(),
    )
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn openssl(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run openssl (Debian package openssl)"))?;
    if !out.status.success() {
        bail!(
            "{what}: openssl failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
