//! Socket-level hooks for host-network clients, attached to the cgroup v2 directory the agent is given
//! (`--cgroup-root`): the host's cgroup root in a DaemonSet, a node's own subtree in the lab. Never the
//! machine's root by default, so a test or a lab cannot change how the machine's own sockets connect.

use std::{
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::Path,
};

use anyhow::{Context, Result};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink};
use common::prog_names;

use super::{Datapath, attach::AttachmentView, links, loader::program};

pub const SOCK_PROGRAMS: [(&str, &str); 4] = [
    (prog_names::SOCK_CONNECT4, "cgroup/connect4"),
    (prog_names::SOCK_SENDMSG4, "cgroup/sendmsg4"),
    (prog_names::SOCK_RECVMSG4, "cgroup/recvmsg4"),
    (prog_names::SOCK_GETPEERNAME4, "cgroup/getpeername4"),
];

impl Datapath {
    /// Attaches the four socket hooks to `cgroup` through links pinned under the pin directory, so
    /// they stay attached while no agent runs; a pin left by an earlier agent is updated in place.
    /// Pins name the cgroup's inode: hooks of another `--cgroup-root` of an earlier run are removed.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup).with_context(|| {
            format!(
                "--cgroup-root {}: cannot open the cgroup directory",
                cgroup.display()
            )
        })?;
        let inode = dir.metadata()?.ino();
        let mut wanted = Vec::new();
        for (name, _) in SOCK_PROGRAMS {
            let pin_name = format!("cgroup_{inode}_{name}");
            let pin = links::links_dir(&self.pin_dir).join(&pin_name);
            wanted.push(pin_name);
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
            let fd = prog.fd()?.as_fd().try_clone_to_owned()?;
            let attach = || -> Result<FdLink> {
                // With bpf_link (kernel >= 5.7) several programs share a cgroup anyway; link_create
                // refuses the legacy BPF_F_ALLOW_MULTI flag with EINVAL, so the default mode is right.
                let id = prog
                    .attach(&dir, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
                Ok(FdLink::try_from(prog.take_link(id)?)?)
            };
            let how = links::update_or_create(&pin, fd.as_fd(), attach)?;
            tracing::debug!(program = name, how = ?how, "socket hook in place");
        }
        for name in links::pinned_names(&self.pin_dir) {
            if name.starts_with("cgroup_") && !wanted.contains(&name) {
                links::remove(&links::links_dir(&self.pin_dir).join(&name))?;
                tracing::info!(pin = %name, "removed a socket hook of an earlier --cgroup-root");
            }
        }
        self.cgroup = Some(cgroup.to_path_buf());
        tracing::info!(cgroup = %cgroup.display(), "attached socket hooks");
        Ok(())
    }

    pub(crate) fn cgroup_view(&self) -> Vec<AttachmentView> {
        let Some(cgroup) = &self.cgroup else {
            return Vec::new();
        };
        SOCK_PROGRAMS
            .iter()
            .map(|&(program, hook)| AttachmentView {
                program,
                hook,
                interface: cgroup.display().to_string(),
                ifindex: 0,
                mode: "cgroup",
                pod: None,
            })
            .collect()
    }
}
