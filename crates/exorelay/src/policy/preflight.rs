//! Pre-flight: before a message is accepted, predict what Exchange Online will do with it *as
//! exorelay will send it* — from the relay's egress IP, over TLS, presenting the client
//! certificate of the upstream the sender routes to, with the envelope after rewriting — using
//! the `[tenant.*]` knowledge and the rules in force since November 2023 (exo-attribution.md
//! §10). Pure: the caller supplies the facts. Per client, a predicted refusal is fixed (envelope
//! sender rewritten), refused at RCPT with the reason and the fix, or only warned about.

use std::net::IpAddr;

use attribution::{
    ClientCert, Connection, Endpoint, IpReputation, Message, Ruleset, TlsVersion, Verdict, World,
};

use crate::config::{AttributionAction, ClientRule, Upstream, UpstreamTls};

/// What pre-flight decided for one recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// EXO will accept it as sent (or no tenant knowledge is configured).
    Pass,
    /// EXO would refuse it with the original sender; sending from `sender` fixes it.
    Rewrite {
        /// The envelope sender to use instead.
        sender: String,
    },
    /// EXO will refuse it; the client is told why and what to change.
    Refuse {
        /// EXO's predicted reply (e.g. `550 5.7.64 TenantAttribution; Relay Access Denied`).
        exo_reply: String,
        /// Plain-words advice naming the concrete change.
        advice: String,
    },
    /// EXO will refuse it, but the client's rule says deliver anyway (counted and logged).
    Warn {
        /// EXO's predicted reply.
        exo_reply: String,
        /// Plain-words advice naming the concrete change.
        advice: String,
    },
}

/// The connection as EXO will see it when exorelay delivers through `upstream`.
pub fn egress_connection(upstream: Option<&Upstream>) -> Connection {
    let (tls, client_cert, source_ip) = match upstream {
        Some(u) => {
            let tls = match u.tls {
                UpstreamTls::Required => TlsVersion::V1_2,
                UpstreamTls::None => TlsVersion::None,
            };
            let cert = u.client_identity.as_ref().and_then(|identity| {
                let names = identity.names();
                names.first().map(|cn| ClientCert {
                    subject_cn: cn.clone(),
                    san: names.get(1..).unwrap_or_default().to_vec(),
                    // The administrator installs a certificate from a public CA with its chain,
                    // as EXO requires; pre-flight cannot check public trust itself.
                    trusted: tls != TlsVersion::None,
                })
            });
            (tls, cert, u.egress_ip)
        }
        None => (TlsVersion::None, None, None),
    };
    Connection {
        endpoint: Endpoint::Mx,
        // Without a configured egress address no IP connector can be predicted to match; an
        // unspecified address matches none.
        source_ip: source_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        ehlo: String::new(),
        tls,
        client_cert,
        ip_reputation: IpReputation::Ok,
        auth: None,
    }
}

/// The sender to try when `mail_from` fails: for the null sender the client's `bounce_address`,
/// else its `envelope_from`, where `{local}` stands for the original local part (`postmaster`
/// for the null sender).
pub fn rewritten_sender(rule: &ClientRule, mail_from: &str) -> Option<String> {
    if mail_from.is_empty()
        && let Some(bounce) = &rule.bounce_address
    {
        return Some(bounce.clone());
    }
    let template = rule.envelope_from.as_deref()?;
    let local = mail_from
        .rsplit_once('@')
        .map_or("postmaster", |(local, _)| local);
    Some(template.replace("{local}", local))
}

fn verdict(world: &World, connection: &Connection, mail_from: &str, rcpt: &str) -> Verdict {
    let message = Message {
        mail_from: mail_from.to_string(),
        rcpt_to: vec![rcpt.to_string()],
        header_from: None,
    };
    attribution::classify(world, connection, &message, Ruleset::After)
}

fn refusal(
    world: &World,
    connection: &Connection,
    mail_from: &str,
    v: &Verdict,
) -> (String, String) {
    let exo_reply = v
        .reply
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let message = Message {
        mail_from: mail_from.to_string(),
        rcpt_to: v.rejected.clone(),
        header_from: None,
    };
    let advice: Vec<String> = v
        .reasons(world, connection, &message)
        .iter()
        .map(|f| f.advice())
        .collect();
    let advice = if advice.is_empty() {
        "set an envelope_from in an accepted domain for this client, or a client certificate for the upstream whose name the tenant's connector and accepted domains cover".to_string()
    } else {
        advice.join("; ")
    };
    (exo_reply, advice)
}

