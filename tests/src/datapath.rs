//! The real datapath, loaded exactly as the agent loads it, with its maps pinned in a directory of the
//! test's own that is removed afterwards.

use std::path::PathBuf;

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use proxy_agent::datapath::Datapath;

pub struct TestDatapath {
    pub datapath: Datapath,
    pin_dir: PathBuf,
}

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Debug)]
pub struct RunResult {
    pub action: u32,
    pub packet: Vec<u8>,
}

impl TestDatapath {
    /// Loads every program; `name` makes the pin directory unique to the test.
    pub fn load(name: &str) -> Self {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/strait/test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let datapath = Datapath::load(&pin_dir).unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&pin_dir);
            panic!("loading the datapath: {e:#}")
        });
        Self { datapath, pin_dir }
    }

    /// Runs program `prog` once on `packet` and returns the verdict and the packet as it left.
    pub fn run(&mut self, prog: &str, packet: &[u8]) -> RunResult {
        let mut out = vec![0u8; packet.len() + 256];
        let program = self
            .datapath
            .ebpf_mut()
            .program_mut(prog)
            .unwrap_or_else(|| panic!("program {prog} missing from the object"));
        let mut opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..Default::default()
        };
        opts.repeat = 1;
        let result: Result<aya::programs::TestRunResult, ProgramError> = match program {
            aya::programs::Program::Xdp(p) => p.test_run(opts),
            aya::programs::Program::SchedClassifier(p) => p.test_run(opts),
            other => panic!(
                "program {prog} has type {:?}, not runnable here",
                other.prog_type()
            ),
        };
        let result = result.unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {prog}: {e:?}"));
        out.truncate(result.data_size_out as usize);
        RunResult {
            action: result.return_value,
            packet: out,
        }
    }
}

impl Drop for TestDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
