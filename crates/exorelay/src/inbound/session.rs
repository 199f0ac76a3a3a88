//! Drives one inbound SMTP connection: reads the socket into a buffer, lets the pure
//! `smtp::Session` decide, and performs what it asks — write a reply, upgrade to TLS, stream a
//! message into the spool, make it durable, close. Deadlines (per command, per DATA transfer,
//! per session) are enforced here, as deadlines rather than per-read timeouts, so a client
//! trickling one byte at a time cannot hold a session open (RFC 5321 §4.5.3.2).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtp::{Output, Reply, Session, Transaction};
use spool::{Durable, Envelope, MessageWriter, Spool};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, warn};

use crate::config::{ClientRule, Config};
use crate::inbound::convert;
use crate::inbound::headers;
use crate::inbound::received::{received_header, rfc5322_date};
use crate::metrics;
use crate::policy::relay::{Preflight, RelayPolicy};
use crate::queue::manager::QueueHandle;

/// Bytes read from the socket per read call; the input buffer never grows far beyond it.
const READ_CHUNK: usize = 16 * 1024;

/// What a connection needs from the daemon.
pub struct ConnectionContext {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The spool messages are committed to.
    pub spool: Spool,
    /// The queue manager, told about each message once it is durable.
    pub queue: QueueHandle,
    /// Set while the spool's file system has less room than `max(queue.min_free_space, 1.5 ×
    /// server.max_message_size)` (see `cli/serve.rs`).
    pub low_on_space: std::sync::atomic::AtomicBool,
}

/// Why the driver loop stopped.
enum Exit {
    /// The session is over; the connection can be closed.
    Closed,
    /// The client asked for TLS and the session agreed: the stream must be upgraded.
    StartTls,
}

/// A message being received: its transaction and where its content goes.
struct OpenMessage {
    transaction: Transaction,
    /// Pre-flight's rewrite and warnings for this message.
    preflight: Preflight,
    writer: MessageWriter,
    /// Set when writing content failed; the message is then refused with 451 at its end.
    write_failed: bool,
    /// The header section held back for repair, until its end is seen.
    held_headers: Option<Vec<u8>>,
}

impl OpenMessage {
    /// Appends content, holding the header section back until it is complete.
    fn write(
        &mut self,
        bytes: &[u8],
        peer: &Peer<'_>,
        ctx: &ConnectionContext,
    ) -> std::io::Result<()> {
        let Some(held) = self.held_headers.as_mut() else {
            return self.writer.write_all(bytes);
        };
        let searched = held.len().saturating_sub(3);
        held.extend_from_slice(bytes);
        let end = held
            .get(searched..)
            .and_then(|tail| tail.windows(4).position(|w| w == b"\r\n\r\n"))
            .map(|p| searched + p + 4);
        match end {
            Some(end) => {
                let held = self.held_headers.take().unwrap_or_default();
                let (section, rest) = held.split_at(end.min(held.len()));
                self.write_repaired(section, peer, ctx)?;
                self.writer.write_all(rest)
            }
            None if held.len() > headers::MAX_HEADER_SECTION => {
                let held = self.held_headers.take().unwrap_or_default();
                self.writer.write_all(&held)
            }
            None => Ok(()),
        }
    }

    /// Writes whatever is still held back (a message that is all header section).
    fn finish(&mut self, peer: &Peer<'_>, ctx: &ConnectionContext) -> std::io::Result<()> {
        match self.held_headers.take() {
            Some(held) => self.write_repaired(&held, peer, ctx),
            None => Ok(()),
        }
    }

    fn write_repaired(
        &mut self,
        section: &[u8],
        peer: &Peer<'_>,
        ctx: &ConnectionContext,
    ) -> std::io::Result<()> {
        let rules = headers::RepairRules {
            add_missing: peer.rule.repair_headers,
            strip_spoofed_display_name: peer.rule.repair_from,
        };
        let sender = self.sender();
        let facts = headers::MessageFacts {
            date: &rfc5322_date(now_unix()),
            queue_id: &self.writer.id().to_string(),
            hostname: &ctx.config.server.hostname,
            sender: &sender,
        };
        let repaired = headers::repair(section, rules, &facts);
        self.writer.write_all(&repaired)
    }

    /// The envelope sender the message will be delivered from.
    fn sender(&self) -> String {
        self.preflight.rewrite.clone().unwrap_or_else(|| {
            self.transaction
                .mail_from
                .mailbox()
                .map(ToString::to_string)
                .unwrap_or_default()
        })
    }
}

/// Per-connection facts used in logs, the `Received:` header and the envelope.
struct Peer<'a> {
    addr: SocketAddr,
    rule: &'a ClientRule,
    session_id: u64,
}

