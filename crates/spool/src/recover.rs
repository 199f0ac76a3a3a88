//! The start-up scan: put the spool back into a state where every file is accounted for.
//!
//! Runs once in `Spool::open`, with the lock held and before the committer starts. Rules:
//!
//! * everything in `tmp/` is an unfinished envelope rewrite or write-out from the journal →
//!   removed;
//! * a `.msg` with no `.env` for its id in `queue/` or `hold/` is an incomplete write (the
//!   envelope is written last, so this message never got a 250) → removed; so is a `.msg`
//!   whose `.env` in `queue/` is empty (a commit cut short by a power loss before its sync);
//! * an `.env` whose `.msg` is in the *other* of `queue/`/`hold/` is an interrupted hold or
//!   release → the `.msg` is moved to the envelope (the envelope's place is the message's);
//! * an `.env` that does not parse, has an unknown version, names another id, lacks its
//!   `.msg`, or records a size its `.msg` does not have → both files moved to `corrupt/`
//!   and reported, never deleted;
//! * anything else in `queue/` or `hold/` (a stray name) → moved to `corrupt/` and reported;
//! * `free/` is not scanned: its files belong to no message (the spool reuses them).
//!
//! Message bodies are never read, only their size is looked up, so start-up time grows with
//! the number of envelopes, not with the bytes queued (the content checksum is checked later,
//! before each such message's delivery: `Spool::verify_content`). Ordering the result by due time is the
//! only scheduling done here.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::disk::{self, Disk, ENV_EXT, Layout, MSG_EXT};
use crate::{Envelope, Error, QueueId};

/// What the start-up scan found and did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Every valid message in `queue/`, sorted by `next_attempt`, then id.
    pub queued: Vec<Envelope>,
    /// Every valid message in `hold/`, sorted by id.
    pub held: Vec<Envelope>,
    /// Files of unfinished writes that were removed (from `tmp/`, or a `.msg` without `.env`).
    pub removed_incomplete: Vec<PathBuf>,
    /// Files moved to `corrupt/` (their new path) and why. An operator must look at these.
    pub quarantined: Vec<(PathBuf, String)>,
    /// Messages lost to `corrupt/` because their files did not make a whole message: no
    /// longer queued. Not among them: files restored from the commit journal, a held
    /// duplicate of a queued message, and stray files.
    pub damaged: Vec<QueueId>,
    /// Acknowledged messages whose files a crash had lost or damaged, written back from the
    /// commit journal before the scan (they are in `queued` too).
    pub restored_from_journal: Vec<QueueId>,
}

/// Which files one id has in one directory.
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    msg: bool,
    env: bool,
}

/// Which of the two message directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Queue,
    Hold,
}

pub(crate) fn recover(disk: &Disk) -> Result<RecoveryReport, Error> {
    let report = clear_tmp(disk)?;
    scan_messages(disk, report, &|_| false)
}

/// The first half of recovery, which must finish before any new message is written: empties
/// `tmp/`.
pub(crate) fn clear_tmp(disk: &Disk) -> Result<RecoveryReport, Error> {
    let mut scan = Scan {
        disk,
        report: RecoveryReport::default(),
        changed: false,
    };
    scan.clear_tmp()?;
    if scan.changed {
        disk.sync_dir(&disk.layout.tmp)?;
    }
    Ok(scan.report)
}

/// The second half: settles `queue/` and `hold/`, adding to `report`. Ids for which `skip`
/// is true — messages written by this process since the spool opened — are left alone, so
/// the scan can run while new mail arrives.
pub(crate) fn scan_messages(
    disk: &Disk,
    report: RecoveryReport,
    skip: &dyn Fn(QueueId) -> bool,
) -> Result<RecoveryReport, Error> {
    let mut scan = Scan {
        disk,
        report,
        changed: false,
    };
    let queue = scan.list(Place::Queue)?;
    let hold = scan.list(Place::Hold)?;

    let mut ids: Vec<QueueId> = queue.keys().chain(hold.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.retain(|id| !skip(*id));
    for id in ids {
        let q = queue.get(&id).copied().unwrap_or_default();
        let h = hold.get(&id).copied().unwrap_or_default();
        match (q.env, h.env) {
            (true, true) => {
                // Renames keep one envelope per id, so this is a copy made by hand. Keep the
                // queued one; set the held one aside for an operator to compare.
                scan.settle(id, Place::Queue, q.msg, false)?;
                let reason = format!("duplicate: {id} is also in queue/");
                scan.quarantine(&scan.path(Place::Hold, id, ENV_EXT), &reason)?;
                if h.msg {
                    scan.quarantine(&scan.path(Place::Hold, id, MSG_EXT), &reason)?;
                }
            }
            (true, false) => {
                scan.settle(id, Place::Queue, q.msg, h.msg)?;
            }
            (false, true) => {
                scan.settle(id, Place::Hold, h.msg, q.msg)?;
            }
            (false, false) => {}
        }
        // A content file left without an envelope in its own directory is incomplete.
        // (`settle` has already moved the one an envelope elsewhere was waiting for.)
        if q.msg && !q.env && !h.env {
            scan.remove_incomplete(&scan.path(Place::Queue, id, MSG_EXT))?;
        }
        if h.msg && !h.env && !q.env {
            scan.remove_incomplete(&scan.path(Place::Hold, id, MSG_EXT))?;
        }
        if q.msg && !q.env && h.env && h.msg {
            scan.remove_incomplete(&scan.path(Place::Queue, id, MSG_EXT))?;
        }
        if h.msg && !h.env && q.env && q.msg {
            scan.remove_incomplete(&scan.path(Place::Hold, id, MSG_EXT))?;
        }
    }

    if scan.changed {
        let layout = &disk.layout;
        for dir in [&layout.tmp, &layout.queue, &layout.hold, &layout.corrupt] {
            disk.sync_dir(dir)?;
        }
    }
    let mut report = scan.report;
    report.queued.sort_by_key(|e| (e.next_attempt, e.id));
    report.held.sort_by_key(|e| e.id);
    Ok(report)
}

struct Scan<'a> {
    disk: &'a Disk,
    report: RecoveryReport,
    changed: bool,
}

