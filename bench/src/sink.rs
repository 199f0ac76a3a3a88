//! The counting SMTP sink every relay delivers into (and `direct` mode sends straight to).
//!
//! Minimal ESMTP on `127.0.0.1:0`: EHLO (PIPELINING, 8BITMIME, SIZE, CHUNKING, STARTTLS), HELO,
//! MAIL, RCPT, DATA with dot-terminator detection, BDAT with LAST, RSET, NOOP, STARTTLS, QUIT.
//! Every command is accepted; a message counts when its end-of-data (or `BDAT … LAST`) has
//! arrived, just before its `250`. Replies to pipelined commands are collected and written once
//! per read. The sink stores nothing, so it costs the box as little CPU as possible.
//!
//! STARTTLS (RFC 3207, rustls with the ring provider) uses a server certificate for `127.0.0.1`
//! and `localhost` issued at start by a throw-away CA (rcgen); [`Sink::write_ca`] writes that
//! CA for the relays to trust. After the handshake the dialogue starts over without a greeting
//! (the client sends EHLO again) and STARTTLS is no longer offered. Clients that ignore the
//! STARTTLS line (smtp-source, relays with TLS off) see the plaintext sink unchanged.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Longest command line the sink accepts before dropping the connection.
const MAX_LINE: usize = 4096;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The EHLO reply before STARTTLS.
const EHLO_PLAIN: &[u8] = b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
    250-SIZE 104857600\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n";

/// The EHLO reply inside TLS (no STARTTLS).
const EHLO_TLS: &[u8] = b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
    250-SIZE 104857600\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";

/// Counters shared by the sink's connections.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages received completely.
    pub messages: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Content bytes received (DATA before unstuffing, BDAT chunks).
    pub bytes: AtomicU64,
}

/// A running sink; it lives until the process ends.
pub struct Sink {
    /// Its loopback port.
    pub port: u16,
    /// What it has received.
    pub counters: Arc<Counters>,
    /// PEM of the CA that issued the STARTTLS certificate.
    ca_pem: String,
    _runtime: tokio::runtime::Runtime,
}

impl Sink {
    /// Issues the STARTTLS certificate and starts the sink on one runtime worker thread.
    pub fn start() -> anyhow::Result<Sink> {
        let (tls, ca_pem) = tls_config().context("sink TLS certificate")?;
        let acceptor = TlsAcceptor::from(tls);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sink")
            .enable_all()
            .build()
            .context("sink runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("sink bind")?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                c.connections.fetch_add(1, Ordering::Relaxed);
                let c = c.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = connection(stream, &c, &acceptor).await;
                });
            }
        });
        Ok(Sink {
            port,
            counters,
            ca_pem,
            _runtime: runtime,
        })
    }

    /// Writes the PEM of the CA that issued the sink's certificate to `path`.
    pub fn write_ca(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, &self.ca_pem)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Messages received so far.
    pub fn messages(&self) -> u64 {
        self.counters.messages.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }
}

/// A fresh CA and a server certificate it issued for `127.0.0.1` and `localhost` (ECDSA P-256):
/// the rustls server configuration (TLS 1.3 and 1.2, ring) and the CA's PEM.
fn tls_config() -> anyhow::Result<(Arc<rustls::ServerConfig>, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "relay-bench sink CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer)?;
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone(), ca_cert.der().clone()], key)?;
    Ok((Arc::new(config), ca_pem))
}

/// How a dialogue ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// QUIT, end of input or a line too long.
    Closed,
    /// The client sent STARTTLS and got `220`: the TLS handshake comes next.
    StartTls,
}

/// One connection: greeting, plaintext dialogue, and after STARTTLS the dialogue inside TLS.
async fn connection(
    mut tcp: TcpStream,
    counters: &Counters,
    acceptor: &TlsAcceptor,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    tcp.write_all(b"220 sink.bench ESMTP counting sink\r\n")
        .await?;
    if serve(&mut tcp, counters, true).await? == End::StartTls {
        let mut tls = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        serve(&mut tls, counters, false).await?;
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
    }
    Ok(())
}

/// Where a connection is in the dialogue.
enum State {
    Command,
    /// In DATA; `at_line_start`: the previous bytes ended a line (or DATA just began);
    /// `dot`: the line so far is a single `.`; `cr`: the previous byte was CR.
    Data {
        at_line_start: bool,
        dot: bool,
        cr: bool,
    },
    Bdat {
        left: u64,
        last: bool,
    },
}

