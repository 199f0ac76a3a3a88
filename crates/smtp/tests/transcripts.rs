//! Runs the `C:`/`S:` dialogue scripts in `tests/transcripts/*.txt` against
//! the pure server [`Session`] with a small test policy.
//!
//! Script lines:
//! - `# …` comment; blank lines are ignored.
//! - `@starttls`, `@max_errors N`, `@max_junk N`, `@max_recipients N`,
//!   `@max_size N`: configure the session (before the first `C:` line).
//! - `@store-fail`: the next stored message gets `451 4.3.0`.
//! - `C: text` sends `text` CRLF; `C~ text` sends `text` without CRLF. Both
//!   understand `\r \n \0 \t \\ \xNN`. Consecutive `C` lines form one packet
//!   (pipelined); any other line, or `--`, flushes the packet.
//! - `S: prefix` expects one reply line starting with `prefix`;
//!   `S* prefix` expects one or more such lines.
//! - `E: …` expects a driver event (by prefix): `begin FROM TO,TO`,
//!   `end CONTENT` (escaped), `abort`, `starttls`, `close`.
//!
//! The greeting is the first `S:` line of every script.

// A malformed script or directory should fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use smtp::{
    ForwardPath, MailParams, Output, Policy, RcptParams, Reply, ReversePath, ServerConfig, Session,
};

/// Senders from `ok.example`/`lan.example` or `<>`; recipients in
/// `ok.example`/`exo.example`; nothing else, and never a domain literal.
struct TestPolicy;

impl Policy for TestPolicy {
    fn check_sender(&mut self, from: &ReversePath, _: &MailParams) -> Result<(), Reply> {
        match from.mailbox() {
            None => Ok(()),
            Some(m)
                if ["ok.example", "lan.example"]
                    .iter()
                    .any(|d| m.domain().matches(d)) =>
            {
                Ok(())
            }
            Some(_) => Err(Reply::sender_denied("domain not allowed")),
        }
    }

    fn check_recipient(
        &mut self,
        _: &ReversePath,
        to: &ForwardPath,
        _: &RcptParams,
    ) -> Result<(), Reply> {
        let domain = to.mailbox().domain();
        if ["ok.example", "exo.example"]
            .iter()
            .any(|d| domain.matches(d))
        {
            Ok(())
        } else {
            Err(Reply::relay_denied())
        }
    }
}

/// Decodes the escapes of a `C` line.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('0') => out.push(0),
            Some('t') => out.push(b'\t'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("bad \\x escape in script"));
            }
            Some(other) => out.push(other as u8),
            None => out.push(b'\\'),
        }
    }
    out
}

/// Escapes message content for an `E: end` line.
fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'\r' => "\\r".to_owned(),
            b'\n' => "\\n".to_owned(),
            b'\\' => "\\\\".to_owned(),
            0x20..=0x7e => char::from(b).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect()
}

/// One script being run: the session, its input, and what it produced.
struct Run {
    session: Session,
    policy: TestPolicy,
    input: Vec<u8>,
    actual: Vec<String>,
    content: Vec<u8>,
    closed: bool,
    fail_next_store: bool,
}

impl Run {
    fn new(config: ServerConfig) -> Run {
        let session = Session::new(config);
        let mut run = Run {
            actual: Vec::new(),
            policy: TestPolicy,
            input: Vec::new(),
            content: Vec::new(),
            closed: false,
            fail_next_store: false,
            session,
        };
        let greeting = run.session.greeting();
        run.record_reply(&greeting);
        run
    }

    fn record_reply(&mut self, reply: &Reply) {
        let wire = String::from_utf8(reply.to_bytes()).expect("replies are ASCII");
        for line in wire.split_terminator("\r\n") {
            self.actual.push(format!("S: {line}"));
        }
    }

