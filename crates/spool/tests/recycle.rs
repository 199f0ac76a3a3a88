//! Reuse of delivered messages' files (`free/`) and the content checksum that guards it:
//! reused files carry exactly the new message, the pool stays bounded, and content that does
//! not match its envelope is caught before delivery.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

mod support;

use spool::{Envelope, Error, QueueId, Spool, SpoolOptions};
use support::store;

fn options(recycle: usize) -> SpoolOptions {
    SpoolOptions {
        sync: false,
        recycle,
        ..SpoolOptions::default()
    }
}

fn inode(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

fn msg_path(dir: &Path, id: QueueId) -> std::path::PathBuf {
    dir.join(format!("queue/{id}.msg"))
}

fn env_path(dir: &Path, id: QueueId) -> std::path::PathBuf {
    dir.join(format!("queue/{id}.env"))
}

fn free_inodes(dir: &Path) -> Vec<u64> {
    let mut inodes: Vec<u64> = fs::read_dir(dir.join("free"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().ino())
        .collect();
    inodes.sort_unstable();
    inodes
}

#[test]
fn a_new_message_reuses_the_files_of_a_delivered_one_and_carries_only_its_own_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), options(16)).unwrap();
    // A long message with many recipients, so both of its files are longer than the next's.
    let old = store(&spool, &[b'x'; 9000], 40);
    let old_inodes = {
        let mut v = vec![
            inode(&msg_path(dir.path(), old.id)),
            inode(&env_path(dir.path(), old.id)),
        ];
        v.sort_unstable();
        v
    };
    spool.remove(old.id).unwrap();
    assert_eq!(
        free_inodes(dir.path()),
        old_inodes,
        "both files kept in free/"
    );
    assert_eq!(spool.recyclable_files(), 2);

    let new = store(&spool, b"Subject: short\r\n\r\nhi\r\n", 1);
    let mut new_inodes = vec![
        inode(&msg_path(dir.path(), new.id)),
        inode(&env_path(dir.path(), new.id)),
    ];
    new_inodes.sort_unstable();
    assert_eq!(
        new_inodes, old_inodes,
        "the new message lives in the old inodes"
    );
    assert!(free_inodes(dir.path()).is_empty());
    assert_eq!(
        fs::read(msg_path(dir.path(), new.id)).unwrap(),
        b"Subject: short\r\n\r\nhi\r\n",
        "no byte of the old content is left"
    );
    assert_eq!(spool.load_envelope(new.id).unwrap(), new);
    spool.verify_content(&new).unwrap();

    drop(spool);
    let (_spool, report) = Spool::open(dir.path(), options(16)).unwrap();
    let ids: Vec<QueueId> = report.queued.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![new.id]);
    assert!(report.quarantined.is_empty() && report.removed_incomplete.is_empty());
}

#[test]
fn the_pool_is_bounded_and_big_files_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), options(3)).unwrap();
    let small: Vec<Envelope> = (0..3).map(|_| store(&spool, b"small\r\n", 1)).collect();
    let big = store(&spool, &vec![b'b'; 200 * 1024], 1);
    spool.remove(big.id).unwrap();
    assert_eq!(
        spool.recyclable_files(),
        1,
        "only the big message's envelope"
    );
    for e in &small {
        spool.remove(e.id).unwrap();
    }
    assert_eq!(spool.recyclable_files(), 3);
    assert_eq!(free_inodes(dir.path()).len(), 3, "the rest were unlinked");

    drop(spool);
    let (spool, _) = Spool::open(dir.path(), options(1)).unwrap();
    assert_eq!(
        spool.recyclable_files(),
        1,
        "a smaller limit at open trims free/"
    );
    assert_eq!(free_inodes(dir.path()).len(), 1);
}

#[test]
fn with_recycling_off_files_are_unlinked() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), options(0)).unwrap();
    let e = store(&spool, b"x\r\n", 1);
    spool.remove(e.id).unwrap();
    assert!(free_inodes(dir.path()).is_empty());
    assert!(!msg_path(dir.path(), e.id).exists() && !env_path(dir.path(), e.id).exists());
}

#[test]
fn many_messages_through_a_small_pool_stay_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), options(4)).unwrap();
    let mut live = Vec::new();
    for round in 0..50usize {
        // Sizes go up and down so reused files are both longer and shorter than before.
        let content = format!("message {round}\r\n").repeat(1 + (round * 37) % 300);
        let e = store(&spool, content.as_bytes(), 1 + round % 7);
        live.push((e, content));
        if live.len() > 3 {
            let (gone, _) = live.remove(0);
            spool.remove(gone.id).unwrap();
        }
        for (e, content) in &live {
            assert_eq!(
                fs::read(msg_path(dir.path(), e.id)).unwrap(),
                content.as_bytes()
            );
            assert_eq!(&spool.load_envelope(e.id).unwrap(), e);
            spool.verify_content(e).unwrap();
        }
    }
}

#[test]
fn content_that_does_not_match_its_checksum_is_caught_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), options(16)).unwrap();
    let e = store(&spool, b"Subject: payroll\r\n\r\nfor alice only\r\n", 1);
    assert!(e.content_crc32.is_some(), "the spool records the checksum");
    spool.verify_content(&e).unwrap();

    // What a power loss can leave: the envelope on disk, the content not (here: the bytes
    // of some other message, same length).
    fs::write(
        msg_path(dir.path(), e.id),
        b"Subject: payroll\r\n\r\nfor bob only!!\r\n",
    )
    .unwrap();
    let err = spool.verify_content(&e).unwrap_err();
    assert!(matches!(err, Error::Inconsistent { .. }), "{err}");
    assert!(err.to_string().contains("CRC-32"), "{err}");

    let moved = spool.quarantine(e.id).unwrap();
    assert_eq!(moved.len(), 2);
    assert!(
        moved
            .iter()
            .all(|p| p.starts_with(dir.path().join("corrupt")))
    );
    assert!(!msg_path(dir.path(), e.id).exists());
    assert!(matches!(
        spool.load_envelope(e.id),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn an_envelope_without_a_checksum_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), options(16)).unwrap();
    let mut e = store(&spool, b"old format\r\n", 1);
    e.content_crc32 = None;
    spool.update_envelope(&e).unwrap();
    spool
        .verify_content(&spool.load_envelope(e.id).unwrap())
        .unwrap();
}
