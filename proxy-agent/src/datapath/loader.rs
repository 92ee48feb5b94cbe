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
        for name in bpffs::remove_retired(pin_dir) {
            tracing::info!(pin = name, "removed a pin no map of this datapath reads");
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .context("loading the eBPF object into the kernel")?;
        load_programs(&mut ebpf)?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            attachments: Attachments::default(),
            cgroup: None,
        })
    }

    /// Writes the datapath settings (one array map, read by the programs on every packet).
    pub fn set_config(&mut self, config: common::config::DatapathConfig) -> Result<()> {
        let map = self.map_mut(common::map_names::CONFIG)?;
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

/// The programs the agent attaches, by name, with their kind.
fn wanted() -> Vec<(&'static str, Kind)> {
    let mut wanted = vec![
        (prog_names::TC_FROM_POD, Kind::Tc),
        (prog_names::TC_TO_POD, Kind::Tc),
        (prog_names::TC_FROM_NODE, Kind::Tc),
        (prog_names::XDP_NODE, Kind::Xdp),
    ];
    wanted.extend(
        super::cgroup::SOCK_PROGRAMS
            .iter()
            .map(|(name, _)| (*name, Kind::SockAddr)),
    );
    wanted
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tc,
    Xdp,
    SockAddr,
}

/// Loads every program the agent attaches, each on a thread of its own: the verifier works on one
/// program per call, and the datapath's large programs took ~1.4 s one after the other, all of a cold
/// start's wait before the first map write (the kube-proxies start serving in ~0.7 s).
fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    let wanted = wanted();
    let mut found = Vec::with_capacity(wanted.len());
    for (name, program) in ebpf.programs_mut() {
        if let Some((name, kind)) = wanted.iter().find(|(w, _)| *w == name) {
            found.push((*name, *kind, program));
        }
    }
    if let Some((missing, _)) = wanted.iter().find(|(w, _)| !found.iter().any(|(f, _, _)| f == w)) {
        anyhow::bail!("program {missing} missing from the eBPF object");
    }
    std::thread::scope(|scope| {
        let loads: Vec<_> = found
            .into_iter()
            .map(|(name, kind, program)| scope.spawn(move || load_one(name, kind, program)))
            .collect();
        // Every load is waited for (a scope joins them all anyway); the first error is the answer.
        let mut first_error = None;
        for load in loads {
            let result = load
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a program's loading thread panicked")));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

fn load_one(name: &str, kind: Kind, program: &mut aya::programs::Program) -> Result<()> {
    let started = std::time::Instant::now();
    let loaded = load_kind(name, kind, program);
    tracing::debug!(
        program = name,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "program verified"
    );
    loaded
}

fn load_kind(name: &str, kind: Kind, program: &mut aya::programs::Program) -> Result<()> {
    match kind {
        Kind::Tc => {
            let prog: &mut SchedClassifier = program
                .try_into()
                .with_context(|| format!("program {name} is not a tc classifier"))?;
            verify(name, || prog.load())
        }
        Kind::Xdp => {
            let prog: &mut Xdp = program
                .try_into()
                .with_context(|| format!("program {name} is not XDP"))?;
            verify(name, || prog.load())
        }
        Kind::SockAddr => {
            let prog: &mut CgroupSockAddr = program
                .try_into()
                .with_context(|| format!("program {name} is not a cgroup sock_addr program"))?;
            verify(name, || prog.load())
        }
    }
}

pub(crate) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

#[cfg(test)]
mod tests {
    use super::{OBJECT, retry_interrupted};

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

    #[test]
    fn the_object_defines_no_retired_map() {
        let contains = |name: &str| OBJECT.windows(name.len()).any(|w| w == name.as_bytes());
        assert!(
            contains(common::map_names::EVENTS),
            "the search finds a current map"
        );
        for name in common::map_names::RETIRED {
            assert!(!contains(name), "{name} is retired but the object still names it");
        }
    }
}
