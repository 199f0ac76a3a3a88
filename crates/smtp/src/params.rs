//! ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2 `esmtp-param`):
//! SIZE (RFC 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8 (RFC 6531), and the
//! DSN parameters RET, ENVID, NOTIFY and ORCPT (RFC 3461), plus the xtext codec
//! (RFC 3461 §4) and re-encoding for forwarding.
//!
//! Parsing is strict: unknown keywords, duplicates and bad values are refused
//! (security.md §7). Whether a SIZE is too big or BINARYMIME fits the command
//! is decided by the session.

use std::fmt::Write as _;

use crate::reply::Reply;

/// Longest decoded ENVID (RFC 3461 §4.4).
pub const MAX_ENVID: usize = 100;
/// Longest decoded ORCPT address (RFC 3461 §4.2).
pub const MAX_ORCPT: usize = 500;

/// Why the parameters were refused; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A keyword we do not know or did not advertise. `555 5.5.4`.
    #[error("unknown parameter {0}")]
    Unknown(String),
    /// The same keyword twice. `501 5.5.4`.
    #[error("duplicate parameter {0}")]
    Duplicate(&'static str),
    /// A known keyword with a bad or missing value. `501 5.5.4`.
    #[error("bad value for {0}")]
    BadValue(&'static str),
    /// Malformed xtext, or xtext that decodes to something non-printable.
    /// `501 5.5.4`.
    #[error("bad xtext")]
    BadXtext,
}

impl ParamError {
    /// The reply that tells the client about this error.
    pub fn reply(&self) -> Reply {
        match self {
            ParamError::Unknown(_) => Reply::unknown_parameter(),
            _ => Reply::bad_xtext(),
        }
    }
}

impl From<ParamError> for Reply {
    fn from(error: ParamError) -> Reply {
        error.reply()
    }
}

/// `BODY=` values (RFC 6152 §2, RFC 3030 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    /// `7BIT`.
    SevenBit,
    /// `8BITMIME`.
    EightBitMime,
    /// `BINARYMIME`, only usable with BDAT.
    BinaryMime,
}

impl Body {
    /// The parameter value as written on the wire, e.g. `8BITMIME`.
    pub fn keyword(self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
            Body::BinaryMime => "BINARYMIME",
        }
    }
}

/// `RET=` values (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `FULL`: return the whole message in a DSN.
    Full,
    /// `HDRS`: return only the headers.
    Headers,
}

impl Ret {
    /// The parameter value as written on the wire: `FULL` or `HDRS`.
    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Headers => "HDRS",
        }
    }
}

/// Parameters of a MAIL command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` declared message size in octets (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: Option<Body>,
    /// `SMTPUTF8` present (RFC 6531 §3.4).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded, printable ASCII (RFC 3461 §4.4).
    pub envid: Option<String>,
}

impl MailParams {
    /// Parses the text after the reverse-path: keywords separated by spaces.
    pub fn parse(text: &str) -> Result<MailParams, ParamError> {
        let mut params = MailParams::default();
        for (keyword, value) in split_params(text)? {
            params.apply(&keyword, value)?;
        }
        Ok(params)
    }

    fn apply(&mut self, keyword: &str, value: Option<&str>) -> Result<(), ParamError> {
        match keyword {
            "SIZE" => set_once(&mut self.size, "SIZE", parse_size(value)?),
            "BODY" => set_once(&mut self.body, "BODY", parse_body(value)?),
            "SMTPUTF8" if value.is_none() => {
                if self.smtputf8 {
                    return Err(ParamError::Duplicate("SMTPUTF8"));
                }
                self.smtputf8 = true;
                Ok(())
            }
            "SMTPUTF8" => Err(ParamError::BadValue("SMTPUTF8")),
            "RET" => set_once(&mut self.ret, "RET", parse_ret(value)?),
            "ENVID" => {
                let envid = xtext_decode(value.ok_or(ParamError::BadValue("ENVID"))?)?;
                if envid.is_empty() || envid.len() > MAX_ENVID {
                    return Err(ParamError::BadValue("ENVID"));
                }
                set_once(&mut self.envid, "ENVID", envid)
            }
            _ => Err(ParamError::Unknown(squash(keyword))),
        }
    }

