//! The commit journal: how a group commit of small messages becomes durable with one
//! `fdatasync` of a preallocated file instead of a `syncfs` of the whole file system — and
//! why most small messages never get files at all.
//!
//! For a batch of small messages (content up to [`JOURNAL_CONTENT_MAX`], kept in memory by
//! the writer), the committer appends one record per message — id, envelope text, content —
//! to the active journal segment and `fdatasync`s it: one data write and one cache flush,
//! where a `syncfs` writes every dirty inode, directory block and bitmap of the file system
//! (measured on the benchmark VM: ~0.14 ms against ~1 ms). That record is then the message's
//! only copy: most relayed mail is delivered at the first attempt within milliseconds, and
//! its removal is one more record — no file is created, renamed or deleted for it.
//!
//! A message is **written out** of the journal into `queue/ID.msg` + `queue/ID.env` — the
//! files that delivery, recovery and the queue tools read otherwise — as soon as anything
//! needs them: any change or read by id (deferral after a failed attempt, hold, DSN,
//! `open_content`), or a checkpoint while it is still queued. The journal keeps the places
//! of the records not yet written out; the written files are not synced (the record still
//! covers them until the next checkpoint's `syncfs`). Messages too large for the journal
//! are written to files and synced with `syncfs`, as before.
//!
//! ```text
//! DIR/journal/0.log, 1.log   two segments used in turn; the one whose header has the higher
//!                            generation is active
//! record  = magic "EXRJ" | kind u8 | 3 zero bytes | generation u64 | length u32 | crc32 u32 | payload
//! kinds   = 0 segment header (empty payload, always at offset 0)
//!           1 committed: id (16 bytes) | envelope length u32 | envelope TOML | content
//!           2 removed:   id (16 bytes)
//! ```
//!
//! All integers are little-endian; the CRC-32 covers the bytes from `kind` to `length` and the
//! payload. A removal is logged *before* a message's files leave `queue/` (or, for a message
//! never written out, instead of touching files), so that after a crash a delivered, deleted
//! or refused message is not brought back. A delivered or deleted message's removal has no
//! sync of its own (at worst it is delivered again); a refused or withdrawn commit's is
//! synced. The journal is shared for this between the committer and the spool's removals.
//!
//! **Checkpoint.** At a clean close, and when the active segment is full while message files
//! depend on its records, the committer writes out every message still held in the journal
//! alone, runs one `syncfs` — now every message file and removal so far is on disk — and
//! starts the next generation in the other segment, whose old records then no longer count
//! (their generation is older). A clean stop therefore leaves every queued message in files.
//!
//! **Carrying forward.** When the segment is full but no file was written out of the journal
//! and no message with files was removed since the last `syncfs` — the usual case for a
//! relay whose mail leaves at the first attempt — nothing on disk depends on the old records
//! but the live messages' own. The committer then copies those records (as long as they
//! fill at most half a segment) into the other segment, syncs them, and only then writes and
//! syncs its new header: no file is created and the file system, which other programs may
//! have filled with dirty data, is not synced. Measured in docs/PERFORMANCE.md (session 8).
//!
//! **Replay** (at open, before anything else): the records of the active segment are read up
//! to the first one that is torn, from another generation or fails its CRC. Every committed
//! message without a later removal whose files are not intact — never written out, envelope
//! missing or unreadable, content not matching the envelope's size and CRC-32 — is written
//! from its record; damaged files found in the way are moved to `corrupt/` first, never
//! deleted. Then, when the segment held any message, the file system is synced (the files
//! found intact may only be in the page cache, after a `kill -9`), and a fresh generation
//! begins, so nothing is replayed twice.
//!
//! **Preallocation.** Both segments are filled with zeros up to the segment size and synced
//! when the journal is opened (a new spool's one-time cost: 32 MiB at the default size, ~35
//! ms on the benchmark VM), so that an append never changes the file's size or allocation
//! and its `fdatasync` writes data only. Only the batch that crosses the end of a segment
//! grows it, by one [`PREPARE_STEP`].
//!
//! **Locks.** The journal's mutex guards the segment, the generation and the places of the
//! records not yet written out; a spool operation takes its message's stripe lock first,
//! the committer never takes a stripe lock, so a write-out by id and a checkpoint's write-out
//! of everything are serialised by the journal's mutex alone.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

#[cfg(unix)]
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use crate::disk::{self, Disk, ENV_EXT, Layout, MSG_EXT, RemoveOnDrop, Step};
use crate::{Error, QueueId};

/// Largest content copied into the journal; a batch holding a larger message is made durable
/// with `syncfs` instead.
pub(crate) const JOURNAL_CONTENT_MAX: usize = 64 * 1024;

/// Default size after which the committer checkpoints and switches segments.
pub(crate) const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// The journal grows in steps of this many zero bytes, synced once, so that the appends
/// after them change no metadata and `fdatasync` writes data only.
const PREPARE_STEP: u64 = 1024 * 1024;

/// Buffer for reading a segment's records back.
const RECORDS_READ: usize = 256 * 1024;

const MAGIC: [u8; 4] = *b"EXRJ";
const HEADER_LEN: usize = 24;
const ID_LEN: usize = 16;
/// Length of a removal record: header and id.
const REMOVED_RECORD_LEN: usize = HEADER_LEN + ID_LEN;

