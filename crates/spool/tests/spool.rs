//! The spool through its public API, in temporary directories: commit and recovery, the
//! start-up scan's removals and quarantines, the lock, group commit, state changes, failure
//! injection and the read-only reader.

// Test helpers outside `#[test]` functions are not covered by `allow-unwrap-in-tests`; a
// failed unwrap in a test helper is a test failure, which is what it should be.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

mod support;

use spool::{
    CommitHandle, Envelope, Error, FaultInjector, MailParameters, QueueId, Recipient,
    RecipientState, Spool, SpoolOptions, SpoolReader, Step,
};

fn fast() -> SpoolOptions {
    SpoolOptions {
        sync: false,
        ..SpoolOptions::default()
    }
}

fn durable_options() -> SpoolOptions {
    SpoolOptions::default()
}

fn envelope(id: QueueId) -> Envelope {
    Envelope {
        version: 1,
        id,
        received_at: 1_700_000_000,
        client_ip: "10.20.0.5".into(),
        client_name: "printers".into(),
        helo: "printer-3.lan".into(),
        tls: false,
        mail_from: "scanner@contoso.com".into(),
        original_mail_from: Some("root@printer-3.lan".into()),
        attempts: 0,
        next_attempt: 1_700_000_000,
        size: 0,
        content_crc32: None,
        held_reason: None,
        params: MailParameters {
            size: None,
            body: Some("8BITMIME".into()),
            smtputf8: false,
            ret: None,
            envid: None,
        },
        recipients: vec![Recipient {
            address: "alice@contoso.com".into(),
            notify: None,
            orcpt: None,
            state: RecipientState::Pending,
            last_reply: None,
            attempts: 0,
        }],
    }
}

/// Writes `content` as a new message and waits for it to be durable.
fn store(spool: &Spool, content: &[u8]) -> Envelope {
    let mut writer = spool.create().unwrap();
    writer.write_all(content).unwrap();
    let env = envelope(writer.id());
    let durable = spool.commit(writer, env).wait().unwrap();
    durable.envelope().clone()
}

/// Names of the files in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn files(spool_dir: &Path, sub: &str) -> Vec<String> {
    names(&spool_dir.join(sub))
}

#[test]
fn commit_then_reopen_recovers_content_and_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let content = b"Received: from printer-3.lan\r\nSubject: scan\r\n\r\n\x00\xffbinary\r\n.\r\n";
    let stored = {
        let (spool, report) = Spool::open(dir.path(), durable_options()).unwrap();
        assert!(report.queued.is_empty());
        store(&spool, content)
    };
    assert_eq!(stored.size, content.len() as u64, "the spool sets size");

    let (spool, report) = Spool::open(dir.path(), durable_options()).unwrap();
    assert_eq!(report.queued, vec![stored.clone()]);
    assert!(report.held.is_empty());
    assert!(report.removed_incomplete.is_empty());
    assert!(report.quarantined.is_empty());
    assert_eq!(spool.load_envelope(stored.id).unwrap(), stored);
    let mut back = Vec::new();
    spool
        .open_content(stored.id)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, content);
    let id = stored.id;
    assert_eq!(
        files(dir.path(), "queue"),
        [format!("{id}.env"), format!("{id}.msg")]
    );
    assert!(files(dir.path(), "tmp").is_empty());
}

#[test]
fn recovered_messages_are_sorted_by_due_time_then_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
        for due in [300, 100, 200, 100] {
            let mut env = store(&spool, b"x");
            env.next_attempt = due;
            spool.update_envelope(&env).unwrap();
            expected.push(env);
        }
    }
    expected.sort_by_key(|e| (e.next_attempt, e.id));
    let (_spool, report) = Spool::open(dir.path(), fast()).unwrap();
    assert_eq!(report.queued, expected);
}

#[test]
fn envelope_file_is_human_readable_toml() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
    let stored = store(&spool, b"hello\r\n");
    let text = fs::read_to_string(dir.path().join(format!("queue/{}.env", stored.id))).unwrap();
    assert!(text.starts_with("version = 1\n"), "{text}");
    assert!(
        text.contains("mail_from = \"scanner@contoso.com\"\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("id = \"{}\"\n", stored.id)),
        "{text}"
    );
    assert!(text.contains("size = 7\n"), "{text}");
    assert!(
        text.contains("[[recipients]]\naddress = \"alice@contoso.com\"\nstate = \"pending\"\n"),
        "{text}"
    );
}

