//! The command line: one subcommand per job, each with `--help` and an example.

mod check;
mod config_check;
mod demo;
mod exosim;
mod queue;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// exorelay — relay mail from LAN systems to Exchange Online, safely and explainably.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Log more (debug level).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay daemon.
    ///
    /// Example: exorelay serve --config /etc/exorelay/relay.toml
    Serve {
        /// The configuration file.
        #[arg(short, long, default_value = "/etc/exorelay/relay.toml")]
        config: PathBuf,
    },
    /// Show, in seconds and on loopback only, which LAN mail flows Exchange Online relays before
    /// and after November 2023, and how exorelay gets each one through: starts a simulated EXO
    /// for a built-in tenant and an exorelay in front of it, sends six scenarios, prints a table.
    ///
    /// Example: exorelay demo
    Demo {
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What Exchange Online does with a flow, before and after November 2023, and what to change.
    ///
    /// Example: exorelay check --tenants tenants.toml --source-ip 203.0.113.5 --mail-from root@srv01.corp.local --header-from monitor@contoso.com --rcpt ops@example.net
    ///
    /// Example: exorelay check --config /etc/exorelay/relay.toml --egress-ip 203.0.113.5
    Check(check::CheckArgs),
    /// Run a simulated multi-tenant Exchange Online endpoint (for tests and demos).
    ///
    /// Example: exorelay exosim --tenants tenants.toml --listen 127.0.0.1:0 --cert exo.pem --key exo.key --client-ca ca.pem --store /tmp/exosim --source-ip 203.0.113.5
    Exosim(exosim::ExosimArgs),
    /// Check a configuration file and print the effective configuration.
    ///
    /// Example: exorelay config check /etc/exorelay/relay.toml
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Inspect the queue.
    ///
    /// Example: exorelay queue list --config /etc/exorelay/relay.toml
    Queue {
        /// The configuration file naming the spool directory.
        #[arg(short, long, default_value = "/etc/exorelay/relay.toml", global = true)]
        config: PathBuf,
        /// The spool directory (instead of reading it from the configuration).
        #[arg(long, global = true)]
        spool: Option<PathBuf>,
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate FILE; errors name the line and field.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// One line per queued message: id, age, size, sender, recipients, state.
    List,
    /// Everything known about one message: envelope, per-recipient state, last replies.
    Show {
        /// The queue id (as printed by `queue list` and in the 250 reply).
        id: String,
    },
    /// Make one message (or all) due for delivery now. Needs the running daemon.
    Flush {
        /// The queue id; all messages when omitted.
        id: Option<String>,
    },
    /// Stop delivering a message until it is released.
    Hold {
        /// The queue id.
        id: String,
    },
    /// Put a held message back in the queue, due now (e.g. after fixing a connector).
    Release {
        /// The queue id.
        id: String,
    },
    /// Remove a message without notifying anyone.
    Delete {
        /// The queue id.
        id: String,
    },
    /// Print the daemon's counters (Prometheus text format).
    Metrics,
    /// Return a message to its sender with a DSN and remove it.
    Bounce {
        /// The queue id.
        id: String,
    },
}

/// Sets up `tracing` to standard error: debug with `--verbose`, warnings only for the demo
/// (its output is the table), information otherwise.
pub fn init_logging(cli: &Cli) {
    let level = if cli.verbose {
        tracing::Level::DEBUG
    } else if matches!(cli.command, Command::Demo { .. }) {
        tracing::Level::WARN
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve::run(&config),
        Command::Demo { json } => demo::run(json),
        Command::Check(args) => check::run(args),
        Command::Exosim(args) => exosim::run(args),
        Command::Config {
            action: ConfigAction::Check { file },
        } => config_check::run(&file),
        Command::Queue {
            config,
            spool,
            action,
        } => {
            let dir = queue::spool_dir(&config, spool)?;
            match action {
                QueueAction::List => queue::list(&dir),
                QueueAction::Show { id } => queue::show(&dir, &id),
                QueueAction::Flush { id } => queue::control(&dir, "flush", id.as_deref()),
                QueueAction::Hold { id } => queue::control(&dir, "hold", Some(&id)),
                QueueAction::Release { id } => queue::control(&dir, "release", Some(&id)),
                QueueAction::Delete { id } => queue::control(&dir, "delete", Some(&id)),
                QueueAction::Bounce { id } => queue::control(&dir, "bounce", Some(&id)),
                QueueAction::Metrics => queue::control(&dir, "metrics", None),
            }
        }
    }
}
