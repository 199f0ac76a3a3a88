//! `exorelay exosim` as a real process: the seed scenarios of exo-attribution.md §8, sent
//! directly over SMTP (with STARTTLS and a client certificate where the scenario has one), give
//! the before/after outcomes of the spec's table — the reply codes at the stage the spec gives,
//! and for accepted mail the stored message with its directionality header. The IP-connector
//! scenarios use `--source-ip`, since the test connects from 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use common::{Exosim, TestPki, WAIT};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

/// Certificates for one test: the simulator's server certificate and CA, client certificates
/// from that CA (trusted by the simulator) and one from a rogue CA.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    exchange: (PathBuf, PathBuf),
    postfix: (PathBuf, PathBuf),
    saas: (PathBuf, PathBuf),
    rogue_exchange: (PathBuf, PathBuf),
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(dir.path(), "exo");
        let rogue = TestPki::new(dir.path(), "rogue");
        Pki {
            ca: pki.ca_file.clone(),
            server: pki.leaf("server", &["exosim.test"]),
            exchange: pki.leaf(
                "exchange",
                &["mail.contoso.com", "autodiscover.contoso.com"],
            ),
            postfix: pki.leaf("postfix", &["smtp.fabrikam.com"]),
            saas: pki.leaf("saas", &["mta.saasmailer.example"]),
            rogue_exchange: rogue.leaf("rogue-exchange", &["mail.contoso.com"]),
            dir,
        }
    }
}

/// Starts `exorelay exosim` with the rule set `ruleset`, the tenants of `tests/data/TENANTS`,
/// the simulator's server certificate, the test CA for client certificates, and `--source-ip`
/// when given; it stores accepted mail below `store`.
fn start_sim(
    pki: &Pki,
    tenants: &str,
    ruleset: &str,
    source_ip: Option<&str>,
    store: PathBuf,
) -> Exosim {
    let mut args: Vec<OsString> = vec!["--tenants".into(), data(tenants).into()];
    args.extend(["--ruleset".into(), ruleset.into()]);
    args.extend(["--cert".into(), pki.server.0.clone().into()]);
    args.extend(["--key".into(), pki.server.1.clone().into()]);
    args.extend(["--client-ca".into(), pki.ca.clone().into()]);
    if let Some(ip) = source_ip {
        args.extend(["--source-ip".into(), ip.into()]);
    }
    Exosim::start(store, args)
}

/// Something to speak SMTP over: plain TCP or rustls.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Reads one reply (all lines), returns it with lines joined by `\n`.
fn reply(stream: &mut dyn Stream) -> String {
    let mut all = String::new();
    let mut line = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "reply timed out: {all}");
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).unwrap();
        assert!(n == 1, "connection closed; got so far {all:?}");
        line.push(byte[0]);
        if line.ends_with(b"\r\n") {
            let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let last = text.as_bytes().get(3) != Some(&b'-');
            all.push_str(&text);
            if last {
                return all;
            }
            all.push('\n');
            line.clear();
        }
    }
}

fn cmd(stream: &mut dyn Stream, line: &str) -> String {
    stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    stream.flush().unwrap();
    reply(stream)
}

fn expect(stream: &mut dyn Stream, line: &str, code: &str) {
    let answer = cmd(stream, line);
    assert!(
        answer.starts_with(code),
        "{line}: expected {code}, got {answer}"
    );
}

/// What the simulator answered to a transaction.
#[derive(Debug)]
struct Answers {
    rcpt: Vec<String>,
    data: Option<String>,
}

/// One flow as the vectors describe it.
struct Flow<'a> {
    cert: Option<&'a (PathBuf, PathBuf)>,
    tls: bool,
    mail_from: &'a str,
    header_from: &'a str,
    rcpt: &'a [&'a str],
}

