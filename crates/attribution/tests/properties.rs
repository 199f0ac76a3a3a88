//! Property tests of `classify`: total (never panics), deterministic, and independent of the
//! order of `RCPT TO` except for the reported tenant/connector of multi-tenant Incoming mail
//! (exo-attribution.md §4 \[MODEL\]).
//!
//! Generated worlds draw names from small pools so that domains, certificates, IPs and sender
//! patterns actually collide, with some arbitrary text mixed in for robustness.

use std::net::IpAddr;

use attribution::{
    AcceptedDomain, Auth, AuthMechanism, BasicAuth, ClientCert, Connection, Connector,
    ConnectorType, DecidedBy, DomainType, Endpoint, IpReputation, Ipv4Range, Message, Ruleset,
    Tenant, TlsVersion, Verdict, World, domain, findings,
};
use proptest::prelude::*;

const DOMAINS: &[&str] = &[
    "contoso.com",
    "Contoso.COM.",
    "eu.contoso.com",
    "fabrikam.com",
    "smtp.fabrikam.com",
    "example.org",
    "example.net",
    "bücher.example",
    "xn--bcher-kva.example",
    "com",
    "",
];

const CERT_PATTERNS: &[&str] = &[
    "*.contoso.com",
    "smtp.fabrikam.com",
    "*.fabrikam.com",
    "*.",
    "*",
    "",
];

const SENDER_DOMAINS: &[&str] = &["*", "*.contoso.com", "example.org", "fabrikam.com", ""];

const RANGES: &[&str] = &[
    "203.0.113.0/28",
    "198.51.100.25",
    "198.51.100.0/24",
    "192.0.2.80/29",
];

const IPS: &[&str] = &[
    "203.0.113.5",
    "198.51.100.25",
    "192.0.2.82",
    "192.0.2.200",
    "2001:db8::25",
    "::ffff:203.0.113.5",
];

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(pool).prop_map(str::to_owned)
}

fn domain_name() -> impl Strategy<Value = String> {
    prop_oneof![15 => pick(DOMAINS), 1 => any::<String>()]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => (pick(&["a", "B", "postmaster", "ceo"]), domain_name()).prop_map(|(l, d)| format!("{l}@{d}")),
        1 => Just(String::new()),
        1 => any::<String>(),
    ]
}

fn accepted_domain() -> impl Strategy<Value = AcceptedDomain> {
    (domain_name(), any::<bool>(), any::<bool>()).prop_map(|(domain, relay, match_subdomains)| {
        AcceptedDomain {
            domain,
            kind: if relay {
                DomainType::InternalRelay
            } else {
                DomainType::Authoritative
            },
            match_subdomains,
        }
    })
}

prop_compose! {
    fn connector()(
        name in pick(&["c1", "c2", "c3"]),
        partner in any::<bool>(),
        enabled in prop::bool::weighted(0.85),
        cert in prop::option::of(pick(CERT_PATTERNS)),
        ranges in prop::collection::vec(pick(RANGES), 0..3),
        sender_domains in prop::collection::vec(pick(SENDER_DOMAINS), 0..3),
        associated in prop::collection::vec(domain_name(), 0..2),
        flags in any::<[bool; 3]>(),
    ) -> Connector {
        Connector {
            name,
            kind: if partner { ConnectorType::Partner } else { ConnectorType::OnPremises },
            enabled,
            tls_sender_certificate_name: cert,
            sender_ip_addresses: ranges.iter().filter_map(|r| r.parse::<Ipv4Range>().ok()).collect(),
            sender_domains,
            associated_accepted_domains: associated,
            require_tls: flags[0],
            restrict_domains_to_certificate: flags[1],
            restrict_domains_to_ip_addresses: flags[2],
            cloud_services_mail_enabled: false,
            treat_messages_as_internal: false,
        }
    }
}

prop_compose! {
    fn tenant(id: &'static str)(
        accepted_domains in prop::collection::vec(accepted_domain(), 0..4),
        recipients in prop::collection::vec(address(), 0..3),
        flags in prop::array::uniform4(prop::bool::weighted(0.2)),
        connectors in prop::collection::vec(connector(), 0..4),
    ) -> Tenant {
        Tenant {
            id: id.to_owned(),
            accepted_domains,
            recipients,
            reject_direct_send: flags[0],
            outbound_blocked: flags[1],
            unregistered_domain_block: flags[2],
            basic_auth_submission: if flags[3] { BasicAuth::Retired } else { BasicAuth::Allowed },
            connectors,
        }
    }
}

