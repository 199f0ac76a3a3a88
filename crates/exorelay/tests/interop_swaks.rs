//! Interop with swaks, the SMTP test tool mail administrators reach for first: a plain
//! session, a STARTTLS session and a pipelined session against the real binary. Each message
//! is a full `--data` file with CRLF line ends (swaks sends it as is, dot-stuffed), so the spool
//! must hold exactly those bytes after the relay's own `Received:` header, with the envelope
//! swaks gave.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::time::Instant;

use common::{Expected, Relay};

/// A message id no other test run uses.
fn unique_id(tag: &str) -> String {
    format!("<swaks-{tag}-{}@client.test>", common::run_id())
}

/// A complete message with CRLF line ends: headers, a line that needs dot-stuffing on the
/// wire, a blank line inside the body and a long line.
fn message(message_id: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: App <app@contoso.com>\r\n\
         To: Someone <someone@example.net>\r\n\
         Subject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 06:16:49 +0000\r\n\
         Message-ID: {message_id}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Hello from swaks.\r\n\
         .a line that starts with a dot\r\n\
         \r\n\
         {long}\r\n\
         last line\r\n",
        long = "0123456789".repeat(90),
    )
    .into_bytes()
}

/// Runs swaks against the relay with `data` (sent as a `--data` file ending in the `.` line,
/// so swaks adds nothing) and returns its transcript; panics unless swaks succeeded.
fn swaks(relay: &Relay, from: &str, to: &[&str], data: &[u8], extra: &[&str]) -> String {
    let started = Instant::now();
    let file = relay.dir.path().join("swaks-data.eml");
    let server = relay.addr.to_string();
    let mut command = common::swaks(&server, "client.test", from, to, data, &file);
    let transcript = common::run_client(relay, &format!("swaks {extra:?}"), command.args(extra));
    assert!(
        // `<-` marks a reply read in plain text, `<~` one read over TLS.
        transcript.contains("<-  250 2.0.0") || transcript.contains("<~  250 2.0.0"),
        "no 250 to the end of data:\n{transcript}"
    );
    println!("swaks {extra:?}: done in {:?}", started.elapsed());
    transcript
}

/// Asserts the spool holds exactly one message with `message_id`, with this envelope and
/// `data` byte-exact after the relay's `Received:` header; returns that header.
fn assert_spooled(
    relay: &Relay,
    message_id: &str,
    from: &str,
    to: &[&str],
    data: &[u8],
    tls: bool,
) -> String {
    let queued = relay.queued();
    let (envelope, content) = Expected {
        message_id,
        from,
        to,
        in_order: true,
        helo: "client.test",
        tls,
    }
    .find_in(&queued);
    assert_eq!(envelope.client_ip, "127.0.0.1");
    let client_bytes = common::after_relay_received(content, envelope, "relay.test");
    common::assert_same_bytes("swaks", data, client_bytes);
    assert_eq!(
        envelope.size,
        content.len() as u64,
        "envelope size vs content file"
    );
    let header =
        String::from_utf8_lossy(&content[..content.len() - client_bytes.len()]).into_owned();
    println!(
        "{message_id}: queued as {}, from <{from}> to {to:?}, tls={tls}, {} client bytes byte-exact",
        envelope.id,
        data.len()
    );
    header
}

#[test]
fn swaks_plain_message_is_spooled_byte_exact() {
    if !common::have_tool("swaks") {
        return;
    }
    let relay = Relay::start();
    let id = unique_id("plain");
    let data = message(&id, "plain");
    let transcript = swaks(
        &relay,
        "app@contoso.com",
        &["someone@example.net"],
        &data,
        &[],
    );
    assert!(!transcript.contains("STARTTLS"), "{transcript}");
    let header = assert_spooled(
        &relay,
        &id,
        "app@contoso.com",
        &["someone@example.net"],
        &data,
        false,
    );
    assert!(header.contains("with ESMTP\r\n"), "{header}");
}

#[test]
fn swaks_starttls_message_is_spooled_with_the_tls_flag() {
    if !common::have_swaks_tls() {
        return;
    }
    let (relay, _pki) = Relay::start_with_tls(&["relay.test"]);
    let id = unique_id("tls");
    let data = message(&id, "over STARTTLS");
    let to = ["someone@example.net", "other@example.org"];
    let transcript = swaks(&relay, "app@contoso.com", &to, &data, &["--tls"]);
    assert!(transcript.contains(" -> STARTTLS"), "{transcript}");
    assert!(transcript.contains("=== TLS started"), "{transcript}");
    let header = assert_spooled(&relay, &id, "app@contoso.com", &to, &data, true);
    assert!(header.contains("with ESMTPS\r\n"), "{header}");
}

#[test]
fn swaks_pipelined_transaction_is_spooled_byte_exact() {
    if !common::have_tool("swaks") {
        return;
    }
    let relay = Relay::start();
    let id = unique_id("pipeline");
    let data = message(&id, "pipelined");
    let to = ["a@example.net", "b@example.net", "c@example.org"];
    // The null sender, as in a bounce: swaks spells it `<>`.
    let transcript = swaks(&relay, "<>", &to, &data, &["--pipeline"]);
    // Pipelined: MAIL, every RCPT and DATA went out before the first reply to them came back.
    let sent: Vec<&str> = transcript
        .lines()
        .skip_while(|l| !l.starts_with(" -> MAIL FROM"))
        .take(5)
        .collect();
    assert_eq!(
        sent,
        [
            " -> MAIL FROM:<>",
            " -> RCPT TO:<a@example.net>",
            " -> RCPT TO:<b@example.net>",
            " -> RCPT TO:<c@example.org>",
            " -> DATA"
        ],
        "{transcript}"
    );
    assert_spooled(&relay, &id, "", &to, &data, false);
}
