//! strait node agent: cluster objects in, eBPF datapath state out.
//!
//! The binary (`main.rs`) is a thin CLI over this library; the privileged tests in `tests/` use the same
//! loader to run the embedded programs with BPF_PROG_TEST_RUN.
#![deny(unsafe_code)]

pub mod admin;
pub mod background;
pub mod cleanup;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod endpoints;
pub mod flows;
pub mod healthcheck;
pub mod healthz;
pub mod host;
pub mod lb;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod pinned_view;
pub mod policy;
pub mod reconcile;
pub mod resync_dumper;
pub mod slim;
pub mod snapshot;
pub mod source;
pub mod status;