const KIND_SEGMENT: u8 = 0;
const KIND_COMMITTED: u8 = 1;
const KIND_REMOVED: u8 = 2;

/// One record read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    /// A message made durable by this journal.
    Committed {
        id: QueueId,
        envelope: &'a [u8],
        content: &'a [u8],
    },
    /// A message that left `queue/` (delivered, removed or quarantined).
    Removed(QueueId),
}

/// Appends a record of `kind` with `payload` to `out`.
fn encode(out: &mut Vec<u8>, kind: u8, generation: u64, payload: &[&[u8]]) {
    let length: usize = payload.iter().map(|p| p.len()).sum();
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(out.get(start + 4..).unwrap_or_default());
    for part in payload {
        crc.update(part);
    }
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    for part in payload {
        out.extend_from_slice(part);
    }
}

/// Appends the record of a committed message.
fn encode_committed(
    out: &mut Vec<u8>,
    generation: u64,
    id: QueueId,
    envelope: &[u8],
    content: &[u8],
) {
    let id_bytes = id.ulid().to_bytes();
    let envelope_len = u32::try_from(envelope.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    encode(
        out,
        KIND_COMMITTED,
        generation,
        &[&id_bytes, &envelope_len, envelope, content],
    );
}

/// Appends the record of a removal.
fn encode_removed(out: &mut Vec<u8>, generation: u64, id: QueueId) {
    encode(out, KIND_REMOVED, generation, &[&id.ulid().to_bytes()]);
}

fn encode_segment_header(generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    encode(&mut out, KIND_SEGMENT, generation, &[]);
    out
}

/// One record's kind, generation and payload at the start of `bytes`, with the bytes it
/// takes; `None` when it is torn, zero, or fails its checks.
fn decode_one(bytes: &[u8]) -> Option<(u8, u64, &[u8], usize)> {
    let header: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let (magic, generation, length) = header_fields(header);
    if magic != MAGIC {
        return None;
    }
    let kind = *header.get(4)?;
    let length = length as usize;
    let stored_crc = u32::from_le_bytes(header.get(20..24)?.try_into().ok()?);
    let payload = bytes.get(HEADER_LEN..HEADER_LEN.checked_add(length)?)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(header.get(4..20)?);
    crc.update(payload);
    (crc.finalize() == stored_crc).then_some((kind, generation, payload, HEADER_LEN + length))
}

/// The generation of a segment whose first record is a valid header.
fn segment_generation(bytes: &[u8]) -> Option<u64> {
    match decode_one(bytes)? {
        (KIND_SEGMENT, generation, _, _) => Some(generation),
        _ => None,
    }
}

fn decode_id(bytes: &[u8]) -> Option<QueueId> {
    let raw: [u8; ID_LEN] = bytes.get(..ID_LEN)?.try_into().ok()?;
    Some(QueueId::from_ulid(ulid::Ulid::from_bytes(raw)))
}

fn decode_payload(kind: u8, payload: &[u8]) -> Option<Record<'_>> {
    let id = decode_id(payload)?;
    match kind {
        KIND_COMMITTED => {
            let rest = payload.get(ID_LEN..)?;
            let envelope_len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let envelope = rest.get(4..4usize.checked_add(envelope_len)?)?;
            let content = rest.get(4 + envelope_len..)?;
            Some(Record::Committed {
                id,
                envelope,
                content,
            })
        }
        KIND_REMOVED => Some(Record::Removed(id)),
        _ => None,
    }
}

/// The records of a segment: its generation and every record after the header, up to the
/// first one that is torn, of another generation or otherwise invalid. `None` when the
/// segment has no valid header.
pub(crate) fn decode_segment(bytes: &[u8]) -> Option<(u64, Vec<Record<'_>>)> {
    let generation = segment_generation(bytes)?;
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    while let Some((kind, record_generation, payload, used)) = bytes.get(at..).and_then(decode_one)
    {
        if record_generation != generation {
            break;
        }
        let Some(record) = decode_payload(kind, payload) else {
            break;
        };
        records.push(record);
        at += used;
    }
    Some((generation, records))
}

/// One segment file of the journal.
#[derive(Debug)]
pub(crate) struct Segment {
    path: PathBuf,
    file: File,
}