    /// The parameters as they should be sent upstream, ENVID re-encoded as
    /// xtext; empty when there are none.
    pub fn to_esmtp_string(&self) -> String {
        let mut out = Vec::new();
        if let Some(size) = self.size {
            out.push(format!("SIZE={size}"));
        }
        if let Some(body) = self.body {
            out.push(format!("BODY={}", body.keyword()));
        }
        if self.smtputf8 {
            out.push("SMTPUTF8".to_owned());
        }
        if let Some(ret) = self.ret {
            out.push(format!("RET={}", ret.keyword()));
        }
        if let Some(envid) = &self.envid {
            out.push(format!("ENVID={}", xtext_encode(envid)));
        }
        out.join(" ")
    }
}

/// `NOTIFY=` (RFC 3461 §4.1): NEVER, or any of SUCCESS, FAILURE, DELAY.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Notify {
    /// `NEVER`: no DSN at all; excludes the others.
    pub never: bool,
    /// `SUCCESS`.
    pub success: bool,
    /// `FAILURE`.
    pub failure: bool,
    /// `DELAY`.
    pub delay: bool,
}

impl Notify {
    fn parse(value: &str) -> Result<Notify, ParamError> {
        let mut notify = Notify::default();
        for item in value.split(',') {
            let flag = match item.to_ascii_uppercase().as_str() {
                "NEVER" => &mut notify.never,
                "SUCCESS" => &mut notify.success,
                "FAILURE" => &mut notify.failure,
                "DELAY" => &mut notify.delay,
                _ => return Err(ParamError::BadValue("NOTIFY")),
            };
            if *flag {
                return Err(ParamError::BadValue("NOTIFY"));
            }
            *flag = true;
        }
        if notify.never && (notify.success || notify.failure || notify.delay) {
            return Err(ParamError::BadValue("NOTIFY"));
        }
        Ok(notify)
    }

    /// The `NOTIFY=` value as written on the wire, e.g. `SUCCESS,FAILURE`.
    pub fn keywords(&self) -> String {
        if self.never {
            return "NEVER".to_owned();
        }
        let flags = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let names: Vec<&str> = flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        names.join(",")
    }
}

/// Parameters of a RCPT command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=` (RFC 3461 §4.1).
    pub notify: Option<Notify>,
    /// `ORCPT=addr-type;xtext` (RFC 3461 §4.2): the address type as given
    /// and the xtext-decoded original recipient.
    pub orcpt: Option<(String, String)>,
}

impl RcptParams {
    /// Parses the text after the forward-path.
    pub fn parse(text: &str) -> Result<RcptParams, ParamError> {
        let mut params = RcptParams::default();
        for (keyword, value) in split_params(text)? {
            match keyword.as_str() {
                "NOTIFY" => {
                    let notify = Notify::parse(value.ok_or(ParamError::BadValue("NOTIFY"))?)?;
                    set_once(&mut params.notify, "NOTIFY", notify)?;
                }
                "ORCPT" => {
                    let orcpt = parse_orcpt(value.ok_or(ParamError::BadValue("ORCPT"))?)?;
                    set_once(&mut params.orcpt, "ORCPT", orcpt)?;
                }
                _ => return Err(ParamError::Unknown(squash(&keyword))),
            }
        }
        Ok(params)
    }

    /// The parameters as they should be sent upstream, ORCPT re-encoded as
    /// xtext; empty when there are none.
    pub fn to_esmtp_string(&self) -> String {
        let mut out = Vec::new();
        if let Some(notify) = self.notify {
            out.push(format!("NOTIFY={}", notify.keywords()));
        }
        if let Some((kind, address)) = &self.orcpt {
            out.push(format!("ORCPT={kind};{}", xtext_encode(address)));
        }
        out.join(" ")
    }
}