/// Serves one connection from a client covered by `rule`, from greeting to close.
pub async fn serve<S>(
    mut stream: S,
    addr: SocketAddr,
    rule: &ClientRule,
    session_id: u64,
    ctx: &ConnectionContext,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let server = &ctx.config.server;
    let mut session = Session::new(session_config(&ctx.config, false));
    let peer = Peer {
        addr,
        rule,
        session_id,
    };
    let session_deadline = Instant::now() + server.session_timeout;
    let mut input = Vec::with_capacity(READ_CHUNK);
    write_reply(&mut stream, &session.greeting()).await?;
    match drive(
        &mut stream,
        &mut session,
        &mut input,
        &peer,
        ctx,
        session_deadline,
    )
    .await?
    {
        Exit::Closed => return stream.shutdown().await,
        Exit::StartTls => {}
    }
    let Some(tls) = server.tls.clone() else {
        return Ok(());
    };
    write_reply(&mut stream, &Reply::ready_for_tls()).await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake = timeout_at(
        Instant::now() + server.command_timeout,
        acceptor.accept(stream),
    );
    let mut tls_stream = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            info!(session = session_id, client = %addr, "TLS handshake failed: {e}");
            return Ok(());
        }
        Err(_) => {
            info!(session = session_id, client = %addr, "TLS handshake timed out");
            return Ok(());
        }
    };
    // Nothing read before the handshake may be used after it (RFC 3207 §4.2; the session only
    // agreed to STARTTLS with an empty buffer, this keeps it that way).
    input.clear();
    session.tls_established();
    drive(
        &mut tls_stream,
        &mut session,
        &mut input,
        &peer,
        ctx,
        session_deadline,
    )
    .await?;
    tls_stream.shutdown().await
}

/// The session limits for the pure state machine.
fn session_config(config: &Config, tls_active: bool) -> smtp::ServerConfig {
    let s = &config.server;
    smtp::ServerConfig {
        hostname: s.hostname.clone(),
        max_message_size: s.max_message_size,
        max_recipients: s.max_recipients,
        starttls_offered: s.tls.is_some() && !tls_active,
        max_errors: s.max_errors,
        max_junk_commands: 100,
        max_received_headers: s.max_received_headers,
        auth_offered: false,
    }
}

/// Runs the session over `stream` until it closes or asks for TLS.
async fn drive<S>(
    stream: &mut S,
    session: &mut Session,
    input: &mut Vec<u8>,
    peer: &Peer<'_>,
    ctx: &ConnectionContext,
    session_deadline: Instant,
) -> std::io::Result<Exit>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let server = &ctx.config.server;
    let mut policy = RelayPolicy::new(peer.rule, &ctx.config, &ctx.low_on_space);
    let mut open: Option<OpenMessage> = None;
    let mut replies = Vec::new();
    let mut deadline = (Instant::now() + server.command_timeout).min(session_deadline);
    loop {
        match session.step(input, &mut policy) {
            Output::Send(reply) => {
                // Replies are collected and written when the session next waits for input, so
                // a pipelined group is answered with one write (RFC 2920).
                log_refusal(peer, &reply);
                reply.write_to(&mut replies);
                if open.is_none() {
                    deadline = (Instant::now() + server.command_timeout).min(session_deadline);
                }
            }
            Output::NeedInput => {
                flush_replies(stream, &mut replies).await?;
                if !read_more(stream, input, deadline).await? {
                    if deadline_passed(deadline) {
                        let reply = session.timed_out();
                        info!(session = peer.session_id, client = %peer.addr, "timeout: {reply}");
                        write_reply(stream, &reply).await?;
                    } else if open.is_some() {
                        info!(session = peer.session_id, client = %peer.addr, "connection lost during message transfer; partial message discarded");
                    }
                    return Ok(Exit::Closed);
                }
            }
            Output::StartTls => {
                flush_replies(stream, &mut replies).await?;
                return Ok(Exit::StartTls);
            }
            Output::MessageBegin(transaction) => {
                // The client waits for the reply to DATA (or its BDAT chunk is not read) while
                // the queue is too far behind. Replies to what it pipelined before (the last
                // message's 250 among them) go out first, not after the pause: a session only
                // waits after it has flushed (a backlog that builds up in between is simply not
                // waited for this time).
                let paused = if ctx.queue.backlogged() {
                    flush_replies(stream, &mut replies).await?;
                    ctx.queue.admit().await
                } else {
                    Duration::ZERO
                };
                if !paused.is_zero() {
                    debug!(
                        session = peer.session_id,
                        ?paused,
                        "in-flow delay: the queue drains slower than mail arrives"
                    );
                }
                deadline = (Instant::now() + server.data_timeout).min(session_deadline);
                open = begin_message(transaction, policy.take_preflight(), peer, ctx)
                    .inspect_err(|e| {
                        warn!(session = peer.session_id, "cannot open spool file: {e}")
                    })
                    .ok();
            }
            Output::MessageContent(bytes) => {
                if let Some(message) = open.as_mut().filter(|m| !m.write_failed)
                    && let Err(e) = message.write(&bytes, peer, ctx)
                {
                    warn!(session = peer.session_id, "spool write failed: {e}");
                    message.write_failed = true;
                }
            }
            Output::MessageEnd => {
                if let Some(message) = open.as_mut()
                    && let Err(e) = message.finish(peer, ctx)
                {
                    warn!(session = peer.session_id, "spool write failed: {e}");
                    message.write_failed = true;
                }
                let result = match open.take() {
                    Some(message) if !message.write_failed => store(message, peer, ctx).await,
                    _ => Err(Reply::storage_failed()),
                };
                session.message_stored(result);
            }
            Output::MessageAbort => {
                open = None;
            }
            Output::Close => {
                flush_replies(stream, &mut replies).await?;
                return Ok(Exit::Closed);
            }
        }
    }
}

