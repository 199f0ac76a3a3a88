//! Incoming attribution by recipient domain (exo-attribution.md §4): per recipient, the tenant,
//! its Partner connectors, Reject Direct Send and Directory-Based Edge Blocking.

use crate::domain;
use crate::facts::Message;
use crate::reply::Reply;
use crate::rules::matching::Evidence;
use crate::tenant::{AcceptedDomain, Connector, ConnectorType, DomainType, Tenant, World};
use crate::verdict::{DecidedBy, Decision, Direction, Outcome, Stage};

/// The session-wide inputs of §4.
pub(crate) struct Inbound<'a> {
    pub(crate) world: &'a World,
    pub(crate) evidence: &'a Evidence,
    /// Whether a TLS session exists for `RequireTls`; TLS below 1.2 counts as none (§7.2).
    pub(crate) tls: bool,
    /// The normalised P1 domain; `None` for the null sender.
    pub(crate) p1_domain: Option<String>,
    /// Where an unattributable recipient is refused (§4 step 1 and its exception).
    pub(crate) no_tenant_stage: Stage,
}

/// Runs §4 for every recipient, in `RCPT TO` order.
pub(crate) fn outcomes<'w>(inbound: &Inbound<'w>, message: &'w Message) -> Vec<Outcome<'w>> {
    message
        .rcpt_to
        .iter()
        .map(|r| recipient(inbound, r))
        .collect()
}

/// The verdict-level decision for Incoming outcomes: the tenant of the first accepted recipient,
/// else of the first one that found a tenant (§4 \[MODEL\]); `none` if nobody found one.
pub(crate) fn decision<'w>(
    outcomes: &[Outcome<'w>],
    matched_onprem: Option<&'w str>,
) -> Decision<'w> {
    let reported = outcomes
        .iter()
        .find(|o| o.refusal.is_none() && o.tenant.is_some())
        .or_else(|| outcomes.iter().find(|o| o.tenant.is_some()));
    match reported {
        Some(outcome) => Decision {
            decided_by: DecidedBy::RecipientDomain,
            tenant: outcome.tenant,
            direction: Some(Direction::Incoming),
            connector: outcome.connector,
            matched_onprem,
            relay_allowed: false,
        },
        None => Decision::nobody(DecidedBy::None, matched_onprem),
    }
}

fn recipient<'w>(inbound: &Inbound<'w>, r: &'w str) -> Outcome<'w> {
    // exo-attribution.md §4 step 1: the tenant covering the recipient's domain.
    let found = domain::domain_of(r).and_then(|d| inbound.world.tenant_for(&d));
    let Some((tenant, accepted)) = found else {
        return refused(
            r,
            None,
            None,
            Reply::relay_access_denied(),
            inbound.no_tenant_stage,
        );
    };
    let tenant_id = Some(tenant.id.as_str());
    // exo-attribution.md §4 step 2: Partner connectors of the tenant.
    let partners = partner_scope(tenant, accepted, inbound.p1_domain.as_deref());
    let admitting = partners
        .iter()
        .copied()
        .find(|c| admits(inbound.evidence, c));
    let connector = admitting.map(|c| c.name.as_str());
    if admitting.is_some_and(|c| c.require_tls && !inbound.tls) {
        return refused(
            r,
            tenant_id,
            connector,
            Reply::starttls_required(),
            Stage::Rcpt,
        );
    }
    if admitting.is_none() && partners.iter().any(|c| c.restricts()) {
        return refused(
            r,
            tenant_id,
            None,
            Reply::partner_restriction(),
            Stage::Rcpt,
        );
    }
    // exo-attribution.md §4 step 3: only P1 is checked, so a null P1 is never blocked [MODEL].
    if tenant.reject_direct_send
        && admitting.is_none()
        && tenant.accepts(inbound.p1_domain.as_deref())
    {
        return refused(
            r,
            tenant_id,
            None,
            Reply::direct_send_rejected(),
            Stage::Rcpt,
        );
    }
    // exo-attribution.md §4 step 4: Directory-Based Edge Blocking.
    if is_unknown_recipient(tenant, accepted, r) {
        return refused(
            r,
            tenant_id,
            connector,
            Reply::unknown_recipient(),
            Stage::Rcpt,
        );
    }
    Outcome {
        recipient: r,
        tenant: tenant_id,
        connector,
        refusal: None,
    }
}

/// `P` of §4 step 2: enabled Partner connectors whose `SenderDomains` cover P1 and whose
/// `AssociatedAcceptedDomains` allow the recipient's accepted domain, in configuration order.
fn partner_scope<'w>(
    tenant: &'w Tenant,
    accepted: &AcceptedDomain,
    p1_domain: Option<&str>,
) -> Vec<&'w Connector> {
    tenant
        .connectors
        .iter()
        .filter(|c| c.enabled && c.kind == ConnectorType::Partner)
        .filter(|c| c.scopes_sender(p1_domain) && c.applies_to(accepted))
        .collect()
}

/// A connector in `P` admits the connection if it recognises the server and every Restrict flag
/// it carries is met (§4 step 2).
fn admits(evidence: &Evidence, connector: &Connector) -> bool {
    let by_cert = evidence.by_cert(connector);
    let by_ip = evidence.by_ip(connector);
    // Written as the spec states it: recognised, and each Restrict flag implies its match.
    let recognised = by_cert || by_ip;
    let ip_restriction_met = !connector.restrict_domains_to_ip_addresses || by_ip;
    let certificate_restriction_met = !connector.restrict_domains_to_certificate || by_cert;
    recognised && ip_restriction_met && certificate_restriction_met
}

/// §4 step 4: Authoritative domain, a known recipient list, and `r` not on it.
fn is_unknown_recipient(tenant: &Tenant, accepted: &AcceptedDomain, r: &str) -> bool {
    let wanted = domain::normalize_address(r);
    accepted.kind == DomainType::Authoritative
        && !tenant.recipients.is_empty()
        && !tenant
            .recipients
            .iter()
            .any(|known| domain::normalize_address(known) == wanted)
}

fn refused<'w>(
    recipient: &'w str,
    tenant: Option<&'w str>,
    connector: Option<&'w str>,
    reply: Reply,
    stage: Stage,
) -> Outcome<'w> {
    Outcome {
        recipient,
        tenant,
        connector,
        refusal: Some((reply, stage)),
    }
}
