//! When messages are due: a time-ordered index of queued messages (the in-memory twin of the
//! spool's `next_attempt` fields) and the pure back-off function that computes the next attempt.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use spool::QueueId;

/// Delay before attempt number `attempts + 1`, given the configured `retry` list: the
/// `attempts`-th entry (1-based), the last entry repeating once the list is used up.
/// `attempts` counts the attempts already made, so it is at least 1 when this is asked.
pub fn retry_delay(retry: &[Duration], attempts: u32) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(retry.len().saturating_sub(1));
    retry.get(index).copied().unwrap_or(Duration::from_secs(60))
}

/// Whether a message received at `received_at` has outlived `max_age` at `now` (Unix seconds).
pub fn expired(received_at: u64, now: u64, max_age: Duration) -> bool {
    now.saturating_sub(received_at) >= max_age.as_secs()
}

/// What a pop from the schedule found.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Due {
    /// These messages are due now, earliest first.
    Ready(Vec<QueueId>),
    /// Nothing is due; the earliest message is due at this Unix time.
    WaitUntil(u64),
    /// Nothing is scheduled.
    Empty,
}

/// Messages ordered by due time (Unix seconds), then id; each message appears at most once.
#[derive(Debug, Default)]
pub struct Schedule {
    by_time: BTreeSet<(u64, QueueId)>,
    due_of: HashMap<QueueId, u64>,
}

impl Schedule {
    /// Schedules `id` at `due`, replacing an earlier entry for it.
    pub fn insert(&mut self, id: QueueId, due: u64) {
        self.remove(id);
        self.by_time.insert((due, id));
        self.due_of.insert(id, due);
    }

    /// Removes `id`; returns whether it was scheduled.
    pub fn remove(&mut self, id: QueueId) -> bool {
        match self.due_of.remove(&id) {
            Some(due) => self.by_time.remove(&(due, id)),
            None => false,
        }
    }

    /// Whether `id` is scheduled.
    pub fn contains(&self, id: QueueId) -> bool {
        self.due_of.contains_key(&id)
    }

    /// Number of scheduled messages.
    pub fn len(&self) -> usize {
        self.due_of.len()
    }

    /// Takes at most `limit` messages due at or before `now`.
    pub fn pop_due(&mut self, now: u64, limit: usize) -> Due {
        let Some(&(first, _)) = self.by_time.first() else {
            return Due::Empty;
        };
        if first > now {
            return Due::WaitUntil(first);
        }
        let mut ready = Vec::new();
        while ready.len() < limit {
            match self.by_time.first() {
                Some(&(due, id)) if due <= now => {
                    self.by_time.remove(&(due, id));
                    self.due_of.remove(&id);
                    ready.push(id);
                }
                _ => break,
            }
        }
        Due::Ready(ready)
    }

    /// Makes every scheduled message due at `now` (`exorelay queue flush`).
    pub fn flush(&mut self, now: u64) {
        let ids: Vec<QueueId> = self.due_of.keys().copied().collect();
        for id in ids {
            self.insert(id, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|m| Duration::from_secs(m * 60)).collect()
    }

    #[test]
    fn retry_delay_walks_the_list_and_repeats_the_last() {
        let retry = minutes(&[1, 5, 15]);
        let cases = [(0, 1), (1, 1), (2, 5), (3, 15), (4, 15), (100, 15)];
        for (attempts, expected) in cases {
            assert_eq!(
                retry_delay(&retry, attempts),
                Duration::from_secs(expected * 60),
                "{attempts}"
            );
        }
        assert_eq!(retry_delay(&[], 3), Duration::from_secs(60));
    }

    #[test]
    fn expiry_is_inclusive_of_max_age() {
        let day = Duration::from_secs(86_400);
        assert!(!expired(1000, 1000 + 86_399, day));
        assert!(expired(1000, 1000 + 86_400, day));
        assert!(
            !expired(5000, 1000, day),
            "clock going backwards never expires"
        );
    }

    #[test]
    fn pop_due_returns_due_messages_in_order() {
        let (a, b, c) = (
            QueueId::generate(),
            QueueId::generate(),
            QueueId::generate(),
        );
        let mut s = Schedule::default();
        assert_eq!(s.pop_due(10, 10), Due::Empty);
        s.insert(a, 30);
        s.insert(b, 10);
        s.insert(c, 20);
        assert_eq!(s.pop_due(5, 10), Due::WaitUntil(10));
        assert_eq!(s.pop_due(20, 1), Due::Ready(vec![b]));
        assert_eq!(s.pop_due(20, 10), Due::Ready(vec![c]));
        s.insert(a, 40);
        assert_eq!(s.len(), 1, "re-inserting replaces");
        assert_eq!(s.pop_due(35, 10), Due::WaitUntil(40));
        s.flush(35);
        assert_eq!(s.pop_due(35, 10), Due::Ready(vec![a]));
        assert_eq!(s.len(), 0);
        assert!(!s.remove(a));
    }
}
