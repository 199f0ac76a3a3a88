//! The client side of SMTP, as pure code: an incremental, bounded reply parser (multi-line
//! replies, enhanced status codes), the EHLO capabilities, typed command encoding that refuses
//! CR/LF, and the transaction state machine that pipelines MAIL/RCPT/DATA (RFC 2920) or
//! MAIL/RCPT/BDAT (RFC 3030 §4.2) and ends with one outcome per recipient. The daemon's
//! delivery driver does the I/O and feeds replies in; nothing here reads a socket.

use crate::reply::{EnhancedCode, Reply};

/// Longest reply line accepted from a server, CRLF included (security.md §5: 4 KiB).
pub const MAX_SERVER_LINE: usize = 4096;
/// Most lines in one reply (security.md §5).
pub const MAX_SERVER_LINES: usize = 100;
/// Largest BDAT chunk sent in the same flight as MAIL and RCPT, before any reply. A larger
/// message waits for the RCPT replies, so a refusal costs no upload.
pub const MAX_PIPELINED_CHUNK: u64 = 64 * 1024;

/// Why a server's reply could not be parsed; the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A reply line longer than [`MAX_SERVER_LINE`].
    #[error("reply line longer than {MAX_SERVER_LINE} octets")]
    LineTooLong,
    /// More than [`MAX_SERVER_LINES`] lines in one reply.
    #[error("reply longer than {MAX_SERVER_LINES} lines")]
    TooManyLines,
    /// A line that is not `DDD SP text` / `DDD-text`, or whose code changed mid-reply.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
}

/// Parses replies from bytes as they arrive.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    enhanced: Option<EnhancedCode>,
    /// The text of the lines so far, joined with `'\n'`.
    text: String,
    /// How many lines so far.
    lines: usize,
}

impl ReplyParser {
    /// A parser expecting the start of a reply.
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Takes one complete reply from the front of `input`, if there is one. Bytes of an
    /// incomplete reply stay consumed in the parser's state or in `input`.
    pub fn parse(&mut self, input: &mut Vec<u8>) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(end) = input.windows(2).position(|w| w == b"\r\n") else {
                if input.len() >= MAX_SERVER_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if end + 2 > MAX_SERVER_LINE {
                return Err(ReplyError::LineTooLong);
            }
            let reply = self.line(input.get(..end).unwrap_or_default());
            input.drain(..end + 2);
            if let Some(reply) = reply? {
                return Ok(Some(reply));
            }
        }
    }

    /// Consumes one line; returns the reply when it was the last line.
    fn line(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let malformed = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
        let (digits, rest) = line.split_at_checked(3).ok_or_else(malformed)?;
        let code = std::str::from_utf8(digits)
            .ok()
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u16>().ok())
            .filter(|c| (200..=599).contains(c))
            .ok_or_else(malformed)?;
        if self.code.is_some_and(|c| c != code) {
            return Err(malformed());
        }
        let (last, text) = match rest.split_first() {
            None => (true, &[][..]),
            Some((b' ', text)) => (true, text),
            Some((b'-', text)) => (false, text),
            Some(_) => return Err(malformed()),
        };
        if self.lines >= MAX_SERVER_LINES {
            return Err(ReplyError::TooManyLines);
        }
        let text = String::from_utf8_lossy(text);
        let (enhanced, text) = split_enhanced(code, &text);
        if self.enhanced.is_none() {
            self.enhanced = enhanced;
        }
        self.code = Some(code);
        if self.lines > 0 {
            self.text.push('\n');
        }
        self.text.push_str(text);
        self.lines += 1;
        if !last {
            return Ok(None);
        }
        let reply = Reply::new(code, self.enhanced, std::mem::take(&mut self.text));
        *self = ReplyParser::default();
        Ok(Some(reply))
    }
}

/// Splits a leading enhanced status code off a reply line's text when its class matches the
/// basic code's (RFC 3463, RFC 2034 §4).
fn split_enhanced(code: u16, text: &str) -> (Option<EnhancedCode>, &str) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = first.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, text);
    };
    let parsed = (
        class.parse::<u8>(),
        subject.parse::<u16>(),
        detail.parse::<u16>(),
    );
    match parsed {
        (Ok(c), Ok(s), Ok(d))
            if u16::from(c) == code / 100
                && subject.len() <= 3
                && detail.len() <= 3
                && matches!(c, 2 | 4 | 5) =>
        {
            (Some(EnhancedCode::new(c, s, d)), rest)
        }
        _ => (None, text),
    }
}

