//! The spool directory on disk and the few file operations every state change is made of.
//!
//! ```text
//! DIR/lock            flock'd for the life of a `Spool`; holds the daemon's pid, for humans
//! DIR/tmp/            envelope rewrites and write-outs from the journal in progress;
//!                     anything here at start is removed
//! DIR/queue/ID.msg    content, bytes exactly as received
//! DIR/queue/ID.env    envelope (TOML); its presence marks the message complete
//! DIR/hold/ID.{msg,env}     held messages, same pair
//! DIR/corrupt/        quarantined files; never deleted automatically
//! DIR/free/           files of delivered messages kept for reuse; belong to no message
//! DIR/journal/        the commit journal's two segments (see the `journal` module)
//! ```
//!
//! A small message lives in the commit journal alone until it is written out (see the
//! `journal` module). A larger one is written in place (or into a file from `free/`, renamed
//! into `queue/` at commit) and made durable by its group commit's `syncfs` (the envelope,
//! written last, marks it complete; it records the content's size and CRC-32). Envelope rewrites go temp file → fsync → rename
//! → fsync of the directory, the shape of chasquid's `safeio`. Every sync and rename passes
//! through a [`FaultInjector`] first, so
//! tests can fail any step with no test-only branch in this code. Group commit (`commit`) and
//! the startup scan (`recover`) are built from these pieces.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::{Envelope, Error, QueueId};

/// Extension of content files.
pub(crate) const MSG_EXT: &str = "msg";
/// Extension of envelope files.
pub(crate) const ENV_EXT: &str = "env";