#[test]
fn leftovers_of_unfinished_writes_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path(), fast()).unwrap());
    let tmp_leftover = dir.path().join(format!("tmp/{}.msg", QueueId::generate()));
    fs::write(&tmp_leftover, b"half a message").unwrap();
    let tmp_env = dir.path().join(format!("tmp/{}.env", QueueId::generate()));
    fs::write(&tmp_env, b"version = 1").unwrap();
    // Renamed content without its envelope: the commit died before the .env arrived.
    let lone_msg = dir
        .path()
        .join(format!("queue/{}.msg", QueueId::generate()));
    fs::write(&lone_msg, b"never acknowledged").unwrap();
    let lone_held_msg = dir.path().join(format!("hold/{}.msg", QueueId::generate()));
    fs::write(&lone_held_msg, b"never acknowledged").unwrap();

    let (_spool, report) = Spool::open(dir.path(), fast()).unwrap();
    let mut removed = report.removed_incomplete.clone();
    removed.sort();
    let mut expected = vec![tmp_leftover, tmp_env, lone_msg, lone_held_msg];
    expected.sort();
    assert_eq!(removed, expected);
    assert!(report.quarantined.is_empty());
    assert!(report.queued.is_empty());
    for sub in ["tmp", "queue", "hold", "corrupt"] {
        assert!(
            files(dir.path(), sub).is_empty(),
            "{sub}: {:?}",
            files(dir.path(), sub)
        );
    }
}

/// Makes a queued message, then lets `damage` break it while the spool is closed.
fn damaged(dir: &Path, damage: impl FnOnce(&Path, QueueId)) -> QueueId {
    let (spool, _) = Spool::open(dir, fast()).unwrap();
    let id = store(&spool, b"content").id;
    drop(spool);
    damage(dir, id);
    id
}

/// Checks that message `id` was lost to `corrupt/` with exactly the files `moved`, for
/// `reason`.
fn assert_quarantined(
    dir: &Path,
    report: &spool::RecoveryReport,
    id: QueueId,
    moved: &[PathBuf],
    reason: &str,
) {
    let mut got: Vec<PathBuf> = report.quarantined.iter().map(|(p, _)| p.clone()).collect();
    got.sort();
    let mut want = moved.to_vec();
    want.sort();
    assert_eq!(got, want);
    for (_, why) in &report.quarantined {
        assert!(why.contains(reason), "reason {why:?} lacks {reason:?}");
    }
    assert_eq!(report.damaged, [id]);
    assert!(report.queued.is_empty());
    assert!(files(dir, "queue").is_empty(), "{:?}", files(dir, "queue"));
}

/// Reopens the spool at `dir` and checks that message `id`'s envelope and content were both
/// moved to `corrupt/` for `reason`.
fn reopen_expecting_both_quarantined(dir: &Path, id: QueueId, reason: &str) {
    let (_spool, report) = Spool::open(dir, fast()).unwrap();
    let corrupt = dir.join("corrupt");
    assert_quarantined(
        dir,
        &report,
        id,
        &[
            corrupt.join(format!("{id}.env")),
            corrupt.join(format!("{id}.msg")),
        ],
        reason,
    );
}

#[test]
fn garbage_envelope_is_quarantined_with_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let id = damaged(dir.path(), |d, id| {
        fs::write(d.join(format!("queue/{id}.env")), "this is { not toml").unwrap();
    });
    reopen_expecting_both_quarantined(dir.path(), id, "does not parse");
    let corrupt = dir.path().join("corrupt");
    // Kept, byte for byte, for the operator.
    assert_eq!(
        fs::read(corrupt.join(format!("{id}.msg"))).unwrap(),
        b"content"
    );
    assert_eq!(
        fs::read_to_string(corrupt.join(format!("{id}.env"))).unwrap(),
        "this is { not toml"
    );
}

#[test]
fn non_utf8_envelope_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let id = damaged(dir.path(), |d, id| {
        fs::write(d.join(format!("queue/{id}.env")), b"version = 1\n\xff\xfe").unwrap();
    });
    reopen_expecting_both_quarantined(dir.path(), id, "UTF-8");
}

#[test]
fn unknown_envelope_version_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let id = damaged(dir.path(), |d, id| {
        let path = d.join(format!("queue/{id}.env"));
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("version = 1\n", "version = 99\n")).unwrap();
    });
    reopen_expecting_both_quarantined(dir.path(), id, "unsupported version 99");
}

