//! Finds a toolchain that can build the eBPF crate. Shared by proxy-agent's build script (which builds)
//! and `cargo xtask setup` (which installs what is missing), so both agree on what "ready" means.
//!
//! Two routes, picked without asking:
//! - Debian: `/usr/bin/rustc` from `rustc-web` with a prebuilt `core` for `bpfel-unknown-none` from
//!   `libstd-rust-web-dev-bpf`. rustup's nightly cannot get `rust-src` on some machines; this route needs neither.
//! - rustup nightly with the `rust-src` component: `core` is built from source with `-Z build-std=core`.
//!
//! Both need `bpf-linker` on PATH (or in ~/.cargo/bin).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub const BPF_TARGET: &str = "bpfel-unknown-none";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "libstd-rust-web-dev-bpf"];
/// bpf-linker 0.10 links against rustc's own LLVM; later releases need a system LLVM 21+.
pub const BPF_LINKER_VERSION: &str = "0.10.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Debian's rustc with a prebuilt `core` for the BPF target.
    Debian { rustc: PathBuf },
    /// rustup nightly with rust-src; `core` is built with `-Z build-std=core`.
    RustupNightly,
}

impl Route {
    pub fn describe(&self) -> String {
        match self {
            Route::Debian { rustc } => format!(
                "Debian rustc ({}) with prebuilt core for {BPF_TARGET}",
                rustc.display()
            ),
            Route::RustupNightly => "rustup nightly with rust-src (-Z build-std=core)".to_string(),
        }
    }
}

/// The route this machine supports, or a one-line reason why none is ready.
pub fn detect_route() -> Result<Route, String> {
    if debian_core_present(Path::new("/usr/lib/rustlib")) && Path::new(DEBIAN_RUSTC).exists() {
        return Ok(Route::Debian {
            rustc: PathBuf::from(DEBIAN_RUSTC),
        });
    }
    if rustup_nightly_has_rust_src() {
        return Ok(Route::RustupNightly);
    }
    Err(format!(
        "no eBPF toolchain: need Debian's {} or rustup nightly with rust-src; run `cargo xtask setup`",
        DEBIAN_PACKAGES.join(" + ")
    ))
}

/// True when a prebuilt `libcore-*.rlib` for the BPF target sits under `rustlib`.
pub fn debian_core_present(rustlib: &Path) -> bool {
    let dir = rustlib.join(BPF_TARGET).join("lib");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            })
        })
        .unwrap_or(false)
}

fn rustup_nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
}

/// Path of bpf-linker, looked up on PATH and in ~/.cargo/bin (cargo install's default).
pub fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
