//! Why EXO refused to relay, in the terms of exo-attribution.md §10, with the concrete change that
//! would fix it — for `exorelay check` and the relay's pre-flight.
//!
//! The findings are computed purely from the inputs of [`classify`](crate::classify) and its
//! verdict. They explain a relay refusal (`5.7.64`, or TLS on the submission endpoint); other
//! refusals (front door, service-state blocks, Partner restrictions, DBEB) carry their own reason
//! in the reply and give no findings here. Printing them is left to the caller.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::domain;
use crate::facts::{Connection, Endpoint, Message, TlsVersion};
use crate::reply::Reply;
use crate::rules::matching::{Evidence, Match, match_set};
use crate::tenant::{Tenant, World};
use crate::verdict::{Stage, Verdict};

/// One §10 diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// An OnPremises connector matched the certificate, but the connector's certificate domain is
    /// not an accepted domain of its tenant (§3.2, §3.5 step 1).
    CertificateDomainNotAccepted {
        /// The connector's tenant.
        tenant: String,
        /// The connector's name.
        connector: String,
        /// `TlsSenderCertificateName` without `*.`.
        certificate_domain: String,
        /// A `*.domain` pattern built on an accepted domain above the certificate domain, if any.
        suggested_pattern: Option<String>,
    },
    /// The envelope sender's domain is not accepted by a tenant whose connector matched
    /// (§3.5 step 2).
    P1NotAccepted {
        /// The P1 domain.
        domain: String,
        /// The tenant the sender should belong to, if one can be named.
        tenant: Option<String>,
        /// That tenant's main accepted domain.
        suggested_domain: Option<String>,
    },
    /// The envelope sender is null (`<>`), so only the certificate can attribute (§3.5 step 2).
    P1Null {
        /// The tenant the message should belong to, if one can be named.
        tenant: Option<String>,
    },
    /// The source IPv4 address is in no enabled OnPremises connector and no certificate matched
    /// one (§3.3).
    IpNotInOnPremisesConnector {
        /// The source address.
        ip: Ipv4Addr,
    },
    /// The source address is IPv6, which connectors cannot list (§3.3).
    Ipv6Source {
        /// The source address.
        ip: Ipv6Addr,
    },
    /// TLS below 1.2: the handshake fails and the certificate is not seen (§7.2, §6).
    TlsBelow12 {
        /// The version used.
        tls: TlsVersion,
        /// Whether this was the submission endpoint (where the session is refused outright).
        submission: bool,
    },
    /// The certificate is self-signed, sent without its chain, expired or revoked (§3.2).
    UntrustedCertificate {
        /// The certificate's subject CN.
        subject_cn: String,
    },
}

impl Finding {
    /// The §10 name of the diagnostic.
    pub fn label(&self) -> &'static str {
        match self {
            Self::CertificateDomainNotAccepted { .. } => "certificate domain not accepted",
            Self::P1NotAccepted { .. } => "P1 not accepted",
            Self::P1Null { .. } => "P1 null",
            Self::IpNotInOnPremisesConnector { .. } => "IP not in any OnPremises connector",
            Self::Ipv6Source { .. } => "IPv6 source",
            Self::TlsBelow12 { .. } => "TLS < 1.2",
            Self::UntrustedCertificate { .. } => "untrusted certificate",
        }
    }

    /// What to change, in plain words.
    pub fn advice(&self) -> String {
        match self {
            Self::CertificateDomainNotAccepted {
                tenant,
                connector,
                certificate_domain,
                suggested_pattern,
            } => certificate_advice(
                tenant,
                connector,
                certificate_domain,
                suggested_pattern.as_deref(),
            ),
            Self::P1NotAccepted {
                domain,
                suggested_domain,
                ..
            } => match suggested_domain {
                Some(accepted) => format!(
                    "the envelope sender's domain {domain} is not accepted; rewrite it to an address \
                     in {accepted}"
                ),
                None => format!(
                    "the envelope sender's domain {domain} is not accepted by any tenant; rewrite it \
                     to an address in one of the tenant's accepted domains"
                ),
            },
            Self::P1Null { tenant } => format!(
                "the envelope sender is null (<>, a bounce or notification), so only a certificate can \
                 attribute it: present a certificate that an OnPremises connector{} names and whose \
                 domain is an accepted domain",
                tenant
                    .as_deref()
                    .map(|t| format!(" of {t}"))
                    .unwrap_or_default()
            ),
            Self::IpNotInOnPremisesConnector { ip } => format!(
                "the source IP {ip} is in no enabled OnPremises connector: add it to a connector's \
                 SenderIPAddresses (only if no other organisation sends from it), or present a \
                 certificate that a connector names"
            ),
            Self::Ipv6Source { ip } => format!(
                "EXO connectors cannot list IPv6 addresses and the connection came from {ip}: connect \
                 to EXO over IPv4, or present a certificate that an OnPremises connector names"
            ),
            Self::TlsBelow12 { tls, submission } => tls_advice(*tls, *submission),
            Self::UntrustedCertificate { subject_cn } => format!(
                "the certificate {subject_cn} is not trusted (self-signed, chain incomplete, expired \
                 or revoked), so EXO ignores it: use a certificate from a public CA and send the full \
                 chain"
            ),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.label(), self.advice())
    }
}