impl Segment {
    /// Writes `bytes` at `offset` and fsyncs the segment, data and size: for a new segment
    /// header.
    fn write_synced(&self, disk: &Disk, bytes: &[u8], offset: u64) -> Result<(), Error> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| Error::io("write", &self.path, e))?;
        disk.sync_file_at(Step::PrepareJournal(&self.path), &self.file, &self.path)
    }

    /// Fills the segment with zeros from `from` up to `to`, a [`PREPARE_STEP`] at a time,
    /// then fsyncs it once, data and size.
    fn write_zeros_synced(&self, disk: &Disk, from: u64, to: u64) -> Result<(), Error> {
        let zeros = vec![0u8; usize::try_from((to - from).min(PREPARE_STEP)).unwrap_or(0)];
        let mut offset = from;
        while offset < to {
            let len = usize::try_from((to - offset).min(PREPARE_STEP)).unwrap_or(zeros.len());
            self.file
                .write_all_at(&zeros[..len], offset)
                .map_err(|e| Error::io("write", &self.path, e))?;
            offset += len as u64;
        }
        disk.sync_file_at(Step::PrepareJournal(&self.path), &self.file, &self.path)
    }

    /// Makes everything written to the segment so far durable with one `fdatasync` (data
    /// only: the segment was prepared, so no metadata changes with an append).
    pub(crate) fn sync_data(&self, disk: &Disk) -> Result<(), Error> {
        disk.faults()
            .before(Step::SyncJournal(&self.path))
            .and_then(|()| {
                if disk.syncs() {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| Error::io("fdatasync", &self.path, e))
    }

    /// Reads the committed record at `place` back: the message's envelope text and content.
    fn read_committed(&self, place: RecordPlace) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let mut bytes = vec![0u8; place.len];
        self.file
            .read_exact_at(&mut bytes, place.offset)
            .map_err(|e| Error::io("read", &self.path, e))?;
        let invalid = || {
            Error::io(
                "read",
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("no valid record at offset {}", place.offset),
                ),
            )
        };
        let (kind, _, payload, _) = decode_one(&bytes).ok_or_else(invalid)?;
        match decode_payload(kind, payload) {
            Some(Record::Committed {
                envelope, content, ..
            }) => Ok((envelope.to_vec(), content.to_vec())),
            _ => Err(invalid()),
        }
    }
}

/// Messages and where their committed records lie, as appended.
pub(crate) type RecordPlaces = Vec<(QueueId, RecordPlace)>;

/// Where a committed record lies in the active segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordPlace {
    offset: u64,
    len: usize,
}

/// How a full segment was switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Switch {
    /// Live messages written out to files and the file system synced (`syncfs`).
    Checkpoint,
    /// Live records copied into the next generation; no file written, no `syncfs`.
    CarriedForward,
}

/// The open journal, shared by the committer (records of new messages, checkpoints) and the
/// spool's removals, which log themselves before a message's files leave `queue/`.
#[derive(Debug)]
pub(crate) struct SharedJournal {
    journal: Mutex<Journal>,
}

impl SharedJournal {
    /// Exclusive access for appending or checkpointing. Poisoning is ignored: a panic while
    /// it is held can at worst leave a removal unlogged (the message is forgotten first), which
    /// costs a second delivery after a crash, as a failed append does.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs that `ids` left `queue/` (or, held in the journal alone, are dropped), so that
    /// replay does not bring them back. Without
    /// `sync` the records are in the page cache at once (a `kill -9` keeps them) and reach
    /// the disk with the next commit's `fdatasync` or checkpoint; with `sync` they are made
    /// durable now.
    pub(crate) fn log_removed(
        &self,
        disk: &Disk,
        ids: &[QueueId],
        sync: bool,
    ) -> Result<(), Error> {
        let segment = {
            let mut journal = self.lock();
            let mut records = Vec::with_capacity(ids.len() * REMOVED_RECORD_LEN);
            for &id in ids {
                if journal.unwritten.remove(&id).is_none() {
                    journal.files_since_sync = true;
                }
                encode_removed(&mut records, journal.generation, id);
            }
            journal.append(disk, &records)?
        };
        if sync {
            segment.sync_data(disk)?;
        }
        Ok(())
    }

    /// Registers messages that are durable in the journal only, once their records are
    /// synced: until they are written out or removed, the journal is their only copy.
    pub(crate) fn register(&self, places: RecordPlaces) {
        self.lock().unwritten.extend(places);
    }

    /// Removes message `id` if it is held in the journal alone (see
    /// [`Journal::remove_unwritten`]); `false` when it has files or is unknown.
    pub(crate) fn remove_unwritten(&self, disk: &Disk, id: QueueId) -> bool {
        self.lock().remove_unwritten(disk, id)
    }

