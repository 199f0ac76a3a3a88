//! Writing a new message and making it durable: the writer, the group committer and the
//! [`Durable`] proof.
//!
//! A connection task streams content into a [`MessageWriter`] — held in memory while it is
//! small enough for the commit journal, else written to `queue/ID.msg` (or a recycled file
//! from `free/` renamed there at commit) through a bounded buffer — then calls
//! `Spool::commit`. A message with a content file gets `queue/ID.env` next to it — the
//! envelope is written last, and a `.msg` without its `.env` is an incomplete write that
//! recovery removes. Either way the message goes to the committer thread, which takes every
//! request waiting (up to `max_batch`) and makes the whole batch durable before answering
//! each waiter with a [`Durable`]: the messages in memory by one `fdatasync` of the commit
//! journal holding their records (they get no files; see the `journal` module), those with
//! files by one `syncfs(2)` (file data, metadata and directory entries of the whole file
//! system). Either way concurrent messages share the sync.
//!
//! `Durable` has a private field and is built only here, after that sync; the daemon's
//! function that writes the 250 takes one, so "250 means durable" is checked by the compiler.
//! On any failure the waiter gets an `Err` (the daemon answers 451) and the message's files
//! are removed, from `queue/` too if they had got there.
//!
//! Scheduling deliveries is the queue manager's job; this module ends at "it is on disk".

use std::fs::File;
use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::disk::{self, Disk, ENV_EXT, Layout, MSG_EXT, RemoveOnDrop, Step};
use crate::envelope::ENVELOPE_VERSION;
use crate::journal::{JOURNAL_CONTENT_MAX, Journal, SharedJournal, Switch};
use crate::recycle::{FreeFiles, Recycled};
use crate::{Envelope, Error, QueueId};

/// Capacity of a writer's buffer: content reaches the file in chunks of at most this size,
/// so a 35 MiB message never sits in memory.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// Proof that a message is on disk: its record in the commit journal synced, or its content
/// and envelope files in `queue/` synced by a `syncfs`. Only the spool can make one.
#[derive(Debug)]
#[must_use = "a Durable is the licence to answer 250; dropping it answers nothing"]
pub struct Durable {
    envelope: Envelope,
    content: Option<Vec<u8>>,
}

impl Durable {
    /// The id of the durable message (for the 250 reply and the log).
    pub fn id(&self) -> QueueId {
        self.envelope.id
    }

    /// The envelope as stored (with `size`, `content_crc32` and `version` filled in by the
    /// spool), for handing the message to the queue manager.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The content as committed, when it was kept in memory for the journal (small
    /// messages); lets the first delivery go without files. `None` after the first call.
    pub fn take_content(&mut self) -> Option<Vec<u8>> {
        self.content.take()
    }
}

/// Streams one message's content: into memory while it may still go into the commit
/// journal, else to its file.
///
/// With a journaling spool, content up to [`JOURNAL_CONTENT_MAX`] bytes stays in memory and
/// no file is made: the commit puts it in the journal only (see the `journal` module), and
/// files are written only if the message stays queued (deferred, held, or still queued at a
/// checkpoint). Content beyond that limit, or any content of a
/// spool that does not journal, goes through a buffer of [`WRITE_BUFFER`] bytes into
/// `queue/ID.msg`, or into a recycled file in `free/` that the commit renames to
/// `queue/ID.msg` (see the `recycle` module). A CRC-32 of the content is kept as it is
/// written and stored in the envelope. Dropping the writer without passing it to
/// `Spool::commit` removes its file, so a refused or aborted message never stays in `queue/`
/// (and a crash leaves a `.msg` without `.env`, which recovery removes, or a file in `free/`,
/// which is reused).
#[derive(Debug)]
pub struct MessageWriter {
    id: QueueId,
    written: u64,
    checksum: crc32fast::Hasher,
    /// The content while it is held in memory for the journal (`None` once it went to a file,
    /// or when the spool does not journal).
    memory: Option<Vec<u8>>,
    /// The content file, once there is one.
    file: Option<ContentFile>,
    /// Where the content file is made when the content outgrows memory.
    place: FilePlace,
}

