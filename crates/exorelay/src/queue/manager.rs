//! The queue manager: one task that owns every state change of queued messages. It keeps the
//! time-ordered schedule, hands due messages to per-upstream delivery workers (a concurrency
//! limit per upstream, each worker reusing its connection for message after message), writes
//! each attempt's per-recipient outcome back to the spool, schedules retries on the back-off
//! list, expires old messages, queues DSNs, holds messages that only a configuration change can
//! fix, and carries out the administrator's queue commands — deferring those that concern a
//! message in flight until its attempt ends, so no command races a delivery.

use std::collections::{HashMap, HashSet};
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
    /// Stop: finish the removals handed to the reaper, then answer and end.
    Stop(oneshot::Sender<()>),
}

/// The handle sessions and the control socket use to reach the manager.
#[derive(Clone)]
pub struct QueueHandle {
    events: mpsc::UnboundedSender<Event>,
    /// Messages waiting for their first attempt, as last published by the manager.
    waiting: watch::Receiver<usize>,
    /// From this many waiting messages on (the manager's window), [`QueueHandle::admit`]
    /// pauses new messages.
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

    /// Whether [`QueueHandle::admit`] would pause a new message now: flow control is on and
    /// at least the manager's window of new messages waits for a first attempt.
    pub fn backlogged(&self) -> bool {
        !self.in_flow_delay.is_zero() && *self.waiting.borrow() >= self.waiting_limit
    }

    /// Flow control before a client's next message (Postfix's `in_flow_delay`): while as many
    /// new messages wait for their first attempt as the manager hands to the pools at once
    /// (its window: 8 × the upstreams' `max_connections` together, at least 64), waits until
    /// the backlog drops below that, for at most `in_flow_delay`. Keeps the queue from growing
    /// faster than it drains — mail keeps flowing, only as fast as it leaves. Returns how long
    /// it waited.
    pub async fn admit(&self) -> Duration {
        if !self.backlogged() {
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

    /// Stops the manager once the attempts that have reported are recorded and every finished
    /// message handed to the reaper is removed from the spool, so none is delivered again at
    /// the next start. Attempts still running are not waited for: their messages stay queued
    /// and are tried again at the next start.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.events.send(Event::Stop(done)).is_ok() {
            let _ = stopped.await;
        }
    }
}

/// What is pending for a message that is being delivered right now.
#[derive(Debug, Default)]
struct InFlight {
    /// A command that waits for the attempt to end.
    after: Option<Command>,
    /// Whether its content went to the pool with it (counted in `Manager::contents` until the
    /// attempt ends).
    has_content: bool,
}

/// The manager's state.
struct Manager {
    spool: Spool,
    config: Arc<Config>,
    routes: Vec<Arc<Route>>,
    pools: HashMap<String, Pool>,
    schedule: Schedule,
    in_flight: HashMap<QueueId, InFlight>,
    /// Most messages handed to the pools at once (8 × the upstreams' `max_connections`
    /// together, at least 64), so a large backlog is loaded a window at a time (Postfix's
    /// active queue) rather than all into memory.
    window: usize,
    /// Freshly queued messages, so their first attempt needs no spool read; bounded by
    /// [`FRESH_ENVELOPES`] (and their contents by [`FRESH_CONTENTS`]).
    fresh: HashMap<QueueId, Fresh>,
    /// Contents held in memory: those of `fresh` entries, and those handed to a pool with
    /// their message until its attempt ends; at most [`FRESH_CONTENTS`].
    contents: usize,
    /// Messages found at start-up whose content has not been checked against its envelope
    /// yet (this process did not write them).
    unverified: HashSet<QueueId>,
    /// Finished messages handed to the reaper whose removal it has not confirmed yet: for
    /// commands they no longer exist.
    reaping: HashSet<QueueId>,
    /// Deletes finished messages' files on its own thread, so the manager task never blocks
    /// on unlinks (one per delivered message).
    reaper: Reaper,
    /// Publishes how many fresh messages wait for their first attempt (for flow control).
    waiting: watch::Sender<usize>,
}

/// The thread that deletes finished messages from the spool.
struct Reaper {
    /// Ids to delete; dropping it ends the thread once the ids already sent are done.
    ids: std::sync::mpsc::Sender<QueueId>,
    thread: std::thread::JoinHandle<()>,
}