/// What a server offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// SIZE and its limit, 0 meaning no fixed limit (RFC 1870).
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// CHUNKING (RFC 3030).
    pub chunking: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// Reads the keywords of an EHLO reply (every line after the first).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                "DSN" => caps.dsn = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                _ => {}
            }
        }
        caps
    }

    /// Whether a message of `size` octets is within the server's SIZE limit.
    pub fn accepts_size(&self, size: u64) -> bool {
        match self.size {
            Some(limit) if limit > 0 => size <= limit,
            _ => true,
        }
    }
}

/// A client command could not be built: an argument would have broken the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to send a command argument with CR, LF or NUL: {0:?}")]
pub struct UnsafeArgument(pub String);

/// Encodes `VERB argument` CRLF, refusing any CR, LF or NUL in the argument (security.md §7:
/// raw strings are never spliced into commands).
pub fn command_line(verb: &str, argument: &str) -> Result<Vec<u8>, UnsafeArgument> {
    if argument.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(UnsafeArgument(argument.to_string()));
    }
    let mut line = Vec::with_capacity(verb.len() + argument.len() + 3);
    line.extend_from_slice(verb.as_bytes());
    if !argument.is_empty() {
        line.push(b' ');
        line.extend_from_slice(argument.as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    Ok(line)
}

/// The envelope of one outgoing transaction, as stored in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEnvelope {
    /// Reverse path without brackets; empty = `<>`.
    pub mail_from: String,
    /// ESMTP parameters for MAIL, already encoded (e.g. `BODY=8BITMIME SMTPUTF8`).
    pub mail_params: String,
    /// Forward paths without brackets, each with its encoded ESMTP parameters.
    pub recipients: Vec<(String, String)>,
}

/// How the content goes: DATA with dot-stuffing, or one BDAT LAST chunk of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    /// `DATA`, then the dot-stuffed content and `.`.
    Data,
    /// `BDAT <size> LAST` followed by exactly `size` octets.
    Bdat {
        /// The content's size.
        size: u64,
    },
}

/// What the driver must do next in a transaction.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum TxStep {
    /// Write these command bytes (and, when [`Transaction::content_follows_command`], the
    /// content as is right behind them), then read replies.
    Send(Vec<u8>),
    /// Read the next reply and hand it to [`Transaction::on_reply`].
    ReadReply,
    /// Write the content now, dot-stuffed with its terminator (after DATA's 354), then read
    /// the reply.
    SendContent,
    /// The transaction is over; the outcome is final. The connection can carry another one
    /// (after RSET when the transaction was aborted).
    Done(TransactionOutcome),
}

/// How one transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionOutcome {
    /// The reply to MAIL when it was refused (then every recipient carries it too).
    pub mail_refused: Option<Reply>,
    /// Per recipient, in order: its RCPT reply, or the final content reply when it was
    /// accepted at RCPT.
    pub recipients: Vec<Reply>,
    /// Whether the server took responsibility for the accepted recipients.
    pub delivered: bool,
    /// Whether the message was not delivered, so the server may have left the transaction
    /// open (MAIL, every RCPT or the content refused): send RSET before reusing the
    /// connection.
    pub needs_reset: bool,
}

/// Where the transaction is: which reply comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    /// Reply to DATA (354 expected).
    DataGo,
    /// Reply to the end of content.
    Final,
    Finished,
}

/// One message's transaction on an established session (after EHLO and, when required,
/// STARTTLS). With PIPELINING, MAIL, every RCPT and DATA go in one flight (RFC 2920 §3.1);
/// so do MAIL, every RCPT and `BDAT n LAST` with its chunk when the chunk is at most
/// [`MAX_PIPELINED_CHUNK`] (RFC 3030 §4.2: a server reads a refused chunk and drops it).
/// Without PIPELINING, one command per reply.
#[derive(Debug)]
pub struct Transaction {
    envelope: OutgoingEnvelope,
    mode: ContentMode,
    pipelining: bool,
    expect: Expect,
    mail_refused: Option<Reply>,
    rcpt_replies: Vec<Reply>,
    /// Bytes of commands not yet sent (non-pipelined mode sends one at a time).
    pending: Vec<Vec<u8>>,
    /// The flight last returned by [`TxStep::Send`] ends with the BDAT command.
    bdat_in_flight: bool,
}

