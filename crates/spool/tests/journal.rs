//! The commit journal through the public API: small messages live in the journal alone until
//! something needs their files; after a crash, acknowledged mail without files, or whose
//! files a crash took or damaged, comes back from the journal at the next open; what was
//! removed, refused or checkpointed does not.
//!
//! A crash is staged by copying the spool directory while the spool is open (the state a
//! `kill -9` would leave; a clean close checkpoints the journal instead); a power loss on top
//! of that by deleting or damaging files in the copy (as a crash before the kernel wrote them
//! back would). The copy is then opened.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

mod support;

use std::sync::{Arc, Mutex};

use spool::{ContentLocation, Envelope, FaultInjector, QueueId, Spool, SpoolOptions, Step};

fn durable() -> SpoolOptions {
    SpoolOptions::default()
}

/// Commits `content` as a new message and returns its envelope as stored.
fn commit(spool: &Spool, content: &[u8]) -> Envelope {
    support::store(spool, content, 1)
}

fn queued(dir: &Path, id: QueueId, ext: &str) -> PathBuf {
    dir.join(format!("queue/{id}.{ext}"))
}

fn queued_ids(report: &spool::RecoveryReport) -> Vec<QueueId> {
    let mut ids: Vec<QueueId> = report.queued.iter().map(|e| e.id).collect();
    ids.sort();
    ids
}

/// Whether message `id` has either of its files in `queue/`.
fn has_files(dir: &Path, id: QueueId) -> bool {
    queued(dir, id, "env").exists() || queued(dir, id, "msg").exists()
}

fn content(spool: &Spool, id: QueueId) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut spool.open_content(id).unwrap(), &mut bytes).unwrap();
    bytes
}

#[test]
fn acknowledged_mail_whose_files_were_lost_or_damaged_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable()).unwrap();
    let unwritten = commit(&spool, b"Subject: unwritten\r\n\r\nno files yet\r\n");
    let lost = commit(&spool, b"Subject: lost\r\n\r\nboth files gone\r\n");
    let empty_envelope = commit(
        &spool,
        b"Subject: empty\r\n\r\nenvelope never written back\r\n",
    );
    let torn = commit(
        &spool,
        b"Subject: torn\r\n\r\ncontent half written back\r\n",
    );
    let intact = commit(&spool, b"Subject: fine\r\n\r\nuntouched\r\n");
    // Reading the content from the record leaves the message in the journal alone.
    assert_eq!(
        spool.read_unwritten(lost.id).unwrap().as_deref(),
        Some(&b"Subject: lost\r\n\r\nboth files gone\r\n"[..])
    );
    assert!(!has_files(dir.path(), lost.id));
    // Reading an envelope writes the message out of the journal into `queue/` (as a
    // deferral or a hold would); `unwritten` stays in the journal alone.
    for message in [&lost, &empty_envelope, &torn, &intact] {
        assert_eq!(spool.load_envelope(message.id).unwrap(), *message);
    }
    assert!(!has_files(dir.path(), unwritten.id));
    assert_eq!(spool.commit_stats().written_out, 4);
    assert_eq!(
        spool.read_unwritten(lost.id).unwrap(),
        None,
        "it has files now"
    );
    let image = support::crash_image(dir.path());
    drop(spool);
    let dir = image;

    fs::remove_file(queued(dir.path(), lost.id, "env")).unwrap();
    fs::remove_file(queued(dir.path(), lost.id, "msg")).unwrap();
    fs::write(queued(dir.path(), empty_envelope.id, "env"), b"").unwrap();
    fs::write(
        queued(dir.path(), torn.id, "msg"),
        b"Subject: torn\r\n\r\ncon",
    )
    .unwrap();

    let (spool, report) = Spool::open(dir.path(), durable()).unwrap();
    let mut restored = report.restored_from_journal.clone();
    restored.sort();
    let mut expected = vec![unwritten.id, lost.id, empty_envelope.id, torn.id];
    expected.sort();
    assert_eq!(restored, expected);
    let mut all = vec![unwritten.id, lost.id, empty_envelope.id, torn.id, intact.id];
    all.sort();
    assert_eq!(queued_ids(&report), all);
    assert_eq!(
        content(&spool, lost.id),
        b"Subject: lost\r\n\r\nboth files gone\r\n"
    );
    assert_eq!(
        content(&spool, torn.id),
        b"Subject: torn\r\n\r\ncontent half written back\r\n"
    );
    assert_eq!(spool.load_envelope(lost.id).unwrap(), lost);
    assert_eq!(spool.load_envelope(unwritten.id).unwrap(), unwritten);
    for envelope in &report.queued {
        spool.verify_content(envelope).unwrap();
    }
    // The damaged files were kept for a human, not deleted: two pairs; no message was lost.
    assert_eq!(report.quarantined.len(), 4, "{:?}", report.quarantined);
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert!(
        report
            .quarantined
            .iter()
            .all(|(path, reason)| path.exists()
                && reason.contains("restored from the commit journal")),
        "{:?}",
        report.quarantined
    );

    // Replayed once: the next open has nothing more to restore.
    drop(spool);
    let (_spool, report) = Spool::open(dir.path(), durable()).unwrap();
    assert!(report.restored_from_journal.is_empty());
    assert_eq!(queued_ids(&report), all);
}

