//! The queue manager: one task that owns every state change of queued messages. It keeps the
//! time-ordered schedule, hands due messages to per-upstream delivery workers (a concurrency
//! limit per upstream, each worker reusing its connection for message after message), writes
//! each attempt's per-recipient outcome back to the spool, schedules retries on the back-off
//! list, expires old messages, queues DSNs, holds messages that only a configuration change can
//! fix, and carries out the administrator's queue commands — deferring those that concern a
//! message in flight until its attempt ends, so no command races a delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use smtp::Reply;
use smtp::client::TransactionOutcome;
use spool::{Envelope, QueueId, RecipientState, Spool};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::config::Config;
use crate::delivery::client::DeliveryError;
use crate::delivery::exo::{self, Decision};
use crate::delivery::pool::{Attempt, Pool};
use crate::delivery::route::{self, Route};
use crate::inbound::session::now_unix;
use crate::metrics;
use crate::queue::bounce;
use crate::queue::schedule::{Due, Schedule, expired, retry_delay};

/// An administrator's command on the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Make one message, or every message, due now.
    Flush(Option<QueueId>),
    /// Stop delivering a message until released.
    Hold(QueueId),
    /// Put a held message back on the schedule, due now.
    Release(QueueId),
    /// Remove a message without telling anyone.
    Delete(QueueId),
    /// Give up on a message's remaining recipients and send a DSN.
    Bounce(QueueId),
}

/// Messages for the manager.
enum Event {
    /// A message was committed to the spool (with its content, when the spool kept a copy).
    Queued(Box<Envelope>, Option<Vec<u8>>),
    /// The start-up scan found a message (due now or later): only scheduled, so old mail
    /// waiting for its retry time does not count as backlog for flow control.
    Recovered(Box<Envelope>),
    /// An administrator's command, answered on `reply`.
    Command {
        command: Command,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// The handle sessions and the control socket use to reach the manager.
#[derive(Clone)]
pub struct QueueHandle {
    events: mpsc::UnboundedSender<Event>,
    /// Messages waiting for their first attempt, as last published by the manager.
    waiting: watch::Receiver<usize>,
    /// Above this many waiting messages, [`QueueHandle::admit`] pauses new messages.
    waiting_limit: usize,
    in_flow_delay: Duration,
}

impl QueueHandle {
    /// Tells the manager about a message that is now durable; `content`, when the spool kept
    /// a copy, spares its first delivery a read of the file.
    pub fn queued(&self, envelope: Envelope, content: Option<Vec<u8>>) {
        let _ = self.events.send(Event::Queued(Box::new(envelope), content));
    }

    /// Tells the manager about a message found by the start-up scan.
    pub fn recovered(&self, envelope: Envelope) {
        let _ = self.events.send(Event::Recovered(Box::new(envelope)));
    }

    /// New messages waiting for their first attempt (the backlog flow control watches).
    pub fn waiting(&self) -> usize {
        *self.waiting.borrow()
    }

    /// Flow control before a client's next message (Postfix's `in_flow_delay`): while more
    /// messages wait for their first attempt than the upstream connections can take at once,
    /// waits until the backlog drops below that, for at most `in_flow_delay`. Keeps the queue
    /// from growing faster than it drains — mail keeps flowing, only as fast as it leaves.
    /// Returns how long it waited.
    pub async fn admit(&self) -> Duration {
        if self.in_flow_delay.is_zero() || *self.waiting.borrow() < self.waiting_limit {
            return Duration::ZERO;
        }
        let started = tokio::time::Instant::now();
        let mut waiting = self.waiting.clone();
        let limit = self.waiting_limit;
        let _ = tokio::time::timeout(self.in_flow_delay, waiting.wait_for(|n| *n < limit)).await;
        started.elapsed()
    }

    /// Runs an administrator's command; the text says what was done.
    pub async fn command(&self, command: Command) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Command { command, reply })
            .map_err(|_| "the queue manager has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the queue manager has stopped".to_string())?
    }
}

/// What is pending for a message that is being delivered right now.
#[derive(Debug, Default)]
struct InFlight {
    after: Option<Command>,
}

/// The manager's state.
struct Manager {
    spool: Spool,
    config: Arc<Config>,
    routes: Vec<Arc<Route>>,
    pools: HashMap<String, Pool>,
    schedule: Schedule,
    in_flight: HashMap<QueueId, InFlight>,
    /// Most messages handed to the pools at once, so a large backlog is loaded a window at a
    /// time (Postfix's active queue) rather than all into memory.
    window: usize,
    /// Freshly queued messages, so their first attempt needs no spool read; bounded by
    /// [`FRESH_ENVELOPES`] (and their contents by [`FRESH_CONTENTS`]).
    fresh: HashMap<QueueId, Fresh>,
    /// Deletes finished messages' files on its own thread, so the manager task never blocks
    /// on unlinks (one per delivered message).
    reaper: std::sync::mpsc::Sender<QueueId>,
    /// Publishes how many fresh messages wait for their first attempt (for flow control).
    waiting: watch::Sender<usize>,
}

