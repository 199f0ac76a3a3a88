//! Writing a new message and making it durable: the writer, the group committer and the
//! [`Durable`] proof.
//!
//! A connection task streams content into a [`MessageWriter`] (`queue/ID.msg`, or a recycled
//! file from `free/` renamed there at commit, through a bounded buffer), then calls
//! `Spool::commit`, which writes `queue/ID.env` — the envelope is written last, and a `.msg`
//! without its `.env` is an incomplete write that recovery removes — and hands the message to
//! the committer thread. The committer takes every request waiting (up
//! to `max_batch`), makes the whole batch durable with **one** sync, and only then answers
//! each waiter with a [`Durable`]: when every message of the batch is small, one `fdatasync`
//! of the commit journal holding their records (see the `journal` module); otherwise one
//! `syncfs(2)` (file data, metadata and directory entries of the whole file system). Either
//! way concurrent messages share the sync.
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
use crate::journal::{self, JOURNAL_CONTENT_MAX, SharedJournal};
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

    /// The content as committed, when the spool kept a copy for its journal (small messages);
    /// lets the first delivery skip reading the file back. `None` after the first call.
    pub fn take_content(&mut self) -> Option<Vec<u8>> {
        self.content.take()
    }
}

/// Streams one message's content to its file.
///
/// Writes go through a buffer of [`WRITE_BUFFER`] bytes into `queue/ID.msg`, or into a
/// recycled file in `free/` that the commit renames to `queue/ID.msg` (see the `recycle`
/// module). A CRC-32 of the content is kept as it is written and stored in the envelope.
/// Dropping the writer without passing it to `Spool::commit` removes its file, so a refused
/// or aborted message never stays in `queue/` (and a crash leaves a `.msg` without `.env`,
/// which recovery removes, or a file in `free/`, which is reused).
#[derive(Debug)]
pub struct MessageWriter {
    id: QueueId,
    path: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
    checksum: crc32fast::Hasher,
    /// Whether `path` is a recycled file in `free/`, to be cut to length and renamed at commit.
    recycled: bool,
    /// A copy of the content for the commit journal, while it is at most
    /// [`JOURNAL_CONTENT_MAX`] bytes (`None` beyond that, or when the spool does not journal).
    copy: Option<Vec<u8>>,
    /// Removes `path` when the writer is dropped; taken over by the commit.
    guard: Option<RemoveOnDrop>,
}

impl MessageWriter {
    /// Starts the content of the new message `id`: in `recycled` when the pool had a file,
    /// else in a new `queue_dir/ID.msg`; `journaled` keeps a copy for the commit journal.
    pub(crate) fn create(
        queue_dir: &Path,
        id: QueueId,
        recycled: Option<Recycled>,
        journaled: bool,
    ) -> Result<MessageWriter, Error> {
        let (path, file, recycled) = match recycled {
            Some(r) => (r.path, r.file, true),
            None => {
                let path = Layout::file(queue_dir, id, MSG_EXT);
                let file = disk::create_new(&path)?;
                (path, file, false)
            }
        };
        Ok(MessageWriter {
            id,
            guard: Some(RemoveOnDrop::new(path.clone())),
            path,
            out: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            written: 0,
            checksum: crc32fast::Hasher::new(),
            recycled,
            copy: journaled.then(Vec::new),
        })
    }

    /// The id the message will have; the envelope given to `commit` must carry it.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Content bytes accepted so far (written to the file or waiting in the buffer).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// The content file being written (`queue/ID.msg`, or a recycled file in `free/` until
    /// the commit).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn out(&mut self) -> io::Result<&mut BufWriter<File>> {
        // `out` is only taken by `commit` (which consumes the writer) and `drop`.
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("message writer already finished"))
    }
}