#[test]
fn envelope_without_content_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let id = damaged(dir.path(), |d, id| {
        fs::remove_file(d.join(format!("queue/{id}.msg"))).unwrap();
    });
    let (_spool, report) = Spool::open(dir.path(), fast()).unwrap();
    assert_quarantined(
        dir.path(),
        &report,
        id,
        &[dir.path().join(format!("corrupt/{id}.env"))],
        "missing",
    );
}

#[test]
fn truncated_content_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let id = damaged(dir.path(), |d, id| {
        fs::write(d.join(format!("queue/{id}.msg")), b"cont").unwrap();
    });
    reopen_expecting_both_quarantined(dir.path(), id, "content is 4 bytes, envelope says 7");
}

#[test]
fn envelope_naming_another_id_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let id = damaged(dir.path(), |d, id| {
        let path = d.join(format!("queue/{id}.env"));
        let text = fs::read_to_string(&path).unwrap();
        let other = QueueId::generate();
        fs::write(&path, text.replace(&id.to_string(), &other.to_string())).unwrap();
    });
    reopen_expecting_both_quarantined(dir.path(), id, "but the file is named");
}

#[test]
fn stray_files_are_quarantined_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path(), fast()).unwrap());
    fs::write(dir.path().join("queue/notes.txt"), "mine").unwrap();
    fs::write(dir.path().join("hold/notes.txt"), "also mine").unwrap();
    let (_spool, report) = Spool::open(dir.path(), fast()).unwrap();
    assert_eq!(report.quarantined.len(), 2);
    assert!(report.damaged.is_empty(), "stray files are no message");
    assert_eq!(files(dir.path(), "corrupt"), ["notes.txt", "notes.txt.1"]);
}

#[test]
fn quarantine_never_overwrites_earlier_quarantined_files() {
    let dir = tempfile::tempdir().unwrap();
    let id = damaged(dir.path(), |d, id| {
        fs::remove_file(d.join(format!("queue/{id}.msg"))).unwrap();
    });
    let old = dir.path().join(format!("corrupt/{id}.env"));
    fs::write(&old, "from last week").unwrap();
    let (_spool, report) = Spool::open(dir.path(), fast()).unwrap();
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(
        report.quarantined[0].0,
        dir.path().join(format!("corrupt/{id}.env.1"))
    );
    assert_eq!(fs::read_to_string(old).unwrap(), "from last week");
}

