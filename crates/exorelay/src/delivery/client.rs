//! One SMTP client connection to an upstream: connect with a deadline, EHLO, STARTTLS presenting
//! the client certificate and verifying the server's, EHLO again, then any number of message
//! transactions (RSET between when one was left open), and QUIT. The protocol decisions are
//! `smtp::client`'s; this module does the I/O. With `tls = "required"` nothing but EHLO and
//! STARTTLS is ever sent in plaintext: a missing STARTTLS, a refusal, bytes pipelined behind the
//! `220` (response injection, security.md §4) or a failed handshake end the connection and defer.

use std::time::Duration;

use smtp::client::{
    Capabilities, ContentMode, OutgoingEnvelope, ReplyParser, Transaction, TransactionOutcome,
    TxStep, command_line,
};
use smtp::stuff::DotStuffer;
use smtp::{EnhancedCode, Reply};
use spool::Envelope;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::delivery::route::{self, Route, Target};

/// RFC 5321 §4.5.3.2 client timeouts, and ours for connecting and the TLS handshake.
mod timeouts {
    use std::time::Duration;
    pub const CONNECT: Duration = Duration::from_secs(30);
    pub const GREETING: Duration = Duration::from_secs(300);
    pub const COMMAND: Duration = Duration::from_secs(300);
    pub const TLS_HANDSHAKE: Duration = Duration::from_secs(60);
    pub const DATA_BLOCK: Duration = Duration::from_secs(180);
    pub const FINAL: Duration = Duration::from_secs(600);
    pub const QUIT: Duration = Duration::from_secs(10);
}

/// Bytes of content read from the spool per write.
const CONTENT_CHUNK: usize = 64 * 1024;
/// Room made for each read of replies.
const REPLY_READ: usize = 4096;

/// Why a connection failed; every variant defers the message (transient by nature).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// No address could be found or connected to.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server's greeting or EHLO reply was not positive.
    #[error("{phase} refused: {reply}")]
    Refused {
        /// Which step.
        phase: &'static str,
        /// The server's reply.
        reply: Reply,
    },
    /// TLS is required but the server does not offer STARTTLS.
    #[error("TLS required but the server does not offer STARTTLS; nothing was sent in plaintext")]
    NoStartTls,
    /// The server sent bytes after its `220` to STARTTLS.
    #[error("bytes after the STARTTLS 220 reply (response injection); connection dropped")]
    StartTlsInjection,
    /// The TLS handshake or certificate verification failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The server's reply could not be parsed or broke a bound.
    #[error("bad reply: {0}")]
    Protocol(String),
    /// No reply within the phase's deadline.
    #[error("timeout waiting for the reply to {0}")]
    Timeout(&'static str),
    /// The connection broke.
    #[error("connection error: {0}")]
    Io(String),
    /// The spool could not be read.
    #[error("cannot read the message: {0}")]
    Spool(String),
    /// The delivery task ended without reporting an outcome (it panicked).
    #[error("the delivery task ended without a result")]
    Abandoned,
}

impl DeliveryError {
    /// The enhanced status code to record: 4.7.x for TLS failures, 4.4.x for network ones.
    pub fn enhanced(&self) -> EnhancedCode {
        match self {
            DeliveryError::NoStartTls | DeliveryError::StartTlsInjection => {
                EnhancedCode::new(4, 7, 10)
            }
            DeliveryError::Handshake(_) => EnhancedCode::new(4, 7, 5),
            DeliveryError::Refused { reply, .. } => {
                reply.enhanced().map_or(EnhancedCode::new(4, 4, 0), |e| {
                    EnhancedCode::new(4, e.subject, e.detail)
                })
            }
            DeliveryError::Timeout(_) => EnhancedCode::new(4, 4, 2),
            DeliveryError::Spool(_) | DeliveryError::Abandoned => EnhancedCode::new(4, 3, 0),
            _ => EnhancedCode::new(4, 4, 1),
        }
    }

