//! The [`Spool`] handle: opening (lock + recovery), and every change to a queued message.
//!
//! State changes of one message (envelope rewrite, hold, release, remove) are serialised by a
//! small array of mutexes indexed by id, so two tasks cannot move and rewrite the same message
//! at once while different messages proceed in parallel. New messages need no such lock:
//! nobody else knows their id until the commit is done.

use std::collections::HashSet;
use std::fs::TryLockError;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;

use crate::commit::{CommitHandle, CommitStats, Committer, FilePlace, MessageWriter};
use crate::disk::{self, Disk, ENV_EXT, FaultInjector, Layout, MSG_EXT, NoFaults};
use crate::journal::{Journal, SEGMENT_SIZE, SharedJournal};
use crate::recover::{self, RecoveryReport};
use crate::recycle::FreeFiles;
use crate::{Envelope, Error, QueueId};

/// Number of per-message lock stripes.
const STRIPES: usize = 64;

/// How a spool behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// fsync files and directories. `true` in production: without it a 250 does not mean the
    /// message survives a power cut. Tests may turn it off for speed.
    pub sync: bool,
    /// Most messages one group commit (one sync) carries, e.g. 256.
    pub max_batch: usize,
    /// Most files of delivered messages kept in `free/` for reuse by new ones (0: none);
    /// see the `recycle` module for why.
    pub recycle: usize,
    /// Bytes of commit journal records after which the committer checkpoints (one `syncfs`)
    /// and switches segments; see the `journal` module. 16 MiB by default.
    pub journal_segment: u64,
}

impl Default for SpoolOptions {
    /// Production settings: `sync: true`, `max_batch: 256`, `recycle: 1024`,
    /// `journal_segment: 16 MiB`.
    fn default() -> Self {
        SpoolOptions {
            sync: true,
            max_batch: 256,
            recycle: 1024,
            journal_segment: SEGMENT_SIZE,
        }
    }
}

/// Handle to an open spool. Cheap to clone; all clones share the lock, the committer and the
/// per-message locks. The spool is closed (committer stopped, lock released) when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    disk: Disk,
    /// Ids created since the spool opened, while a deferred recovery scan is pending (the
    /// scan leaves them alone); `None` once it has run.
    created_during_recovery: Mutex<Option<HashSet<QueueId>>>,
    /// Declared before `lock` so it stops (finishing queued commits) before the lock goes.
    committer: Committer,
    /// The commit journal (`None` when the spool does not sync): small messages are
    /// committed through it, and removals are logged in it.
    journal: Option<Arc<SharedJournal>>,
    /// Files of delivered messages, reused for new ones.
    free: Arc<FreeFiles>,
    stripes: Vec<Mutex<()>>,
    /// Held for the life of the spool; the OS releases the lock when it is closed.
    _lock: File,
}

/// The queue scan of a spool opened with [`Spool::open_deferred`], still to run.
#[must_use = "the queued messages are only found by running the recovery"]
pub struct DeferredRecovery {
    spool: Spool,
    report: RecoveryReport,
}

impl DeferredRecovery {
    /// Scans `queue/` and `hold/` as [`Spool::open`] would, leaving alone every message
    /// created since the spool opened. Blocking; runs once.
    pub fn run(self) -> Result<RecoveryReport, Error> {
        let created = &self.spool.inner.created_during_recovery;
        let skip = |id: QueueId| {
            created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|ids| ids.contains(&id))
        };
        let result = recover::scan_messages(&self.spool.inner.disk, self.report, &skip);
        *created.lock().unwrap_or_else(|p| p.into_inner()) = None;
        result
    }
}

