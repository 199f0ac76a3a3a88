//! The Exchange Online (EXO) tenant-attribution model: given the tenants, the facts of one SMTP
//! connection and the message envelope, which tenant does EXO attribute the message to, in which
//! direction, and which recipients does it accept?
//!
//! This crate implements `shared/docs/exo-attribution.md` (cited below as "the spec") literally.
//! It is pure: no I/O, no clock, no async. The relay's pre-flight, `exorelay check` and the
//! `exosim` simulator all call [`classify`], and [`findings`] explains a refusal in plain words.
//!
//! # The rules in prose
//!
//! **Front door (§5.1, §5.2).** A banned source IP gets `550 5.7.606`, a throttled one
//! `451 4.7.500`, for every recipient and before any attribution.
//!
//! **Originating first (§1, §3).** EXO first asks whether the message comes from a tenant's own
//! servers. The match set `M` holds every enabled OnPremises connector that recognises the
//! sender: by certificate — the client certificate counts only after STARTTLS with TLS 1.2 or
//! later and only if trusted, and its CN or a SAN must match `TlsSenderCertificateName`, where
//! `*.D` matches `D` and everything under it (§3.2) — or by source IPv4 address in
//! `SenderIPAddresses` (§3.3; IPv6 never matches). Then (§3.5):
//!
//! 1. *certificate domain*: the connector's certificate name without `*.` is an accepted domain
//!    of its tenant (§3.4 `covers`) — any sender, any recipient;
//! 2. *P1 domain*: the `MAIL FROM` domain is accepted by the tenant of some member of `M`;
//! 3. *P2 domain*, under the `before` rule set only: the same with the header `From:`, decided at
//!    end of DATA (§2.4).
//!
//! Ties go to the most specific accepted domain, then certificate matches, then configuration
//! order. An Originating verdict accepts every recipient and may relay (§3.6), except that the
//! service-state blocks of §5.6 (tenant over threshold, low-reputation IP, unregistered sender
//! domain) refuse recipients outside the tenant.
//!
//! **Incoming otherwise (§4).** Each recipient is attributed on its own to the tenant whose
//! accepted domain covers it; none gives `550 5.7.64` (at end of DATA instead of `RCPT TO` when,
//! under `before`, a connector matched and the P2 check is pending). Within the tenant, Partner
//! connectors scoped to the P1 domain may admit the connection, refuse it for want of TLS, or —
//! if one carries a Restrict flag and none admits — refuse it with `5.7.51`; Reject Direct Send
//! refuses unadmitted mail whose P1 is the tenant's own domain (`5.7.68`); Directory-Based Edge
//! Blocking refuses unknown recipients of Authoritative domains (`5.4.1`).
//!
//! **SMTP AUTH submission (§6).** On `smtp.office365.com` the user's tenant is Originating once
//! TLS 1.2+, AUTH (basic only while not retired) and Send As (P1 only) pass.
//!
//! # Layout
//!
//! - [`tenant`]: configuration (accepted domains, connectors, organisation settings), from TOML.
//! - [`facts`]: the connection, the message and the rule set.
//! - [`verdict`]: the result; [`reply`]: every reply text of the model.
//! - [`domain`]: normalisation and the `covers` / `name_match` rules.
//! - `rules` (private): the procedure itself, split by spec section.
//! - [`advice`]: the §10 diagnostics for `exorelay check`.
#![forbid(unsafe_code)]

pub mod advice;
pub mod domain;
pub mod facts;
pub mod reply;
mod rules;
pub mod tenant;
pub mod verdict;

pub use advice::{Finding, findings};
pub use facts::{
    Auth, AuthMechanism, ClientCert, Connection, Endpoint, IpReputation, Message, Ruleset,
    TlsVersion,
};
pub use reply::Reply;
pub use tenant::{
    AcceptedDomain, BasicAuth, Connector, ConnectorType, DomainType, Ipv4Range, Ipv4RangeError,
    Tenant, World,
};
pub use verdict::{DecidedBy, Direction, Rejection, Stage, Verdict};

/// Classifies one SMTP transaction as EXO would (exo-attribution.md §3–§6).
///
/// Total: every input gives a verdict, none panics. The verdict is deterministic and, apart from
/// the reported tenant and connector of Incoming mail to several tenants (§4 \[MODEL\]), does not
/// depend on the order of the recipients.
///
/// ```
/// use attribution::*;
///
/// let world: World = toml::from_str(r#"
///     [[tenant]]
///     id = "contoso"
///     accepted_domains = [{ domain = "contoso.com", type = "Authoritative" }]
///     [[tenant.connector]]
///     name = "From Contoso datacenter"
///     type = "OnPremises"
///     sender_ip_addresses = ["203.0.113.0/28"]
///     sender_domains = ["*"]
/// "#).unwrap();
/// let connection = Connection {
///     endpoint: Endpoint::Mx,
///     source_ip: "203.0.113.5".parse().unwrap(),
///     ehlo: "app01".into(),
///     tls: TlsVersion::None,
///     client_cert: None,
///     ip_reputation: IpReputation::Ok,
///     auth: None,
/// };
/// let message = Message {
///     mail_from: "monitor@contoso.com".into(),
///     rcpt_to: vec!["ops@example.net".into()],
///     header_from: Some("monitor@contoso.com".into()),
/// };
/// let verdict = classify(&world, &connection, &message, Ruleset::After);
/// assert_eq!(verdict.decided_by, DecidedBy::MailFromDomain);
/// assert!(verdict.relay_allowed);
/// ```
pub fn classify(
    world: &World,
    connection: &Connection,
    message: &Message,
    ruleset: Ruleset,
) -> Verdict {
    rules::classify(world, connection, message, ruleset)
}
