//! Downgrade: the upstream does not advertise STARTTLS while the relay's upstream says
//! `tls = "required"`. The relay must say nothing but EHLO (and QUIT) in plaintext — never
//! MAIL, RCPT, DATA, BDAT or a byte of the message — and keep the message queued, deferred with
//! a 4.7.x reason, retrying on schedule (security.md §5).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;
mod upstream;

use std::time::Instant;

use common::Client;
use upstream::{FakeUpstream, TlsDelivery};

#[test]
fn missing_starttls_defers_and_sends_nothing_in_plaintext() {
    let started = Instant::now();
    let tls = TlsDelivery::new();
    let fake = FakeUpstream::builder().starttls(false).start();
    let relay = tls.relay(common::BASE_CONFIG, &tls.upstream("exo", fake.port(), ""));

    let body = b"Subject: secret\r\nMessage-ID: <nostarttls@test>\r\n\r\nTOP-SECRET-BODY-LINE\r\n";
    let mut c = Client::session(relay.addr);
    let reply = c.mail("app@contoso.com", &["someone@example.net"], body);
    c.expect("QUIT", "221");
    let id = common::queue_id_of(&reply);

    // At least two attempts (the first and one retry after 1 s), each refused before MAIL.
    let (envelope, last) = upstream::assert_deferred_unsent(&relay, &fake, 2);
    assert_eq!(envelope.id.to_string(), id);
    assert!(
        last.contains(" 4.7.") && last.contains("STARTTLS"),
        "last reply: {last}"
    );

    for (n, record) in fake.connections().iter().enumerate() {
        let lines = record.plaintext_lines();
        println!(
            "connection {n}: plaintext lines {lines:?}, TLS bytes {}",
            record.tls.len()
        );
        assert!(!record.tls_established && record.tls.is_empty());
        for line in &lines {
            let verb = line
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            assert!(
                verb == "EHLO" || verb == "QUIT",
                "connection {n}: {line:?} sent in plaintext"
            );
        }
        let raw = String::from_utf8_lossy(&record.plaintext);
        assert!(
            !raw.contains("TOP-SECRET") && !raw.contains("app@contoso.com"),
            "{raw}"
        );
    }
    println!(
        "deferred after {} attempt(s) with {last:?}; {} connection(s); {:?}",
        envelope.attempts,
        fake.connection_count(),
        started.elapsed()
    );
}