#[test]
fn removed_mail_is_not_brought_back() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable()).unwrap();
    let delivered = commit(&spool, b"delivered");
    let deferred_then_delivered = commit(&spool, b"written out, then delivered");
    let waiting = commit(&spool, b"still queued");
    // In the journal alone: removed at once, with no file to touch.
    assert!(spool.try_remove_unwritten(delivered.id));
    assert!(!spool.try_remove_unwritten(delivered.id), "already gone");
    // Written out: left to `remove`, which deals with its files.
    spool.load_envelope(deferred_then_delivered.id).unwrap();
    assert!(!spool.try_remove_unwritten(deferred_then_delivered.id));
    spool.remove(deferred_then_delivered.id).unwrap();
    assert!(!has_files(dir.path(), deferred_then_delivered.id));
    // A crash right after the removals returned: their records are already in the journal.
    let image = support::crash_image(dir.path());
    drop(spool);

    let (_spool, report) = Spool::open(image.path(), durable()).unwrap();
    assert_eq!(report.restored_from_journal, vec![waiting.id]);
    assert_eq!(queued_ids(&report), vec![waiting.id]);
}

#[test]
fn large_messages_bypass_the_journal_and_are_synced_with_syncfs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable()).unwrap();
    let small = commit(&spool, b"small");
    let large = commit(&spool, &vec![b'x'; 200 * 1024]);
    let stats = spool.commit_stats();
    assert_eq!((stats.journal_syncs, stats.filesystem_syncs), (1, 1));
    assert!(!has_files(dir.path(), small.id));
    assert!(has_files(dir.path(), large.id));
    let image = support::crash_image(dir.path());
    drop(spool);

    // The large message has no record to come back from: its files are the only copy.
    fs::remove_file(queued(image.path(), large.id, "env")).unwrap();
    let (_spool, report) = Spool::open(image.path(), durable()).unwrap();
    assert_eq!(report.restored_from_journal, vec![small.id]);
    assert!(!queued_ids(&report).contains(&large.id));
    assert_eq!(
        report.removed_incomplete,
        vec![queued(image.path(), large.id, "msg")]
    );
}

