//! SMTP command lines: one strict parser from a line (without its CRLF) to a
//! [`Command`], and the encoder for the same type.
//!
//! The grammar is RFC 5321 §4.1.1 and §4.1.2 with the extensions we offer
//! (RFC 3030 BDAT, RFC 3207 STARTTLS, RFC 6531 SMTPUTF8). Control characters
//! are refused anywhere in a line (security.md §7) and HTTP request shapes are
//! recognised so the session can hang up on them (security.md §2). Framing
//! lines is [`crate::line`]'s job; what a command means in a given state is
//! [`crate::server`]'s.

use std::fmt;

use crate::address::{
    ForwardPath, ReversePath, is_address_literal, is_domain_name, parse_forward_path,
    parse_reverse_path,
};
use crate::params::{MailParams, RcptParams};
use crate::reply::Reply;

/// Longest command line in octets without its CRLF (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 510;

/// Longest verb kept in [`Command::Unknown`] and [`Command::Auth`].
const MAX_SQUASHED: usize = 16;

/// One parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain-or-literal` (RFC 5321 §4.1.1.1).
    Ehlo(String),
    /// `HELO domain-or-literal`.
    Helo(String),
    /// `MAIL FROM:<reverse-path> [params]` (RFC 5321 §4.1.1.2).
    Mail {
        /// The sender, or the null path.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path> [params]` (RFC 5321 §4.1.1.3).
    Rcpt {
        /// The recipient.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA` (RFC 5321 §4.1.1.4).
    Data,
    /// `BDAT size [LAST]` (RFC 3030 §2).
    Bdat {
        /// Octets of chunk data that follow the command line.
        size: u64,
        /// Whether this is the final chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`, the argument as given.
    Vrfy(String),
    /// `EXPN string`, the argument as given.
    Expn(String),
    /// `HELP [string]`.
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism …`: only the mechanism name, squashed, is kept; any
    /// initial response is dropped so credentials never reach a log.
    Auth(String),
    /// An HTTP request line or header (`GET`, `POST`, `Host:` …): a
    /// cross-protocol attempt (security.md §2).
    Http,
    /// Any other verb, squashed to at most 16 printable characters so it is
    /// safe to log or use as a metric label.
    Unknown(String),
}

/// Parses one command line, given without its CRLF.
///
/// `smtputf8_allowed` says whether non-ASCII addresses are allowed for this
/// command: the session passes whether the open transaction's MAIL carried
/// `SMTPUTF8` (RFC 6531 §3.4). A MAIL command is also allowed them when it
/// carries `SMTPUTF8` itself.
pub fn parse_command(line: &[u8], smtputf8_allowed: bool) -> Result<Command, Reply> {
    if line.len() > MAX_COMMAND_LINE {
        return Err(Reply::line_too_long());
    }
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Reply::control_characters());
    }
    let (verb, argument) = match line.iter().position(|&b| b == b' ') {
        Some(space) => line.split_at_checked(space).unwrap_or((line, b"")),
        None => (line, b"".as_slice()),
    };
    let argument = argument.strip_prefix(b" ").unwrap_or(argument);
    let verb_upper = verb.to_ascii_uppercase();
    if is_http(&verb_upper) {
        return Ok(Command::Http);
    }
    let Ok(argument) = std::str::from_utf8(argument) else {
        return Err(match verb_upper.as_slice() {
            b"MAIL" | b"RCPT" => Reply::utf8_not_declared(),
            _ => Reply::syntax_error("valid UTF-8"),
        });
    };
    parse_verb(&verb_upper, verb, argument, smtputf8_allowed)
}

fn parse_verb(
    verb_upper: &[u8],
    verb: &[u8],
    argument: &str,
    smtputf8: bool,
) -> Result<Command, Reply> {
    match verb_upper {
        b"EHLO" => Ok(Command::Ehlo(parse_helo_name(argument)?)),
        b"HELO" => Ok(Command::Helo(parse_helo_name(argument)?)),
        b"MAIL" => parse_mail(argument, smtputf8),
        b"RCPT" => parse_rcpt(argument, smtputf8),
        b"DATA" => no_argument(argument, Command::Data),
        b"BDAT" => parse_bdat(argument),
        b"RSET" => no_argument(argument, Command::Rset),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_argument(argument, Command::Quit),
        b"VRFY" => required_argument(argument, "VRFY string").map(Command::Vrfy),
        b"EXPN" => required_argument(argument, "EXPN string").map(Command::Expn),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_argument(argument, Command::StartTls),
        b"AUTH" => Ok(Command::Auth(squash(
            argument.split(' ').next().unwrap_or("").as_bytes(),
        ))),
        _ => Ok(Command::Unknown(squash(verb))),
    }
}

/// HTTP request methods and header shapes (security.md §2). No SMTP verb
/// collides with these, so the verb alone decides.
fn is_http(verb_upper: &[u8]) -> bool {
    const SHAPES: [&[u8]; 8] = [
        b"GET",
        b"POST",
        b"CONNECT",
        b"HEAD",
        b"PUT",
        b"OPTIONS",
        b"HOST:",
        b"USER-AGENT:",
    ];
    SHAPES.contains(&verb_upper)
}

fn no_argument(argument: &str, command: Command) -> Result<Command, Reply> {
    if argument.trim_end_matches(' ').is_empty() {
        Ok(command)
    } else {
        Err(Reply::no_parameters_allowed())
    }
}

fn required_argument(argument: &str, what: &str) -> Result<String, Reply> {
    let argument = argument.trim_matches(' ');
    if argument.is_empty() {
        Err(Reply::syntax_error(what))
    } else {
        Ok(argument.to_owned())
    }
}

/// `Domain / address-literal`, at most 255 octets (RFC 5321 §4.1.1.1,
/// security.md §7). `_` is tolerated: LAN printers use it in host names.
fn parse_helo_name(argument: &str) -> Result<String, Reply> {
    let name = argument.trim_end_matches(' ');
    let literal_ok = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .is_some_and(is_address_literal);
    if name.len() <= 255 && (literal_ok || is_domain_name(name, false, true)) {
        Ok(name.to_owned())
    } else {
        Err(Reply::bad_helo())
    }
}

/// `MAIL FROM:<reverse-path> [SP params]`; one space after the colon is
/// tolerated because many clients send it.
fn parse_mail(argument: &str, smtputf8: bool) -> Result<Command, Reply> {
    let path = strip_keyword(argument, "FROM:")
        .ok_or_else(|| Reply::syntax_error("MAIL FROM:<address>"))?;
    let declared = smtputf8 || declares_smtputf8(path);
    let (from, rest) = parse_reverse_path(path, declared)?;
    let params = MailParams::parse(rest)?;
    Ok(Command::Mail { from, params })
}

/// `RCPT TO:<forward-path> [SP params]`.
fn parse_rcpt(argument: &str, smtputf8: bool) -> Result<Command, Reply> {
    let path =
        strip_keyword(argument, "TO:").ok_or_else(|| Reply::syntax_error("RCPT TO:<address>"))?;
    let (to, rest) = parse_forward_path(path, smtputf8)?;
    let params = RcptParams::parse(rest)?;
    Ok(Command::Rcpt { to, params })
}

/// Strips `FROM:`/`TO:` case-insensitively, and at most one space after it.
fn strip_keyword<'a>(argument: &'a str, keyword: &str) -> Option<&'a str> {
    let (head, rest) = argument.split_at_checked(keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// Whether a MAIL argument carries the `SMTPUTF8` keyword after its path.
fn declares_smtputf8(path_and_params: &str) -> bool {
    path_and_params
        .rsplit_once('>')
        .map(|(_, params)| params)
        .unwrap_or("")
        .split(' ')
        .any(|p| p.eq_ignore_ascii_case("SMTPUTF8"))
}

/// `BDAT 1*DIGIT [SP "LAST"]` (RFC 3030 §2).
fn parse_bdat(argument: &str) -> Result<Command, Reply> {
    let mut words = argument.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Reply::syntax_error("BDAT size [LAST]"))?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(Reply::syntax_error("BDAT size [LAST]")),
    };
    if words.next().is_some() {
        return Err(Reply::syntax_error("BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

/// At most 16 characters, uppercased, anything but printable ASCII as `?`.
fn squash(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(MAX_SQUASHED)
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b.to_ascii_uppercase())
            } else {
                '?'
            }
        })
        .collect()
}

impl fmt::Display for Command {
    /// The command line without CRLF, in canonical form: what a client would
    /// send, and what a log may show (AUTH shows the mechanism only).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo(name) => write!(f, "EHLO {name}"),
            Command::Helo(name) => write!(f, "HELO {name}"),
            Command::Mail { from, params } => {
                write!(f, "MAIL FROM:{from}")?;
                write_params(f, &params.to_esmtp_string())
            }
            Command::Rcpt { to, params } => {
                write!(f, "RCPT TO:{to}")?;
                write_params(f, &params.to_esmtp_string())
            }
            Command::Data => f.write_str("DATA"),
            Command::Bdat { size, last: true } => write!(f, "BDAT {size} LAST"),
            Command::Bdat { size, last: false } => write!(f, "BDAT {size}"),
            Command::Rset => f.write_str("RSET"),
            Command::Noop => f.write_str("NOOP"),
            Command::Quit => f.write_str("QUIT"),
            Command::Vrfy(what) => write!(f, "VRFY {what}"),
            Command::Expn(what) => write!(f, "EXPN {what}"),
            Command::Help => f.write_str("HELP"),
            Command::StartTls => f.write_str("STARTTLS"),
            Command::Auth(mechanism) => write!(f, "AUTH {mechanism}"),
            Command::Http => f.write_str("HTTP"),
            Command::Unknown(verb) => f.write_str(verb),
        }
    }
}

fn write_params(f: &mut fmt::Formatter<'_>, params: &str) -> fmt::Result {
    if params.is_empty() {
        Ok(())
    } else {
        write!(f, " {params}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and renders: `Ok(canonical form)` or `Err("code enhanced")`.
    fn parse(line: &[u8], utf8: bool) -> Result<String, String> {
        parse_command(line, utf8)
            .map(|c| c.to_string())
            .map_err(|r| r.to_string().get(..9).unwrap_or("").to_owned())
    }

    #[test]
    fn commands() {
        let table: &[(&[u8], Result<&str, &str>)] = &[
            (b"EHLO client.example", Ok("EHLO client.example")),
            (b"ehlo client.example ", Ok("EHLO client.example")),
            (b"HELO [192.0.2.7]", Ok("HELO [192.0.2.7]")),
            (b"EHLO printer_3", Ok("EHLO printer_3")),
            (b"EHLO", Err("501 5.5.2")),
            (b"EHLO bad name", Err("501 5.5.2")),
            (b"EHLO a@b", Err("501 5.5.2")),
            (b"EHLO [1.2.3]", Err("501 5.5.2")),
            (
                b"MAIL FROM:<a@example.com>",
                Ok("MAIL FROM:<a@example.com>"),
            ),
            (
                b"mail from: <a@example.com> size=10",
                Ok("MAIL FROM:<a@example.com> SIZE=10"),
            ),
            (b"MAIL FROM:<>", Ok("MAIL FROM:<>")),
            (b"MAIL FROM:  <a@example.com>", Err("501 5.1.3")),
            (b"MAIL TO:<a@example.com>", Err("501 5.5.2")),
            (b"MAIL FROM<a@example.com>", Err("501 5.5.2")),
            (b"MAIL", Err("501 5.5.2")),
            (b"MAIL FROM:<a@example.com> FOO=BAR", Err("555 5.5.4")),
            (b"MAIL FROM:<a@example.com> ENVID=+00", Err("501 5.5.4")),
            (
                "MAIL FROM:<jos\u{e9}@example.com>".as_bytes(),
                Err("553 5.6.7"),
            ),
            (
                "MAIL FROM:<jos\u{e9}@example.com> SMTPUTF8".as_bytes(),
                Ok("MAIL FROM:<jos\u{e9}@example.com> SMTPUTF8"),
            ),
            (b"MAIL FROM:<jos\xe9@example.com>", Err("553 5.6.7")),
            (
                b"RCPT TO:<b@example.com> NOTIFY=NEVER",
                Ok("RCPT TO:<b@example.com> NOTIFY=NEVER"),
            ),
            (b"RCPT TO:b@example.com", Err("501 5.1.3")),
            (b"RCPT TO:<b@x@y>", Err("501 5.1.3")),
            ("RCPT TO:<b\u{fc}@example.com>".as_bytes(), Err("553 5.6.7")),
            (b"DATA", Ok("DATA")),
            (b"data ", Ok("DATA")),
            (b"DATA x", Err("501 5.5.4")),
            (b"BDAT 100", Ok("BDAT 100")),
            (b"bdat 0 last", Ok("BDAT 0 LAST")),
            (b"BDAT", Err("501 5.5.2")),
            (b"BDAT -1", Err("501 5.5.2")),
            (b"BDAT 99999999999999999999999", Err("501 5.5.2")),
            (b"BDAT 1 LAST x", Err("501 5.5.2")),
            (b"BDAT 1 FIRST", Err("501 5.5.2")),
            (b"RSET", Ok("RSET")),
            (b"RSET now", Err("501 5.5.4")),
            (b"NOOP anything", Ok("NOOP")),
            (b"QUIT", Ok("QUIT")),
            (b"VRFY postmaster", Ok("VRFY postmaster")),
            (b"VRFY", Err("501 5.5.2")),
            (b"EXPN list", Ok("EXPN list")),
            (b"HELP me", Ok("HELP")),
            (b"STARTTLS", Ok("STARTTLS")),
            (b"STARTTLS x", Err("501 5.5.4")),
            (b"AUTH PLAIN AGpvZQBzZWNyZXQ=", Ok("AUTH PLAIN")),
            (b"GET / HTTP/1.1", Ok("HTTP")),
            (b"POST /submit HTTP/1.0", Ok("HTTP")),
            (b"CONNECT relay:25 HTTP/1.1", Ok("HTTP")),
            (b"Host: relay.lan", Ok("HTTP")),
            (b"User-Agent: Mozilla/5.0", Ok("HTTP")),
            (b"get )", Ok("HTTP")),
            (b"OPTIONS", Ok("HTTP")),
            (b"XYZZYXYZZYXYZZYXYZZY now", Ok("XYZZYXYZZYXYZZYX")),
            (b"\xff\xfe", Ok("??")),
            (b"", Ok("")),
        ];
        for (line, expected) in table {
            let expected = expected.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(
                parse(line, false),
                expected,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn control_characters_anywhere() {
        let table: &[&[u8]] = &[
            b"MAIL FROM:<a\0@example.com>",
            b"MAIL FROM:<\"a\x01\"@example.com>",
            b"RCPT TO:<b@example.com>\x7f",
            b"EHLO a\tb",
            b"NOOP \x1b[31m",
            b"QU\rIT",
            b"QUIT\n",
            b"\0",
        ];
        for line in table {
            assert_eq!(parse(line, true), Err("501 5.5.2".to_owned()), "{line:?}");
        }
    }

    #[test]
    fn smtputf8_for_rcpt_comes_from_the_transaction() {
        let line = "RCPT TO:<b\u{fc}@example.com>".as_bytes();
        assert!(parse(line, true).is_ok());
        assert_eq!(parse(line, false), Err("553 5.6.7".to_owned()));
    }

    #[test]
    fn over_long_line() {
        let mut line = b"NOOP ".to_vec();
        line.resize(511, b'x');
        assert_eq!(parse(&line, false), Err("500 5.5.2".to_owned()));
        line.truncate(510);
        assert_eq!(parse(&line, false), Ok("NOOP".to_owned()));
    }

    #[test]
    fn round_trips_through_display() {
        let lines = [
            "EHLO relay.example",
            "MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x+2By",
            "RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bc@example.com",
            "BDAT 10 LAST",
            "QUIT",
        ];
        for line in lines {
            let command = parse_command(line.as_bytes(), true).unwrap();
            assert_eq!(command.to_string(), line);
            assert_eq!(
                parse_command(command.to_string().as_bytes(), true),
                Ok(command)
            );
        }
    }
}