/// A message's content file being written.
#[derive(Debug)]
struct ContentFile {
    path: PathBuf,
    out: BufWriter<File>,
    /// Whether `path` is a recycled file in `free/`, to be cut to length and renamed at commit.
    recycled: bool,
    /// Removes `path` when the writer is dropped; taken over by the commit.
    guard: RemoveOnDrop,
}

/// Where a writer makes its content file: a recycled one from the pool, else a new
/// `queue/ID.msg`.
#[derive(Debug)]
pub(crate) struct FilePlace {
    pub(crate) queue_dir: PathBuf,
    pub(crate) free: Arc<FreeFiles>,
}

impl ContentFile {
    fn create(place: &FilePlace, id: QueueId) -> Result<ContentFile, Error> {
        let (path, file, recycled) = match place.free.take() {
            Some(r) => (r.path, r.file, true),
            None => {
                let path = Layout::file(&place.queue_dir, id, MSG_EXT);
                let file = disk::create_new(&path)?;
                (path, file, false)
            }
        };
        Ok(ContentFile {
            guard: RemoveOnDrop::new(path.clone()),
            path,
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            recycled,
        })
    }
}

impl MessageWriter {
    /// Starts the content of the new message `id`; `journaled` keeps content that fits the
    /// commit journal in memory, otherwise the file is made at once.
    pub(crate) fn create(
        id: QueueId,
        place: FilePlace,
        journaled: bool,
    ) -> Result<MessageWriter, Error> {
        let file = if journaled {
            None
        } else {
            Some(ContentFile::create(&place, id)?)
        };
        Ok(MessageWriter {
            id,
            written: 0,
            checksum: crc32fast::Hasher::new(),
            memory: journaled.then(Vec::new),
            file,
            place,
        })
    }

    /// The id the message will have; the envelope given to `commit` must carry it.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Content bytes accepted so far (in memory, written to the file or waiting in the
    /// buffer).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// The content file being written (`queue/ID.msg`, or a recycled file in `free/` until
    /// the commit); `None` while the content is only in memory.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Moves the content from memory into a new content file, for content that has outgrown
    /// the journal.
    fn spill(&mut self) -> io::Result<&mut ContentFile> {
        let mut file = ContentFile::create(&self.place, self.id).map_err(io::Error::other)?;
        if let Some(memory) = &self.memory {
            file.out.get_mut().write_all(memory)?;
        }
        self.memory = None;
        Ok(self.file.insert(file))
    }
}

impl Write for MessageWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match (&mut self.file, &mut self.memory) {
            (None, Some(memory)) if memory.len() + buf.len() <= JOURNAL_CONTENT_MAX => {
                memory.extend_from_slice(buf);
                buf.len()
            }
            (Some(file), _) => file.out.write(buf)?,
            (None, _) => self.spill()?.out.write(buf)?,
        };
        self.written += n as u64;
        self.checksum.update(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.out.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Discard the buffered tail instead of writing it to a file about to be removed;
            // the guard then removes the file.
            let ContentFile { out, guard, .. } = file;
            let (_file, _unwritten) = out.into_parts();
            drop(guard);
        }
    }
}

/// A message on its way through the committer: its journal record's parts and the removal
/// guards that undo it on failure. Guards are declared envelope first so that, if both are
/// dropped, the `.env` goes before the `.msg` (a crash in between leaves a lone `.msg`, which
/// start-up treats as incomplete).
struct Pending {
    envelope: Envelope,
    /// Envelope text and content for the journal record, the message's only copy (`None`: the
    /// message has files instead).
    record: Option<(Vec<u8>, Vec<u8>)>,
    env_guard: Option<RemoveOnDrop>,
    msg_guard: Option<RemoveOnDrop>,
    reply: oneshot::Sender<Result<Durable, Error>>,
}

impl Pending {
    fn id(&self) -> QueueId {
        self.envelope.id
    }

    /// Removes whatever files the message has (via the guards), counts the failure, then
    /// tells the waiter (so a waiter that wakes sees the files gone and the count updated).
    fn fail(mut self, error: Error, stats: &Stats) {
        tracing::warn!(queue_id = %self.id(), error = %error, "commit failed; message not queued");
        drop(self.env_guard.take());
        drop(self.msg_guard.take());
        stats.failed.fetch_add(1, Ordering::Relaxed);
        // The waiter may be gone (client hung up); nothing more to undo then.
        let _ = self.reply.send(Err(error));
    }
}

