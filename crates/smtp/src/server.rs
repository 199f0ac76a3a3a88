//! The server session: the state machine of one inbound SMTP connection.
//!
//! The daemon reads socket bytes into a buffer and calls [`Session::step`],
//! which consumes from the front of that buffer and answers with one
//! [`Output`] at a time: send a reply, read more, start TLS, open/append/finish/
//! abort a message, close. The session decides everything SMTP: command order
//! (RFC 5321 §4.1.4), pipelining (RFC 2920), DATA and BDAT framing (RFC 5321
//! §4.1.1.4, RFC 3030), STARTTLS resets (RFC 3207 §4.2) and the limits of
//! security.md. It asks a [`Policy`] whether a sender or recipient may relay,
//! and leaves sockets, TLS, storage, timers and logging to the daemon.
//!
//! Choices where the RFCs leave room, all documented on [`Session::step`]:
//! DATA without any RCPT is `503 5.5.1`, DATA after every RCPT was refused is
//! `554 5.5.1` (RFC 5321 §3.3); any bytes already buffered behind DATA or
//! STARTTLS close the session with `554 5.5.0` (security.md §2, §3); the reply
//! that takes the error count past `max_errors` is replaced by `421 4.4.2`.

use std::collections::VecDeque;

use crate::address::{ForwardPath, ReversePath};
use crate::command::{Command, parse_command};
use crate::data::{BdatDecoder, BdatEvent, DataDecoder, DataEvent, DataLimits, DataOutcome};
use crate::line::{COMMAND_LINE_LIMIT, Line, LineReader};
use crate::params::{Body, MailParams, RcptParams};
use crate::reply::Reply;

/// Settings of one listener, fixed for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Our host name, used in the greeting and in EHLO/QUIT replies.
    pub hostname: String,
    /// Largest message in octets, advertised as `SIZE` (RFC 1870).
    pub max_message_size: u64,
    /// Recipients per transaction before `452 4.5.3` (RFC 5321 §4.5.3.1.8
    /// asks for at least 100).
    pub max_recipients: usize,
    /// The listener has a certificate and TLS is not yet active: advertise
    /// and accept STARTTLS.
    pub starttls_offered: bool,
    /// 4xx/5xx replies tolerated before `421 4.4.2` and close (default 20).
    pub max_errors: u32,
    /// NOOP/RSET/VRFY/EXPN/HELP commands tolerated before `421 4.4.2` and
    /// close (default 100).
    pub max_junk_commands: u32,
    /// Most `Received:` headers before `554 5.4.6` (RFC 5321 §6.3; default 50).
    pub max_received_headers: usize,
    /// Reserved: AUTH is not implemented and never advertised. AUTH gets
    /// `538 5.7.11` without TLS and `503 5.5.1` with it, whatever this says.
    pub auth_offered: bool,
}

impl ServerConfig {
    /// Defaults: 25 MiB messages, 100 recipients, no STARTTLS, 20 errors,
    /// 100 junk commands, 50 `Received:` headers, no AUTH.
    pub fn new(hostname: impl Into<String>) -> ServerConfig {
        ServerConfig {
            hostname: hostname.into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            starttls_offered: false,
            max_errors: 20,
            max_junk_commands: 100,
            max_received_headers: 50,
            auth_offered: false,
        }
    }
}

/// Decisions the session asks of the relay's policy. Synchronous and pure
/// (CIDR and domain checks); a refusal is the reply to send.
pub trait Policy {
    /// May this sender use the relay? (`553 5.7.1` when not, security.md §6.)
    fn check_sender(&mut self, from: &ReversePath, params: &MailParams) -> Result<(), Reply>;
    /// May mail from `from` be relayed to `to`? (`550 5.7.1` when not.)
    fn check_recipient(
        &mut self,
        from: &ReversePath,
        to: &ForwardPath,
        params: &RcptParams,
    ) -> Result<(), Reply>;
}