#[test]
fn second_open_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
    let clone = spool.clone();
    match Spool::open(dir.path(), fast()) {
        Err(Error::Locked { path, pid }) => {
            assert_eq!(path, dir.path().join("lock"));
            assert_eq!(pid, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(spool);
    assert!(
        matches!(Spool::open(dir.path(), fast()), Err(Error::Locked { .. })),
        "a clone still holds it"
    );
    drop(clone);
    let (_again, _) = Spool::open(dir.path(), fast()).unwrap();
}

#[test]
fn reader_works_while_the_daemon_holds_the_lock_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
    let a = store(&spool, b"first");
    let b = store(&spool, b"second");
    spool.hold(b.id, "operator").unwrap();
    // A damaged envelope is listed with its error, not skipped.
    let bad = QueueId::generate();
    fs::write(dir.path().join(format!("queue/{bad}.env")), "nonsense").unwrap();
    fs::write(dir.path().join("corrupt/old.env"), "x").unwrap();
    let before: Vec<_> = ["tmp", "queue", "hold", "corrupt"]
        .iter()
        .map(|s| files(dir.path(), s))
        .collect();

    let reader = SpoolReader::open(dir.path()).unwrap();
    let listed = reader.list().unwrap();
    assert_eq!(listed.len(), 3);
    let ok: Vec<_> = listed
        .iter()
        .filter_map(|m| m.envelope.as_ref().ok().map(|e| (e.id, m.held)))
        .collect();
    assert!(ok.contains(&(a.id, false)));
    assert!(ok.contains(&(b.id, true)));
    let broken: Vec<_> = listed.iter().filter(|m| m.envelope.is_err()).collect();
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].id, Some(bad));
    assert!(matches!(broken[0].envelope, Err(Error::Parse { .. })));

    assert_eq!(reader.show(a.id).unwrap(), a);
    assert_eq!(
        reader.show(b.id).unwrap().held_reason.as_deref(),
        Some("operator")
    );
    assert!(matches!(
        reader.show(QueueId::generate()),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(reader.read_content(a.id).unwrap(), b"first");
    assert_eq!(reader.read_content(b.id).unwrap(), b"second");
    // A message that is gone (never there, or delivered while the daemon runs) is NotFound,
    // as for `show`.
    assert!(matches!(
        reader.read_content(QueueId::generate()),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        reader.corrupt().unwrap(),
        [dir.path().join("corrupt/old.env")]
    );

    let after: Vec<_> = ["tmp", "queue", "hold", "corrupt"]
        .iter()
        .map(|s| files(dir.path(), s))
        .collect();
    assert_eq!(before, after);
    assert!(SpoolReader::open(&dir.path().join("nope")).is_err());
}

#[test]
fn update_envelope_round_trips_in_queue_and_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
    let mut env = store(&spool, b"body");
    env.attempts = 2;
    env.next_attempt = 1_700_000_900;
    env.recipients[0].state = RecipientState::Deferred;
    env.recipients[0].attempts = 2;
    env.recipients[0].last_reply = Some("451 4.7.500 Server busy \"try later\"\nline two".into());
    spool.update_envelope(&env).unwrap();
    assert_eq!(spool.load_envelope(env.id).unwrap(), env);

    spool.hold(env.id, "bad recipient").unwrap();
    let mut held = spool.load_envelope(env.id).unwrap();
    assert_eq!(held.held_reason.as_deref(), Some("bad recipient"));
    held.recipients[0].state = RecipientState::Failed;
    spool.update_envelope(&held).unwrap();
    assert_eq!(spool.load_envelope(env.id).unwrap(), held);
    assert!(
        files(dir.path(), "queue").is_empty(),
        "the update stayed in hold/"
    );

    let unknown = envelope(QueueId::generate());
    assert!(matches!(
        spool.update_envelope(&unknown),
        Err(Error::NotFound { .. })
    ));
    assert!(files(dir.path(), "tmp").is_empty());
    drop(spool);
    let (_spool, report) = Spool::open(dir.path(), fast()).unwrap();
    assert_eq!(report.held, vec![held]);
}

#[test]
fn hold_and_release_move_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
    let env = store(&spool, b"body");
    let id = env.id;
    let pair = [format!("{id}.env"), format!("{id}.msg")];

    spool.hold(id, "suspicious").unwrap();
    assert!(files(dir.path(), "queue").is_empty());
    assert_eq!(files(dir.path(), "hold"), pair);
    assert_eq!(
        spool.load_envelope(id).unwrap().held_reason.as_deref(),
        Some("suspicious")
    );
    let mut content = String::new();
    spool
        .open_content(id)
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "body");
    spool.hold(id, "still suspicious").unwrap();
    assert_eq!(
        spool.load_envelope(id).unwrap().held_reason.as_deref(),
        Some("still suspicious")
    );

    drop(spool);
    let (spool, report) = Spool::open(dir.path(), fast()).unwrap();
    assert!(report.queued.is_empty());
    assert_eq!(report.held.len(), 1);
    assert_eq!(
        report.held[0].held_reason.as_deref(),
        Some("still suspicious")
    );

    spool.release(id).unwrap();
    assert!(files(dir.path(), "hold").is_empty());
    assert_eq!(files(dir.path(), "queue"), pair);
    let released = spool.load_envelope(id).unwrap();
    assert_eq!(released.held_reason, None);
    assert_eq!(released, env);
    spool.release(id).unwrap(); // not held: nothing to do
    assert!(matches!(
        spool.hold(QueueId::generate(), "x"),
        Err(Error::NotFound { .. })
    ));
    assert!(files(dir.path(), "tmp").is_empty());
}

#[test]
fn interrupted_hold_is_completed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = damaged(dir.path(), |d, id| {
        // The crash came between moving the envelope and moving the content.
        fs::rename(
            d.join(format!("queue/{id}.env")),
            d.join(format!("hold/{id}.env")),
        )
        .unwrap();
    });
    let (spool, report) = Spool::open(dir.path(), fast()).unwrap();
    assert!(report.quarantined.is_empty());
    assert!(report.removed_incomplete.is_empty());
    assert_eq!(report.held.len(), 1);
    assert_eq!(report.held[0].id, id);
    assert_eq!(
        files(dir.path(), "hold"),
        [format!("{id}.env"), format!("{id}.msg")]
    );
    spool.release(id).unwrap();
}