/// Counters of the group committer, for metrics and for the benchmark that reports how many
/// messages one sync covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Batches processed (each made durable by one sync; one holding both journal records and
    /// message files, by both kinds).
    pub batches: u64,
    /// Batches made durable by an `fdatasync` of the commit journal.
    pub journal_syncs: u64,
    /// `syncfs` calls: batches with a message too large for the journal, plus checkpoints.
    pub filesystem_syncs: u64,
    /// Full journal segments switched: by a checkpoint (counted in `filesystem_syncs` too),
    /// or by carrying the live records forward, without files or `syncfs`.
    pub segment_switches: u64,
    /// Messages processed in those batches, committed or failed.
    pub messages: u64,
    /// The largest batch so far.
    pub largest_batch: u64,
    /// Messages whose commit failed.
    pub failed: u64,
    /// Small messages written out of the journal into `queue/` files (deferred, held, read
    /// back, or still queued at a checkpoint); the others never had files.
    pub written_out: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    batches: AtomicU64,
    journal_syncs: AtomicU64,
    filesystem_syncs: AtomicU64,
    segment_switches: AtomicU64,
    messages: AtomicU64,
    largest_batch: AtomicU64,
    failed: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> CommitStats {
        CommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            journal_syncs: self.journal_syncs.load(Ordering::Relaxed),
            filesystem_syncs: self.filesystem_syncs.load(Ordering::Relaxed),
            segment_switches: self.segment_switches.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            written_out: 0,
        }
    }
}

/// The answer to `Spool::commit`: resolves to [`Durable`] once the message is on disk, or to
/// the error that stopped it.
///
/// Await it from async code, or call [`CommitHandle::wait`] from a plain thread. Dropping it
/// before it resolves withdraws the message: nobody can answer 250 for it any more, so the
/// committer removes it again rather than deliver mail the client was never told was taken.
#[derive(Debug)]
#[must_use = "the message is not known to be durable until the handle resolves"]
pub struct CommitHandle {
    receiver: oneshot::Receiver<Result<Durable, Error>>,
    dir: PathBuf,
}

impl CommitHandle {
    fn stopped(&self) -> Error {
        Error::CommitterStopped {
            dir: self.dir.clone(),
        }
    }

    /// Blocks the calling thread until the commit is done.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime (tokio forbids blocking there); await the
    /// handle instead.
    pub fn wait(self) -> Result<Durable, Error> {
        let stopped = self.stopped();
        self.receiver.blocking_recv().unwrap_or(Err(stopped))
    }

    /// A handle that is already resolved with `error`.
    fn failed(error: Error, dir: &Path) -> CommitHandle {
        let (sender, receiver) = oneshot::channel();
        let _ = sender.send(Err(error));
        CommitHandle {
            receiver,
            dir: dir.to_owned(),
        }
    }
}

impl Future for CommitHandle {
    type Output = Result<Durable, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.receiver).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(this.stopped())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The sending side of the committer, owned by the `Spool`.
#[derive(Debug)]
pub(crate) struct Committer {
    sender: Option<mpsc::Sender<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<Stats>,
    root: PathBuf,
}

