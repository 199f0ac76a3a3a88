//! Helpers shared by the spool's integration tests.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::path::Path;

use spool::{Envelope, Recipient, RecipientState, Spool};

/// Commits `content` as a new message with `recipients` recipients and returns its envelope.
#[allow(dead_code)] // not every test file uses every helper
pub fn store(spool: &Spool, content: &[u8], recipients: usize) -> Envelope {
    try_store(spool, content, recipients).unwrap()
}

/// [`store`], but a failed commit is returned rather than a panic.
#[allow(dead_code)] // not every test file uses every helper
pub fn try_store(
    spool: &Spool,
    content: &[u8],
    recipients: usize,
) -> Result<Envelope, spool::Error> {
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
        .map(|committed| committed.envelope().clone())
}

/// A copy of the spool at `dir` as it is on disk right now, as a crash would leave it.
#[allow(dead_code)] // not every test file uses every helper
pub fn crash_image(dir: &Path) -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let target = image.path().join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir(&target).unwrap();
            for file in fs::read_dir(entry.path()).unwrap() {
                let file = file.unwrap();
                fs::copy(file.path(), target.join(file.file_name())).unwrap();
            }
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
    image
}