#[test]
fn remove_deletes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
    let a = store(&spool, b"a").id;
    let b = store(&spool, b"b").id;
    spool.hold(b, "x").unwrap();
    spool.remove(a).unwrap();
    spool.remove(b).unwrap();
    for sub in ["tmp", "queue", "hold", "corrupt"] {
        assert!(files(dir.path(), sub).is_empty(), "{sub}");
    }
    assert!(matches!(spool.remove(a), Err(Error::NotFound { .. })));
    assert!(matches!(
        spool.load_envelope(a),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(spool.open_content(a), Err(Error::NotFound { .. })));
}

#[test]
fn dropping_an_uncommitted_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
    let mut writer = spool.create().unwrap();
    writer.write_all(&vec![b'x'; 200_000]).unwrap();
    assert_eq!(writer.bytes_written(), 200_000);
    assert_eq!(files(dir.path(), "queue"), [format!("{}.msg", writer.id())]);
    drop(writer);
    assert!(files(dir.path(), "tmp").is_empty());
    assert!(files(dir.path(), "queue").is_empty());
}

#[test]
fn commit_with_the_wrong_id_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
    let mut writer = spool.create().unwrap();
    writer.write_all(b"x").unwrap();
    let result = spool.commit(writer, envelope(QueueId::generate())).wait();
    assert!(
        matches!(result, Err(Error::IdMismatch { .. })),
        "{result:?}"
    );
    assert!(files(dir.path(), "tmp").is_empty());
    assert!(files(dir.path(), "queue").is_empty());
}

/// Streams a 35 MiB message in 64 KiB chunks made on the fly: the content reaches the file as
/// it is written (at most one buffer behind), and arrives whole.
#[test]
fn large_message_streams_to_disk() {
    const SIZE: u64 = 35 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable_options()).unwrap();
    let mut writer = spool.create().unwrap();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sum = 0u64;
    let mut written = 0u64;
    let mut n = 0u8;
    while written < SIZE {
        for byte in chunk.iter_mut() {
            *byte = n;
            n = n.wrapping_add(7);
        }
        sum = chunk
            .iter()
            .fold(sum, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)));
        writer.write_all(&chunk).unwrap();
        written += chunk.len() as u64;
        // The first 64 KiB fit the journal and stay in memory; then the file takes over.
        let on_disk = writer
            .path()
            .map_or(0, |path| fs::metadata(path).unwrap().len());
        assert!(
            written - on_disk <= spool::WRITE_BUFFER as u64,
            "{written} written, {on_disk} on disk"
        );
    }
    assert_eq!(writer.bytes_written(), SIZE);
    let id = writer.id();
    let durable = spool.commit(writer, envelope(id)).wait().unwrap();
    assert_eq!(durable.envelope().size, SIZE);

    let mut file = spool.open_content(id).unwrap();
    assert_eq!(file.metadata().unwrap().len(), SIZE);
    let mut back_sum = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let got = file.read(&mut buf).unwrap();
        if got == 0 {
            break;
        }
        back_sum = buf[..got].iter().fold(back_sum, |s, &b| {
            s.wrapping_mul(31).wrapping_add(u64::from(b))
        });
    }
    assert_eq!(back_sum, sum);
}

#[test]
fn concurrent_commits_are_all_durable_and_share_syncs() {
    const THREADS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable_options()).unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let spool = spool.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut writer = spool.create().unwrap();
                writeln!(writer, "message {i}").unwrap();
                let env = envelope(writer.id());
                barrier.wait();
                let durable = spool.commit(writer, env).wait().unwrap();
                (durable.id(), i)
            })
        })
        .collect();
    let ids: Vec<(QueueId, usize)> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let stats = spool.commit_stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.messages, THREADS as u64);
    assert_eq!(stats.failed, 0);
    assert!(stats.batches <= stats.messages);
    assert!(
        stats.largest_batch > 1,
        "no batch carried more than one message: {stats:?}"
    );

    drop(spool);
    let (spool, report) = Spool::open(dir.path(), fast()).unwrap();
    assert_eq!(report.queued.len(), THREADS);
    for (id, i) in ids {
        let mut text = String::new();
        spool
            .open_content(id)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, format!("message {i}\n"));
    }
}

/// Holds the committer at its first batch until told to go: every later commit piles up
/// meanwhile, so the next batch must carry them all.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    batches: AtomicUsize,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl FaultInjector for Gate {
    fn before(&self, step: Step<'_>) -> io::Result<()> {
        if let Step::BeginBatch { .. } = step {
            self.batches.fetch_add(1, Ordering::SeqCst);
            let open = self.open.lock().unwrap();
            let _open = self.opened.wait_while(open, |open| !*open).unwrap();
        }
        Ok(())
    }
}