impl Reaper {
    /// Starts the thread; each id is sent back on `reaped` once its removal is done (or has
    /// failed, which is logged).
    fn start(spool: Spool, reaped: mpsc::UnboundedSender<QueueId>) -> std::io::Result<Reaper> {
        let (ids, queue) = std::sync::mpsc::channel::<QueueId>();
        let thread = std::thread::Builder::new()
            .name("spool-reaper".into())
            .spawn(move || Reaper::run(&spool, queue, &reaped))?;
        Ok(Reaper { ids, thread })
    }

    /// The thread's work: removes each id received until the sender is dropped.
    fn run(
        spool: &Spool,
        queue: std::sync::mpsc::Receiver<QueueId>,
        reaped: &mpsc::UnboundedSender<QueueId>,
    ) {
        for id in queue {
            if let Err(e) = spool.remove(id) {
                warn!(%id, "cannot remove: {e}");
            }
            let _ = reaped.send(id);
        }
    }

    /// Hands `id` to the thread; false when the thread has stopped.
    fn reap(&self, id: QueueId) -> bool {
        self.ids.send(id).is_ok()
    }

    /// Waits until every id handed over is removed, then ends the thread (blocking).
    fn finish(self) {
        let Reaper { ids, thread } = self;
        drop(ids);
        if thread.join().is_err() {
            warn!(
                "the spool reaper panicked; finished messages may be delivered again at the next start"
            );
        }
    }
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

/// Most contents held in memory for first attempts, counted from queueing until the attempt
/// ends (each at most the spool's journal limit, 64 KiB: 256 × 64 KiB = 16 MiB at worst);
/// beyond that the first attempt reads the content back from the spool (its journal record,
/// or its file).
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
    let (attempts, attempt_results) = mpsc::unbounded_channel();
    let (reaped, reaped_ids) = mpsc::unbounded_channel();
    let reaper = Reaper::start(spool.clone(), reaped)?;
    let (manager, handle, inbox) = Manager::new(spool, config, routes, attempts, reaper);
    tokio::spawn(manager.run(inbox, attempt_results, reaped_ids));
    Ok(handle)
}