#[test]
fn a_full_segment_is_checkpointed_and_only_the_current_generation_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        journal_segment: 64 * 1024,
        ..durable()
    };
    let (spool, _) = Spool::open(dir.path(), options).unwrap();
    let body = vec![b'y'; 20 * 1024];
    let messages: Vec<Envelope> = (0..40).map(|_| commit(&spool, &body)).collect();
    let stats = spool.commit_stats();
    assert_eq!(stats.journal_syncs, 40);
    // 40 records of ~20 KiB in 64 KiB segments: a checkpoint every fourth batch, which
    // writes the messages still queued out of the journal into files first.
    assert!((8..=13).contains(&stats.filesystem_syncs), "{stats:?}");
    let (first, last) = (&messages[0], &messages[39]);
    let unwritten: Vec<QueueId> = messages
        .iter()
        .map(|m| m.id)
        .filter(|&id| !has_files(dir.path(), id))
        .collect();
    assert!(has_files(dir.path(), first.id));
    assert!(unwritten.contains(&last.id));
    assert!((1..=4).contains(&unwritten.len()), "{unwritten:?}");
    assert_eq!(stats.written_out, 40 - unwritten.len() as u64);
    let image = support::crash_image(dir.path());
    drop(spool);
    let dir = image;

    // Both segments stay small however much mail went through.
    for segment in ["0.log", "1.log"] {
        let len = fs::metadata(dir.path().join("journal").join(segment))
            .unwrap()
            .len();
        assert!(len <= 1024 * 1024, "{segment}: {len} bytes");
    }
    // Files of the first message were made durable by a checkpoint long ago: its record is
    // in an old generation and not replayed, so files removed by hand stay gone. The last
    // message's record is current and is its only copy.
    fs::remove_file(queued(dir.path(), first.id, "env")).unwrap();
    fs::remove_file(queued(dir.path(), first.id, "msg")).unwrap();
    let (_spool, report) = Spool::open(dir.path(), options).unwrap();
    let mut restored = report.restored_from_journal.clone();
    restored.sort();
    assert_eq!(restored, unwritten);
    assert_eq!(report.queued.len(), 39);
}

/// Small segments, messages removed as soon as they are committed (delivered at once) but
/// every `keep`th: returns the kept ones, oldest first.
fn relay_through(spool: &Spool, messages: usize, keep: usize) -> Vec<Envelope> {
    let body = vec![b'z'; 2 * 1024];
    let mut kept = Vec::new();
    for i in 0..messages {
        let message = commit(spool, &body);
        if i % keep == 0 {
            kept.push(message);
        } else {
            assert!(spool.try_remove_unwritten(message.id));
        }
    }
    kept
}

fn small_segments() -> SpoolOptions {
    SpoolOptions {
        journal_segment: 64 * 1024,
        ..durable()
    }
}

#[test]
fn a_full_segment_carries_its_live_messages_forward_without_files_or_syncfs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), small_segments()).unwrap();
    // ~2 KiB records in 64 KiB segments: a switch every ~30 messages, 4 of them kept.
    let kept = relay_through(&spool, 120, 30);
    let stats = spool.commit_stats();
    assert!(stats.segment_switches >= 3, "{stats:?}");
    assert_eq!(
        (stats.filesystem_syncs, stats.written_out),
        (0, 0),
        "{stats:?}"
    );
    assert!(kept.iter().all(|m| !has_files(dir.path(), m.id)));
    // The oldest kept message was carried through every switch.
    assert_eq!(
        spool.read_unwritten(kept[0].id).unwrap(),
        Some(vec![b'z'; 2 * 1024])
    );
    let image = support::crash_image(dir.path());
    drop(spool);

    let (_spool, report) = Spool::open(image.path(), small_segments()).unwrap();
    let mut expected: Vec<QueueId> = kept.iter().map(|m| m.id).collect();
    expected.sort();
    let mut restored = report.restored_from_journal.clone();
    restored.sort();
    assert_eq!(restored, expected);
    assert_eq!(queued_ids(&report), expected);
}