#[test]
fn commits_waiting_behind_a_sync_go_in_one_batch() {
    const MESSAGES: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let (spool, _) = Spool::open_with_faults(dir.path(), fast(), gate.clone()).unwrap();
    let mut handles: Vec<CommitHandle> = Vec::new();
    for _ in 0..MESSAGES {
        let mut writer = spool.create().unwrap();
        writer.write_all(b"x").unwrap();
        let env = envelope(writer.id());
        handles.push(spool.commit(writer, env));
        if handles.len() == 1 {
            // The committer has taken the first one and waits at the gate.
            while gate.batches.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    gate.open();
    for handle in handles {
        let _durable = handle.wait().unwrap();
    }
    let stats = spool.commit_stats();
    assert_eq!(stats.batches, 2, "{stats:?}");
    assert_eq!(stats.largest_batch, (MESSAGES - 1) as u64);
    assert_eq!(stats.messages, MESSAGES as u64);
}

#[test]
fn max_batch_caps_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let options = SpoolOptions {
        sync: false,
        max_batch: 8,
        recycle: 0,
        ..SpoolOptions::default()
    };
    let (spool, _) = Spool::open_with_faults(dir.path(), options, gate.clone()).unwrap();
    let handles: Vec<CommitHandle> = (0..40)
        .map(|_| {
            let writer = spool.create().unwrap();
            let env = envelope(writer.id());
            spool.commit(writer, env)
        })
        .collect();
    gate.open();
    for handle in handles {
        let _durable = handle.wait().unwrap();
    }
    let stats = spool.commit_stats();
    assert!(stats.largest_batch <= 8, "{stats:?}");
    assert!(stats.batches >= 5, "{stats:?}");
}

/// The same with the pool in `free/` primed, so the commit of a message too large for the
/// journal takes the reuse path (content and envelope renamed from `free/` into `queue/`): a
/// failure at any of its steps leaves nothing in `queue/`, and the spool goes on working.
#[test]
fn a_failed_commit_into_reused_files_never_leaves_a_file_in_queue() {
    let large = vec![b'x'; 100 * 1024];
    for which in ["rename msg", "rename env", "batch", "syncfs"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
            let earlier = store(&spool, b"delivered earlier");
            spool.remove(earlier.id).unwrap();
        }
        let faults = Arc::new(FailAt {
            which,
            fired: AtomicBool::new(false),
        });
        let (spool, _) =
            Spool::open_with_faults(dir.path(), durable_options(), faults.clone()).unwrap();
        assert_eq!(spool.recyclable_files(), 2, "{which}: the pool is primed");
        commit_fails_and_leaves_queue_empty(&spool, &faults, dir.path(), &large);

        let good = store(&spool, b"fine");
        assert_restart_finds_only(&spool, dir.path(), &good, which);
    }
}

/// A crash now (a copy of the spool, so the journal is replayed rather than checkpointed by a
/// clean close) and a restart find `good` alone — written back from its journal record, as
/// it had no files yet: the refused message is not brought back.
fn assert_restart_finds_only(spool: &Spool, dir: &Path, good: &Envelope, which: &str) {
    let image = support::crash_image(dir);
    let (_restarted, report) = Spool::open(image.path(), durable_options()).unwrap();
    assert_eq!(report.queued, vec![good.clone()], "{which}");
    assert_eq!(report.restored_from_journal, vec![good.id], "{which}");
    assert!(report.quarantined.is_empty(), "{which}");
    drop(_restarted);
    assert_eq!(spool.load_envelope(good.id).unwrap(), *good);
}

/// Commits one message through `spool`, whose `faults` fail one step: the commit must fail
/// with the injected error and leave nothing in `queue/`.
fn commit_fails_and_leaves_queue_empty(spool: &Spool, faults: &FailAt, dir: &Path, content: &[u8]) {
    let which = faults.which;
    let mut writer = spool.create().unwrap();
    writer.write_all(content).unwrap();
    let env = envelope(writer.id());
    let result = spool.commit(writer, env).wait();
    assert!(
        faults.fired.load(Ordering::SeqCst),
        "{which}: fault never reached"
    );
    match result {
        Err(e) => assert!(e.to_string().contains("injected failure"), "{which}: {e}"),
        Ok(d) => panic!("{which}: committed {:?} despite the failure", d.id()),
    }
    assert!(
        files(dir, "queue").is_empty(),
        "{which}: {:?}",
        files(dir, "queue")
    );
}

