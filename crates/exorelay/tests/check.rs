//! `exorelay check` on the six seed scenarios of exo-attribution.md §8 (and the variants the table
//! names: 2′ with a host certificate, 5 with a foreign envelope sender), in text and JSON, plus
//! a certificate read from a file and the relay-configuration table. Each scenario's tenants and
//! flow come from the vectors (`crates/attribution/tests/vectors/attribution.toml`) named below.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

/// Runs `exorelay check ARGS`, asserting success; returns standard output.
fn check(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_exorelay"))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "exorelay check {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// What one rule set must say: outcome, decided_by, tenant, and for refusals the reply.
struct Expect {
    outcome: &'static str,
    decided_by: &'static str,
    tenant: Option<&'static str>,
    reply: Option<&'static str>,
}

const fn ok(outcome: &'static str, decided_by: &'static str, tenant: &'static str) -> Expect {
    Expect {
        outcome,
        decided_by,
        tenant: Some(tenant),
        reply: None,
    }
}

const DENIED: Expect = Expect {
    outcome: "refused",
    decided_by: "none",
    tenant: None,
    reply: Some("550 5.7.64 TenantAttribution; Relay Access Denied"),
};

struct Scenario {
    /// The vector case it comes from.
    vector: &'static str,
    tenants: &'static str,
    flow: &'static [&'static str],
    before: Expect,
    after: Expect,
    /// Parts of the human text: the concrete change (or the headline when nothing is refused).
    human: &'static [&'static str],
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            vector: "seed1-exchange-onprem-cert",
            tenants: "seeds.toml",
            flow: &[
                "--source-ip",
                "192.0.2.10",
                "--tls",
                "1.2",
                "--cert-name",
                "mail.contoso.com",
                "--cert-name",
                "autodiscover.contoso.com",
                "--mail-from",
                "alice@contoso.com",
                "--header-from",
                "alice@contoso.com",
                "--rcpt",
                "partner@example.net",
            ],
            before: ok("originating", "certificate_domain", "contoso"),
            after: ok("originating", "certificate_domain", "contoso"),
            human: &[
                "After Nov 2023:  OK — Originating for contoso (decided by certificate_domain",
            ],
        },
        Scenario {
            vector: "seed2-postfix-company-cert-accepted-domain",
            tenants: "seeds.toml",
            flow: &[
                "--source-ip",
                "192.0.2.20",
                "--tls",
                "1.3",
                "--cert-name",
                "smtp.fabrikam.com",
                "--mail-from",
                "<>",
                "--header-from",
                "postmaster@fabrikam.com",
                "--rcpt",
                "boss@example.org",
            ],
            before: ok("originating", "certificate_domain", "fabrikam-fixed"),
            after: ok("originating", "certificate_domain", "fabrikam-fixed"),
            human: &["After Nov 2023:  OK — Originating for fabrikam-fixed"],
        },
        Scenario {
            vector: "postfix-hostcert-not-accepted-foreign-envelope",
            tenants: "fabrikam-hostcert.toml",
            flow: &[
                "--source-ip",
                "192.0.2.20",
                "--tls",
                "1.2",
                "--cert-name",
                "smtp.fabrikam.com",
                "--mail-from",
                "cron@app01.fabrikam.internal",
                "--header-from",
                "reports@fabrikam.com",
                "--rcpt",
                "boss@example.org",
            ],
            before: ok("originating", "header_from_domain", "fabrikam"),
            after: DENIED,
            human: &[
                "After Nov 2023:  REFUSED — 550 5.7.64 TenantAttribution; Relay Access Denied (at RCPT TO)",
                "add smtp.fabrikam.com as an accepted domain, or set the connector's \
                 TlsSenderCertificateName to *.fabrikam.com",
                "app01.fabrikam.internal is not accepted; rewrite it to an address in fabrikam.com",
            ],
        },
        Scenario {
            vector: "seed3-saas-provider-cert-ip-connector",
            tenants: "seeds.toml",
            flow: &[
                "--source-ip",
                "198.51.100.25",
                "--tls",
                "1.2",
                "--cert-name",
                "mta.saasmailer.example",
                "--mail-from",
                "bounce+8f3a@saasmailer.example",
                "--header-from",
                "news@northwindtraders.com",
                "--rcpt",
                "customer@example.com",
            ],
            before: ok("originating", "header_from_domain", "northwind"),
            after: DENIED,
            human: &[
                "the envelope sender's domain saasmailer.example is not accepted; rewrite it to an \
                 address in northwindtraders.com",
            ],
        },
        Scenario {
            vector: "seed4-printer-no-tls-internal",
            tenants: "seeds.toml",
            flow: &[
                "--source-ip",
                "203.0.113.77",
                "--mail-from",
                "scanner@adventure-works.com",
                "--header-from",
                "scanner@adventure-works.com",
                "--rcpt",
                "jo@adventure-works.com",
            ],
            before: ok("incoming", "recipient_domain", "adventureworks"),
            after: ok("incoming", "recipient_domain", "adventureworks"),
            human: &["After Nov 2023:  OK — Incoming to adventureworks"],
        },
        Scenario {
            vector: "seed5-script-ip-connector-no-tls",
            tenants: "seeds.toml",
            flow: &[
                "--source-ip",
                "203.0.113.5",
                "--mail-from",
                "monitor@contoso.com",
                "--header-from",
                "monitor@contoso.com",
                "--rcpt",
                "ops@example.net",
            ],
            before: ok("originating", "mail_from_domain", "contoso"),
            after: ok("originating", "mail_from_domain", "contoso"),
            human: &["connector \"From Contoso datacenter\""],
        },
        Scenario {
            vector: "seed5b-script-ip-connector-foreign-envelope",
            tenants: "seeds.toml",
            flow: &[
                "--source-ip",
                "203.0.113.5",
                "--mail-from",
                "root@srv01.corp.local",
                "--header-from",
                "monitor@contoso.com",
                "--rcpt",
                "ops@example.net",
            ],
            before: ok("originating", "header_from_domain", "contoso"),
            after: DENIED,
            human: &[
                "the envelope sender's domain srv01.corp.local is not accepted; rewrite it to an \
                 address in contoso.com",
            ],
        },
        Scenario {
            vector: "seed6-ndr-null-sender-ip-connector",
            tenants: "seeds.toml",
            flow: &[
                "--source-ip",
                "203.0.113.9",
                "--mail-from",
                "<>",
                "--header-from",
                "postmaster@contoso.com",
                "--rcpt",
                "someone@example.net",
            ],
            before: ok("originating", "header_from_domain", "contoso"),
            after: DENIED,
            human: &[
                "P1 null: the envelope sender is null",
                "present a certificate that an OnPremises connector of contoso names",
            ],
        },
    ]
}