impl Committer {
    /// Starts the committer thread; with a `journal`, small messages are committed into it.
    pub(crate) fn start(
        disk: Disk,
        max_batch: usize,
        journal: Option<Arc<SharedJournal>>,
    ) -> Result<Committer, Error> {
        let (sender, receiver) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let root = disk.layout.root.clone();
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || {
                run(
                    &disk,
                    &receiver,
                    max_batch.max(1),
                    &thread_stats,
                    journal.as_deref(),
                )
            })
            .map_err(|e| Error::io("start committer thread for", &root, e))?;
        Ok(Committer {
            sender: Some(sender),
            thread: Some(thread),
            stats,
            root,
        })
    }

    pub(crate) fn stats(&self) -> CommitStats {
        self.stats.snapshot()
    }

    /// Queues a finished message for the committer: content kept in memory goes into the
    /// journal only; otherwise the content file is finished (in `queue/`) and the envelope
    /// written next to it.
    pub(crate) fn submit(
        &self,
        disk: &Disk,
        free: &FreeFiles,
        mut writer: MessageWriter,
        mut envelope: Envelope,
    ) -> CommitHandle {
        if envelope.id != writer.id {
            let path = writer.path().map_or_else(
                || Layout::file(&disk.layout.queue, writer.id, MSG_EXT),
                Path::to_owned,
            );
            return CommitHandle::failed(
                Error::IdMismatch {
                    envelope: envelope.id,
                    path,
                },
                &self.root,
            );
        }
        // The spool knows the content size, checksum and the format it writes; the caller's
        // values for these are overwritten rather than trusted.
        envelope.size = writer.written;
        envelope.content_crc32 = Some(writer.checksum.clone().finalize());
        envelope.version = ENVELOPE_VERSION;

        let queued_env = Layout::file(&disk.layout.queue, writer.id, ENV_EXT);
        let text = match envelope.to_toml(&queued_env) {
            Ok(text) => text.into_bytes(),
            Err(error) => return CommitHandle::failed(error, &self.root),
        };
        let (reply, receiver) = oneshot::channel();
        let pending = match writer.memory.take() {
            Some(content) => Pending {
                envelope,
                record: Some((text, content)),
                env_guard: None,
                msg_guard: None,
                reply,
            },
            None => {
                let msg_guard = match finish_content(disk, writer) {
                    Ok(finished) => finished,
                    Err(error) => return CommitHandle::failed(error, &self.root),
                };
                if let Err(error) = write_envelope_file(disk, &text, &queued_env, free) {
                    drop(msg_guard);
                    return CommitHandle::failed(error, &self.root);
                }
                Pending {
                    envelope,
                    record: None,
                    env_guard: Some(RemoveOnDrop::new(queued_env)),
                    msg_guard: Some(msg_guard),
                    reply,
                }
            }
        };
        let handle = CommitHandle {
            receiver,
            dir: self.root.clone(),
        };
        match &self.sender {
            Some(sender) => {
                if let Err(mpsc::SendError(pending)) = sender.send(pending) {
                    let error = Error::CommitterStopped {
                        dir: self.root.clone(),
                    };
                    pending.fail(error, &self.stats);
                }
            }
            None => {
                let error = Error::CommitterStopped {
                    dir: self.root.clone(),
                };
                pending.fail(error, &self.stats);
            }
        }
        handle
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish what is queued and exit.
        drop(self.sender.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(dir = %self.root.display(), "spool committer thread panicked");
        }
    }
}

/// Flushes the writer's buffer and, for a recycled file, cuts it to the new content's length
/// and renames it to `queue/ID.msg`. Returns the guard that removes the file should the commit
/// fail.
fn finish_content(disk: &Disk, mut writer: MessageWriter) -> Result<RemoveOnDrop, Error> {
    let queued = Layout::file(&disk.layout.queue, writer.id, MSG_EXT);
    let ContentFile {
        path,
        out,
        recycled,
        guard,
    } = writer.file.take().ok_or_else(|| {
        Error::io(
            "commit",
            &queued,
            io::Error::other("writer already finished"),
        )
    })?;
    // From here on `guard` removes the file on every early return.
    let file = out
        .into_inner()
        .map_err(|e| Error::io("write", &path, e.into_error()))?;
    if !recycled {
        return Ok(guard);
    }
    file.set_len(writer.written)
        .map_err(|e| Error::io("truncate", &path, e))?;
    disk.rename(&path, &queued)?;
    guard.disarm();
    Ok(RemoveOnDrop::new(queued))
}