fn deadline_passed(deadline: Instant) -> bool {
    Instant::now() >= deadline
}

/// Reads more input before `deadline`. `Ok(false)` means the peer closed or the deadline passed.
pub async fn read_more<S>(
    stream: &mut S,
    input: &mut Vec<u8>,
    deadline: Instant,
) -> std::io::Result<bool>
where
    S: AsyncRead + Unpin,
{
    input.reserve(READ_CHUNK);
    match timeout_at(deadline, stream.read_buf(input)).await {
        Ok(Ok(n)) => Ok(n > 0),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Writes the collected replies, if any, in one write.
async fn flush_replies<S>(stream: &mut S, replies: &mut Vec<u8>) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    if replies.is_empty() {
        return Ok(());
    }
    stream.write_all(replies).await?;
    stream.flush().await?;
    replies.clear();
    Ok(())
}

/// Writes one reply and flushes it.
pub async fn write_reply<S>(stream: &mut S, reply: &Reply) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(&reply.to_bytes()).await?;
    stream.flush().await
}

fn log_refusal(peer: &Peer<'_>, reply: &Reply) {
    if reply.is_permanent() || reply.is_transient() {
        metrics::REFUSALS.inc();
        info!(
            session = peer.session_id,
            client = %peer.addr,
            rule = %peer.rule.name,
            "refused: {reply}"
        );
    }
}

/// Opens a spool writer and writes our `Received:` trace header first (RFC 5321 §4.4).
fn begin_message(
    transaction: Transaction,
    preflight: Preflight,
    peer: &Peer<'_>,
    ctx: &ConnectionContext,
) -> std::io::Result<OpenMessage> {
    let mut writer = ctx.spool.create().map_err(std::io::Error::other)?;
    let header = received_header(
        &transaction,
        peer.addr.ip(),
        &ctx.config.server.hostname,
        &writer.id().to_string(),
        now_unix(),
    );
    writer.write_all(header.as_bytes())?;
    if preflight.rewrite.is_some() {
        let original = transaction
            .mail_from
            .mailbox()
            .map(ToString::to_string)
            .unwrap_or_default();
        writer.write_all(format!("X-Exorelay-Original-Sender: <{original}>\r\n").as_bytes())?;
    }
    Ok(OpenMessage {
        transaction,
        preflight,
        writer,
        write_failed: false,
        held_headers: (peer.rule.repair_headers || peer.rule.repair_from).then(Vec::new),
    })
}

/// Makes the message durable; only then is a 250 built.
async fn store(
    message: OpenMessage,
    peer: &Peer<'_>,
    ctx: &ConnectionContext,
) -> Result<Reply, Reply> {
    let envelope = envelope_for(&message, peer);
    let recipients = envelope.recipients.len();
    let size = message.writer.bytes_written();
    match ctx.spool.commit(message.writer, envelope).await {
        Ok(mut durable) => {
            info!(
                session = peer.session_id,
                client = %peer.addr,
                rule = %peer.rule.name,
                id = %durable.id(),
                size,
                recipients,
                "queued"
            );
            metrics::ACCEPTED.inc();
            ctx.queue
                .queued(durable.envelope().clone(), durable.take_content());
            Ok(accepted(durable))
        }
        Err(e) => {
            warn!(session = peer.session_id, client = %peer.addr, "spool commit failed: {e}");
            Err(Reply::storage_failed())
        }
    }
}

/// The 250 to end-of-data. It takes the spool's proof by value, so it cannot be built for a
/// message that is not on disk.
fn accepted(durable: Durable) -> Reply {
    Reply::queued(&durable.id().to_string())
}

fn envelope_for(message: &OpenMessage, peer: &Peer<'_>) -> Envelope {
    let t = &message.transaction;
    let now = now_unix();
    let original = t
        .mail_from
        .mailbox()
        .map(ToString::to_string)
        .unwrap_or_default();
    Envelope {
        version: spool::ENVELOPE_VERSION,
        id: message.writer.id(),
        received_at: now,
        client_ip: crate::config::canonical_ip(peer.addr.ip()).to_string(),
        client_name: peer.rule.name.clone(),
        helo: t.helo.clone(),
        tls: t.tls,
        mail_from: message.sender(),
        original_mail_from: message.preflight.rewrite.is_some().then_some(original),
        attempts: 0,
        next_attempt: now,
        size: message.writer.bytes_written(),
        content_crc32: None,
        held_reason: None,
        params: convert::mail_parameters(&t.mail_params),
        recipients: t
            .recipients
            .iter()
            .map(|(to, params)| convert::recipient(to, params))
            .collect(),
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
