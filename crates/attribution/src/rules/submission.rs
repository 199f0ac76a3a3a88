//! SMTP AUTH client submission on `smtp.office365.com` (exo-attribution.md §6).
//!
//! The checks run in the order a client meets them: STARTTLS, AUTH, MAIL FROM, then the Send As
//! check after DATA.

use crate::domain;
use crate::facts::{Auth, AuthMechanism, Connection, Message, TlsVersion};
use crate::reply::Reply;
use crate::rules::originating;
use crate::tenant::{BasicAuth, Tenant, World};
use crate::verdict::{DecidedBy, Decision, Direction, Outcome, Stage, Verdict};

/// Classifies a transaction on the submission endpoint.
pub(crate) fn classify(world: &World, connection: &Connection, message: &Message) -> Verdict {
    match authenticated(world, connection) {
        Ok((tenant, auth)) => originate(tenant, auth, connection, message),
        Err((reply, stage)) => refuse_session(message, &reply, stage),
    }
}

/// The STARTTLS and AUTH steps: the user's tenant, or the refusal that ends the session.
fn authenticated<'w, 'c>(
    world: &'w World,
    connection: &'c Connection,
) -> Result<(&'w Tenant, &'c Auth), (Reply, Stage)> {
    match connection.tls {
        TlsVersion::V1_0 | TlsVersion::V1_1 => return Err((Reply::legacy_tls(), Stage::Starttls)),
        // exo-attribution.md §6: without TLS, AUTH is not offered, so MAIL FROM comes
        // unauthenticated [MODEL].
        TlsVersion::None => return Err((Reply::not_authenticated(), Stage::Mail)),
        TlsVersion::V1_2 | TlsVersion::V1_3 => {}
    }
    let Some(auth) = &connection.auth else {
        return Err((Reply::not_authenticated(), Stage::Mail));
    };
    // exo-attribution.md §6: the tenant covers the user's domain [MODEL]. An unknown user is a
    // gap in the spec; we refuse the AUTH.
    let tenant = domain::domain_of(&auth.user)
        .and_then(|d| world.tenant_for(&d))
        .map(|(tenant, _)| tenant)
        .ok_or((Reply::authentication_failed(), Stage::Auth))?;
    if auth.mechanism == AuthMechanism::Basic && tenant.basic_auth_submission == BasicAuth::Retired
    {
        return Err((Reply::basic_auth_retired(), Stage::Auth));
    }
    Ok((tenant, auth))
}

/// Authenticated: Originating for the user's tenant, unless Send As is denied (§6) or a §5.6
/// block refuses external recipients (§3.6).
fn originate<'w>(
    tenant: &'w Tenant,
    auth: &Auth,
    connection: &Connection,
    message: &'w Message,
) -> Verdict {
    let mut decision = Decision {
        decided_by: DecidedBy::SmtpAuth,
        tenant: Some(&tenant.id),
        direction: Some(Direction::Originating),
        connector: None,
        matched_onprem: None,
        relay_allowed: false,
    };
    if !may_send_as(auth, &message.mail_from) {
        let reply = Reply::send_as_denied(&auth.user, &message.mail_from);
        return Verdict::assemble(
            decision,
            Outcome::refuse_all(&message.rcpt_to, &reply, Stage::EndOfData),
        );
    }
    let block = originating::service_block(tenant, connection, message);
    decision.relay_allowed = block.is_none();
    let outcomes =
        originating::outcomes(tenant, None, &message.rcpt_to, block.as_ref(), Stage::Rcpt);
    Verdict::assemble(decision, outcomes)
}

/// The sender must be the mailbox itself or one it has Send As rights for; the model checks P1
/// only (§6 \[MODEL\]). A null P1 is neither.
fn may_send_as(auth: &Auth, mail_from: &str) -> bool {
    if mail_from.is_empty() {
        return false;
    }
    let sender = domain::normalize_address(mail_from);
    std::iter::once(&auth.user)
        .chain(&auth.send_as)
        .any(|allowed| domain::normalize_address(allowed) == sender)
}

fn refuse_session(message: &Message, reply: &Reply, stage: Stage) -> Verdict {
    let decision = Decision::nobody(DecidedBy::SmtpAuth, None);
    Verdict::assemble(
        decision,
        Outcome::refuse_all(&message.rcpt_to, reply, stage),
    )
}