/// Writes `queue/ID.env` with the envelope's text, after the content is complete: its
/// presence is what marks the message whole. A recycled file is written over the old text and
/// cut to length while still in `free/`, then renamed; otherwise the file is created in
/// place. The committer makes it durable.
fn write_envelope_file(
    disk: &Disk,
    text: &[u8],
    path: &Path,
    free: &FreeFiles,
) -> Result<(), Error> {
    let Some(recycled) = free.take() else {
        let guard = RemoveOnDrop::new(path.to_owned());
        let file = disk::create_new(path)?;
        disk::write_all(&file, text, path)?;
        guard.disarm();
        return Ok(());
    };
    let Recycled { file, path: from } = recycled;
    let guard = RemoveOnDrop::new(from.clone());
    // Written over the old text, then cut to length. Should a crash keep the old length or
    // tail, the envelope does not parse or does not match the content: replay rewrites it
    // from the journal (or, for a message too large for the journal, the `syncfs` before the
    // 250 has made the length durable).
    disk::write_all(&file, text, &from)?;
    file.set_len(text.len() as u64)
        .map_err(|e| Error::io("truncate", &from, e))?;
    disk.rename(&from, path)?;
    guard.disarm();
    Ok(())
}

/// The committer thread: one batch at a time until the channel closes, then one checkpoint
/// of the journal, so that the next start has nothing to replay.
fn run(
    disk: &Disk,
    receiver: &mpsc::Receiver<Pending>,
    max_batch: usize,
    stats: &Stats,
    journal: Option<&SharedJournal>,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .messages
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .largest_batch
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        commit_batch(disk, batch, journal, stats);
    }
    if let Some(journal) = journal
        && let Err(e) = journal.lock().checkpoint(disk)
    {
        tracing::warn!(error = %e, "journal checkpoint at close failed; the next start replays it");
    }
}

/// Commits one batch, answering every waiter.
fn commit_batch(disk: &Disk, batch: Vec<Pending>, journal: Option<&SharedJournal>, stats: &Stats) {
    let queue = &disk.layout.queue;
    if let Err(e) = disk.faults().before(Step::BeginBatch {
        messages: batch.len(),
    }) {
        let error = Error::io("commit batch into", queue, e);
        for pending in batch {
            pending.fail(error.duplicate(), stats);
        }
        return;
    }

    // 1. Content and envelope on disk, or in the journal: one sync for the batch.
    let results = sync_batch(disk, &batch, journal, stats);
    let mut synced = Vec::with_capacity(batch.len());
    for (pending, result) in batch.into_iter().zip(results) {
        match result {
            Ok(()) => synced.push(pending),
            Err(error) => pending.fail(error, stats),
        }
    }

    // 2. Only now may anyone say 250.
    let mut withdrawn = Vec::new();
    for mut pending in synced {
        // Durable: the guards must no longer remove anything.
        if let Some(guard) = pending.env_guard.take() {
            guard.disarm();
        }
        if let Some(guard) = pending.msg_guard.take() {
            guard.disarm();
        }
        let id = pending.id();
        let durable = Durable {
            envelope: pending.envelope,
            content: pending.record.map(|(_, content)| content),
        };
        if pending.reply.send(Ok(durable)).is_err() {
            withdrawn.push(id);
        }
    }
    if !withdrawn.is_empty() {
        withdraw(disk, &withdrawn, journal, stats);
    }
}

