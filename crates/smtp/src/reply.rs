//! SMTP replies as values: the reply type, its one wire encoder, and the
//! catalogue of every reply this server sends.
//!
//! A reply is a basic code (RFC 5321 §4.2), an optional enhanced status code
//! (RFC 3463, advertised with ENHANCEDSTATUSCODES per RFC 2034) and one or more
//! lines of text. Text is sanitised when the reply is built, so data that came
//! from a client can never inject a reply line. Each reply text lives in exactly
//! one named constructor below; the session and the daemon use those instead of
//! writing reply bytes themselves. Parsing replies (the client side) is left to
//! the outbound client.

use std::fmt;

/// Longest reply line on the wire, CRLF included (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// An enhanced mail system status code, `class.subject.detail` (RFC 3463 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject category, for example 7 for security or policy status.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds `class.subject.detail`.
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedCode {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// Octets of `class.subject.detail` as written.
    fn wire_len(self) -> usize {
        let digits = |n: u16| n.checked_ilog10().map_or(1, |l| l as usize + 1);
        digits(u16::from(self.class)) + 1 + digits(self.subject) + 1 + digits(self.detail)
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: code, optional enhanced code, and its lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    text: Vec<String>,
}

/// Shorthand for the catalogue below.
const fn enh(class: u8, subject: u16, detail: u16) -> Option<EnhancedCode> {
    Some(EnhancedCode::new(class, subject, detail))
}

impl Reply {
    /// Builds a reply. Each `'\n'` in `text` starts a new line of a multi-line
    /// reply; CR, other control characters and non-ASCII characters are
    /// replaced (by a space and `?` respectively), so the text can never end a
    /// reply line early (RFC 5321 §4.2: reply text is printable US-ASCII).
    /// A code outside 100..=599 is replaced by 451, our local-error code, so the
    /// encoder always writes three digits.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Reply {
        let code = if (100..=599).contains(&code) {
            code
        } else {
            451
        };
        let text: String = text.into();
        let text = if is_wire_safe(&text) {
            vec![text]
        } else {
            text.split('\n').map(sanitise_line).collect()
        };
        Reply {
            code,
            enhanced,
            text,
        }
    }

    /// Returns this reply with `extra` appended as further lines.
    pub fn with_text(mut self, extra: impl Into<String>) -> Reply {
        self.text
            .extend(extra.into().split('\n').map(sanitise_line));
        self
    }

    /// The three-digit basic code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text, lines joined with a space.
    pub fn text(&self) -> String {
        self.text.join(" ")
    }

    /// The text lines as built (before any splitting for length).
    pub fn lines(&self) -> &[String] {
        &self.text
    }

    /// 2xx or 3xx: the command was accepted.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: a transient failure; the client may retry.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: a permanent failure.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The one encoder: appends the wire form, `250-first` … `250 last`, with the
    /// enhanced code after the basic code on every line (RFC 2034 §4), each
    /// line ending in CRLF and no longer than 512 octets (RFC 5321 §4.5.3.1.5);
    /// longer text is split over several lines.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let prefix_len = 4 + self.enhanced.map_or(0, |e| e.wire_len() + 1);
        let room = MAX_REPLY_LINE.saturating_sub(prefix_len + 2).max(1);
        let mut pieces = self
            .text
            .iter()
            .flat_map(|line| split_for_wire(line, room))
            .peekable();
        while let Some(piece) = pieces.next() {
            let separator = if pieces.peek().is_none() { ' ' } else { '-' };
            let start = out.len();
            // Writing into a Vec cannot fail.
            let _ = match self.enhanced {
                Some(e) => write!(out, "{}{separator}{e} {piece}", self.code),
                None => write!(out, "{}{separator}{piece}", self.code),
            };
            while out.len() > start && out.last() == Some(&b' ') {
                out.pop();
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

/// Replaces anything that is not printable ASCII or space, so that no text
/// can carry a line break or a control character onto the wire.
fn sanitise_line(line: &str) -> String {
    line.chars()
        .map(|c| match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        })
        .collect()
}

/// Whether `text` is one line of printable ASCII and spaces, which
/// [`sanitise_line`] would leave as it is.
fn is_wire_safe(text: &str) -> bool {
    text.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// Splits one sanitised (hence ASCII) line into pieces of at most `room`
/// octets, preferring to break at a space.
fn split_for_wire(line: &str, room: usize) -> impl Iterator<Item = &str> {
    let mut rest = Some(line);
    std::iter::from_fn(move || {
        let current = rest?;
        if current.len() <= room {
            rest = None;
            return Some(current);
        }
        let window = current.get(..room).unwrap_or(current);
        let cut = match window.rfind(' ') {
            Some(space) if space > 0 => space,
            _ => room,
        };
        let (head, tail) = current.split_at_checked(cut).unwrap_or((current, ""));
        rest = Some(tail.strip_prefix(' ').unwrap_or(tail));
        Some(head)
    })
}

impl fmt::Display for Reply {
    /// The single-line form for logs: `550 5.7.1 relaying denied`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        for line in &self.text {
            write!(f, " {line}")?;
        }
        Ok(())
    }
}

/// The catalogue: one constructor per situation, one place per text.
impl Reply {
    /// `220` greeting (RFC 5321 §4.2, §4.3.1).
    pub fn service_ready(host: &str) -> Reply {
        Reply::new(220, None, format!("{host} ESMTP"))
    }

    /// `221 2.0.0` answer to QUIT.
    pub fn closing(host: &str) -> Reply {
        Reply::new(221, enh(2, 0, 0), format!("{host} closing connection"))
    }

    /// `250 2.0.0 ok`, for NOOP, RSET and similar.
    pub fn ok() -> Reply {
        Reply::new(250, enh(2, 0, 0), "ok")
    }

    /// `250` answer to HELO (RFC 5321 §4.1.1.1); no enhanced code, as before EHLO
    /// the client has not seen ENHANCEDSTATUSCODES.
    pub fn helo(host: &str) -> Reply {
        Reply::new(250, None, host)
    }

    /// `250` multi-line answer to EHLO: our name, then one keyword per line
    /// (RFC 5321 §4.1.1.1). The EHLO reply carries no enhanced codes (RFC 2034 §3).
    pub fn ehlo(host: &str, keywords: &[String]) -> Reply {
        let mut text = host.to_owned();
        for keyword in keywords {
            text.push('\n');
            text.push_str(keyword);
        }
        Reply::new(250, None, text)
    }

    /// `250 2.1.0` sender accepted.
    pub fn sender_ok() -> Reply {
        Reply::new(250, enh(2, 1, 0), "sender ok")
    }

    /// `250 2.1.5` recipient accepted.
    pub fn recipient_ok() -> Reply {
        Reply::new(250, enh(2, 1, 5), "recipient ok")
    }

    /// `250 2.0.0` one BDAT chunk received (RFC 3030 §2).
    pub fn chunk_received(octets: u64) -> Reply {
        Reply::new(250, enh(2, 0, 0), format!("{octets} octets received"))
    }

    /// `354` go ahead with the message (RFC 5321 §4.1.1.4).
    pub fn start_mail_input() -> Reply {
        Reply::new(354, None, "end data with <CR><LF>.<CR><LF>")
    }

    /// `250 2.0.0 queued as ID`: the message is durable (RFC 5321 §6.1).
    pub fn queued(id: &str) -> Reply {
        Reply::new(250, enh(2, 0, 0), format!("queued as {id}"))
    }

    /// `252 2.5.0` VRFY is not answered, but delivery will be attempted
    /// (RFC 5321 §3.5.3).
    pub fn vrfy() -> Reply {
        Reply::new(
            252,
            enh(2, 5, 0),
            "cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// `502 5.5.1` EXPN is not offered (RFC 5321 §3.5.3, §7.3).
    pub fn expn_disabled() -> Reply {
        Reply::new(502, enh(5, 5, 1), "EXPN not available")
    }

    /// `214 2.0.0` HELP.
    pub fn help() -> Reply {
        Reply::new(
            214,
            enh(2, 0, 0),
            "commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
        )
    }

    /// `220 2.0.0` go ahead with TLS (RFC 3207 §4); the daemon writes it.
    pub fn ready_for_tls() -> Reply {
        Reply::new(220, enh(2, 0, 0), "ready to start TLS")
    }

    /// `454 4.7.0` STARTTLS is not available on this listener (RFC 3207 §4).
    pub fn tls_not_available() -> Reply {
        Reply::new(454, enh(4, 7, 0), "TLS not available")
    }

    /// `503 5.5.1` STARTTLS on a session that is already encrypted
    /// (security.md §3).
    pub fn tls_already_active() -> Reply {
        Reply::new(503, enh(5, 5, 1), "TLS already active")
    }

    /// `500 5.5.1` unknown command.
    pub fn unknown_command() -> Reply {
        Reply::new(500, enh(5, 5, 1), "command not recognised")
    }

    /// `501 5.5.2` syntax error; `what` names the expected syntax.
    pub fn syntax_error(what: &str) -> Reply {
        Reply::new(501, enh(5, 5, 2), format!("syntax error, expected {what}"))
    }

    /// `501 5.5.4` syntax error in parameters: arguments where none belong.
    pub fn no_parameters_allowed() -> Reply {
        Reply::new(501, enh(5, 5, 4), "no parameters allowed")
    }

    /// `501 5.5.2` NUL, C0 control or DEL in a command (security.md §7).
    pub fn control_characters() -> Reply {
        Reply::new(501, enh(5, 5, 2), "control characters not allowed")
    }

    /// `501 5.5.2` HELO/EHLO argument is neither a domain nor an address
    /// literal of at most 255 octets (security.md §7).
    pub fn bad_helo() -> Reply {
        Reply::new(
            501,
            enh(5, 5, 2),
            "HELO/EHLO needs a domain name or address literal",
        )
    }

    /// `501 5.1.3` malformed address (security.md §6, §8).
    pub fn bad_address(what: &str) -> Reply {
        Reply::new(501, enh(5, 1, 3), format!("bad address syntax: {what}"))
    }

    /// `503 5.5.1` command out of sequence; `what` says what was expected.
    pub fn bad_sequence(what: &str) -> Reply {
        Reply::new(
            503,
            enh(5, 5, 1),
            format!("bad sequence of commands: {what}"),
        )
    }

    /// `554 5.5.1` DATA when every RCPT was refused (RFC 5321 §3.3, RFC 2920 §3.1).
    pub fn no_valid_recipients() -> Reply {
        Reply::new(554, enh(5, 5, 1), "no valid recipients")
    }

    /// `500 5.5.2` command line over 512 octets (security.md §8).
    pub fn line_too_long() -> Reply {
        Reply::new(500, enh(5, 5, 2), "line too long")
    }

    /// `550 5.5.2` bare LF or bare CR in a command or the message
    /// (security.md §1).
    pub fn bare_line_ending() -> Reply {
        Reply::new(550, enh(5, 5, 2), "bare <LF> or <CR> received")
    }

    /// `554 5.6.0` NUL byte in the message (security.md §1).
    pub fn nul_in_data() -> Reply {
        Reply::new(554, enh(5, 6, 0), "NUL byte in message content")
    }

    /// `554 5.6.0` 8-bit data without `BODY=8BITMIME` (RFC 6152 §3).
    pub fn not_declared_8bit() -> Reply {
        Reply::new(
            554,
            enh(5, 6, 0),
            "8-bit data not declared with BODY=8BITMIME",
        )
    }

    /// `554 5.6.0` a text line over 998 octets (RFC 5321 §4.5.3.1.6);
    /// we never truncate (security.md §8).
    pub fn data_line_too_long() -> Reply {
        Reply::new(554, enh(5, 6, 0), "message line longer than 998 octets")
    }

    /// `554 5.5.0` input pipelined where RFC 2920 forbids it (security.md §2, §3).
    pub fn sync_error() -> Reply {
        Reply::new(554, enh(5, 5, 0), "protocol synchronization error")
    }

    /// `554 5.7.0` an HTTP request on the SMTP port (security.md §2).
    pub fn http_refused() -> Reply {
        Reply::new(554, enh(5, 7, 0), "this is an SMTP server, not HTTP")
    }

    /// `550 5.7.1` recipient domain not relayed (security.md §6).
    pub fn relay_denied() -> Reply {
        Reply::new(550, enh(5, 7, 1), "relaying denied")
    }

    /// `554 5.7.1` client address not trusted (security.md §6).
    pub fn client_denied() -> Reply {
        Reply::new(554, enh(5, 7, 1), "client not allowed to relay")
    }

    /// `553 5.7.1` sender domain not allowed; `why` is a short reason.
    pub fn sender_denied(why: &str) -> Reply {
        Reply::new(553, enh(5, 7, 1), format!("sender not allowed: {why}"))
    }

    /// `552 5.3.4` message over the size limit (RFC 1870 §6).
    pub fn message_too_big(limit: u64) -> Reply {
        Reply::new(
            552,
            enh(5, 3, 4),
            format!("message size exceeds limit of {limit} octets"),
        )
    }

    /// `452 4.5.3` too many recipients (RFC 5321 §4.5.3.1.10).
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, enh(4, 5, 3), "too many recipients")
    }

    /// `421 4.4.2` too many errors or junk commands (security.md §11).
    pub fn too_many_errors() -> Reply {
        Reply::new(421, enh(4, 4, 2), "too many errors, closing connection")
    }

    /// `421 4.4.2` the client was idle or too slow (RFC 5321 §4.5.3.2).
    pub fn timeout() -> Reply {
        Reply::new(421, enh(4, 4, 2), "timeout, closing connection")
    }

    /// `421 4.7.0` too many concurrent sessions (security.md §11).
    pub fn too_many_connections() -> Reply {
        Reply::new(421, enh(4, 7, 0), "too many connections, try later")
    }

    /// `554 5.4.6` too many `Received:` headers (RFC 5321 §6.3).
    pub fn loop_detected() -> Reply {
        Reply::new(554, enh(5, 4, 6), "routing loop detected")
    }

    /// `553 5.6.7` non-ASCII address without `SMTPUTF8` (RFC 6531 §3.5),
    /// or an address that is not valid UTF-8.
    pub fn utf8_not_declared() -> Reply {
        Reply::new(
            553,
            enh(5, 6, 7),
            "non-ASCII address requires SMTPUTF8 and valid UTF-8",
        )
    }

    /// `555 5.5.4` MAIL/RCPT parameter not recognised (RFC 5321 §4.1.1.11).
    pub fn unknown_parameter() -> Reply {
        Reply::new(555, enh(5, 5, 4), "parameter not recognised")
    }

    /// `501 5.5.4` bad parameter value: bad xtext, non-printable ENVID/ORCPT,
    /// duplicates (RFC 3461 §4, security.md §7).
    pub fn bad_xtext() -> Reply {
        Reply::new(501, enh(5, 5, 4), "bad parameter value")
    }

    /// `503 5.6.1` BODY=BINARYMIME used with DATA (RFC 3030 §3).
    pub fn binarymime_needs_bdat() -> Reply {
        Reply::new(503, enh(5, 6, 1), "BINARYMIME requires BDAT")
    }

    /// `538 5.7.11` AUTH before TLS (RFC 4954 §4, security.md §10).
    pub fn auth_needs_tls() -> Reply {
        Reply::new(
            538,
            enh(5, 7, 11),
            "encryption required for requested authentication mechanism",
        )
    }

    /// `503 5.5.1` AUTH is not enabled on this relay.
    pub fn auth_disabled() -> Reply {
        Reply::new(503, enh(5, 5, 1), "authentication not enabled")
    }

    /// `451 4.3.0` the message could not be stored.
    pub fn storage_failed() -> Reply {
        Reply::new(451, enh(4, 3, 0), "could not store message, try later")
    }

    /// `452 4.3.1` spool full (RFC 3463 §3.4).
    pub fn insufficient_storage() -> Reply {
        Reply::new(452, enh(4, 3, 1), "insufficient system storage")
    }

    /// `451 4.3.0` a local error in processing.
    pub fn local_error() -> Reply {
        Reply::new(451, enh(4, 3, 0), "local error in processing")
    }

    /// `421 4.3.2` the relay is shutting down.
    pub fn shutting_down() -> Reply {
        Reply::new(421, enh(4, 3, 2), "service shutting down, try later")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every constructor in the catalogue, with a short name for messages.
    fn catalogue() -> Vec<(&'static str, Reply)> {
        vec![
            ("service_ready", Reply::service_ready("relay.example")),
            ("closing", Reply::closing("relay.example")),
            ("ok", Reply::ok()),
            ("helo", Reply::helo("relay.example")),
            (
                "ehlo",
                Reply::ehlo("relay.example", &["PIPELINING".into(), "8BITMIME".into()]),
            ),
            ("sender_ok", Reply::sender_ok()),
            ("recipient_ok", Reply::recipient_ok()),
            ("chunk_received", Reply::chunk_received(12)),
            ("start_mail_input", Reply::start_mail_input()),
            ("queued", Reply::queued("01ABC")),
            ("vrfy", Reply::vrfy()),
            ("expn_disabled", Reply::expn_disabled()),
            ("help", Reply::help()),
            ("ready_for_tls", Reply::ready_for_tls()),
            ("tls_not_available", Reply::tls_not_available()),
            ("tls_already_active", Reply::tls_already_active()),
            ("unknown_command", Reply::unknown_command()),
            ("syntax_error", Reply::syntax_error("MAIL FROM:<address>")),
            ("no_parameters_allowed", Reply::no_parameters_allowed()),
            ("control_characters", Reply::control_characters()),
            ("bad_helo", Reply::bad_helo()),
            ("bad_address", Reply::bad_address("x")),
            ("bad_sequence", Reply::bad_sequence("x")),
            ("no_valid_recipients", Reply::no_valid_recipients()),
            ("line_too_long", Reply::line_too_long()),
            ("bare_line_ending", Reply::bare_line_ending()),
            ("nul_in_data", Reply::nul_in_data()),
            ("not_declared_8bit", Reply::not_declared_8bit()),
            ("data_line_too_long", Reply::data_line_too_long()),
            ("sync_error", Reply::sync_error()),
            ("http_refused", Reply::http_refused()),
            ("relay_denied", Reply::relay_denied()),
            ("client_denied", Reply::client_denied()),
            ("sender_denied", Reply::sender_denied("x")),
            ("message_too_big", Reply::message_too_big(10)),
            ("too_many_recipients", Reply::too_many_recipients()),
            ("too_many_errors", Reply::too_many_errors()),
            ("timeout", Reply::timeout()),
            ("too_many_connections", Reply::too_many_connections()),
            ("loop_detected", Reply::loop_detected()),
            ("utf8_not_declared", Reply::utf8_not_declared()),
            ("unknown_parameter", Reply::unknown_parameter()),
            ("bad_xtext", Reply::bad_xtext()),
            ("binarymime_needs_bdat", Reply::binarymime_needs_bdat()),
            ("auth_needs_tls", Reply::auth_needs_tls()),
            ("auth_disabled", Reply::auth_disabled()),
            ("storage_failed", Reply::storage_failed()),
            ("insufficient_storage", Reply::insufficient_storage()),
            ("local_error", Reply::local_error()),
            ("shutting_down", Reply::shutting_down()),
        ]
    }

    /// Asserts the wire invariants: CRLF after every line, no other CR or LF.
    fn assert_clean_wire(name: &str, wire: &[u8]) {
        assert!(wire.ends_with(b"\r\n"), "{name}: no final CRLF");
        for line in wire.split(|&b| b == b'\n') {
            let Some(body) = line.strip_suffix(b"\r") else {
                assert!(line.is_empty(), "{name}: bare LF in {wire:?}");
                continue;
            };
            assert!(!body.contains(&b'\r'), "{name}: bare CR in {wire:?}");
            assert!(body.len() + 2 <= MAX_REPLY_LINE, "{name}: line too long");
        }
    }

    #[test]
    fn catalogue_classes_pair_and_wire_is_clean() {
        for (name, reply) in catalogue() {
            if let Some(e) = reply.enhanced() {
                assert_eq!(
                    u16::from(e.class),
                    reply.code() / 100,
                    "{name}: {reply} pairs the wrong class"
                );
            }
            assert!((200..600).contains(&reply.code()), "{name}");
            assert_clean_wire(name, &reply.to_bytes());
        }
    }

    #[test]
    fn catalogue_codes() {
        let table = [
            (Reply::relay_denied(), "550 5.7.1"),
            (Reply::client_denied(), "554 5.7.1"),
            (Reply::sender_denied("x"), "553 5.7.1"),
            (Reply::message_too_big(1), "552 5.3.4"),
            (Reply::too_many_recipients(), "452 4.5.3"),
            (Reply::bare_line_ending(), "550 5.5.2"),
            (Reply::nul_in_data(), "554 5.6.0"),
            (Reply::sync_error(), "554 5.5.0"),
            (Reply::http_refused(), "554 5.7.0"),
            (Reply::too_many_errors(), "421 4.4.2"),
            (Reply::loop_detected(), "554 5.4.6"),
            (Reply::utf8_not_declared(), "553 5.6.7"),
            (Reply::unknown_parameter(), "555 5.5.4"),
            (Reply::bad_xtext(), "501 5.5.4"),
            (Reply::auth_needs_tls(), "538 5.7.11"),
            (Reply::line_too_long(), "500 5.5.2"),
            (Reply::bad_address("x"), "501 5.1.3"),
            (Reply::control_characters(), "501 5.5.2"),
        ];
        for (reply, prefix) in table {
            assert!(reply.to_string().starts_with(prefix), "{reply} vs {prefix}");
        }
    }

    #[test]
    fn encodes_lines() {
        let table: [(Reply, &[u8]); 5] = [
            (Reply::ok(), b"250 2.0.0 ok\r\n"),
            (Reply::new(220, None, "host ESMTP"), b"220 host ESMTP\r\n"),
            (
                Reply::new(250, None, "host\nPIPELINING\nSIZE 10"),
                b"250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
            ),
            (
                Reply::new(550, enh(5, 7, 1), "a\nb"),
                b"550-5.7.1 a\r\n550 5.7.1 b\r\n",
            ),
            (Reply::new(250, None, ""), b"250\r\n"),
        ];
        for (reply, wire) in table {
            assert_eq!(reply.to_bytes(), wire, "{reply}");
        }
    }

    #[test]
    fn enhanced_code_length_matches_its_text() {
        for code in [
            enh(2, 0, 0),
            enh(5, 7, 64),
            enh(4, 10, 100),
            enh(5, 999, 65535),
        ]
        .into_iter()
        .flatten()
        {
            assert_eq!(code.wire_len(), code.to_string().len(), "{code}");
        }
    }

    #[test]
    fn sanitises_injected_text() {
        let table = [
            ("evil\r\n250 ok", "evil  250 ok"),
            ("nul\0del\x7f", "nul del "),
            ("caf\u{e9}", "caf?"),
            ("tab\there", "tab here"),
        ];
        for (input, expected) in table {
            let reply = Reply::new(550, enh(5, 0, 0), input);
            assert_eq!(reply.text(), expected);
            assert_clean_wire(input, &reply.to_bytes());
        }
    }

    #[test]
    fn splits_long_text_within_512() {
        let long_word = "x".repeat(2000);
        let words = "word ".repeat(300);
        for text in [long_word, words] {
            let reply = Reply::new(550, enh(5, 7, 1), text.clone());
            let wire = reply.to_bytes();
            assert_clean_wire("long", &wire);
            let joined: String = String::from_utf8_lossy(&wire)
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .map(|l| l.get(10..).unwrap_or(""))
                .collect::<Vec<_>>()
                .join(" ");
            assert_eq!(joined.replace(' ', ""), text.replace(' ', ""));
            assert!(wire.starts_with(b"550-5.7.1 "));
        }
    }

    #[test]
    fn display_and_classes() {
        let table = [
            (Reply::ok(), "250 2.0.0 ok", true, false, false),
            (
                Reply::start_mail_input(),
                "354 end data with <CR><LF>.<CR><LF>",
                true,
                false,
                false,
            ),
            (
                Reply::too_many_recipients(),
                "452 4.5.3 too many recipients",
                false,
                true,
                false,
            ),
            (
                Reply::relay_denied(),
                "550 5.7.1 relaying denied",
                false,
                false,
                true,
            ),
        ];
        for (reply, shown, positive, transient, permanent) in table {
            assert_eq!(reply.to_string(), shown);
            assert_eq!(reply.is_positive(), positive, "{shown}");
            assert_eq!(reply.is_transient(), transient, "{shown}");
            assert_eq!(reply.is_permanent(), permanent, "{shown}");
        }
    }

    #[test]
    fn out_of_range_code_becomes_local_error() {
        assert_eq!(Reply::new(7, None, "x").code(), 451);
        assert_eq!(Reply::new(1000, None, "x").code(), 451);
    }
}