impl Transaction {
    /// Starts a transaction; the first step is the command flight to send.
    pub fn start(
        envelope: OutgoingEnvelope,
        mode: ContentMode,
        pipelining: bool,
    ) -> Result<(Transaction, TxStep), UnsafeArgument> {
        let mut commands = Vec::with_capacity(envelope.recipients.len() + 2);
        commands.push(command_line(
            "MAIL",
            &path_argument("FROM", &envelope.mail_from, &envelope.mail_params),
        )?);
        for (rcpt, params) in &envelope.recipients {
            commands.push(command_line("RCPT", &path_argument("TO", rcpt, params))?);
        }
        let bdat_in_flight = match mode {
            ContentMode::Data => {
                commands.push(command_line("DATA", "")?);
                false
            }
            ContentMode::Bdat { size } if pipelining && size <= MAX_PIPELINED_CHUNK => {
                commands.push(bdat_last(size)?);
                true
            }
            ContentMode::Bdat { .. } => false,
        };
        let mut tx = Transaction {
            envelope,
            mode,
            pipelining,
            expect: Expect::Mail,
            mail_refused: None,
            rcpt_replies: Vec::new(),
            pending: commands,
            bdat_in_flight,
        };
        let first = tx.next_flight();
        Ok((tx, TxStep::Send(first)))
    }

    /// The commands to send now: all of them when pipelining, else the next one.
    fn next_flight(&mut self) -> Vec<u8> {
        if self.pipelining {
            self.pending.drain(..).flatten().collect()
        } else if self.pending.is_empty() {
            Vec::new()
        } else {
            self.pending.remove(0)
        }
    }

    /// The command flight for a non-pipelined session, or "read on" for a pipelined one.
    fn continue_or_read(&mut self) -> TxStep {
        if self.pipelining {
            TxStep::ReadReply
        } else {
            TxStep::Send(self.next_flight())
        }
    }

    /// Feeds the next reply from the server.
    pub fn on_reply(&mut self, reply: Reply) -> TxStep {
        match self.expect {
            Expect::Mail => self.on_mail(reply),
            Expect::Rcpt(i) => self.on_rcpt(i, reply),
            Expect::DataGo => self.on_data_go(reply),
            Expect::Final => self.on_final(reply),
            Expect::Finished => TxStep::Done(self.outcome(None)),
        }
    }

    fn on_mail(&mut self, reply: Reply) -> TxStep {
        if !reply.is_positive() {
            self.mail_refused = Some(reply);
        }
        self.expect = Expect::Rcpt(0);
        if self.mail_refused.is_some() && !self.pipelining {
            self.expect = Expect::Finished;
            return TxStep::Done(self.outcome(None));
        }
        self.continue_or_read()
    }

    fn on_rcpt(&mut self, index: usize, reply: Reply) -> TxStep {
        self.rcpt_replies.push(reply);
        let next = index + 1;
        if next < self.envelope.recipients.len() {
            self.expect = Expect::Rcpt(next);
            return self.continue_or_read();
        }
        if self.bdat_in_flight {
            // The chunk went with the recipients; its reply comes whatever theirs were.
            self.expect = Expect::Final;
            return TxStep::ReadReply;
        }
        let any_accepted = self.any_accepted();
        match (self.mode, any_accepted) {
            (ContentMode::Data, true) => {
                self.expect = Expect::DataGo;
                self.continue_or_read()
            }
            (ContentMode::Data, false) if self.pipelining => {
                // DATA was pipelined; its (refusing) reply is still to come.
                self.expect = Expect::DataGo;
                TxStep::ReadReply
            }
            (ContentMode::Bdat { size }, true) => {
                self.expect = Expect::Final;
                match bdat_last(size) {
                    Ok(line) => {
                        self.bdat_in_flight = true;
                        TxStep::Send(line)
                    }
                    Err(_) => TxStep::Done(self.outcome(None)),
                }
            }
            (_, false) => {
                self.expect = Expect::Finished;
                TxStep::Done(self.outcome(None))
            }
        }
    }

