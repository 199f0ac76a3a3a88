//! The rules of exo-attribution.md in evaluation order: the front door (§5.1, §5.2), Originating
//! attribution (§3), Incoming attribution (§4) and SMTP AUTH submission (§6).

mod incoming;
pub(crate) mod matching;
mod originating;
mod submission;

use crate::domain;
use crate::facts::{Connection, Endpoint, IpReputation, Message, Ruleset};
use crate::reply::Reply;
use crate::tenant::World;
use crate::verdict::{DecidedBy, Decision, Direction, Outcome, Stage, Verdict};

use self::incoming::Inbound;
use self::matching::{Evidence, match_set};

/// See [`crate::classify`].
pub(crate) fn classify(
    world: &World,
    connection: &Connection,
    message: &Message,
    ruleset: Ruleset,
) -> Verdict {
    match connection.endpoint {
        Endpoint::Mx => mx(world, connection, message, ruleset),
        Endpoint::Submission => submission::classify(world, connection, message),
    }
}

/// The MX endpoint: front door, then Originating, then Incoming.
fn mx(world: &World, connection: &Connection, message: &Message, ruleset: Ruleset) -> Verdict {
    if let Some(reply) = front_door(connection) {
        let outcomes = Outcome::refuse_all(&message.rcpt_to, &reply, Stage::Rcpt);
        return Verdict::assemble(Decision::nobody(DecidedBy::FrontDoor, None), outcomes);
    }
    let evidence = Evidence::of(connection);
    let matches = match_set(world, &evidence);
    let matched_onprem = matches.first().map(|m| m.connector.name.as_str());
    if let Some((found, decided_by)) = originating::attribute(&matches, message, ruleset) {
        // exo-attribution.md §3.5 step 3 [MODEL]: a decision by header From is taken at end of
        // DATA, and so is any refusal that follows from it.
        let stage = match decided_by {
            DecidedBy::HeaderFromDomain => Stage::EndOfData,
            _ => Stage::Rcpt,
        };
        let block = originating::service_block(found.tenant, connection, message);
        let connector = Some(found.connector.name.as_str());
        let outcomes = originating::outcomes(
            found.tenant,
            connector,
            &message.rcpt_to,
            block.as_ref(),
            stage,
        );
        let decision = Decision {
            decided_by,
            tenant: Some(&found.tenant.id),
            direction: Some(Direction::Originating),
            connector,
            matched_onprem,
            relay_allowed: block.is_none(),
        };
        return Verdict::assemble(decision, outcomes);
    }
    // exo-attribution.md §4 step 1 exception [MODEL]: before the change, with M ≠ ∅ the P2 check
    // is still pending at RCPT TO, so an unattributable recipient is refused at end of DATA.
    let no_tenant_stage = if ruleset == Ruleset::Before && !matches.is_empty() {
        Stage::EndOfData
    } else {
        Stage::Rcpt
    };
    let inbound = Inbound {
        world,
        evidence: &evidence,
        tls: connection.tls.is_modern(),
        p1_domain: domain::domain_of(&message.mail_from),
        no_tenant_stage,
    };
    let outcomes = incoming::outcomes(&inbound, message);
    Verdict::assemble(incoming::decision(&outcomes, matched_onprem), outcomes)
}

/// §5.1 and §5.2: refusals by the front door, before any attribution. The model applies them on
/// the MX endpoint only; §6 lists the submission endpoint's own replies \[MODEL\].
fn front_door(connection: &Connection) -> Option<Reply> {
    match connection.ip_reputation {
        IpReputation::Banned => Some(Reply::banned_ip(connection.source_ip)),
        IpReputation::Throttled => Some(Reply::throttled()),
        IpReputation::Ok | IpReputation::Low => None,
    }
}