fn send(addr: SocketAddr, ca: &Path, flow: &Flow<'_>) -> Answers {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut plain = tcp;
    let greeting = reply(&mut plain);
    assert!(greeting.starts_with("220 "), "{greeting}");
    let mut stream: Box<dyn Stream> = if flow.tls {
        let ehlo = cmd(&mut plain, "EHLO client.test");
        assert!(ehlo.contains("STARTTLS"), "{ehlo}");
        expect(&mut plain, "STARTTLS", "220");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match flow.cert {
            Some((cert, key)) => {
                let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                builder
                    .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                    .unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from("exosim.test").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        Box::new(rustls::StreamOwned::new(connection, plain))
    } else {
        Box::new(plain)
    };
    expect(&mut *stream, "EHLO client.test", "250");
    expect(
        &mut *stream,
        &format!("MAIL FROM:<{}>", flow.mail_from),
        "250",
    );
    let rcpt: Vec<String> = flow
        .rcpt
        .iter()
        .map(|r| cmd(&mut *stream, &format!("RCPT TO:<{r}>")))
        .collect();
    let data = if rcpt.iter().any(|r| r.starts_with("250")) {
        expect(&mut *stream, "DATA", "354");
        let message = format!(
            "From: <{}>\r\nTo: <{}>\r\nSubject: seed scenario\r\n\r\nHello.\r\n.",
            flow.header_from,
            flow.rcpt.join(">, <")
        );
        Some(cmd(&mut *stream, &message))
    } else {
        None
    };
    let _ = cmd(&mut *stream, "QUIT");
    Answers { rcpt, data }
}

/// What must happen under one rule set.
#[derive(Clone, Copy)]
enum Outcome {
    /// Accepted and stored for the tenant with this directionality.
    Stored(&'static str, &'static str),
    /// Refused at RCPT with this reply.
    RefusedAtRcpt(&'static str),
}

const DENIED: Outcome = Outcome::RefusedAtRcpt("550 5.7.64 TenantAttribution; Relay Access Denied");

struct Scenario<'a> {
    name: &'static str,
    tenants: &'static str,
    source_ip: Option<&'static str>,
    flow: Flow<'a>,
    before: Outcome,
    after: Outcome,
}

fn scenarios(pki: &Pki) -> Vec<Scenario<'_>> {
    vec![
        Scenario {
            name: "seed1-exchange-onprem-cert",
            tenants: "seeds.toml",
            source_ip: None,
            flow: Flow {
                cert: Some(&pki.exchange),
                tls: true,
                mail_from: "alice@contoso.com",
                header_from: "alice@contoso.com",
                rcpt: &["partner@example.net"],
            },
            before: Outcome::Stored("contoso", "Originating"),
            after: Outcome::Stored("contoso", "Originating"),
        },
        Scenario {
            name: "seed1 with a certificate from a CA exosim does not trust",
            tenants: "seeds.toml",
            source_ip: None,
            flow: Flow {
                cert: Some(&pki.rogue_exchange),
                tls: true,
                mail_from: "alice@contoso.com",
                header_from: "alice@contoso.com",
                rcpt: &["partner@example.net"],
            },
            before: DENIED,
            after: DENIED,
        },
        Scenario {
            name: "seed2-postfix-company-cert-accepted-domain",
            tenants: "seeds.toml",
            source_ip: None,
            flow: Flow {
                cert: Some(&pki.postfix),
                tls: true,
                mail_from: "",
                header_from: "postmaster@fabrikam.com",
                rcpt: &["boss@example.org"],
            },
            before: Outcome::Stored("fabrikam-fixed", "Originating"),
            after: Outcome::Stored("fabrikam-fixed", "Originating"),
        },
        Scenario {
            name: "postfix-hostcert-not-accepted-foreign-envelope (2′)",
            tenants: "fabrikam-hostcert.toml",
            source_ip: None,
            flow: Flow {
                cert: Some(&pki.postfix),
                tls: true,
                mail_from: "cron@app01.fabrikam.internal",
                header_from: "reports@fabrikam.com",
                rcpt: &["boss@example.org"],
            },
            before: Outcome::Stored("fabrikam", "Originating"),
            after: DENIED,
        },
        Scenario {
            name: "seed3-saas-provider-cert-ip-connector",
            tenants: "seeds.toml",
            source_ip: Some("198.51.100.25"),
            flow: Flow {
                cert: Some(&pki.saas),
                tls: true,
                mail_from: "bounce+8f3a@saasmailer.example",
                header_from: "news@northwindtraders.com",
                rcpt: &["customer@example.com"],
            },
            before: Outcome::Stored("northwind", "Originating"),
            after: DENIED,
        },
        Scenario {
            name: "seed4-printer-no-tls-internal",
            tenants: "seeds.toml",
            source_ip: Some("203.0.113.77"),
            flow: Flow {
                cert: None,
                tls: false,
                mail_from: "scanner@adventure-works.com",
                header_from: "scanner@adventure-works.com",
                rcpt: &["jo@adventure-works.com"],
            },
            before: Outcome::Stored("adventureworks", "Incoming"),
            after: Outcome::Stored("adventureworks", "Incoming"),
        },
        Scenario {
            name: "seed5-script-ip-connector-no-tls",
            tenants: "seeds.toml",
            source_ip: Some("203.0.113.5"),
            flow: Flow {
                cert: None,
                tls: false,
                mail_from: "monitor@contoso.com",
                header_from: "monitor@contoso.com",
                rcpt: &["ops@example.net"],
            },
            before: Outcome::Stored("contoso", "Originating"),
            after: Outcome::Stored("contoso", "Originating"),
        },
        Scenario {
            name: "seed5b-script-ip-connector-foreign-envelope",
            tenants: "seeds.toml",
            source_ip: Some("203.0.113.5"),
            flow: Flow {
                cert: None,
                tls: false,
                mail_from: "root@srv01.corp.local",
                header_from: "monitor@contoso.com",
                rcpt: &["ops@example.net"],
            },
            before: Outcome::Stored("contoso", "Originating"),
            after: DENIED,
        },
        Scenario {
            name: "seed6-ndr-null-sender-ip-connector",
            tenants: "seeds.toml",
            source_ip: Some("203.0.113.9"),
            flow: Flow {
                cert: None,
                tls: false,
                mail_from: "",
                header_from: "postmaster@contoso.com",
                rcpt: &["someone@example.net"],
            },
            before: Outcome::Stored("contoso", "Originating"),
            after: DENIED,
        },
    ]
}

fn run_ruleset(ruleset: &str) {
    let pki = Pki::new();
    for (i, s) in scenarios(&pki).iter().enumerate() {
        let store = pki.dir.path().join(format!("store-{ruleset}-{i}"));
        let sim = start_sim(&pki, s.tenants, ruleset, s.source_ip, store);
        let answers = send(sim.addr, &pki.ca, &s.flow);
        let expected = if ruleset == "before" {
            s.before
        } else {
            s.after
        };
        let context = format!("{} ({ruleset}): {answers:?}", s.name);
        match expected {
            Outcome::RefusedAtRcpt(reply) => {
                assert!(
                    answers.rcpt.iter().all(|r| r.starts_with(reply)),
                    "{context}"
                );
                assert!(answers.data.is_none(), "{context}");
                assert!(!sim.store.exists(), "nothing may be stored: {context}");
            }
            Outcome::Stored(tenant, direction) => {
                assert!(
                    answers.rcpt.iter().all(|r| r.starts_with("250")),
                    "{context}"
                );
                let data = answers.data.as_deref().unwrap_or_default();
                assert!(data.starts_with("250 2.6.0"), "{context}");
                let stored = std::fs::read_to_string(sim.store.join(tenant).join("1.eml"))
                    .unwrap_or_else(|e| panic!("no stored message for {tenant}: {e}; {context}"));
                let header =
                    format!("X-MS-Exchange-Organization-MessageDirectionality: {direction}\r\n");
                assert!(stored.contains(&header), "{context}\n{stored}");
                assert!(
                    stored.contains(&format!(
                        "X-Exosim-Verdict: tenant={tenant}; direction={direction};"
                    )),
                    "{context}\n{stored}"
                );
                assert!(
                    stored.contains("Subject: seed scenario\r\n"),
                    "{context}\n{stored}"
                );
                let tenants: Vec<_> = std::fs::read_dir(&sim.store).unwrap().collect();
                assert_eq!(tenants.len(), 1, "stored for one tenant only: {context}");
            }
        }
    }
}

#[test]
fn seed_scenarios_before_november_2023() {
    run_ruleset("before");
}

#[test]
fn seed_scenarios_after_november_2023() {
    run_ruleset("after");
}

/// Under `before`, a connector-matched flow whose header From does not save it is refused at
/// the end of DATA (§4 step 1 exception), not at RCPT.
#[test]
fn before_rules_refuse_at_end_of_data_when_header_from_fails() {
    let pki = Pki::new();
    let store = pki.dir.path().join("store");
    let sim = start_sim(&pki, "seeds.toml", "before", Some("203.0.113.5"), store);
    let answers = send(
        sim.addr,
        &pki.ca,
        &Flow {
            cert: None,
            tls: false,
            mail_from: "root@srv01.corp.local",
            header_from: "root@srv01.corp.local",
            rcpt: &["ops@example.net"],
        },
    );
    assert!(answers.rcpt[0].starts_with("250"), "{answers:?}");
    let data = answers.data.unwrap_or_default();
    assert!(
        data.starts_with("550 5.7.64 TenantAttribution; Relay Access Denied"),
        "{data}"
    );
    assert!(!sim.store.exists());
}