impl Write for MessageWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out()?.write(buf)?;
        self.written += n as u64;
        let written = buf.get(..n).unwrap_or(buf);
        self.checksum.update(written);
        if let Some(copy) = &mut self.copy {
            if copy.len() + written.len() <= JOURNAL_CONTENT_MAX {
                copy.extend_from_slice(written);
            } else {
                self.copy = None;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out()?.flush()
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            // Discard the buffered tail instead of writing it to a file about to be removed.
            let (_file, _unwritten) = out.into_parts();
        }
        // `guard` (still set unless committed) removes the temporary file after this.
    }
}

/// A message on its way through the committer: its journal record's parts and the removal
/// guards that undo it on failure. Guards are declared envelope first so that, if both are
/// dropped, the `.env` goes before the `.msg` (a crash in between leaves a lone `.msg`, which
/// start-up treats as incomplete).
struct Pending {
    envelope: Envelope,
    /// Envelope text and content for the journal record (`None`: too large to journal).
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
    /// Batches processed (each made durable by one sync).
    pub batches: u64,
    /// Batches made durable by an `fdatasync` of the commit journal.
    pub journal_syncs: u64,
    /// `syncfs` calls: batches with a message too large for the journal, plus checkpoints.
    pub filesystem_syncs: u64,
    /// Messages processed in those batches, committed or failed.
    pub messages: u64,
    /// The largest batch so far.
    pub largest_batch: u64,
    /// Messages whose commit failed.
    pub failed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    batches: AtomicU64,
    journal_syncs: AtomicU64,
    filesystem_syncs: AtomicU64,
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
            messages: self.messages.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
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