#[test]
fn a_removal_of_a_message_with_files_makes_the_next_switch_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), small_segments()).unwrap();
    let large = commit(&spool, &vec![b'x'; 200 * 1024]);
    assert_eq!(spool.commit_stats().filesystem_syncs, 1);
    // Its unlinks are durable only once the file system is synced; until then its removal
    // record must keep counting.
    spool.remove(large.id).unwrap();
    let kept = relay_through(&spool, 40, 20);
    let stats = spool.commit_stats();
    assert_eq!(
        (stats.segment_switches, stats.filesystem_syncs),
        (1, 2),
        "{stats:?}"
    );
    // The checkpoint wrote the message kept before it out.
    assert!(has_files(dir.path(), kept[0].id));
    // With nothing more on files, the next switch carries forward.
    let more = relay_through(&spool, 40, 20);
    let stats = spool.commit_stats();
    assert_eq!(
        (stats.segment_switches, stats.filesystem_syncs),
        (2, 2),
        "{stats:?}"
    );
    assert!(more.iter().all(|m| !has_files(dir.path(), m.id)));
    let image = support::crash_image(dir.path());
    drop(spool);

    let (_spool, report) = Spool::open(image.path(), small_segments()).unwrap();
    let mut expected: Vec<QueueId> = kept.iter().chain(&more).map(|m| m.id).collect();
    expected.sort();
    assert_eq!(queued_ids(&report), expected);
}

/// Fails the sync of the next segment header once armed.
#[derive(Debug, Default)]
struct FailHeaderOnce(std::sync::atomic::AtomicBool);

impl FaultInjector for FailHeaderOnce {
    fn before(&self, step: Step<'_>) -> std::io::Result<()> {
        let armed = matches!(step, Step::PrepareJournal(_))
            && self.0.swap(false, std::sync::atomic::Ordering::SeqCst);
        if armed {
            return Err(std::io::Error::other("injected header sync failure"));
        }
        Ok(())
    }
}

#[test]
fn a_failed_carry_forward_is_followed_by_a_checkpoint_that_revives_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Arc::new(FailHeaderOnce::default());
    let (spool, _) = Spool::open_with_faults(dir.path(), small_segments(), fault.clone()).unwrap();
    fault.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let body = vec![b'z'; 2 * 1024];
    let (mut kept, mut refused) = (Vec::new(), 0);
    for i in 0..150 {
        // The batch whose switch failed is refused (451); its header write may still reach
        // the disk, with the carried copies behind it.
        let Ok(message) = support::try_store(&spool, &body, 1) else {
            refused += 1;
            continue;
        };
        if i % 30 == 0 {
            kept.push(message.id);
        } else {
            spool.remove(message.id).unwrap();
        }
    }
    assert_eq!(refused, 1);
    let stats = spool.commit_stats();
    // The retry after the failure was a checkpoint; later switches carried forward again.
    assert!(stats.filesystem_syncs >= 1, "{stats:?}");
    assert!(
        stats.segment_switches > stats.filesystem_syncs + 1,
        "{stats:?}"
    );
    let image = support::crash_image(dir.path());
    drop(spool);

    let (_spool, report) = Spool::open(image.path(), small_segments()).unwrap();
    kept.sort();
    assert_eq!(queued_ids(&report), kept);
}

#[test]
fn opening_without_sync_replays_then_removes_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable()).unwrap();
    let message = commit(&spool, b"kept by the journal");
    let image = support::crash_image(dir.path());
    drop(spool);
    let dir = image;
    assert!(!has_files(dir.path(), message.id));

    let fast = SpoolOptions {
        sync: false,
        ..durable()
    };
    let (spool, report) = Spool::open(dir.path(), fast).unwrap();
    assert_eq!(report.restored_from_journal, vec![message.id]);
    assert!(
        fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .next()
            .is_none(),
        "a spool that does not sync keeps no journal"
    );
    // Mail removed meanwhile is not logged anywhere, and must not come back later.
    spool.remove(message.id).unwrap();
    drop(spool);
    let (_spool, report) = Spool::open(dir.path(), durable()).unwrap();
    assert!(report.queued.is_empty());
}

