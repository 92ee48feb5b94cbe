//! `cargo xtask k8s build`: kube-apiserver, kube-controller-manager, kube-proxy and etcd, built from
//! the Go module proxy into `<cache>/<version>/bin`, with `CGO_ENABLED=0 -trimpath`.
//!
//! The Go module and build caches live in `<cache>/go`, not in the user's, so the cache is
//! self-contained and a cold build can be measured by removing one directory.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{
    gocmd::{GoEnv, go_version},
    gomod::{self, GoMod},
};

const KUBERNETES_MODULE: &str = "k8s.io/kubernetes";
const ETCD_SERVER_MODULE: &str = "go.etcd.io/etcd/server/v3";
/// The commands built from Kubernetes, by package; each binary is named after its last element.
const KUBERNETES_COMMANDS: &[&str] = &[
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kube-proxy",
];
pub const BINARIES: &[&str] = &["kube-apiserver", "kube-controller-manager", "kube-proxy", "etcd"];

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Rebuild even when the cache already holds these versions.
    #[arg(long)]
    pub force: bool,
}

/// A version's directory in the cache.
pub struct Built {
    pub dir: PathBuf,
}

impl Built {
    pub fn new(root: &Path, version: &str) -> Built {
        Built {
            dir: root.join(version),
        }
    }
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }
    fn stamp(&self) -> PathBuf {
        self.dir.join("stamp.json")
    }
}

