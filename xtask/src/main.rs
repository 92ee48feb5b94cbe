//! Project tasks. `cargo xtask <task>`; see README.md.
#![deny(unsafe_code)]

mod bench;
mod bench_agent;
mod bench_e2e;
mod demo;
#[path = "../../proxy-agent/build/ebpf_toolchain.rs"]
#[allow(
    dead_code,
    reason = "shared with proxy-agent's build script, which uses other parts"
)]
mod ebpf_toolchain;
mod k8s;
mod lab;
mod manifests_check;
mod setup;
mod svg_chart;
mod test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks: setup, build, lab, test, demo")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and running needs (idempotent: a second run does nothing and says so).
    Setup,
    /// Build the agent (which embeds the eBPF object) and the tools.
    Build,
    /// Set up, build, and show a two-node lab: pod-to-pod, a ClusterIP, a policy, the agent's view.
    Demo(demo::DemoArgs),
    /// Run every test: lints, unit tests, privileged packet and lab tests.
    Test(test::TestArgs),
    /// Per-packet datapath cost as ratios to bare programs in the same run; writes bench-results/.
    Bench(bench::BenchArgs),
    /// A lab cluster made of network namespaces on this machine.
    Lab(lab::LabArgs),
    /// Upstream Kubernetes control-plane binaries built from Go modules, and a smoke test of them.
    K8s(k8s::K8sArgs),
    /// Internal: the per-pod responder the lab runs inside each pod's namespace.
    #[command(hide = true)]
    LabResponder(lab::responder::ResponderArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build => build(),
        Task::Demo(args) => demo::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Lab(args) => lab::run(args),
        Task::K8s(args) => k8s::run(args),
        Task::LabResponder(args) => lab::responder::run(args),
    }
}

fn build() -> anyhow::Result<()> {
    setup::require_toolchain()?;
    let status = cargo()
        .args(["build", "--release", "-p", "proxy-agent", "-p", "xtask"])
        .status()?;
    anyhow::ensure!(status.success(), "cargo build failed ({status})");
    eprintln!("built {}", target_dir().join("release/proxy-agent").display());
    Ok(())
}

/// The workspace root (xtask sits one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// `cargo` run from the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}