impl Verdict {
    /// The §10 diagnostics that explain this verdict; see [`findings`].
    pub fn reasons(
        &self,
        world: &World,
        connection: &Connection,
        message: &Message,
    ) -> Vec<Finding> {
        findings(world, connection, message, self)
    }
}

/// The §10 diagnostics that explain why `verdict` refused to relay; empty when it did not.
pub fn findings(
    world: &World,
    connection: &Connection,
    message: &Message,
    verdict: &Verdict,
) -> Vec<Finding> {
    match connection.endpoint {
        Endpoint::Submission => submission_findings(connection, verdict),
        Endpoint::Mx if refused_relay(verdict) => mx_findings(world, connection, message, verdict),
        Endpoint::Mx => Vec::new(),
    }
}

fn refused_relay(verdict: &Verdict) -> bool {
    let denied = Reply::relay_access_denied();
    !verdict.is_originating() && verdict.rejections.iter().any(|r| r.reply == denied)
}

fn submission_findings(connection: &Connection, verdict: &Verdict) -> Vec<Finding> {
    let refused_at_starttls = verdict
        .rejections
        .iter()
        .any(|r| r.stage == Stage::Starttls);
    if refused_at_starttls && !connection.tls.is_modern() {
        vec![Finding::TlsBelow12 {
            tls: connection.tls,
            submission: true,
        }]
    } else {
        Vec::new()
    }
}

fn mx_findings(
    world: &World,
    connection: &Connection,
    message: &Message,
    verdict: &Verdict,
) -> Vec<Finding> {
    let matches = match_set(world, &Evidence::of(connection));
    let tenant = target_tenant(world, &matches, verdict);
    let mut found = certificate_findings(connection, &matches);
    found.extend(ip_finding(connection, &matches));
    found.extend(sender_finding(world, message, &matches, tenant));
    found
}

/// The tenant the admin most likely means: the owner of the first matched OnPremises connector,
/// else the verdict's tenant, else the first configured tenant.
fn target_tenant<'w>(
    world: &'w World,
    matches: &[Match<'w>],
    verdict: &Verdict,
) -> Option<&'w Tenant> {
    matches
        .first()
        .map(|m| m.tenant)
        .or_else(|| {
            let id = verdict.tenant.as_deref()?;
            world.tenants.iter().find(|t| t.id == id)
        })
        .or_else(|| world.tenants.first())
}