    /// The error as a transient reply value, for per-recipient records and logs.
    pub fn as_reply(&self) -> Reply {
        Reply::new(451, Some(self.enhanced()), self.to_string())
    }
}

impl From<std::io::Error> for DeliveryError {
    fn from(e: std::io::Error) -> Self {
        DeliveryError::Io(e.to_string())
    }
}

/// A stream the connection can talk over: plain TCP or TLS on top of it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Reads replies from a stream with deadlines.
struct Replies {
    input: Vec<u8>,
    parser: ReplyParser,
}

impl Replies {
    fn new() -> Self {
        Replies {
            input: Vec::with_capacity(REPLY_READ),
            parser: ReplyParser::new(),
        }
    }

    async fn read<S: AsyncRead + Unpin + ?Sized>(
        &mut self,
        stream: &mut S,
        phase: &'static str,
        limit: Duration,
    ) -> Result<Reply, DeliveryError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.parser.parse(&mut self.input) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(e) => return Err(DeliveryError::Protocol(e.to_string())),
            }
            self.input.reserve(REPLY_READ);
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut self.input)).await {
                Ok(Ok(0)) => {
                    return Err(DeliveryError::Io(format!(
                        "connection closed during {phase}"
                    )));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(DeliveryError::Timeout(phase)),
            }
        }
    }
}

/// An established session with an upstream, ready for transactions.
pub struct Connection {
    io: Box<dyn Io>,
    replies: Replies,
    caps: Capabilities,
    chunking: bool,
    /// The host connected to (for logs and `Remote-MTA`).
    pub host: String,
    /// Whether the session is encrypted.
    pub tls: bool,
}

/// Writes `bytes` and flushes them. The flush matters with TLS: tokio-rustls accepts plaintext
/// into its record buffer even when the socket is momentarily full, and without a flush those
/// last bytes (the end of a BDAT chunk, the `.` of DATA) would wait while we wait for a reply.
async fn write_all<S: AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    bytes: &[u8],
    phase: &'static str,
) -> Result<(), DeliveryError> {
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match timeout(timeouts::DATA_BLOCK, written).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(DeliveryError::Timeout(phase)),
    }
}

/// Sends EHLO (HELO when EHLO is refused and TLS is not required) and returns the capabilities.
async fn hello<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    replies: &mut Replies,
    helo: &str,
) -> Result<Capabilities, DeliveryError> {
    let line = command_line("EHLO", helo).map_err(|e| DeliveryError::Protocol(e.to_string()))?;
    write_all(stream, &line, "EHLO").await?;
    let reply = replies.read(stream, "EHLO", timeouts::COMMAND).await?;
    if !reply.is_positive() {
        return Err(DeliveryError::Refused {
            phase: "EHLO",
            reply,
        });
    }
    Ok(Capabilities::from_ehlo(&reply))
}

