//! Loads the embedded object, pins its maps under the agent's pin directory and loads each program.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSockAddr, SchedClassifier, Xdp},
};
use common::prog_names;

use super::{Attachments, bpffs};

/// The object built by build.rs from the `proxy-ebpf` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/strait.o"));

pub struct Datapath {
    pub(crate) ebpf: Ebpf,
    pub pin_dir: PathBuf,
    pub attachments: Attachments,
    /// Where the socket hooks are attached, when they are.
    pub(crate) cgroup: Option<PathBuf>,
}

impl Datapath {
    pub fn load(pin_dir: &Path) -> Result<Self> {
        bpffs::prepare(pin_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .context("loading the eBPF object into the kernel")?;
        for name in [
            prog_names::TC_FROM_POD,
            prog_names::TC_TO_POD,
            prog_names::TC_FROM_NODE,
        ] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?
                .try_into()
                .with_context(|| format!("program {name} is not a tc classifier"))?;
            prog.load().with_context(|| format!("verifying program {name}"))?;
        }
        let xdp: &mut Xdp = program(&mut ebpf, prog_names::XDP_NODE)?
            .try_into()
            .with_context(|| format!("program {} is not XDP", prog_names::XDP_NODE))?;
        xdp.load()
            .with_context(|| format!("verifying program {}", prog_names::XDP_NODE))?;
        for (name, _) in super::cgroup::SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?
                .try_into()
                .with_context(|| format!("program {name} is not a cgroup sock_addr program"))?;
            prog.load().with_context(|| format!("verifying program {name}"))?;
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            attachments: Attachments::default(),
            cgroup: None,
        })
    }

    /// Writes the datapath settings (one array map, read by the programs on every packet).
    pub fn set_config(&mut self, config: common::config::DatapathConfig) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(common::map_names::CONFIG)
            .with_context(|| format!("map {} missing from the object", common::map_names::CONFIG))?;
        let mut array: aya::maps::Array<_, common::config::DatapathConfig> = aya::maps::Array::try_from(map)?;
        array.set(0, config, 0).context("writing the datapath settings")?;
        Ok(())
    }

    /// The loaded object, for packet tests and benchmarks that run programs with BPF_PROG_TEST_RUN.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Size of the embedded object, shown in `status` so a user can tell builds apart.
    pub fn object_size() -> usize {
        OBJECT.len()
    }
}

pub(crate) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}