    /// [`SharedJournal::remove_unwritten`] without waiting: `false` also when the journal is
    /// busy (a checkpoint holds it for milliseconds), or when the removal record would first
    /// have to grow the segment (an `fsync`).
    pub(crate) fn try_remove_unwritten(&self, disk: &Disk, id: QueueId) -> bool {
        let mut journal = match self.journal.try_lock() {
            Ok(journal) => journal,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        journal.fits_prepared(REMOVED_RECORD_LEN) && journal.remove_unwritten(disk, id)
    }

    /// Writes message `id` to `queue/` from its record if it is durable in the journal only,
    /// so that it can be read, rewritten or moved like any other. Its content is synced: the
    /// caller may make a newer envelope durable next (a deferral, a hold), and replay must
    /// never find that envelope beside lost content and go back to the record's.
    pub(crate) fn write_out(&self, disk: &Disk, id: QueueId) -> Result<(), Error> {
        self.lock().write_out(disk, id, SyncContent::Now)
    }

    /// The content of message `id` from its record if it is held in the journal alone,
    /// without writing it out; `None` when it has files (or is unknown).
    pub(crate) fn read_unwritten(&self, id: QueueId) -> Result<Option<Vec<u8>>, Error> {
        let journal = self.lock();
        let Some(&place) = journal.unwritten.get(&id) else {
            return Ok(None);
        };
        let (_, content) = journal.segments[journal.active].read_committed(place)?;
        Ok(Some(content))
    }

    /// Messages written out of the journal into `queue/` so far.
    pub(crate) fn written_out(&self) -> u64 {
        self.lock().written_out
    }
}

/// The journal's state: which segment is active, in which generation, and where the next
/// record goes.
#[derive(Debug)]
pub(crate) struct Journal {
    segments: [Arc<Segment>; 2],
    /// Bytes of each segment known to be allocated and synced (its length at open, or as far
    /// as it was prepared since).
    prepared: [u64; 2],
    active: usize,
    generation: u64,
    /// Where the next record goes in the active segment.
    offset: u64,
    segment_size: u64,
    /// Messages durable only as records in the active segment (no files yet), and where
    /// their records are.
    unwritten: HashMap<QueueId, RecordPlace>,
    /// Whether message files were written out of the journal, or a message with files was
    /// logged as removed, since the file system was last synced. Those files and removals are
    /// only safe while their records count, so the next segment switch must sync the file
    /// system rather than carry the live records forward.
    files_since_sync: bool,
    /// The highest generation written to either segment, by a header or by records carried
    /// forward in a switch that failed or was cut short: every new generation is above it, so
    /// such records never match the header of the segment they were left in.
    highest_generation: u64,
    /// Messages written out of the journal into `queue/` so far.
    written_out: u64,
}

/// What replaying the journal at open did.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// Messages written back into `queue/` from their records.
    pub(crate) restored: Vec<QueueId>,
    /// Damaged files moved to `corrupt/` on the way (their new paths).
    pub(crate) quarantined: Vec<PathBuf>,
}

impl Journal {
    /// Opens the journal in `DIR/journal/`, replays its active segment (see the module
    /// documentation), syncs the file system when that segment held any message, and starts
    /// a new generation. Without syncing (`sync: false`, tests), the journal is replayed and
    /// then removed, and `None` is returned: nothing is journaled.
    pub(crate) fn open(
        disk: &Disk,
        segment_size: u64,
    ) -> Result<(Option<Arc<SharedJournal>>, Replay), Error> {
        let dir = &disk.layout.journal;
        let Segments {
            paths,
            generations,
            records,
        } = read_segments(dir)?;
        let left_behind = [
            first_record_generation(&paths[0])?,
            first_record_generation(&paths[1])?,
        ];
        let (had_messages, replay) = replay(disk, &records)?;
        // The files of the replayed messages — restored, or found intact, perhaps only in the
        // page cache after a kill — must be on disk before their records stop counting.
        if had_messages {
            disk.sync_filesystem(&disk.layout.queue)?;
        }
        if !disk.syncs() {
            for path in &paths {
                disk::remove_file(path)?;
            }
            return Ok((None, replay));
        }
        let [first, second] = paths;
        let segments = [open_segment(first)?, open_segment(second)?];
        let prepared = [file_len(&segments[0])?, file_len(&segments[1])?];
        let newest = generations[0].max(generations[1]).unwrap_or(0);
        // A generation far above the newest header is damage, not a switch left half done.
        let plausible = newest.saturating_add(1 << 32);
        let highest = left_behind
            .into_iter()
            .flatten()
            .filter(|&generation| generation <= plausible)
            .fold(newest, u64::max);
        let mut journal = Journal {
            segments: segments.map(Arc::new),
            prepared,
            active: active_segment(generations).unwrap_or(1),
            generation: newest,
            offset: 0,
            segment_size: segment_size.max(HEADER_LEN as u64),
            unwritten: HashMap::new(),
            files_since_sync: false,
            highest_generation: highest,
            written_out: 0,
        };
        journal.start_next_generation(disk)?;
        journal.prepare_ahead(disk);
        disk.sync_dir(dir)?;
        let shared = SharedJournal {
            journal: Mutex::new(journal),
        };
        Ok((Some(Arc::new(shared)), replay))
    }

    /// Writes `records` (encoded with the current generation) at the end of the active
    /// segment and returns that segment, for the caller to sync once it has let go of the
    /// lock. Growing the segment past its prepared size, should a batch cross it, costs one
    /// `fsync` per [`PREPARE_STEP`] bytes.
    pub(crate) fn append(&mut self, disk: &Disk, records: &[u8]) -> Result<Arc<Segment>, Error> {
        let end = self.offset + records.len() as u64;
        self.prepare(disk, self.active, end)?;
        let segment = Arc::clone(&self.segments[self.active]);
        segment
            .file
            .write_all_at(records, self.offset)
            .map_err(|e| Error::io("write", &segment.path, e))?;
        self.offset = end;
        Ok(segment)
    }

    /// Appends the committed records of `messages` (id, envelope text, content) like
    /// [`Journal::append`], and also returns where each record lies, for
    /// [`SharedJournal::register`] once the segment is synced.
    pub(crate) fn append_committed(
        &mut self,
        disk: &Disk,
        messages: &[(QueueId, &[u8], &[u8])],
    ) -> Result<(Arc<Segment>, RecordPlaces), Error> {
        let mut records = Vec::new();
        let mut places = Vec::with_capacity(messages.len());
        for &(id, envelope, content) in messages {
            let start = records.len();
            encode_committed(&mut records, self.generation, id, envelope, content);
            let place = RecordPlace {
                offset: self.offset + start as u64,
                len: records.len() - start,
            };
            places.push((id, place));
        }
        let segment = self.append(disk, &records)?;
        Ok((segment, places))
    }

