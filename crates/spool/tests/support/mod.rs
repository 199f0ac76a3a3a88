//! Helpers shared by the spool's integration tests.

#![allow(clippy::unwrap_used)]

use std::io::Write;

use spool::{Envelope, Recipient, RecipientState, Spool};

/// Commits `content` as a new message with `recipients` recipients and returns its envelope.
pub fn store(spool: &Spool, content: &[u8], recipients: usize) -> Envelope {
    let mut writer = spool.create().unwrap();
    writer.write_all(content).unwrap();
    let mut envelope = Envelope::new(writer.id(), 1_800_000_000);
    envelope.mail_from = "scanner@contoso.com".into();
    envelope.recipients = (0..recipients)
        .map(|i| Recipient {
            address: format!("user{i}@contoso.com"),
            notify: None,
            orcpt: None,
            state: RecipientState::Pending,
            last_reply: None,
            attempts: 0,
        })
        .collect();
    spool
        .commit(writer, envelope)
        .wait()
        .unwrap()
        .envelope()
        .clone()
}
