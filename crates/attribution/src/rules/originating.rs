//! Originating attribution through an OnPremises connector (exo-attribution.md §3.5) and what an
//! Originating verdict allows (§3.6, with the service-state blocks of §5.6).

use crate::domain::{self, Specificity};
use crate::facts::{Connection, IpReputation, Message, Ruleset};
use crate::reply::Reply;
use crate::rules::matching::Match;
use crate::tenant::Tenant;
use crate::verdict::{DecidedBy, Outcome, Stage};

/// Runs §3.5 steps 1–3 over `M`; the winning member and the step that chose it.
pub(crate) fn attribute<'a, 'w>(
    matches: &'a [Match<'w>],
    message: &Message,
    ruleset: Ruleset,
) -> Option<(&'a Match<'w>, DecidedBy)> {
    if let Some(found) = by_certificate_domain(matches) {
        return Some((found, DecidedBy::CertificateDomain));
    }
    // exo-attribution.md §3.5 step 2: a null P1 has no domain and so never matches.
    let p1 = domain::domain_of(&message.mail_from);
    if let Some(found) = by_sender_domain(matches, p1.as_deref()) {
        return Some((found, DecidedBy::MailFromDomain));
    }
    // exo-attribution.md §3.5 step 3: the P2 criterion exists only before the change (§2.4).
    if ruleset == Ruleset::Before {
        let p2 = message.header_from.as_deref().and_then(domain::domain_of);
        if let Some(found) = by_sender_domain(matches, p2.as_deref()) {
            return Some((found, DecidedBy::HeaderFromDomain));
        }
    }
    None
}

/// §3.5 step 1: certificate-matched connectors whose tenant accepts the certificate domain; the
/// most specific covering domain wins, then configuration order \[MODEL\].
fn by_certificate_domain<'a, 'w>(matches: &'a [Match<'w>]) -> Option<&'a Match<'w>> {
    let mut best: Option<(Specificity, &Match<'w>)> = None;
    for m in matches.iter().filter(|m| m.by_cert) {
        let covered = m
            .connector
            .certificate_domain()
            .and_then(|d| m.tenant.covering(&d).map(|(specificity, _)| specificity));
        if let Some(specificity) = covered {
            best = domain::more_specific(best, (specificity, m));
        }
    }
    best.map(|(_, m)| m)
}

/// §3.5 steps 2 and 3: members whose tenant accepts the sender domain; the most specific
/// covering domain wins, then certificate matches before IP matches, then configuration order —
/// which is the order of `M` \[MODEL\].
fn by_sender_domain<'a, 'w>(
    matches: &'a [Match<'w>],
    sender_domain: Option<&str>,
) -> Option<&'a Match<'w>> {
    let sender_domain = sender_domain?;
    let mut best: Option<(Specificity, &Match<'w>)> = None;
    for m in matches {
        if let Some((specificity, _)) = m.tenant.covering(sender_domain) {
            best = domain::more_specific(best, (specificity, m));
        }
    }
    best.map(|(_, m)| m)
}

/// The §5.6 block that applies to Originating mail of `tenant`, if any, in the table's order.
pub(crate) fn service_block(
    tenant: &Tenant,
    connection: &Connection,
    message: &Message,
) -> Option<Reply> {
    if tenant.outbound_blocked {
        return Some(Reply::tenant_over_threshold());
    }
    if connection.ip_reputation == IpReputation::Low {
        return Some(Reply::low_reputation_ip());
    }
    // exo-attribution.md §5.6c: "P1 domain not covered by the tenant"; a null P1 has no domain,
    // so it is not covered either [MODEL, literal reading].
    if tenant.unregistered_domain_block
        && !tenant.accepts(domain::domain_of(&message.mail_from).as_deref())
    {
        return Some(Reply::unregistered_domain());
    }
    None
}

/// §3.6: every recipient is accepted, except that a §5.6 block refuses the external ones
/// (those not covered by the tenant's accepted domains).
pub(crate) fn outcomes<'w>(
    tenant: &'w Tenant,
    connector: Option<&'w str>,
    rcpt_to: &'w [String],
    block: Option<&Reply>,
    stage: Stage,
) -> Vec<Outcome<'w>> {
    rcpt_to
        .iter()
        .map(|recipient| {
            let internal = tenant.accepts(domain::domain_of(recipient).as_deref());
            Outcome {
                recipient,
                tenant: Some(&tenant.id),
                connector,
                refusal: block
                    .filter(|_| !internal)
                    .map(|reply| (reply.clone(), stage)),
            }
        })
        .collect()
}
