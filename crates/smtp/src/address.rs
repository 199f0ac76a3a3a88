//! Envelope addresses: the reverse-path of MAIL and the forward-path of RCPT,
//! parsed strictly by the grammar of RFC 5321 §4.1.2 (with RFC 6531 §3.3 for
//! UTF-8 when the transaction declared SMTPUTF8).
//!
//! The parser only decides whether an address is well formed; whether it may
//! be relayed is the policy's job (security.md §6). Source routes are accepted
//! and dropped (RFC 5321 §4.1.1.3, Appendix C); `%`, `!` and quoted `@` are
//! ordinary local-part characters and are kept verbatim, never interpreted.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::reply::Reply;

/// Longest local part in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain in octets (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path in octets, angle brackets included (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// Why an address was refused; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not a path by the grammar: missing or unbalanced `<>`, two unquoted
    /// `@`, empty local part or domain, bad label. `501 5.1.3`.
    #[error("malformed address: {0}")]
    Syntax(&'static str),
    /// A mailbox without `@domain`. `501 5.1.3`.
    #[error("unqualified address")]
    Unqualified,
    /// Local part over 64, domain over 255 or path over 256 octets. `501 5.1.3`.
    #[error("address too long: {0}")]
    TooLong(&'static str),
    /// NUL, C0 control or DEL, even inside quotes. `501 5.5.2`.
    #[error("control character in address")]
    ControlCharacter,
    /// Non-ASCII without SMTPUTF8. `553 5.6.7`.
    #[error("non-ASCII address without SMTPUTF8")]
    NotDeclaredUtf8,
}

impl AddressError {
    /// The reply that tells the client about this error.
    pub fn reply(&self) -> Reply {
        match self {
            AddressError::Syntax(what) | AddressError::TooLong(what) => Reply::bad_address(what),
            AddressError::Unqualified => Reply::bad_address("unqualified address"),
            AddressError::ControlCharacter => Reply::control_characters(),
            AddressError::NotDeclaredUtf8 => Reply::utf8_not_declared(),
        }
    }
}

impl From<AddressError> for Reply {
    fn from(error: AddressError) -> Reply {
        error.reply()
    }
}

/// The domain of a mailbox, as received.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name (ASCII, or U-labels under SMTPUTF8), as received.
    Name(String),
    /// An address literal: the text between `[` and `]`, such as `192.0.2.1`
    /// or `IPv6:2001:db8::1` (RFC 5321 §4.1.3). The policy refuses these.
    Literal(String),
}

impl Domain {
    /// The domain as written in the address (literals with their brackets).
    pub fn as_written(&self) -> String {
        self.to_string()
    }

    /// Whether this is an address literal.
    pub fn is_literal(&self) -> bool {
        matches!(self, Domain::Literal(_))
    }

    /// The name lowercased (ASCII only) with one trailing dot removed; the
    /// form used for comparisons (security.md §6). Literals keep brackets.
    pub fn ascii_lowercase(&self) -> String {
        match self {
            Domain::Name(name) => strip_one_dot(name).to_ascii_lowercase(),
            Domain::Literal(_) => self.to_string().to_ascii_lowercase(),
        }
    }

    /// Exact, case-insensitive comparison with `other`, each side with one
    /// trailing dot stripped. Never a prefix or suffix match, so
    /// `evilexample.com` does not match `example.com`. Literals never match.
    pub fn matches(&self, other: &str) -> bool {
        match self {
            Domain::Name(name) => strip_one_dot(name).eq_ignore_ascii_case(strip_one_dot(other)),
            Domain::Literal(_) => false,
        }
    }
}

fn strip_one_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(name) => f.write_str(name),
            Domain::Literal(literal) => write!(f, "[{literal}]"),
        }
    }
}

/// `local-part@domain`, the local part exactly as received (quotes kept).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

impl Mailbox {
    /// The local part as received, quoted form included.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain as received.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The domain lowercased with one trailing dot removed, for comparisons.
    pub fn domain_ascii_lowercase(&self) -> String {
        self.domain.ascii_lowercase()
    }

    /// Whether any part of the address is non-ASCII (needs SMTPUTF8 upstream).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.to_string().is_ascii()
    }

    /// Parses a bare mailbox `local@domain` (no angle brackets), as the ORCPT
    /// check or a config file might need. `utf8` allows RFC 6531 characters.
    pub fn parse(text: &str, utf8: bool) -> Result<Mailbox, AddressError> {
        check_characters(text, utf8)?;
        let mut cursor = Cursor::new(text);
        let mailbox = parse_mailbox(&mut cursor, utf8)?;
        if !cursor.rest().is_empty() {
            return Err(AddressError::Syntax("trailing characters"));
        }
        Ok(mailbox)
    }
}

