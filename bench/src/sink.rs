//! The counting SMTP sink every relay delivers into (and `direct` mode sends straight to).
//!
//! Minimal ESMTP on `127.0.0.1:0`: EHLO (PIPELINING, 8BITMIME, SIZE, CHUNKING), HELO, MAIL,
//! RCPT, DATA with dot-terminator detection, BDAT with LAST, RSET, NOOP, QUIT. Every command is
//! accepted; a message counts when its end-of-data (or `BDAT … LAST`) has arrived, just before
//! its `250`. Replies to pipelined commands are collected and written once per read. The sink
//! stores nothing, so it costs the box as little CPU as possible.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest command line the sink accepts before dropping the connection.
const MAX_LINE: usize = 4096;

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
    _runtime: tokio::runtime::Runtime,
}

impl Sink {
    /// Starts the sink on one runtime worker thread.
    pub fn start() -> anyhow::Result<Sink> {
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
                tokio::spawn(async move {
                    let _ = serve(stream, &c).await;
                });
            }
        });
        Ok(Sink {
            port,
            counters,
            _runtime: runtime,
        })
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

async fn serve(mut stream: TcpStream, counters: &Counters) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    stream
        .write_all(b"220 sink.bench ESMTP counting sink\r\n")
        .await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut state = State::Command;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut input = &buf[..n];
        let mut quit = false;
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
                            return Ok(());
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
                        "EHLO" => out.extend_from_slice(
                            b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
                              250-SIZE 104857600\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n",
                        ),
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
                        "QUIT" => {
                            out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                            quit = true;
                            break;
                        }
                        _ => out.extend_from_slice(b"500 5.5.2 unknown command\r\n"),
                    }
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
    }
}
