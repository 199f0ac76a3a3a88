//! Turning failed recipients into a DSN queued like any message: from `<>` to the original
//! sender (RFC 3464), never about a message whose sender was `<>` (RFC 5321 §6.1: never bounce
//! a bounce), honouring `NOTIFY` (RFC 3461 §4.1). When a DSN of ours cannot be delivered, the
//! configured postmaster gets one notice about it; a failed notice is only logged.

use std::io::Write;

use spool::{Envelope, Recipient, RecipientState, Spool};

use crate::config::Config;
use crate::dsn::{self, Action, RecipientReport, Report};

/// `client_name` of DSNs the relay generated itself.
pub const DSN_CLIENT: &str = "(dsn)";
/// `client_name` of the notices about undeliverable DSNs sent to the postmaster.
pub const DOUBLE_BOUNCE_CLIENT: &str = "(double-bounce)";

/// Why no DSN could be queued.
#[derive(Debug, thiserror::Error)]
pub enum BounceError {
    /// The spool refused it.
    #[error("spool: {0}")]
    Spool(#[from] spool::Error),
    /// Writing it failed.
    #[error("writing the DSN: {0}")]
    Write(#[from] std::io::Error),
}

/// Whether a recipient asked to be told about failures (no NOTIFY means yes).
fn wants_failure_notice(recipient: &Recipient) -> bool {
    match recipient.notify.as_deref() {
        None => true,
        Some(notify) => notify.split(',').any(|k| k.eq_ignore_ascii_case("FAILURE")),
    }
}

/// Who a DSN about `envelope` goes to, if anyone.
fn notice_recipient<'a>(
    envelope: &'a Envelope,
    config: &'a Config,
) -> Option<(&'a str, &'static str)> {
    if !envelope.mail_from.is_empty() {
        return Some((&envelope.mail_from, DSN_CLIENT));
    }
    if envelope.client_name == DSN_CLIENT {
        return config
            .queue
            .postmaster
            .as_deref()
            .map(|postmaster| (postmaster, DOUBLE_BOUNCE_CLIENT));
    }
    None
}

/// Queues the DSN for the recipients of `envelope` at `failed` (indexes), if one is due.
/// Returns the DSN's envelope, already durable, for scheduling.
pub fn failure_notice(
    spool: &Spool,
    config: &Config,
    envelope: &Envelope,
    failed: &[usize],
    remote_mta: Option<&str>,
    now: u64,
) -> Result<Option<Envelope>, BounceError> {
    let Some((to, client_name)) = notice_recipient(envelope, config) else {
        return Ok(None);
    };
    let recipients: Vec<RecipientReport<'_>> = failed
        .iter()
        .filter_map(|&i| envelope.recipients.get(i))
        .filter(|r| client_name != DSN_CLIENT || wants_failure_notice(r))
        .map(|r| {
            let reply = r.last_reply.clone().unwrap_or_default();
            RecipientReport {
                recipient: r,
                status: status_of(&reply),
                diagnostic: reply,
                remote_mta: remote_mta.map(str::to_string),
            }
        })
        .collect();
    if recipients.is_empty() {
        return Ok(None);
    }
    let report = Report {
        reporting_mta: &config.server.hostname,
        envelope,
        action: Action::Failed,
        recipients,
        to,
        now,
    };
    let content = spool.open_content(envelope.id)?;
    let mut writer = spool.create()?;
    dsn::write(&report, content, &mut writer)?;
    writer.flush()?;
    let mut notice = Envelope::new(writer.id(), now);
    notice.client_name = client_name.to_string();
    notice.helo = config.server.hostname.clone();
    notice.recipients = vec![Recipient {
        address: to.to_string(),
        notify: None,
        orcpt: None,
        state: RecipientState::Pending,
        last_reply: None,
        attempts: 0,
    }];
    let durable = spool.commit(writer, notice).wait()?;
    Ok(Some(durable.envelope().clone()))
}

/// The enhanced status code in a recorded reply such as `550 5.7.64 …`, or a generic one.
fn status_of(reply: &str) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("554");
    match words.next() {
        Some(enhanced)
            if enhanced.split('.').count() == 3 && enhanced.starts_with(['2', '4', '5']) =>
        {
            enhanced.to_string()
        }
        _ if code.starts_with('4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_come_from_the_recorded_reply() {
        assert_eq!(
            status_of("550 5.7.64 TenantAttribution; Relay Access Denied"),
            "5.7.64"
        );
        assert_eq!(status_of("554 no enhanced code"), "5.0.0");
        assert_eq!(status_of("451 try later"), "4.0.0");
        assert_eq!(status_of(""), "5.0.0");
    }

    #[test]
    fn notify_is_honoured() {
        let mut r = Recipient {
            address: "a@b".into(),
            notify: None,
            orcpt: None,
            state: RecipientState::Failed,
            last_reply: None,
            attempts: 1,
        };
        assert!(wants_failure_notice(&r));
        r.notify = Some("SUCCESS,DELAY".into());
        assert!(!wants_failure_notice(&r));
        r.notify = Some("NEVER".into());
        assert!(!wants_failure_notice(&r));
        r.notify = Some("failure".into());
        assert!(wants_failure_notice(&r));
    }
}
