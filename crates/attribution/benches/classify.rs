//! Micro-benchmark of `attribution::classify`, which pre-flight runs for every recipient of
//! every message (`cargo bench -p attribution --bench classify`).
#![allow(missing_docs)] // benchmark functions are not API
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark set-up

use attribution::{
    ClientCert, Connection, Endpoint, IpReputation, Message, Ruleset, TlsVersion, World, classify,
};
use divan::Bencher;

fn main() {
    divan::main();
}

/// `tenants` tenants, each with two accepted domains and an OnPremises connector by
/// certificate and one by IP; the one that matters is the last (worst case for a scan).
fn world(tenants: usize) -> World {
    let mut text = String::new();
    for i in 0..tenants {
        text.push_str(&format!(
            r#"
[[tenant]]
id = "t{i}"
accepted_domains = [{{ domain = "tenant{i}.com", type = "Authoritative" }}, {{ domain = "tenant{i}.de", type = "Authoritative" }}]
[[tenant.connector]]
name = "cert {i}"
type = "OnPremises"
tls_sender_certificate_name = "relay.tenant{i}.com"
sender_domains = ["*"]
[[tenant.connector]]
name = "ip {i}"
type = "OnPremises"
sender_ip_addresses = ["198.51.100.{ip}/32"]
sender_domains = ["*"]
"#,
            ip = i % 250
        ));
    }
    toml::from_str(&text).unwrap()
}

fn connection(last: usize, cert: bool) -> Connection {
    Connection {
        endpoint: Endpoint::Mx,
        source_ip: "203.0.113.25".parse().unwrap(),
        ehlo: "relay.contoso.local".into(),
        tls: TlsVersion::V1_3,
        client_cert: cert.then(|| ClientCert {
            subject_cn: format!("relay.tenant{last}.com"),
            san: vec![format!("relay.tenant{last}.com")],
            trusted: true,
        }),
        ip_reputation: IpReputation::Ok,
        auth: None,
    }
}

fn message(last: usize, recipients: usize) -> Message {
    Message {
        mail_from: format!("scanner@tenant{last}.com"),
        rcpt_to: (0..recipients)
            .map(|r| format!("user{r}@example.net"))
            .collect(),
        header_from: Some(format!("scanner@tenant{last}.com")),
    }
}

/// A certificate-attributed relay (the production path), by number of tenants configured.
#[divan::bench(args = [1, 10, 100])]
fn by_certificate(bencher: Bencher, tenants: usize) {
    let w = world(tenants);
    let c = connection(tenants - 1, true);
    let m = message(tenants - 1, 1);
    bencher.bench(|| classify(&w, &c, &m, Ruleset::After));
}

/// No certificate: attribution falls back to the MAIL FROM domain.
#[divan::bench(args = [1, 10, 100])]
fn by_mail_from(bencher: Bencher, tenants: usize) {
    let w = world(tenants);
    let c = connection(tenants - 1, false);
    let m = message(tenants - 1, 1);
    bencher.bench(|| classify(&w, &c, &m, Ruleset::After));
}

/// One message to many recipients (10 tenants).
#[divan::bench(args = [1, 50, 500])]
fn recipients(bencher: Bencher, count: usize) {
    let w = world(10);
    let c = connection(9, true);
    let m = message(9, count);
    bencher.bench(|| classify(&w, &c, &m, Ruleset::After));
}