/// The dialogue after the greeting (or after the TLS handshake); `offer_tls`: STARTTLS is
/// advertised and accepted (plaintext only).
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    counters: &Counters,
    offer_tls: bool,
) -> std::io::Result<End> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut state = State::Command;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(End::Closed);
        }
        let mut input = &buf[..n];
        let mut end = None;
        while !input.is_empty() {
            match &mut state {
                State::Data {
                    at_line_start,
                    dot,
                    cr,
                } => {
                    let mut ended = None;
                    let mut i = 0;
                    while i < input.len() {
                        let b = input[i];
                        if !*at_line_start && !*cr && !*dot && b != b'\r' {
                            // Fast path: skip to the next CR.
                            match input[i..].iter().position(|&x| x == b'\r') {
                                Some(p) => i += p,
                                None => {
                                    i = input.len();
                                    break;
                                }
                            }
                            continue;
                        }
                        match b {
                            b'\r' => *cr = true,
                            b'\n' if *cr => {
                                if *dot {
                                    ended = Some(i + 1);
                                    break;
                                }
                                *at_line_start = true;
                                *cr = false;
                                *dot = false;
                            }
                            b'.' if *at_line_start => {
                                *dot = true;
                                *at_line_start = false;
                                *cr = false;
                            }
                            _ => {
                                *at_line_start = false;
                                *dot = false;
                                *cr = false;
                            }
                        }
                        i += 1;
                    }
                    match ended {
                        Some(end) => {
                            counters.bytes.fetch_add(end as u64, Ordering::Relaxed);
                            counters.messages.fetch_add(1, Ordering::Relaxed);
                            out.extend_from_slice(b"250 2.0.0 Ok: counted\r\n");
                            state = State::Command;
                            input = &input[end..];
                        }
                        None => {
                            counters.bytes.fetch_add(i as u64, Ordering::Relaxed);
                            input = &[];
                        }
                    }
                }
                State::Bdat { left, last } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    *left -= take as u64;
                    counters.bytes.fetch_add(take as u64, Ordering::Relaxed);
                    input = &input[take..];
                    if *left == 0 {
                        if *last {
                            counters.messages.fetch_add(1, Ordering::Relaxed);
                            out.extend_from_slice(b"250 2.0.0 Ok: counted\r\n");
                        } else {
                            out.extend_from_slice(b"250 2.0.0 chunk ok\r\n");
                        }
                        state = State::Command;
                    }
                }
                State::Command => {
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        pending.extend_from_slice(input);
                        if pending.len() > MAX_LINE {
                            return Ok(End::Closed);
                        }
                        input = &[];
                        continue;
                    };
                    pending.extend_from_slice(&input[..=nl]);
                    input = &input[nl + 1..];
                    let line = std::mem::take(&mut pending);
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end();
                    let verb = text
                        .split_ascii_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_ascii_uppercase();
                    match verb.as_str() {
                        "EHLO" if offer_tls => out.extend_from_slice(EHLO_PLAIN),
                        "EHLO" => out.extend_from_slice(EHLO_TLS),
                        "HELO" => out.extend_from_slice(b"250 sink.bench\r\n"),
                        "MAIL" | "RCPT" | "RSET" | "NOOP" => {
                            out.extend_from_slice(b"250 2.0.0 Ok\r\n");
                        }
                        "DATA" => {
                            out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                            state = State::Data {
                                at_line_start: true,
                                dot: false,
                                cr: false,
                            };
                        }
                        "BDAT" => {
                            let mut words = text.split_ascii_whitespace().skip(1);
                            let size = words.next().and_then(|s| s.parse::<u64>().ok());
                            let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                            match size {
                                Some(0) if last => {
                                    counters.messages.fetch_add(1, Ordering::Relaxed);
                                    out.extend_from_slice(b"250 2.0.0 Ok: counted\r\n");
                                }
                                Some(left) if left > 0 => state = State::Bdat { left, last },
                                _ => out.extend_from_slice(b"501 5.5.4 BDAT size\r\n"),
                            }
                        }
                        "STARTTLS" if offer_tls => {
                            // Anything pipelined behind STARTTLS is plaintext and is dropped
                            // (RFC 3207 §4.2: the dialogue starts over inside TLS).
                            out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                            end = Some(End::StartTls);
                            break;
                        }
                        "STARTTLS" => out.extend_from_slice(b"503 5.5.1 TLS already active\r\n"),
                        "QUIT" => {
                            out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                            end = Some(End::Closed);
                            break;
                        }
                        _ => out.extend_from_slice(b"500 5.5.2 unknown command\r\n"),
                    }
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
            out.clear();
        }
        if let Some(end) = end {
            return Ok(end);
        }
    }
}