/// Removes messages whose commit handle was dropped: no 250 can be sent for them, and mail
/// that was never acknowledged must not be delivered. Their removal is logged (and synced)
/// in the journal first, so a crash in between cannot bring them back; then the files of
/// those that have any go, envelope before content, as in `Spool::remove`.
fn withdraw(disk: &Disk, ids: &[QueueId], journal: Option<&SharedJournal>, stats: &Stats) {
    let queue = &disk.layout.queue;
    if let Some(journal) = journal
        && let Err(e) = journal.log_removed(disk, ids, true)
    {
        tracing::warn!(error = %e, "could not log withdrawn messages in the commit journal");
    }
    for &id in ids {
        tracing::info!(queue_id = %id, "commit abandoned by its caller; removing the message");
        let removed = disk::remove_file(&Layout::file(queue, id, ENV_EXT))
            .and_then(|()| disk::remove_file(&Layout::file(queue, id, MSG_EXT)));
        if let Err(e) = removed {
            tracing::warn!(queue_id = %id, error = %e, "could not remove abandoned message");
        }
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    if let Err(e) = disk.sync_dir(queue) {
        tracing::warn!(error = %e, "could not sync removal of abandoned messages");
    }
}

/// Makes every message of `batch` durable: the messages kept in memory by one `fdatasync`
/// of the journal holding their records, those with files by one `syncfs` (whose cost does
/// not grow with the number of files). A batch of small messages only, the common case,
/// needs just the first. One result per message, in order.
fn sync_batch(
    disk: &Disk,
    batch: &[Pending],
    journal: Option<&SharedJournal>,
    stats: &Stats,
) -> Vec<Result<(), Error>> {
    let queue = &disk.layout.queue;
    let mut results: Vec<Result<(), Error>> = batch
        .iter()
        .map(|p| {
            if p.record.is_some() {
                return Ok(());
            }
            let id = p.id();
            disk.check_sync_file(&Layout::file(queue, id, MSG_EXT))?;
            disk.check_sync_file(&Layout::file(queue, id, ENV_EXT))
        })
        .collect();
    let mut fail = |journaled: bool, error: Error| {
        for (pending, result) in batch.iter().zip(results.iter_mut()) {
            if pending.record.is_some() == journaled && result.is_ok() {
                *result = Err(error.duplicate());
            }
        }
    };
    if batch.iter().any(|p| p.record.is_some()) {
        stats.journal_syncs.fetch_add(1, Ordering::Relaxed);
        let synced = match journal {
            Some(journal) => journal_batch(disk, journal, batch, stats),
            None => Err(Error::io(
                "commit",
                queue,
                io::Error::other("content kept for a journal the spool does not have"),
            )),
        };
        if let Err(error) = synced {
            fail(true, error);
        }
    }
    if batch.iter().any(|p| p.record.is_none()) {
        stats.filesystem_syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = disk.sync_filesystem(queue) {
            fail(false, error);
        }
        if let Some(journal) = journal {
            checkpoint_if_full(disk, journal, stats);
        }
    }
    results
}

/// Switches a full segment after a batch that was synced with `syncfs` (removals alone
/// would otherwise grow the segment without end); a failure only means a longer replay.
fn checkpoint_if_full(disk: &Disk, journal: &SharedJournal, stats: &Stats) {
    let mut journal = journal.lock();
    if !journal.is_full() {
        return;
    }
    if let Err(e) = switch_segment(disk, &mut journal, stats) {
        tracing::warn!(error = %e, "journal checkpoint failed; trying again after the next batch");
    }
}

/// Switches the journal's full segment and counts how: a checkpoint runs a `syncfs`.
fn switch_segment(disk: &Disk, journal: &mut Journal, stats: &Stats) -> Result<(), Error> {
    stats.segment_switches.fetch_add(1, Ordering::Relaxed);
    if journal.switch_segment(disk)? == Switch::Checkpoint {
        stats.filesystem_syncs.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Appends the records of the batch's messages kept in memory to the journal —
/// checkpointing a full segment first; a failed checkpoint fails the batch, since a new
/// header may have reached the other segment — and syncs it, outside the lock so that
/// removals need not wait for the disk. Once synced, the messages are registered as durable
/// in the journal only. Should the sync fail, they are logged as removed and that is synced
/// (they will be answered 451), so that a replay never brings back mail that was refused.
fn journal_batch(
    disk: &Disk,
    journal: &SharedJournal,
    batch: &[Pending],
    stats: &Stats,
) -> Result<(), Error> {
    let messages: Vec<(QueueId, &[u8], &[u8])> = batch
        .iter()
        .filter_map(|p| {
            p.record
                .as_ref()
                .map(|(envelope, content)| (p.id(), envelope.as_slice(), content.as_slice()))
        })
        .collect();
    let (segment, places) = {
        let mut journal = journal.lock();
        if journal.is_full() {
            switch_segment(disk, &mut journal, stats)?;
        }
        journal.append_committed(disk, &messages)?
    };
    if let Err(error) = segment.sync_data(disk) {
        let ids: Vec<QueueId> = messages.iter().map(|&(id, _, _)| id).collect();
        if let Err(e) = journal.log_removed(disk, &ids, true) {
            tracing::warn!(error = %e, "could not log refused messages in the commit journal");
        }
        return Err(error);
    }
    journal.register(places);
    Ok(())
}
