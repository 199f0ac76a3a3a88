//! The control socket: `exorelay queue flush|hold|release|delete|bounce` talk to the running
//! daemon through a Unix socket in the spool directory (which only the daemon's user can enter),
//! so every queue change goes through the queue manager and never races a delivery. One command
//! line in, one answer out: `ok <text>` or `error <text>` (`metrics` answers with the counters
//! in the Prometheus text format after `ok`).

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use spool::QueueId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::queue::manager::{Command, QueueHandle};

/// The socket's file name inside the spool directory.
const SOCKET: &str = "control.sock";
/// Longest command line accepted.
const MAX_LINE: u64 = 256;

/// The socket path for a spool directory.
pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(SOCKET)
}

/// Parses `verb [id]`.
pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default().to_ascii_lowercase();
    let id = words
        .next()
        .map(|w| {
            w.parse::<QueueId>()
                .map_err(|e| format!("invalid queue id {w:?}: {e}"))
        })
        .transpose()?;
    if words.next().is_some() {
        return Err("too many arguments".into());
    }
    let need = |id: Option<QueueId>| id.ok_or_else(|| format!("{verb} needs a queue id"));
    match verb.as_str() {
        "flush" => Ok(Command::Flush(id)),
        "hold" => Ok(Command::Hold(need(id)?)),
        "release" => Ok(Command::Release(need(id)?)),
        "delete" => Ok(Command::Delete(need(id)?)),
        "bounce" => Ok(Command::Bounce(need(id)?)),
        _ => Err(format!("unknown command {verb:?}")),
    }
}

/// The daemon's side: a bound socket.
pub struct Server {
    listener: UnixListener,
    queue: QueueHandle,
    spool: spool::Spool,
}

impl Server {
    /// Binds the socket in `spool_dir`, replacing a stale one (the spool lock guarantees no
    /// other daemon uses this directory).
    pub fn bind(
        spool_dir: &Path,
        queue: QueueHandle,
        spool: spool::Spool,
    ) -> anyhow::Result<Server> {
        let path = socket_path(spool_dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot create the control socket {}", path.display()))?;
        Ok(Server {
            listener,
            queue,
            spool,
        })
    }

    /// Answers commands until the daemon stops.
    pub async fn run(self) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let queue = self.queue.clone();
            let commits = self.spool.commit_stats();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader =
                    tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_LINE));
                let answer = match reader.read_line(&mut line).await {
                    Ok(_) if line.trim() == "metrics" => {
                        Ok(crate::metrics::render(&commits, queue.waiting()))
                    }
                    Ok(_) => match parse(&line) {
                        Ok(command) => {
                            info!("control: {}", line.trim());
                            queue.command(command).await
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.to_string()),
                };
                let text = match answer {
                    Ok(text) => format!("ok {text}\n"),
                    Err(text) => {
                        warn!("control: {}: {text}", line.trim());
                        format!("error {text}\n")
                    }
                };
                let _ = write.write_all(text.as_bytes()).await;
            });
        }
    }
}

/// The command line's side: sends `command` to the daemon of `spool_dir`.
pub fn send(spool_dir: &Path, command: &str) -> anyhow::Result<Result<String, String>> {
    let path = socket_path(spool_dir);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no exorelay daemon answers on {} (is `exorelay serve` running on this spool?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_to_string(&mut answer)?;
    let answer = answer.trim_end();
    Ok(match answer.split_once([' ', '\n']) {
        Some(("ok", text)) => Ok(text.to_string()),
        Some(("error", text)) => Err(text.to_string()),
        _ => Err(format!("unexpected answer {answer:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        let id = QueueId::generate();
        assert_eq!(parse("flush"), Ok(Command::Flush(None)));
        assert_eq!(parse(&format!("HOLD {id}\n")), Ok(Command::Hold(id)));
        assert_eq!(parse(&format!("release {id}")), Ok(Command::Release(id)));
        assert_eq!(parse(&format!("delete {id}")), Ok(Command::Delete(id)));
        assert_eq!(parse(&format!("bounce {id}")), Ok(Command::Bounce(id)));
        assert!(parse("hold").is_err());
        assert!(parse("hold nonsense").is_err());
        assert!(parse(&format!("hold {id} {id}")).is_err());
        assert!(parse("rm -rf").is_err());
    }
}