    /// Delivers one packet and steps until the session wants more input.
    fn deliver(&mut self, packet: &[u8]) {
        if self.closed {
            self.actual.push("!: client wrote after close".to_owned());
            return;
        }
        self.input.extend_from_slice(packet);
        for _ in 0..100_000 {
            match self.session.step(&mut self.input, &mut self.policy) {
                Output::Send(reply) => self.record_reply(&reply),
                Output::NeedInput => return,
                Output::StartTls => {
                    assert!(self.input.is_empty(), "StartTls with buffered input");
                    self.actual.push("E: starttls".to_owned());
                    self.record_reply(&Reply::ready_for_tls());
                    self.session.tls_established();
                }
                Output::MessageBegin(tx) => {
                    let rcpts: Vec<String> =
                        tx.recipients.iter().map(|(r, _)| r.to_string()).collect();
                    self.actual
                        .push(format!("E: begin {} {}", tx.mail_from, rcpts.join(",")));
                    self.content.clear();
                }
                Output::MessageContent(piece) => self.content.extend(piece),
                Output::MessageEnd => {
                    self.actual
                        .push(format!("E: end {}", escape(&self.content)));
                    let result = if std::mem::take(&mut self.fail_next_store) {
                        Err(Reply::storage_failed())
                    } else {
                        Ok(Reply::queued("Q1"))
                    };
                    self.session.message_stored(result);
                }
                Output::MessageAbort => {
                    self.actual.push("E: abort".to_owned());
                    self.content.clear();
                }
                Output::Close => {
                    self.actual.push("E: close".to_owned());
                    self.closed = true;
                    return;
                }
            }
        }
        panic!("session did not ask for input after 100000 steps");
    }
}

/// An expected line: the prefix, and whether it may repeat (`S*`).
struct Expect {
    prefix: String,
    repeat: bool,
    line_no: usize,
}

/// Runs one script; returns a description of the mismatch, if any.
fn run_script(name: &str, script: &str) -> Result<(), String> {
    let mut config = ServerConfig::new("relay.test");
    config.max_message_size = 10_000;
    for line in script.lines() {
        let mut words = line.split_whitespace();
        let value = |w: Option<&str>| w.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match words.next() {
            Some("@starttls") => config.starttls_offered = true,
            Some("@max_errors") => config.max_errors = value(words.next()) as u32,
            Some("@max_junk") => config.max_junk_commands = value(words.next()) as u32,
            Some("@max_recipients") => config.max_recipients = value(words.next()) as usize,
            Some("@max_size") => config.max_message_size = value(words.next()),
            Some("@max_received") => config.max_received_headers = value(words.next()) as usize,
            _ => {}
        }
    }
    let mut run = Run::new(config);
    let mut expected = Vec::new();
    let mut packet: Vec<u8> = Vec::new();
    for (index, line) in script.lines().enumerate() {
        let line_no = index + 1;
        if let Some(text) = line.strip_prefix("C: ") {
            packet.extend(unescape(text));
            packet.extend_from_slice(b"\r\n");
            continue;
        }
        if let Some(text) = line.strip_prefix("C~ ") {
            packet.extend(unescape(text));
            continue;
        }
        if !packet.is_empty() {
            run.deliver(&std::mem::take(&mut packet));
        }
        if line == "@store-fail" {
            run.fail_next_store = true;
        } else if let Some(prefix) = line.strip_prefix("S* ") {
            expected.push(Expect {
                prefix: format!("S: {prefix}"),
                repeat: true,
                line_no,
            });
        } else if line.starts_with("S: ") || line.starts_with("E: ") {
            expected.push(Expect {
                prefix: line.to_owned(),
                repeat: false,
                line_no,
            });
        }
    }
    if !packet.is_empty() {
        run.deliver(&packet);
    }
    compare(name, &expected, &run.actual)
}

fn compare(name: &str, expected: &[Expect], actual: &[String]) -> Result<(), String> {
    let mut at = 0;
    for expect in expected {
        let matches = |i: usize| actual.get(i).is_some_and(|a| a.starts_with(&expect.prefix));
        if !matches(at) {
            let got = actual.get(at).map_or("<nothing>", String::as_str);
            return Err(format!(
                "{name}:{}: expected {:?}, got {got:?}\nfull output:\n{}",
                expect.line_no,
                expect.prefix,
                actual.join("\n")
            ));
        }
        at += 1;
        while expect.repeat && matches(at) {
            at += 1;
        }
    }
    match actual.get(at) {
        None => Ok(()),
        Some(extra) => Err(format!(
            "{name}: unexpected output {extra:?}\nfull output:\n{}",
            actual.join("\n")
        )),
    }
}

#[test]
fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .expect("transcripts directory")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "expected the transcript scripts in {dir:?}"
    );
    let mut failures = Vec::new();
    for path in &paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let script = fs::read_to_string(path).expect("readable script");
        if let Err(report) = run_script(&name, &script) {
            failures.push(report);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} transcripts failed:\n\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n\n")
    );
    println!("{} transcripts passed", paths.len());
}