fn assert_rule(name: &str, ruleset: &str, actual: &Value, expected: &Expect) {
    let context = format!("{name} {ruleset}: {actual:#}");
    assert_eq!(actual["outcome"], expected.outcome, "{context}");
    assert_eq!(actual["decided_by"], expected.decided_by, "{context}");
    assert_eq!(actual["tenant"].as_str(), expected.tenant, "{context}");
    assert_eq!(actual["reply"].as_str(), expected.reply, "{context}");
    if expected.reply.is_some() {
        assert_eq!(actual["stage"], "rcpt", "{context}");
        assert!(
            !actual["advice"].as_array().unwrap().is_empty(),
            "a refusal comes with advice: {context}"
        );
    } else {
        assert_eq!(actual["rejected"].as_array().unwrap().len(), 0, "{context}");
    }
}

#[test]
fn seed_scenarios_in_json() {
    for s in scenarios() {
        let tenants = data(s.tenants);
        let mut args = vec!["--tenants", tenants.to_str().unwrap(), "--json"];
        args.extend_from_slice(s.flow);
        let json: Value = serde_json::from_str(&check(&args)).unwrap();
        assert_rule(s.vector, "before", &json["before"], &s.before);
        assert_rule(s.vector, "after", &json["after"], &s.after);
    }
}

