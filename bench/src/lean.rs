//! `lean`: the least a durable store-and-forward relay can do, as a reference side for the
//! matrix (`--sides direct,lean,exorelay`). It shows what the machine allows any relay that
//! acknowledges a message only once it is on disk, so exorelay's share of `direct` can be read
//! against it (docs/PERFORMANCE.md, "Session 7: a lean durable relay as the yardstick").
//!
//! Per message it does only what every such relay must: read the SMTP dialogue (MAIL, RCPT,
//! DATA; one recipient kept, no checks), append the envelope and content to a preallocated
//! journal file, wait for the group commit (one committer thread: one `pwrite` and one
//! `fdatasync` for everything submitted meanwhile), answer `250`, then forward the message
//! itself in one flight (`MAIL`, `RCPT`, `BDAT n LAST` and the content) over an upstream
//! connection taken from a shared pool, and read the three replies. It has no queue, no
//! retries, no logs, no policy, no removal records and no recovery: it is a measuring stick,
//! not a relay. A refused or failed forward ends the connection, so the run fails visibly.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Size of the journal file, prepared (zero-filled and synced) before the first message, so
/// appends change no metadata; appends wrap to the start when they reach its end (only a
/// single batch larger than the file, of many large messages, extends it).
const JOURNAL_SIZE: u64 = 16 << 20;
/// Longest command line, and longest reply line read from the sink.
const MAX_LINE: usize = 4096;
/// Octets read from a socket per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Largest message accepted (the matrix's largest is 1 MiB).
const MAX_MESSAGE: usize = 8 << 20;

/// The lean relay running as a child process (`relay-bench lean`), so that its CPU and memory
/// are measured apart from the sink's and the driver's.
pub struct LeanProcess {
    child: Child,
    /// Its SMTP port.
    pub port: u16,
}

