//! strait node agent and CLI.
#![deny(unsafe_code)]

use clap::Parser;
use proxy_agent::cli;

/// jemalloc instead of glibc's malloc: at the agent bench's scale glibc kept ~20 MiB more resident
/// (freed blocks between live ones, per-thread arenas) than jemalloc configured below.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's defaults, read at its start (the crate prefixes its symbols with `_rjem_`): one arena
/// (the agent's threads mostly wait; more arenas only hold more partly used pages) and freed pages
/// returned to the system at once instead of after 10 s (dirty) and then lazily with MADV_FREE
/// (muzzy, which still counts as resident until the kernel needs the memory). What that costs in
/// time is in the agent bench (change to map write, first-pass programming).
#[allow(
    unsafe_code,
    non_upper_case_globals,
    reason = "the symbol jemalloc reads its options from"
)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 44] = b"narenas:1,dirty_decay_ms:0,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    proxy_agent::logging::init(&args.log_level);
    match cli::dispatch(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