/// What a build was made from; a build is reused only when all of it matches. The timings are a
/// record of how long the build took, not part of the match.
#[derive(Debug, Serialize, Deserialize)]
struct Stamp {
    kubernetes: String,
    etcd: String,
    go: String,
    cgo: bool,
    seconds: Timings,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Timings {
    modules: f64,
    kubernetes: f64,
    etcd: f64,
    total: f64,
}

pub fn command(root: &Path, version: &str, args: &BuildArgs) -> Result<Built> {
    ensure(root, version, args.force)
}

/// The binaries of `version`, built first unless the cache has them from the same Go.
pub fn ensure(root: &Path, version: &str, force: bool) -> Result<Built> {
    gomod::staging_version(version)?;
    let built = Built::new(root, version);
    let go_version = go_version()?;
    if !force && let Some(stamp) = cached(&built, version, &go_version) {
        eprintln!(
            "k8s: cached at {} (kubernetes {}, etcd {}, {})",
            built.dir.join("bin").display(),
            stamp.kubernetes,
            stamp.etcd,
            stamp.go
        );
        return Ok(built);
    }
    let go = GoEnv::new(root);
    let start = Instant::now();
    let mut t = Timings::default();

    eprintln!(
        "k8s: {KUBERNETES_MODULE}@{version} with {go_version}, caches in {}",
        root.join("go").display()
    );
    let k8s = go.download(KUBERNETES_MODULE, version)?;
    let etcd_version = k8s
        .gomod
        .require
        .get(ETCD_SERVER_MODULE)
        .with_context(|| format!("{KUBERNETES_MODULE}@{version} does not require {ETCD_SERVER_MODULE}"))?
        .clone();
    let etcd = go.download(ETCD_SERVER_MODULE, &etcd_version)?;

    let staging = gomod::staging_version(version)?;
    let k8s_src = built.dir.join("src/kubernetes");
    let etcd_src = built.dir.join("src/etcd");
    let k8s_pins = k8s.gomod.local_replacements(|_| staging.clone());
    // etcd releases all of its modules under one version.
    let etcd_pins = etcd.gomod.local_replacements(|_| etcd_version.clone());
    write_wrapper(
        &k8s_src,
        "strait.local/k8s-build",
        &k8s.gomod,
        version,
        &k8s_pins,
        KUBERNETES_COMMANDS,
    )?;
    write_wrapper(
        &etcd_src,
        "strait.local/etcd-build",
        &etcd.gomod,
        &etcd_version,
        &etcd_pins,
        &[ETCD_SERVER_MODULE],
    )?;
    go.tidy(
        &k8s_src,
        &format!("{KUBERNETES_MODULE}@{version} with its staging modules at {staging}"),
    )?;
    go.tidy(&etcd_src, &format!("{ETCD_SERVER_MODULE}@{etcd_version}"))?;
    t.modules = lap(start, "modules resolved and downloaded");

    // Built next to bin/ and moved into place only when everything built, so bin/ never holds a mix.
    let out = built.dir.join("bin.new");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // go build is silent while it works; say what to expect instead.
    eprintln!("k8s: compiling (from empty caches this took 12 minutes on 2 shared cores)");
    let step = Instant::now();
    go.build(
        &k8s_src,
        &out,
        &kubernetes_ldflags(version, &k8s.time)?,
        KUBERNETES_COMMANDS,
    )
    .with_context(|| format!("building {KUBERNETES_MODULE}@{version}"))?;
    t.kubernetes = lap(step, "kube-apiserver, kube-controller-manager, kube-proxy built");
    let step = Instant::now();
    go.build(&etcd_src, &out.join("etcd"), "-s -w", &[ETCD_SERVER_MODULE])
        .with_context(|| format!("building {ETCD_SERVER_MODULE}@{etcd_version}"))?;
    t.etcd = lap(step, "etcd built");

    let bin = built.dir.join("bin");
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::rename(&out, &bin).with_context(|| format!("moving {} to {}", out.display(), bin.display()))?;
    t.total = start.elapsed().as_secs_f64();
    let stamp = Stamp {
        kubernetes: version.to_string(),
        etcd: etcd_version,
        go: go_version,
        cgo: false,
        seconds: t,
    };
    std::fs::write(built.stamp(), serde_json::to_string_pretty(&stamp)? + "\n")?;
    for name in BINARIES {
        let size = std::fs::metadata(built.bin(name)).map(|m| m.len()).unwrap_or(0);
        eprintln!("k8s:   {:<24} {:>6.1} MiB", name, size as f64 / (1024.0 * 1024.0));
    }
    eprintln!(
        "k8s: built kubernetes {} and etcd {} into {} in {:.0} s",
        stamp.kubernetes,
        stamp.etcd,
        bin.display(),
        stamp.seconds.total
    );
    Ok(built)
}

/// The binaries of `version` if the cache has them from this machine's Go, without building.
pub fn lookup(root: &Path, version: &str) -> Result<Option<Built>> {
    let built = Built::new(root, version);
    let go_version = go_version()?;
    Ok(cached(&built, version, &go_version).map(|_| built))
}

fn cached(built: &Built, version: &str, go_version: &str) -> Option<Stamp> {
    let stamp: Stamp = serde_json::from_slice(&std::fs::read(built.stamp()).ok()?).ok()?;
    let complete = BINARIES.iter().all(|b| built.bin(b).is_file());
    (complete && stamp.kubernetes == version && stamp.go == go_version && !stamp.cgo).then_some(stamp)
}

fn lap(since: Instant, what: &str) -> f64 {
    let d: Duration = since.elapsed();
    eprintln!("k8s: {what} ({:.0} s)", d.as_secs_f64());
    d.as_secs_f64()
}

/// Version information Kubernetes' own build stamps in (what `--version`, `/version` and kubectl's
/// version skew check read). The module proxy tells the release's commit time, which stands in for
/// the build date so two builds of one release are identical; it does not tell the commit hash.
fn kubernetes_ldflags(version: &str, commit_time: &str) -> Result<String> {
    let minor = version
        .strip_prefix("v1.")
        .and_then(|r| r.split('.').next())
        .with_context(|| format!("{version:?} is not v1.X.Y"))?;
    let mut flags = vec!["-s".to_string(), "-w".to_string()];
    for pkg in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
        for (var, value) in [
            ("gitVersion", version),
            ("gitMajor", "1"),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("buildDate", commit_time),
        ] {
            flags.push(format!("-X {pkg}.{var}={value}"));
        }
    }
    Ok(flags.join(" "))
}

fn write_wrapper(
    dir: &Path,
    name: &str,
    upstream: &GoMod,
    version: &str,
    pins: &[(String, String)],
    tools: &[&str],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = gomod::wrapper(name, upstream, version, pins, tools);
    // A go.sum from an earlier version would only be pruned by tidy; starting afresh is simpler.
    let _ = std::fs::remove_file(dir.join("go.sum"));
    std::fs::write(dir.join("go.mod"), text).with_context(|| format!("writing {}/go.mod", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldflags_stamp_both_version_packages() {
        let f = kubernetes_ldflags("v1.34.4", "2026-02-10T12:53:36Z").unwrap();
        assert!(f.contains("-X k8s.io/component-base/version.gitVersion=v1.34.4"));
        assert!(f.contains("-X k8s.io/client-go/pkg/version.gitMinor=34"));
        assert!(f.contains("-X k8s.io/component-base/version.buildDate=2026-02-10T12:53:36Z"));
        assert!(kubernetes_ldflags("1.34.4", "t").is_err());
    }
}
