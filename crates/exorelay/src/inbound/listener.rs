//! Accepts connections on the configured addresses, enforces the connection limits (in total
//! and per client IP: excess gets `421 4.7.0` and a close), refuses clients that no `[[client]]`
//! rule covers (`554 5.7.1` greeting, RFC 5321 §3.1), and runs one task per connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use smtp::Reply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tracing::{info, warn};

use crate::config::canonical_ip;
use crate::inbound::session::{self, ConnectionContext};

/// Binds every configured address. IPv6 sockets are IPv6-only so `0.0.0.0:25` and `[::]:25`
/// can both be configured.
pub fn bind(addresses: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    addresses
        .iter()
        .map(|addr| bind_one(*addr).with_context(|| format!("cannot listen on {addr}")))
        .collect()
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Counts open connections per client IP; a [`Slot`] gives its place back when dropped.
#[derive(Default)]
struct PerIpCount {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in the per-IP count.
struct Slot {
    counts: Arc<PerIpCount>,
    ip: IpAddr,
}

impl PerIpCount {
    fn try_take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Shared state of all accept loops.
struct Acceptor {
    ctx: Arc<ConnectionContext>,
    /// One permit per open session; all permits back means no session is open.
    sessions: Arc<Semaphore>,
    per_ip: Arc<PerIpCount>,
    ids: AtomicU64,
}

/// Serves connections on `listeners` until `shutdown` turns true, then waits up to `grace` for
/// open sessions to finish.
pub async fn run(
    listeners: Vec<TcpListener>,
    ctx: Arc<ConnectionContext>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let max = ctx.config.server.max_connections;
    let sessions = Arc::new(Semaphore::new(max));
    let acceptor = Arc::new(Acceptor {
        ctx,
        sessions: sessions.clone(),
        per_ip: Arc::new(PerIpCount::default()),
        ids: AtomicU64::new(1),
    });
    let mut loops = JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, acceptor.clone()));
    }
    let _ = shutdown.wait_for(|stop| *stop).await;
    loops.abort_all();
    info!("shutting down: no new connections, waiting up to {grace:?} for open sessions");
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, sessions.acquire_many(all))
        .await
        .is_err()
    {
        warn!("open sessions did not finish in time; their unacknowledged messages are dropped");
    }
}

/// Accepts connections and starts a task for each, within the limits; backs off briefly when
/// accept fails (e.g. out of file descriptors).
async fn accept_loop(listener: TcpListener, acceptor: Arc<Acceptor>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = acceptor.ids.fetch_add(1, Ordering::Relaxed);
        let permit = acceptor.sessions.clone().try_acquire_owned().ok();
        let limit = acceptor.ctx.config.server.max_connections_per_ip;
        let slot = acceptor.per_ip.try_take(canonical_ip(addr.ip()), limit);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match (permit, slot) {
                (Some(_permit), Some(_slot)) => connection(stream, addr, id, &acceptor.ctx).await,
                _ => {
                    info!(session = id, client = %addr, "refused: too many connections");
                    refuse(stream, &Reply::too_many_connections()).await;
                }
            }
        });
    }
}

async fn connection(stream: TcpStream, addr: SocketAddr, id: u64, ctx: &ConnectionContext) {
    let _ = stream.set_nodelay(true);
    let ip = canonical_ip(addr.ip());
    let Some(rule) = ctx.config.clients.iter().find(|rule| rule.covers(ip)) else {
        info!(session = id, client = %addr, "refused: client is in no [[client]] network, relaying denied");
        crate::metrics::CLIENTS_DENIED.inc();
        reject_session(stream, ctx).await;
        return;
    };
    info!(session = id, client = %addr, rule = %rule.name, "connected");
    if let Err(e) = session::serve(stream, addr, rule, id, ctx).await {
        info!(session = id, client = %addr, "connection ended: {e}");
    }
}

async fn refuse(mut stream: TcpStream, reply: &Reply) {
    let _ = stream.write_all(&reply.to_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A client no rule covers: greet with 554 5.7.1 and answer QUIT, refusing everything else, for
/// a bounded number of lines and time (RFC 5321 §3.1 asks the server to wait for QUIT).
async fn reject_session(mut stream: TcpStream, ctx: &ConnectionContext) {
    const MAX_LINES: usize = 10;
    let hostname = &ctx.config.server.hostname;
    if stream
        .write_all(&Reply::client_denied().to_bytes())
        .await
        .is_err()
    {
        return;
    }
    let deadline = Instant::now() + ctx.config.server.command_timeout;
    let mut reader = smtp::LineReader::new(512);
    let mut input = Vec::new();
    let mut buf = [0u8; 1024];
    let mut lines = 0;
    while lines < MAX_LINES {
        match reader.next_line(&mut input) {
            smtp::Line::Incomplete => {
                match timeout_at(deadline, stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => input.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    _ => return,
                }
                continue;
            }
            smtp::Line::Complete(line) if line.eq_ignore_ascii_case(b"QUIT") => {
                let _ = stream.write_all(&Reply::closing(hostname).to_bytes()).await;
                return;
            }
            _ => {
                lines += 1;
                let reply = Reply::bad_sequence("no SMTP service for this client; relaying denied");
                if stream.write_all(&reply.to_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}