    /// Finishes the content file (in `queue/`), writes the envelope next to it and queues
    /// both for the committer.
    pub(crate) fn submit(
        &self,
        disk: &Disk,
        free: &FreeFiles,
        mut writer: MessageWriter,
        mut envelope: Envelope,
    ) -> CommitHandle {
        let queued_env = Layout::file(&disk.layout.queue, writer.id, ENV_EXT);
        if envelope.id != writer.id {
            return CommitHandle::failed(
                Error::IdMismatch {
                    envelope: envelope.id,
                    path: writer.path.clone(),
                },
                &self.root,
            );
        }
        // The spool knows the content size, checksum and the format it writes; the caller's
        // values for these are overwritten rather than trusted.
        envelope.size = writer.written;
        envelope.content_crc32 = Some(writer.checksum.clone().finalize());
        envelope.version = ENVELOPE_VERSION;

        let text = match envelope.to_toml(&queued_env) {
            Ok(text) => text.into_bytes(),
            Err(error) => return CommitHandle::failed(error, &self.root),
        };
        let content_copy = writer.copy.take();
        let msg_guard = match finish_content(disk, writer) {
            Ok(finished) => finished,
            Err(error) => return CommitHandle::failed(error, &self.root),
        };
        match write_envelope_file(disk, &text, &queued_env, free) {
            Ok(()) => {}
            Err(error) => {
                drop(msg_guard);
                return CommitHandle::failed(error, &self.root);
            }
        };

        let (reply, receiver) = oneshot::channel();
        let pending = Pending {
            envelope,
            record: content_copy.map(|content| (text, content)),
            env_guard: Some(RemoveOnDrop::new(queued_env)),
            msg_guard: Some(msg_guard),
            reply,
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
    let guard = writer.guard.take();
    let out = writer.out.take().ok_or_else(|| {
        Error::io(
            "commit",
            &writer.path,
            io::Error::other("writer already finished"),
        )
    })?;
    // From here on `guard` (if any) removes the file on every early return.
    let guard = guard.unwrap_or_else(|| RemoveOnDrop::new(writer.path.clone()));
    let file = out
        .into_inner()
        .map_err(|e| Error::io("write", &writer.path, e.into_error()))?;
    if !writer.recycled {
        return Ok(guard);
    }
    file.set_len(writer.written)
        .map_err(|e| Error::io("truncate", &writer.path, e))?;
    let queued = Layout::file(&disk.layout.queue, writer.id, MSG_EXT);
    disk.rename(&writer.path, &queued)?;
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
    let Recycled {
        file, path: from, ..
    } = recycled;
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
fn commit_batch(
    disk: &Disk,
    mut batch: Vec<Pending>,
    journal: Option<&SharedJournal>,
    stats: &Stats,
) {
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
    let results = sync_batch(disk, &mut batch, journal, stats);
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
/// in the journal first, so a crash in between cannot bring them back; envelope before
/// content, as in `Spool::remove`.
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

/// Makes every message of `batch` durable with one sync: an `fdatasync` of the journal
/// holding their records when all are small enough and the spool journals, else a `syncfs`
/// (whose cost does not grow with the number of files). One result per message, in order.
fn sync_batch(
    disk: &Disk,
    batch: &mut [Pending],
    journal: Option<&SharedJournal>,
    stats: &Stats,
) -> Vec<Result<(), Error>> {
    let queue = &disk.layout.queue;
    let checked: Vec<Result<(), Error>> = batch
        .iter()
        .map(|p| {
            let id = p.id();
            disk.check_sync_file(&Layout::file(queue, id, MSG_EXT))?;
            disk.check_sync_file(&Layout::file(queue, id, ENV_EXT))
        })
        .collect();
    let synced = match journal {
        Some(journal) if batch.iter().all(|p| p.record.is_some()) => {
            stats.journal_syncs.fetch_add(1, Ordering::Relaxed);
            journal_batch(disk, journal, batch, &checked, stats)
        }
        _ => {
            stats.filesystem_syncs.fetch_add(1, Ordering::Relaxed);
            let synced = disk.sync_filesystem(queue);
            if let Some(journal) = journal {
                checkpoint_if_full(disk, journal, stats);
            }
            synced
        }
    };
    match synced {
        Ok(()) => checked,
        Err(error) => checked
            .into_iter()
            .map(|_| Err(error.duplicate()))
            .collect(),
    }
}

/// Checkpoints a full segment after a batch that was synced with `syncfs` (removals alone
/// would otherwise grow the segment without end); a failure only means a longer replay.
fn checkpoint_if_full(disk: &Disk, journal: &SharedJournal, stats: &Stats) {
    let mut journal = journal.lock();
    if !journal.is_full() {
        return;
    }
    stats.filesystem_syncs.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = journal.checkpoint(disk) {
        tracing::warn!(error = %e, "journal checkpoint failed; trying again after the next batch");
    }
}

/// Appends one record per message that passed its checks to the journal — checkpointing a
/// full segment first; a failed checkpoint fails the batch, since a new header may have
/// reached the other segment — and syncs it, outside the lock so that removals need not wait
/// for the disk. Should the sync fail, the messages are logged as removed and that is synced
/// (they will be answered 451 and their files removed), so that a replay never brings back
/// mail that was refused.
fn journal_batch(
    disk: &Disk,
    journal: &SharedJournal,
    batch: &[Pending],
    checked: &[Result<(), Error>],
    stats: &Stats,
) -> Result<(), Error> {
    let segment = {
        let mut journal = journal.lock();
        if journal.is_full() {
            stats.filesystem_syncs.fetch_add(1, Ordering::Relaxed);
            journal.checkpoint(disk)?;
        }
        let generation = journal.generation();
        let mut records = Vec::new();
        for (pending, check) in batch.iter().zip(checked) {
            if let (Some((envelope, content)), Ok(())) = (&pending.record, check) {
                journal::encode_committed(
                    &mut records,
                    generation,
                    pending.id(),
                    envelope,
                    content,
                );
            }
        }
        journal.append(disk, &records)?
    };
    let synced = segment.sync_data(disk);
    if synced.is_err() {
        let ids: Vec<QueueId> = batch.iter().map(Pending::id).collect();
        if let Err(e) = journal.log_removed(disk, &ids, true) {
            tracing::warn!(error = %e, "could not log refused messages in the commit journal");
        }
    }
    synced
}
