//! `cargo xtask setup`: installs what building and running the project needs, and nothing twice.
//!
//! Debian machines (these): apt packages for the eBPF toolchain and the tools the lab and tests call.
//! Elsewhere: rustup nightly with rust-src. Both: bpf-linker, a mounted bpffs and cgroup v2.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::ebpf_toolchain::{self, BPF_LINKER_VERSION, DEBIAN_PACKAGES};

/// Tools the lab, the tests and the benchmarks call, by Debian package.
const TOOL_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("iptables", "/usr/sbin/iptables"),
    ("nftables", "/usr/sbin/nft"),
    ("iputils-ping", "/usr/bin/ping"),
];

pub fn run() -> Result<()> {
    let mut done = Vec::new();
    install_packages(&mut done)?;
    install_bpf_linker(&mut done)?;
    mount_bpffs(&mut done)?;
    check_cgroup2()?;
    let route = ebpf_toolchain::detect_route().map_err(anyhow::Error::msg)?;
    if done.is_empty() {
        eprintln!(
            "setup: nothing to do; eBPF toolchain ready ({})",
            route.describe()
        );
    } else {
        for d in &done {
            eprintln!("setup: {d}");
        }
        eprintln!("setup: done; eBPF toolchain ready ({})", route.describe());
    }
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn has_apt() -> bool {
    Path::new("/usr/bin/apt-get").exists() && Path::new("/usr/bin/dpkg-query").exists()
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn install_packages(done: &mut Vec<String>) -> Result<()> {
    let toolchain_ready = ebpf_toolchain::detect_route().is_ok();
    if !has_apt() {
        let missing: Vec<&str> = TOOL_PACKAGES
            .iter()
            .filter(|(_, bin)| !Path::new(bin).exists())
            .map(|(p, _)| *p)
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing tools ({}); install them with your package manager",
                missing.join(", ")
            );
        }
        if !toolchain_ready {
            run_step(
                Command::new("rustup").args(["toolchain", "install", "nightly", "--component", "rust-src"]),
                "rustup toolchain install nightly --component rust-src",
            )?;
            done.push("installed rustup nightly with rust-src".into());
        }
        return Ok(());
    }
    let mut wanted: Vec<&str> = TOOL_PACKAGES.iter().map(|(p, _)| *p).collect();
    if !toolchain_ready {
        wanted.extend(DEBIAN_PACKAGES);
    }
    let missing: Vec<&str> = wanted.into_iter().filter(|p| !deb_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install -y {}` or run setup as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run_step(Command::new("apt-get").arg("update").arg("-qq"), "apt-get update")?;
    run_step(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )?;
    done.push(format!("installed {}", missing.join(" ")));
    Ok(())
}

fn install_bpf_linker(done: &mut Vec<String>) -> Result<()> {
    if ebpf_toolchain::find_bpf_linker().is_some() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} (about a minute)");
    run_step(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]),
        "cargo install bpf-linker",
    )?;
    done.push(format!("installed bpf-linker {BPF_LINKER_VERSION}"));
    Ok(())
}

fn mount_bpffs(done: &mut Vec<String>) -> Result<()> {
    let path = Path::new("/sys/fs/bpf");
    if is_bpffs(path) {
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at /sys/fs/bpf: run `sudo mount -t bpf bpf /sys/fs/bpf`");
    }
    std::fs::create_dir_all(path).context("creating /sys/fs/bpf")?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context("mounting bpffs at /sys/fs/bpf")?;
    done.push("mounted bpffs at /sys/fs/bpf".into());
    Ok(())
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

fn check_cgroup2() -> Result<()> {
    let found = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"].iter().any(|p| {
        nix::sys::statfs::statfs(*p)
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false)
    });
    if !found {
        bail!(
            "no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup: the socket hooks need one"
        );
    }
    Ok(())
}

/// Runs one installation step; on failure, says which step and how it ended, not a wall of output.
fn run_step(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{what}: could not start"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("{what} failed ({}): {last}", out.status);
    }
    Ok(())
}

/// Fails with one line naming the fix when the eBPF toolchain is not ready.
pub fn require_toolchain() -> Result<()> {
    ebpf_toolchain::detect_route().map_err(anyhow::Error::msg)?;
    if ebpf_toolchain::find_bpf_linker().is_none() {
        bail!("bpf-linker not found: run `cargo xtask setup`");
    }
    Ok(())
}