impl Spool {
    /// Opens (creating if needed) the spool at `dir`: takes the lock, runs the recovery scan
    /// (see [`RecoveryReport`]), starts the group committer.
    ///
    /// Fails with [`Error::Locked`] while another `Spool` (in any process) has it open.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<(Spool, RecoveryReport), Error> {
        Self::open_with_faults(dir, options, Arc::new(NoFaults))
    }

    /// Opens the spool ready for new mail at once, with the scan of `queue/` and `hold/` left
    /// to the returned [`DeferredRecovery`] (to run on another thread): start-up time then no
    /// longer grows with the queue. Only `tmp/` is cleared before returning.
    pub fn open_deferred(
        dir: &Path,
        options: SpoolOptions,
    ) -> Result<(Spool, DeferredRecovery), Error> {
        let (spool, report) = Self::open_inner(dir, options, Arc::new(NoFaults), true)?;
        Ok((spool.clone(), DeferredRecovery { spool, report }))
    }

    /// [`Spool::open`] with a [`FaultInjector`] consulted before every fsync and rename, for
    /// tests that need a write to fail.
    pub fn open_with_faults(
        dir: &Path,
        options: SpoolOptions,
        faults: Arc<dyn FaultInjector>,
    ) -> Result<(Spool, RecoveryReport), Error> {
        Self::open_inner(dir, options, faults, false)
    }

    fn open_inner(
        dir: &Path,
        options: SpoolOptions,
        faults: Arc<dyn FaultInjector>,
        deferred: bool,
    ) -> Result<(Spool, RecoveryReport), Error> {
        let layout = Layout::new(dir);
        layout.create()?;
        let lock = take_lock(&layout.lock)?;
        let disk = Disk::new(layout, options.sync, faults);
        let (journal, replay) = Journal::open(&disk, options.journal_segment)?;
        let mut report = if deferred {
            recover::clear_tmp(&disk)?
        } else {
            recover::recover(&disk)?
        };
        report.restored_from_journal = replay.restored;
        report
            .quarantined
            .extend(replay.quarantined.into_iter().map(|path| {
                let reason =
                    "damaged after a crash; the message was restored from the commit journal";
                (path, reason.to_owned())
            }));
        let free = Arc::new(FreeFiles::open(&disk.layout.free, options.recycle)?);
        let committer = Committer::start(disk.clone(), options.max_batch, journal.clone())?;
        tracing::info!(
            dir = %dir.display(),
            queued = report.queued.len(),
            held = report.held.len(),
            removed_incomplete = report.removed_incomplete.len(),
            quarantined = report.quarantined.len(),
            restored_from_journal = report.restored_from_journal.len(),
            "spool open"
        );
        let inner = Inner {
            disk,
            created_during_recovery: Mutex::new(deferred.then(HashSet::new)),
            committer,
            journal,
            free,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            _lock: lock,
        };
        Ok((
            Spool {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    /// Bytes available to the spool on its file system (for the daemon's low-space check).
    pub fn free_space(&self) -> Result<u64, Error> {
        let dir = &self.inner.disk.layout.queue;
        rustix::fs::statvfs(dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .map_err(|e| Error::io("statvfs", dir, std::io::Error::from(e)))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.disk.layout.root
    }

    /// Starts a new message: a fresh [`QueueId`] and a writer for its content (kept in
    /// memory while it fits the commit journal, else in its content file).
    ///
    /// While a deferred recovery is pending, the id is registered as new *before* its file
    /// exists, so a scan that lists the file always knows to leave it alone.
    pub fn create(&self) -> Result<MessageWriter, Error> {
        let id = QueueId::generate();
        if let Some(ids) = self
            .inner
            .created_during_recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            ids.insert(id);
        }
        let place = FilePlace {
            queue_dir: self.inner.disk.layout.queue.clone(),
            free: Arc::clone(&self.inner.free),
        };
        MessageWriter::create(id, place, self.inner.journal.is_some())
    }

    /// Hands a finished message to the group committer. `envelope.id` must be `writer.id()`.
    ///
    /// The spool sets `envelope.size` to the bytes written and `envelope.version` to the
    /// format it writes. For a message with a content file, this call writes the writer's
    /// last buffered chunk and the small envelope file (a recycled content file is cut to
    /// length and renamed into `queue/`); a message kept in memory goes to the journal
    /// only. Then it returns; the sync happens on the committer thread, and the returned
    /// handle resolves when it is done.
    pub fn commit(&self, writer: MessageWriter, envelope: Envelope) -> CommitHandle {
        self.inner
            .committer
            .submit(&self.inner.disk, &self.inner.free, writer, envelope)
    }

    /// Counters of the group committer so far.
    pub fn commit_stats(&self) -> CommitStats {
        let mut stats = self.inner.committer.stats();
        stats.written_out = self
            .inner
            .journal
            .as_ref()
            .map_or(0, |journal| journal.written_out());
        stats
    }

    /// Reads the envelope of message `id` from `queue/` or `hold/`.
    pub fn load_envelope(&self, id: QueueId) -> Result<Envelope, Error> {
        let _guard = self.lock(id);
        let (dir, _) = self.locate(id)?;
        disk::read_envelope(&Layout::file(dir, id, ENV_EXT), id)
    }

    /// Replaces the stored envelope of `envelope.id` (in `queue/` or `hold/`, wherever it is)
    /// atomically: temporary file, fsync, rename, directory fsync. Used after every delivery
    /// attempt to record recipient states and the next attempt time.
    ///
    /// `size` should be left as loaded (start-up checks it against the content file);
    /// `version` is always written as the current format.
    pub fn update_envelope(&self, envelope: &Envelope) -> Result<(), Error> {
        let _guard = self.lock(envelope.id);
        let (dir, _) = self.locate(envelope.id)?;
        let mut envelope = envelope.clone();
        envelope.version = crate::envelope::ENVELOPE_VERSION;
        self.inner.disk.replace_envelope(&envelope, dir)
    }

    /// Opens message `id`'s content for reading (for delivery or a DSN).
    pub fn open_content(&self, id: QueueId) -> Result<File, Error> {
        let _guard = self.lock(id);
        let (dir, _) = self.locate(id)?;
        let path = Layout::file(dir, id, MSG_EXT);
        File::open(&path).map_err(|e| Error::io("open", &path, e))
    }

    /// The content of message `id` if it is held in the commit journal alone, read from its
    /// record without writing the message out; `None` when it has files — then
    /// [`Spool::open_content`] reads it. For delivery attempts that have no copy in memory.
    pub fn read_unwritten(&self, id: QueueId) -> Result<Option<Vec<u8>>, Error> {
        let _guard = self.lock(id);
        match &self.inner.journal {
            Some(journal) => journal.read_unwritten(id),
            None => Ok(None),
        }
    }

    /// Deletes message `id` (after delivery, or by the operator): the removal is logged in the
    /// commit journal, then its files (if it has any: a message durable in the journal only
    /// has none) go to the pool in `free/` for reuse, or are unlinked when the pool is full.
    /// The envelope goes first, so a crash part-way leaves only a `.msg`, which start-up
    /// removes as incomplete.
    ///
    /// Nothing is fsync'd: the journal record and the renames are visible at once to every
    /// process (and so survive `kill -9`), and should a power loss undo them, the message is
    /// delivered again —
    /// at-least-once, as promised. An fsync per delivered message would otherwise compete with
    /// the group commits that stand between clients and their 250 (Postfix does the same).
    pub fn remove(&self, id: QueueId) -> Result<(), Error> {
        let _guard = self.lock(id);
        if let Some(journal) = &self.inner.journal
            && journal.remove_unwritten(&self.inner.disk, id)
        {
            return Ok(());
        }
        let (dir, _) = self.locate(id)?;
        self.log_removed(id);
        self.inner.free.give(&Layout::file(dir, id, ENV_EXT))?;
        self.inner.free.give(&Layout::file(dir, id, MSG_EXT))
    }

    /// Deletes message `id` at once if it is held in the commit journal alone — no file is
    /// touched, one removal record goes into the journal's page cache — and says whether it
    /// did. Never waits: `false` also when the message's lock or the journal is busy (a
    /// checkpoint holds the journal for milliseconds), so it may run on an async task;
    /// [`Spool::remove`], on a thread that may block, deletes what this left.
    pub fn try_remove_unwritten(&self, id: QueueId) -> bool {
        let Some(journal) = &self.inner.journal else {
            return false;
        };
        let stripe = &self.inner.stripes[self.stripe(id)];
        let _guard = match stripe.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        journal.try_remove_unwritten(&self.inner.disk, id)
    }

    /// Files kept in `free/` for reuse right now.
    pub fn recyclable_files(&self) -> usize {
        self.inner.free.len()
    }

    /// Checks message `id`'s content against the size and CRC-32 its envelope recorded at
    /// commit (an envelope without a checksum passes). Reads the whole content; meant for
    /// messages this process did not write itself — those found at start-up — before they
    /// are delivered, since a power loss may have kept an envelope whose content did not
    /// reach the disk.
    pub fn verify_content(&self, envelope: &Envelope) -> Result<(), Error> {
        if envelope.content_crc32.is_none() {
            return Ok(());
        }
        let id = envelope.id;
        let _guard = self.lock(id);
        let (dir, _) = self.locate(id)?;
        disk::check_content(&Layout::file(dir, id, MSG_EXT), envelope)
    }

    /// Moves both files of message `id` to `corrupt/` (never deleting them) and returns their
    /// new paths; for content that failed [`Spool::verify_content`].
    pub fn quarantine(&self, id: QueueId) -> Result<Vec<PathBuf>, Error> {
        let _guard = self.lock(id);
        let (dir, _) = self.locate(id)?;
        let disk = &self.inner.disk;
        self.log_removed(id);
        let mut moved = Vec::new();
        for ext in [ENV_EXT, MSG_EXT] {
            let path = Layout::file(dir, id, ext);
            if path.exists() {
                moved.push(disk.quarantine(&path)?);
            }
        }
        disk.sync_dir(dir)?;
        disk.sync_dir(&disk.layout.corrupt)?;
        Ok(moved)
    }

    /// Moves message `id` to `hold/` with `reason` recorded in its envelope; held messages
    /// are not delivered until released. Holding a held message updates the reason.
    pub fn hold(&self, id: QueueId, reason: &str) -> Result<(), Error> {
        let _guard = self.lock(id);
        let (dir, held) = self.locate(id)?;
        let mut envelope = disk::read_envelope(&Layout::file(dir, id, ENV_EXT), id)?;
        let layout = &self.inner.disk.layout;
        if !held {
            self.move_message(id, &layout.queue, &layout.hold)?;
        }
        envelope.held_reason = Some(reason.to_owned());
        self.inner.disk.replace_envelope(&envelope, &layout.hold)
    }

    /// Moves held message `id` back to `queue/` and clears its hold reason. Releasing a
    /// message that is not held does nothing. When it is next due is for the caller to set
    /// with [`Spool::update_envelope`].
    pub fn release(&self, id: QueueId) -> Result<(), Error> {
        let _guard = self.lock(id);
        let (dir, held) = self.locate(id)?;
        if !held {
            return Ok(());
        }
        let mut envelope = disk::read_envelope(&Layout::file(dir, id, ENV_EXT), id)?;
        let layout = &self.inner.disk.layout;
        self.move_message(id, &layout.hold, &layout.queue)?;
        envelope.held_reason = None;
        self.inner.disk.replace_envelope(&envelope, &layout.queue)
    }

    /// Moves both files of `id` from `from` to `to`: envelope first, content second, then
    /// both directories synced. A crash in between leaves the envelope in `to` and the
    /// content in `from`, which start-up completes (the envelope's directory wins).
    fn move_message(&self, id: QueueId, from: &Path, to: &Path) -> Result<(), Error> {
        let disk = &self.inner.disk;
        let env_from = Layout::file(from, id, ENV_EXT);
        let env_to = Layout::file(to, id, ENV_EXT);
        disk.rename(&env_from, &env_to)?;
        if let Err(error) = disk.rename(
            &Layout::file(from, id, MSG_EXT),
            &Layout::file(to, id, MSG_EXT),
        ) {
            // Put the envelope back so the message stays whole where it was. Should that
            // fail too, start-up still finds envelope and content and reunites them.
            if let Err(e) = disk.rename(&env_to, &env_from) {
                tracing::error!(queue_id = %id, error = %e, "could not undo a half-done move; start-up will finish it");
            }
            return Err(error);
        }
        disk.sync_dir(to)?;
        disk.sync_dir(from)
    }

    /// Logs in the journal, before the files of `id` leave `queue/`, that it is gone, so that
    /// a replay after a crash does not bring it back. Should that fail, the removal goes on:
    /// the worst outcome is the message delivered again after a crash (at-least-once).
    fn log_removed(&self, id: QueueId) {
        if let Some(journal) = &self.inner.journal
            && let Err(e) = journal.log_removed(&self.inner.disk, &[id], false)
        {
            tracing::warn!(queue_id = %id, error = %e, "could not log a removal in the commit journal");
        }
    }

    /// Where message `id` lives: its directory and whether that is `hold/`. A message
    /// durable in the journal only is first written out to `queue/`, so that every change
    /// by id works on files.
    fn locate(&self, id: QueueId) -> Result<(&Path, bool), Error> {
        if let Some(journal) = &self.inner.journal {
            journal.write_out(&self.inner.disk, id)?;
        }
        let layout = &self.inner.disk.layout;
        if Layout::file(&layout.queue, id, ENV_EXT).exists() {
            Ok((&layout.queue, false))
        } else if Layout::file(&layout.hold, id, ENV_EXT).exists() {
            Ok((&layout.hold, true))
        } else {
            Err(Error::NotFound {
                id,
                dir: layout.root.clone(),
            })
        }
    }

    /// The lock stripe of message `id`.
    fn lock(&self, id: QueueId) -> MutexGuard<'_, ()> {
        // The mutex guards no data, only the order of file operations; a panic while it was
        // held leaves nothing inconsistent in memory, so poisoning is ignored.
        self.inner.stripes[self.stripe(id)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Index of message `id`'s lock stripe.
    fn stripe(&self, id: QueueId) -> usize {
        let mut hasher = std::hash::DefaultHasher::new();
        id.hash(&mut hasher);
        (hasher.finish() % self.inner.stripes.len() as u64) as usize
    }
}

/// Opens and locks `DIR/lock`, then records this process's id in it for humans.
fn take_lock(path: &PathBuf) -> Result<File, Error> {
    let mut options = OpenOptions::new();
    // No truncation before the lock is ours: the file may hold the running daemon's pid.
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .map_err(|e| Error::io("open lock file", path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = (&file)
                .take(32)
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(Error::Locked {
                path: path.clone(),
                pid,
            });
        }
        Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| Error::io("write lock file", path, e))?;
    Ok(file)
}
