//! The spool's one error type.
//!
//! Every variant names the file or directory involved, so a log line or an operator's
//! `exorelay queue show` says *where* without more context. The SMTP side does not match on
//! variants to choose a reply: any error from a commit means "not durable", answered with a
//! bland 451 (KumoMTA keeps storage errors out of client replies the same way).

use std::io;
use std::path::PathBuf;

use crate::id::QueueId;

/// Everything that can go wrong in the spool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process (or another `Spool` in this one) holds the spool's lock file, so this
    /// one must not touch the queue: two daemons sharing a spool would deliver twice.
    #[error("spool lock {path} is held by another process{}", holder_text(*.pid))]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The process id the holder wrote into the lock file, when it could be read.
        pid: Option<u32>,
    },

    /// A file-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the spool was doing ("fsync", "rename", "open", …).
        op: &'static str,
        /// The file or directory it was doing it to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// An envelope file is not valid TOML, or lacks a field, or has a field of the wrong type.
    #[error("envelope {path} does not parse: {reason}")]
    Parse {
        /// The envelope file.
        path: PathBuf,
        /// The parser's explanation, with line and column.
        reason: String,
    },

    /// An envelope file declares a `version` this build does not understand.
    #[error("envelope {path} has unsupported version {version} (this build reads version {supported})", supported = crate::envelope::ENVELOPE_VERSION)]
    UnsupportedVersion {
        /// The envelope file.
        path: PathBuf,
        /// The version it declares.
        version: u32,
    },

    /// An envelope file parses but disagrees with the spool: its `id` differs from its file
    /// name, it is too large, or its content file has a different size than it records.
    #[error("{path} is inconsistent: {reason}")]
    Inconsistent {
        /// The file found wrong.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An envelope could not be written as TOML (not expected with the current fields; kept
    /// so that a serialiser failure is an error, not a panic).
    #[error("envelope for {path} cannot be serialised: {reason}")]
    Serialize {
        /// The envelope file that was to be written.
        path: PathBuf,
        /// The serialiser's explanation.
        reason: String,
    },

    /// No message with this id is in `queue/` or `hold/`.
    #[error("message {id} is not in {dir}")]
    NotFound {
        /// The id looked for.
        id: QueueId,
        /// The spool directory searched.
        dir: PathBuf,
    },

    /// `Spool::commit` was given an envelope whose `id` is not the writer's.
    #[error("envelope id {envelope} does not match the content being committed ({path})")]
    IdMismatch {
        /// The id in the envelope.
        envelope: QueueId,
        /// The writer's temporary content file.
        path: PathBuf,
    },

    /// A string is not a 26-character ULID and so cannot name a message.
    #[error("{text:?} is not a queue id (26-character ULID)")]
    InvalidQueueId {
        /// The text that was given.
        text: String,
    },

    /// The group committer thread has stopped (it panicked or the spool is shutting down), so
    /// nothing can be made durable.
    #[error("the spool committer for {dir} has stopped")]
    CommitterStopped {
        /// The spool directory.
        dir: PathBuf,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!(" (pid {pid})"),
        None => String::new(),
    }
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A copy of this error for another waiter of the same failed batch. `io::Error` is not
    /// `Clone`, so the copy keeps its kind and text.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            Error::Locked { path, pid } => Error::Locked {
                path: path.clone(),
                pid: *pid,
            },
            Error::Parse { path, reason } => Error::Parse {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::UnsupportedVersion { path, version } => Error::UnsupportedVersion {
                path: path.clone(),
                version: *version,
            },
            Error::Inconsistent { path, reason } => Error::Inconsistent {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::Serialize { path, reason } => Error::Serialize {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::NotFound { id, dir } => Error::NotFound {
                id: *id,
                dir: dir.clone(),
            },
            Error::IdMismatch { envelope, path } => Error::IdMismatch {
                envelope: *envelope,
                path: path.clone(),
            },
            Error::InvalidQueueId { text } => Error::InvalidQueueId { text: text.clone() },
            Error::CommitterStopped { dir } => Error::CommitterStopped { dir: dir.clone() },
        }
    }
}
