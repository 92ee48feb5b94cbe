//! strait node agent and CLI.
#![deny(unsafe_code)]

use clap::Parser;
use proxy_agent::cli;

/// jemalloc instead of glibc's malloc: at the agent bench's scale glibc kept ~20 MiB more resident
/// (freed blocks between live ones, per-thread arenas) than jemalloc configured below.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's defaults, read at its start (the crate prefixes its symbols with `_rjem_`): one arena
/// (the agent's threads mostly wait; more arenas only hold more partly used pages); freed pages kept
/// for reuse up to 5 s (dirty), then returned without the lazy MADV_FREE stage (muzzy, which still
/// counts as resident until the kernel needs the memory). Each reconcile pass ends by returning what
/// it freed (`memory::return_free_pages`, which first empties the pass thread's cache of freed
/// blocks), so the resident size between passes is what the agent holds. Purging at every free
/// instead (decay 0) cost ~0.5 s of a cold start at the agent bench's scale in madvise calls and page
/// faults. Per-thread caches stay on: without them (`tcache:false`) RSS was the same within noise as
/// with the flush (~1 MiB less anonymous memory), but a first sync took 2.1–2.4 s instead of 1.7–1.9 s.
#[allow(
    unsafe_code,
    non_upper_case_globals,
    reason = "the symbol jemalloc reads its options from"
)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 47] = b"narenas:1,dirty_decay_ms:5000,muzzy_decay_ms:0\0";

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
