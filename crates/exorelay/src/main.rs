//! `exorelay`: an SMTP relay from the LAN to Exchange Online. This file only parses the command
//! line, sets up logging and hands over to the subcommand in [`cli`].

mod cli;
mod config;
mod control;
mod delivery;
mod dsn;
mod exosim;
mod inbound;
mod metrics;
mod policy;
mod queue;
mod tenants;
mod tls;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("exorelay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