impl LeanProcess {
    /// Starts `relay-bench lean` with its journal in `dir`, forwarding to the sink on
    /// `sink_port`, and waits for its greeting.
    pub fn start(dir: &Path, sink_port: u16) -> anyhow::Result<LeanProcess> {
        let port = crate::relay::free_port()?;
        let log = File::create(dir.join("lean.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("lean")
            .args(["--port", &port.to_string()])
            .args(["--upstream-port", &sink_port.to_string()])
            .arg("--journal")
            .arg(dir.join("lean.journal"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start relay-bench lean")?;
        let mut lean = LeanProcess { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !crate::relay::greeting(port, Duration::from_millis(500)) {
            if let Ok(Some(status)) = lean.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("lean.log")).unwrap_or_default();
                bail!("relay-bench lean exited ({status}) before listening:\n{log}");
            }
            if Instant::now() > deadline {
                lean.stop();
                bail!("relay-bench lean did not greet within 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(lean)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends it (it keeps nothing worth a clean shutdown).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the relay needs to run: its listener, the sink's port and the journal.
pub struct Lean {
    listener: std::net::TcpListener,
    upstream_port: u16,
    commits: mpsc::Sender<Commit>,
}

/// One message's journal record and whom to tell once it is durable.
struct Commit {
    record: Vec<u8>,
    durable: oneshot::Sender<std::io::Result<()>>,
}

impl Lean {
    /// Binds `127.0.0.1:port`, prepares the journal at `journal` and starts its committer.
    pub fn bind(port: u16, upstream_port: u16, journal: &Path) -> anyhow::Result<Lean> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let file = prepare(journal)
            .with_context(|| format!("cannot prepare the journal {}", journal.display()))?;
        let (commits, submitted) = mpsc::channel();
        std::thread::Builder::new()
            .name("lean-commit".into())
            .spawn(move || commit_loop(&file, &submitted))?;
        Ok(Lean {
            listener,
            upstream_port,
            commits,
        })
    }

    /// Serves connections until the process is stopped.
    pub fn run(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = TcpListener::from_std(self.listener)?;
            let pool: Pool = Arc::new(Mutex::new(Vec::new()));
            loop {
                let (client, _) = listener.accept().await?;
                let session = Session {
                    commits: self.commits.clone(),
                    pool: pool.clone(),
                    upstream_port: self.upstream_port,
                };
                tokio::spawn(async move {
                    if let Err(e) = session.serve(client).await {
                        eprintln!("lean: connection ended: {e}");
                    }
                });
            }
        })
    }
}

/// Creates the journal file at its full size, zero-filled and synced.
fn prepare(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < JOURNAL_SIZE {
        file.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// The committer: everything submitted while the previous sync ran goes out in one write and
/// one `fdatasync`; then each waiting session hears the result.
fn commit_loop(file: &File, submitted: &mpsc::Receiver<Commit>) {
    let mut offset = 0u64;
    let mut batch = Vec::new();
    let mut bytes = Vec::new();
    while let Ok(first) = submitted.recv() {
        batch.push(first);
        batch.extend(submitted.try_iter());
        bytes.clear();
        for commit in &batch {
            bytes.extend_from_slice(&commit.record);
        }
        if offset + bytes.len() as u64 > JOURNAL_SIZE {
            offset = 0;
        }
        let result = file
            .write_all_at(&bytes, offset)
            .and_then(|()| file.sync_data());
        offset += bytes.len() as u64;
        for commit in batch.drain(..) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = commit.durable.send(outcome);
        }
    }
}

/// Idle upstream connections, shared by the sessions.
type Pool = Arc<Mutex<Vec<Upstream>>>;

/// One inbound connection.
struct Session {
    commits: mpsc::Sender<Commit>,
    pool: Pool,
    upstream_port: u16,
}

/// An envelope being received.
#[derive(Default)]
struct Envelope {
    from: Vec<u8>,
    to: Vec<u8>,
}

impl Session {
    /// The dialogue: greeting, commands, content, until QUIT or end of input. The upstream
    /// connection taken for the first message goes back to the pool at the end.
    async fn serve(&self, mut client: TcpStream) -> anyhow::Result<()> {
        client.set_nodelay(true)?;
        client.write_all(b"220 lean.bench ESMTP\r\n").await?;
        let mut input: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut envelope = Envelope::default();
        let mut upstream = None;
        let result = async {
            loop {
                let Some(line) = read_line(&mut client, &mut input).await? else {
                    return Ok(());
                };
                let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                let reply: &[u8] = match verb.as_slice() {
                    b"EHLO" => b"250-lean.bench\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                    b"HELO" => b"250 lean.bench\r\n",
                    b"MAIL" => {
                        envelope.from = path_of(&line);
                        b"250 2.1.0 Ok\r\n"
                    }
                    b"RCPT" => {
                        envelope.to = path_of(&line);
                        b"250 2.1.5 Ok\r\n"
                    }
                    b"DATA" => {
                        client.write_all(b"354 go ahead\r\n").await?;
                        let content = read_content(&mut client, &mut input).await?;
                        self.commit(&envelope, &content).await?;
                        client.write_all(b"250 2.0.0 Ok: queued\r\n").await?;
                        let up = match upstream.as_mut() {
                            Some(up) => up,
                            None => upstream.insert(self.take_upstream().await?),
                        };
                        up.forward(&envelope, &content).await?;
                        continue;
                    }
                    b"QUIT" => {
                        client.write_all(b"221 2.0.0 Bye\r\n").await?;
                        return Ok(());
                    }
                    _ => b"250 2.0.0 Ok\r\n",
                };
                client.write_all(reply).await?;
            }
        }
        .await;
        if let (Some(up), Ok(())) = (upstream, &result)
            && let Ok(mut idle) = self.pool.lock()
        {
            idle.push(up);
        }
        result
    }

    /// Journals the message and waits until it is durable.
    async fn commit(&self, envelope: &Envelope, content: &[u8]) -> anyhow::Result<()> {
        let mut record = Vec::with_capacity(content.len() + 600);
        for part in [&envelope.from[..], &envelope.to[..], content] {
            let len = u32::try_from(part.len()).context("record part too long")?;
            record.extend_from_slice(&len.to_le_bytes());
            record.extend_from_slice(part);
        }
        let (durable, done) = oneshot::channel();
        self.commits
            .send(Commit { record, durable })
            .context("the committer has stopped")?;
        done.await.context("the committer has stopped")??;
        Ok(())
    }

    /// An idle upstream connection from the pool, or a new one.
    async fn take_upstream(&self) -> anyhow::Result<Upstream> {
        let idle = self.pool.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(up) => Ok(up),
            None => Upstream::connect(self.upstream_port).await,
        }
    }
}

/// The path between `<` and `>` of a MAIL or RCPT line.
fn path_of(line: &[u8]) -> Vec<u8> {
    let open = line.iter().position(|&b| b == b'<');
    let close = line.iter().rposition(|&b| b == b'>');
    match (open, close) {
        (Some(o), Some(c)) if o < c => line.get(o + 1..c).unwrap_or_default().to_vec(),
        _ => Vec::new(),
    }
}

/// The next line (CRLF removed), reading more as needed; `None` at end of input.
async fn read_line(stream: &mut TcpStream, input: &mut Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
    loop {
        if let Some(end) = input.windows(2).position(|w| w == b"\r\n") {
            let line = input.drain(..end + 2).take(end).collect();
            return Ok(Some(line));
        }
        anyhow::ensure!(input.len() <= MAX_LINE, "line too long");
        if read_some(stream, input).await? == 0 {
            return Ok(None);
        }
    }
}

/// Reads at most [`READ_CHUNK`] octets onto the end of `input`, as exorelay does. Reading
/// whatever the buffer's capacity had grown to left the end of each 1 MiB message waiting
/// about 40 ms (the delayed-acknowledgement timeout) in one-session runs.
async fn read_some(stream: &mut TcpStream, input: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = stream.read(&mut chunk).await?;
    input.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(n)
}

/// The content up to `CRLF.CRLF`, with the dot-stuffing removed (RFC 5321 §4.5.2).
async fn read_content(stream: &mut TcpStream, input: &mut Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut searched = 0;
    loop {
        // A terminator at the very start (empty content) has no CRLF before its dot.
        if input.starts_with(b".\r\n") {
            input.drain(..3);
            return Ok(Vec::new());
        }
        if let Some(at) = input
            .get(searched..)
            .and_then(|rest| rest.windows(5).position(|w| w == b"\r\n.\r\n"))
        {
            let end = searched + at + 2;
            let content = unstuff(input.get(..end).unwrap_or_default());
            input.drain(..end + 3);
            return Ok(content);
        }
        anyhow::ensure!(input.len() <= MAX_MESSAGE, "message too large");
        searched = input.len().saturating_sub(4);
        anyhow::ensure!(read_some(stream, input).await? > 0, "end of input in DATA");
    }
}

/// Removes the leading dot of every line that starts with one.
fn unstuff(stuffed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stuffed.len());
    for line in stuffed.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// A connection to the sink after its greeting and EHLO.
struct Upstream {
    stream: TcpStream,
    input: Vec<u8>,
}

impl Upstream {
    async fn connect(port: u16) -> anyhow::Result<Upstream> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("cannot connect to the sink on port {port}"))?;
        stream.set_nodelay(true)?;
        let mut up = Upstream {
            stream,
            input: Vec::with_capacity(4096),
        };
        up.expect_replies(1).await?;
        up.stream.write_all(b"EHLO lean.bench\r\n").await?;
        up.expect_replies(1).await?;
        Ok(up)
    }

    /// One flight: MAIL, RCPT, `BDAT n LAST` and the content; then their three replies.
    async fn forward(&mut self, envelope: &Envelope, content: &[u8]) -> anyhow::Result<()> {
        let mut flight = Vec::with_capacity(content.len() + 600);
        flight.extend_from_slice(b"MAIL FROM:<");
        flight.extend_from_slice(&envelope.from);
        flight.extend_from_slice(b">\r\nRCPT TO:<");
        flight.extend_from_slice(&envelope.to);
        flight.extend_from_slice(format!(">\r\nBDAT {} LAST\r\n", content.len()).as_bytes());
        flight.extend_from_slice(content);
        self.stream.write_all(&flight).await?;
        self.expect_replies(3).await
    }

    /// Reads `count` replies; each must be positive (2xx or 3xx).
    async fn expect_replies(&mut self, count: usize) -> anyhow::Result<()> {
        let mut seen = 0;
        while seen < count {
            let Some(line) = read_line(&mut self.stream, &mut self.input).await? else {
                anyhow::bail!("the sink closed the connection");
            };
            let positive = matches!(line.first(), Some(b'2' | b'3'));
            anyhow::ensure!(
                positive,
                "the sink refused: {}",
                String::from_utf8_lossy(&line)
            );
            if line.get(3) != Some(&b'-') {
                seen += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstuffing_removes_one_leading_dot_per_line() {
        for (stuffed, plain) in [
            (&b"a\r\n..b\r\n"[..], &b"a\r\n.b\r\n"[..]),
            (b"..\r\nx.y\r\n", b".\r\nx.y\r\n"),
            (b"", b""),
        ] {
            assert_eq!(unstuff(stuffed), plain);
        }
    }

    #[test]
    fn paths_are_taken_between_angle_brackets() {
        assert_eq!(path_of(b"MAIL FROM:<a@b.c> SIZE=10"), b"a@b.c");
        assert_eq!(path_of(b"MAIL FROM:<>"), b"");
        assert_eq!(path_of(b"RCPT TO:x"), b"");
    }
}