impl Scan<'_> {
    fn dir(&self, place: Place) -> &Path {
        match place {
            Place::Queue => &self.disk.layout.queue,
            Place::Hold => &self.disk.layout.hold,
        }
    }

    fn path(&self, place: Place, id: QueueId, ext: &str) -> PathBuf {
        Layout::file(self.dir(place), id, ext)
    }

    fn clear_tmp(&mut self) -> Result<(), Error> {
        let tmp = self.disk.layout.tmp.clone();
        for entry in read_dir(&tmp)? {
            let entry = entry.map_err(|e| Error::io("read directory", &tmp, e))?;
            let path = entry.path();
            let is_dir = entry
                .file_type()
                .map_err(|e| Error::io("stat", &path, e))?
                .is_dir();
            if is_dir {
                // The spool never makes directories here; someone else did. Leave it be.
                tracing::warn!(path = %path.display(), "unexpected directory in spool tmp/, left alone");
                continue;
            }
            self.remove_incomplete(&path)?;
        }
        Ok(())
    }

    /// Lists one message directory by id; stray names go to `corrupt/` straight away.
    fn list(&mut self, place: Place) -> Result<BTreeMap<QueueId, Present>, Error> {
        let dir = self.dir(place).to_owned();
        let mut found: BTreeMap<QueueId, Present> = BTreeMap::new();
        for entry in read_dir(&dir)? {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let parsed = name.to_str().and_then(disk::parse_name);
            match parsed {
                Some((id, MSG_EXT)) => found.entry(id).or_default().msg = true,
                Some((id, ENV_EXT)) => found.entry(id).or_default().env = true,
                _ => {
                    let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                    if is_dir {
                        tracing::warn!(path = %path.display(), "unexpected directory in spool, left alone");
                    } else {
                        self.quarantine(&path, "file name is not ID.msg or ID.env")?;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Checks the message whose envelope is in `place` and files it in the report, or
    /// quarantines it. `other_msg`: the content file is in the other directory.
    fn settle(
        &mut self,
        id: QueueId,
        place: Place,
        has_msg: bool,
        other_msg: bool,
    ) -> Result<(), Error> {
        let env_path = self.path(place, id, ENV_EXT);
        let msg_path = self.path(place, id, MSG_EXT);
        let mut has_msg = has_msg;
        if !has_msg && other_msg {
            let other = match place {
                Place::Queue => Place::Hold,
                Place::Hold => Place::Queue,
            };
            let from = self.path(other, id, MSG_EXT);
            tracing::warn!(queue_id = %id, from = %from.display(), "finishing an interrupted hold or release");
            self.disk.rename(&from, &msg_path)?;
            self.changed = true;
            has_msg = true;
        }
        if !has_msg {
            let reason = format!("content file {id}.{MSG_EXT} is missing");
            self.report.damaged.push(id);
            return self.quarantine(&env_path, &reason);
        }
        // An empty envelope is a commit cut short before its sync (a committed envelope is
        // never empty): the message was never acknowledged.
        if place == Place::Queue && fs::metadata(&env_path).is_ok_and(|m| m.len() == 0) {
            self.remove_incomplete(&env_path)?;
            return self.remove_incomplete(&msg_path);
        }
        let checked = disk::read_envelope(&env_path, id).and_then(|envelope| {
            let len = fs::metadata(&msg_path)
                .map_err(|e| Error::io("stat", &msg_path, e))?
                .len();
            if len == envelope.size {
                Ok(envelope)
            } else {
                Err(Error::Inconsistent {
                    path: msg_path.clone(),
                    reason: format!("content is {len} bytes, envelope says {}", envelope.size),
                })
            }
        });
        match checked {
            Ok(envelope) => {
                match place {
                    Place::Queue => self.report.queued.push(envelope),
                    Place::Hold => self.report.held.push(envelope),
                }
                Ok(())
            }
            Err(error) => {
                let reason = error.to_string();
                self.report.damaged.push(id);
                self.quarantine(&env_path, &reason)?;
                self.quarantine(&msg_path, &reason)
            }
        }
    }

    fn quarantine(&mut self, path: &Path, reason: &str) -> Result<(), Error> {
        let dest = self.disk.quarantine(path)?;
        tracing::error!(from = %path.display(), to = %dest.display(), reason, "quarantined spool file");
        self.report.quarantined.push((dest, reason.to_owned()));
        self.changed = true;
        Ok(())
    }

    fn remove_incomplete(&mut self, path: &Path) -> Result<(), Error> {
        disk::remove_file(path)?;
        tracing::info!(path = %path.display(), "removed incomplete spool file (never acknowledged)");
        self.report.removed_incomplete.push(path.to_owned());
        self.changed = true;
        Ok(())
    }
}

fn read_dir(dir: &Path) -> Result<fs::ReadDir, Error> {
    fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))
}
