//! `cargo xtask k8s`: upstream Kubernetes control-plane binaries built from Go modules, and a real
//! control plane (etcd, kube-apiserver, kube-controller-manager) started in a network namespace.
//!
//! Module map: `gomod` reads upstream `go.mod` files and writes the wrapper modules, `gocmd` runs
//! the `go` command with the cache's settings, `build` puts the steps together into the cache,
//! `pki` makes keys, certificates, the token file and the kubeconfig, `kubectl` picks a kubectl,
//! `proc` supervises one child process, `apiserver` starts and stops etcd, kube-apiserver and
//! kube-controller-manager, `smoke` is the end-to-end check in a throwaway netns.

pub(crate) mod apiserver;
pub(crate) mod build;
mod gocmd;
mod gomod;
pub(crate) mod kubectl;
pub(crate) mod pki;
mod proc;
mod smoke;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

/// The Kubernetes release built by default. Pinned rather than "newest v1.34.x on the proxy" so the
/// same checkout always builds the same binaries; `--k8s-version` (or STRAIT_K8S_VERSION) picks another.
pub const KUBERNETES_VERSION: &str = "v1.34.4";

#[derive(Debug, Args)]
pub struct K8sArgs {
    /// Where built binaries and the Go caches used to build them live, outside the repository.
    #[arg(long, global = true, env = "STRAIT_K8S_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// The k8s.io/kubernetes module version (v1.X.Y); etcd follows what that release pins.
    #[arg(long = "k8s-version", global = true, env = "STRAIT_K8S_VERSION", default_value = KUBERNETES_VERSION)]
    pub version: String,
    #[command(subcommand)]
    pub command: K8sCommand,
}

#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Build kube-apiserver, kube-controller-manager, kube-proxy and etcd into the cache (reused when
    /// already built with the same versions and Go).
    Build(build::BuildArgs),
    /// Build if needed, then start etcd, kube-apiserver and kube-controller-manager in a fresh netns,
    /// check them with kubectl, and remove everything again.
    Smoke(smoke::SmokeArgs),
}

pub fn run(args: K8sArgs) -> Result<()> {
    let root = match args.cache_dir {
        Some(dir) => dir,
        None => default_cache_root()?,
    };
    match args.command {
        K8sCommand::Build(a) => build::command(&root, &args.version, &a).map(|_| ()),
        K8sCommand::Smoke(a) => smoke::command(&root, &args.version, &a),
    }
}

/// `$XDG_CACHE_HOME/strait/k8s`, else `~/.cache/strait/k8s`.
pub(crate) fn default_cache_root() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?)
            .join(".cache"),
    };
    Ok(base.join("strait").join("k8s"))
}