#[test]
fn seed_scenarios_in_text() {
    for s in scenarios() {
        let tenants = data(s.tenants);
        let mut args = vec!["--tenants", tenants.to_str().unwrap()];
        args.extend_from_slice(s.flow);
        let text = check(&args);
        for part in s.human {
            assert!(
                text.contains(part),
                "{}: {part:?} missing in\n{text}",
                s.vector
            );
        }
        let refused_after = s.after.reply.is_some();
        assert_eq!(
            text.contains("After Nov 2023:  REFUSED"),
            refused_after,
            "{}:\n{text}",
            s.vector
        );
        assert_eq!(
            text.contains("what to change:"),
            refused_after,
            "{}:\n{text}",
            s.vector
        );
    }
}

#[test]
fn certificate_file_is_read_and_trusted_only_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::TestPki::new(dir.path(), "check");
    let (cert, _key) = pki.leaf(
        "exchange",
        &["mail.contoso.com", "autodiscover.contoso.com"],
    );
    let tenants = data("seeds.toml");
    let base = [
        "--tenants",
        tenants.to_str().unwrap(),
        "--json",
        "--source-ip",
        "192.0.2.10",
        "--cert",
        cert.to_str().unwrap(),
        "--mail-from",
        "<>",
        "--rcpt",
        "partner@example.net",
    ];
    let mut trusted = base.to_vec();
    trusted.push("--cert-trusted");
    let json: Value = serde_json::from_str(&check(&trusted)).unwrap();
    assert_eq!(
        json["flow"]["client_cert"]["subject_cn"], "mail.contoso.com",
        "{json:#}"
    );
    assert_eq!(json["flow"]["tls"], "1.3", "{json:#}");
    assert_rule(
        "cert file",
        "after",
        &json["after"],
        &ok("originating", "certificate_domain", "contoso"),
    );

    let json: Value = serde_json::from_str(&check(&base)).unwrap();
    assert_eq!(json["flow"]["client_cert"]["trusted"], false, "{json:#}");
    assert_eq!(json["after"]["outcome"], "refused", "{json:#}");
    let labels: Vec<&str> = json["after"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert!(labels.contains(&"untrusted certificate"), "{json:#}");
}

#[test]
fn relay_configuration_table() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::TestPki::new(dir.path(), "relay");
    pki.leaf("relay", &["relay.contoso.com"]);
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        r#"
[server]
listen = ["127.0.0.1:0"]
hostname = "relay.contoso.com"

[[client]]
name = "printers"
networks = ["10.20.0.0/24"]
envelope_from = "scanner@contoso.com"

[[client]]
name = "apps"
networks = ["10.30.0.0/24"]
allowed_sender_domains = ["example.org"]

[[upstream]]
name = "contoso"
host = "contoso-com.mail.protection.outlook.com"
client_cert = "relay.pem"
client_key = "relay.key"

[tenant.contoso]
accepted_domains = ["contoso.com"]
connectors = [{ type = "OnPremises", tls_sender_certificate_name = "relay.contoso.com" }]

[queue]
dir = "spool"
"#,
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let json: Value = serde_json::from_str(&check(&[
        "--config",
        config,
        "--egress-ip",
        "192.0.2.1",
        "--json",
    ]))
    .unwrap();
    let flows = json["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 2, "{json:#}");
    let printers = &flows[0];
    assert_eq!(printers["client"], "printers");
    assert_eq!(printers["flow"]["mail_from"], "scanner@contoso.com");
    assert_eq!(
        printers["flow"]["client_cert"]["subject_cn"],
        "relay.contoso.com"
    );
    assert_eq!(printers["flow"]["source_ip"], "192.0.2.1");
    assert_rule(
        "printers",
        "after",
        &printers["after"],
        &ok("originating", "mail_from_domain", "contoso"),
    );
    let apps = &flows[1];
    assert_eq!(apps["flow"]["mail_from"], "sender@example.org");
    assert_rule("apps", "after", &apps["after"], &DENIED);
    let advice = apps["after"]["advice"].to_string();
    assert!(
        advice.contains("add relay.contoso.com as an accepted domain"),
        "{advice}"
    );

    let text = check(&["--config", config, "--egress-ip", "192.0.2.1"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("client") && lines[0].contains("advice"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("printers") && lines[1].contains("OK Originating (mail_from_domain)"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("apps") && lines[2].contains("REFUSED 550 5.7.64 rcpt"),
        "{text}"
    );
    assert!(lines[2].contains("example.org is not accepted"), "{text}");
}