    /// Removes message `id` if it is held in the journal alone: forgets it and appends its
    /// removal record (not synced, like every removal). `false` when it has files or is
    /// unknown; nothing is done then.
    fn remove_unwritten(&mut self, disk: &Disk, id: QueueId) -> bool {
        if self.unwritten.remove(&id).is_none() {
            return false;
        }
        let mut record = Vec::with_capacity(REMOVED_RECORD_LEN);
        encode_removed(&mut record, self.generation, id);
        if let Err(e) = self.append(disk, &record) {
            // At-least-once: a crash before the next checkpoint may deliver it again.
            tracing::warn!(queue_id = %id, error = %e, "could not log a removal in the commit journal");
        }
        true
    }

    /// Writes message `id` to `queue/` from its record, if it is durable in the journal only.
    fn write_out(&mut self, disk: &Disk, id: QueueId, sync: SyncContent) -> Result<(), Error> {
        let Some(&place) = self.unwritten.get(&id) else {
            return Ok(());
        };
        let segment = &self.segments[self.active];
        let (envelope, content) = segment.read_committed(place)?;
        self.files_since_sync = true;
        write_files(disk, id, &envelope, &content, sync)?;
        self.unwritten.remove(&id);
        self.written_out += 1;
        Ok(())
    }

    /// Whether `len` more bytes fit in the prepared part of the active segment, so that
    /// appending them changes no metadata and needs no `fsync`.
    fn fits_prepared(&self, len: usize) -> bool {
        self.offset + len as u64 <= self.prepared[self.active]
    }

    /// Whether the active segment has grown past its size, so that the committer should
    /// checkpoint.
    pub(crate) fn is_full(&self) -> bool {
        self.offset >= self.segment_size
    }

    /// Makes every message file written so far durable (one `syncfs`), then starts the next
    /// generation in the other segment; the old segment's records are no longer needed. On
    /// failure the active segment stays as it was — but a new header that reached the other
    /// segment would make replay take that segment, so the caller must not acknowledge
    /// anything more until a checkpoint succeeds.
    pub(crate) fn checkpoint(&mut self, disk: &Disk) -> Result<(), Error> {
        let unwritten: Vec<QueueId> = self.unwritten.keys().copied().collect();
        for id in unwritten {
            self.write_out(disk, id, SyncContent::Later)?;
        }
        disk.sync_filesystem(&disk.layout.queue)?;
        self.start_next_generation(disk)?;
        self.files_since_sync = false;
        Ok(())
    }

    /// Switches a full segment: carries the live records forward into the next generation
    /// (see [`Journal::carry_forward`]) when nothing since the last `syncfs` depends on the
    /// old records but those, and they fill at most half a segment; otherwise checkpoints.
    /// Returns how it did it. The same failure rule as for [`Journal::checkpoint`] applies.
    pub(crate) fn switch_segment(&mut self, disk: &Disk) -> Result<Switch, Error> {
        let live: u64 = self.unwritten.values().map(|place| place.len as u64).sum();
        if self.files_since_sync || live > self.segment_size / 2 {
            self.checkpoint(disk)?;
            return Ok(Switch::Checkpoint);
        }
        match self.carry_forward(disk) {
            Ok(()) => Ok(Switch::CarriedForward),
            Err(error) => {
                // Its header may still reach the disk and make the copies the ones replayed:
                // the next attempt writes every live message to files first.
                self.files_since_sync = true;
                Err(error)
            }
        }
    }

    /// Starts the next generation in the other segment with a copy of the record of every
    /// message still held in the journal alone, without writing any file or syncing the file
    /// system. The copies are written and synced (`fdatasync`) before the new header, so
    /// until the header is on disk the old generation stays the one replayed, and after it
    /// the new one holds every live message.
    fn carry_forward(&mut self, disk: &Disk) -> Result<(), Error> {
        let next = 1 - self.active;
        let generation = self.new_generation();
        let mut records = Vec::new();
        let mut places = HashMap::with_capacity(self.unwritten.len());
        for (&id, &place) in &self.unwritten {
            let (envelope, content) = self.segments[self.active].read_committed(place)?;
            let start = records.len();
            encode_committed(&mut records, generation, id, &envelope, &content);
            let offset = (HEADER_LEN + start) as u64;
            places.insert(
                id,
                RecordPlace {
                    offset,
                    len: records.len() - start,
                },
            );
        }
        let end = HEADER_LEN as u64 + records.len() as u64;
        self.prepare(disk, next, end)?;
        let segment = Arc::clone(&self.segments[next]);
        if !records.is_empty() {
            segment
                .file
                .write_all_at(&records, HEADER_LEN as u64)
                .map_err(|e| Error::io("write", &segment.path, e))?;
            segment.sync_data(disk)?;
        }
        segment.write_synced(disk, &encode_segment_header(generation), 0)?;
        self.active = next;
        self.generation = generation;
        self.offset = end;
        self.unwritten = places;
        Ok(())
    }