fn world(max_tenants: usize) -> impl Strategy<Value = World> {
    let tenants = vec![tenant("t0"), tenant("t1"), tenant("t2")];
    let count = prop_oneof![1 => Just(0), 9 => 1..=max_tenants];
    (tenants, count).prop_map(|(mut tenants, n)| {
        tenants.truncate(n);
        World { tenants }
    })
}

fn tls() -> impl Strategy<Value = TlsVersion> {
    prop_oneof![
        3 => Just(TlsVersion::None),
        1 => Just(TlsVersion::V1_0),
        1 => Just(TlsVersion::V1_1),
        3 => Just(TlsVersion::V1_2),
        2 => Just(TlsVersion::V1_3),
    ]
}

fn reputation() -> impl Strategy<Value = IpReputation> {
    prop_oneof![
        12 => Just(IpReputation::Ok),
        1 => Just(IpReputation::Banned),
        1 => Just(IpReputation::Throttled),
        1 => Just(IpReputation::Low),
    ]
}

prop_compose! {
    fn connection()(
        submission in prop::bool::weighted(0.25),
        source_ip in pick(IPS),
        tls in tls(),
        cert in prop::option::of((domain_name(), prop::collection::vec(pick(&["mail.contoso.com", "*.contoso.com", "smtp.fabrikam.com", "contoso.com"]), 0..3), any::<bool>())),
        ip_reputation in reputation(),
        auth in prop::option::of((address(), any::<bool>(), prop::collection::vec(address(), 0..2))),
    ) -> Connection {
        Connection {
            endpoint: if submission { Endpoint::Submission } else { Endpoint::Mx },
            source_ip: source_ip.parse::<IpAddr>().unwrap_or(IpAddr::from([192, 0, 2, 1])),
            ehlo: "client".to_owned(),
            tls,
            client_cert: cert.map(|(subject_cn, san, trusted)| ClientCert { subject_cn, san, trusted }),
            ip_reputation,
            auth: auth.map(|(user, basic, send_as)| Auth {
                user,
                mechanism: if basic { AuthMechanism::Basic } else { AuthMechanism::Oauth },
                send_as,
            }),
        }
    }
}

prop_compose! {
    fn message()(
        mail_from in address(),
        rcpt_to in prop::collection::vec(address(), 0..6),
        header_from in prop::option::of(address()),
    ) -> Message {
        Message { mail_from, rcpt_to, header_from }
    }
}

prop_compose! {
    /// A connection and a message whose P1 is, half of the time, the authenticated user (so that
    /// submission gets past Send As).
    fn transaction()(
        connection in connection(),
        mut message in message(),
        sender_is_user in any::<bool>(),
    ) -> (Connection, Message) {
        if let (true, Some(auth)) = (sender_is_user, &connection.auth) {
            message.mail_from = auth.user.clone();
        }
        (connection, message)
    }
}

fn ruleset() -> impl Strategy<Value = Ruleset> {
    prop_oneof![Just(Ruleset::Before), Just(Ruleset::After)]
}

/// A transaction, and its message again with the recipients in a random order.
fn shuffled_transaction() -> impl Strategy<Value = (Connection, Message, Message)> {
    transaction().prop_flat_map(|(connection, message)| {
        Just(message.rcpt_to.clone())
            .prop_shuffle()
            .prop_map(move |shuffled| {
                let permuted = Message {
                    rcpt_to: shuffled,
                    ..message.clone()
                };
                (connection.clone(), message.clone(), permuted)
            })
    })
}

/// The order-independent part of a verdict: sorted per-recipient results and the summary.
fn order_free(verdict: &Verdict, compare_tenant: bool) -> impl PartialEq + std::fmt::Debug {
    let mut accepted = verdict.accepted.clone();
    accepted.sort();
    let mut rejections: Vec<_> = verdict
        .rejections
        .iter()
        .map(|r| (r.recipient.clone(), r.reply.to_string(), r.stage))
        .collect();
    rejections.sort();
    let originating = verdict.is_originating();
    (
        verdict.decided_by,
        verdict.direction,
        verdict.relay_allowed,
        verdict.matched_onprem.clone(),
        (compare_tenant || originating).then(|| verdict.tenant.clone()),
        originating.then(|| verdict.connector.clone()),
        accepted,
        rejections,
    )
}

