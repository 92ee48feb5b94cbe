//! BPF links pinned in bpffs, so attachments outlive the agent: a link held only by the agent's file
//! descriptor would detach the moment the agent dies (kill -9, crash, upgrade), and with it the socket
//! hooks and XDP. A restarted or upgraded agent finds the pin and swaps its own program into the link
//! with BPF_LINK_UPDATE — one atomic step, no moment without a program.
//!
//! aya 0.14 updates links only for some program types (not cgroup sock_addr), so the two commands are
//! issued here directly.
#![allow(
    unsafe_code,
    reason = "two bpf(2) commands aya does not offer for every link type"
)]

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::programs::links::FdLink;

use super::bpf_sys::{ATTR_SIZE, sys_bpf};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Where the agent's links are pinned, under its pin directory. Pin names must not contain dots:
/// bpffs reserves them and refuses even a lookup of such a name (EPERM).
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Opens a pinned BPF object (here: a link).
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path contains a NUL byte"))?;
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Points `link` at `prog`: the kernel swaps the program atomically.
fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// How a pinned attachment was made current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// A pin was there: its link now runs this program.
    Updated,
    /// No usable pin: a new link was created and pinned.
    Created,
}

/// Makes the link pinned at `pin` run `prog`, creating (and pinning) it with `attach` when there is no
/// pin, or when the pinned link no longer works (its interface or cgroup is gone: ENOLINK).
pub fn update_or_create(
    pin: &Path,
    prog: BorrowedFd<'_>,
    attach: impl FnOnce() -> Result<FdLink>,
) -> Result<Pinned> {
    if pin.exists() {
        match obj_get(pin).and_then(|fd| link_update(fd.as_fd(), prog)) {
            Ok(()) => return Ok(Pinned::Updated),
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "pinned link unusable; replacing it");
                std::fs::remove_file(pin)
                    .with_context(|| format!("removing the stale pinned link {}", pin.display()))?;
            }
        }
    }
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let link = attach()?;
    // Dropping the PinnedLink closes our descriptor; the pin keeps the link attached.
    link.pin(pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(Pinned::Created)
}

/// Detaches a pinned link by removing its pin (the last reference).
pub fn remove(pin: &Path) -> Result<()> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing the pinned link {}", pin.display())),
    }
}

/// Names of the pins in the links directory (empty when there is none).
pub fn pinned_names(pin_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(links_dir(pin_dir)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}
