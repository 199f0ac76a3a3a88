//! `exorelay queue list|show`: read the spool without disturbing a running daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use spool::{ContentLocation, QueueId, SpoolReader};

use crate::config::Config;
use crate::inbound::session::now_unix;

/// The spool directory: `--spool` if given, else the configuration's `queue.dir`.
pub fn spool_dir(config: &Path, spool: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match spool {
        Some(dir) => Ok(dir),
        None => Config::load(config)
            .map(|c| c.queue.dir)
            .map_err(|e| anyhow::anyhow!("{e}")),
    }
}

/// Prints one line per message, oldest first, and the unreadable entries.
pub fn list(dir: &Path) -> anyhow::Result<ExitCode> {
    let reader =
        SpoolReader::open(dir).with_context(|| format!("cannot read spool {}", dir.display()))?;
    let entries = reader.list().context("cannot list the spool")?;
    let now = now_unix();
    println!(
        "{:<26}  {:>8}  {:>9}  {:<6}  sender -> recipients",
        "id", "age", "size", "state"
    );
    for entry in &entries {
        match &entry.envelope {
            Ok(env) => {
                let age = humantime::format_duration(std::time::Duration::from_secs(
                    now.saturating_sub(env.received_at),
                ));
                let recipients: Vec<&str> =
                    env.recipients.iter().map(|r| r.address.as_str()).collect();
                let sender = if env.mail_from.is_empty() {
                    "<>"
                } else {
                    &env.mail_from
                };
                let state = if entry.held { "held" } else { "queued" };
                println!(
                    "{:<26}  {:>8}  {:>9}  {:<6}  {sender} -> {}",
                    env.id.to_string(),
                    age.to_string(),
                    env.size,
                    state,
                    recipients.join(", ")
                );
            }
            Err(e) => println!("{:<26}  unreadable: {e}", entry.path.display()),
        }
    }
    println!("{} message(s)", entries.len());
    Ok(ExitCode::SUCCESS)
}

/// Prints the envelope of one message as stored, plus where its content is.
pub fn show(dir: &Path, id: &str) -> anyhow::Result<ExitCode> {
    let id: QueueId = id
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid queue id {id:?}: {e}"))?;
    let reader =
        SpoolReader::open(dir).with_context(|| format!("cannot read spool {}", dir.display()))?;
    let envelope = reader
        .show(id)
        .with_context(|| format!("no message {id} in {}", dir.display()))?;
    let text = toml::to_string_pretty(&envelope).context("cannot format the envelope")?;
    println!("{text}");
    match reader.content_location(id) {
        ContentLocation::File(path) => println!("# content: {}", path.display()),
        ContentLocation::JournalRecord(segment) => println!(
            "# content: in its commit journal record in {} (no files until it is deferred, held or checkpointed)",
            segment.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends a queue command to the daemon running on the spool and prints its answer.
pub fn control(dir: &Path, verb: &str, id: Option<&str>) -> anyhow::Result<ExitCode> {
    let command = match id {
        Some(id) => format!("{verb} {id}"),
        None => verb.to_string(),
    };
    match crate::control::send(dir, &command)? {
        Ok(text) => {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(text) => {
            eprintln!("exorelay: {text}");
            Ok(ExitCode::FAILURE)
        }
    }
}
