//! The outcome of [`classify`](crate::classify): which tenant, which direction, which rule decided,
//! and what happens to each recipient (exo-attribution.md §2.5).

use std::fmt;

use serde::Serialize;

use crate::reply::Reply;

/// The verdict for one transaction (§2.5 \[MODEL\]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The rule that decided.
    pub decided_by: DecidedBy,
    /// The attributed tenant's id. For Incoming mail to several tenants: the first accepted
    /// recipient's tenant, or the first recipient's that found a tenant if none was accepted
    /// (§4 \[MODEL\]).
    pub tenant: Option<String>,
    /// The direction for that tenant.
    pub direction: Option<Direction>,
    /// The connector carrying the verdict: the OnPremises connector for Originating mail, the
    /// admitting Partner connector for Incoming mail; `None` = the tenant's default path.
    pub connector: Option<String>,
    /// The first OnPremises connector in the match set `M` (certificate matches first, then
    /// configuration order); a diagnostic even when no tenant was found (§3.5 step 4).
    pub matched_onprem: Option<String>,
    /// Recipients outside the attributed tenant's accepted domains are accepted.
    pub relay_allowed: bool,
    /// Accepted recipients, in `RCPT TO` order.
    pub accepted: Vec<String>,
    /// Refused recipients, in `RCPT TO` order.
    pub rejected: Vec<String>,
    /// The reply given to the first refused recipient (the vectors give every refused recipient
    /// the same one; [`rejections`](Self::rejections) has each).
    pub reply: Option<Reply>,
    /// Where [`reply`](Self::reply) is given.
    pub stage: Option<Stage>,
    /// Each refused recipient with its own reply and stage, in `RCPT TO` order.
    pub rejections: Vec<Rejection>,
}

/// One refused recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rejection {
    /// The recipient as given in `RCPT TO`.
    pub recipient: String,
    /// EXO's reply.
    pub reply: Reply,
    /// The SMTP stage at which EXO gives it.
    pub stage: Stage,
}

/// The rule that decided the verdict (§2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    /// §3.5 step 1: the certificate domain is an accepted domain.
    CertificateDomain,
    /// §3.5 step 2: the P1 domain is an accepted domain of a tenant whose connector matched.
    MailFromDomain,
    /// §3.5 step 3 (rule set `before` only): the header From domain.
    HeaderFromDomain,
    /// §4: Incoming, by recipient domain.
    RecipientDomain,
    /// §6: SMTP AUTH client submission.
    SmtpAuth,
    /// §5.1/§5.2: refused by the front door before attribution.
    FrontDoor,
    /// No tenant could be found; every recipient refused.
    None,
}

/// The direction of the message for the attributed tenant (§1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Direction {
    /// From the tenant itself; may be relayed to the internet.
    Originating,
    /// Addressed to the tenant from outside.
    Incoming,
}

/// The SMTP stage at which a reply is given (§2.5), ordered as a client meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// In reply to `STARTTLS`.
    Starttls,
    /// In reply to `AUTH`.
    Auth,
    /// In reply to `MAIL FROM`.
    Mail,
    /// In reply to `RCPT TO`.
    Rcpt,
    /// After the end of DATA.
    EndOfData,
}

impl DecidedBy {
    /// The name used in the vectors and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CertificateDomain => "certificate_domain",
            Self::MailFromDomain => "mail_from_domain",
            Self::HeaderFromDomain => "header_from_domain",
            Self::RecipientDomain => "recipient_domain",
            Self::SmtpAuth => "smtp_auth",
            Self::FrontDoor => "front_door",
            Self::None => "none",
        }
    }
}

impl Direction {
    /// The name used in the vectors and in EXO's `MessageDirectionality` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Originating => "Originating",
            Self::Incoming => "Incoming",
        }
    }
}

impl Stage {
    /// The name used in the vectors and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::EndOfData => "end_of_data",
            Self::Auth => "auth",
            Self::Starttls => "starttls",
        }
    }
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recipient's fate while a verdict is assembled.
#[derive(Debug, Clone)]
pub(crate) struct Outcome<'w> {
    pub(crate) recipient: &'w str,
    /// The tenant the recipient was attributed to, if any.
    pub(crate) tenant: Option<&'w str>,
    /// The connector that carried it, if any.
    pub(crate) connector: Option<&'w str>,
    /// `None` = accepted.
    pub(crate) refusal: Option<(Reply, Stage)>,
}

/// What the rules decided before the per-recipient results are laid out.
#[derive(Debug, Clone)]
pub(crate) struct Decision<'w> {
    pub(crate) decided_by: DecidedBy,
    pub(crate) tenant: Option<&'w str>,
    pub(crate) direction: Option<Direction>,
    pub(crate) connector: Option<&'w str>,
    pub(crate) matched_onprem: Option<&'w str>,
    pub(crate) relay_allowed: bool,
}

impl Verdict {
    /// Lays out a decision and the per-recipient outcomes (already in `RCPT TO` order).
    pub(crate) fn assemble(decision: Decision<'_>, outcomes: Vec<Outcome<'_>>) -> Self {
        let mut accepted = Vec::new();
        let mut rejections = Vec::new();
        for outcome in outcomes {
            match outcome.refusal {
                None => accepted.push(outcome.recipient.to_owned()),
                Some((reply, stage)) => rejections.push(Rejection {
                    recipient: outcome.recipient.to_owned(),
                    reply,
                    stage,
                }),
            }
        }
        let first = rejections.first();
        Self {
            decided_by: decision.decided_by,
            tenant: decision.tenant.map(str::to_owned),
            direction: decision.direction,
            connector: decision.connector.map(str::to_owned),
            matched_onprem: decision.matched_onprem.map(str::to_owned),
            relay_allowed: decision.relay_allowed,
            accepted,
            rejected: rejections.iter().map(|r| r.recipient.clone()).collect(),
            reply: first.map(|r| r.reply.clone()),
            stage: first.map(|r| r.stage),
            rejections,
        }
    }

    /// Whether EXO attributed the message as the tenant's own (and so may relay it).
    pub fn is_originating(&self) -> bool {
        self.direction == Some(Direction::Originating)
    }
}

impl<'w> Decision<'w> {
    /// A verdict that attributes nothing: front door, unauthenticated submission, or no tenant.
    pub(crate) fn nobody(decided_by: DecidedBy, matched_onprem: Option<&'w str>) -> Self {
        Self {
            decided_by,
            tenant: None,
            direction: None,
            connector: None,
            matched_onprem,
            relay_allowed: false,
        }
    }
}

impl<'w> Outcome<'w> {
    /// Every recipient refused with the same reply at the same stage.
    pub(crate) fn refuse_all(rcpt_to: &'w [String], reply: &Reply, stage: Stage) -> Vec<Self> {
        rcpt_to
            .iter()
            .map(|recipient| Self {
                recipient,
                tenant: None,
                connector: None,
                refusal: Some((reply.clone(), stage)),
            })
            .collect()
    }
}
