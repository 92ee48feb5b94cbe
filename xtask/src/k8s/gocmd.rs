//! The `go` command as the build runs it: the cache's own module and build caches, no cgo, the
//! machine's toolchain only, and errors that name the module or step that failed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::gomod::GoMod;

pub fn go_version() -> Result<String> {
    let out = Command::new("go")
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("running `go` (building Kubernetes needs Go 1.24 or newer on PATH)")?;
    if !out.status.success() {
        bail!(
            "go env GOVERSION: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One upstream module as `go mod download -json` reports it.
pub struct Downloaded {
    pub gomod: GoMod,
    /// The version's commit time, RFC 3339, from the proxy's `.info`.
    pub time: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DownloadJson {
    error: Option<String>,
    go_mod: Option<PathBuf>,
    info: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InfoJson {
    time: String,
}

/// The `go` command with this cache's module and build caches and the build settings every step
/// shares.
pub struct GoEnv {
    modcache: PathBuf,
    gocache: PathBuf,
}

impl GoEnv {
    pub fn new(root: &Path) -> GoEnv {
        GoEnv {
            modcache: root.join("go/mod"),
            gocache: root.join("go/build"),
        }
    }

    fn cmd(&self, dir: &Path) -> Command {
        let mut c = Command::new("go");
        c.current_dir(dir)
            .env("GOMODCACHE", &self.modcache)
            .env("GOCACHE", &self.gocache)
            .env("CGO_ENABLED", "0")
            // The machine's Go builds it; never fetch another toolchain behind the user's back.
            .env("GOTOOLCHAIN", "local")
            .env("GOWORK", "off")
            .env("GO111MODULE", "on")
            // Writable module files, so removing the cache needs no chmod first; and the user's
            // GOFLAGS must not change what is built.
            .env("GOFLAGS", "-modcacherw")
            .stdin(Stdio::null());
        c
    }

    pub fn download(&self, module: &str, version: &str) -> Result<Downloaded> {
        let what = format!("{module}@{version}");
        std::fs::create_dir_all(&self.modcache)?;
        let out = self
            .cmd(&self.modcache)
            .args(["mod", "download", "-json", &what])
            .output()
            .with_context(|| format!("running go mod download {what}"))?;
        let report: Option<DownloadJson> = serde_json::from_slice(&out.stdout).ok();
        if let Some(err) = report.as_ref().and_then(|r| r.error.as_ref()) {
            bail!("downloading {what}: {err}");
        }
        if !out.status.success() {
            bail!(
                "downloading {what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let report = report.with_context(|| format!("go mod download {what}: unreadable -json output"))?;
        let gomod_path = report
            .go_mod
            .with_context(|| format!("go mod download {what}: no go.mod"))?;
        let text = std::fs::read_to_string(&gomod_path)
            .with_context(|| format!("reading {}", gomod_path.display()))?;
        let gomod = GoMod::parse(&text).with_context(|| format!("{what}: {}", gomod_path.display()))?;
        let info_path = report
            .info
            .with_context(|| format!("go mod download {what}: no .info"))?;
        let info: InfoJson = serde_json::from_slice(&std::fs::read(&info_path)?)
            .with_context(|| format!("reading {}", info_path.display()))?;
        Ok(Downloaded {
            gomod,
            time: info.time,
        })
    }

    pub fn tidy(&self, dir: &Path, what: &str) -> Result<()> {
        run(
            self.cmd(dir).args(["mod", "tidy"]),
            &format!("resolving {what} (go mod tidy in {})", dir.display()),
        )
    }

    /// `go build` of `packages` into `out` (a directory when there are several packages, else the
    /// binary's path).
    pub fn build(&self, dir: &Path, out: &Path, ldflags: &str, packages: &[&str]) -> Result<()> {
        let mut c = self.cmd(dir);
        c.args(["build", "-trimpath", "-ldflags", ldflags, "-o"]);
        if packages.len() > 1 {
            // A trailing slash is what tells go build that -o names a directory.
            c.arg(format!("{}/", out.display()));
        } else {
            c.arg(out);
        }
        c.args(packages);
        run(&mut c, &format!("go build {}", packages.join(" ")))
    }
}

/// Runs a go command with its output passed through, so download and compiler errors read as go
/// wrote them, and names the step that failed.
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("{what}: cannot run go"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
