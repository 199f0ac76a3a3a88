//! Read-only access to a spool for the CLI (`exorelay queue list`, `queue show`) while a
//! daemon may hold the lock.
//!
//! [`SpoolReader`] takes no lock and changes nothing: no recovery, no quarantine. What it sees
//! can be a moment out of date (a message delivered or held while the listing runs) but never
//! a half-written file, since every file it reads was renamed into place whole. Files it
//! cannot read are listed with their error rather than skipped, as KumoMTA's enumeration
//! yields `Corrupt` entries: an operator must see them. Changing the queue is the daemon's job.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::disk::{self, ENV_EXT, Layout, MSG_EXT};
use crate::{Envelope, Error, QueueId};

/// A read-only view of a spool directory.
#[derive(Debug, Clone)]
pub struct SpoolReader {
    layout: Layout,
}

/// One message found by [`SpoolReader::list`].
#[derive(Debug)]
pub struct ListedMessage {
    /// The envelope file.
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

    /// Every message in `queue/` then `hold/`, each in id (arrival) order. An envelope that
    /// cannot be read or parsed is an entry with its error. A message that disappears while
    /// the listing runs (delivered, removed) is left out.
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
        Ok(listed)
    }

    /// The envelope of message `id`, from `queue/` or `hold/`.
    pub fn show(&self, id: QueueId) -> Result<Envelope, Error> {
        // A hold or release moves the envelope between the two; look a second time in
        // `queue/` in case it moved there while `hold/` was being checked.
        for dir in [&self.layout.queue, &self.layout.hold, &self.layout.queue] {
            match disk::read_envelope(&Layout::file(dir, id, ENV_EXT), id) {
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                other => return other,
            }
        }
        Err(Error::NotFound {
            id,
            dir: self.layout.root.clone(),
        })
    }

    /// Where message `id`'s content is: `hold/ID.msg` if that exists, else `queue/ID.msg`
    /// (which may not exist either if the message is gone).
    pub fn content_path(&self, id: QueueId) -> PathBuf {
        let held = Layout::file(&self.layout.hold, id, MSG_EXT);
        if held.exists() {
            held
        } else {
            Layout::file(&self.layout.queue, id, MSG_EXT)
        }
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