/// Fails the first step that matches `which`.
#[derive(Debug)]
struct FailAt {
    which: &'static str,
    fired: AtomicBool,
}

impl FaultInjector for FailAt {
    fn before(&self, step: Step<'_>) -> io::Result<()> {
        let name = match step {
            Step::BeginBatch { .. } => "batch",
            Step::SyncFile(p) if p.extension().is_some_and(|e| e == "msg") => "sync msg",
            Step::SyncFile(_) => "sync env",
            Step::Rename { from, .. } if from.extension().is_some_and(|e| e == "msg") => {
                "rename msg"
            }
            Step::Rename { .. } => "rename env",
            Step::SyncDir(_) => "sync dir",
            Step::SyncFilesystem(_) => "syncfs",
            Step::SyncJournal(_) => "sync journal",
            _ => "other",
        };
        if name == self.which && !self.fired.swap(true, Ordering::SeqCst) {
            return Err(io::Error::other(format!("injected failure at {name}")));
        }
        Ok(())
    }
}

/// A failure at any step of a commit — through the journal for a small message, through
/// `syncfs` for one too large for the journal — fails that commit only, leaves nothing in
/// `queue/`, and a restart (which replays the journal) finds only the good message.
#[test]
fn a_failed_commit_never_leaves_a_file_in_queue() {
    let large = vec![b'x'; 100 * 1024];
    let cases: [(&str, &[u8]); 6] = [
        ("batch", b"doomed"),
        ("sync journal", b"doomed"),
        ("batch", &large),
        ("sync msg", &large),
        ("sync env", &large),
        ("syncfs", &large),
    ];
    for (which, content) in cases {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FailAt {
            which,
            fired: AtomicBool::new(false),
        });
        let (spool, _) =
            Spool::open_with_faults(dir.path(), durable_options(), faults.clone()).unwrap();
        commit_fails_and_leaves_queue_empty(&spool, &faults, dir.path(), content);
        assert!(
            files(dir.path(), "tmp").is_empty(),
            "{which}: {:?}",
            files(dir.path(), "tmp")
        );
        assert_eq!(spool.commit_stats().failed, 1);

        // The spool keeps working, and a restart finds only the good message.
        let good = store(&spool, b"fine");
        assert_restart_finds_only(&spool, dir.path(), &good, which);
    }
}

#[test]
fn a_dropped_commit_handle_withdraws_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let (spool, _) = Spool::open_with_faults(dir.path(), durable_options(), gate.clone()).unwrap();
    let writer = spool.create().unwrap();
    let abandoned = writer.id();
    let env = envelope(abandoned);
    let handle = spool.commit(writer, env);
    while gate.batches.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(handle); // the client hung up before the 250
    gate.open();
    // A later commit is processed after the abandoned one; once it is durable, the first is
    // gone. Both are small, so neither has files: only the journal knows them.
    let kept = store(&spool, b"kept");
    let id = kept.id;
    assert!(files(dir.path(), "queue").is_empty());
    assert!(matches!(
        spool.load_envelope(abandoned),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(spool.commit_stats().failed, 1);
    // Its journal record does not bring it back after a crash either.
    let image = support::crash_image(dir.path());
    let (_restarted, report) = Spool::open(image.path(), durable_options()).unwrap();
    let queued: Vec<QueueId> = report.queued.iter().map(|e| e.id).collect();
    assert_eq!(queued, vec![id]);
    assert!(!report.restored_from_journal.contains(&abandoned));
}

#[test]
fn commit_handle_can_be_awaited() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), durable_options()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let id = runtime.block_on(async {
        let mut writer = spool.create().unwrap();
        writer.write_all(b"async").unwrap();
        let env = envelope(writer.id());
        spool.commit(writer, env).await.unwrap().id()
    });
    assert_eq!(spool.load_envelope(id).unwrap().size, 5);
}

#[test]
fn spool_is_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Spool>();
    fn send<T: Send>() {}
    send::<spool::MessageWriter>();
    send::<CommitHandle>();
    send::<Error>();
}