/// The envelope of a message being received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The EHLO/HELO name in force (after STARTTLS, the post-TLS one).
    pub helo: String,
    /// The sender.
    pub mail_from: ReversePath,
    /// MAIL parameters.
    pub mail_params: MailParams,
    /// Accepted recipients with their parameters, in order.
    pub recipients: Vec<(ForwardPath, RcptParams)>,
    /// Whether the session was under TLS when the message began.
    pub tls: bool,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this reply, then call `step` again.
    Send(Reply),
    /// Read more bytes into the input buffer, then call `step` again. At EOF
    /// the driver closes and discards any open message.
    NeedInput,
    /// Write [`Reply::ready_for_tls`], do the handshake, then call
    /// [`Session::tls_established`]. Only emitted when no input is buffered.
    StartTls,
    /// A message begins: open a spool writer for this envelope. After DATA
    /// the next output is `Send(354)`.
    MessageBegin(Transaction),
    /// Append these bytes to the open message.
    MessageContent(Vec<u8>),
    /// The message is complete: make it durable, call
    /// [`Session::message_stored`], then `step` again.
    MessageEnd,
    /// Discard the open message; a reply follows.
    MessageAbort,
    /// Flush and close the connection.
    Close,
}

/// What the session is reading.
#[derive(Debug)]
enum Phase {
    /// Command lines.
    Command,
    /// DATA content, after the 354.
    Data(DataDecoder),
    /// An accepted BDAT chunk of `size` octets.
    BdatChunk { size: u64, last: bool },
    /// A refused BDAT chunk: read and drop `remaining` octets, then reply.
    BdatDiscard { remaining: u64, reply: Reply },
    /// After `MessageEnd`, until `message_stored`.
    AwaitingStore,
    /// After `StartTls`, until `tls_established`.
    AwaitingTls,
    /// After `Close`.
    Closed,
}

/// A transaction between MAIL and the start of its message.
#[derive(Debug)]
struct OpenTransaction {
    mail_from: ReversePath,
    mail_params: MailParams,
    recipients: Vec<(ForwardPath, RcptParams)>,
    /// RCPT commands tried, accepted or not (to tell 503 from 554 at DATA).
    rcpt_attempts: usize,
}

/// One inbound SMTP session.
#[derive(Debug)]
pub struct Session {
    config: ServerConfig,
    phase: Phase,
    queue: VecDeque<Output>,
    reader: LineReader,
    tls: bool,
    helo: Option<String>,
    transaction: Option<OpenTransaction>,
    /// The message opened by the first BDAT, between chunks.
    bdat: Option<BdatDecoder>,
    /// A `MessageBegin` was emitted and not yet ended or aborted.
    message_open: bool,
    errors: u32,
    junk: u32,
}

impl Session {
    /// A session that has just accepted a connection; send
    /// [`Session::greeting`] first.
    pub fn new(config: ServerConfig) -> Session {
        Session {
            config,
            phase: Phase::Command,
            queue: VecDeque::new(),
            reader: LineReader::new(COMMAND_LINE_LIMIT),
            tls: false,
            helo: None,
            transaction: None,
            bdat: None,
            message_open: false,
            errors: 0,
            junk: 0,
        }
    }

    /// `220 hostname ESMTP`.
    pub fn greeting(&self) -> Reply {
        Reply::service_ready(&self.config.hostname)
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether message content is being read (DATA or a BDAT chunk), for
    /// the driver's choice of timeout (RFC 5321 §4.5.3.2).
    pub fn is_receiving_message(&self) -> bool {
        matches!(
            self.phase,
            Phase::Data(_) | Phase::BdatChunk { .. } | Phase::BdatDiscard { .. }
        )
    }

    /// Advances the session, consuming bytes from the front of `input`.
    ///
    /// Command order follows RFC 5321 §4.1.4; see the module documentation
    /// for the choices made where the RFCs leave room.
    pub fn step(&mut self, input: &mut Vec<u8>, policy: &mut dyn Policy) -> Output {
        loop {
            if let Some(output) = self.queue.pop_front() {
                return output;
            }
            match self.phase {
                Phase::Closed => return Output::Close,
                Phase::Command => match self.reader.next_line(input) {
                    Line::Incomplete => return Output::NeedInput,
                    Line::TooLong => self.send(Reply::line_too_long()),
                    Line::BareLineEnding => self.send(Reply::bare_line_ending()),
                    Line::Complete(line) => self.command(&line, input, policy),
                },
                Phase::Data(_) => return self.step_data(input),
                Phase::BdatChunk { .. } => {
                    if let Some(output) = self.step_bdat(input) {
                        return output;
                    }
                }
                Phase::BdatDiscard { .. } => {
                    if self.step_discard(input) {
                        return Output::NeedInput;
                    }
                }
                // The driver stepped without reporting the result it owes us:
                // never guess that a message was stored or TLS is up.
                Phase::AwaitingStore | Phase::AwaitingTls => {
                    self.close_with(Reply::local_error());
                }
            }
        }
    }

    /// Reports the spool's answer to `MessageEnd`: `Ok(250 queued as …)` or
    /// `Err(451/452 …)`. The reply is the session's next output. Ignored when
    /// no message is awaiting storage.
    pub fn message_stored(&mut self, result: Result<Reply, Reply>) {
        if !matches!(self.phase, Phase::AwaitingStore) {
            return;
        }
        self.phase = Phase::Command;
        match result {
            Ok(reply) => self.queue.push_back(Output::Send(reply)),
            Err(reply) => self.send(reply),
        }
    }

    /// The TLS handshake succeeded: back to the post-greeting state, EHLO
    /// name and transaction forgotten, STARTTLS no longer offered
    /// (RFC 3207 §4.2, security.md §3).
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.helo = None;
        self.transaction = None;
        self.reader.reset();
        if matches!(self.phase, Phase::AwaitingTls) {
            self.phase = Phase::Command;
        }
    }

