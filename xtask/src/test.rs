//! `cargo xtask test`: every test of the project, from a fresh machine.
//!
//! Setup first (idempotent), then lints, then one `cargo test` over the workspace. The `tests` crate holds
//! the privileged tests (BPF_PROG_TEST_RUN packet tables, lab tests with real traffic): they run whenever
//! the process is root, and under CI=true a missing privilege fails the run instead of skipping.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, setup};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and `cargo clippy -D warnings`.
    #[arg(long)]
    pub no_lint: bool,
    /// Passed to the test binaries (a test name filter, `--nocapture`, ...).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let root = nix::unistd::geteuid().is_root();
    if root {
        setup::run()?;
    } else if ci {
        bail!("CI=true but not running as root: the privileged tests (BPF, network namespaces) cannot run");
    } else {
        setup::require_toolchain()?;
    }
    if !args.no_lint {
        step("format", cargo().args(["fmt", "--all", "--", "--check"]))?;
        step(
            "clippy",
            cargo().args([
                "clippy",
                "--release",
                "--workspace",
                "--exclude",
                "proxy-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    step(
        "build",
        cargo().args(["build", "--release", "-p", "proxy-agent", "-p", "xtask"]),
    )?;
    let target = crate::target_dir();
    eprintln!(
        "xtask test: privileged tests {}",
        if root {
            "will run (root)"
        } else {
            "will be skipped: not root (set CI=true to make that a failure)"
        }
    );
    let mut test = cargo();
    test.args(["test", "--release", "--workspace", "--exclude", "proxy-ebpf"])
        .env("STRAIT_XTASK_BIN", target.join("release/xtask"))
        .env("STRAIT_AGENT_BIN", target.join("release/proxy-agent"));
    if !args.test_args.is_empty() {
        test.arg("--").args(&args.test_args);
    }
    step("test", &mut test)
}

fn step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask test: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start cargo"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
