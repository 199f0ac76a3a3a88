//! Interop with Postfix as an on-premises MTA that relays through exorelay: the test starts a
//! private Postfix instance (its own configuration, queue and log directories, an smtpd on a
//! free loopback port, `relayhost` pointing at the relay, STARTTLS when offered) and stops it
//! when done. Messages submitted to Postfix must arrive in exorelay's spool with the envelope
//! they were submitted with and the content intact below the two trace headers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::Path;
use std::time::Instant;

use common::{Expected, PrivatePostfix, Relay};

/// Postfix's host name: its EHLO to the relay and its `Received:` header.
const POSTFIX_HOSTNAME: &str = "postfix.test";

/// Starts a private Postfix instance relaying everything to `relay`, with STARTTLS when offered.
fn start_postfix(relay: &Relay) -> PrivatePostfix {
    let started = Instant::now();
    let main_cf = format!(
        "mydestination =\n\
         relayhost = [{relay_ip}]:{relay_port}\n\
         smtp_tls_security_level = may\n\
         smtp_tls_loglevel = 1\n",
        relay_ip = relay.addr.ip(),
        relay_port = relay.addr.port(),
    );
    let postfix = PrivatePostfix::start(POSTFIX_HOSTNAME, &main_cf, |_| {});
    println!(
        "postfix started on {} in {:?}",
        postfix.smtpd,
        started.elapsed()
    );
    postfix
}

/// Hands `data` (CRLF, ending in CRLF) to Postfix's smtpd with swaks.
fn submit(postfix: &PrivatePostfix, file: &Path, from: &str, to: &[&str], data: &[u8]) {
    let output = common::swaks(&postfix.smtpd, "app.test", from, to, data, file)
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && transcript.contains("<-  250 2.0.0 Ok: queued"),
        "submission to Postfix failed:\n{transcript}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn message(message_id: &str, n: usize) -> Vec<u8> {
    format!(
        "From: Legacy App <app@contoso.com>\r\n\
         To: customer{n}@example.net\r\n\
         Subject: invoice {n}\r\n\
         Date: Sat, 28 Nov 2026 06:16:49 +0000\r\n\
         Message-ID: {message_id}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Invoice {n} is attached in spirit.\r\n\
         .leading dot survives two hops\r\n\
         \r\n\
         {long}\r\n\
         end\r\n",
        long = "abcdefghij".repeat(70),
    )
    .into_bytes()
}

/// Strips the first header (with its continuation lines) of `content`, returning it and the rest.
fn split_first_header(content: &[u8]) -> (String, &[u8]) {
    let mut end = 0;
    loop {
        let line_end = content[end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("CRLF-ended header")
            + end
            + 2;
        end = line_end;
        if !matches!(content.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    (
        String::from_utf8_lossy(&content[..end]).into_owned(),
        &content[end..],
    )
}

#[test]
fn postfix_relays_through_exorelay_intact() {
    if !common::have_postfix() || !common::have_tool("swaks") {
        return;
    }
    let started = Instant::now();
    let (relay, _pki) = Relay::start_with_tls(&["relay.test"]);
    let postfix = start_postfix(&relay);

    let nanos = common::run_id();
    let sent: Vec<(String, &str, Vec<&str>)> = vec![
        (
            format!("<postfix-1-{nanos}@app.test>"),
            "app@contoso.com",
            vec!["customer1@example.net"],
        ),
        (
            format!("<postfix-2-{nanos}@app.test>"),
            "billing@contoso.com",
            vec!["customer2@example.net", "archive@example.org"],
        ),
        (
            format!("<postfix-3-{nanos}@app.test>"),
            "app@contoso.com",
            vec!["customer3@example.net"],
        ),
    ];
    let mut data = Vec::new();
    for (n, (id, from, to)) in sent.iter().enumerate() {
        let bytes = message(id, n + 1);
        let file = relay.dir.path().join(format!("postfix-{n}.eml"));
        submit(&postfix, &file, from, to, &bytes);
        data.push(bytes);
    }
    common::wait_until(
        "Postfix to relay every message into exorelay's spool",
        || relay.queued().len() >= sent.len(),
    );
    let queued = relay.queued();
    assert_eq!(queued.len(), sent.len(), "messages in exorelay's spool");
    for ((id, from, to), data) in sent.iter().zip(&data) {
        // Postfix (smtp_tls_security_level = may) must have used STARTTLS; it may reorder
        // the recipients.
        let (envelope, content) = Expected {
            message_id: id,
            from,
            to,
            in_order: false,
            helo: POSTFIX_HOSTNAME,
            tls: true,
        }
        .find_in(&queued);
        // Below our Received: comes Postfix's own, then the submitted message unchanged.
        let after_ours = common::after_relay_received(content, envelope, "relay.test");
        let (theirs, rest) = split_first_header(after_ours);
        assert!(
            theirs.starts_with("Received: from ")
                && theirs.contains(&format!("by {POSTFIX_HOSTNAME} (Postfix)")),
            "{id}: expected Postfix's Received: header, got {theirs:?}"
        );
        common::assert_same_bytes(&format!("{id}: Postfix"), data, rest);
        println!(
            "{id}: queued as {}, from <{from}> to {to:?}, tls={}, {} bytes intact below both Received: headers",
            envelope.id,
            envelope.tls,
            data.len()
        );
    }
    let sent_lines = postfix.log().matches("status=sent").count();
    println!(
        "postfix logged {sent_lines} status=sent deliveries; whole test {:?}",
        started.elapsed()
    );
}