impl fmt::Display for Mailbox {
    /// The canonical `local@domain` form used when forwarding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The argument of `MAIL FROM:` (RFC 5321 §4.1.2 `Reverse-path`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: the null sender, used by bounces (RFC 5321 §4.5.5).
    Null,
    /// A sender mailbox (any source route dropped).
    Mailbox(Mailbox),
}

impl ReversePath {
    /// The mailbox, unless this is the null sender.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(mailbox) => Some(mailbox),
        }
    }
}

impl fmt::Display for ReversePath {
    /// The path with brackets, as sent in `MAIL FROM:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(mailbox) => write!(f, "<{mailbox}>"),
        }
    }
}

/// The argument of `RCPT TO:` (RFC 5321 §4.1.2 `Forward-path`), any source
/// route dropped. The unqualified `<postmaster>` of RFC 5321 §4.1.1.3 is
/// refused like every unqualified recipient (security.md §6): this relay has
/// no local mailboxes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ForwardPath(pub Mailbox);

impl ForwardPath {
    /// The recipient mailbox.
    pub fn mailbox(&self) -> &Mailbox {
        &self.0
    }
}

impl fmt::Display for ForwardPath {
    /// The path with brackets, as sent in `RCPT TO:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// Parses a reverse-path at the start of `text`; returns it and the rest of
/// the text (the ESMTP parameters). `utf8`: SMTPUTF8 is in force.
pub fn parse_reverse_path(text: &str, utf8: bool) -> Result<(ReversePath, &str), AddressError> {
    let (path, rest) = split_path(text)?;
    check_characters(path, utf8)?;
    if path == "<>" {
        return Ok((ReversePath::Null, rest));
    }
    Ok((ReversePath::Mailbox(parse_path(path, utf8)?), rest))
}

/// Parses a forward-path at the start of `text`; returns it and the rest of
/// the text (the ESMTP parameters). `utf8`: SMTPUTF8 is in force.
pub fn parse_forward_path(text: &str, utf8: bool) -> Result<(ForwardPath, &str), AddressError> {
    let (path, rest) = split_path(text)?;
    check_characters(path, utf8)?;
    Ok((ForwardPath(parse_path(path, utf8)?), rest))
}

/// Splits `<...>` (quote-aware, so a quoted `>` does not end it) from what
/// follows, which must be empty or start with a space.
fn split_path(text: &str) -> Result<(&str, &str), AddressError> {
    if !text.starts_with('<') {
        return Err(AddressError::Syntax("missing '<'"));
    }
    let end = closing_bracket(text).ok_or(AddressError::Syntax("missing '>'"))?;
    let (path, rest) = text
        .split_at_checked(end + 1)
        .ok_or(AddressError::Syntax("missing '>'"))?;
    if path.len() > MAX_PATH {
        return Err(AddressError::TooLong("path over 256 octets"));
    }
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return Err(AddressError::Syntax("text after '>'"));
    }
    Ok((path, rest))
}

/// Byte index of the `>` that closes the path, skipping quoted strings.
fn closing_bracket(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(index),
            _ => {}
        }
    }
    None
}

/// NUL, C0 controls and DEL are refused anywhere, even quoted (security.md §7);
/// non-ASCII only under SMTPUTF8 (RFC 6531 §3.3, security.md §9).
fn check_characters(text: &str, utf8: bool) -> Result<(), AddressError> {
    if text.chars().any(|c| c.is_ascii_control()) {
        return Err(AddressError::ControlCharacter);
    }
    if !utf8 && !text.is_ascii() {
        return Err(AddressError::NotDeclaredUtf8);
    }
    Ok(())
}

/// Parses `<[A-d-l ":"] Mailbox>`, dropping any source route.
fn parse_path(path: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    let inner = path
        .strip_prefix('<')
        .and_then(|p| p.strip_suffix('>'))
        .ok_or(AddressError::Syntax("unbalanced '<>'"))?;
    let mut cursor = Cursor::new(inner);
    if cursor.peek() == Some('@') {
        skip_source_route(&mut cursor, utf8)?;
    }
    let mailbox = parse_mailbox(&mut cursor, utf8)?;
    if !cursor.rest().is_empty() {
        return Err(AddressError::Syntax("unexpected character"));
    }
    Ok(mailbox)
}

