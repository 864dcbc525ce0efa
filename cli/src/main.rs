//! `tug`: the command-line client for Tug clusters, in kubectl's habits.
//!
//! Today it knows `tug version`; the verbs that talk to a control plane (`apply`, `get`,
//! `describe`, `delete`, `create`) arrive with the control-plane issue.

use clap::{Parser, Subcommand};

/// Command-line client for Tug clusters.
#[derive(Parser)]
#[command(name = "tug", version = tug_api::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the client version.
    Version,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Version => println!("Client Version: v{}", tug_api::VERSION),
    }
}