    /// Makes sure the first `end` bytes of segment `index` are prepared, growing it to the
    /// next multiple of [`PREPARE_STEP`] when they are not.
    fn prepare(&mut self, disk: &Disk, index: usize, end: u64) -> Result<(), Error> {
        let prepared = self.prepared[index];
        if end <= prepared {
            return Ok(());
        }
        let target = end.div_ceil(PREPARE_STEP) * PREPARE_STEP;
        self.segments[index].write_zeros_synced(disk, prepared, target)?;
        self.prepared[index] = target;
        Ok(())
    }

    /// Prepares both segments to their full size, so that the committer never waits for a
    /// segment to grow: this costs a new spool one write of twice the segment size and two
    /// `fsync`s when it is opened (reopening finds the segments prepared). A failure (a full
    /// disk) is only logged: the segments then grow as they fill, as before.
    fn prepare_ahead(&mut self, disk: &Disk) {
        for index in 0..self.segments.len() {
            if let Err(e) = self.prepare(disk, index, self.segment_size) {
                tracing::warn!(error = %e, "cannot prepare the commit journal ahead; it grows as it fills");
            }
        }
    }

    /// A generation above every one written so far, reserved for the next switch.
    fn new_generation(&mut self) -> u64 {
        self.highest_generation = self.highest_generation.saturating_add(1);
        self.highest_generation
    }

    fn start_next_generation(&mut self, disk: &Disk) -> Result<(), Error> {
        let next = 1 - self.active;
        let generation = self.new_generation();
        let header = encode_segment_header(generation);
        self.segments[next].write_synced(disk, &header, 0)?;
        self.prepared[next] = self.prepared[next].max(HEADER_LEN as u64);
        self.active = next;
        self.generation = generation;
        self.offset = HEADER_LEN as u64;
        Ok(())
    }
}

/// The two segments of a journal directory as found on disk.
struct Segments {
    paths: [PathBuf; 2],
    /// The generation in each segment's header (`None`: missing or no valid header).
    generations: [Option<u64>; 2],
    /// The records of the active segment (see [`read_records`]); empty when neither segment
    /// has a valid header.
    records: Vec<u8>,
}

/// Reads the headers of the two segments in `dir`, and the records of the active one only.
fn read_segments(dir: &Path) -> Result<Segments, Error> {
    let paths = [dir.join("0.log"), dir.join("1.log")];
    let generations = [header_generation(&paths[0])?, header_generation(&paths[1])?];
    let active = active_segment(generations);
    let records = match active.and_then(|i| paths.get(i)) {
        Some(path) => read_records(path)?,
        None => Vec::new(),
    };
    Ok(Segments {
        paths,
        generations,
        records,
    })
}

/// The generation in the header of the segment at `path`; `None` when it is missing or
/// its first record is not a valid header.
fn header_generation(path: &Path) -> Result<Option<u64>, Error> {
    let Some(file) = open_if_present(path)? else {
        return Ok(None);
    };
    let mut header = Vec::with_capacity(HEADER_LEN);
    file.take(HEADER_LEN as u64)
        .read_to_end(&mut header)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(segment_generation(&header))
}

/// The part of the segment at `path` that holds its records: the header and every record
/// of the header's generation after it, up to the first that is not one — the zeros of the
/// prepared space, an older generation's record, or a torn one (kept, for the decoder to
/// drop). So reading a segment costs what its records take, not its prepared size.
/// Checksums are checked by the decoder. Empty when the segment is missing.
fn read_records(path: &Path) -> Result<Vec<u8>, Error> {
    let Some(file) = open_if_present(path)? else {
        return Ok(Vec::new());
    };
    let read_error = |e| Error::io("read", path, e);
    let mut reader = std::io::BufReader::with_capacity(RECORDS_READ, file);
    let mut bytes = Vec::new();
    let mut generation = None;
    loop {
        let start = bytes.len();
        (&mut reader)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        let Some(header) = bytes
            .get(start..)
            .and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok())
        else {
            break;
        };
        let (magic, record_generation, length) = header_fields(header);
        if magic != MAGIC || *generation.get_or_insert(record_generation) != record_generation {
            bytes.truncate(start);
            break;
        }
        let payload_len = (&mut reader)
            .take(u64::from(length))
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if payload_len as u64 != u64::from(length) {
            break;
        }
    }
    Ok(bytes)
}

/// The generation of the record right after the header of the segment at `path`, when one
/// with a valid magic starts there. Records carried forward by a switch that failed or was
/// cut short before its header may have a generation above every header's.
fn first_record_generation(path: &Path) -> Result<Option<u64>, Error> {
    let Some(file) = open_if_present(path)? else {
        return Ok(None);
    };
    let mut record = [0u8; HEADER_LEN];
    match file.read_exact_at(&mut record, HEADER_LEN as u64) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    }
    let (magic, generation, _) = header_fields(&record);
    Ok((magic == MAGIC).then_some(generation))
}

/// A record header's magic, generation and payload length.
fn header_fields(header: &[u8; HEADER_LEN]) -> ([u8; 4], u64, u32) {
    let mut magic = [0u8; 4];
    let mut generation = [0u8; 8];
    let mut length = [0u8; 4];
    magic.copy_from_slice(&header[..4]);
    generation.copy_from_slice(&header[8..16]);
    length.copy_from_slice(&header[16..20]);
    (
        magic,
        u64::from_le_bytes(generation),
        u32::from_le_bytes(length),
    )
}

