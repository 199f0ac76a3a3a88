//! STARTTLS response injection (security.md §4, CVE-2021-38371 class): the upstream sends
//! plaintext bytes right behind its `220` to STARTTLS, in the same segment. The relay must not
//! read them as replies nor hand them to TLS: it drops the connection and defers the message
//! with a 4.7.x reason; nothing but EHLO and STARTTLS is ever sent in plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;
mod upstream;

use std::time::Instant;

use common::Client;
use upstream::TlsDelivery;

#[test]
fn bytes_behind_the_starttls_220_abort_and_defer() {
    let started = Instant::now();
    let tls = TlsDelivery::new();
    let fake = tls
        .fake()
        .starttls_injection(b"250-upstream.test\r\n250 AUTH PLAIN\r\n")
        .start();
    let relay = tls.relay(common::BASE_CONFIG, &tls.upstream("exo", fake.port(), ""));

    let to = "someone@example.net";
    let data = common::small_message("app@contoso.com", to, "<inject@test>", "injection");
    let mut c = Client::session(relay.addr);
    c.mail("app@contoso.com", &[to], &data);
    c.expect("QUIT", "221");

    let (_, last) = upstream::assert_deferred_unsent(&relay, &fake, 2);
    assert!(
        last.contains(" 4.7.") && last.contains("injection"),
        "{last}"
    );
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
