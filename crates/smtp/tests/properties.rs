//! Property tests (proptest) over the public API: the DATA decoder against a
//! reference automaton and against a reference of its content checks, stuffing
//! round trips, the command parser and control characters, and a whole session
//! on arbitrary bytes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use proptest::prelude::*;
use smtp::{
    DataDecoder, DataEvent, DataLimits, DataOutcome, ForwardPath, MailParams, Output, Policy,
    RcptParams, Reply, ReversePath, ServerConfig, Session, dot_stuff, parse_command,
};

/// Bytes drawn mostly from the characters that matter to framing.
fn smtpish_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(vec![b'\r', b'\n', b'.', b'a', b' ', 0u8, 0xc3]),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..max)
}

/// The reference: DATA ends right after the first `CRLF.CRLF`, counting the
/// CRLF that ended the DATA command. Returns the octets consumed.
fn reference_end(input: &[u8]) -> Option<usize> {
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(input);
    framed
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|at| at + 5 - 2)
}

fn lenient_limits() -> DataLimits {
    DataLimits {
        max_size: u64::MAX,
        max_received_headers: usize::MAX,
        eight_bit_allowed: true,
        max_line: usize::MAX,
    }
}

/// Feeds `input` split at `split`; returns (content, outcome, leftover).
fn decode_split(
    limits: DataLimits,
    input: &[u8],
    split: usize,
) -> (Vec<u8>, Option<DataOutcome>, Vec<u8>) {
    let split = split.min(input.len());
    let (first, second) = input.split_at(split);
    let mut decoder = DataDecoder::new(limits);
    let mut buffer = Vec::new();
    let mut content = Vec::new();
    for (index, chunk) in [first, second].into_iter().enumerate() {
        buffer.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buffer) {
                DataEvent::Content(piece) => content.extend(piece),
                DataEvent::NeedInput => break,
                DataEvent::End(outcome) => {
                    if index == 0 {
                        buffer.extend_from_slice(second);
                    }
                    return (content, Some(outcome), buffer);
                }
            }
        }
    }
    (content, None, buffer)
}

/// Text lines for the content checks: runs of plain text, dots, NUL, 8-bit octets and
/// `Received:` prefixes in either case, no CR or LF (the lines get CRLF on the wire).
fn checked_lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let part = prop_oneof![
        4 => prop::sample::select(vec![
            &b"a"[..], b" ", b".", b"plain text of some length ", b"Received:", b"rECEIVED: x",
            b"Subject: y", b"\0", b"\xc3\xa9",
        ]).prop_map(<[u8]>::to_vec),
        1 => any::<u8>().prop_filter("no line breaks", |b| !matches!(b, b'\r' | b'\n')).prop_map(|b| vec![b]),
    ];
    let line = prop::collection::vec(part, 0..12).prop_map(|parts| parts.concat());
    prop::collection::vec(line, 0..30)
}

/// Limits small enough for the generated lines to reach each of them.
fn checked_limits() -> impl Strategy<Value = DataLimits> {
    (1u64..1500, 0usize..4, any::<bool>(), 3usize..120).prop_map(
        |(max_size, max_received_headers, eight_bit_allowed, max_line)| DataLimits {
            max_size,
            max_received_headers,
            eight_bit_allowed,
            max_line,
        },
    )
}

/// The reference of the content checks, octet by octet: the first violation decides the
/// reply. Within one octet: NUL or undeclared 8-bit, then a `Received:` header over the
/// limit (decided at the ninth octet of a header line), then the line length, then the size.
fn reference_outcome(lines: &[Vec<u8>], limits: &DataLimits) -> DataOutcome {
    let mut size = 0u64;
    let mut in_headers = true;
    let mut received = 0;
    let mut first = None;
    let mut violation = |reply: Reply| {
        first.get_or_insert(reply);
    };
    for line in lines {
        for (at, &b) in line.iter().enumerate() {
            if b == 0 {
                violation(Reply::nul_in_data());
            } else if b >= 0x80 && !limits.eight_bit_allowed {
                violation(Reply::not_declared_8bit());
            }
            if at == 8 && in_headers && line[..9].eq_ignore_ascii_case(b"received:") {
                received += 1;
                if received > limits.max_received_headers {
                    violation(Reply::loop_detected());
                }
            }
            if at + 1 + 2 > limits.max_line {
                violation(Reply::data_line_too_long());
            }
            size += 1;
            if size > limits.max_size {
                violation(Reply::message_too_big(limits.max_size));
            }
        }
        for _ in b"\r\n" {
            size += 1;
            if size > limits.max_size {
                violation(Reply::message_too_big(limits.max_size));
            }
        }
        if line.is_empty() {
            in_headers = false;
        }
    }
    first.map_or(DataOutcome::Ok, DataOutcome::Rejected)
}