    /// The driver's deadline passed: returns `421 4.4.2` to write; the
    /// session then aborts any open message and closes.
    pub fn timed_out(&mut self) -> Reply {
        self.end_abruptly(Reply::timeout())
    }

    /// The daemon is stopping: returns `421 4.3.2` to write; the session then
    /// aborts any open message and closes.
    pub fn shutting_down(&mut self) -> Reply {
        self.end_abruptly(Reply::shutting_down())
    }

    fn end_abruptly(&mut self, reply: Reply) -> Reply {
        self.queue.clear();
        self.abort_message();
        self.queue.push_back(Output::Close);
        self.phase = Phase::Closed;
        reply
    }

    /// Queues a reply, counting 4xx/5xx towards `max_errors`
    /// (security.md §11).
    fn send(&mut self, reply: Reply) {
        if reply.is_transient() || reply.is_permanent() {
            self.errors = self.errors.saturating_add(1);
            if self.errors > self.config.max_errors {
                self.close_with(Reply::too_many_errors());
                return;
            }
        }
        self.queue.push_back(Output::Send(reply));
    }

    /// Aborts any open message, sends `reply` and closes.
    fn close_with(&mut self, reply: Reply) {
        self.abort_message();
        self.transaction = None;
        self.queue.push_back(Output::Send(reply));
        self.queue.push_back(Output::Close);
        self.phase = Phase::Closed;
    }

    fn abort_message(&mut self) {
        self.bdat = None;
        if std::mem::take(&mut self.message_open) {
            self.queue.push_back(Output::MessageAbort);
        }
    }

    /// Drops the transaction (RSET, EHLO, STARTTLS, QUIT).
    fn abort_transaction(&mut self) {
        self.abort_message();
        self.transaction = None;
    }

    /// Counts a NOOP/RSET/VRFY/EXPN/HELP; true when the limit closed the
    /// session (security.md §11).
    fn junk_limit_hit(&mut self) -> bool {
        self.junk = self.junk.saturating_add(1);
        if self.junk > self.config.max_junk_commands {
            self.close_with(Reply::too_many_errors());
            return true;
        }
        false
    }