/// `accepted` and `rejected` split `rcpt_to`, each keeping its order.
fn partitions_in_order(verdict: &Verdict, rcpt_to: &[String]) -> bool {
    let (mut a, mut r) = (
        verdict.accepted.iter().peekable(),
        verdict.rejected.iter().peekable(),
    );
    for recipient in rcpt_to {
        if a.peek() == Some(&recipient) {
            a.next();
        } else if r.peek() == Some(&recipient) {
            r.next();
        } else {
            return false;
        }
    }
    a.next().is_none() && r.next().is_none()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn classify_is_total_and_deterministic(world in world(3), (connection, message) in transaction(), ruleset in ruleset()) {
        let first = attribution::classify(&world, &connection, &message, ruleset);
        let second = attribution::classify(&world, &connection, &message, ruleset);
        prop_assert_eq!(&first, &second);
        let reasons = findings(&world, &connection, &message, &first);
        prop_assert_eq!(reasons.clone(), findings(&world, &connection, &message, &first));
        for finding in reasons {
            prop_assert!(!finding.advice().is_empty());
        }
    }

    #[test]
    fn verdicts_are_well_formed(world in world(3), (connection, message) in transaction(), ruleset in ruleset()) {
        let verdict = attribution::classify(&world, &connection, &message, ruleset);
        prop_assert!(partitions_in_order(&verdict, &message.rcpt_to), "{:?}", verdict);
        prop_assert_eq!(verdict.rejections.len(), verdict.rejected.len());
        prop_assert_eq!(verdict.reply.is_some(), !verdict.rejected.is_empty());
        prop_assert_eq!(verdict.stage.is_some(), !verdict.rejected.is_empty());
        prop_assert_eq!(verdict.tenant.is_some(), verdict.direction.is_some());
        if verdict.decided_by == DecidedBy::None || verdict.decided_by == DecidedBy::FrontDoor {
            prop_assert!(verdict.accepted.is_empty());
            prop_assert!(verdict.tenant.is_none());
        }
        if verdict.relay_allowed {
            prop_assert!(verdict.is_originating());
            prop_assert!(verdict.rejected.is_empty());
        }
    }

    #[test]
    fn recipient_order_does_not_matter(
        (world, ruleset, (connection, original, permuted)) in (world(3), ruleset(), shuffled_transaction())
    ) {
        let a = attribution::classify(&world, &connection, &original, ruleset);
        let b = attribution::classify(&world, &connection, &permuted, ruleset);
        let single_tenant = world.tenants.len() <= 1;
        prop_assert_eq!(order_free(&a, single_tenant), order_free(&b, single_tenant));
    }

    #[test]
    fn single_tenant_verdicts_report_the_same_tenant_in_any_order(
        (world, ruleset, (connection, original, permuted)) in (world(1), ruleset(), shuffled_transaction())
    ) {
        let a = attribution::classify(&world, &connection, &original, ruleset);
        let b = attribution::classify(&world, &connection, &permuted, ruleset);
        prop_assert_eq!(&a.tenant, &b.tenant);
        prop_assert_eq!(order_free(&a, true), order_free(&b, true));
    }

    #[test]
    fn the_p2_rule_only_adds(world in world(3), (connection, message) in transaction()) {
        let after = attribution::classify(&world, &connection, &message, Ruleset::After);
        let before = attribution::classify(&world, &connection, &message, Ruleset::Before);
        if after.is_originating() || connection.endpoint == Endpoint::Submission {
            prop_assert_eq!(before, after);
        }
    }

    #[test]
    fn domain_normalisation_is_total_and_case_blind(text in any::<String>()) {
        let upper = text.to_ascii_uppercase();
        prop_assert_eq!(domain::normalize_domain(&text), domain::normalize_domain(&upper));
        let _ = domain::domain_of(&text);
        let _ = domain::normalize_address(&text);
    }
}
