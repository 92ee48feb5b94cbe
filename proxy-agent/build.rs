//! Builds the eBPF object (crate `proxy-ebpf`) and leaves it in OUT_DIR for `include_bytes_aligned!`.
//!
//! A nested cargo builds the kernel crate for `bpfel-unknown-none` with whichever toolchain the machine has
//! (see `build/ebpf_toolchain.rs`). It gets its own target directory: sharing the outer one would deadlock on
//! the outer build's lock.

#[path = "build/ebpf_toolchain.rs"]
#[allow(dead_code, reason = "shared with xtask, which uses the rest")]
mod ebpf_toolchain;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use ebpf_toolchain::{BPF_TARGET, Route};

const OBJECT: &str = "strait";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("proxy-agent sits in the workspace")
        .to_path_buf();
    for watched in [
        "proxy-ebpf/src",
        "proxy-ebpf/Cargo.toml",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!("cargo::rerun-if-changed={}", workspace.join(watched).display());
    }
    println!("cargo::rerun-if-changed=build/ebpf_toolchain.rs");
    println!("cargo::rerun-if-env-changed=PATH");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let route = ebpf_toolchain::detect_route().unwrap_or_else(|why| fail(&why));
    let linker = ebpf_toolchain::find_bpf_linker().unwrap_or_else(|| {
        fail(&format!(
            "bpf-linker not found: run `cargo xtask setup` (or `cargo install bpf-linker@{} --locked`)",
            ebpf_toolchain::BPF_LINKER_VERSION
        ))
    });
    let object = build_object(&route, &linker, &workspace, &out_dir);
    std::fs::copy(&object, out_dir.join(format!("{OBJECT}.o")))
        .unwrap_or_else(|e| fail(&format!("copying {}: {e}", object.display())));
}

fn build_object(route: &Route, linker: &Path, workspace: &Path, out_dir: &Path) -> PathBuf {
    let target_dir = out_dir.join("ebpf-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = match route {
        Route::Debian { rustc } => {
            let mut c = Command::new(&cargo);
            c.env("RUSTC", rustc);
            // aya-ebpf uses #![feature(asm_experimental_arch)]; the Debian compiler is a stable one.
            c.env("RUSTC_BOOTSTRAP", "1");
            c.arg("build");
            c
        }
        Route::RustupNightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"]);
            c
        }
    };
    // The outer build's compiler settings must not leak into the kernel build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
    ] {
        if !(var == "RUSTC" && matches!(route, Route::Debian { .. })) {
            cmd.env_remove(var);
        }
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    dirs.insert(0, linker.parent().expect("linker has a directory").to_path_buf());
    cmd.env("PATH", env::join_paths(dirs).expect("PATH entries are valid"));
    // BTF (from debug info) makes verifier logs readable and lets aya relocate against the kernel.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf");
    cmd.current_dir(workspace)
        .args([
            "--release",
            "-p",
            "proxy-ebpf",
            "--bin",
            OBJECT,
            "--target",
            BPF_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("running cargo for the eBPF crate: {e}")));
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail(&format!(
            "building the eBPF crate with {} failed (compiler output above)",
            route.describe()
        ));
    }
    target_dir.join(BPF_TARGET).join("release").join(OBJECT)
}

/// One clear line instead of a panic backtrace.
fn fail(message: &str) -> ! {
    println!("cargo::error={message}");
    eprintln!("error: {message}");
    std::process::exit(1);
}