/// `A-d-l = At-domain *( "," At-domain ) ":"` (RFC 5321 §4.1.2); the route is
/// checked for syntax and then ignored (Appendix C).
fn skip_source_route(cursor: &mut Cursor<'_>, utf8: bool) -> Result<(), AddressError> {
    loop {
        if !cursor.eat('@') {
            return Err(AddressError::Syntax("bad source route"));
        }
        let hop = cursor.take_while(|c| c != ',' && c != ':');
        parse_domain(hop, utf8)?;
        if cursor.eat(':') {
            return Ok(());
        }
        if !cursor.eat(',') {
            return Err(AddressError::Syntax("bad source route"));
        }
    }
}

/// `Mailbox = Local-part "@" ( Domain / address-literal )`.
fn parse_mailbox(cursor: &mut Cursor<'_>, utf8: bool) -> Result<Mailbox, AddressError> {
    let local = parse_local_part(cursor, utf8)?;
    if local.is_empty() {
        return Err(AddressError::Syntax("empty local part"));
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::TooLong("local part over 64 octets"));
    }
    if !cursor.eat('@') {
        return if cursor.rest().is_empty() {
            Err(AddressError::Unqualified)
        } else {
            Err(AddressError::Syntax("unexpected character in local part"))
        };
    }
    let domain = parse_domain(cursor.take_all(), utf8)?;
    Ok(Mailbox {
        local: local.to_owned(),
        domain,
    })
}

/// `Local-part = Dot-string / Quoted-string`, returned as written.
fn parse_local_part<'a>(cursor: &mut Cursor<'a>, utf8: bool) -> Result<&'a str, AddressError> {
    let start = cursor.position();
    if cursor.peek() == Some('"') {
        skip_quoted_string(cursor, utf8)?;
    } else {
        skip_dot_string(cursor, utf8)?;
    }
    Ok(cursor.since(start))
}

/// `Dot-string = Atom *("." Atom)`.
fn skip_dot_string(cursor: &mut Cursor<'_>, utf8: bool) -> Result<(), AddressError> {
    loop {
        let atom = cursor.take_while(|c| is_atext(c, utf8));
        if atom.is_empty() {
            return if cursor.rest().is_empty() || cursor.peek() == Some('@') {
                Err(AddressError::Syntax("empty local part or atom"))
            } else {
                Err(AddressError::Syntax("invalid character in local part"))
            };
        }
        if !cursor.eat('.') {
            return Ok(());
        }
    }
}

/// `Quoted-string = DQUOTE *QcontentSMTP DQUOTE` (RFC 5321 §4.1.2).
fn skip_quoted_string(cursor: &mut Cursor<'_>, utf8: bool) -> Result<(), AddressError> {
    cursor.eat('"');
    let mut content = 0usize;
    loop {
        match cursor.next() {
            Some('"') if content > 0 => return Ok(()),
            Some('"') => return Err(AddressError::Syntax("empty quoted string")),
            Some('\\') => match cursor.next() {
                Some(' '..='~') => content += 1,
                _ => return Err(AddressError::Syntax("bad quoted pair")),
            },
            Some(c) if c == ' ' || c == '!' || ('#'..='~').contains(&c) => content += 1,
            Some(c) if utf8 && !c.is_ascii() => content += 1,
            _ => return Err(AddressError::Syntax("bad quoted string")),
        }
    }
}

/// `atext` (RFC 5322 §3.2.3), plus UTF-8 under SMTPUTF8 (RFC 6531 §3.3).
fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (utf8 && !c.is_ascii())
}

/// `Domain / address-literal`, with at most 255 octets.
fn parse_domain(text: &str, utf8: bool) -> Result<Domain, AddressError> {
    if text.is_empty() {
        return Err(AddressError::Syntax("empty domain"));
    }
    if text.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong("domain over 255 octets"));
    }
    if let Some(literal) = text.strip_prefix('[') {
        let inner = literal
            .strip_suffix(']')
            .ok_or(AddressError::Syntax("unterminated address literal"))?;
        return if is_address_literal(inner) {
            Ok(Domain::Literal(inner.to_owned()))
        } else {
            Err(AddressError::Syntax("bad address literal"))
        };
    }
    if is_domain_name(text, utf8, false) {
        Ok(Domain::Name(text.to_owned()))
    } else if text.contains('@') {
        Err(AddressError::Syntax("more than one unquoted '@'"))
    } else {
        Err(AddressError::Syntax("bad domain"))
    }
}

