//! A connection pool per upstream: at most `max_connections` open at once, idle connections
//! reused most-recently-used first (so a burst of small messages rides a few warm connections
//! instead of opening one each), closed after a short idle time or a number of messages, and
//! messages waiting when every connection is busy.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use smtp::client::TransactionOutcome;
use spool::{Envelope, QueueId, Spool};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::info;

use crate::delivery::client::{Connection, Content, DeliveryError};
use crate::delivery::route::Route;

/// How long an idle connection is kept for the next message.
const IDLE: Duration = Duration::from_secs(5);
/// Most messages one connection carries before it is replaced.
const MESSAGES_PER_CONNECTION: usize = 1000;

/// The end of one delivery attempt.
#[derive(Debug)]
pub struct Attempt {
    /// The message's envelope as it was handed to the pool.
    pub envelope: Envelope,
    /// The host that answered, when a connection was made.
    pub host: Option<String>,
    /// Per-recipient outcome, or why the connection failed.
    pub result: Result<TransactionOutcome, DeliveryError>,
}

/// A connection and how many messages it has carried.
struct Warm {
    connection: Connection,
    carried: usize,
    idle_since: Instant,
}

/// Messages for a pool task.
enum PoolEvent {
    /// Deliver this message (with its content when it is in memory).
    Deliver(Envelope, Option<Vec<u8>>),
    /// A delivery finished; its connection is back (None: it broke).
    Finished(Option<Warm>),
}

/// The sending side of a pool.
#[derive(Clone)]
pub struct Pool {
    events: mpsc::UnboundedSender<PoolEvent>,
}

impl Pool {
    /// Starts the pool task for `route`; attempts are reported on `attempts`.
    pub fn start(
        route: Arc<Route>,
        spool: Spool,
        helo: String,
        attempts: mpsc::UnboundedSender<Attempt>,
    ) -> Pool {
        let (events, inbox) = mpsc::unbounded_channel();
        let task = PoolTask {
            route,
            spool,
            helo,
            attempts,
            events: events.clone(),
            idle: Vec::new(),
            busy: 0,
            waiting: VecDeque::new(),
        };
        tokio::spawn(task.run(inbox));
        Pool { events }
    }

    /// Queues a message for delivery; `content`, when given, is sent instead of reading the
    /// spool file.
    pub fn deliver(&self, envelope: Envelope, content: Option<Vec<u8>>) {
        let _ = self.events.send(PoolEvent::Deliver(envelope, content));
    }
}

struct PoolTask {
    route: Arc<Route>,
    spool: Spool,
    helo: String,
    attempts: mpsc::UnboundedSender<Attempt>,
    events: mpsc::UnboundedSender<PoolEvent>,
    /// Idle connections, most recently used last.
    idle: Vec<Warm>,
    /// Deliveries running.
    busy: usize,
    waiting: VecDeque<Message>,
}

/// A message waiting for a connection: its envelope, and its content when it is in memory.
struct Message {
    envelope: Envelope,
    content: Option<Vec<u8>>,
}

impl PoolTask {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<PoolEvent>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                event = inbox.recv() => match event {
                    Some(PoolEvent::Deliver(envelope, content)) => {
                        self.waiting.push_back(Message { envelope, content });
                        self.start_deliveries();
                    }
                    Some(PoolEvent::Finished(warm)) => {
                        self.busy = self.busy.saturating_sub(1);
                        if let Some(warm) = warm {
                            self.idle.push(warm);
                        }
                        self.start_deliveries();
                    }
                    None => return,
                },
                _ = tick.tick() => self.close_idle(),
            }
        }
    }

    /// Starts a delivery for every waiting message that can have a connection: an idle one
    /// first; a new one only while the backlog is longer than the busy connections can take
    /// next (so sequential mail rides one warm connection and concurrency grows with load).
    fn start_deliveries(&mut self) {
        let max = self.route.upstream.max_connections;
        while !self.waiting.is_empty() {
            let warm = self.idle.pop();
            let open = self.busy + self.idle.len();
            let worth_opening = self.busy == 0 || self.waiting.len() > self.busy;
            if warm.is_none() && (open >= max || !worth_opening) {
                return;
            }
            let Some(message) = self.waiting.pop_front() else {
                return;
            };
            self.busy += 1;
            tokio::spawn(deliver(
                self.route.clone(),
                self.spool.clone(),
                self.helo.clone(),
                warm,
                message,
                self.attempts.clone(),
                self.events.clone(),
            ));
        }
    }

    /// Closes connections idle for longer than [`IDLE`]; each says QUIT in its own task, so a
    /// slow upstream never holds up the pool.
    fn close_idle(&mut self) {
        let now = Instant::now();
        let (stale, fresh): (Vec<Warm>, Vec<Warm>) = std::mem::take(&mut self.idle)
            .into_iter()
            .partition(|w| now.duration_since(w.idle_since) >= IDLE);
        self.idle = fresh;
        for warm in stale {
            tokio::spawn(warm.connection.quit());
        }
    }
}

