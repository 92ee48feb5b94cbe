//! strait node agent and CLI.
#![deny(unsafe_code)]

use clap::Parser;
use proxy_agent::cli;

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
