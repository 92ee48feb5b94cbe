//! The lab as the end-to-end benchmark drives it: `xtask lab --name benche2e …` as child processes
//! (the same commands a person would type, with `--json`), and kubectl inside the control plane's
//! netns for what the bench creates at scale.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::lab::load::LoadReport;

/// The bench's own lab name, so it never collides with a lab someone else runs.
pub const LAB: &str = "benche2e";

/// `STRAIT_BENCH_LAB` names the lab instead (two bench runs side by side each need their own:
/// a run begins by removing a lab of its name).
fn lab_name() -> String {
    std::env::var("STRAIT_BENCH_LAB").unwrap_or_else(|_| LAB.to_string())
}

/// Runs `xtask lab --name LAB ARGS…`, returns its stdout.
pub fn lab(args: &[String]) -> Result<String> {
    let exe = std::env::current_exe().context("finding xtask's own binary")?;
    let out = Command::new(exe)
        .args(["lab", "--name", &lab_name()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running xtask lab")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        bail!(
            "`lab {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// What `lab load` is asked for.
pub struct Load<'a> {
    pub from: &'a str,
    pub to: String,
    pub rate: u32,
    pub workers: u32,
    pub seconds: f64,
    pub timeout_ms: u64,
    pub until_answered_by: Option<&'a str>,
    /// For the external client: the node its service traffic enters through.
    pub via: Option<&'a str>,
}

pub fn load(l: &Load) -> Result<LoadReport> {
    let mut args = strings(&["load", "--json", "--from", l.from, "--to", &l.to]);
    args.extend([
        "--rate".into(),
        l.rate.to_string(),
        "--workers".into(),
        l.workers.to_string(),
        "--seconds".into(),
        l.seconds.to_string(),
        "--timeout-ms".into(),
        l.timeout_ms.to_string(),
    ]);
    if let Some(pod) = l.until_answered_by {
        args.extend(["--until-answered-by".into(), pod.to_string()]);
    }
    if let Some(node) = l.via {
        args.extend(["--via".into(), node.to_string()]);
    }
    let out = lab(&args)?;
    serde_json::from_str(&out).context("parsing `lab load --json`")
}

/// One TCP attempt: the pod that answered, or None.
pub fn probe_once(from: &str, to: &str) -> Result<Option<String>> {
    let out = lab(&strings(&[
        "probe",
        "--json",
        "--from",
        from,
        "--to",
        to,
        "--count",
        "1",
        "--timeout-ms",
        "1000",
    ]))?;
    let v: Value = serde_json::from_str(&out).context("parsing `lab probe --json`")?;
    Ok(v["attempts"][0]["answered_by"].as_str().map(str::to_string))
}

/// kubectl with the lab's admin kubeconfig, run in the control plane's netns (the only place the
/// apiserver's address is reached from outside the nodes).
#[derive(Clone)]
pub struct Kubectl {
    pub netns: String,
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    /// From `lab up --json`.
    pub fn from_up(up: &Value) -> Result<Kubectl> {
        let cp = &up["control_plane"];
        let field = |k: &str| {
            cp[k]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("`lab up --json` has no control_plane.{k}"))
        };
        Ok(Kubectl {
            netns: field("netns")?,
            bin: field("kubectl")?.into(),
            kubeconfig: field("kubeconfig")?.into(),
        })
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        // No request timeout: a create of thousands of Services may take the apiserver longer than
        // the lab's 10 s.
        crate::lab::api::kubectl_in(&self.netns, &self.bin, &self.kubeconfig, None, args, stdin)
    }
}