    fn on_data_go(&mut self, reply: Reply) -> TxStep {
        if reply.code() == 354 && self.any_accepted() {
            self.expect = Expect::Final;
            return TxStep::SendContent;
        }
        self.expect = Expect::Finished;
        if reply.code() == 354 {
            // Server wants content although nothing can be delivered: end it empty at once.
            return TxStep::Send(b".\r\n".to_vec());
        }
        TxStep::Done(self.outcome(Some(reply)))
    }

    fn on_final(&mut self, reply: Reply) -> TxStep {
        self.expect = Expect::Finished;
        TxStep::Done(self.outcome(Some(reply)))
    }

    /// Whether MAIL was accepted and at least one recipient.
    fn any_accepted(&self) -> bool {
        self.mail_refused.is_none() && self.rcpt_replies.iter().any(Reply::is_positive)
    }

    /// Whether the flight of the last `TxStep::Send` ends with `BDAT n LAST`: the driver
    /// writes the content right behind it, then reads replies.
    pub fn content_follows_command(&self) -> bool {
        self.bdat_in_flight
    }

    /// Whether the next reply is the one to the content (its deadline is the longer one,
    /// RFC 5321 §4.5.3.2.6).
    pub fn expects_final_reply(&self) -> bool {
        self.expect == Expect::Final
    }

    /// Builds the outcome; `content_reply` is the reply to DATA/the content, if one came.
    fn outcome(&self, content_reply: Option<Reply>) -> TransactionOutcome {
        let count = self.envelope.recipients.len();
        if let Some(refused) = &self.mail_refused {
            return TransactionOutcome {
                mail_refused: Some(refused.clone()),
                recipients: vec![refused.clone(); count],
                delivered: false,
                needs_reset: true,
            };
        }
        let delivered =
            self.any_accepted() && content_reply.as_ref().is_some_and(|r| r.code() / 100 == 2);
        let recipients = (0..count)
            .map(|i| match self.rcpt_replies.get(i) {
                Some(r) if r.is_positive() => content_reply.clone().unwrap_or_else(|| {
                    Reply::new(
                        451,
                        Some(EnhancedCode::new(4, 4, 2)),
                        "no reply to the message content",
                    )
                }),
                Some(r) => r.clone(),
                None => Reply::new(451, Some(EnhancedCode::new(4, 4, 2)), "no reply to RCPT"),
            })
            .collect();
        TransactionOutcome {
            mail_refused: None,
            recipients,
            delivered,
            needs_reset: !delivered,
        }
    }
}

/// `BDAT <size> LAST`: the whole content as one chunk.
fn bdat_last(size: u64) -> Result<Vec<u8>, UnsafeArgument> {
    command_line("BDAT", &format!("{size} LAST"))
}