impl Connection {
    /// Connects to the route's first reachable target and sets the session up.
    pub async fn open(route: &Route, helo: &str) -> Result<Connection, DeliveryError> {
        let targets = route::resolve(route)
            .await
            .map_err(DeliveryError::Connect)?;
        let mut last_error =
            DeliveryError::Connect(format!("no address for {}", route.upstream.host));
        for target in targets {
            let connect = connect_from(route.upstream.bind_address, target.addr);
            match timeout(timeouts::CONNECT, connect).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    return Connection::establish(tcp, &target, route, helo).await;
                }
                Ok(Err(e)) => last_error = DeliveryError::Connect(format!("{}: {e}", target.addr)),
                Err(_) => {
                    last_error =
                        DeliveryError::Connect(format!("{}: connect timed out", target.addr))
                }
            }
        }
        Err(last_error)
    }

    async fn establish(
        mut tcp: TcpStream,
        target: &Target,
        route: &Route,
        helo: &str,
    ) -> Result<Connection, DeliveryError> {
        let mut replies = Replies::new();
        let greeting = replies
            .read(&mut tcp, "greeting", timeouts::GREETING)
            .await?;
        if greeting.code() != 220 {
            return Err(DeliveryError::Refused {
                phase: "greeting",
                reply: greeting,
            });
        }
        let caps = hello(&mut tcp, &mut replies, helo).await?;
        let chunking = route.upstream.chunking;
        let Some(tls_config) = &route.tls else {
            return Ok(Connection {
                io: Box::new(tcp),
                replies,
                caps,
                chunking,
                host: target.host.clone(),
                tls: false,
            });
        };
        if !caps.starttls {
            return Err(DeliveryError::NoStartTls);
        }
        write_all(&mut tcp, b"STARTTLS\r\n", "STARTTLS").await?;
        let reply = replies
            .read(&mut tcp, "STARTTLS", timeouts::COMMAND)
            .await?;
        if reply.code() != 220 {
            return Err(DeliveryError::Refused {
                phase: "STARTTLS",
                reply,
            });
        }
        // Whatever arrived with or after the 220 was sent in plaintext and must never be read
        // as a reply after the handshake (CVE-2021-38371 class).
        if !replies.input.is_empty() {
            return Err(DeliveryError::StartTlsInjection);
        }
        let name = route::server_name(route, target).map_err(DeliveryError::Handshake)?;
        let connector = tokio_rustls::TlsConnector::from(tls_config.clone());
        let mut tls = match timeout(timeouts::TLS_HANDSHAKE, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(DeliveryError::Handshake(e.to_string())),
            Err(_) => return Err(DeliveryError::Timeout("TLS handshake")),
        };
        let mut replies = Replies::new();
        let caps = hello(&mut tls, &mut replies, helo).await?;
        Ok(Connection {
            io: Box::new(tls),
            replies,
            caps,
            chunking,
            host: target.host.clone(),
            tls: true,
        })
    }

    /// Sends one message; `Err` means the connection failed and must be dropped (every
    /// recipient not yet answered is deferred by the caller).
    pub async fn deliver(
        &mut self,
        envelope: &Envelope,
        content: Content,
    ) -> Result<TransactionOutcome, DeliveryError> {
        if !self.caps.accepts_size(envelope.size) {
            let reply = Reply::new(
                552,
                Some(EnhancedCode::new(5, 3, 4)),
                format!(
                    "message of {} octets exceeds the upstream's SIZE limit",
                    envelope.size
                ),
            );
            return Ok(refuse_all(envelope, reply));
        }
        let mode = if self.chunking && self.caps.chunking {
            ContentMode::Bdat {
                size: envelope.size,
            }
        } else {
            ContentMode::Data
        };
        let outgoing = outgoing_envelope(envelope, &self.caps);
        let (mut tx, mut step) = Transaction::start(outgoing, mode, self.caps.pipelining)
            .map_err(|e| DeliveryError::Protocol(e.to_string()))?;
        let mut content = Some(content);
        loop {
            step = match step {
                TxStep::Send(bytes) => {
                    if tx.content_follows_command() {
                        let file = take_content(&mut content)?;
                        send_raw(&mut self.io, bytes, file, envelope.size).await?;
                    } else {
                        write_all(&mut self.io, &bytes, "command").await?;
                    }
                    tx.on_reply(self.next_reply(&tx).await?)
                }
                TxStep::ReadReply => tx.on_reply(self.next_reply(&tx).await?),
                TxStep::SendContent => {
                    let file = take_content(&mut content)?;
                    send_stuffed(&mut self.io, file, envelope.size).await?;
                    tx.on_reply(self.next_reply(&tx).await?)
                }
                TxStep::Done(outcome) => {
                    if outcome.needs_reset {
                        self.reset().await?;
                    }
                    return Ok(outcome);
                }
            };
        }
    }

    /// Reads the transaction's next reply, with the longer deadline when it answers the
    /// content.
    async fn next_reply(&mut self, tx: &Transaction) -> Result<Reply, DeliveryError> {
        if tx.expects_final_reply() {
            self.replies
                .read(&mut self.io, "end of data", timeouts::FINAL)
                .await
        } else {
            self.replies
                .read(&mut self.io, "command", timeouts::COMMAND)
                .await
        }
    }

    /// RSET, so the next transaction starts clean.
    async fn reset(&mut self) -> Result<(), DeliveryError> {
        write_all(&mut self.io, b"RSET\r\n", "RSET").await?;
        let reply = self
            .replies
            .read(&mut self.io, "RSET", timeouts::COMMAND)
            .await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(DeliveryError::Refused {
                phase: "RSET",
                reply,
            })
        }
    }

    /// Says goodbye politely; errors are irrelevant by now.
    pub async fn quit(mut self) {
        if write_all(&mut self.io, b"QUIT\r\n", "QUIT").await.is_ok() {
            let _ = self
                .replies
                .read(&mut self.io, "QUIT", timeouts::QUIT)
                .await;
        }
        let _ = self.io.shutdown().await;
    }
}

