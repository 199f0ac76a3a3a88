//! What Exchange Online's replies mean for the relay: a table of EXO's known replies, each with
//! its cause, the fix an administrator should make, and what the queue does with the message
//! (exo-attribution.md §5, §6, §7.4). Attribution, certificate and tenant-state refusals are
//! configuration faults, not message faults: the message is held, not bounced, until the admin
//! fixes the set-up and releases it.

use smtp::Reply;

/// What the queue does with a recipient after an upstream reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again later on the retry schedule.
    Defer,
    /// Fail the recipient and tell the sender (DSN).
    Fail,
    /// Keep the message, stop trying, and tell the administrator what to change.
    Hold,
}

/// An upstream reply, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// What the queue does.
    pub decision: Decision,
    /// Why EXO answered this way (empty for replies not in the table).
    pub cause: &'static str,
    /// What the administrator should change (empty for replies not in the table).
    pub fix: &'static str,
}

/// One row: enhanced status code (`class.subject.detail`), decision, cause, fix.
struct Known {
    enhanced: &'static str,
    decision: Decision,
    cause: &'static str,
    fix: &'static str,
}

const KNOWN: &[Known] = &[
    Known {
        enhanced: "5.7.64",
        decision: Decision::Hold,
        cause: "TenantAttribution: Exchange Online could not attribute the message to your tenant as outbound (Originating) mail, so it refused to relay it",
        fix: "present a client certificate whose name matches the OnPremises connector's TlsSenderCertificateName and whose domain is an accepted domain (upstream client_cert), or make the envelope sender an address in an accepted domain (client envelope_from with on_attribution_failure = \"fix\"); then run `exorelay queue release ID`",
    },
    Known {
        enhanced: "5.7.68",
        decision: Decision::Hold,
        cause: "Reject Direct Send is on and no connector identified the relay, so the message was treated as unauthorised direct send",
        fix: "create an inbound connector of type OnPremises for the relay's certificate or egress IP, and send with a client certificate (upstream client_cert)",
    },
    Known {
        enhanced: "5.7.51",
        decision: Decision::Hold,
        cause: "a Partner connector with RestrictDomainsToIPAddresses or RestrictDomainsToCertificate matched the recipient domain but not the relay",
        fix: "add the relay's IP or certificate name to that Partner connector, or use an OnPremises connector for the relay",
    },
    Known {
        enhanced: "5.7.30",
        decision: Decision::Hold,
        cause: "basic authentication is no longer supported for client submission",
        fix: "relay through the tenant's MX endpoint with a certificate connector instead of SMTP AUTH on smtp.office365.com",
    },
    Known {
        enhanced: "4.7.66",
        decision: Decision::Defer,
        cause: "the TLS version was refused (TLS 1.0/1.1 are not supported)",
        fix: "exorelay only sends with TLS 1.2 or 1.3; check for a TLS-intercepting middlebox between the relay and Exchange Online",
    },
    Known {
        enhanced: "5.6.11",
        decision: Decision::Fail,
        cause: "the message contains bare line feeds or other invalid characters",
        fix: "the sending application must produce CRLF line ends; exorelay refuses bare LF at SMTP time, so this message was altered after acceptance",
    },
    Known {
        enhanced: "4.7.500",
        decision: Decision::Defer,
        cause: "Exchange Online is throttling the relay's IP address (a new or changed sending source)",
        fix: "nothing to do at once: delivery is retried; an inbound connector for the relay reduces throttling",
    },
    Known {
        enhanced: "5.7.705",
        decision: Decision::Hold,
        cause: "the tenant has exceeded its outbound spam threshold and is blocked from sending",
        fix: "find the compromised sender in the Microsoft 365 Defender portal and have the tenant unblocked; then release the held messages",
    },
    Known {
        enhanced: "5.7.708",
        decision: Decision::Hold,
        cause: "Exchange Online does not accept traffic from this IP (low reputation, typical of new tenants)",
        fix: "relay through a certificate connector whose domain is an accepted domain, or ask Microsoft support to lift the restriction",
    },
    Known {
        enhanced: "5.7.750",
        decision: Decision::Hold,
        cause: "the tenant is blocked from sending from domains it has not registered as accepted domains",
        fix: "add the envelope sender's domain as an accepted domain, or rewrite the envelope sender into one (client envelope_from)",
    },
    Known {
        enhanced: "5.7.606",
        decision: Decision::Hold,
        cause: "the relay's sending IP address is banned by Exchange Online",
        fix: "request delisting at https://sender.office.com",
    },
    Known {
        enhanced: "4.4.62",
        decision: Decision::Defer,
        cause: "mail was sent to the wrong Office 365 region (a stale smart host or an IP address instead of the MX name)",
        fix: "set the upstream host to the tenant's MX host name, e.g. contoso-com.mail.protection.outlook.com",
    },
];