/// Starts the thread that deletes finished messages from the spool.
fn start_reaper(spool: Spool) -> std::io::Result<std::sync::mpsc::Sender<QueueId>> {
    let (sender, ids) = std::sync::mpsc::channel::<QueueId>();
    std::thread::Builder::new()
        .name("spool-reaper".into())
        .spawn(move || {
            for id in ids {
                if let Err(e) = spool.remove(id) {
                    warn!(%id, "cannot remove: {e}");
                }
            }
        })?;
    Ok(sender)
}

/// Why a queued message cannot be delivered now.
enum Unusable {
    /// Its files are gone (deleted meanwhile): nothing to do.
    Gone,
    /// Its content failed the checksum or its envelope is damaged; moved to `corrupt/` (the
    /// text says where).
    Quarantined(String),
    /// Reading it failed; worth another try later.
    Unreadable(String),
}

/// Seconds before a message whose files could not be read is tried again.
const UNREADABLE_RETRY_SECS: u64 = 60;

/// Most envelopes kept in memory for first attempts.
const FRESH_ENVELOPES: usize = 10_000;

/// Most contents kept in memory for first attempts (each at most the spool's journal limit,
/// 64 KiB: 16 MiB at worst); beyond that the first attempt reads the file.
const FRESH_CONTENTS: usize = 256;

/// A freshly queued message waiting for its first attempt.
struct Fresh {
    envelope: Envelope,
    content: Option<Vec<u8>>,
}

/// Starts the manager and its delivery pools. Messages reach it through the returned handle:
/// as they are committed, and as the start-up recovery finds them.
pub fn start(
    spool: Spool,
    config: Arc<Config>,
    routes: Vec<Arc<Route>>,
) -> std::io::Result<QueueHandle> {
    let (events, inbox) = mpsc::unbounded_channel();
    let (attempts, attempt_results) = mpsc::unbounded_channel();
    let pools = routes
        .iter()
        .map(|route| {
            let pool = Pool::start(
                route.clone(),
                spool.clone(),
                config.server.hostname.clone(),
                attempts.clone(),
            );
            (route.upstream.name.clone(), pool)
        })
        .collect();
    let connections: usize = routes.iter().map(|r| r.upstream.max_connections).sum();
    let window = (connections * 8).max(64);
    let reaper = start_reaper(spool.clone())?;
    let (waiting, waiting_rx) = watch::channel(0);
    let handle = QueueHandle {
        events,
        waiting: waiting_rx,
        waiting_limit: window,
        in_flow_delay: config.queue.in_flow_delay,
    };
    let manager = Manager {
        waiting,
        reaper,
        spool,
        config,
        routes,
        pools,
        schedule: Schedule::default(),
        in_flight: HashMap::new(),
        window,
        fresh: HashMap::new(),
    };
    tokio::spawn(manager.run(inbox, attempt_results));
    Ok(handle)
}