/// `FROM:<path> params` / `TO:<path> params`.
fn path_argument(keyword: &str, path: &str, params: &str) -> String {
    if params.is_empty() {
        format!("{keyword}:<{path}>")
    } else {
        format!("{keyword}:<{path}> {params}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::new();
        let mut input = bytes.to_vec();
        let mut replies = Vec::new();
        while let Some(r) = parser.parse(&mut input)? {
            replies.push(r);
        }
        Ok(replies)
    }

    #[test]
    fn replies_parse_with_enhanced_codes_and_lines() {
        let replies = parse_all(
            b"220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n550 5.7.64 TenantAttribution; Relay Access Denied\r\n354 go\r\n",
        )
        .unwrap();
        assert_eq!(replies.len(), 4);
        assert_eq!(replies[0].code(), 220);
        assert_eq!(replies[1].lines().len(), 3);
        let caps = Capabilities::from_ehlo(&replies[1]);
        assert!(caps.pipelining && !caps.starttls);
        assert_eq!(caps.size, Some(1000));
        assert!(!caps.accepts_size(1001));
        assert_eq!(replies[2].enhanced(), Some(EnhancedCode::new(5, 7, 64)));
        assert_eq!(replies[2].text(), "TenantAttribution; Relay Access Denied");
        assert_eq!(replies[3].enhanced(), None);
    }

    #[test]
    fn replies_split_anywhere_parse_the_same() {
        let wire = b"250-first\r\n250-second\r\n250 2.0.0 last\r\n";
        for split in 0..wire.len() {
            let mut parser = ReplyParser::new();
            let mut input = wire[..split].to_vec();
            let early = parser.parse(&mut input).unwrap();
            input.extend_from_slice(&wire[split..]);
            let reply = match early {
                Some(r) => r,
                None => parser.parse(&mut input).unwrap().unwrap(),
            };
            assert_eq!(reply.lines().len(), 3, "split at {split}");
            assert_eq!(reply.enhanced(), Some(EnhancedCode::new(2, 0, 0)));
        }
    }

    #[test]
    fn bad_replies_are_errors() {
        let cases: &[(&[u8], ReplyError)] = &[
            (b"25 short\r\n", ReplyError::Malformed("25 short".into())),
            (b"abc text\r\n", ReplyError::Malformed("abc text".into())),
            (b"250-a\r\n251 b\r\n", ReplyError::Malformed("251 b".into())),
            (b"250xtext\r\n", ReplyError::Malformed("250xtext".into())),
        ];
        for (wire, err) in cases {
            assert_eq!(parse_all(wire).unwrap_err(), *err);
        }
        let long = vec![b'2'; MAX_SERVER_LINE + 1];
        assert_eq!(parse_all(&long).unwrap_err(), ReplyError::LineTooLong);
        let many = b"250-x\r\n".repeat(MAX_SERVER_LINES + 1);
        assert_eq!(parse_all(&many).unwrap_err(), ReplyError::TooManyLines);
    }

    #[test]
    fn commands_refuse_line_breaks() {
        assert_eq!(
            command_line("RCPT", "TO:<a@b>").unwrap(),
            b"RCPT TO:<a@b>\r\n"
        );
        assert!(command_line("RCPT", "TO:<a@b>\r\nDATA").is_err());
        assert!(command_line("MAIL", "FROM:<a\0@b>").is_err());
    }

    fn envelope(rcpts: &[&str]) -> OutgoingEnvelope {
        OutgoingEnvelope {
            mail_from: "a@contoso.com".into(),
            mail_params: "BODY=8BITMIME".into(),
            recipients: rcpts
                .iter()
                .map(|r| (r.to_string(), String::new()))
                .collect(),
        }
    }

    fn reply(code: u16) -> Reply {
        Reply::new(code, None, "x")
    }

    #[test]
    fn pipelined_transaction_with_one_refused_recipient() {
        let (mut tx, first) =
            Transaction::start(envelope(&["b@x", "c@x"]), ContentMode::Data, true).unwrap();
        assert_eq!(
            first,
            TxStep::Send(
                b"MAIL FROM:<a@contoso.com> BODY=8BITMIME\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n"
                    .to_vec()
            )
        );
        assert_eq!(tx.on_reply(reply(250)), TxStep::ReadReply);
        assert_eq!(tx.on_reply(reply(250)), TxStep::ReadReply);
        assert_eq!(tx.on_reply(reply(550)), TxStep::ReadReply);
        assert_eq!(tx.on_reply(reply(354)), TxStep::SendContent);
        let TxStep::Done(outcome) = tx.on_reply(reply(250)) else {
            panic!("not done")
        };
        assert!(outcome.delivered && !outcome.needs_reset);
        assert_eq!(outcome.recipients[0].code(), 250);
        assert_eq!(outcome.recipients[1].code(), 550);
    }

    #[test]
    fn lockstep_transaction_sends_one_command_per_reply() {
        let (mut tx, first) =
            Transaction::start(envelope(&["b@x"]), ContentMode::Data, false).unwrap();
        assert_eq!(
            first,
            TxStep::Send(b"MAIL FROM:<a@contoso.com> BODY=8BITMIME\r\n".to_vec())
        );
        assert_eq!(
            tx.on_reply(reply(250)),
            TxStep::Send(b"RCPT TO:<b@x>\r\n".to_vec())
        );
        assert_eq!(tx.on_reply(reply(250)), TxStep::Send(b"DATA\r\n".to_vec()));
        assert_eq!(tx.on_reply(reply(354)), TxStep::SendContent);
        let TxStep::Done(outcome) = tx.on_reply(reply(451)) else {
            panic!("not done")
        };
        assert!(!outcome.delivered);
        assert_eq!(outcome.recipients[0].code(), 451);
    }

    #[test]
    fn refused_mail_or_all_recipients_end_without_content() {
        let (mut tx, _) = Transaction::start(envelope(&["b@x"]), ContentMode::Data, false).unwrap();
        let TxStep::Done(outcome) = tx.on_reply(reply(550)) else {
            panic!("not done")
        };
        assert_eq!(outcome.mail_refused.as_ref().map(Reply::code), Some(550));
        assert!(outcome.needs_reset);

        let (mut tx, _) = Transaction::start(envelope(&["b@x"]), ContentMode::Data, true).unwrap();
        assert_eq!(tx.on_reply(reply(250)), TxStep::ReadReply);
        assert_eq!(tx.on_reply(reply(550)), TxStep::ReadReply);
        let TxStep::Done(outcome) = tx.on_reply(reply(503)) else {
            panic!("not done")
        };
        assert_eq!(outcome.recipients[0].code(), 550);
        assert!(!outcome.delivered && outcome.needs_reset);
    }

    #[test]
    fn small_bdat_chunk_goes_in_the_first_flight() {
        let (mut tx, first) =
            Transaction::start(envelope(&["b@x"]), ContentMode::Bdat { size: 42 }, true).unwrap();
        assert_eq!(
            first,
            TxStep::Send(
                b"MAIL FROM:<a@contoso.com> BODY=8BITMIME\r\nRCPT TO:<b@x>\r\nBDAT 42 LAST\r\n"
                    .to_vec()
            )
        );
        assert!(tx.content_follows_command());
        assert!(!tx.expects_final_reply());
        assert_eq!(tx.on_reply(reply(250)), TxStep::ReadReply);
        assert_eq!(tx.on_reply(reply(250)), TxStep::ReadReply);
        assert!(tx.expects_final_reply());
        let TxStep::Done(outcome) = tx.on_reply(reply(250)) else {
            panic!("not done")
        };
        assert!(outcome.delivered && !outcome.needs_reset);
    }

    #[test]
    fn pipelined_chunk_of_refused_recipients_is_answered_and_reset() {
        let (mut tx, _) = Transaction::start(
            envelope(&["b@x", "c@x"]),
            ContentMode::Bdat { size: 42 },
            true,
        )
        .unwrap();
        assert_eq!(tx.on_reply(reply(250)), TxStep::ReadReply);
        assert_eq!(tx.on_reply(reply(550)), TxStep::ReadReply);
        assert_eq!(tx.on_reply(reply(550)), TxStep::ReadReply);
        let TxStep::Done(outcome) = tx.on_reply(reply(250)) else {
            panic!("not done")
        };
        assert!(!outcome.delivered && outcome.needs_reset);
        assert_eq!(outcome.recipients[0].code(), 550);

        let (mut tx, _) =
            Transaction::start(envelope(&["b@x"]), ContentMode::Bdat { size: 42 }, true).unwrap();
        assert_eq!(tx.on_reply(reply(550)), TxStep::ReadReply);
        assert_eq!(tx.on_reply(reply(503)), TxStep::ReadReply);
        let TxStep::Done(outcome) = tx.on_reply(reply(503)) else {
            panic!("not done")
        };
        assert_eq!(outcome.mail_refused.as_ref().map(Reply::code), Some(550));
        assert!(!outcome.delivered && outcome.needs_reset);
    }

    #[test]
    fn large_or_lockstep_bdat_waits_for_the_recipients() {
        for (size, pipelining) in [(MAX_PIPELINED_CHUNK + 1, true), (42, false)] {
            let (mut tx, first) =
                Transaction::start(envelope(&["b@x"]), ContentMode::Bdat { size }, pipelining)
                    .unwrap();
            let TxStep::Send(first) = first else {
                panic!("no first flight")
            };
            assert!(!first.windows(4).any(|w| w == b"BDAT"));
            assert!(!tx.content_follows_command());
            let after_mail = if pipelining {
                TxStep::ReadReply
            } else {
                TxStep::Send(b"RCPT TO:<b@x>\r\n".to_vec())
            };
            assert_eq!(tx.on_reply(reply(250)), after_mail);
            assert_eq!(
                tx.on_reply(reply(250)),
                TxStep::Send(format!("BDAT {size} LAST\r\n").into_bytes())
            );
            assert!(tx.content_follows_command() && tx.expects_final_reply());
            let TxStep::Done(outcome) = tx.on_reply(reply(250)) else {
                panic!("not done")
            };
            assert!(outcome.delivered);
        }
    }
}