    fn command(&mut self, line: &[u8], input: &[u8], policy: &mut dyn Policy) {
        let smtputf8 = self
            .transaction
            .as_ref()
            .is_some_and(|t| t.mail_params.smtputf8);
        let command = match parse_command(line, smtputf8) {
            Ok(command) => command,
            Err(reply) => return self.send(reply),
        };
        match command {
            Command::Ehlo(name) => self.hello(name, true),
            Command::Helo(name) => self.hello(name, false),
            Command::Mail { from, params } => self.mail(from, params, policy),
            Command::Rcpt { to, params } => self.rcpt(to, params, policy),
            Command::Data => self.data(input),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                if !self.junk_limit_hit() {
                    self.abort_transaction();
                    self.send(Reply::ok());
                }
            }
            Command::Noop => self.junk_reply(Reply::ok()),
            Command::Vrfy(_) => self.junk_reply(Reply::vrfy()),
            Command::Expn(_) => self.junk_reply(Reply::expn_disabled()),
            Command::Help => self.junk_reply(Reply::help()),
            Command::Quit => {
                self.abort_transaction();
                self.queue
                    .push_back(Output::Send(Reply::closing(&self.config.hostname)));
                self.queue.push_back(Output::Close);
                self.phase = Phase::Closed;
            }
            Command::StartTls => self.starttls(input),
            Command::Auth(_) if self.tls => self.send(Reply::auth_disabled()),
            Command::Auth(_) => self.send(Reply::auth_needs_tls()),
            Command::Http => self.close_with(Reply::http_refused()),
            Command::Unknown(_) => self.send(Reply::unknown_command()),
        }
    }

    fn junk_reply(&mut self, reply: Reply) {
        if !self.junk_limit_hit() {
            self.send(reply);
        }
    }

    /// EHLO/HELO: a new greeting resets any transaction (RFC 5321 §4.1.4).
    fn hello(&mut self, name: String, extended: bool) {
        self.abort_transaction();
        self.helo = Some(name);
        let host = &self.config.hostname;
        let reply = if extended {
            Reply::ehlo(host, &self.keywords())
        } else {
            Reply::helo(host)
        };
        self.send(reply);
    }

    /// The EHLO keywords (RFC 5321 §4.1.1.1). Never AUTH: not implemented.
    fn keywords(&self) -> Vec<String> {
        let mut keywords = vec![
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "CHUNKING".to_owned(),
            "DSN".to_owned(),
        ];
        if self.config.starttls_offered && !self.tls {
            keywords.push("STARTTLS".to_owned());
        }
        keywords
    }

    fn mail(&mut self, from: ReversePath, params: MailParams, policy: &mut dyn Policy) {
        if self.helo.is_none() {
            return self.send(Reply::bad_sequence("send EHLO or HELO first"));
        }
        if self.transaction.is_some() || self.message_open {
            return self.send(Reply::bad_sequence("nested MAIL command"));
        }
        if params
            .size
            .is_some_and(|size| size > self.config.max_message_size)
        {
            return self.send(Reply::message_too_big(self.config.max_message_size));
        }
        if let Err(reply) = policy.check_sender(&from, &params) {
            return self.send(reply);
        }
        self.transaction = Some(OpenTransaction {
            mail_from: from,
            mail_params: params,
            recipients: Vec::new(),
            rcpt_attempts: 0,
        });
        self.send(Reply::sender_ok());
    }

    fn rcpt(&mut self, to: ForwardPath, params: RcptParams, policy: &mut dyn Policy) {
        let max_recipients = self.config.max_recipients;
        let reply = match self.transaction.as_mut() {
            None => Reply::bad_sequence("need MAIL before RCPT"),
            Some(_) if self.message_open => Reply::bad_sequence("RCPT after BDAT"),
            Some(tx) => {
                tx.rcpt_attempts += 1;
                if tx.recipients.len() >= max_recipients {
                    Reply::too_many_recipients()
                } else if let Err(reply) = policy.check_recipient(&tx.mail_from, &to, &params) {
                    reply
                } else {
                    tx.recipients.push((to, params));
                    Reply::recipient_ok()
                }
            }
        };
        self.send(reply);
    }

    /// Why a DATA or first BDAT cannot start a message now, if it cannot.
    fn message_refusal(&self) -> Option<Reply> {
        if self.message_open {
            return Some(Reply::bad_sequence("DATA after BDAT"));
        }
        let Some(tx) = self.transaction.as_ref() else {
            return Some(Reply::bad_sequence("need MAIL and RCPT first"));
        };
        if tx.recipients.is_empty() {
            return Some(if tx.rcpt_attempts == 0 {
                Reply::bad_sequence("need RCPT first")
            } else {
                Reply::no_valid_recipients()
            });
        }
        None
    }

    /// Turns the open transaction into a message: emits `MessageBegin`.
    fn begin_message(&mut self) -> Option<DataLimits> {
        let tx = self.transaction.take()?;
        let body = tx.mail_params.body;
        let limits = DataLimits {
            max_size: self.config.max_message_size,
            max_received_headers: self.config.max_received_headers,
            // SMTPUTF8 implies 8-bit headers (RFC 6531 §3.1 item 8, RFC 6532).
            eight_bit_allowed: matches!(body, Some(Body::EightBitMime | Body::BinaryMime))
                || tx.mail_params.smtputf8,
            max_line: 1000,
        };
        self.queue.push_back(Output::MessageBegin(Transaction {
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: tx.mail_from,
            mail_params: tx.mail_params,
            recipients: tx.recipients,
            tls: self.tls,
        }));
        self.message_open = true;
        Some(limits)
    }

    /// DATA (RFC 5321 §4.1.1.4). Bytes already buffered behind it break
    /// RFC 2920 §3.1 (DATA ends a pipelined group): `554 5.5.0` and close.
    fn data(&mut self, input: &[u8]) {
        if !input.is_empty() {
            return self.close_with(Reply::sync_error());
        }
        if let Some(reply) = self.message_refusal() {
            return self.send(reply);
        }
        let binary = self
            .transaction
            .as_ref()
            .is_some_and(|tx| tx.mail_params.body == Some(Body::BinaryMime));
        if binary {
            return self.send(Reply::binarymime_needs_bdat());
        }
        if let Some(limits) = self.begin_message() {
            self.queue
                .push_back(Output::Send(Reply::start_mail_input()));
            self.phase = Phase::Data(DataDecoder::new(limits));
        }
    }

    fn step_data(&mut self, input: &mut Vec<u8>) -> Output {
        let Phase::Data(decoder) = &mut self.phase else {
            return Output::NeedInput;
        };
        match decoder.decode(input) {
            DataEvent::Content(piece) => Output::MessageContent(piece),
            DataEvent::NeedInput => Output::NeedInput,
            DataEvent::End(DataOutcome::Ok) => {
                self.message_open = false;
                self.phase = Phase::AwaitingStore;
                Output::MessageEnd
            }
            DataEvent::End(DataOutcome::Rejected(reply)) => {
                self.phase = Phase::Command;
                self.abort_message();
                self.send(reply);
                self.queue.pop_front().unwrap_or(Output::NeedInput)
            }
        }
    }

    /// BDAT (RFC 3030 §2). The chunk always follows the command, so a refused
    /// chunk is read and dropped before the refusal is sent, keeping the
    /// session in step. A single chunk larger than the size limit closes the
    /// session with `552 5.3.4`, since reading it would be pointless.
    fn bdat(&mut self, size: u64, last: bool) {
        let max = self.config.max_message_size;
        if size > max {
            return self.close_with(Reply::message_too_big(max));
        }
        if !self.message_open {
            if let Some(reply) = self.message_refusal() {
                self.phase = Phase::BdatDiscard {
                    remaining: size,
                    reply,
                };
                return;
            }
            if let Some(limits) = self.begin_message() {
                self.bdat = Some(BdatDecoder::new(limits));
            }
        }
        let Some(decoder) = self.bdat.as_mut() else {
            return self.close_with(Reply::local_error());
        };
        if decoder.bytes().saturating_add(size) > max {
            self.abort_message();
            self.phase = Phase::BdatDiscard {
                remaining: size,
                reply: Reply::message_too_big(max),
            };
            return;
        }
        decoder.begin_chunk(size);
        self.phase = Phase::BdatChunk { size, last };
    }

    /// Reads the current BDAT chunk; `None` when a reply was queued instead.
    fn step_bdat(&mut self, input: &mut Vec<u8>) -> Option<Output> {
        let Phase::BdatChunk { size, last } = self.phase else {
            return None;
        };
        let Some(decoder) = self.bdat.as_mut() else {
            self.close_with(Reply::local_error());
            return None;
        };
        match decoder.decode(input) {
            BdatEvent::Content(piece) => return Some(Output::MessageContent(piece)),
            BdatEvent::NeedInput => return Some(Output::NeedInput),
            BdatEvent::ChunkEnd => {}
        }
        self.phase = Phase::Command;
        if let Some(reply) = decoder.rejection() {
            self.abort_message();
            self.send(reply);
            return None;
        }
        if !last {
            self.send(Reply::chunk_received(size));
            return None;
        }
        match decoder.finish() {
            DataOutcome::Ok => {
                self.bdat = None;
                self.message_open = false;
                self.phase = Phase::AwaitingStore;
                Some(Output::MessageEnd)
            }
            DataOutcome::Rejected(reply) => {
                self.abort_message();
                self.send(reply);
                None
            }
        }
    }

    /// Drops a refused chunk; true when more input is needed.
    fn step_discard(&mut self, input: &mut Vec<u8>) -> bool {
        let Phase::BdatDiscard { remaining, reply } = &mut self.phase else {
            return false;
        };
        let available = u64::try_from(input.len()).unwrap_or(u64::MAX);
        let take = (*remaining).min(available);
        input.drain(..usize::try_from(take).unwrap_or(0));
        *remaining -= take;
        if *remaining > 0 {
            return true;
        }
        let reply = reply.clone();
        self.phase = Phase::Command;
        self.send(reply);
        false
    }

    /// STARTTLS (RFC 3207 §4). Bytes buffered behind it would be injected
    /// into the TLS session (CVE-2011-0411): `554 5.5.0` and close.
    fn starttls(&mut self, input: &[u8]) {
        if self.tls {
            return self.send(Reply::tls_already_active());
        }
        if !self.config.starttls_offered {
            return self.send(Reply::tls_not_available());
        }
        if !input.is_empty() {
            return self.close_with(Reply::sync_error());
        }
        self.abort_transaction();
        self.helo = None;
        self.phase = Phase::AwaitingTls;
        self.queue.push_back(Output::StartTls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts everything; the transcripts test real policy answers.
    struct Open;

    impl Policy for Open {
        fn check_sender(&mut self, _: &ReversePath, _: &MailParams) -> Result<(), Reply> {
            Ok(())
        }
        fn check_recipient(
            &mut self,
            _: &ReversePath,
            _: &ForwardPath,
            _: &RcptParams,
        ) -> Result<(), Reply> {
            Ok(())
        }
    }

    /// Feeds `input` and collects outputs until the session wants input or
    /// closes, showing replies as their log form.
    fn run(session: &mut Session, input: &[u8]) -> Vec<String> {
        let mut buffer = input.to_vec();
        let mut shown = Vec::new();
        loop {
            let output = session.step(&mut buffer, &mut Open);
            shown.push(match &output {
                Output::Send(reply) => reply.to_string(),
                Output::MessageBegin(_) => "begin".to_owned(),
                Output::MessageContent(_) => "content".to_owned(),
                other => format!("{other:?}"),
            });
            match output {
                Output::NeedInput | Output::Close | Output::MessageEnd | Output::StartTls => {
                    return shown;
                }
                _ => {}
            }
        }
    }

    fn open_message(session: &mut Session) {
        run(
            session,
            b"EHLO a.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
        );
    }

    #[test]
    fn ehlo_keywords_follow_tls_state() {
        let table = [
            (false, false, false),
            (true, false, true),
            (true, true, false),
        ];
        for (offered, tls, advertised) in table {
            let mut config = ServerConfig::new("relay.test");
            config.starttls_offered = offered;
            let mut session = Session::new(config);
            session.tls = tls;
            let wire = String::from_utf8(Reply::ehlo("x", &session.keywords()).to_bytes());
            let wire = wire.unwrap_or_default();
            assert_eq!(wire.contains("STARTTLS"), advertised, "{offered} {tls}");
            assert!(!wire.contains("AUTH"));
        }
    }

    #[test]
    fn abrupt_endings_abort_the_open_message() {
        type Ending = fn(&mut Session) -> Reply;
        let endings: [(Ending, &str); 2] = [
            (Session::timed_out, "421 4.4.2"),
            (Session::shutting_down, "421 4.3.2"),
        ];
        for (end, code) in endings {
            let mut session = Session::new(ServerConfig::new("relay.test"));
            open_message(&mut session);
            assert!(session.is_receiving_message());
            assert!(end(&mut session).to_string().starts_with(code));
            assert_eq!(run(&mut session, b""), ["MessageAbort", "Close"]);
            assert_eq!(run(&mut session, b"QUIT\r\n"), ["Close"]);
        }
    }

    #[test]
    fn storage_results() {
        let table = [
            (Ok(Reply::queued("ID7")), "250 2.0.0 queued as ID7"),
            (
                Err(Reply::insufficient_storage()),
                "452 4.3.1 insufficient system storage",
            ),
        ];
        for (result, shown) in table {
            let mut session = Session::new(ServerConfig::new("relay.test"));
            open_message(&mut session);
            assert_eq!(run(&mut session, b".\r\n"), ["MessageEnd"]);
            session.message_stored(result);
            assert_eq!(run(&mut session, b""), [shown, "NeedInput"]);
            // A second report is ignored.
            session.message_stored(Ok(Reply::queued("again")));
            assert_eq!(run(&mut session, b""), ["NeedInput"]);
        }
    }

    #[test]
    fn stepping_without_reporting_storage_closes() {
        let mut session = Session::new(ServerConfig::new("relay.test"));
        open_message(&mut session);
        run(&mut session, b".\r\n");
        assert_eq!(
            run(&mut session, b"QUIT\r\n"),
            ["451 4.3.0 local error in processing", "Close"]
        );
    }

    #[test]
    fn greeting_names_the_host() {
        let session = Session::new(ServerConfig::new("relay.test"));
        assert_eq!(session.greeting().to_string(), "220 relay.test ESMTP");
        assert!(!session.is_tls());
    }
}
