//! Several tenants on one relay: two `[[upstream]]` blocks chosen by envelope sender domain,
//! each with its own client certificate. Each fake upstream requires a client certificate from
//! the test CA; mail from each sender domain must arrive at its own upstream, over TLS,
//! presenting its own certificate (subject CN recorded by the fake upstream).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;
mod upstream;

use std::time::{Duration, Instant};

use common::Client;
use upstream::TlsDelivery;

#[test]
fn each_sender_domain_reaches_its_upstream_with_its_certificate() {
    let started = Instant::now();
    let tls = TlsDelivery::new();
    let (contoso_cert, contoso_key) = tls.pki.leaf("contoso", &["relay.contoso.com"]);
    let (fabrikam_cert, fabrikam_key) = tls.pki.leaf("fabrikam", &["relay.fabrikam.com"]);
    let start_fake = || tls.fake().require_client_cert(&tls.pki.ca_file).start();
    let contoso = start_fake();
    let fabrikam = start_fake();
    let upstreams = format!(
        "{}{}",
        upstream::tls_upstream(
            "contoso",
            contoso.port(),
            &tls.pki.ca_file,
            &contoso_cert,
            &contoso_key,
            "sender_domains = [\"contoso.com\"]",
        ),
        upstream::tls_upstream(
            "fabrikam",
            fabrikam.port(),
            &tls.pki.ca_file,
            &fabrikam_cert,
            &fabrikam_key,
            "sender_domains = [\"fabrikam.com\"]",
        ),
    );
    let relay = tls.relay(common::BASE_CONFIG, &upstreams);

    let mut c = Client::session(relay.addr);
    for n in 0..3 {
        for domain in ["contoso.com", "fabrikam.com"] {
            let from = format!("app{n}@{domain}");
            let id = format!("<two-{domain}-{n}@test>");
            let to = "someone@example.net";
            c.mail(
                &from,
                &[to],
                &common::small_message(&from, to, &id, "two upstreams"),
            );
        }
    }
    c.expect("QUIT", "221");

    for (fake, domain, cn) in [
        (&contoso, "contoso.com", "relay.contoso.com"),
        (&fabrikam, "fabrikam.com", "relay.fabrikam.com"),
    ] {
        fake.wait_for(
            &format!("3 messages from {domain}"),
            Duration::from_secs(30),
            |m| m.len() >= 3,
        );
        for m in fake.messages() {
            assert!(
                m.mail_from.ends_with(&format!("@{domain}")),
                "{} arrived at the {domain} upstream",
                m.mail_from
            );
            assert!(m.tls, "{}: not over TLS", m.mail_from);
            assert_eq!(
                m.client_cn.as_deref(),
                Some(cn),
                "{}: client certificate",
                m.mail_from
            );
            assert!(m.message_id().unwrap().contains(domain));
        }
        for record in fake.connections() {
            assert!(record.tls_established, "{record:?}");
            assert_eq!(record.client_cn.as_deref(), Some(cn));
            for line in record.plaintext_lines() {
                assert!(
                    line.starts_with("EHLO ") || line == "STARTTLS",
                    "{line:?} in plaintext"
                );
            }
        }
        println!(
            "{domain}: {} message(s) over {} TLS connection(s), client certificate CN={cn}",
            fake.message_count(),
            fake.connection_count()
        );
    }
    common::wait_until("the relay's queue to empty", || relay.queued().is_empty());
    println!("whole test {:?}", started.elapsed());
}
