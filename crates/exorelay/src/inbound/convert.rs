//! From the SMTP session's typed transaction to the spool's stored envelope: addresses in their
//! canonical forwarding form, ESMTP parameters as the keywords to pass on upstream.

use smtp::params::xtext_encode;
use smtp::{ForwardPath, MailParams, RcptParams};
use spool::{MailParameters, Recipient, RecipientState};

/// The MAIL parameters as stored with the message.
pub fn mail_parameters(params: &MailParams) -> MailParameters {
    MailParameters {
        size: params.size,
        body: params.body.map(|b| b.keyword().to_string()),
        smtputf8: params.smtputf8,
        ret: params.ret.map(|r| r.keyword().to_string()),
        envid: params.envid.as_deref().map(xtext_encode),
    }
}

/// A recipient as stored, not yet tried.
pub fn recipient(to: &ForwardPath, params: &RcptParams) -> Recipient {
    Recipient {
        address: to.mailbox().to_string(),
        notify: params.notify.as_ref().map(|n| n.keywords()),
        orcpt: params
            .orcpt
            .as_ref()
            .map(|(kind, address)| format!("{kind};{}", xtext_encode(address))),
        state: RecipientState::Pending,
        last_reply: None,
        attempts: 0,
    }
}
