//! Relay policy for a client covered by a `[[client]]` rule: the null sender is always accepted;
//! a sender outside `allowed_sender_domains` gets 553 5.7.1; a recipient that is a domain
//! literal, or outside `allowed_recipient_domains`, gets 550 5.7.1 (security.md §6). Domains are
//! compared exactly, case-insensitively, after removing one trailing dot — never by prefix or
//! suffix, so `evilcontoso.com` and `contoso.com.example.net` never pass for `contoso.com`.
//! Every accepted recipient then goes through pre-flight (`preflight.rs`): the transaction
//! remembers a sender rewrite (`fix`) or a warning (`warn`) for the driver, and a predicted EXO
//! refusal under `refuse` is answered here, at RCPT, with the reason and the fix.

use std::sync::atomic::{AtomicBool, Ordering};

use smtp::{EnhancedCode, ForwardPath, MailParams, Policy, RcptParams, Reply, ReversePath};
use tracing::{info, warn};

use crate::config::{ClientRule, Config};
use crate::delivery::route::choose_upstream;
use crate::metrics;
use crate::policy::preflight::{self, Decision};

/// What pre-flight asks of the current transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// Deliver from this envelope sender instead of the client's.
    pub rewrite: Option<String>,
    /// Recipients EXO is predicted to refuse, delivered anyway (`warn`).
    pub warned: usize,
}

/// The [`Policy`] the SMTP session consults for a client of one rule.
pub struct RelayPolicy<'a> {
    rule: &'a ClientRule,
    config: &'a Config,
    low_on_space: &'a AtomicBool,
    transaction: Preflight,
}

impl<'a> RelayPolicy<'a> {
    /// The policy of `rule` under `config`; while `low_on_space` is set, new mail is refused
    /// with `452 4.3.1` (security.md §11).
    pub fn new(rule: &'a ClientRule, config: &'a Config, low_on_space: &'a AtomicBool) -> Self {
        RelayPolicy {
            rule,
            config,
            low_on_space,
            transaction: Preflight::default(),
        }
    }

    /// Pre-flight's requests for the transaction whose message is starting; resets them.
    pub fn take_preflight(&mut self) -> Preflight {
        std::mem::take(&mut self.transaction)
    }

    fn preflight(&mut self, mail_from: &str, rcpt: &str) -> Result<(), Reply> {
        let upstreams = &self.config.upstreams;
        let egress =
            |sender: &str| preflight::egress_connection(choose_upstream(upstreams, sender));
        match preflight::decide(&self.config.tenants, &egress, self.rule, mail_from, rcpt) {
            Decision::Pass => Ok(()),
            Decision::Rewrite { sender } => {
                info!(rule = %self.rule.name, from = mail_from, to = rcpt, "pre-flight: envelope sender rewritten to {sender}");
                metrics::PREFLIGHT_FIXED.inc();
                self.transaction.rewrite = Some(sender);
                Ok(())
            }
            Decision::Warn { exo_reply, advice } => {
                warn!(rule = %self.rule.name, from = mail_from, to = rcpt, "pre-flight: EXO will refuse ({exo_reply}); delivering anyway (warn). Fix: {advice}");
                metrics::PREFLIGHT_WARNED.inc();
                self.transaction.warned += 1;
                Ok(())
            }
            Decision::Refuse { exo_reply, advice } => {
                metrics::PREFLIGHT_REFUSED.inc();
                Err(Reply::new(
                    550,
                    Some(EnhancedCode::new(5, 7, 64)),
                    format!(
                        "Exchange Online would refuse to relay this ({exo_reply}).\nFix: {advice}"
                    ),
                ))
            }
        }
    }
}

/// Whether `domain` is exactly one of `allowed` (which are stored normalised).
fn domain_allowed(allowed: &[String], domain: &str) -> bool {
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    allowed.contains(&domain)
}

impl Policy for RelayPolicy<'_> {
    fn check_sender(&mut self, from: &ReversePath, _params: &MailParams) -> Result<(), Reply> {
        self.transaction = Preflight::default();
        if self.low_on_space.load(Ordering::Relaxed) {
            return Err(Reply::insufficient_storage());
        }
        let (Some(allowed), ReversePath::Mailbox(mailbox)) =
            (&self.rule.allowed_sender_domains, from)
        else {
            return Ok(());
        };
        if mailbox.domain().is_literal() || !domain_allowed(allowed, &mailbox.domain().to_string())
        {
            return Err(Reply::sender_denied(&format!(
                "sender domain not allowed for client rule {}",
                self.rule.name
            )));
        }
        Ok(())
    }

    fn check_recipient(
        &mut self,
        from: &ReversePath,
        to: &ForwardPath,
        _params: &RcptParams,
    ) -> Result<(), Reply> {
        let domain = to.mailbox().domain();
        if domain.is_literal() {
            return Err(Reply::relay_denied());
        }
        if let Some(allowed) = &self.rule.allowed_recipient_domains
            && !domain_allowed(allowed, &domain.to_string())
        {
            return Err(Reply::relay_denied());
        }
        let mail_from = from.mailbox().map(ToString::to_string).unwrap_or_default();
        self.preflight(&mail_from, &to.mailbox().to_string())
    }
}