/// Understands an upstream reply: EXO's known ones by their enhanced code, anything else by its
/// class (4xx defers, 5xx fails).
pub fn diagnose(reply: &Reply) -> Diagnosis {
    let enhanced = reply.enhanced().map(|e| e.to_string());
    if let Some(known) = enhanced
        .as_deref()
        .and_then(|code| KNOWN.iter().find(|k| k.enhanced == code))
    {
        return Diagnosis {
            decision: known.decision,
            cause: known.cause,
            fix: known.fix,
        };
    }
    let decision = if reply.is_permanent() {
        Decision::Fail
    } else {
        Decision::Defer
    };
    Diagnosis {
        decision,
        cause: "",
        fix: "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp::EnhancedCode;

    fn reply(code: u16, class: u8, subject: u16, detail: u16, text: &str) -> Reply {
        Reply::new(
            code,
            Some(EnhancedCode {
                class,
                subject,
                detail,
            }),
            text,
        )
    }

    #[test]
    fn known_replies_map_to_their_decision() {
        let cases = [
            (
                reply(550, 5, 7, 64, "TenantAttribution; Relay Access Denied"),
                Decision::Hold,
            ),
            (
                reply(
                    550,
                    5,
                    7,
                    68,
                    "TenantInboundAttribution; Direct Send not allowed",
                ),
                Decision::Hold,
            ),
            (
                reply(550, 5, 7, 30, "Basic authentication is not supported"),
                Decision::Hold,
            ),
            (
                reply(421, 4, 7, 66, "TLS 1.0 and 1.1 are not supported"),
                Decision::Defer,
            ),
            (
                reply(550, 5, 6, 11, "SMTPSEND.BareLinefeedsAreIllegal"),
                Decision::Fail,
            ),
            (
                reply(451, 4, 7, 500, "Access denied, please try again later"),
                Decision::Defer,
            ),
            (
                reply(
                    550,
                    5,
                    7,
                    705,
                    "Access denied, tenant has exceeded threshold",
                ),
                Decision::Hold,
            ),
            (
                reply(
                    550,
                    5,
                    7,
                    708,
                    "Access denied, traffic not accepted from this IP",
                ),
                Decision::Hold,
            ),
            (
                reply(
                    550,
                    5,
                    7,
                    750,
                    "Client blocked from sending from unregistered domains",
                ),
                Decision::Hold,
            ),
        ];
        for (reply, decision) in cases {
            let d = diagnose(&reply);
            assert_eq!(d.decision, decision, "{reply}");
            assert!(!d.cause.is_empty() && !d.fix.is_empty(), "{reply}");
        }
        let attribution = diagnose(&reply(
            550,
            5,
            7,
            64,
            "TenantAttribution; Relay Access Denied",
        ));
        assert!(
            attribution.fix.contains("client_cert") && attribution.fix.contains("queue release")
        );
    }

    #[test]
    fn unknown_replies_follow_their_class() {
        assert_eq!(
            diagnose(&reply(550, 5, 1, 1, "no such user")).decision,
            Decision::Fail
        );
        assert_eq!(
            diagnose(&reply(451, 4, 3, 0, "try later")).decision,
            Decision::Defer
        );
        assert_eq!(
            diagnose(&Reply::new(554, None, "no")).decision,
            Decision::Fail
        );
        assert_eq!(diagnose(&Reply::new(421, None, "busy")).cause, "");
    }
}
