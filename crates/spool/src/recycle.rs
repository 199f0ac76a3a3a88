//! Recycled files: the files of delivered messages are kept in `free/` and reused for new
//! messages instead of being unlinked and created again.
//!
//! Which messages have files at all: with the commit journal (production), small messages
//! get them only when written out of the journal (deferred, held, or queued at a
//! checkpoint), and larger ones always; without it (tests), every message.
//!
//! Why: a relay creates and deletes two files per message. On ext4 without a journal the
//! kernel's inode allocator skips every inode freed in the last minutes (`recently_deleted`
//! in `fs/ext4/ialloc.c`), scanning past each one under the directory's lock, so at a few
//! thousand messages a second file creation becomes the relay's main cost (measured in
//! docs/PERFORMANCE.md: up to 45 % of all CPU). A renamed file keeps its inode and its
//! blocks: no allocation, no freeing.
//!
//! Safety: a file in `free/` belongs to no message — recovery never looks there, and at start
//! its files are simply the pool again. A recycled file is written while still in `free/` and
//! renamed into `queue/` at commit, before the group commit's sync; its length is cut to the
//! new content first. Stale bytes of the old message can only surface after a power loss: the
//! commit journal's replay rewrites such a message from its record, and for a message too
//! large for the journal the content checksum in the envelope catches it before anything is
//! delivered (`Spool::verify_content`).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::Error;
use crate::disk;

/// Largest file kept for reuse: small messages are where per-file costs dominate, and a pool
/// of big files would hold disk space for nothing.
pub(crate) const RECYCLE_MAX_BYTES: u64 = 64 * 1024;

/// The pool of reusable files in `free/`.
#[derive(Debug)]
pub(crate) struct FreeFiles {
    dir: PathBuf,
    files: Mutex<Vec<PathBuf>>,
    limit: usize,
}

/// A file taken from the pool, open for writing from offset 0, still in `free/`.
#[derive(Debug)]
pub(crate) struct Recycled {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
}

impl FreeFiles {
    /// The pool for `dir` (`free/`), holding at most `limit` files. The files already there
    /// (from an earlier run) are taken into the pool; those beyond `limit` or larger than
    /// [`RECYCLE_MAX_BYTES`] are removed, and anything that is not a file is left alone.
    pub(crate) fn open(dir: &Path, limit: usize) -> Result<FreeFiles, Error> {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", dir, e))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| Error::io("stat", &path, e))?;
            if !meta.is_file() {
                tracing::warn!(path = %path.display(), "not a file; left alone in the pool directory");
            } else if files.len() < limit && meta.len() <= RECYCLE_MAX_BYTES {
                files.push(path);
            } else {
                disk::remove_file(&path)?;
            }
        }
        Ok(FreeFiles {
            dir: dir.to_owned(),
            files: Mutex::new(files),
            limit,
        })
    }

    /// Takes a file from the pool, opened for writing (not truncated). `None` when the pool
    /// is empty, or the file could not be opened (it is then removed and forgotten).
    pub(crate) fn take(&self) -> Option<Recycled> {
        loop {
            let path = self.lock().pop()?;
            match OpenOptions::new().write(true).open(&path) {
                Ok(file) => return Some(Recycled { file, path }),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot reuse a free spool file; removing it");
                    let _ = disk::remove_file(&path);
                }
            }
        }
    }

    /// Puts the file at `path` (a finished message's file) into the pool by renaming it into
    /// `free/`, or removes it when the pool is full or the file is big. A file that is
    /// already gone is no error.
    pub(crate) fn give(&self, path: &Path) -> Result<(), Error> {
        let size = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        let mut files = self.lock();
        if files.len() >= self.limit || size > RECYCLE_MAX_BYTES {
            drop(files);
            return disk::remove_file(path);
        }
        let Some(name) = path.file_name() else {
            return disk::remove_file(path);
        };
        let dest = self.dir.join(name);
        match std::fs::rename(path, &dest) {
            Ok(()) => {
                files.push(dest);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("rename", path, e)),
        }
    }

    /// Files in the pool now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        // The list is only pushed to and popped from; a panic elsewhere cannot leave it
        // half-changed, so poisoning is ignored.
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