/// Decides, for one recipient, what the relay does given the client's rule; `egress` gives the
/// connection EXO will see for a sender (its route decides the certificate).
pub fn decide(
    world: &World,
    egress: &dyn Fn(&str) -> Connection,
    rule: &ClientRule,
    mail_from: &str,
    rcpt: &str,
) -> Decision {
    if world.tenants.is_empty() {
        return Decision::Pass;
    }
    let connection = &egress(mail_from);
    let original = verdict(world, connection, mail_from, rcpt);
    if original.rejected.is_empty() {
        return Decision::Pass;
    }
    let (exo_reply, advice) = refusal(world, connection, mail_from, &original);
    match rule.on_attribution_failure {
        AttributionAction::Warn => Decision::Warn { exo_reply, advice },
        AttributionAction::Refuse => Decision::Refuse { exo_reply, advice },
        AttributionAction::Fix => match rewritten_sender(rule, mail_from) {
            Some(sender)
                if verdict(world, &egress(&sender), &sender, rcpt)
                    .rejected
                    .is_empty() =>
            {
                Decision::Rewrite { sender }
            }
            Some(sender) => Decision::Refuse {
                exo_reply,
                advice: format!("rewriting the sender to {sender} does not help either: {advice}"),
            },
            None => Decision::Refuse {
                exo_reply,
                advice: format!(
                    "{advice} (no envelope_from is configured for this client to fix it)"
                ),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        crate::tenants::parse(
            r#"
[tenant.contoso]
accepted_domains = ["contoso.com"]
connectors = [{ type = "OnPremises", sender_ip_addresses = ["198.51.100.7"] }]
"#,
            std::path::Path::new("test.toml"),
        )
        .unwrap()
    }

    fn rule(action: AttributionAction, envelope_from: Option<&str>) -> ClientRule {
        ClientRule {
            name: "printers".into(),
            networks: Vec::new(),
            allowed_sender_domains: None,
            allowed_recipient_domains: None,
            envelope_from: envelope_from.map(str::to_string),
            on_attribution_failure: action,
            bounce_address: None,
            repair_headers: true,
            repair_from: false,
        }
    }

    fn ip_connection(_sender: &str) -> Connection {
        let mut c = egress_connection(None);
        c.source_ip = "198.51.100.7".parse().unwrap();
        c
    }

    #[test]
    fn decisions_per_action() {
        let w = world();
        let c = ip_connection;
        let ext = "someone@example.net";
        let cases = [
            (
                rule(AttributionAction::Refuse, None),
                "app@contoso.com",
                "pass",
            ),
            (
                rule(AttributionAction::Refuse, None),
                "app@example.org",
                "refuse",
            ),
            (
                rule(AttributionAction::Warn, None),
                "app@example.org",
                "warn",
            ),
            (
                rule(AttributionAction::Fix, Some("{local}@contoso.com")),
                "app@example.org",
                "rewrite:app@contoso.com",
            ),
            (
                rule(AttributionAction::Fix, Some("scanner@contoso.com")),
                "",
                "rewrite:scanner@contoso.com",
            ),
            (
                rule(AttributionAction::Fix, Some("x@fabrikam.com")),
                "app@example.org",
                "refuse",
            ),
            (
                rule(AttributionAction::Fix, None),
                "app@example.org",
                "refuse",
            ),
        ];
        for (rule, from, expected) in cases {
            let got = match decide(&w, &c, &rule, from, ext) {
                Decision::Pass => "pass".to_string(),
                Decision::Rewrite { sender } => format!("rewrite:{sender}"),
                Decision::Refuse { exo_reply, advice } => {
                    assert!(exo_reply.starts_with("550 5.7.64"), "{exo_reply}");
                    assert!(!advice.is_empty());
                    "refuse".into()
                }
                Decision::Warn { .. } => "warn".into(),
            };
            assert_eq!(
                got, expected,
                "{from} with {:?}",
                rule.on_attribution_failure
            );
        }
    }

    #[test]
    fn internal_recipients_pass_and_no_tenants_means_no_opinion() {
        let c = ip_connection;
        let refuse = rule(AttributionAction::Refuse, None);
        assert_eq!(
            decide(&world(), &c, &refuse, "app@example.org", "bob@contoso.com"),
            Decision::Pass
        );
        let nobody = World {
            tenants: Vec::new(),
        };
        assert_eq!(
            decide(&nobody, &c, &refuse, "app@example.org", "x@example.net"),
            Decision::Pass
        );
    }
}