/// Connects to `to`, from `from` when a local address is configured.
async fn connect_from(from: Option<IpAddr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(local) = from else {
        return TcpStream::connect(to).await;
    };
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(to).await
}

/// Every recipient refused with the same reply (a local decision before sending).
fn refuse_all(envelope: &Envelope, reply: Reply) -> TransactionOutcome {
    TransactionOutcome {
        mail_refused: Some(reply.clone()),
        recipients: vec![
            reply;
            envelope
                .recipients
                .iter()
                .filter(|r| !r.state.is_final())
                .count()
        ],
        delivered: false,
        needs_reset: false,
    }
}

/// The envelope as sent: only recipients still pending or deferred, ESMTP parameters only where
/// the upstream offers the extension.
fn outgoing_envelope(envelope: &Envelope, caps: &Capabilities) -> OutgoingEnvelope {
    let p = &envelope.params;
    let mut mail_params = vec![format!("SIZE={}", envelope.size)];
    if let Some(body) = p.body.as_deref().filter(|_| caps.eight_bit_mime) {
        mail_params.push(format!("BODY={body}"));
    }
    if p.smtputf8 && caps.smtputf8 {
        mail_params.push("SMTPUTF8".into());
    }
    if caps.dsn {
        if let Some(ret) = &p.ret {
            mail_params.push(format!("RET={ret}"));
        }
        if let Some(envid) = &p.envid {
            mail_params.push(format!("ENVID={envid}"));
        }
    }
    let recipients = envelope
        .recipients
        .iter()
        .filter(|r| !r.state.is_final())
        .map(|r| {
            let mut params = Vec::new();
            if caps.dsn {
                if let Some(notify) = &r.notify {
                    params.push(format!("NOTIFY={notify}"));
                }
                if let Some(orcpt) = &r.orcpt {
                    params.push(format!("ORCPT={orcpt}"));
                }
            }
            (r.address.clone(), params.join(" "))
        })
        .collect();
    OutgoingEnvelope {
        mail_from: envelope.mail_from.clone(),
        mail_params: mail_params.join(" "),
        recipients,
    }
}

/// Where a message's content comes from.
#[derive(Debug)]
pub enum Content {
    /// The spool file, read from the page cache 64 KiB at a time: a plain read costs less
    /// than a hop to tokio's blocking pool per piece.
    File(std::fs::File),
    /// The copy the spool kept of a small message just committed.
    Memory(std::io::Cursor<Vec<u8>>),
}

