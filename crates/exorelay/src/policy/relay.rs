//! Relay policy for a client covered by a `[[client]]` rule: the null sender is always accepted;
//! a sender outside `allowed_sender_domains` gets 553 5.7.1; a recipient that is a domain
//! literal, or outside `allowed_recipient_domains`, gets 550 5.7.1 (security.md §6). Domains are
//! compared exactly, case-insensitively, after removing one trailing dot — never by prefix or
//! suffix, so `evilcontoso.com` and `contoso.com.example.net` never pass for `contoso.com`.

use smtp::{ForwardPath, MailParams, Policy, RcptParams, Reply, ReversePath};

use crate::config::ClientRule;

/// The [`Policy`] the SMTP session consults for a client of one rule.
pub struct RelayPolicy<'a> {
    rule: &'a ClientRule,
}

impl<'a> RelayPolicy<'a> {
    /// The policy of `rule`.
    pub fn new(rule: &'a ClientRule) -> Self {
        RelayPolicy { rule }
    }
}

/// Whether `domain` is exactly one of `allowed` (which are stored normalised).
fn domain_allowed(allowed: &[String], domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
    allowed.iter().any(|a| *a == domain)
}

impl Policy for RelayPolicy<'_> {
    fn check_sender(&mut self, from: &ReversePath, _params: &MailParams) -> Result<(), Reply> {
        let (Some(allowed), ReversePath::Mailbox(mailbox)) =
            (&self.rule.allowed_sender_domains, from)
        else {
            return Ok(());
        };
        if mailbox.domain().is_literal() || !domain_allowed(allowed, &mailbox.domain().to_string()) {
            return Err(Reply::sender_denied(&format!(
                "sender domain not allowed for client rule {}",
                self.rule.name
            )));
        }
        Ok(())
    }

    fn check_recipient(
        &mut self,
        _from: &ReversePath,
        to: &ForwardPath,
        _params: &RcptParams,
    ) -> Result<(), Reply> {
        let domain = to.mailbox().domain();
        if domain.is_literal() {
            return Err(Reply::relay_denied());
        }
        match &self.rule.allowed_recipient_domains {
            Some(allowed) if !domain_allowed(allowed, &domain.to_string()) => {
                Err(Reply::relay_denied())
            }
            _ => Ok(()),
        }
    }
}
