//! `exorelay serve`: load the configuration, open (and recover) the spool, start the queue
//! manager and the control socket, listen, and run until SIGTERM or SIGINT. [`Relay`] is the
//! same daemon as a value, so `exorelay demo` can run it in-process.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use smtp::Reply;
use tracing::{info, warn};

use crate::config::Config;
use crate::control;
use crate::inbound::{listener, session::ConnectionContext};
use crate::metrics;
use crate::queue::manager;

/// How long open sessions may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the daemon with the configuration in `path`.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let relay = Relay::start(config).await?;
        shutdown_signal().await?;
        relay.stop().await;
        info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Logs what the recovery scan found and hands the recovered queue to the manager.
fn recovered(dir: &Path, report: spool::RecoveryReport, queue: &manager::QueueHandle) {
    for path in &report.removed_incomplete {
        info!("recovery: removed incomplete {}", path.display());
    }
    for (path, reason) in &report.quarantined {
        warn!("recovery: quarantined {}: {reason}", path.display());
    }
    metrics::QUARANTINED.add(u64::try_from(report.damaged.len()).unwrap_or(u64::MAX));
    for id in &report.restored_from_journal {
        warn!(
            "recovery: restored {id} from the commit journal (a crash had lost or damaged its files)"
        );
    }
    info!(
        queued = report.queued.len(),
        held = report.held.len(),
        "spool {} recovered",
        dir.display()
    );
    for envelope in report.queued {
        queue.recovered(envelope);
    }
}

/// How often the spool's free space is looked at.
const FREE_SPACE_CHECK: Duration = Duration::from_secs(5);

/// Sets `low_on_space` when the spool's file system has less room than
/// `max(queue.min_free_space, 1.5 × server.max_message_size)`; logs each change.
fn watch_free_space(ctx: &ConnectionContext) {
    let config = &ctx.config;
    let needed = config
        .queue
        .min_free_space
        .max(config.server.max_message_size.saturating_mul(3) / 2);
    let low = match ctx.spool.free_space() {
        Ok(free) => free < needed,
        Err(e) => {
            warn!("cannot tell the spool's free space: {e}");
            false
        }
    };
    if ctx.low_on_space.swap(low, Ordering::Relaxed) != low {
        if low {
            warn!(
                "spool file system below {needed} bytes free: refusing new mail with {}",
                Reply::insufficient_storage()
            );
        } else {
            info!("spool file system has room again: accepting mail");
        }
    }
}

async fn free_space_watcher(ctx: Arc<ConnectionContext>) {
    let mut tick = tokio::time::interval(FREE_SPACE_CHECK);
    loop {
        tick.tick().await;
        watch_free_space(&ctx);
    }
}

/// A running relay: listeners, queue manager, control socket.
pub struct Relay {
    addrs: Vec<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    queue: manager::QueueHandle,
}

impl Relay {
    /// Opens the spool (recovering it), starts delivery and the control socket, and listens.
    pub async fn start(config: Config) -> anyhow::Result<Relay> {
        info!("{config}");
        let (spool, recovery) =
            spool::Spool::open_deferred(&config.queue.dir, spool::SpoolOptions::default())
                .with_context(|| format!("cannot open the spool {}", config.queue.dir.display()))?;
        let routes = crate::delivery::route::routes(&config.upstreams)?;
        let config = Arc::new(config);
        let queue = manager::start(spool.clone(), config.clone(), routes)
            .context("cannot start the queue manager")?;
        let control = control::Server::bind(&config.queue.dir, queue.clone(), spool.clone())?;
        tokio::spawn(control.run());
        let listeners = listener::bind(&config.server.listen)?;
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(ConnectionContext {
            config: config.clone(),
            spool,
            queue: queue.clone(),
            low_on_space: AtomicBool::new(false),
        });
        watch_free_space(&ctx);
        tokio::spawn(free_space_watcher(ctx.clone()));
        let server = tokio::spawn(listener::run(listeners, ctx, stopped, SHUTDOWN_GRACE));
        for addr in &addrs {
            info!("listening on {addr}");
        }
        // New mail is taken while the queue left by the last run is scanned, so start-up time
        // does not grow with the queue.
        let dir = config.queue.dir.clone();
        let found = queue.clone();
        tokio::task::spawn_blocking(move || match recovery.run() {
            Ok(report) => recovered(&dir, report, &found),
            Err(e) => warn!("recovery of {} failed: {e}", dir.display()),
        });
        Ok(Relay {
            addrs,
            stop,
            server,
            queue,
        })
    }

    /// The addresses the relay listens on.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, lets open sessions finish (bounded), then stops the queue manager once
    /// the messages it finished are removed from the spool, and returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        self.queue.stop().await;
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}
