//! The relay's counters, every one defined here with its help text and a closed set of names,
//! rendered in the Prometheus text format (`exorelay queue metrics`, through the control
//! socket). Plain atomics: counting never blocks a session.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter with its exposition name and help text.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Messages accepted (answered 250 after the spool commit).
pub static ACCEPTED: Counter = Counter::new(
    "exorelay_messages_accepted_total",
    "Messages accepted and made durable.",
);
/// Replies refusing a command or a message (4xx/5xx) sent to clients.
pub static REFUSALS: Counter = Counter::new(
    "exorelay_refusals_total",
    "4xx/5xx replies sent to clients.",
);
/// Connections refused because the client is in no `[[client]]` network.
pub static CLIENTS_DENIED: Counter = Counter::new(
    "exorelay_clients_denied_total",
    "Connections from clients in no [[client]] network.",
);
/// Envelope senders rewritten by pre-flight (`fix`).
pub static PREFLIGHT_FIXED: Counter = Counter::new(
    "exorelay_preflight_fixed_total",
    "Recipients whose message's envelope sender pre-flight rewrote (fix).",
);
/// Recipients refused by pre-flight (`refuse`).
pub static PREFLIGHT_REFUSED: Counter = Counter::new(
    "exorelay_preflight_refused_total",
    "Recipients refused at RCPT because EXO would refuse them (refuse).",
);
/// Recipients EXO is predicted to refuse, delivered anyway (`warn`).
pub static PREFLIGHT_WARNED: Counter = Counter::new(
    "exorelay_preflight_warned_total",
    "Recipients EXO is predicted to refuse, delivered anyway (warn).",
);
/// Recipients delivered upstream.
pub static DELIVERED: Counter = Counter::new(
    "exorelay_recipients_delivered_total",
    "Recipients accepted by the upstream.",
);
/// Recipient attempts deferred.
pub static DEFERRED: Counter = Counter::new(
    "exorelay_recipients_deferred_total",
    "Recipient attempts deferred (4xx, network, TLS).",
);
/// Recipients failed permanently.
pub static FAILED: Counter = Counter::new(
    "exorelay_recipients_failed_total",
    "Recipients failed permanently (5xx, expiry, bounce).",
);
/// Messages held for a configuration fault.
pub static HELD: Counter = Counter::new(
    "exorelay_messages_held_total",
    "Messages held because only a configuration change can fix them.",
);
/// DSNs queued.
pub static DSNS: Counter = Counter::new(
    "exorelay_dsns_total",
    "Delivery status notifications queued.",
);
/// Upstream connections opened.
pub static CONNECTIONS: Counter = Counter::new(
    "exorelay_upstream_connections_total",
    "Connections opened to upstreams.",
);

/// Messages moved to `corrupt/`, by the start-up scan or before an attempt: their envelope was
/// damaged or their content did not match it.
pub static QUARANTINED: Counter = Counter::new(
    "exorelay_messages_quarantined_total",
    "Messages moved to corrupt/ because their envelope was damaged or their content did not match it.",
);

const ALL: [&Counter; 13] = [
    &ACCEPTED,
    &REFUSALS,
    &CLIENTS_DENIED,
    &PREFLIGHT_FIXED,
    &PREFLIGHT_REFUSED,
    &PREFLIGHT_WARNED,
    &DELIVERED,
    &DEFERRED,
    &FAILED,
    &HELD,
    &DSNS,
    &CONNECTIONS,
    &QUARANTINED,
];

/// Every counter in the Prometheus text exposition format, followed by the spool's group
/// commit counters (how many messages one sync covers: messages / batches) and the queue's
/// backlog gauge (`waiting`: new messages waiting for their first attempt).
pub fn render(commits: &spool::CommitStats, waiting: usize) -> String {
    let mut out = String::new();
    let spool = [
        (
            "exorelay_spool_commit_batches_total",
            "Group commits (one sync each).",
            commits.batches,
        ),
        (
            "exorelay_spool_journal_syncs_total",
            "Group commits made durable by one fdatasync of the commit journal.",
            commits.journal_syncs,
        ),
        (
            "exorelay_spool_filesystem_syncs_total",
            "syncfs calls: group commits holding a message too large for the journal, and journal checkpoints.",
            commits.filesystem_syncs,
        ),
        (
            "exorelay_spool_journal_segment_switches_total",
            "Full commit journal segments switched: by a checkpoint (one syncfs), or by carrying the live records forward without files or syncfs.",
            commits.segment_switches,
        ),
        (
            "exorelay_spool_commit_messages_total",
            "Messages made durable by group commits.",
            commits.messages,
        ),
        (
            "exorelay_spool_written_out_total",
            "Small messages written out of the commit journal into queue files (deferred, held, read back, or queued at a checkpoint); the rest never had files.",
            commits.written_out,
        ),
        (
            "exorelay_spool_commit_failures_total",
            "Messages whose commit failed (answered 451).",
            commits.failed,
        ),
    ];
    let counters = ALL.iter().map(|c| (c.name, c.help, c.get()));
    for (name, help, value) in counters.chain(spool) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    }
    let name = "exorelay_queue_waiting_messages";
    let _ = writeln!(
        out,
        "# HELP {name} New messages waiting for their first delivery attempt (flow control holds new mail back while this reaches the queue manager's window: 8 x the upstreams' max_connections together, at least 64)."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {waiting}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_counter_with_help() {
        DSNS.inc();
        let text = render(&spool::CommitStats::default(), 42);
        for c in ALL {
            assert!(text.contains(&format!("# HELP {} ", c.name)));
            assert!(text.contains(&format!("# TYPE {} counter", c.name)));
        }
        assert!(DSNS.get() >= 1);
        assert!(text.contains("exorelay_spool_commit_batches_total 0"));
        assert!(text.contains("exorelay_spool_journal_syncs_total 0"));
        assert!(text.contains("exorelay_spool_filesystem_syncs_total 0"));
        assert!(text.contains("exorelay_spool_written_out_total 0"));
        assert!(text.contains("exorelay_spool_journal_segment_switches_total 0"));
        assert!(text.contains("# TYPE exorelay_queue_waiting_messages gauge"));
        assert!(text.contains("\nexorelay_queue_waiting_messages 42\n"));
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.split(' ').count() == 2)
        );
    }
}