impl Manager {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Event>,
        mut attempts: mpsc::UnboundedReceiver<Attempt>,
    ) {
        loop {
            let wait = self.dispatch_due();
            let waiting = self.fresh.len();
            self.waiting
                .send_if_modified(|published| std::mem::replace(published, waiting) != waiting);
            tokio::select! {
                event = inbox.recv() => match event {
                    Some(Event::Queued(envelope, content)) => {
                        self.schedule.insert(envelope.id, envelope.next_attempt);
                        if self.fresh.len() < FRESH_ENVELOPES {
                            let content = content.filter(|_| self.fresh.len() < FRESH_CONTENTS);
                            let envelope = *envelope;
                            self.fresh.insert(envelope.id, Fresh { envelope, content });
                        }
                    }
                    Some(Event::Recovered(envelope)) => {
                        self.schedule.insert(envelope.id, envelope.next_attempt);
                    }
                    Some(Event::Command { command, reply }) => {
                        let _ = reply.send(self.command(command));
                    }
                    None => return,
                },
                Some(attempt) = attempts.recv() => self.attempted(attempt),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Hands every due message to its upstream's workers; returns how long to sleep.
    fn dispatch_due(&mut self) -> Duration {
        let now = now_unix();
        let room = self.window.saturating_sub(self.in_flight.len());
        if room == 0 {
            return Duration::from_secs(3600);
        }
        let ids = match self.schedule.pop_due(now, room) {
            Due::Ready(ids) => ids,
            Due::WaitUntil(at) => return Duration::from_secs(at.saturating_sub(now).max(1)),
            Due::Empty => return Duration::from_secs(3600),
        };
        for id in ids {
            self.dispatch(id, now);
        }
        Duration::from_secs(1)
    }

    fn dispatch(&mut self, id: QueueId, now: u64) {
        let (envelope, content) = match self.fresh.remove(&id) {
            Some(Fresh { envelope, content }) => (envelope, content),
            None => match blocking(|| self.load_verified(id)) {
                Ok(envelope) => (envelope, None),
                Err(Unusable::Gone) => return,
                Err(Unusable::Quarantined(e)) => {
                    warn!(%id, "not delivering: {e}");
                    return;
                }
                Err(Unusable::Unreadable(e)) => {
                    warn!(%id, "not delivering now, trying again in {UNREADABLE_RETRY_SECS} s: {e}");
                    self.schedule.insert(id, now + UNREADABLE_RETRY_SECS);
                    return;
                }
            },
        };
        if expired(envelope.received_at, now, self.config.queue.max_age) {
            let reason = Reply::new(
                554,
                Some(smtp::EnhancedCode::new(5, 4, 7)),
                format!(
                    "delivery time expired after {}",
                    humantime::format_duration(self.config.queue.max_age)
                ),
            );
            self.give_up(envelope, &reason, None);
            return;
        }
        let Some(route) = route::choose(&self.routes, &envelope.mail_from) else {
            let reason = Reply::new(
                451,
                Some(smtp::EnhancedCode::new(4, 3, 5)),
                "no [[upstream]] matches the sender's domain and none is the default; add one",
            );
            warn!(%id, "{reason}");
            self.defer_all(envelope, &reason, now);
            return;
        };
        let Some(pool) = self.pools.get(&route.upstream.name) else {
            return;
        };
        self.in_flight.insert(id, InFlight::default());
        pool.deliver(envelope, content);
    }

    /// Loads the envelope of a message this process did not just write (found at start-up,
    /// or deferred) and checks its content against the checksum recorded at commit. Content
    /// that does not match — a power loss kept the envelope but not all of the content — and
    /// an envelope that no longer parses are moved to `corrupt/`, never delivered.
    fn load_verified(&self, id: QueueId) -> Result<Envelope, Unusable> {
        let checked = self
            .spool
            .load_envelope(id)
            .and_then(|envelope| self.spool.verify_content(&envelope).map(|()| envelope));
        let error = match checked {
            Ok(envelope) => return Ok(envelope),
            Err(spool::Error::NotFound { .. }) => return Err(Unusable::Gone),
            Err(
                e @ (spool::Error::Inconsistent { .. }
                | spool::Error::Parse { .. }
                | spool::Error::UnsupportedVersion { .. }),
            ) => e,
            Err(e) => return Err(Unusable::Unreadable(e.to_string())),
        };
        metrics::QUARANTINED.inc();
        let moved = match self.spool.quarantine(id) {
            Ok(paths) => format!("moved to {}", display_paths(&paths)),
            Err(q) => format!("and could not be moved to corrupt/: {q}"),
        };
        Err(Unusable::Quarantined(format!(
            "the content does not match its envelope ({error}); {moved}"
        )))
    }

    /// Applies an attempt's outcome, then any command that waited for it.
    fn attempted(&mut self, attempt: Attempt) {
        let id = attempt.envelope.id;
        let pending = self.in_flight.remove(&id).unwrap_or_default();
        self.record(attempt.envelope, attempt.host, attempt.result);
        if let Some(command) = pending.after
            && let Err(e) = self.command(command)
        {
            info!(%id, "queued command after the attempt: {e}");
        }
    }

    /// Writes the per-recipient outcome of an attempt and decides what happens next.
    fn record(
        &mut self,
        mut envelope: Envelope,
        host: Option<String>,
        result: Result<TransactionOutcome, DeliveryError>,
    ) {
        let now = now_unix();
        envelope.attempts += 1;
        let replies: Vec<Reply> = match &result {
            Ok(outcome) => outcome.recipients.clone(),
            Err(e) => {
                info!(id = %envelope.id, "deferred: {e}");
                vec![e.as_reply(); pending(&envelope).count()]
            }
        };
        let mut hold: Option<String> = None;
        let mut failed = Vec::new();
        let indexes: Vec<usize> = pending(&envelope).map(|(i, _)| i).collect();
        for (index, reply) in indexes.into_iter().zip(replies) {
            let Some(recipient) = envelope.recipients.get_mut(index) else {
                continue;
            };
            recipient.attempts += 1;
            recipient.last_reply = Some(reply.to_string());
            if reply.code() / 100 == 2 {
                recipient.state = RecipientState::Delivered;
                metrics::DELIVERED.inc();
                info!(
                    id = %envelope.id,
                    to = %recipient.address,
                    relay = host.as_deref().unwrap_or("-"),
                    "delivered: {reply}"
                );
                continue;
            }
            let diagnosis = exo::diagnose(&reply);
            match diagnosis.decision {
                Decision::Defer => {
                    metrics::DEFERRED.inc();
                    recipient.state = RecipientState::Deferred;
                }
                Decision::Fail => {
                    recipient.state = RecipientState::Failed;
                    metrics::FAILED.inc();
                    failed.push(index);
                    info!(id = %envelope.id, to = %recipient.address, "failed: {reply}");
                }
                Decision::Hold => {
                    recipient.state = RecipientState::Deferred;
                    hold = Some(format!(
                        "{reply} | cause: {} | fix: {}",
                        diagnosis.cause, diagnosis.fix
                    ));
                }
            }
        }
        if !failed.is_empty() {
            self.bounce(&envelope, &failed, host.as_deref());
        }
        if envelope.is_finished() {
            self.remove(envelope.id);
            return;
        }
        if let Some(reason) = hold {
            warn!(id = %envelope.id, "held: {reason}");
            metrics::HELD.inc();
            envelope.held_reason = Some(reason.clone());
            self.update(&envelope);
            if let Err(e) = blocking(|| self.spool.hold(envelope.id, &reason)) {
                warn!(id = %envelope.id, "cannot hold: {e}");
            }
            return;
        }
        let delay = retry_delay(&self.config.queue.retry, envelope.attempts);
        envelope.next_attempt = now + delay.as_secs().max(1);
        self.update(&envelope);
        self.schedule.insert(envelope.id, envelope.next_attempt);
    }

    /// Defers every pending recipient with `reason` (no attempt was made).
    fn defer_all(&mut self, mut envelope: Envelope, reason: &Reply, now: u64) {
        for index in pending(&envelope).map(|(i, _)| i).collect::<Vec<_>>() {
            if let Some(r) = envelope.recipients.get_mut(index) {
                r.state = RecipientState::Deferred;
                r.last_reply = Some(reason.to_string());
            }
        }
        envelope.attempts += 1;
        envelope.next_attempt = now
            + retry_delay(&self.config.queue.retry, envelope.attempts)
                .as_secs()
                .max(1);
        self.update(&envelope);
        self.schedule.insert(envelope.id, envelope.next_attempt);
    }

    /// Fails every pending recipient with `reason`, sends the DSN and removes the message.
    fn give_up(&mut self, mut envelope: Envelope, reason: &Reply, host: Option<&str>) {
        let indexes: Vec<usize> = pending(&envelope).map(|(i, _)| i).collect();
        for &index in &indexes {
            if let Some(r) = envelope.recipients.get_mut(index) {
                r.state = RecipientState::Failed;
                r.last_reply = Some(reason.to_string());
            }
        }
        info!(id = %envelope.id, "given up: {reason}");
        self.bounce(&envelope, &indexes, host);
        self.remove(envelope.id);
    }

    fn bounce(&mut self, envelope: &Envelope, failed: &[usize], host: Option<&str>) {
        let dsn = blocking(|| {
            bounce::failure_notice(
                &self.spool,
                &self.config,
                envelope,
                failed,
                host,
                now_unix(),
            )
        });
        match dsn {
            Ok(Some(dsn)) => {
                metrics::DSNS.inc();
                info!(id = %envelope.id, dsn = %dsn.id, to = %dsn.recipients.first().map_or("", |r| r.address.as_str()), "DSN queued");
                self.schedule.insert(dsn.id, dsn.next_attempt);
            }
            Ok(None) => {}
            Err(e) => warn!(id = %envelope.id, "cannot queue the DSN: {e}"),
        }
    }

    fn update(&self, envelope: &Envelope) {
        if let Err(e) = blocking(|| self.spool.update_envelope(envelope)) {
            warn!(id = %envelope.id, "cannot record the attempt: {e}");
        }
    }

    /// Forgets a finished message and has the reaper thread delete its files.
    fn remove(&mut self, id: QueueId) {
        self.schedule.remove(id);
        self.fresh.remove(&id);
        if self.reaper.send(id).is_err() {
            warn!(%id, "the spool reaper has stopped; message files left for the next start");
        }
    }

    /// Carries out an administrator's command now, or after the message's attempt.
    fn command(&mut self, command: Command) -> Result<String, String> {
        let now = now_unix();
        let target = match command {
            Command::Flush(None) => {
                let count = self.schedule.len();
                self.schedule.flush(now);
                return Ok(format!("{count} message(s) due now"));
            }
            Command::Flush(Some(id))
            | Command::Hold(id)
            | Command::Release(id)
            | Command::Delete(id)
            | Command::Bounce(id) => id,
        };
        if let Some(flight) = self.in_flight.get_mut(&target) {
            flight.after = Some(command);
            return Ok(format!(
                "{target} is being delivered; the command runs when the attempt ends"
            ));
        }
        match command {
            Command::Flush(_) => {
                if !self.schedule.contains(target) {
                    return Err(format!("{target} is not scheduled (held or unknown)"));
                }
                self.schedule.insert(target, now);
                Ok(format!("{target} due now"))
            }
            Command::Hold(_) => {
                self.schedule.remove(target);
                self.fresh.remove(&target);
                blocking(|| self.spool.hold(target, "held by the administrator"))
                    .map_err(|e| e.to_string())?;
                Ok(format!("{target} held"))
            }
            Command::Release(_) => {
                let mut envelope =
                    blocking(|| self.spool.load_envelope(target)).map_err(|e| e.to_string())?;
                blocking(|| self.spool.release(target)).map_err(|e| e.to_string())?;
                envelope.held_reason = None;
                envelope.next_attempt = now;
                self.update(&envelope);
                self.schedule.insert(target, now);
                Ok(format!("{target} released, due now"))
            }
            Command::Delete(_) => {
                blocking(|| self.spool.remove(target)).map_err(|e| e.to_string())?;
                self.schedule.remove(target);
                self.fresh.remove(&target);
                Ok(format!("{target} deleted"))
            }
            Command::Bounce(_) => {
                let envelope =
                    blocking(|| self.spool.load_envelope(target)).map_err(|e| e.to_string())?;
                let reason = Reply::new(
                    554,
                    Some(smtp::EnhancedCode::new(5, 0, 0)),
                    "returned to the sender by the relay's administrator",
                );
                self.give_up(envelope, &reason, None);
                Ok(format!("{target} bounced"))
            }
        }
    }
}

/// The recipients still to be delivered, with their index in the envelope.
fn pending(envelope: &Envelope) -> impl Iterator<Item = (usize, &spool::Recipient)> {
    envelope
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.state.is_final())
}

/// Paths for a log line, comma-separated.
fn display_paths(paths: &[std::path::PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a short blocking spool operation (file writes, fsync) without stalling other tasks.
fn blocking<T>(op: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose backlog the test publishes itself, as the manager would.
    fn handle(limit: usize, delay: Duration) -> (watch::Sender<usize>, QueueHandle) {
        let (events, _inbox) = mpsc::unbounded_channel();
        let (waiting, waiting_rx) = watch::channel(0);
        let handle = QueueHandle {
            events,
            waiting: waiting_rx,
            waiting_limit: limit,
            in_flow_delay: delay,
        };
        (waiting, handle)
    }

    #[tokio::test]
    async fn admit_passes_at_once_below_the_limit_or_when_turned_off() {
        let (waiting, queue) = handle(80, Duration::from_secs(30));
        waiting.send_replace(79);
        assert_eq!(queue.admit().await, Duration::ZERO);
        let (waiting, queue) = handle(80, Duration::ZERO);
        waiting.send_replace(10_000);
        assert_eq!(queue.admit().await, Duration::ZERO);
    }

    #[tokio::test]
    async fn admit_waits_until_the_backlog_drains_below_the_limit() {
        let (waiting, queue) = handle(80, Duration::from_secs(30));
        waiting.send_replace(200);
        let drain = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waiting.send_replace(120);
            tokio::time::sleep(Duration::from_millis(50)).await;
            waiting.send_replace(79);
            waiting
        });
        let paused = queue.admit().await;
        assert!(paused >= Duration::from_millis(100), "{paused:?}");
        assert!(paused < Duration::from_secs(30), "{paused:?}");
        drop(drain.await);
    }

    #[tokio::test]
    async fn admit_gives_up_waiting_after_the_in_flow_delay() {
        let (waiting, queue) = handle(80, Duration::from_millis(200));
        waiting.send_replace(500);
        let paused = queue.admit().await;
        assert!(paused >= Duration::from_millis(200), "{paused:?}");
        assert!(paused < Duration::from_secs(10), "{paused:?}");
        drop(waiting);
    }
}
