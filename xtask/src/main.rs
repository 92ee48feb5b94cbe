//! Project tasks. `cargo xtask <task>`; see README.md.
#![deny(unsafe_code)]

mod lab;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks: setup, build, lab, test, demo")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// A lab cluster made of network namespaces on this machine.
    Lab(lab::LabArgs),
    /// Internal: the per-pod responder the lab runs inside each pod's namespace.
    #[command(hide = true)]
    LabResponder(lab::responder::ResponderArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Lab(args) => lab::run(args),
        Task::LabResponder(args) => lab::responder::run(args),
    }
}
