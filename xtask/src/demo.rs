//! `cargo xtask demo`: from a fresh machine to a running two-node lab that shows what the datapath
//! does — setup, build, lab up, traffic through a ClusterIP, a policy applied, the agent's view — and
//! then tears the lab down (unless `--keep`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, setup, target_dir, workspace_root};

const LAB: &str = "demo";
const TOPOLOGY: &str = "testdata/lab/clusterip.yaml";
const POLICY: &str = "testdata/lab/demo-policy.yaml";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Leave the lab running afterwards (`cargo xtask lab --name demo down` removes it).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo builds network namespaces and loads BPF programs: run it as root");
    }
    setup::run()?;
    heading("Build");
    let status = cargo()
        .args(["build", "--release", "-p", "proxy-agent"])
        .status()?;
    anyhow::ensure!(status.success(), "cargo build -p proxy-agent failed ({status})");
    let agent = target_dir().join("release/proxy-agent");

    let _ = lab(&["down"]).output();
    heading("Lab: 2 nodes, 3 web backends, 2 clients (testdata/lab/clusterip.yaml)");
    let up = lab(&["up", TOPOLOGY, "--agent-bin", path_str(&agent)?]).status()?;
    anyhow::ensure!(up.success(), "lab up failed");
    let result = show(&agent);
    if !args.keep {
        heading("Lab down");
        let _ = lab(&["down"]).status();
    } else {
        eprintln!(
            "lab kept: `cargo xtask lab --name {LAB} ...`; remove it with `cargo xtask lab --name {LAB} down`"
        );
    }
    result
}

fn show(agent: &Path) -> Result<()> {
    wait_synced(agent, "n1")?;
    wait_synced(agent, "n2")?;
    heading("Every pod to every pod, TCP 8080 (rows from, columns to)");
    lab(&["matrix", "--port", "8080"]).status()?;

    heading("ClusterIP shop/web 10.96.0.10:80/TCP from shop/client-1 (node n1), 30 connections");
    print_summary(&probe("shop/client-1", "10.96.0.10:80/tcp", 30)?);
    heading("The same Service over UDP, 10.96.0.10:53/UDP from shop/client-2 (node n2)");
    print_summary(&probe("shop/client-2", "10.96.0.10:53/udp", 30)?);
    heading("A backend reaching its own Service (hairpin), from shop/web-1");
    print_summary(&probe("shop/web-1", "10.96.0.10:80/tcp", 12)?);
    heading("shop/empty 10.96.0.20:80 has no endpoints: refused at once, as kube-proxy does");
    print_summary(&probe("shop/client-1", "10.96.0.20:80/tcp", 3)?);

    heading("NetworkPolicy shop/web-from-clients applied (only app=client may reach app=web on 8080)");
    lab(&["apply", POLICY]).status()?;
    // The agents pick the change up within a second.
    std::thread::sleep(Duration::from_millis(1000));
    lab(&["matrix", "--port", "8080", "--timeout-ms", "300"]).status()?;
    println!("(web pods reaching each other are now denied; the clients still get through)");
    heading("Why: the datapath's flow records on n1 (proxy-agent flows)");
    lab(&["exec", "node/n1", "--", path_str(agent)?, "flows"]).status()?;

    heading("What the agent on n1 has programmed (proxy-agent status)");
    lab(&["exec", "node/n1", "--", path_str(agent)?, "status"]).status()?;
    heading("bpftool net show, inside node n1");
    lab(&["exec", "node/n1", "--", "bpftool", "net", "show"]).status()?;
    Ok(())
}

fn heading(text: &str) {
    println!("\n== {text}");
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("path is not UTF-8")
}

/// This xtask binary's `lab` command, for the demo lab.
fn lab(args: &[&str]) -> Command {
    let exe: PathBuf = std::env::current_exe().unwrap_or_else(|_| target_dir().join("release/xtask"));
    let mut c = Command::new(exe);
    c.args(["lab", "--name", LAB])
        .args(args)
        .current_dir(workspace_root());
    c
}

fn probe(from: &str, to: &str, count: u32) -> Result<Value> {
    let out = lab(&[
        "probe",
        "--from",
        from,
        "--to",
        to,
        "--count",
        &count.to_string(),
        "--json",
    ])
    .stderr(Stdio::null())
    .output()?;
    serde_json::from_slice(&out.stdout).with_context(|| format!("probe {from} -> {to}: no JSON answer"))
}

fn print_summary(probe: &Value) {
    let summary = probe["summary"].as_object().map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    println!("  {}", summary.unwrap_or_default());
    if let Some(a) = probe["attempts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["outcome"] == "answered"))
    {
        println!(
            "  e.g. answered by {} which saw the client as {}",
            a["answered_by"].as_str().unwrap_or("?"),
            a["client_seen"].as_str().unwrap_or("?")
        );
    }
}

fn wait_synced(agent: &Path, node: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out = lab(&[
            "exec",
            &format!("node/{node}"),
            "--",
            path_str(agent)?,
            "status",
            "-o",
            "json",
        ])
        .stderr(Stdio::null())
        .output()?;
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
            && v["sync"]["synced"] == true
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the agent on {node} did not report a sync within 20 s (see /run/strait/labs/{LAB}/logs/)")
}
