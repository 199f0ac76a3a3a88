//! The receiving side's contract, checked against the real binary over loopback: protocol edge
//! cases answer with the RFC's reply and leave the session usable; smuggling sequences never
//! split a message; STARTTLS discards pipelined commands; unknown clients cannot relay; AUTH is
//! never advertised without TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use common::{Client, Relay};

/// A session past EHLO.
fn session(relay: &Relay) -> Client {
    Client::session(relay.addr)
}

#[test]
fn edge_cases_answer_per_rfc_and_keep_the_session_usable() {
    let relay = Relay::start();
    let mut c = relay.client();
    c.greeting("220 relay.test");
    // Commands before EHLO.
    c.expect("MAIL FROM:<a@contoso.com>", "503 5.5.1");
    c.expect("RCPT TO:<b@example.net>", "503 5.5.1");
    c.expect("DATA", "503 5.5.1");
    c.expect("EHLO client.test", "250");
    // RCPT before MAIL, DATA without recipients, MAIL twice.
    c.expect("RCPT TO:<b@example.net>", "503 5.5.1");
    c.expect("MAIL FROM:<a@contoso.com>", "250");
    c.expect("DATA", "503 5.5.1");
    c.expect("MAIL FROM:<a@contoso.com>", "503 5.5.1");
    c.expect("RSET", "250");
    // A line of 1,001 characters, an unknown command.
    c.expect(&format!("NOOP {}", "x".repeat(996)), "500 5.5.2");
    c.expect("FROBNICATE now", "500 5.5.1");
    // SMTPUTF8 address without SMTPUTF8; SIZE over the limit.
    c.expect("MAIL FROM:<jörg@contoso.com>", "553 5.6.7");
    c.expect("MAIL FROM:<a@contoso.com> SIZE=2000000", "552 5.3.4");
    c.expect("MAIL FROM:<jörg@contoso.com> SMTPUTF8", "250");
    c.expect("RSET", "250");
    // Too many recipients (limit 5 in the test configuration).
    c.expect("MAIL FROM:<a@contoso.com>", "250");
    for i in 0..5 {
        c.expect(&format!("RCPT TO:<r{i}@example.net>"), "250");
    }
    c.expect("RCPT TO:<r5@example.net>", "452 4.5.3");
    c.expect("RSET", "250");
    // 8-bit data without BODY=8BITMIME is refused after the end of data, session still usable.
    c.begin_data("a@contoso.com", &["b@example.net"]);
    c.send("Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n.\r\n".as_bytes());
    let reply = c.reply();
    assert!(reply.starts_with("554 5.6.0"), "{reply}");
    // The empty reverse path is accepted and the session still delivers.
    c.begin_data("", &["b@example.net"]);
    c.send(b"Subject: bounce\r\nMessage-ID: <edge@test>\r\n\r\nbody\r\n.\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    c.expect("QUIT", "221");
    let queued = relay.queued();
    assert_eq!(queued.len(), 1, "only the last message is queued");
    assert_eq!(queued[0].0.mail_from, "");
}

#[test]
fn ehlo_advertises_the_extensions_and_no_auth_without_tls() {
    let relay = Relay::start();
    let mut c = relay.client();
    c.greeting("220 ");
    let ehlo = c.expect("EHLO client.test", "250");
    for ext in [
        "PIPELINING",
        "SIZE 1048576",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing in {ehlo}");
    }
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH advertised without TLS: {ehlo}"
    );
    assert!(
        !ehlo.contains("STARTTLS"),
        "no certificate configured: {ehlo}"
    );
    c.expect("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "538 5.7.11");
}

/// Sends one DATA whose body carries `sequence`, then a would-be second transaction, then the
/// real end. Returns the reply to the end of data.
fn smuggle(relay: &Relay, sequence: &[u8]) -> String {
    let mut c = session(relay);
    c.begin_data("a@contoso.com", &["b@example.net"]);
    let mut body = b"Subject: first\r\n\r\nhello".to_vec();
    body.extend_from_slice(sequence);
    body.extend_from_slice(b"MAIL FROM:<admin@contoso.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nspoofed\r\n.\r\n");
    c.send(&body);
    let reply = c.reply();
    // Whatever happened, the session is in command mode exactly once: one reply to NOOP.
    c.expect("NOOP", "250");
    c.expect("QUIT", "221");
    reply
}

#[test]
fn smuggling_sequences_never_end_data_early() {
    let sequences: &[(&str, &[u8])] = &[
        ("LF.LF", b"\n.\n"),
        ("CR.CR", b"\r.\r"),
        ("LF.CRLF", b"\n.\r\n"),
        ("CRLF.LF", b"\r\n.\n"),
        ("CR.LF", b"\r.\n"),
        ("CRLF NUL .CRLF", b"\r\n\0.\r\n"),
        ("CRLF.CR CRLF", b"\r\n.\r\r\n"),
    ];
    let relay = Relay::start();
    for (name, sequence) in sequences {
        let before = relay.queued().len();
        let reply = smuggle(&relay, sequence);
        let queued = relay.queued();
        assert!(
            reply.starts_with('5') || reply.starts_with("250"),
            "{name}: unexpected reply {reply}"
        );
        if reply.starts_with('5') {
            assert_eq!(queued.len(), before, "{name}: refused but queued");
            continue;
        }
        // Stored: exactly one message, and re-emitted it cannot end early.
        assert_eq!(queued.len(), before + 1, "{name}: {reply}");
        let (_, content) = queued.last().unwrap();
        let mut wire = Vec::new();
        smtp::dot_stuff(content, &mut wire);
        let end = wire.windows(5).position(|w| w == b"\r\n.\r\n").unwrap();
        assert_eq!(end + 5, wire.len(), "{name}: re-emitted message ends early");
    }
}

#[test]
fn commands_pipelined_behind_starttls_are_discarded() {
    let (relay, _pki) = Relay::start_with_tls(&["relay.test"]);
    let mut c = relay.client();
    c.greeting("220 ");
    let ehlo = c.expect("EHLO client.test", "250");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    c.send(b"STARTTLS\r\nMAIL FROM:<a@contoso.com>\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("554 5.5.0"), "{reply}");
    assert!(c.is_closed());
    assert!(relay.queued().is_empty());
}

#[test]
fn a_client_in_no_network_cannot_relay() {
    let config = common::BASE_CONFIG.replace("[\"127.0.0.0/8\", \"::1\"]", "[\"192.0.2.0/24\"]");
    let relay = Relay::start_with(&config);
    let mut c = relay.client();
    c.greeting("554 5.7.1");
    c.expect("EHLO client.test", "503");
    c.expect("MAIL FROM:<a@contoso.com>", "503");
    c.expect("QUIT", "221");
    relay.wait_for_log("relaying denied");
    assert!(relay.queued().is_empty());
}

#[test]
fn recipient_and_sender_domain_rules_are_exact() {
    let config = common::BASE_CONFIG.replace(
        "networks = [\"127.0.0.0/8\", \"::1\"]",
        "networks = [\"127.0.0.0/8\", \"::1\"]\nallowed_recipient_domains = [\"contoso.com\"]\nallowed_sender_domains = [\"contoso.com\"]",
    );
    let relay = Relay::start_with(&config);
    let mut c = session(&relay);
    c.expect("MAIL FROM:<a@evilcontoso.com>", "553 5.7.1");
    c.expect("MAIL FROM:<a@Contoso.COM.>", "250");
    for rcpt in [
        "<b@example.net>",
        "<b@contoso.com.example.net>",
        "<b@evilcontoso.com>",
        "<b%example.net@contoso.com.evil>",
        "<b@[192.0.2.1]>",
    ] {
        c.expect(&format!("RCPT TO:{rcpt}"), "550 5.7.1");
    }
    c.expect("RCPT TO:<b@CONTOSO.com>", "250");
    c.expect("RCPT TO:<\"b@example.net\"@contoso.com>", "250");
    c.expect("QUIT", "221");
}

#[test]
fn limits_and_abuse_get_their_replies() {
    let config = common::BASE_CONFIG.replace(
        "max_recipients = 5",
        "max_recipients = 5\nmax_connections_per_ip = 2\ncommand_timeout = \"1s\"",
    );
    let relay = Relay::start_with(&config);
    // Per-IP connection limit: the third concurrent session is refused.
    let mut first = relay.client();
    first.greeting("220");
    let mut second = relay.client();
    second.greeting("220");
    let mut third = relay.client();
    third.greeting("421 4.7.0");
    drop(third);
    second.expect("QUIT", "221");
    // A silent client is timed out by the per-command deadline.
    first.greeting("421 4.4.2");
    assert!(first.is_closed());
    // HTTP spoken to the SMTP port: refused and closed (cross-protocol attack).
    let mut web = relay.client();
    web.greeting("220");
    web.expect("POST / HTTP/1.1", "554 5.7.0");
    assert!(web.is_closed());
    // A bare LF in a command line is refused; the session stays usable.
    let mut c = session(&relay);
    c.send(b"NOOP\nRSET\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("550 5.5.2"), "{reply}");
    c.expect("NOOP", "250");
    // A mail loop: too many Received: headers.
    c.begin_data("a@contoso.com", &["b@example.net"]);
    let hops = "Received: from a by b; Sat, 28 Nov 2026 06:00:00 +0000\r\n".repeat(60);
    c.send(format!("{hops}Subject: loop\r\n\r\nbody\r\n.\r\n").as_bytes());
    let reply = c.reply();
    assert!(reply.starts_with("554 5.4.6"), "{reply}");
    c.expect("QUIT", "221");
    assert!(relay.queued().is_empty());
}

#[test]
fn listens_on_ipv4_and_ipv6() {
    let config = common::BASE_CONFIG.replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    let relay = Relay::start_with(&config);
    let v6 = relay.addrs.iter().find(|a| a.is_ipv6()).copied().unwrap();
    let mut c = common::Client::connect(v6);
    c.greeting("220");
    c.expect("EHLO client6.test", "250");
    c.expect("MAIL FROM:<a@contoso.com>", "250");
    c.expect("RCPT TO:<b@example.net>", "250");
    c.expect("DATA", "354");
    c.send(b"Subject: over IPv6\r\n\r\nbody\r\n.\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("250"), "{reply}");
    c.expect("QUIT", "221");
    let queued = relay.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.client_ip, "::1");
}

#[test]
fn a_spool_low_on_space_refuses_new_mail_with_452() {
    // No file system has a million TiB free: the relay must consider its spool full.
    let config = common::BASE_CONFIG.replace(
        "retry = [\"1s\"]",
        "retry = [\"1s\"]\nmin_free_space = \"1000000TiB\"",
    );
    let relay = Relay::start_with(&config);
    let mut c = session(&relay);
    c.expect("MAIL FROM:<a@contoso.com>", "452 4.3.1");
    c.expect("QUIT", "221");
    relay.wait_for_log("refusing new mail with 452 4.3.1");
    assert!(relay.queued().is_empty());
}