#[test]
fn a_clean_close_leaves_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable()).unwrap();
    let message = commit(&spool, b"closed cleanly");
    assert!(!has_files(dir.path(), message.id));
    drop(spool);
    // The checkpoint at close wrote the message out of the journal; now the files are the
    // only copy, and an envelope removed by hand stays gone.
    fs::remove_file(queued(dir.path(), message.id, "env")).unwrap();
    let (_spool, report) = Spool::open(dir.path(), durable()).unwrap();
    assert!(report.restored_from_journal.is_empty());
    assert!(report.queued.is_empty());
    assert_eq!(report.removed_incomplete.len(), 1);
}

/// Records the kind of every step the spool announces.
#[derive(Debug, Default)]
struct Steps(Mutex<Vec<&'static str>>);

impl FaultInjector for Steps {
    fn before(&self, step: Step<'_>) -> std::io::Result<()> {
        let name = match step {
            Step::SyncFilesystem(_) => "syncfs",
            Step::PrepareJournal(_) => "prepare journal",
            _ => "other",
        };
        self.0.lock().unwrap().push(name);
        Ok(())
    }
}

impl Steps {
    /// How many steps of kind `name` were seen.
    fn count(&self, name: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| **s == name)
            .count()
    }
}

/// After a `kill -9` the files of the journaled messages may be only in the page cache:
/// opening syncs them before a new generation makes their records obsolete.
#[test]
fn reopening_after_a_kill_syncs_the_files_before_the_records_stop_counting() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable()).unwrap();
    let message = commit(&spool, b"only in the page cache, maybe");
    spool.load_envelope(message.id).unwrap(); // written out of the journal, not synced
    let image = support::crash_image(dir.path());
    drop(spool);

    let steps = Arc::new(Steps::default());
    let (_spool, report) = Spool::open_with_faults(image.path(), durable(), steps.clone()).unwrap();
    assert!(report.restored_from_journal.is_empty());
    let seen = steps.0.lock().unwrap().clone();
    let sync = seen.iter().position(|s| *s == "syncfs");
    let header = seen.iter().position(|s| *s == "prepare journal");
    assert!(
        matches!((sync, header), (Some(s), Some(h)) if s < h),
        "{seen:?}"
    );

    // With nothing journaled (a clean close checkpointed), opening needs no syncfs.
    let steps = Arc::new(Steps::default());
    drop(_spool);
    let (_spool, _) = Spool::open_with_faults(image.path(), durable(), steps.clone()).unwrap();
    assert!(!steps.0.lock().unwrap().contains(&"syncfs"));
}

/// A new spool prepares both segments to their full size when it opens, so commits never
/// wait for a segment to grow; reopening finds them prepared and writes no zeros.
#[test]
fn segments_are_prepared_at_open_and_commits_never_grow_them() {
    let dir = tempfile::tempdir().unwrap();
    let segment = 2 * 1024 * 1024;
    let options = SpoolOptions {
        journal_segment: segment,
        ..durable()
    };
    let steps = Arc::new(Steps::default());
    let (spool, _) = Spool::open_with_faults(dir.path(), options, steps.clone()).unwrap();
    let segment_lengths = || {
        ["0.log", "1.log"].map(|name| {
            fs::metadata(dir.path().join("journal").join(name))
                .unwrap()
                .len()
        })
    };
    assert_eq!(segment_lengths(), [segment, segment]);
    // The new generation's header, then each segment's zeros.
    assert_eq!(steps.count("prepare journal"), 3);

    steps.0.lock().unwrap().clear();
    let body = vec![b'z'; 30 * 1024];
    for _ in 0..40 {
        commit(&spool, &body);
    }
    assert_eq!(steps.count("prepare journal"), 0);
    assert_eq!(segment_lengths(), [segment, segment]);
    drop(spool);

    let steps = Arc::new(Steps::default());
    let (_spool, _) = Spool::open_with_faults(dir.path(), options, steps.clone()).unwrap();
    assert_eq!(
        steps.count("prepare journal"),
        1,
        "the new generation's header only"
    );
}