/// A step of a spool write, announced to the [`FaultInjector`] just before it is taken.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Step<'a> {
    /// The group committer is about to write a batch of this many messages.
    BeginBatch {
        /// Messages in the batch.
        messages: usize,
    },
    /// A file is about to be fsync'd.
    SyncFile(&'a Path),
    /// A file is about to be renamed.
    Rename {
        /// Current name.
        from: &'a Path,
        /// New name.
        to: &'a Path,
    },
    /// A directory is about to be fsync'd.
    SyncDir(&'a Path),
    /// The filesystem holding this directory is about to be synced (`syncfs`).
    SyncFilesystem(&'a Path),
    /// A group commit's records were appended to this journal segment, which is about to be
    /// `fdatasync`'d.
    SyncJournal(&'a Path),
    /// This journal segment, just given a new header or grown, is about to be fsync'd.
    PrepareJournal(&'a Path),
}

/// Hook called before each fsync and rename of a spool write. Returning an error makes the
/// step fail as if the operating system had refused it.
///
/// Production code uses the hook that never fails ([`Spool::open`](crate::Spool::open));
/// tests, here and in the daemon, pass their own to [`Spool::open_with_faults`](
/// crate::Spool::open_with_faults) to check that a failed write never reaches `queue/` and
/// is answered with a temporary error.
pub trait FaultInjector: Send + Sync + fmt::Debug {
    /// Called before `step`; an `Err` fails it.
    fn before(&self, step: Step<'_>) -> io::Result<()>;
}

/// The injector used in production: every step proceeds.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFaults;

impl FaultInjector for NoFaults {
    fn before(&self, _step: Step<'_>) -> io::Result<()> {
        Ok(())
    }
}

/// Paths of the spool's parts.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    pub(crate) lock: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) queue: PathBuf,
    pub(crate) hold: PathBuf,
    pub(crate) corrupt: PathBuf,
    pub(crate) free: PathBuf,
    pub(crate) journal: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_owned(),
            lock: root.join("lock"),
            tmp: root.join("tmp"),
            queue: root.join("queue"),
            hold: root.join("hold"),
            corrupt: root.join("corrupt"),
            free: root.join("free"),
            journal: root.join("journal"),
        }
    }

    /// `dir/ID.ext`.
    pub(crate) fn file(dir: &Path, id: QueueId, ext: &str) -> PathBuf {
        dir.join(format!("{id}.{ext}"))
    }

    /// Creates the directories that do not exist yet, private to the owner (mail is personal
    /// data).
    pub(crate) fn create(&self) -> Result<(), Error> {
        for dir in [
            &self.root,
            &self.tmp,
            &self.queue,
            &self.hold,
            &self.corrupt,
            &self.free,
            &self.journal,
        ] {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            builder.mode(0o700);
            builder
                .create(dir)
                .map_err(|e| Error::io("create directory", dir, e))?;
        }
        Ok(())
    }
}

/// File operations with the sync policy and the fault hook applied.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    pub(crate) layout: Layout,
    sync: bool,
    faults: Arc<dyn FaultInjector>,
    /// Makes names of temporary envelope rewrites unique within this process.
    rewrite_counter: Arc<AtomicU64>,
}

impl Disk {
    pub(crate) fn new(layout: Layout, sync: bool, faults: Arc<dyn FaultInjector>) -> Disk {
        Disk {
            layout,
            sync,
            faults,
            rewrite_counter: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn faults(&self) -> &dyn FaultInjector {
        &*self.faults
    }

    /// Whether this spool syncs at all (`false` only in tests that ask for speed).
    pub(crate) fn syncs(&self) -> bool {
        self.sync
    }

    /// fsync a file's data and metadata (unless syncing is turned off).
    pub(crate) fn sync_file(&self, file: &File, path: &Path) -> Result<(), Error> {
        self.sync_file_at(Step::SyncFile(path), file, path)
    }

    /// fsync a file, announcing it to the fault hook as `step`.
    pub(crate) fn sync_file_at(
        &self,
        step: Step<'_>,
        file: &File,
        path: &Path,
    ) -> Result<(), Error> {
        self.faults
            .before(step)
            .and_then(|()| if self.sync { file.sync_all() } else { Ok(()) })
            .map_err(|e| Error::io("fsync", path, e))
    }

    /// Flushes every file written on the spool's filesystem with one `syncfs(2)` (unless
    /// syncing is turned off), whatever the number of files.
    pub(crate) fn sync_filesystem(&self, dir: &Path) -> Result<(), Error> {
        self.faults
            .before(Step::SyncFilesystem(dir))
            .and_then(|()| {
                if self.sync {
                    let d = File::open(dir)?;
                    rustix::fs::syncfs(&d).map_err(std::io::Error::from)
                } else {
                    Ok(())
                }
            })
            .map_err(|e| Error::io("syncfs", dir, e))
    }

    /// Runs the fault hook of syncing `path` only: the file is made durable by a
    /// [`Disk::sync_filesystem`] of its batch.
    pub(crate) fn check_sync_file(&self, path: &Path) -> Result<(), Error> {
        self.faults
            .before(Step::SyncFile(path))
            .map_err(|e| Error::io("fsync", path, e))
    }

    /// fsync a directory, making the entries created, renamed or removed in it durable.
    pub(crate) fn sync_dir(&self, dir: &Path) -> Result<(), Error> {
        self.faults
            .before(Step::SyncDir(dir))
            .and_then(|()| {
                if self.sync {
                    File::open(dir)?.sync_all()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| Error::io("fsync directory", dir, e))
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> Result<(), Error> {
        self.faults
            .before(Step::Rename { from, to })
            .and_then(|()| fs::rename(from, to))
            .map_err(|e| Error::io("rename", from, e))
    }

    /// Writes `envelope` to `dir/ID.env` atomically: a temporary file in `tmp/`, fsync,
    /// rename over the old file, fsync of `dir`. A crash leaves either the old or the new
    /// envelope, never a mix; the temporary file is removed on failure (or at next start).
    pub(crate) fn replace_envelope(&self, envelope: &Envelope, dir: &Path) -> Result<(), Error> {
        let dest = Layout::file(dir, envelope.id, ENV_EXT);
        let text = envelope.to_toml(&dest)?;
        let n = self.rewrite_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .layout
            .tmp
            .join(format!("{}.{n}.rewrite.{ENV_EXT}", envelope.id));
        let guard = RemoveOnDrop::new(tmp.clone());
        let file = create_new(&tmp)?;
        write_all(&file, text.as_bytes(), &tmp)?;
        self.sync_file(&file, &tmp)?;
        drop(file);
        self.rename(&tmp, &dest)?;
        guard.disarm();
        self.sync_dir(dir)
    }

    /// Moves `path` into `corrupt/` under the same name (or `NAME.N` when taken) and returns
    /// the new path. Never deletes anything.
    pub(crate) fn quarantine(&self, path: &Path) -> Result<PathBuf, Error> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".to_owned());
        let mut dest = self.layout.corrupt.join(&name);
        let mut n = 1u32;
        while dest.symlink_metadata().is_ok() {
            dest = self.layout.corrupt.join(format!("{name}.{n}"));
            n += 1;
        }
        self.rename(path, &dest)?;
        Ok(dest)
    }
}

/// Creates a new file, private to the owner, failing if it exists.
pub(crate) fn create_new(path: &Path) -> Result<File, Error> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).map_err(|e| Error::io("create", path, e))
}

pub(crate) fn write_all(mut file: &File, bytes: &[u8], path: &Path) -> Result<(), Error> {
    file.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_file(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// Removes a file when dropped, unless disarmed: temporary files of failed or abandoned
/// writes never outlive the error.
#[derive(Debug)]
pub(crate) struct RemoveOnDrop {
    path: Option<PathBuf>,
}

impl RemoveOnDrop {
    pub(crate) fn new(path: PathBuf) -> RemoveOnDrop {
        RemoveOnDrop { path: Some(path) }
    }

    /// The file now lives on (it was renamed into place or is owned elsewhere).
    pub(crate) fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = remove_file(&path)
        {
            // Left for the start-up scan, which clears tmp/ and removes a lone .msg.
            tracing::warn!(error = %e, "could not remove abandoned spool file");
        }
    }
}

/// Reads and parses `path` as the envelope of `id`: bounded in size, UTF-8, a known version,
/// and the id inside matching the file name.
pub(crate) fn read_envelope(path: &Path, id: QueueId) -> Result<Envelope, Error> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_ENVELOPE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    parse_envelope(bytes, path, id)
}

/// Parses `bytes`, read from `path` (an envelope file, or the journal segment holding it), as
/// the envelope of `id`, with the checks of [`read_envelope`].
pub(crate) fn parse_envelope(bytes: Vec<u8>, path: &Path, id: QueueId) -> Result<Envelope, Error> {
    if bytes.len() as u64 > MAX_ENVELOPE_BYTES {
        return Err(Error::Inconsistent {
            path: path.to_owned(),
            reason: format!("envelope file larger than {MAX_ENVELOPE_BYTES} bytes"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| Error::Parse {
        path: path.to_owned(),
        reason: format!("not UTF-8: {e}"),
    })?;
    let envelope = Envelope::from_toml(&text, path)?;
    if envelope.id != id {
        return Err(Error::Inconsistent {
            path: path.to_owned(),
            reason: format!(
                "envelope says id {} but the file is named {id}",
                envelope.id
            ),
        });
    }
    Ok(envelope)
}

/// The size and CRC-32 of the content file at `path`, read in [`WRITE_BUFFER`] chunks.
///
/// [`WRITE_BUFFER`]: crate::WRITE_BUFFER
pub(crate) fn content_checksum(path: &Path) -> Result<(u64, u32), Error> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut checksum = crc32fast::Hasher::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; crate::WRITE_BUFFER];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| Error::io("read", path, e))?;
        let Some(chunk) = buffer.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        checksum.update(chunk);
        size += n as u64;
    }
    Ok((size, checksum.finalize()))
}

/// Checks the content file at `path` against the size and CRC-32 `envelope` recorded (an
/// envelope without a checksum only has its size checked); a mismatch is
/// [`Error::Inconsistent`], saying what differs.
pub(crate) fn check_content(path: &Path, envelope: &Envelope) -> Result<(), Error> {
    let (size, actual) = content_checksum(path)?;
    if size == envelope.size
        && envelope
            .content_crc32
            .is_none_or(|expected| expected == actual)
    {
        return Ok(());
    }
    let recorded = envelope
        .content_crc32
        .map_or_else(|| "no checksum".to_owned(), |c| format!("{c:08x}"));
    Err(Error::Inconsistent {
        path: path.to_owned(),
        reason: format!(
            "content is {size} bytes with CRC-32 {actual:08x}; the envelope recorded {} bytes with {recorded}",
            envelope.size
        ),
    })
}

/// Splits a spool file name into id and extension, if it has the form `ID.ext`.
pub(crate) fn parse_name(name: &str) -> Option<(QueueId, &str)> {
    let (stem, ext) = name.split_once('.')?;
    let id: QueueId = stem.parse().ok()?;
    // Only the canonical upper-case spelling names a spool file; `Display` writes no other.
    if stem != id.to_string() {
        return None;
    }
    Some((id, ext))
}