impl Content {
    /// Appends up to `max` more octets to `out` and returns how many (0 at the end): straight
    /// from the copy in memory, or with one read of the file into `out`'s new room, so that
    /// no buffer in between is filled and copied again.
    fn append_to(&mut self, out: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
        match self {
            Content::Memory(cursor) => {
                let bytes = cursor.get_ref();
                let start =
                    usize::try_from(cursor.position()).map_or(bytes.len(), |p| p.min(bytes.len()));
                let end = start.saturating_add(max).min(bytes.len());
                out.extend_from_slice(bytes.get(start..end).unwrap_or_default());
                cursor.set_position(end as u64);
                Ok(end - start)
            }
            Content::File(file) => {
                let start = out.len();
                out.resize(start.saturating_add(max), 0);
                let read = std::io::Read::read(file, out.get_mut(start..).unwrap_or_default());
                out.truncate(start + read.as_ref().map_or(0, |&n| n));
                read
            }
        }
    }
}

/// The content, which goes out once per transaction.
fn take_content(content: &mut Option<Content>) -> Result<Content, DeliveryError> {
    content
        .take()
        .ok_or(DeliveryError::Protocol("content sent twice".into()))
}

/// Appends the next piece of the content, of at most `max` octets, to `out`.
fn append_piece(
    content: &mut Content,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<usize, DeliveryError> {
    content
        .append_to(out, max)
        .map_err(|e| DeliveryError::Spool(e.to_string()))
}

/// Read size for content of `size` octets: all of it in one read (and the next read finds
/// the end), up to [`CONTENT_CHUNK`].
fn chunk_len(size: u64) -> usize {
    usize::try_from(size.saturating_add(1)).map_or(CONTENT_CHUNK, |n| n.min(CONTENT_CHUNK))
}

/// Streams the content dot-stuffed, ending with the terminator (DATA). Each chunk is written
/// once the next read shows whether more follows, so a message that fits one chunk goes out
/// with its terminator in a single write.
async fn send_stuffed(
    io: &mut Box<dyn Io>,
    mut file: Content,
    size: u64,
) -> Result<(), DeliveryError> {
    let mut stuffer = DotStuffer::new();
    let chunk = chunk_len(size);
    let mut piece = Vec::with_capacity(chunk);
    let mut out = Vec::with_capacity(chunk + chunk / 32 + 5);
    loop {
        piece.clear();
        if append_piece(&mut file, &mut piece, chunk)? == 0 {
            stuffer.finish(&mut out);
            return write_all(io, &out, "end of data").await;
        }
        if !out.is_empty() {
            write_all(io, &out, "data").await?;
            out.clear();
        }
        stuffer.push(&piece, &mut out);
    }
}

/// Writes `commands` (ending with `BDAT n LAST`, after MAIL and RCPT when they are pipelined
/// with it) and streams the content as is (one chunk) behind them: the commands go out with
/// the first piece of content, in one write. Content that is not the `size` octets the
/// command announced is an error before anything past `size` is sent: the server would read
/// the excess as commands, or wait for the rest, so the connection must be dropped.
async fn send_raw(
    io: &mut Box<dyn Io>,
    commands: Vec<u8>,
    mut file: Content,
    size: u64,
) -> Result<(), DeliveryError> {
    let chunk = chunk_len(size);
    let mut out = commands;
    let mut read: u64 = 0;
    loop {
        let n = append_piece(&mut file, &mut out, chunk)?;
        if n == 0 {
            break;
        }
        read = read.saturating_add(n as u64);
        if read > size {
            return Err(wrong_size(size, read));
        }
        write_all(io, &out, "BDAT").await?;
        out.clear();
    }
    if read != size {
        return Err(wrong_size(size, read));
    }
    if out.is_empty() {
        Ok(())
    } else {
        // Empty content: the commands alone.
        write_all(io, &out, "BDAT").await
    }
}

/// The spool's content differs in length from the size the envelope (and BDAT) gave.
fn wrong_size(size: u64, read: u64) -> DeliveryError {
    DeliveryError::Spool(format!(
        "the content has {}{read} octets where its envelope says {size}",
        if read > size { "at least " } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// A connection that records every write separately and never has input.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn memory(bytes: &[u8]) -> Content {
        Content::Memory(std::io::Cursor::new(bytes.to_vec()))
    }

    /// Content sent as (writes, bytes of all writes joined).
    async fn sent(
        send: impl AsyncFnOnce(&mut Box<dyn Io>) -> Result<(), DeliveryError>,
    ) -> (usize, Vec<u8>) {
        let recorder = Recorder::default();
        let mut io: Box<dyn Io> = Box::new(recorder.clone());
        assert!(send(&mut io).await.is_ok());
        let writes = recorder.writes();
        (writes.len(), writes.concat())
    }

    #[tokio::test]
    async fn small_content_goes_out_in_one_write_with_its_terminator_or_command() {
        let content = b"Subject: x\r\n\r\n.dot\r\nend\r\n";
        let size = content.len() as u64;
        let (writes, bytes) = sent(async |io| send_stuffed(io, memory(content), size).await).await;
        assert_eq!(writes, 1);
        assert_eq!(bytes, b"Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n");

        let command = b"BDAT 25 LAST\r\n".to_vec();
        let (writes, bytes) =
            sent(async |io| send_raw(io, command.clone(), memory(content), size).await).await;
        assert_eq!(writes, 1);
        assert_eq!(bytes, [command.as_slice(), content].concat());
    }

    #[tokio::test]
    async fn large_and_empty_content_arrive_whole() {
        let large: Vec<u8> = b"0123456789abcdef\r\n".repeat(10_000);
        let size = large.len() as u64;
        let (writes, bytes) = sent(async |io| send_stuffed(io, memory(&large), size).await).await;
        assert!(writes > 1, "{writes}");
        assert_eq!(bytes, [large.as_slice(), b".\r\n"].concat());
        let command = b"BDAT 180000 LAST\r\n".to_vec();
        let (_, bytes) =
            sent(async |io| send_raw(io, command.clone(), memory(&large), size).await).await;
        assert_eq!(bytes, [command.as_slice(), large.as_slice()].concat());

        let (writes, bytes) = sent(async |io| send_stuffed(io, memory(b""), 0).await).await;
        assert_eq!((writes, bytes.as_slice()), (1, b".\r\n".as_slice()));
        let command = b"BDAT 0 LAST\r\n".to_vec();
        let (writes, bytes) =
            sent(async |io| send_raw(io, command.clone(), memory(b""), 0).await).await;
        assert_eq!((writes, bytes), (1, command));
    }

    #[tokio::test]
    async fn content_from_a_file_goes_out_as_from_memory() {
        let large: Vec<u8> = b".0123456789abcdef\r\n".repeat(10_000);
        let size = large.len() as u64;
        let file = || {
            let mut file = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut file, &large).unwrap();
            std::io::Seek::rewind(&mut file).unwrap();
            Content::File(file)
        };
        let (writes, bytes) = sent(async |io| send_stuffed(io, file(), size).await).await;
        let expected = sent(async |io| send_stuffed(io, memory(&large), size).await).await;
        assert_eq!((writes, &bytes), (expected.0, &expected.1));
        assert!(writes > 1, "{writes}");
        let command = b"BDAT 190000 LAST\r\n".to_vec();
        let (_, bytes) = sent(async |io| send_raw(io, command.clone(), file(), size).await).await;
        assert_eq!(bytes, [command.as_slice(), large.as_slice()].concat());
    }

    #[tokio::test]
    async fn content_of_another_size_than_announced_is_refused_before_the_excess() {
        let command = b"BDAT 5 LAST\r\n".to_vec();
        for (content, sends) in [(&b"0123456789"[..], 0), (&b"012"[..], 1)] {
            let recorder = Recorder::default();
            let mut io: Box<dyn Io> = Box::new(recorder.clone());
            let result = send_raw(&mut io, command.clone(), memory(content), 5).await;
            assert!(matches!(result, Err(DeliveryError::Spool(_))), "{result:?}");
            // Longer: nothing past the 5 octets goes out; shorter: what there was.
            assert_eq!(recorder.writes().len(), sends);
        }
    }
}