/// Records every fsync and rename the spool announces, with its paths.
#[derive(Debug, Default)]
struct FileSteps(Mutex<Vec<String>>);

impl FaultInjector for FileSteps {
    fn before(&self, step: Step<'_>) -> std::io::Result<()> {
        let seen = match step {
            Step::SyncFile(path) => format!("sync {}", path.display()),
            Step::Rename { from, to } => format!("rename {} {}", from.display(), to.display()),
            _ => return Ok(()),
        };
        self.0.lock().unwrap().push(seen);
        Ok(())
    }
}

/// A message written out of the journal to be held gets its content synced before the held
/// envelope is made durable: replay must never find that envelope beside lost content and go
/// back to the record's envelope (which would release the message).
#[test]
fn a_write_out_by_id_syncs_the_content_before_the_envelope_changes() {
    let dir = tempfile::tempdir().unwrap();
    let steps = Arc::new(FileSteps::default());
    let (spool, _) = Spool::open_with_faults(dir.path(), durable(), steps.clone()).unwrap();
    let message = commit(&spool, b"held soon");
    steps.0.lock().unwrap().clear();
    spool.hold(message.id, "held by the test").unwrap();

    let seen = steps.0.lock().unwrap().clone();
    let content = dir.path().join(format!("tmp/{}.msg", message.id));
    let content_synced = seen
        .iter()
        .position(|s| *s == format!("sync {}", content.display()));
    let envelope_synced = seen
        .iter()
        .position(|s| s.starts_with("sync ") && s.ends_with(".env"));
    assert!(
        matches!((content_synced, envelope_synced), (Some(c), Some(e)) if c < e),
        "{seen:#?}"
    );
}

/// The queue tools read a running spool without its lock: a message held in the journal
/// alone is listed and shown from its record, once; written out, it is listed from its
/// files; removed, it is gone.
#[test]
fn the_reader_sees_messages_held_in_the_journal_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable()).unwrap();
    let journaled = commit(&spool, b"in the journal alone");
    let written = commit(&spool, b"written out");
    spool.load_envelope(written.id).unwrap();
    let reader = spool::SpoolReader::open(dir.path()).unwrap();

    let listed = reader.list().unwrap();
    let ids: Vec<Option<QueueId>> = listed.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![Some(written.id), Some(journaled.id)]);
    let from_journal = &listed[1];
    assert!(from_journal.path.starts_with(dir.path().join("journal")));
    assert!(!from_journal.held);
    assert_eq!(from_journal.envelope.as_ref().unwrap(), &journaled);
    assert_eq!(reader.show(journaled.id).unwrap(), journaled);
    assert_eq!(
        reader.content_location(journaled.id),
        ContentLocation::JournalRecord(from_journal.path.clone())
    );
    assert_eq!(
        reader.content_location(written.id),
        ContentLocation::File(queued(dir.path(), written.id, "msg"))
    );
    assert_eq!(
        reader.read_content(journaled.id).unwrap(),
        b"in the journal alone"
    );
    assert_eq!(reader.read_content(written.id).unwrap(), b"written out");

    spool.remove(journaled.id).unwrap();
    let ids: Vec<Option<QueueId>> = reader.list().unwrap().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![Some(written.id)]);
    assert!(matches!(
        reader.show(journaled.id),
        Err(spool::Error::NotFound { .. })
    ));
}

