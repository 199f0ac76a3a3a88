//! STARTTLS response injection (security.md §4, CVE-2021-38371 class): the upstream sends
//! plaintext bytes right behind its `220` to STARTTLS, in the same segment. The relay must not
//! read them as replies nor hand them to TLS: it drops the connection and defers the message
//! with a 4.7.x reason; nothing but EHLO and STARTTLS is ever sent in plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;
mod upstream;

use std::time::{Duration, Instant};

use common::{Client, Relay, TestPki};
use spool::RecipientState;
use upstream::FakeUpstream;

#[test]
fn bytes_behind_the_starttls_220_abort_and_defer() {
    let started = Instant::now();
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path(), "test");
    let (server_cert, server_key) = pki.leaf("mx", &["mx.test"]);
    let (cert, key) = pki.leaf("relay-client", &["relay.contoso.com"]);
    let fake = FakeUpstream::builder()
        .tls(&server_cert, &server_key)
        .starttls_injection(b"250-upstream.test\r\n250 AUTH PLAIN\r\n")
        .start();
    let upstreams = upstream::tls_upstream("exo", fake.port(), &pki.ca_file, &cert, &key, "");
    let relay = Relay::start_in(
        dir,
        &upstream::relay_config(common::BASE_CONFIG, &upstreams),
    );

    let to = "someone@example.net";
    let data = common::small_message("app@contoso.com", to, "<inject@test>", "injection");
    let mut c = Client::session(relay.addr);
    c.mail("app@contoso.com", &[to], &data);
    c.expect("QUIT", "221");

    common::wait_until_for("two attempts", Duration::from_secs(30), || {
        fake.connections().iter().filter(|r| r.closed).count() >= 2
    });
    let queued = relay.queued();
    assert_eq!(queued.len(), 1, "the message stays queued");
    let recipient = &queued[0].0.recipients[0];
    let last = recipient.last_reply.clone().unwrap_or_default();
    println!("deferred with {last:?}");
    assert_eq!(recipient.state, RecipientState::Deferred);
    assert!(
        last.contains(" 4.7.") && last.contains("injection"),
        "{last}"
    );
    assert_eq!(fake.message_count(), 0);
    for (n, record) in fake.connections().iter().enumerate() {
        let lines = record.plaintext_lines();
        println!(
            "connection {n}: plaintext {lines:?}, TLS established {}, TLS error {:?}",
            record.tls_established, record.tls_error
        );
        assert_eq!(lines, ["EHLO relay.test", "STARTTLS"], "connection {n}");
        assert!(!record.tls_established && record.tls.is_empty());
    }
    println!("whole test {:?}", started.elapsed());
}