/// Start-up with 100,000 queued messages (design target: ready within 5 s). Slow to set up,
/// so run by hand: `cargo test -p spool --release -- --ignored --nocapture recovery_scale`.
#[test]
#[ignore]
fn recovery_scale() {
    const MESSAGES: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
        let content = vec![b'x'; 2048];
        let mut handles = Vec::new();
        for _ in 0..MESSAGES {
            let mut writer = spool.create().unwrap();
            writer.write_all(&content).unwrap();
            let env = envelope(writer.id());
            handles.push(spool.commit(writer, env));
            if handles.len() == 1000 {
                for h in handles.drain(..) {
                    let _durable = h.wait().unwrap();
                }
            }
        }
        for h in handles {
            let _durable = h.wait().unwrap();
        }
    }
    let start = std::time::Instant::now();
    let (_spool, report) = Spool::open(dir.path(), durable_options()).unwrap();
    let took = start.elapsed();
    eprintln!("recovered {} messages in {took:?}", report.queued.len());
    assert_eq!(report.queued.len(), MESSAGES);
}

#[test]
fn an_empty_envelope_is_an_unacknowledged_commit_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let id = damaged(dir.path(), |dir, id| {
        fs::write(dir.join(format!("queue/{id}.env")), b"").unwrap();
    });
    let (_spool, report) = Spool::open(dir.path(), fast()).unwrap();
    let mut removed = report.removed_incomplete.clone();
    removed.sort();
    let expected = vec![
        dir.path().join(format!("queue/{id}.env")),
        dir.path().join(format!("queue/{id}.msg")),
    ];
    assert_eq!(removed, expected);
    assert!(report.quarantined.is_empty() && report.queued.is_empty());
    assert!(files(dir.path(), "queue").is_empty());
}

#[test]
fn deferred_recovery_leaves_mail_arriving_meanwhile_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), fast()).unwrap();
    let old = store(&spool, b"queued before the restart");
    drop(spool);
    let lone_msg = dir
        .path()
        .join(format!("queue/{}.msg", QueueId::generate()));
    fs::write(&lone_msg, b"never acknowledged").unwrap();
    let tmp_leftover = dir.path().join(format!("tmp/{}.msg", QueueId::generate()));
    fs::write(&tmp_leftover, b"half a message").unwrap();

    let (spool, recovery) = Spool::open_deferred(dir.path(), fast()).unwrap();
    assert!(
        !tmp_leftover.exists(),
        "tmp/ is cleared before new mail is taken"
    );
    // New mail while the scan has not run: one message committed, one still being written
    // with its content already renamed into queue/ by hand (the state half-way through a
    // commit), which the scan must not take for an incomplete leftover.
    let new = store(&spool, b"arrived during recovery");
    let mut writing = spool.create().unwrap();
    writing.write_all(b"still being written").unwrap();
    let half_committed = dir.path().join(format!("queue/{}.msg", writing.id()));
    fs::write(&half_committed, b"still being written").unwrap();

    let report = recovery.run().unwrap();
    let recovered: Vec<QueueId> = report.queued.iter().map(|e| e.id).collect();
    assert_eq!(
        recovered,
        vec![old.id],
        "only the messages from before the restart"
    );
    let mut removed = report.removed_incomplete.clone();
    removed.sort();
    let mut expected = vec![tmp_leftover, lone_msg];
    expected.sort();
    assert_eq!(
        removed, expected,
        "tmp/ at open, the lone content file in the scan"
    );
    assert!(
        half_committed.exists(),
        "a message of this process is left alone"
    );
    assert!(dir.path().join(format!("queue/{}.env", new.id)).exists());
    assert_eq!(spool.load_envelope(new.id).unwrap().id, new.id);
}

/// A deferred recovery racing with new mail: over many fresh starts, the scan runs while
/// other threads create messages as fast as they can. Every message created then must
/// survive the scan (the scan once listed a content file created a moment before its id was
/// registered as new, and removed it as incomplete).
#[test]
fn deferred_recovery_never_removes_a_message_created_while_it_runs() {
    const STARTS: usize = 100;
    const WRITERS: usize = 3;
    const MESSAGES_PER_WRITER: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let mut removed_new = Vec::new();
    for _ in 0..STARTS {
        let (spool, recovery) = Spool::open_deferred(dir.path(), fast()).unwrap();
        let start = Arc::new(Barrier::new(WRITERS + 1));
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (spool, start) = (spool.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    (0..MESSAGES_PER_WRITER)
                        .map(|_| spool.create().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        start.wait();
        let report = recovery.run().unwrap();
        for writer in writers.into_iter().flat_map(|w| w.join().unwrap()) {
            let path = dir.path().join(format!("queue/{}.msg", writer.id()));
            if !path.exists() || report.removed_incomplete.contains(&path) {
                removed_new.push(writer.id());
            }
        }
    }
    assert!(
        removed_new.is_empty(),
        "{} messages being written were removed by the scan: {removed_new:?}",
        removed_new.len()
    );
}