/// Which segment is active, from the generations of their headers: the higher one.
fn active_segment(generations: [Option<u64>; 2]) -> Option<usize> {
    match generations {
        [Some(a), Some(b)] => Some(usize::from(b > a)),
        [Some(_), None] => Some(0),
        [None, Some(_)] => Some(1),
        [None, None] => None,
    }
}

/// The committed messages of `records` not removed later: id, envelope text, content.
fn live_messages<'a>(
    records: &'a [Record<'a>],
) -> impl Iterator<Item = (QueueId, &'a [u8], &'a [u8])> {
    let removed: HashSet<QueueId> = records
        .iter()
        .filter_map(|r| match r {
            Record::Removed(id) => Some(*id),
            Record::Committed { .. } => None,
        })
        .collect();
    records.iter().filter_map(move |record| match record {
        Record::Committed {
            id,
            envelope,
            content,
        } if !removed.contains(id) => Some((*id, *envelope, *content)),
        _ => None,
    })
}

/// A message as the journal holds it: id, envelope text, content.
pub(crate) type LiveRecord = (QueueId, Vec<u8>, Vec<u8>);

/// The messages the journal in `dir` (a spool's `journal/`) holds for a running spool:
/// committed in the active segment and not removed since, and that segment's path.
/// Read-only, for the queue tools; empty without a journal. Some of them may also have files
/// by now.
pub(crate) fn read_live(dir: &Path) -> Result<(PathBuf, Vec<LiveRecord>), Error> {
    let Segments {
        paths,
        generations,
        records: bytes,
    } = read_segments(dir)?;
    let [first, second] = paths;
    let path = match active_segment(generations) {
        Some(1) => second,
        Some(_) => first,
        None => return Ok((first, Vec::new())),
    };
    let records = decode_segment(&bytes).map_or_else(Vec::new, |(_, records)| records);
    let live = live_messages(&records)
        .map(|(id, envelope, content)| (id, envelope.to_vec(), content.to_vec()))
        .collect();
    Ok((path, live))
}

/// Applies the active segment's records: restores every committed, not removed message whose
/// files are not intact. Also says whether the segment recorded any message at all.
fn replay(disk: &Disk, bytes: &[u8]) -> Result<(bool, Replay), Error> {
    let Some((_, records)) = decode_segment(bytes) else {
        return Ok((false, Replay::default()));
    };
    let had_messages = records
        .iter()
        .any(|r| matches!(r, Record::Committed { .. }));
    let mut result = Replay::default();
    for (id, envelope, content) in live_messages(&records) {
        match stored_state(disk, id) {
            Stored::Intact => continue,
            Stored::Missing(lone_content) => {
                // A content file without envelope is an incomplete write; the record replaces it.
                for path in lone_content {
                    disk::remove_file(&path)?;
                }
            }
            Stored::Damaged(paths) => {
                for path in paths {
                    result.quarantined.push(disk.quarantine(&path)?);
                }
            }
        }
        write_files(disk, id, envelope, content, SyncContent::Later)?;
        result.restored.push(id);
    }
    Ok((had_messages, result))
}

/// What is on disk for one journaled message.
enum Stored {
    /// Envelope readable and content matching it, in `queue/` or `hold/`.
    Intact,
    /// No envelope in either directory; these content files are left of incomplete writes.
    Missing(Vec<PathBuf>),
    /// These files exist but do not make a whole message.
    Damaged(Vec<PathBuf>),
}

fn stored_state(disk: &Disk, id: QueueId) -> Stored {
    let layout = &disk.layout;
    let mut present = Vec::new();
    for dir in [&layout.queue, &layout.hold] {
        let env = Layout::file(dir, id, ENV_EXT);
        let msg = Layout::file(dir, id, MSG_EXT);
        if env.exists()
            && let Ok(envelope) = disk::read_envelope(&env, id)
            && disk::check_content(&msg, &envelope).is_ok()
        {
            return Stored::Intact;
        }
        present.extend([env, msg].into_iter().filter(|p| p.exists()));
    }
    let any_envelope = present
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == ENV_EXT));
    if any_envelope {
        Stored::Damaged(present)
    } else {
        Stored::Missing(present)
    }
}

/// When the content file that [`write_files`] writes is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncContent {
    /// Before it is renamed into `queue/`.
    Now,
    /// By the `syncfs` that follows (a checkpoint's, or replay's); until then the record
    /// stays valid.
    Later,
}