/// Splits `KEY[=VALUE] KEY[=VALUE]…`, keywords uppercased. Values are
/// `esmtp-value` (RFC 5321 §4.1.2; UTF-8 allowed per RFC 6531 §3.3).
fn split_params(text: &str) -> Result<Vec<(String, Option<&str>)>, ParamError> {
    let mut out = Vec::new();
    for param in text.split(' ').filter(|p| !p.is_empty()) {
        let (keyword, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let keyword_ok = keyword
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && keyword
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !keyword_ok {
            return Err(ParamError::Unknown(squash(keyword)));
        }
        let value_ok =
            |v: &str| !v.is_empty() && v.chars().all(|c| c > ' ' && c != '=' && c != '\u{7f}');
        if value.is_some_and(|v| !value_ok(v)) {
            return Err(ParamError::BadXtext);
        }
        out.push((keyword.to_ascii_uppercase(), value));
    }
    Ok(out)
}

fn set_once<T>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), ParamError> {
    if slot.is_some() {
        return Err(ParamError::Duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

/// `SIZE=1*20DIGIT` (RFC 1870 §3).
fn parse_size(value: Option<&str>) -> Result<u64, ParamError> {
    let digits = value.ok_or(ParamError::BadValue("SIZE"))?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParamError::BadValue("SIZE"));
    }
    digits.parse().map_err(|_| ParamError::BadValue("SIZE"))
}

fn parse_body(value: Option<&str>) -> Result<Body, ParamError> {
    match value.map(str::to_ascii_uppercase).as_deref() {
        Some("7BIT") => Ok(Body::SevenBit),
        Some("8BITMIME") => Ok(Body::EightBitMime),
        Some("BINARYMIME") => Ok(Body::BinaryMime),
        _ => Err(ParamError::BadValue("BODY")),
    }
}

fn parse_ret(value: Option<&str>) -> Result<Ret, ParamError> {
    match value.map(str::to_ascii_uppercase).as_deref() {
        Some("FULL") => Ok(Ret::Full),
        Some("HDRS") => Ok(Ret::Headers),
        _ => Err(ParamError::BadValue("RET")),
    }
}

/// `ORCPT=addr-type ";" xtext` (RFC 3461 §4.2); addr-type is an atom.
fn parse_orcpt(value: &str) -> Result<(String, String), ParamError> {
    let (kind, encoded) = value.split_once(';').ok_or(ParamError::BadValue("ORCPT"))?;
    let kind_ok = !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !kind_ok {
        return Err(ParamError::BadValue("ORCPT"));
    }
    let address = xtext_decode(encoded)?;
    if address.is_empty() || address.len() > MAX_ORCPT {
        return Err(ParamError::BadValue("ORCPT"));
    }
    Ok((kind.to_owned(), address))
}

/// Squashes a keyword for error messages and logs: at most 16 printable
/// ASCII characters.
fn squash(keyword: &str) -> String {
    keyword
        .chars()
        .take(16)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Decodes xtext (RFC 3461 §4): `+XX` is a hex-encoded octet, other
/// characters are themselves. The result must be printable ASCII (space to
/// `~`), else [`ParamError::BadXtext`] (security.md §7).
pub fn xtext_decode(text: &str) -> Result<String, ParamError> {
    let mut out = String::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        let decoded = match b {
            b'+' => {
                let high = bytes
                    .next()
                    .and_then(hex_value)
                    .ok_or(ParamError::BadXtext)?;
                let low = bytes
                    .next()
                    .and_then(hex_value)
                    .ok_or(ParamError::BadXtext)?;
                high * 16 + low
            }
            b'!'..=b'~' if b != b'=' => b,
            _ => return Err(ParamError::BadXtext),
        };
        if !(b' '..=b'~').contains(&decoded) {
            return Err(ParamError::BadXtext);
        }
        out.push(char::from(decoded));
    }
    Ok(out)
}

/// One hex digit; RFC 3461 asks for uppercase, lowercase is tolerated.
fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Encodes `text` as xtext (RFC 3461 §4): `+`, `=`, and everything outside
/// `!`..`~` become `+XX` (uppercase hex), byte by byte.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_params() {
        let ok: &[(&str, MailParams)] = &[
            ("", MailParams::default()),
            (
                " SIZE=1000 BODY=8bitmime",
                MailParams {
                    size: Some(1000),
                    body: Some(Body::EightBitMime),
                    ..MailParams::default()
                },
            ),
            (
                "smtputf8 RET=HDRS ENVID=QQ+2B1",
                MailParams {
                    smtputf8: true,
                    ret: Some(Ret::Headers),
                    envid: Some("QQ+1".into()),
                    ..MailParams::default()
                },
            ),
            (
                "BODY=BINARYMIME",
                MailParams {
                    body: Some(Body::BinaryMime),
                    ..MailParams::default()
                },
            ),
        ];
        for (input, expected) in ok {
            assert_eq!(MailParams::parse(input).as_ref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn mail_param_errors() {
        let table = [
            ("FOO=1", "555 5.5.4"),
            ("AUTH=<>", "555 5.5.4"),
            ("SIZE=1 SIZE=2", "501 5.5.4"),
            ("SIZE=abc", "501 5.5.4"),
            ("SIZE=", "501 5.5.4"),
            ("SIZE", "501 5.5.4"),
            ("SIZE=99999999999999999999999", "501 5.5.4"),
            ("BODY=9BIT", "501 5.5.4"),
            ("SMTPUTF8=yes", "501 5.5.4"),
            ("SMTPUTF8 SMTPUTF8", "501 5.5.4"),
            ("ENVID=a+0Db", "501 5.5.4"),
            ("ENVID=a+0", "501 5.5.4"),
            ("ENVID=a+ZZ", "501 5.5.4"),
            ("ENVID==", "501 5.5.4"),
            ("RET=ALL", "501 5.5.4"),
            ("=1", "555 5.5.4"),
        ];
        for (input, expected) in table {
            let reply = MailParams::parse(input).map(|_| ()).map_err(|e| e.reply());
            let shown = reply.map_err(|r| r.to_string());
            assert!(
                shown.as_ref().is_err_and(|s| s.starts_with(expected)),
                "{input}: {shown:?}"
            );
        }
    }

    #[test]
    fn rcpt_params() {
        let table = [
            ("", Ok(RcptParams::default())),
            (
                "NOTIFY=SUCCESS,failure",
                Ok(RcptParams {
                    notify: Some(Notify {
                        success: true,
                        failure: true,
                        ..Notify::default()
                    }),
                    orcpt: None,
                }),
            ),
            (
                "ORCPT=rfc822;a+2Bb@example.com",
                Ok(RcptParams {
                    notify: None,
                    orcpt: Some(("rfc822".into(), "a+b@example.com".into())),
                }),
            ),
            ("NOTIFY=NEVER,SUCCESS", Err("501 5.5.4")),
            ("NOTIFY=DELAY,DELAY", Err("501 5.5.4")),
            ("NOTIFY=", Err("501 5.5.4")),
            ("NOTIFY=SOMETIMES", Err("501 5.5.4")),
            ("NOTIFY=NEVER NOTIFY=NEVER", Err("501 5.5.4")),
            ("ORCPT=rfc822", Err("501 5.5.4")),
            ("ORCPT=;a@b", Err("501 5.5.4")),
            ("ORCPT=rfc822;a+0Ab@c", Err("501 5.5.4")),
            ("SIZE=1", Err("555 5.5.4")),
        ];
        for (input, expected) in table {
            let got = RcptParams::parse(input).map_err(|e| e.reply().to_string());
            match (got, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{input}"),
                (Err(got), Err(prefix)) => assert!(got.starts_with(prefix), "{input}: {got}"),
                (got, expected) => panic!("{input}: {got:?} vs {expected:?}"),
            }
        }
    }

    #[test]
    fn xtext() {
        let table = [
            ("abc", Ok("abc")),
            ("a+2Bb", Ok("a+b")),
            ("a+3db", Ok("a=b")),
            ("+20", Ok(" ")),
            ("+00", Err(())),
            ("+7F", Err(())),
            ("+C3+A9", Err(())),
            ("a=b", Err(())),
            ("a b", Err(())),
            ("+", Err(())),
            ("+2", Err(())),
            ("", Ok("")),
        ];
        for (input, expected) in table {
            let got = xtext_decode(input).map_err(|_| ());
            assert_eq!(got.as_deref().map_err(|_| ()), expected, "{input}");
        }
        let encode = [
            ("a+b=c d", "a+2Bb+3Dc+20d"),
            ("\u{e9}", "+C3+A9"),
            ("plain", "plain"),
        ];
        for (input, expected) in encode {
            assert_eq!(xtext_encode(input), expected);
        }
    }

    #[test]
    fn re_encoding_round_trips() {
        let mail = "SIZE=5 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=a+2Bb+20c";
        let parsed = MailParams::parse(mail).unwrap();
        assert_eq!(parsed.to_esmtp_string(), mail);
        assert_eq!(MailParams::parse(&parsed.to_esmtp_string()), Ok(parsed));
        let rcpt = "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x+2By@example.com";
        let parsed = RcptParams::parse(rcpt).unwrap();
        assert_eq!(parsed.to_esmtp_string(), rcpt);
        let never = RcptParams::parse("NOTIFY=never").unwrap();
        assert_eq!(never.to_esmtp_string(), "NOTIFY=NEVER");
    }
}