/// `sub-domain *("." sub-domain)` with labels of 1..=63 octets made of letters,
/// digits and inner hyphens (RFC 5321 §4.1.2); U-labels under SMTPUTF8. One
/// trailing dot is tolerated (policy strips it when comparing).
/// `underscore` admits `_`, which some LAN devices put in their HELO names.
pub fn is_domain_name(text: &str, utf8: bool, underscore: bool) -> bool {
    let name = strip_one_dot(text);
    !name.is_empty()
        && text.len() <= MAX_DOMAIN
        && name
            .split('.')
            .all(|label| is_label(label, utf8, underscore))
}

fn is_label(label: &str, utf8: bool, underscore: bool) -> bool {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || c == '-' || (underscore && c == '_') || (utf8 && !c.is_ascii())
    };
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(allowed)
}

/// The inside of an address literal (RFC 5321 §4.1.3): IPv4, `IPv6:` or a
/// `tag:content` general literal.
pub fn is_address_literal(inner: &str) -> bool {
    if inner.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    if let Some(v6) = inner.strip_prefix("IPv6:") {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    match inner.split_once(':') {
        Some((tag, content)) => {
            is_label(tag, false, false)
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b))
        }
        None => false,
    }
}

/// A character cursor over a `&str` that never panics.
struct Cursor<'a> {
    text: &'a str,
    position: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor { text, position: 0 }
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.position..).unwrap_or("")
    }

    fn position(&self) -> usize {
        self.position
    }

    fn since(&self, start: usize) -> &'a str {
        self.text.get(start..self.position).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.position += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, expected: char) -> bool {
        if self.peek() == Some(expected) {
            self.position += expected.len_utf8();
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let start = self.position;
        while let Some(c) = self.peek().filter(|&c| keep(c)) {
            self.position += c.len_utf8();
        }
        self.since(start)
    }

    fn take_all(&mut self) -> &'a str {
        let rest = self.rest();
        self.position = self.text.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(text: &str, utf8: bool) -> Result<String, String> {
        parse_forward_path(text, utf8)
            .map(|(path, rest)| format!("{}|{rest}", path.0))
            .map_err(|e| e.reply().to_string().get(..9).unwrap_or("").to_owned())
    }

    #[test]
    fn forward_paths() {
        let table: &[(&str, bool, Result<&str, &str>)] = &[
            ("<user@example.com>", false, Ok("user@example.com|")),
            (
                "<user@example.com> NOTIFY=NEVER",
                false,
                Ok("user@example.com| NOTIFY=NEVER"),
            ),
            (
                "<User.Name+tag@Example.COM.>",
                false,
                Ok("User.Name+tag@Example.COM.|"),
            ),
            // Source route accepted and dropped (RFC 5321 §4.1.1.3).
            (
                "<@a.example,@b.example:user@host.example>",
                false,
                Ok("user@host.example|"),
            ),
            // Not routing: kept verbatim (security.md §6).
            (
                "<user%host@relay.example>",
                false,
                Ok("user%host@relay.example|"),
            ),
            (
                "<host!user@relay.example>",
                false,
                Ok("host!user@relay.example|"),
            ),
            (
                "<\"user@host\"@relay.example>",
                false,
                Ok("\"user@host\"@relay.example|"),
            ),
            (
                "<\"a>b\"@relay.example>",
                false,
                Ok("\"a>b\"@relay.example|"),
            ),
            (
                "<\"a\\\"b\"@relay.example>",
                false,
                Ok("\"a\\\"b\"@relay.example|"),
            ),
            ("<user@[192.0.2.1]>", false, Ok("user@[192.0.2.1]|")),
            (
                "<user@[IPv6:2001:db8::1]>",
                false,
                Ok("user@[IPv6:2001:db8::1]|"),
            ),
            (
                "<jos\u{e9}@example.com>",
                true,
                Ok("jos\u{e9}@example.com|"),
            ),
            (
                "<user@b\u{fc}cher.example>",
                true,
                Ok("user@b\u{fc}cher.example|"),
            ),
            // Malformed: 501 5.1.3.
            ("<user@host@relay.example>", false, Err("501 5.1.3")),
            ("user@example.com", false, Err("501 5.1.3")),
            ("<user@example.com", false, Err("501 5.1.3")),
            ("<<user@example.com>>", false, Err("501 5.1.3")),
            ("<user@example.com>x", false, Err("501 5.1.3")),
            ("<@example.com>", false, Err("501 5.1.3")),
            ("<user@>", false, Err("501 5.1.3")),
            ("<user>", false, Err("501 5.1.3")),
            ("<postmaster>", false, Err("501 5.1.3")),
            ("<>", false, Err("501 5.1.3")),
            ("<a..b@example.com>", false, Err("501 5.1.3")),
            ("<.a@example.com>", false, Err("501 5.1.3")),
            ("<a@-x.example>", false, Err("501 5.1.3")),
            ("<a@x..example>", false, Err("501 5.1.3")),
            ("<a@[300.1.1.1]>", false, Err("501 5.1.3")),
            ("<a@[1.2.3.4>", false, Err("501 5.1.3")),
            ("<\"\"@example.com>", false, Err("501 5.1.3")),
            ("<\"unterminated@example.com>", false, Err("501 5.1.3")),
            ("<a b@example.com>", false, Err("501 5.1.3")),
            ("<@a.example:>", false, Err("501 5.1.3")),
            ("<@a.example;user@b.example>", false, Err("501 5.1.3")),
            // Control characters, even quoted: 501 5.5.2.
            ("<\"a\0b\"@example.com>", false, Err("501 5.5.2")),
            ("<a\x7f@example.com>", false, Err("501 5.5.2")),
            ("<\"a\tb\"@example.com>", false, Err("501 5.5.2")),
            // Non-ASCII without SMTPUTF8: 553 5.6.7.
            ("<jos\u{e9}@example.com>", false, Err("553 5.6.7")),
            ("<user@b\u{fc}cher.example>", false, Err("553 5.6.7")),
        ];
        for (input, utf8, expected) in table {
            let expected = expected.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(forward(input, *utf8), expected, "{input:?}");
        }
    }

    #[test]
    fn length_limits() {
        let local64 = "a".repeat(64);
        let local65 = "a".repeat(65);
        let long_domain = format!("{}.example", "a".repeat(63)).repeat(4);
        let table = [
            (format!("<{local64}@example.com>"), Ok(())),
            (format!("<{local65}@example.com>"), Err("501 5.1.3")),
            (format!("<a@{}>", long_domain), Err("501 5.1.3")),
            (
                format!("<@{}:a@example.com>", "r.".repeat(130) + "x"),
                Err("501 5.1.3"),
            ),
        ];
        for (input, expected) in table {
            let got = forward(&input, false).map(|_| ());
            assert_eq!(got, expected.map_err(str::to_owned), "{input}");
        }
    }

    #[test]
    fn reverse_paths() {
        let table = [
            ("<>", Some("<>")),
            ("<> SIZE=10", Some("<>")),
            ("<a@example.com>", Some("<a@example.com>")),
            ("<@r.example:a@example.com>", Some("<a@example.com>")),
            ("<", None),
            ("<a>", None),
        ];
        for (input, expected) in table {
            let got = parse_reverse_path(input, false)
                .ok()
                .map(|(p, _)| p.to_string());
            assert_eq!(got.as_deref(), expected, "{input}");
        }
    }

    #[test]
    fn domain_matching_is_exact() {
        let domain = Domain::Name("Example.COM.".into());
        let table = [
            ("example.com", true),
            ("EXAMPLE.com.", true),
            ("example.com..", false),
            ("evilexample.com", false),
            ("example.com.foreign.test", false),
            ("xample.com", false),
            ("", false),
        ];
        for (other, expected) in table {
            assert_eq!(domain.matches(other), expected, "{other}");
        }
        assert!(!Domain::Literal("192.0.2.1".into()).matches("192.0.2.1"));
        assert_eq!(domain.ascii_lowercase(), "example.com");
    }

    #[test]
    fn domain_names_and_literals() {
        let names = [
            ("example.com", false, true),
            ("localhost", false, true),
            ("printer_3.lan", false, false),
            ("printer_3.lan", true, true),
            ("a-b.c", false, true),
            ("-ab.c", false, false),
            ("", false, false),
            (".", false, false),
            ("a.", false, true),
        ];
        for (name, underscore, expected) in names {
            assert_eq!(is_domain_name(name, false, underscore), expected, "{name}");
        }
        let literals = [
            ("192.0.2.1", true),
            ("IPv6:::1", true),
            ("IPv6:zz", false),
            ("x-tag:abc", true),
            ("1.2.3", false),
            ("", false),
        ];
        for (literal, expected) in literals {
            assert_eq!(is_address_literal(literal), expected, "{literal}");
        }
    }

    #[test]
    fn mailbox_accessors_and_parse() {
        let mailbox = Mailbox::parse("Joe@Example.com", false).unwrap();
        assert_eq!(mailbox.local_part(), "Joe");
        assert_eq!(mailbox.domain_ascii_lowercase(), "example.com");
        assert!(!mailbox.is_utf8());
        assert!(Mailbox::parse("joe", false).is_err());
        assert!(Mailbox::parse("joe@a b", false).is_err());
    }
}
