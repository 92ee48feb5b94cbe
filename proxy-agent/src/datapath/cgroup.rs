//! Socket-level hooks for host-network clients, attached to the cgroup v2 directory the agent is given
//! (`--cgroup-root`): the host's cgroup root in a DaemonSet, a node's own subtree in the lab. Never the
//! machine's root by default, so a test or a lab cannot change how the machine's own sockets connect.

use std::path::Path;

use anyhow::{Context, Result};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use common::prog_names;

use super::{Datapath, attach::AttachmentView, loader::program};

pub const SOCK_PROGRAMS: [(&str, &str); 4] = [
    (prog_names::SOCK_CONNECT4, "cgroup/connect4"),
    (prog_names::SOCK_SENDMSG4, "cgroup/sendmsg4"),
    (prog_names::SOCK_RECVMSG4, "cgroup/recvmsg4"),
    (prog_names::SOCK_GETPEERNAME4, "cgroup/getpeername4"),
];

impl Datapath {
    /// Attaches the four socket hooks to `cgroup` (links live as long as the agent).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup).with_context(|| {
            format!(
                "--cgroup-root {}: cannot open the cgroup directory",
                cgroup.display()
            )
        })?;
        for (name, _) in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
            // With bpf_link (kernel >= 5.7) several programs share a cgroup anyway; link_create refuses
            // the legacy BPF_F_ALLOW_MULTI flag with EINVAL, so the default mode is the right one.
            prog.attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
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
