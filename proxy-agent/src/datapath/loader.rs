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

/// Loads one program through the verifier. The verifier gives up with EAGAIN when a signal reaches
/// the loading thread (a child process exiting, in a test binary that spawns many); libbpf retries
/// such loads, and so does this, a few times.
fn verify(name: &str, load: impl FnMut() -> Result<(), aya::programs::ProgramError>) -> Result<()> {
    let interrupted = |e: &aya::programs::ProgramError| {
        matches!(e, aya::programs::ProgramError::LoadError { io_error, .. }
            if io_error.raw_os_error() == Some(nix::errno::Errno::EAGAIN as i32))
    };
    retry_interrupted(5, load, interrupted).with_context(|| format!("verifying program {name}"))
}

/// Calls `f` until it succeeds, fails otherwise than `interrupted`, or was called `attempts` times.
fn retry_interrupted<T, E>(
    attempts: u32,
    mut f: impl FnMut() -> Result<T, E>,
    interrupted: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match f() {
            Err(e) if interrupted(&e) && attempt < attempts => {
                tracing::debug!(attempt, "the verifier was interrupted; loading again");
                attempt += 1;
            }
            result => return result,
        }
    }
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
            verify(name, || prog.load())?;
        }
        let xdp: &mut Xdp = program(&mut ebpf, prog_names::XDP_NODE)?
            .try_into()
            .with_context(|| format!("program {} is not XDP", prog_names::XDP_NODE))?;
        verify(prog_names::XDP_NODE, || xdp.load())?;
        for (name, _) in super::cgroup::SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?
                .try_into()
                .with_context(|| format!("program {name} is not a cgroup sock_addr program"))?;
            verify(name, || prog.load())?;
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

#[cfg(test)]
mod tests {
    use super::retry_interrupted;

    #[test]
    fn an_interrupted_load_is_tried_again_a_bounded_number_of_times() {
        let mut calls = 0;
        let r: Result<u32, &str> = retry_interrupted(
            5,
            || {
                calls += 1;
                if calls < 3 { Err("again") } else { Ok(calls) }
            },
            |e| *e == "again",
        );
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: Result<(), &str> = retry_interrupted(
            5,
            || {
                calls += 1;
                Err("again")
            },
            |e| *e == "again",
        );
        assert_eq!((r, calls), (Err("again"), 5), "bounded");
        let mut calls = 0;
        let r: Result<(), &str> = retry_interrupted(
            5,
            || {
                calls += 1;
                Err("rejected")
            },
            |e| *e == "again",
        );
        assert_eq!((r, calls), (Err("rejected"), 1), "a verifier rejection is final");
    }
}