/// Removals, write-outs and checkpoints racing from several threads, with a segment so small
/// that checkpoints come every few messages: after a crash, exactly the messages not removed
/// are there, each with its own content.
#[test]
fn removals_and_write_outs_racing_checkpoints_lose_nothing_and_revive_nothing() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        journal_segment: 8 * 1024,
        ..durable()
    };
    let (spool, _) = Spool::open(dir.path(), options).unwrap();
    let kept: Vec<(QueueId, Vec<u8>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let spool = spool.clone();
                scope.spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..PER_THREAD {
                        let body = format!("thread {t} message {i}\r\n").into_bytes();
                        let message = commit(&spool, &body);
                        match i % 3 {
                            0 => spool.remove(message.id).unwrap(),
                            1 => {
                                spool.load_envelope(message.id).unwrap();
                                if i % 2 == 0 {
                                    spool.remove(message.id).unwrap();
                                } else {
                                    kept.push((message.id, body));
                                }
                            }
                            _ => kept.push((message.id, body)),
                        }
                    }
                    kept
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(spool.commit_stats().filesystem_syncs > 10);
    let image = support::crash_image(dir.path());
    drop(spool);

    let (spool, report) = Spool::open(image.path(), options).unwrap();
    let mut expected: Vec<QueueId> = kept.iter().map(|(id, _)| *id).collect();
    expected.sort();
    assert_eq!(queued_ids(&report), expected);
    for (id, body) in &kept {
        assert_eq!(&content(&spool, *id), body);
    }
}

/// Holds the first rename out of `tmp/` — a checkpoint writing out a message, with the
/// journal locked — until told to go.
#[derive(Debug, Default)]
struct HoldFirstWriteOut {
    reached: std::sync::Mutex<bool>,
    go: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl FaultInjector for HoldFirstWriteOut {
    fn before(&self, step: Step<'_>) -> std::io::Result<()> {
        if let Step::Rename { from, .. } = step
            && from.parent().is_some_and(|dir| dir.ends_with("tmp"))
        {
            let mut reached = self.reached.lock().unwrap();
            if !*reached {
                *reached = true;
                self.changed.notify_all();
                drop(reached);
                let go = self.go.lock().unwrap();
                let _go = self.changed.wait_while(go, |go| !*go).unwrap();
            }
        }
        Ok(())
    }
}

/// The manager removes delivered mail from an async task: `try_remove_unwritten` must not
/// wait for a checkpoint that holds the journal, and what it leaves `remove` finishes.
#[test]
fn removing_at_once_never_waits_for_a_busy_journal() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Arc::new(HoldFirstWriteOut::default());
    let options = SpoolOptions {
        journal_segment: 4 * 1024,
        ..durable()
    };
    let (spool, _) = Spool::open_with_faults(dir.path(), options, hold.clone()).unwrap();
    let first = commit(&spool, &[b'a'; 5000]);
    // The next commit finds the segment full and checkpoints, writing `first` out.
    let committer = {
        let spool = spool.clone();
        std::thread::spawn(move || commit(&spool, &[b'b'; 5000]))
    };
    let reached = hold.reached.lock().unwrap();
    let (reached, _) = hold
        .changed
        .wait_timeout_while(reached, std::time::Duration::from_secs(10), |r| !*r)
        .unwrap();
    assert!(*reached, "the checkpoint never wrote a message out");
    drop(reached);

    let (done, answer) = std::sync::mpsc::channel();
    {
        let spool = spool.clone();
        std::thread::spawn(move || done.send(spool.try_remove_unwritten(first.id)));
    }
    let removed = answer.recv_timeout(std::time::Duration::from_secs(5));
    *hold.go.lock().unwrap() = true;
    hold.changed.notify_all();
    assert_eq!(removed, Ok(false), "answered without waiting, nothing done");
    let second = committer.join().unwrap();

    spool.remove(first.id).unwrap();
    let image = support::crash_image(dir.path());
    drop(spool);
    let (_spool, report) = Spool::open(image.path(), options).unwrap();
    assert_eq!(queued_ids(&report), vec![second.id]);
}
