//! Durable queue storage for exorelay: a directory of plain files, made crash-safe with
//! fsync, shared by every connection task through a cloneable [`Spool`] handle.
//!
//! The contract the rest of the relay builds on: a message is answered `250` only with a
//! [`Durable`] in hand, and only the spool makes those, after the message is on disk: its
//! record in the commit journal (one `fdatasync` per group commit of small messages, which
//! get files only if they stay queued), or its files and their directory entries in
//! `queue/` (one `syncfs` per group commit otherwise). After a crash at any instant,
//! [`Spool::open`] finds every such message again (in [`RecoveryReport::queued`]) and
//! nothing that was not acknowledged.
//!
//! # Layout
//!
//! * [`id`](QueueId) — time-ordered message ids that name the files.
//! * `envelope` — the versioned TOML envelope record ([`Envelope`]) with per-recipient state.
//! * `disk` — the directory layout and the fsync, syncfs and rename steps, each passing a
//!   [`FaultInjector`] so tests can fail it.
//! * `commit` — [`MessageWriter`], the group committer thread, [`CommitHandle`], [`Durable`].
//! * `journal` — the commit journal: durable records of small messages (their only copy
//!   until they are written out), replayed at open.
//! * `recover` — the start-up scan ([`RecoveryReport`]): remove incomplete, quarantine corrupt.
//! * `spool` — [`Spool`]: open with lock, then load/update/hold/release/remove by id.
//! * `reader` — [`SpoolReader`], lock-free read-only access for the CLI.
//! * `recycle` — the pool of delivered messages' files in `free/`, reused for new ones.
//!
//! On disk (`DIR/`): `lock`, `tmp/`, `queue/ID.msg` + `queue/ID.env`, `hold/` (same pair),
//! `corrupt/`, `free/` (files kept for reuse), `journal/` (two segments). See the `disk` module for the rules.
//!
//! # Example
//!
//! ```
//! use std::io::Write;
//! use spool::{Envelope, Spool, SpoolOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (spool, recovered) = Spool::open(dir.path(), SpoolOptions::default())?;
//! assert!(recovered.queued.is_empty());
//!
//! let mut writer = spool.create()?;
//! writer.write_all(b"Subject: hello\r\n\r\nbody\r\n")?;
//! let mut envelope = Envelope::new(writer.id(), 1_795_846_609);
//! envelope.mail_from = "app@contoso.com".into();
//! let durable = spool.commit(writer, envelope).wait()?; // only now may a 250 be sent
//! assert_eq!(durable.envelope().size, 24);
//!
//! drop(spool);
//! let (_spool, recovered) = Spool::open(dir.path(), SpoolOptions::default())?;
//! assert_eq!(recovered.queued.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! What the spool does not do: decide when to deliver (the queue manager keeps the
//! time-ordered index, seeded from the recovery report), or look inside message content.

#![forbid(unsafe_code)]

mod commit;
mod disk;
mod envelope;
mod error;
mod id;
mod journal;
mod reader;
mod recover;
mod recycle;
mod spool;

pub use commit::{CommitHandle, CommitStats, Durable, MessageWriter, WRITE_BUFFER};
pub use disk::{FaultInjector, NoFaults, Step};
pub use envelope::{
    ENVELOPE_VERSION, Envelope, MAX_ENVELOPE_BYTES, MailParameters, Recipient, RecipientState,
};
pub use error::Error;
pub use id::QueueId;
pub use reader::{ContentLocation, ListedMessage, SpoolReader};
pub use recover::RecoveryReport;
pub use spool::{DeferredRecovery, Spool, SpoolOptions};
