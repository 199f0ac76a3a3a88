//! Read-only access to a spool for the CLI (`exorelay queue list`, `queue show`) while a
//! daemon may hold the lock.
//!
//! [`SpoolReader`] takes no lock and changes nothing: no recovery, no quarantine. What it sees
//! can be a moment out of date (a message delivered or held while the listing runs). A
//! message is found by its envelope, which is written only once its content is complete;
//! messages written out of the journal are renamed into place whole; an envelope caught while
//! a large message is being committed fails to parse and is listed with its error for that
//! moment. Small messages a running daemon holds in its commit journal alone (not yet
//! deferred, held or checkpointed, so without files) are read from the journal's records,
//! which carry CRCs.
//! Files it cannot read are listed with their error rather than skipped, as KumoMTA's
//! enumeration yields `Corrupt` entries: an operator must see them. Changing the queue is the
//! daemon's job.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::disk::{self, ENV_EXT, Layout, MSG_EXT};
use crate::journal;
use crate::{Envelope, Error, QueueId};

/// Where [`SpoolReader::content_location`] found a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentLocation {
    /// The content file.
    File(PathBuf),
    /// A record in this commit journal segment: the message has no files yet.
    JournalRecord(PathBuf),
}

/// What [`SpoolReader::find_content`] found.
enum Found {
    File(PathBuf),
    Record { segment: PathBuf, content: Vec<u8> },
}

/// A read-only view of a spool directory.
#[derive(Debug, Clone)]
pub struct SpoolReader {
    layout: Layout,
}

/// One message found by [`SpoolReader::list`].
#[derive(Debug)]
pub struct ListedMessage {
    /// The envelope file, or the journal segment holding a message that has no files yet.
    pub path: PathBuf,
    /// The id from the file name, when the name is a valid id.
    pub id: Option<QueueId>,
    /// Whether the message is in `hold/`.
    pub held: bool,
    /// The envelope, or why it could not be read.
    pub envelope: Result<Envelope, Error>,
}

impl SpoolReader {
    /// Opens the spool at `dir` for reading. Fails if `dir/queue` does not exist (not a spool).
    pub fn open(dir: &Path) -> Result<SpoolReader, Error> {
        let layout = Layout::new(dir);
        let meta =
            fs::metadata(&layout.queue).map_err(|e| Error::io("open spool", &layout.queue, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                "open spool",
                &layout.queue,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        Ok(SpoolReader { layout })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.layout.root
    }

    /// Every message in `queue/` then `hold/`, each in id (arrival) order, then the queued
    /// messages held in the commit journal alone. An envelope that cannot be read or parsed
    /// is an entry with its error. A message that disappears while the listing runs
    /// (delivered, removed) is left out.
    pub fn list(&self) -> Result<Vec<ListedMessage>, Error> {
        let mut listed = Vec::new();
        for (dir, held) in [(&self.layout.queue, false), (&self.layout.hold, true)] {
            let mut here = Vec::new();
            let entries = fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
                let path = entry.path();
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    continue;
                };
                let Some(stem) = name.strip_suffix(&format!(".{ENV_EXT}")) else {
                    continue;
                };
                let id = disk::parse_name(name).map(|(id, _)| id);
                let envelope = match id {
                    Some(id) => match disk::read_envelope(&path, id) {
                        Err(Error::Io { source, .. })
                            if source.kind() == io::ErrorKind::NotFound =>
                        {
                            continue;
                        }
                        other => other,
                    },
                    None => Err(Error::InvalidQueueId {
                        text: stem.to_owned(),
                    }),
                };
                here.push(ListedMessage {
                    path,
                    id,
                    held,
                    envelope,
                });
            }
            here.sort_by(|a, b| a.path.cmp(&b.path));
            listed.append(&mut here);
        }
        // A message written out since its directory was read is listed from its record
        // (as committed), rather than missed.
        let with_files: HashSet<QueueId> = listed.iter().filter_map(|m| m.id).collect();
        for message in self.journaled()? {
            if message.id.is_some_and(|id| !with_files.contains(&id)) {
                listed.push(message);
            }
        }
        Ok(listed)
    }

    /// The messages the commit journal holds (see the `journal` module), as listed: the
    /// segment as path, each envelope parsed from its record.
    fn journaled(&self) -> Result<Vec<ListedMessage>, Error> {
        let (segment, live) = journal::read_live(&self.layout.journal)?;
        Ok(live
            .into_iter()
            .map(|(id, text, _)| ListedMessage {
                envelope: disk::parse_envelope(text, &segment, id),
                path: segment.clone(),
                id: Some(id),
                held: false,
            })
            .collect())
    }

    /// The content of message `id`: its content file, or its journal record when it has no
    /// files yet. [`Error::NotFound`] when it has neither (delivered or removed, perhaps while
    /// the daemon runs), as for [`SpoolReader::show`].
    pub fn read_content(&self, id: QueueId) -> Result<Vec<u8>, Error> {
        match self.find_content(id)? {
            Found::File(path) => match fs::read(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                    id,
                    dir: self.layout.root.clone(),
                }),
                read => read.map_err(|e| Error::io("read", &path, e)),
            },
            Found::Record { content, .. } => Ok(content),
        }
    }

    /// The envelope of message `id`, from `queue/` or `hold/`, else from the commit journal.
    pub fn show(&self, id: QueueId) -> Result<Envelope, Error> {
        // A hold or release moves the envelope between the two; look a second time in
        // `queue/` in case it moved there while `hold/` was being checked.
        for dir in [&self.layout.queue, &self.layout.hold, &self.layout.queue] {
            match disk::read_envelope(&Layout::file(dir, id, ENV_EXT), id) {
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                other => return other,
            }
        }
        if let Some(message) = self.journaled()?.into_iter().find(|m| m.id == Some(id)) {
            return message.envelope;
        }
        Err(Error::NotFound {
            id,
            dir: self.layout.root.clone(),
        })
    }

    /// Where message `id`'s content is: `hold/ID.msg` if that exists, else `queue/ID.msg` if
    /// that exists, else the journal segment when its record holds the message; else
    /// `queue/ID.msg` (the message is gone).
    pub fn content_location(&self, id: QueueId) -> ContentLocation {
        match self.find_content(id) {
            Ok(Found::File(path)) => ContentLocation::File(path),
            Ok(Found::Record { segment, .. }) => ContentLocation::JournalRecord(segment),
            Err(_) => ContentLocation::File(Layout::file(&self.layout.queue, id, MSG_EXT)),
        }
    }

    /// The content file of message `id` if there is one, else its journal record (one read
    /// of the journal); a message written out meanwhile, or gone, is `queue/ID.msg`.
    fn find_content(&self, id: QueueId) -> Result<Found, Error> {
        let held = Layout::file(&self.layout.hold, id, MSG_EXT);
        let queued = Layout::file(&self.layout.queue, id, MSG_EXT);
        if held.exists() {
            return Ok(Found::File(held));
        }
        if queued.exists() {
            return Ok(Found::File(queued));
        }
        let (segment, live) = journal::read_live(&self.layout.journal)?;
        Ok(match live.into_iter().find(|(j, ..)| *j == id) {
            Some((_, _, content)) => Found::Record { segment, content },
            None => Found::File(queued),
        })
    }

    /// Files quarantined in `corrupt/`, sorted by name, for an operator to inspect.
    pub fn corrupt(&self) -> Result<Vec<PathBuf>, Error> {
        let dir = &self.layout.corrupt;
        let mut files = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
            Err(e) => return Err(Error::io("read directory", dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
            files.push(entry.path());
        }
        files.sort();
        Ok(files)
    }
}