/// A delivery's place in the pool and its message. When the delivery ends, however it ends
/// (even if its task panicked), the place goes back to the pool and the manager hears of the
/// attempt — [`DeliveryError::Abandoned`] if none was reported — so neither the pool nor the
/// manager waits for a delivery that is gone.
struct Place {
    events: mpsc::UnboundedSender<PoolEvent>,
    attempts: mpsc::UnboundedSender<Attempt>,
    connection: Option<Warm>,
    /// The message being delivered, until its attempt is reported.
    envelope: Option<Envelope>,
}

impl Place {
    /// Reports the end of the attempt to the manager (once).
    fn report(&mut self, host: Option<String>, result: Result<TransactionOutcome, DeliveryError>) {
        if let Some(envelope) = self.envelope.take() {
            let _ = self.attempts.send(Attempt {
                envelope,
                host,
                result,
            });
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.report(None, Err(DeliveryError::Abandoned));
        let _ = self
            .events
            .send(PoolEvent::Finished(self.connection.take()));
    }
}

/// Delivers one message on `warm` (or a new connection) and hands the connection back.
async fn deliver(
    route: Arc<Route>,
    spool: Spool,
    helo: String,
    warm: Option<Warm>,
    message: Message,
    attempts: mpsc::UnboundedSender<Attempt>,
    events: mpsc::UnboundedSender<PoolEvent>,
) {
    let Message { envelope, content } = message;
    let mut place = Place {
        events,
        attempts,
        connection: None,
        envelope: None,
    };
    let envelope: &Envelope = place.envelope.insert(envelope);
    let mut warm = match warm {
        Some(w) if w.carried < MESSAGES_PER_CONNECTION => w,
        old => {
            if let Some(old) = old {
                old.connection.quit().await;
            }
            match Connection::open(&route, &helo).await {
                Ok(connection) => {
                    crate::metrics::CONNECTIONS.inc();
                    info!(upstream = %route.upstream.name, host = %connection.host, tls = connection.tls, "connected");
                    Warm {
                        connection,
                        carried: 0,
                        idle_since: Instant::now(),
                    }
                }
                Err(e) => {
                    place.report(None, Err(e));
                    return;
                }
            }
        }
    };
    let host = Some(warm.connection.host.clone());
    let result = match attempt_content(&spool, envelope.id, content).await {
        Ok(content) => warm.connection.deliver(envelope, content).await,
        Err(e) => Err(e),
    };
    warm.carried += 1;
    warm.idle_since = Instant::now();
    if result.is_ok() {
        place.connection = Some(warm);
    }
    place.report(host, result);
}

/// The content for an attempt: the copy kept in memory, else the journal record of a message
/// held there alone, else its file. The spool is read on the blocking pool: it may wait for
/// the journal while a checkpoint holds it.
async fn attempt_content(
    spool: &Spool,
    id: QueueId,
    copy: Option<Vec<u8>>,
) -> Result<Content, DeliveryError> {
    if let Some(bytes) = copy {
        return Ok(Content::Memory(std::io::Cursor::new(bytes)));
    }
    let spool = spool.clone();
    let stored = tokio::task::spawn_blocking(move || match spool.read_unwritten(id)? {
        Some(bytes) => Ok(Content::Memory(std::io::Cursor::new(bytes))),
        None => spool.open_content(id).map(Content::File),
    })
    .await;
    match stored {
        Ok(Ok(content)) => Ok(content),
        Ok(Err(e)) => Err(DeliveryError::Spool(e.to_string())),
        Err(e) => Err(DeliveryError::Spool(format!(
            "reading the content failed: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use spool::QueueId;

    use super::*;

    /// A place for a new message, with the receivers of what it sends.
    fn place() -> (
        Place,
        QueueId,
        mpsc::UnboundedReceiver<PoolEvent>,
        mpsc::UnboundedReceiver<Attempt>,
    ) {
        let (events, pool_events) = mpsc::unbounded_channel();
        let (attempts, reported) = mpsc::unbounded_channel();
        let envelope = Envelope::new(QueueId::generate(), 0);
        let id = envelope.id;
        let place = Place {
            events,
            attempts,
            connection: None,
            envelope: Some(envelope),
        };
        (place, id, pool_events, reported)
    }

    #[tokio::test]
    async fn a_delivery_that_panics_still_reports_its_attempt_and_frees_its_place() {
        let (place, id, mut pool_events, mut reported) = place();
        let task = tokio::spawn(async move {
            let _place = place;
            panic!("a bug in the delivery");
        });
        assert!(task.await.unwrap_err().is_panic());
        let attempt = reported.try_recv().unwrap();
        assert_eq!(attempt.envelope.id, id);
        assert!(attempt.host.is_none());
        assert!(matches!(attempt.result, Err(DeliveryError::Abandoned)));
        assert!(matches!(
            pool_events.try_recv(),
            Ok(PoolEvent::Finished(None))
        ));
    }

    #[test]
    fn a_reported_attempt_is_reported_once() {
        let (mut place, id, mut pool_events, mut reported) = place();
        place.report(None, Err(DeliveryError::Timeout("greeting")));
        drop(place);
        let attempt = reported.try_recv().unwrap();
        assert_eq!(attempt.envelope.id, id);
        assert!(matches!(
            attempt.result,
            Err(DeliveryError::Timeout("greeting"))
        ));
        assert!(reported.try_recv().is_err(), "no second attempt");
        assert!(matches!(
            pool_events.try_recv(),
            Ok(PoolEvent::Finished(None))
        ));
    }
}