impl Manager {
    /// A manager whose pools report attempts on `attempts`, with the handle that reaches it
    /// and the inbox that handle sends to.
    fn new(
        spool: Spool,
        config: Arc<Config>,
        routes: Vec<Arc<Route>>,
        attempts: mpsc::UnboundedSender<Attempt>,
        reaper: Reaper,
    ) -> (Manager, QueueHandle, mpsc::UnboundedReceiver<Event>) {
        let (events, inbox) = mpsc::unbounded_channel();
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
            contents: 0,
            unverified: HashSet::new(),
            reaping: HashSet::new(),
        };
        (manager, handle, inbox)
    }

    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Event>,
        mut attempts: mpsc::UnboundedReceiver<Attempt>,
        mut reaped: mpsc::UnboundedReceiver<QueueId>,
    ) {
        loop {
            let wait = self.dispatch_due();
            let waiting = self.fresh.len();
            self.waiting
                .send_if_modified(|published| std::mem::replace(published, waiting) != waiting);
            tokio::select! {
                event = inbox.recv() => match event {
                    Some(Event::Queued(envelope, content)) => self.queued(*envelope, content),
                    Some(Event::Recovered(envelope)) => self.recovered(&envelope),
                    Some(Event::Command { command, reply }) => {
                        let _ = reply.send(self.command(command));
                    }
                    Some(Event::Stop(done)) => {
                        self.finish(&mut attempts).await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.finish(&mut attempts).await;
                        return;
                    }
                },
                Some(attempt) = attempts.recv() => self.attempted(attempt),
                Some(id) = reaped.recv() => {
                    self.reaping.remove(&id);
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Ends the manager: records the attempts that have already reported (a delivered message
    /// must not be sent again at the next start), then waits (off the async threads) until the
    /// reaper has removed every finished message handed to it.
    async fn finish(mut self, attempts: &mut mpsc::UnboundedReceiver<Attempt>) {
        while let Ok(attempt) = attempts.try_recv() {
            self.attempted(attempt);
        }
        let reaper = self.reaper;
        if let Err(e) = tokio::task::spawn_blocking(move || reaper.finish()).await {
            warn!("cannot wait for the spool reaper: {e}");
        }
    }

    /// Takes in a newly committed message, keeping its envelope (and content, while fewer
    /// than [`FRESH_CONTENTS`] are held) for its first attempt.
    fn queued(&mut self, envelope: Envelope, content: Option<Vec<u8>>) {
        self.schedule.insert(envelope.id, envelope.next_attempt);
        if self.fresh.len() >= FRESH_ENVELOPES {
            return;
        }
        let content = content.filter(|_| self.contents < FRESH_CONTENTS);
        if content.is_some() {
            self.contents += 1;
        }
        self.fresh.insert(envelope.id, Fresh { envelope, content });
    }

    /// Schedules a message found by the start-up scan; its content is checked before its
    /// first attempt here.
    fn recovered(&mut self, envelope: &Envelope) {
        self.unverified.insert(envelope.id);
        self.schedule.insert(envelope.id, envelope.next_attempt);
    }

    /// Removes `id`'s fresh entry, if any, no longer counting its content.
    fn take_fresh(&mut self, id: QueueId) -> Option<Fresh> {
        let fresh = self.fresh.remove(&id)?;
        if fresh.content.is_some() {
            self.contents = self.contents.saturating_sub(1);
        }
        Some(fresh)
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
        let (envelope, content) = match self.take_fresh(id) {
            Some(Fresh { envelope, content }) => (envelope, content),
            None => match blocking(|| self.load(id)) {
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
        // A content handed over stays counted until the attempt ends.
        let has_content = content.is_some();
        if has_content {
            self.contents += 1;
        }
        self.in_flight.insert(
            id,
            InFlight {
                after: None,
                has_content,
            },
        );
        pool.deliver(envelope, content);
    }

    /// Loads the envelope of a message not in `fresh` (deferred, a DSN, released, or found at
    /// start-up). A message this process did not write (in `unverified`) also has its content
    /// checked against the checksum recorded at commit, once: content that does not match — a
    /// power loss kept the envelope but not all of the content — and an envelope that no
    /// longer parses are moved to `corrupt/`, never delivered.
    fn load(&mut self, id: QueueId) -> Result<Envelope, Unusable> {
        let envelope = match self.spool.load_envelope(id) {
            Ok(envelope) => envelope,
            Err(e) => return Err(self.unusable(id, e, "the envelope cannot be used")),
        };
        if self.unverified.contains(&id)
            && let Err(e) = self.spool.verify_content(&envelope)
        {
            return Err(self.unusable(id, e, "the content does not match its envelope"));
        }
        self.unverified.remove(&id);
        Ok(envelope)
    }

    /// Classifies why message `id` could not be loaded (`damage` says what was wrong, should
    /// the error be damage) and moves damaged files to `corrupt/`.
    fn unusable(&mut self, id: QueueId, error: spool::Error, damage: &str) -> Unusable {
        match error {
            spool::Error::NotFound { .. } => {
                self.unverified.remove(&id);
                Unusable::Gone
            }
            spool::Error::Inconsistent { .. }
            | spool::Error::Parse { .. }
            | spool::Error::UnsupportedVersion { .. } => {
                self.unverified.remove(&id);
                metrics::QUARANTINED.inc();
                let moved = match self.spool.quarantine(id) {
                    Ok(paths) => format!("moved to {}", display_paths(&paths)),
                    Err(q) => format!("and could not be moved to corrupt/: {q}"),
                };
                Unusable::Quarantined(format!("{damage} ({error}); {moved}"))
            }
            e => Unusable::Unreadable(e.to_string()),
        }
    }

    /// Applies an attempt's outcome, then any command that waited for it.
    fn attempted(&mut self, attempt: Attempt) {
        let id = attempt.envelope.id;
        let pending = self.in_flight.remove(&id).unwrap_or_default();
        if pending.has_content {
            self.contents = self.contents.saturating_sub(1);
        }
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
            match blocking(|| self.spool.hold(envelope.id, &reason)) {
                Ok(()) => return,
                // Still queued: it is tried again (and held then) rather than left unscheduled.
                Err(e) => warn!(id = %envelope.id, "cannot hold, retrying later: {e}"),
            }
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

    /// Drops what the manager keeps of `id` outside the spool: its place on the schedule, its
    /// fresh copy (and content) and any pending content check.
    fn forget(&mut self, id: QueueId) {
        self.schedule.remove(id);
        self.take_fresh(id);
        self.unverified.remove(&id);
    }

    /// Forgets a finished message and deletes it: at once when it is held in the commit
    /// journal alone (no files) and that needs no waiting, else by the reaper thread — until
    /// the reaper confirms, commands treat it as unknown.
    fn remove(&mut self, id: QueueId) {
        self.forget(id);
        if self.spool.try_remove_unwritten(id) {
            return;
        }
        if self.reaper.reap(id) {
            self.reaping.insert(id);
        } else {
            warn!(%id, "the spool reaper has stopped; message files left for the next start");
        }
    }

    /// What a command on an unknown message answers.
    fn unknown(&self, command: Command, id: QueueId) -> String {
        match command {
            Command::Flush(_) => format!("{id} is not scheduled (held or unknown)"),
            _ => spool::Error::NotFound {
                id,
                dir: self.spool.dir().to_path_buf(),
            }
            .to_string(),
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
        if self.reaping.contains(&target) {
            // Finished: its files only wait for the reaper.
            return Err(self.unknown(command, target));
        }
        if let Some(flight) = self.in_flight.get_mut(&target) {
            flight.after = Some(command);
            return Ok(format!(
                "{target} is being delivered; the command runs when the attempt ends"
            ));
        }
        match command {
            Command::Flush(_) => {
                if !self.schedule.contains(target) {
                    return Err(self.unknown(command, target));
                }
                self.schedule.insert(target, now);
                Ok(format!("{target} due now"))
            }
            Command::Hold(_) => {
                blocking(|| self.spool.hold(target, "held by the administrator"))
                    .map_err(|e| e.to_string())?;
                self.forget(target);
                Ok(format!("{target} held"))
            }
            Command::Release(_) => {
                let mut envelope =
                    blocking(|| self.spool.load_envelope(target)).map_err(|e| e.to_string())?;
                blocking(|| self.spool.release(target)).map_err(|e| e.to_string())?;
                envelope.held_reason = None;
                envelope.next_attempt = now;
                self.update(&envelope);
                // It may have been held before this process started: check its content
                // before it is delivered.
                self.unverified.insert(target);
                self.schedule.insert(target, now);
                Ok(format!("{target} released, due now"))
            }
            Command::Delete(_) => {
                blocking(|| self.spool.remove(target)).map_err(|e| e.to_string())?;
                self.forget(target);
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
    use std::io::Write as _;
    use std::path::Path;

    use spool::{Recipient, SpoolOptions};

    use super::*;

    /// A manager and what a test needs to drive it by hand.
    struct Harness {
        manager: Manager,
        handle: QueueHandle,
        inbox: mpsc::UnboundedReceiver<Event>,
        /// The pools' attempts.
        attempts: mpsc::UnboundedReceiver<Attempt>,
        /// The reaper's confirmations.
        reaped: mpsc::UnboundedReceiver<QueueId>,
        spool: Spool,
    }

    /// A manager on a new spool in `dir` delivering to one upstream (one connection) at
    /// 127.0.0.1:`port`; its reaper starts removing only once `gate` receives or is dropped.
    fn harness(dir: &Path, port: u16, gate: std::sync::mpsc::Receiver<()>) -> Harness {
        let text = format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
hostname = "relay.test"

[[client]]
name = "loopback"
networks = ["127.0.0.0/8"]

[queue]
dir = "spool"
retry = ["1s"]

[[upstream]]
name = "exo"
host = "127.0.0.1"
port = {port}
tls = "none"
max_connections = 1
"#
        );
        let config = Config::parse(&text, &dir.join("relay.toml")).unwrap();
        let options = SpoolOptions {
            sync: false,
            ..SpoolOptions::default()
        };
        let (spool, _) = Spool::open(&config.queue.dir, options).unwrap();
        let routes = route::routes(&config.upstreams).unwrap();
        let (attempts_tx, attempts) = mpsc::unbounded_channel();
        let (reaped_tx, reaped) = mpsc::unbounded_channel();
        let (ids, queue) = std::sync::mpsc::channel();
        let reaper_spool = spool.clone();
        let thread = std::thread::spawn(move || {
            let _ = gate.recv();
            Reaper::run(&reaper_spool, queue, &reaped_tx);
        });
        let reaper = Reaper { ids, thread };
        let (manager, handle, inbox) =
            Manager::new(spool.clone(), Arc::new(config), routes, attempts_tx, reaper);
        Harness {
            manager,
            handle,
            inbox,
            attempts,
            reaped,
            spool,
        }
    }

    /// A loopback port nothing listens on: every connection is refused.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Commits a message with `content` to one recipient; returns its envelope as committed.
    async fn commit(spool: &Spool, content: &[u8]) -> Envelope {
        let mut writer = spool.create().unwrap();
        writer.write_all(content).unwrap();
        let mut envelope = Envelope::new(writer.id(), now_unix());
        envelope.mail_from = "app@contoso.com".into();
        envelope.recipients = vec![Recipient {
            address: "someone@example.net".into(),
            notify: None,
            orcpt: None,
            state: RecipientState::Pending,
            last_reply: None,
            attempts: 0,
        }];
        spool
            .commit(writer, envelope)
            .await
            .unwrap()
            .envelope()
            .clone()
    }

    /// Waits for the next attempt a pool reports.
    async fn next_attempt(attempts: &mut mpsc::UnboundedReceiver<Attempt>) -> Attempt {
        tokio::time::timeout(Duration::from_secs(30), attempts.recv())
            .await
            .expect("an attempt within 30 s")
            .expect("the pools are running")
    }

    /// Overwrites one byte of message `id`'s content, keeping its size.
    fn tamper(spool: &Spool, id: QueueId) {
        let path = spool.dir().join("queue").join(format!("{id}.msg"));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn contents_count_from_queueing_until_the_attempt_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (_open, gate) = std::sync::mpsc::channel();
        let mut h = harness(dir.path(), closed_port(), gate);
        let m = &mut h.manager;
        let content = b"Subject: small\r\n\r\nkept in memory\r\n".to_vec();
        for _ in 0..FRESH_CONTENTS {
            let envelope = commit(&h.spool, &content).await;
            m.queued(envelope, Some(content.clone()));
        }
        assert_eq!(m.contents, FRESH_CONTENTS);

        // A window of messages goes to the pool with its contents: still held, still counted.
        m.dispatch_due();
        assert_eq!(m.in_flight.len(), m.window);
        assert!(m.in_flight.values().all(|f| f.has_content));
        assert_eq!(m.fresh.len(), FRESH_CONTENTS - m.window);
        assert_eq!(m.contents, FRESH_CONTENTS);
        let over = commit(&h.spool, &content).await;
        let over_id = over.id;
        m.queued(over, Some(content.clone()));
        assert!(
            m.fresh[&over_id].content.is_none(),
            "a content beyond the bound is not kept"
        );
        assert_eq!(m.contents, FRESH_CONTENTS);

        // The attempts end (connection refused): their contents are released.
        for _ in 0..m.window {
            let attempt = next_attempt(&mut h.attempts).await;
            assert!(attempt.result.is_err());
            m.attempted(attempt);
        }
        assert!(m.in_flight.is_empty());
        assert_eq!(m.contents, FRESH_CONTENTS - m.window);

        // A fresh message held (or deleted) before its attempt releases its content too.
        let held = *m
            .fresh
            .iter()
            .find(|(_, f)| f.content.is_some())
            .map(|(id, _)| id)
            .unwrap();
        m.command(Command::Hold(held)).unwrap();
        assert_eq!(m.contents, FRESH_CONTENTS - m.window - 1);
        let next = commit(&h.spool, &content).await;
        let next_id = next.id;
        m.queued(next, Some(content.clone()));
        assert!(m.fresh[&next_id].content.is_some());
        assert_eq!(m.contents, FRESH_CONTENTS - m.window);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_finished_message_is_unknown_to_commands_and_stop_waits_for_its_removal() {
        let dir = tempfile::tempdir().unwrap();
        let (open, gate) = std::sync::mpsc::channel();
        let h = harness(dir.path(), closed_port(), gate);
        let Harness {
            mut manager,
            handle,
            inbox,
            attempts,
            reaped,
            spool,
        } = h;
        let envelope = commit(&spool, b"Subject: done\r\n\r\ndelivered\r\n").await;
        let id = envelope.id;
        let outcome = TransactionOutcome {
            mail_refused: None,
            recipients: vec![Reply::queued("1234")],
            delivered: true,
            needs_reset: false,
        };
        manager.record(envelope, Some("mx.test".into()), Ok(outcome));
        assert!(manager.reaping.contains(&id));
        assert!(
            spool.load_envelope(id).is_ok(),
            "the reaper has not removed it yet"
        );

        // Delivered but not yet removed: every command answers as for an unknown id.
        for command in [
            Command::Bounce(id),
            Command::Hold(id),
            Command::Release(id),
            Command::Delete(id),
            Command::Flush(Some(id)),
        ] {
            let answer = manager.command(command);
            assert_eq!(answer, Err(manager.unknown(command, id)), "{command:?}");
        }
        assert!(
            manager
                .unknown(Command::Bounce(id), id)
                .contains("is not in"),
            "{}",
            manager.unknown(Command::Bounce(id), id)
        );
        assert_eq!(manager.schedule.len(), 0, "no DSN was queued");
        assert_eq!(
            spool::SpoolReader::open(spool.dir())
                .unwrap()
                .list()
                .unwrap()
                .len(),
            1
        );

        // Stopping waits for the reaper: the removal handed to it before the stop is done.
        let running = tokio::spawn(manager.run(inbox, attempts, reaped));
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let _ = open.send(());
        });
        handle.stop().await;
        assert!(
            matches!(spool.load_envelope(id), Err(spool::Error::NotFound { .. })),
            "removed before stop returned"
        );
        running.await.unwrap();
        opener.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn attempts_reported_before_the_stop_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (open, gate) = std::sync::mpsc::channel();
        drop(open);
        let h = harness(dir.path(), closed_port(), gate);
        let envelope = commit(&h.spool, b"Subject: done\r\n\r\ndelivered\r\n").await;
        let id = envelope.id;
        let (reported, mut attempts) = mpsc::unbounded_channel();
        reported
            .send(Attempt {
                envelope,
                host: Some("mx.test".into()),
                result: Ok(TransactionOutcome {
                    mail_refused: None,
                    recipients: vec![Reply::queued("1234")],
                    delivered: true,
                    needs_reset: false,
                }),
            })
            .unwrap();
        h.manager.finish(&mut attempts).await;
        assert!(
            matches!(
                h.spool.load_envelope(id),
                Err(spool::Error::NotFound { .. })
            ),
            "a delivered message must not be sent again at the next start"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn only_messages_found_at_start_up_have_their_content_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (_open, gate) = std::sync::mpsc::channel();
        let mut h = harness(dir.path(), closed_port(), gate);
        let m = &mut h.manager;

        // Found at start-up, damaged: quarantined, never handed to a pool.
        let damaged = commit(&h.spool, b"Subject: damaged\r\n\r\nbody\r\n").await;
        tamper(&h.spool, damaged.id);
        m.recovered(&damaged);
        assert!(m.unverified.contains(&damaged.id));
        m.dispatch_due();
        assert!(m.in_flight.is_empty());
        assert!(!m.unverified.contains(&damaged.id));
        let corrupt = spool::SpoolReader::open(h.spool.dir())
            .unwrap()
            .corrupt()
            .unwrap();
        assert_eq!(corrupt.len(), 2, "{corrupt:?}");

        // Found at start-up, intact: checked once, then delivered.
        let intact = commit(&h.spool, b"Subject: intact\r\n\r\nbody\r\n").await;
        let id = intact.id;
        m.recovered(&intact);
        m.dispatch_due();
        assert!(m.in_flight.contains_key(&id));
        assert!(m.unverified.is_empty());
        let attempt = next_attempt(&mut h.attempts).await;
        m.attempted(attempt);
        assert!(m.schedule.contains(id), "deferred");

        // Its retry loads the envelope only: the content is not read again (a change made
        // since the check goes unnoticed, where a check would have quarantined it).
        tamper(&h.spool, id);
        m.command(Command::Flush(Some(id))).unwrap();
        m.dispatch_due();
        assert!(m.in_flight.contains_key(&id), "retried without a check");
        let attempt = next_attempt(&mut h.attempts).await;
        m.attempted(attempt);

        // Released from hold, it may predate this process: checked again.
        m.command(Command::Hold(id)).unwrap();
        m.command(Command::Release(id)).unwrap();
        assert!(m.unverified.contains(&id));
        m.dispatch_due();
        assert!(!m.in_flight.contains_key(&id), "quarantined on release");
        let corrupt = spool::SpoolReader::open(h.spool.dir())
            .unwrap()
            .corrupt()
            .unwrap();
        assert_eq!(corrupt.len(), 4, "{corrupt:?}");
    }

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

    #[tokio::test(start_paused = true)]
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
        // Still 120 waiting after 50 ms: it waits on, until the backlog is below the limit.
        assert_eq!(queue.admit().await, Duration::from_millis(100));
        drop(drain.await);
    }

    #[tokio::test(start_paused = true)]
    async fn admit_gives_up_waiting_after_the_in_flow_delay() {
        let (waiting, queue) = handle(80, Duration::from_millis(200));
        waiting.send_replace(500);
        assert_eq!(queue.admit().await, Duration::from_millis(200));
        drop(waiting);
    }
}