fn certificate_findings(connection: &Connection, matches: &[Match<'_>]) -> Vec<Finding> {
    let mut found = Vec::new();
    if let Some(cert) = &connection.client_cert {
        if !cert.trusted {
            found.push(Finding::UntrustedCertificate {
                subject_cn: cert.subject_cn.clone(),
            });
        }
        if !connection.tls.is_modern() {
            found.push(Finding::TlsBelow12 {
                tls: connection.tls,
                submission: false,
            });
        }
    }
    for m in matches.iter().filter(|m| m.by_cert) {
        let Some(certificate_domain) = m.connector.certificate_domain() else {
            continue;
        };
        if m.tenant.covering(&certificate_domain).is_none() {
            found.push(Finding::CertificateDomainNotAccepted {
                tenant: m.tenant.id.clone(),
                connector: m.connector.name.clone(),
                suggested_pattern: parent_pattern(m.tenant, &certificate_domain),
                certificate_domain,
            });
        }
    }
    found
}

/// `*.A` for the most specific accepted domain `A` strictly above `certificate_domain` (§3.2:
/// the Exchange team's advice to use `*.domain.com` on the connector).
fn parent_pattern(tenant: &Tenant, certificate_domain: &str) -> Option<String> {
    tenant
        .accepted_domains
        .iter()
        .map(|a| domain::normalize_domain(&a.domain))
        .filter(|a| !a.is_empty() && certificate_domain.ends_with(&format!(".{a}")))
        .max_by_key(|a| a.len())
        .map(|a| format!("*.{a}"))
}

fn ip_finding(connection: &Connection, matches: &[Match<'_>]) -> Option<Finding> {
    match connection.source_ip {
        IpAddr::V6(ip) => Some(Finding::Ipv6Source { ip }),
        IpAddr::V4(ip) if matches.is_empty() => Some(Finding::IpNotInOnPremisesConnector { ip }),
        IpAddr::V4(_) => None,
    }
}

/// "P1 null" or "P1 not accepted": judged against the tenants whose connectors matched, or, when
/// none did, against every tenant (both conditions of §3.1 must hold).
fn sender_finding(
    world: &World,
    message: &Message,
    matches: &[Match<'_>],
    tenant: Option<&Tenant>,
) -> Option<Finding> {
    let tenant_id = tenant.map(|t| t.id.clone());
    if message.is_null_sender() {
        return Some(Finding::P1Null { tenant: tenant_id });
    }
    let p1 = domain::domain_of(&message.mail_from)?;
    let accepted = if matches.is_empty() {
        world.tenants.iter().any(|t| t.accepts(Some(&p1)))
    } else {
        matches.iter().any(|m| m.tenant.accepts(Some(&p1)))
    };
    (!accepted).then(|| Finding::P1NotAccepted {
        domain: p1,
        suggested_domain: tenant.and_then(Tenant::primary_domain).map(str::to_owned),
        tenant: tenant_id,
    })
}

fn certificate_advice(
    tenant: &str,
    connector: &str,
    certificate_domain: &str,
    pattern: Option<&str>,
) -> String {
    let first = format!(
        "the connector \"{connector}\" matched the certificate, but {certificate_domain} is not an \
         accepted domain of {tenant}: add {certificate_domain} as an accepted domain"
    );
    match pattern {
        Some(pattern) => {
            format!("{first}, or set the connector's TlsSenderCertificateName to {pattern}")
        }
        None => format!(
            "{first}, or present a certificate for a name under one of {tenant}'s accepted domains \
             and name that domain on the connector"
        ),
    }
}

fn tls_advice(tls: TlsVersion, submission: bool) -> String {
    if submission {
        format!(
            "the client used TLS {} and smtp.office365.com requires TLS 1.2 or later: update the \
             client's TLS support (or use smtp-legacy.office365.com while it lasts)",
            tls.as_str()
        )
    } else {
        format!(
            "the session used TLS {}, so EXO never saw the certificate: use STARTTLS with TLS 1.2 or \
             later",
            tls.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{ClientCert, IpReputation, Ruleset};

    const WORLD: &str = r#"
        [[tenant]]
        id = "fabrikam"
        accepted_domains = [
          { domain = "fabrikam.com", type = "Authoritative" },
          { domain = "fabrikam.onmicrosoft.com", type = "Authoritative" },
        ]
        [[tenant.connector]]
        name = "From Fabrikam Postfix"
        type = "OnPremises"
        tls_sender_certificate_name = "smtp.fabrikam.com"
        sender_domains = ["*"]
        [[tenant.connector]]
        name = "From Fabrikam datacenter"
        type = "OnPremises"
        sender_ip_addresses = ["203.0.113.0/28"]
        sender_domains = ["*"]
    "#;

    fn world() -> World {
        toml::from_str(WORLD).unwrap()
    }

    fn connection(ip: &str, tls: TlsVersion, cert: Option<(&str, bool)>) -> Connection {
        Connection {
            endpoint: Endpoint::Mx,
            source_ip: ip.parse().unwrap(),
            ehlo: "client".into(),
            tls,
            client_cert: cert.map(|(name, trusted)| ClientCert {
                subject_cn: name.into(),
                san: vec![name.into()],
                trusted,
            }),
            ip_reputation: IpReputation::Ok,
            auth: None,
        }
    }

    fn message(mail_from: &str, rcpt: &str) -> Message {
        Message {
            mail_from: mail_from.into(),
            rcpt_to: vec![rcpt.into()],
            header_from: None,
        }
    }

    /// Expected findings: (label, a part of the advice).
    type Expected = Vec<(&'static str, &'static str)>;

    fn labels_and_advice(
        connection: &Connection,
        message: &Message,
    ) -> Vec<(&'static str, String)> {
        let world = world();
        let verdict = crate::classify(&world, connection, message, Ruleset::After);
        verdict
            .reasons(&world, connection, message)
            .iter()
            .map(|f| (f.label(), f.advice()))
            .collect()
    }

    #[test]
    fn findings_table() {
        let cert = Some(("smtp.fabrikam.com", true));
        let table: Vec<(Connection, Message, Expected)> = vec![
            (
                connection("192.0.2.20", TlsVersion::V1_2, cert),
                message("cron@app01.fabrikam.internal", "boss@example.org"),
                vec![
                    (
                        "certificate domain not accepted",
                        "add smtp.fabrikam.com as an accepted domain, or set the connector's \
                         TlsSenderCertificateName to *.fabrikam.com",
                    ),
                    (
                        "P1 not accepted",
                        "the envelope sender's domain app01.fabrikam.internal is not accepted; \
                         rewrite it to an address in fabrikam.com",
                    ),
                ],
            ),
            (
                connection("203.0.113.9", TlsVersion::None, None),
                message("", "someone@example.net"),
                vec![("P1 null", "only a certificate can attribute it")],
            ),
            (
                connection("192.0.2.99", TlsVersion::V1_3, None),
                message("alice@fabrikam.com", "x@example.net"),
                vec![(
                    "IP not in any OnPremises connector",
                    "add it to a connector's SenderIPAddresses",
                )],
            ),
            (
                connection("2001:db8::25", TlsVersion::None, None),
                message("alice@fabrikam.com", "x@example.net"),
                vec![("IPv6 source", "connect to EXO over IPv4")],
            ),
            (
                connection("192.0.2.20", TlsVersion::V1_0, cert),
                message("alice@fabrikam.com", "x@example.net"),
                vec![
                    ("TLS < 1.2", "use STARTTLS with TLS 1.2 or later"),
                    ("IP not in any OnPremises connector", "SenderIPAddresses"),
                ],
            ),
            (
                connection(
                    "192.0.2.20",
                    TlsVersion::V1_2,
                    Some(("smtp.fabrikam.com", false)),
                ),
                message("alice@fabrikam.com", "x@example.net"),
                vec![
                    (
                        "untrusted certificate",
                        "use a certificate from a public CA",
                    ),
                    ("IP not in any OnPremises connector", "SenderIPAddresses"),
                ],
            ),
            (
                connection("192.0.2.200", TlsVersion::V1_2, None),
                message("news@example.org", "bob@example.net"),
                vec![
                    ("IP not in any OnPremises connector", "192.0.2.200"),
                    (
                        "P1 not accepted",
                        "rewrite it to an address in fabrikam.com",
                    ),
                ],
            ),
            // Relayed fine: nothing to explain.
            (
                connection("203.0.113.9", TlsVersion::None, None),
                message("alice@fabrikam.com", "x@example.net"),
                vec![],
            ),
            // Incoming to the tenant's own mailbox: not a relay refusal.
            (
                connection("192.0.2.200", TlsVersion::None, None),
                message("news@example.org", "alice@fabrikam.com"),
                vec![],
            ),
        ];
        for (connection, message, expected) in table {
            let actual = labels_and_advice(&connection, &message);
            assert_eq!(actual.len(), expected.len(), "{message:?}: {actual:#?}");
            for ((label, advice), (want_label, want_part)) in actual.iter().zip(&expected) {
                assert_eq!(label, want_label, "{message:?}");
                assert!(
                    advice.contains(want_part),
                    "{message:?}: {advice:?} lacks {want_part:?}"
                );
            }
        }
    }

    #[test]
    fn submission_legacy_tls() {
        let world = world();
        let mut connection = connection("192.0.2.31", TlsVersion::V1_1, None);
        connection.endpoint = Endpoint::Submission;
        let message = message("fax@fabrikam.com", "client@example.com");
        let verdict = crate::classify(&world, &connection, &message, Ruleset::After);
        let found = verdict.reasons(&world, &connection, &message);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].label(), "TLS < 1.2");
        assert!(found[0].advice().contains("TLS 1.1"), "{}", found[0]);
    }

    #[test]
    fn every_label_is_a_section_10_name() {
        let names = [
            "certificate domain not accepted",
            "P1 not accepted",
            "P1 null",
            "IP not in any OnPremises connector",
            "IPv6 source",
            "TLS < 1.2",
            "untrusted certificate",
        ];
        let all = [
            Finding::CertificateDomainNotAccepted {
                tenant: "t".into(),
                connector: "c".into(),
                certificate_domain: "d".into(),
                suggested_pattern: None,
            },
            Finding::P1NotAccepted {
                domain: "d".into(),
                tenant: None,
                suggested_domain: None,
            },
            Finding::P1Null { tenant: None },
            Finding::IpNotInOnPremisesConnector {
                ip: Ipv4Addr::LOCALHOST,
            },
            Finding::Ipv6Source {
                ip: Ipv6Addr::LOCALHOST,
            },
            Finding::TlsBelow12 {
                tls: TlsVersion::None,
                submission: false,
            },
            Finding::UntrustedCertificate {
                subject_cn: "x".into(),
            },
        ];
        for (finding, name) in all.iter().zip(names) {
            assert_eq!(finding.label(), name);
            assert!(!finding.advice().is_empty());
        }
    }
}