/// Accepts every sender and recipient.
struct OpenPolicy;

impl Policy for OpenPolicy {
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

/// Whole SMTP-shaped dialogues built from tokens, for deeper session states.
fn dialogue() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "EHLO a.example\r\n",
        "HELO a\r\n",
        "MAIL FROM:<a@b.example>\r\n",
        "MAIL FROM:<>\r\n",
        "MAIL FROM:<a@b.example> BODY=8BITMIME SMTPUTF8\r\n",
        "RCPT TO:<c@d.example>\r\n",
        "DATA\r\n",
        "BDAT 5\r\n",
        "BDAT 3 LAST\r\n",
        "BDAT 0 LAST\r\n",
        "RSET\r\n",
        "NOOP\r\n",
        "QUIT\r\n",
        "STARTTLS\r\n",
        "AUTH PLAIN\r\n",
        "\r\n.\r\n",
        ".\r\n",
        "..\r\n",
        "hello",
        "\r\n",
        "\n",
        "\r",
        "\0",
        ".",
        "GET / HTTP/1.1\r\n",
        "\u{e9}",
    ]);
    prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat().into_bytes())
}

/// Drives a session over `input` cut into `chunk`-sized reads; checks the
/// driver-visible invariants and returns the number of messages stored.
fn drive(input: &[u8], chunk: usize) -> usize {
    let mut config = ServerConfig::new("relay.test");
    config.starttls_offered = true;
    config.max_message_size = 64;
    let mut session = Session::new(config);
    let mut policy = OpenPolicy;
    let mut buffer = Vec::new();
    let mut chunks = input.chunks(chunk.max(1));
    let mut open = false;
    let mut stored = 0;
    for _ in 0..1_000_000 {
        match session.step(&mut buffer, &mut policy) {
            Output::NeedInput => match chunks.next() {
                Some(bytes) => buffer.extend_from_slice(bytes),
                None => return stored,
            },
            Output::Send(reply) => {
                let wire = reply.to_bytes();
                assert!(wire.ends_with(b"\r\n"));
            }
            Output::StartTls => {
                assert!(buffer.is_empty(), "StartTls with buffered input");
                session.tls_established();
            }
            Output::MessageBegin(tx) => {
                assert!(!open, "nested MessageBegin");
                assert!(!tx.recipients.is_empty());
                open = true;
            }
            Output::MessageContent(piece) => {
                assert!(open, "content outside a message");
                assert!(!piece.is_empty() && piece.len() <= 64 * 1024);
            }
            Output::MessageEnd => {
                assert!(std::mem::take(&mut open), "end outside a message");
                stored += 1;
                session.message_stored(Ok(Reply::queued("Q")));
            }
            Output::MessageAbort => assert!(std::mem::take(&mut open), "abort outside a message"),
            Output::Close => {
                assert!(!open, "closed with a message open");
                return stored;
            }
        }
    }
    panic!("session looped without asking for input");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_agrees_with_reference(input in smtpish_bytes(200), split in 0usize..200) {
        let (_, outcome, rest) = decode_split(lenient_limits(), &input, split);
        match reference_end(&input) {
            Some(end) => {
                prop_assert!(outcome.is_some(), "decoder missed the end");
                prop_assert_eq!(rest, input[end..].to_vec());
            }
            None => {
                prop_assert!(outcome.is_none(), "decoder ended early");
                prop_assert!(rest.len() <= 4, "decoder held back {} octets", rest.len());
            }
        }
    }

    #[test]
    fn split_point_does_not_matter(input in smtpish_bytes(200), split in 0usize..200) {
        // Content handed out before a rejection may differ (the driver
        // discards it); the end, the outcome and the content of an accepted
        // message may not.
        let whole = decode_split(DataLimits::new(100), &input, input.len());
        let parts = decode_split(DataLimits::new(100), &input, split);
        prop_assert_eq!(&parts.1, &whole.1);
        prop_assert_eq!(&parts.2, &whole.2);
        if whole.1 == Some(DataOutcome::Ok) {
            prop_assert_eq!(parts.0, whole.0);
        }
    }

    #[test]
    fn stuffing_round_trips(lines in prop::collection::vec(prop::collection::vec(
        prop_oneof![4 => prop::sample::select(vec![b'.', b'a', b' ', 0xc3]), 1 => any::<u8>()]
            .prop_filter("no line breaks or NUL", |b| !matches!(b, b'\r' | b'\n' | 0)), 0..20), 0..20)) {
        let content: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain(*b"\r\n")).collect();
        let mut wire = Vec::new();
        dot_stuff(&content, &mut wire);
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(&wire);
        let ends = framed.windows(5).filter(|w| *w == b"\r\n.\r\n").count();
        prop_assert_eq!(ends, 1, "exactly one end of data");
        prop_assert!(framed.ends_with(b"\r\n.\r\n"));
        let (decoded, outcome, rest) = decode_split(lenient_limits(), &wire, wire.len() / 2);
        prop_assert_eq!(outcome, Some(DataOutcome::Ok));
        prop_assert_eq!(decoded, content);
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn content_checks_agree_with_reference(
        lines in checked_lines(),
        limits in checked_limits(),
        split in 0usize..2000,
    ) {
        // Stuffed by hand: `dot_stuff` repairs NUL and line endings, which are to be checked here.
        let content: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain(*b"\r\n")).collect();
        let mut wire = Vec::new();
        for line in &lines {
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        let (decoded, outcome, rest) = decode_split(limits.clone(), &wire, split);
        let expected = reference_outcome(&lines, &limits);
        prop_assert_eq!(outcome.as_ref(), Some(&expected));
        prop_assert!(rest.is_empty());
        if expected == DataOutcome::Ok {
            prop_assert_eq!(decoded, content);
        }
    }

    #[test]
    fn stuffing_anything_ends_once_and_cleanly(content in smtpish_bytes(300)) {
        let mut wire = Vec::new();
        dot_stuff(&content, &mut wire);
        prop_assert_eq!(reference_end(&wire), Some(wire.len()), "ends exactly at the end");
        prop_assert!(!wire.contains(&0));
        for (i, &b) in wire.iter().enumerate() {
            if b == b'\r' { prop_assert_eq!(wire.get(i + 1), Some(&b'\n')); }
            if b == b'\n' { prop_assert_eq!(wire.get(i.wrapping_sub(1)), Some(&b'\r')); }
        }
    }

    #[test]
    fn parser_never_accepts_control_characters(
        line in smtpish_bytes(80),
        prefix in prop::sample::select(vec!["MAIL FROM:<a", "RCPT TO:<\"", "EHLO ", "NOOP ", "VRFY ", ""]),
        utf8 in any::<bool>(),
    ) {
        let mut full = prefix.as_bytes().to_vec();
        full.extend_from_slice(&line);
        let has_control = full.iter().any(|&b| b < 0x20 || b == 0x7f);
        let result = parse_command(&full, utf8);
        if has_control {
            prop_assert!(result.is_err(), "accepted a control character: {:?}", result);
        }
        if let Ok(command) = result {
            prop_assert!(!command.to_string().chars().any(|c| c.is_control()));
        }
    }

    #[test]
    fn session_survives_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..600), chunk in 1usize..50) {
        drive(&input, chunk);
    }

    #[test]
    fn session_survives_smtp_shaped_dialogues(input in dialogue(), chunk in 1usize..64) {
        drive(&input, chunk);
    }
}