/// Writes `queue/ID.msg` and then `queue/ID.env` from a record, each written whole in `tmp/`
/// and renamed into place (so the lock-free queue tools never read half a file), removing
/// what it wrote if it fails. The envelope is not synced here: until the next `syncfs` the
/// record stands for it, and whoever changes it makes its own copy durable.
fn write_files(
    disk: &Disk,
    id: QueueId,
    envelope: &[u8],
    content: &[u8],
    sync: SyncContent,
) -> Result<(), Error> {
    let layout = &disk.layout;
    let mut placed = Vec::new();
    for (ext, bytes) in [(MSG_EXT, content), (ENV_EXT, envelope)] {
        let temporary = Layout::file(&layout.tmp, id, ext);
        disk::remove_file(&temporary)?;
        let file = disk::create_new(&temporary)?;
        let written = RemoveOnDrop::new(temporary.clone());
        disk::write_all(&file, bytes, &temporary)?;
        if ext == MSG_EXT && sync == SyncContent::Now {
            disk.sync_file(&file, &temporary)?;
        }
        let path = Layout::file(&layout.queue, id, ext);
        disk.rename(&temporary, &path)?;
        written.disarm();
        placed.push(RemoveOnDrop::new(path));
    }
    placed.into_iter().for_each(RemoveOnDrop::disarm);
    Ok(())
}

fn open_if_present(path: &Path) -> Result<Option<File>, Error> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("open", path, e)),
    }
}

fn open_segment(path: PathBuf) -> Result<Segment, Error> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    options.mode(0o600);
    let file = options
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    Ok(Segment { path, file })
}

fn file_len(segment: &Segment) -> Result<u64, Error> {
    segment
        .file
        .metadata()
        .map(|m| m.len())
        .map_err(|e| Error::io("stat", &segment.path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> QueueId {
        QueueId::from_ulid(ulid::Ulid(n))
    }

    fn segment(generation: u64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut bytes = encode_segment_header(generation);
        body(&mut bytes);
        bytes
    }

    #[test]
    fn records_round_trip_in_order() {
        let bytes = segment(7, |out| {
            encode_committed(out, 7, id(1), b"env-1", b"content-1");
            encode_removed(out, 7, id(1));
            encode_committed(out, 7, id(2), b"", b"");
        });
        let (generation, records) = decode_segment(&bytes).unwrap();
        assert_eq!(generation, 7);
        assert_eq!(
            records,
            vec![
                Record::Committed {
                    id: id(1),
                    envelope: b"env-1",
                    content: b"content-1"
                },
                Record::Removed(id(1)),
                Record::Committed {
                    id: id(2),
                    envelope: b"",
                    content: b""
                },
            ]
        );
    }

    #[test]
    fn reading_stops_at_the_first_bad_record() {
        let good = segment(3, |out| encode_committed(out, 3, id(1), b"e", b"c"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("torn tail", {
                let mut b = good.clone();
                encode_committed(&mut b, 3, id(2), b"e", b"content");
                b.truncate(b.len() - 3);
                b
            }),
            ("older generation after", {
                let mut b = good.clone();
                encode_committed(&mut b, 2, id(2), b"e", b"c");
                b
            }),
            ("flipped payload byte", {
                let mut b = good.clone();
                encode_committed(&mut b, 3, id(2), b"e", b"c");
                let last = b.len() - 1;
                b[last] ^= 1;
                b
            }),
            ("zeros after", {
                let mut b = good.clone();
                b.extend_from_slice(&[0u8; 100]);
                b
            }),
            ("unknown kind", {
                let mut b = good.clone();
                encode(&mut b, 9, 3, &[&id(2).ulid().to_bytes()]);
                b
            }),
        ];
        for (name, bytes) in cases {
            let (_, records) = decode_segment(&bytes).unwrap();
            assert_eq!(records.len(), 1, "{name}");
        }
    }

    #[test]
    fn reading_a_segment_back_stops_where_its_records_end() {
        let dir = tempfile::tempdir().unwrap();
        let records = segment(4, |out| {
            encode_committed(out, 4, id(1), b"env", b"content");
            encode_removed(out, 4, id(1));
        });
        let with = |tail: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = records.clone();
            tail(&mut bytes);
            bytes
        };
        let huge_length = {
            let mut header = Vec::new();
            encode_removed(&mut header, 4, id(2));
            header[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
            header
        };
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            (
                "prepared zeros",
                with(&|b| b.resize(b.len() + 4096, 0)),
                records.len(),
            ),
            (
                "older generation",
                with(&|b| encode_removed(b, 3, id(2))),
                records.len(),
            ),
            (
                "torn record kept for the decoder",
                with(&|b| encode_removed(b, 4, id(2)))
                    .split_at(records.len() + 30)
                    .0
                    .to_vec(),
                records.len() + 30,
            ),
            (
                "length past the end",
                with(&|b| b.extend_from_slice(&huge_length)),
                records.len() + huge_length.len(),
            ),
        ];
        for (name, bytes, expected) in cases {
            let path = dir.path().join("segment");
            std::fs::write(&path, &bytes).unwrap();
            let read = read_records(&path).unwrap();
            assert_eq!(read.len(), expected, "{name}");
            assert_eq!(decode_segment(&read).unwrap().1.len(), 2, "{name}");
        }
        assert!(
            read_records(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_segment_without_a_valid_header_has_no_records() {
        assert_eq!(decode_segment(&[]), None);
        assert_eq!(decode_segment(&[0u8; 64]), None);
        let mut bytes = segment(1, |_| {});
        bytes[5] = 1;
        assert_eq!(decode_segment(&bytes), None);
        let mut not_header = Vec::new();
        encode_removed(&mut not_header, 1, id(1));
        assert_eq!(decode_segment(&not_header), None);
    }
}
