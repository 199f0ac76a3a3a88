//! A scripted fake upstream SMTP server for the delivery tests: the smart host the relay
//! delivers to. Blocking std threads on `127.0.0.1`, STARTTLS with rustls (optionally requiring
//! and verifying a client certificate against a test CA), a reply script (per-RCPT closure, end
//! of data reply, greeting) that can be changed while it runs, and a record of everything:
//! every byte received on every connection (the plaintext before STARTTLS and the decrypted
//! bytes after it, kept apart), the client certificate's subject CN, and each message accepted
//! with its envelope and content. It can be stopped and started again on the same port (an
//! upstream that is down for a while). Every read has a timeout, every loop ends when the
//! server stops, and dropping the server stops it and joins its threads.
#![allow(dead_code)] // each test binary uses a different subset of these helpers
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::common::{Relay, TestPki};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How long a connection may stay silent before the fake server hangs up.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest command line accepted (longer ones end the connection).
const MAX_LINE: usize = 4096;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// Decides the reply to `RCPT TO:<address>`: a whole reply line without CRLF.
pub type RcptReply = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// A message the fake upstream accepted (it answered 2xx to the end of data).
#[derive(Debug, Clone)]
pub struct Message {
    /// The reverse-path, without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// The MAIL FROM parameters as sent (e.g. `SIZE=123 BODY=8BITMIME`).
    pub mail_params: String,
    /// The recipients accepted with a 2xx, in order.
    pub rcpts: Vec<String>,
    /// The content: dot-stuffing undone for DATA, the chunks joined for BDAT.
    pub content: Vec<u8>,
    /// Whether it came over TLS.
    pub tls: bool,
    /// Subject CN of the client certificate presented on that connection.
    pub client_cn: Option<String>,
    /// Index of the connection (0-based, in accept order).
    pub connection: usize,
    /// Whether it was sent with BDAT.
    pub bdat: bool,
    /// When the 2xx to the end of data was written.
    pub at: Instant,
}

impl Message {
    /// The value of the first header field named `name` (case-insensitive), unfolded and trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.content, name)
    }

    /// The `Message-ID` header's value.
    pub fn message_id(&self) -> Option<String> {
        self.header("Message-ID")
    }
}

/// The value of the first header field named `name` in `content` (header section only).
pub fn header_value(content: &[u8], name: &str) -> Option<String> {
    let header_end = find(content, b"\r\n\r\n").map_or(content.len(), |p| p + 2);
    let text = String::from_utf8_lossy(&content[..header_end]);
    let mut value: Option<String> = None;
    for line in text.split("\r\n") {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            return value;
        }
        if let Some((field, rest)) = line.split_once(':')
            && field.eq_ignore_ascii_case(name)
        {
            value = Some(rest.trim().to_string());
        }
    }
    value
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Everything seen on one connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionRecord {
    /// Bytes received in plaintext (before STARTTLS, or all of them without TLS).
    pub plaintext: Vec<u8>,
    /// Bytes received inside TLS, decrypted.
    pub tls: Vec<u8>,
    /// Bytes the fake server sent (plaintext and, decrypted, TLS).
    pub sent: Vec<u8>,
    /// Whether the TLS handshake completed.
    pub tls_established: bool,
    /// Why the TLS handshake failed, if it did.
    pub tls_error: Option<String>,
    /// Subject CN of the client certificate, when one was presented (and verified).
    pub client_cn: Option<String>,
    /// Whether the connection has ended.
    pub closed: bool,
}

impl ConnectionRecord {
    /// The command lines received in plaintext (without CRLF).
    pub fn plaintext_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.plaintext)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The reply script, changeable while the server runs.
struct Script {
    greeting: String,
    rcpt: RcptReply,
    data: String,
}

/// What the server and its connection threads share.
struct Shared {
    stop: AtomicBool,
    script: Mutex<Script>,
    starttls: bool,
    chunking: bool,
    record_limit: usize,
    injection: Vec<u8>,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Mutex<Vec<ConnectionRecord>>,
    messages: Mutex<Vec<Message>>,
    /// Clones of the open sockets, shut down when the server stops.
    sockets: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How to build a [`FakeUpstream`].
pub struct Builder {
    port: u16,
    record_limit: usize,
    injection: Vec<u8>,
    starttls: bool,
    chunking: bool,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
    greeting: String,
    rcpt: RcptReply,
    data: String,
}

impl Builder {
    /// Binds this port instead of a free one (to come back on the same port).
    pub fn port(mut self, port: u16) -> Builder {
        self.port = port;
        self
    }

    /// Records at most this many received bytes per connection and direction (default: all).
    pub fn record_limit(mut self, bytes: usize) -> Builder {
        self.record_limit = bytes;
        self
    }

    /// Bytes sent in plaintext right behind the `220` to STARTTLS, in the same write: a
    /// STARTTLS response injection (CVE-2021-38371 class) the client must not act on.
    pub fn starttls_injection(mut self, bytes: &[u8]) -> Builder {
        self.injection = bytes.to_vec();
        self
    }

    /// Whether EHLO advertises STARTTLS (default: yes when a certificate is set).
    pub fn starttls(mut self, advertise: bool) -> Builder {
        self.starttls = advertise;
        self
    }

    /// Whether EHLO advertises CHUNKING (BDAT); default yes.
    pub fn chunking(mut self, advertise: bool) -> Builder {
        self.chunking = advertise;
        self
    }

    /// The server certificate (PEM chain) and key for STARTTLS; also turns STARTTLS on.
    pub fn tls(mut self, cert_file: &Path, key_file: &Path) -> Builder {
        let chain = CertificateDer::pem_file_iter(cert_file)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key_file).unwrap();
        self.cert = Some((chain, key));
        self.starttls = true;
        self
    }

    /// Requires a client certificate issued by the CA in `ca_file` (PEM) in the handshake.
    pub fn require_client_cert(mut self, ca_file: &Path) -> Builder {
        let roots = CertificateDer::pem_file_iter(ca_file)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        self.client_ca = Some(roots);
        self
    }

    /// The greeting line (default `220 upstream.test ESMTP fake`).
    pub fn greeting(mut self, line: &str) -> Builder {
        self.greeting = line.to_string();
        self
    }

    /// The reply to each RCPT (default `250 2.1.5 Ok`).
    pub fn rcpt_reply(mut self, reply: impl Fn(&str) -> String + Send + Sync + 'static) -> Builder {
        self.rcpt = Arc::new(reply);
        self
    }

    /// The reply to the end of data (default `250 2.0.0 Ok: queued`).
    pub fn data_reply(mut self, line: &str) -> Builder {
        self.data = line.to_string();
        self
    }

    /// Binds `127.0.0.1:port` and starts accepting.
    pub fn start(self) -> FakeUpstream {
        let tls = self.cert.map(|(chain, key)| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = match self.client_ca {
                Some(cas) => {
                    let mut roots = rustls::RootCertStore::empty();
                    for ca in cas {
                        roots.add(ca).unwrap();
                    }
                    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .build()
                    .unwrap();
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            };
            Arc::new(builder.with_single_cert(chain, key).unwrap())
        });
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            script: Mutex::new(Script {
                greeting: self.greeting,
                rcpt: self.rcpt,
                data: self.data,
            }),
            starttls: self.starttls,
            chunking: self.chunking,
            record_limit: self.record_limit,
            injection: self.injection,
            tls,
            connections: Mutex::new(Vec::new()),
            messages: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let mut server = FakeUpstream {
            shared,
            port: self.port,
            accept: None,
        };
        server.listen();
        server
    }
}

/// A running fake upstream; stops (and joins its threads) when dropped.
pub struct FakeUpstream {
    shared: Arc<Shared>,
    port: u16,
    accept: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    /// A builder with the defaults: no TLS, CHUNKING advertised, every RCPT and message accepted.
    pub fn builder() -> Builder {
        Builder {
            port: 0,
            record_limit: usize::MAX,
            injection: Vec::new(),
            starttls: false,
            chunking: true,
            cert: None,
            client_ca: None,
            greeting: "220 upstream.test ESMTP fake".into(),
            rcpt: Arc::new(|_| "250 2.1.5 Ok".to_string()),
            data: "250 2.0.0 Ok: queued".into(),
        }
    }

    /// The port it listens (or listened) on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn listen(&mut self) {
        // std sets SO_REUSEADDR on Unix, so the same port can be bound again after a stop.
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        self.shared.stop.store(false, Ordering::SeqCst);
        let shared = self.shared.clone();
        self.accept = Some(std::thread::spawn(move || accept_loop(&listener, &shared)));
    }

    /// Stops listening and cuts every open connection (the upstream goes down).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for socket in lock(&self.shared.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let threads: Vec<JoinHandle<()>> = lock(&self.shared.threads).drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }

    /// Listens again on the same port (after [`FakeUpstream::stop`]).
    pub fn restart(&mut self) {
        assert!(self.accept.is_none(), "restart of a running fake upstream");
        self.listen();
    }

    /// Replaces the RCPT reply script.
    pub fn set_rcpt_reply(&self, reply: impl Fn(&str) -> String + Send + Sync + 'static) {
        lock(&self.shared.script).rcpt = Arc::new(reply);
    }

    /// Replaces the end-of-data reply.
    pub fn set_data_reply(&self, line: &str) {
        lock(&self.shared.script).data = line.to_string();
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.connections).len()
    }

    /// A copy of every connection's record.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        lock(&self.shared.connections).clone()
    }

    /// Number of messages accepted so far.
    pub fn message_count(&self) -> usize {
        lock(&self.shared.messages).len()
    }

    /// A copy of every message accepted so far.
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.shared.messages).clone()
    }

    /// Runs `f` on the accepted messages without copying them.
    pub fn with_messages<T>(&self, f: impl FnOnce(&[Message]) -> T) -> T {
        f(&lock(&self.shared.messages))
    }

    /// Waits (at most `limit`) until `condition` holds for the accepted messages.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut condition: impl FnMut(&[Message]) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        while !self.with_messages(&mut condition) {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for the fake upstream: {what} \
                 ({} messages, {} connections)",
                self.message_count(),
                self.connection_count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let index = {
                    let mut connections = lock(&shared.connections);
                    connections.push(ConnectionRecord::default());
                    connections.len() - 1
                };
                if let Ok(clone) = stream.try_clone() {
                    lock(&shared.sockets).push(clone);
                }
                let conn_shared = shared.clone();
                let thread = std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
                    let mut session = Session::new(stream, index, conn_shared.clone());
                    let _ = session.run();
                    lock(&conn_shared.connections)[index].closed = true;
                });
                lock(&shared.threads).push(thread);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

/// The connection's stream: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    /// Transient state while switching to TLS.
    Gone,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Gone => Ok(0),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Gone => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Gone => Ok(()),
        }
    }
}

/// The transaction being received.
#[derive(Default)]
struct Transaction {
    mail_from: Option<String>,
    mail_params: String,
    rcpts: Vec<String>,
    bdat: Vec<u8>,
    bdat_failed: bool,
}

/// One connection's SMTP dialogue.
struct Session {
    stream: Stream,
    /// Received bytes not consumed yet: `input[start..]`.
    input: Vec<u8>,
    start: usize,
    index: usize,
    shared: Arc<Shared>,
    tls: bool,
    client_cn: Option<String>,
    tx: Transaction,
}

impl Session {
    fn new(stream: TcpStream, index: usize, shared: Arc<Shared>) -> Session {
        Session {
            stream: Stream::Plain(stream),
            input: Vec::new(),
            start: 0,
            index,
            shared,
            tls: false,
            client_cn: None,
            tx: Transaction::default(),
        }
    }

    fn record(&self, f: impl FnOnce(&mut ConnectionRecord)) {
        f(&mut lock(&self.shared.connections)[self.index]);
    }

    fn reply(&mut self, line: &str) -> io::Result<()> {
        let bytes = format!("{line}\r\n");
        self.record(|r| r.sent.extend_from_slice(bytes.as_bytes()));
        self.stream.write_all(bytes.as_bytes())?;
        self.stream.flush()
    }

    /// Reads more bytes into the buffer, recording them; `false` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        if self.shared.stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let mut buf = [0u8; 64 * 1024];
        let n = match self.stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        let got = &buf[..n];
        let tls = self.tls;
        let limit = self.shared.record_limit;
        self.record(|r| {
            let record = if tls { &mut r.tls } else { &mut r.plaintext };
            let room = limit.saturating_sub(record.len()).min(got.len());
            record.extend_from_slice(&got[..room]);
        });
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.extend_from_slice(got);
        Ok(n > 0)
    }

    /// One CRLF-ended line, without the CRLF; `None` at end of stream.
    fn line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let pending = &self.input[self.start..];
            if let Some(pos) = find(pending, b"\r\n") {
                let line = pending[..pos].to_vec();
                self.start += pos + 2;
                return Ok(Some(line));
            }
            if pending.len() > MAX_LINE * 16 {
                return Err(io::Error::other("line too long"));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Exactly `n` bytes (BDAT); `None` at end of stream.
    fn exact(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<bool> {
        let mut left = n;
        loop {
            let pending = &self.input[self.start..];
            let take = left.min(pending.len());
            out.extend_from_slice(&pending[..take]);
            self.start += take;
            left -= take;
            if left == 0 {
                return Ok(true);
            }
            if !self.fill()? {
                return Ok(false);
            }
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let greeting = lock(&self.shared.script).greeting.clone();
        self.reply(&greeting)?;
        while let Some(line) = self.line()? {
            let text = String::from_utf8_lossy(&line).into_owned();
            let upper = text.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or_default().to_string();
            match verb.as_str() {
                "EHLO" => {
                    self.tx = Transaction::default();
                    let mut caps = vec![
                        "upstream.test".to_string(),
                        "PIPELINING".into(),
                        "SIZE 104857600".into(),
                        "8BITMIME".into(),
                        "ENHANCEDSTATUSCODES".into(),
                        "SMTPUTF8".into(),
                    ];
                    if self.shared.chunking {
                        caps.push("CHUNKING".into());
                    }
                    if self.shared.starttls && !self.tls {
                        caps.push("STARTTLS".into());
                    }
                    let last = caps.len() - 1;
                    let text: Vec<String> = caps
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!("250{}{c}", if i == last { ' ' } else { '-' }))
                        .collect();
                    self.reply(&text.join("\r\n"))?;
                }
                "HELO" => self.reply("250 upstream.test")?,
                "STARTTLS" => {
                    if !self.shared.starttls || self.tls || self.shared.tls.is_none() {
                        self.reply("502 5.5.1 STARTTLS not offered")?;
                        continue;
                    }
                    let mut ready = b"220 2.0.0 Ready to start TLS\r\n".to_vec();
                    ready.extend_from_slice(&self.shared.injection);
                    self.record(|r| r.sent.extend_from_slice(&ready));
                    self.stream.write_all(&ready)?;
                    self.stream.flush()?;
                    // A client must not pipeline after STARTTLS; drop what it sent.
                    self.input.clear();
                    self.start = 0;
                    if !self.start_tls()? {
                        return Ok(());
                    }
                }
                "MAIL" => {
                    let (address, params) = path_and_params(&text);
                    self.tx = Transaction {
                        mail_from: Some(address),
                        mail_params: params,
                        ..Transaction::default()
                    };
                    self.reply("250 2.1.0 Ok")?;
                }
                "RCPT" => {
                    if self.tx.mail_from.is_none() {
                        self.reply("503 5.5.1 need MAIL")?;
                        continue;
                    }
                    let (address, _) = path_and_params(&text);
                    let script = lock(&self.shared.script).rcpt.clone();
                    let answer = script(&address);
                    if answer.starts_with('2') {
                        self.tx.rcpts.push(address);
                    }
                    self.reply(&answer)?;
                }
                "DATA" => {
                    if self.tx.rcpts.is_empty() {
                        self.reply("554 5.5.1 no valid recipients")?;
                        continue;
                    }
                    self.reply("354 End data with <CR><LF>.<CR><LF>")?;
                    let mut content = Vec::new();
                    loop {
                        let Some(line) = self.line()? else {
                            return Ok(());
                        };
                        if line == b"." {
                            break;
                        }
                        let line = line.strip_prefix(b".").unwrap_or(&line);
                        content.extend_from_slice(line);
                        content.extend_from_slice(b"\r\n");
                    }
                    self.finish(content, false)?;
                }
                "BDAT" => {
                    let mut words = upper.split_whitespace().skip(1);
                    let Some(size) = words.next().and_then(|n| n.parse::<usize>().ok()) else {
                        self.reply("501 5.5.4 BDAT size")?;
                        continue;
                    };
                    let last = words.next() == Some("LAST");
                    let mut content = std::mem::take(&mut self.tx.bdat);
                    content.reserve(size.min(64 << 20));
                    if !self.exact(size, &mut content)? {
                        return Ok(());
                    }
                    self.tx.bdat = content;
                    if self.tx.rcpts.is_empty() {
                        self.tx.bdat_failed = true;
                    }
                    if !last {
                        self.reply(&format!("250 2.0.0 {size} octets received"))?;
                        continue;
                    }
                    if self.tx.bdat_failed {
                        self.tx = Transaction::default();
                        self.reply("554 5.5.1 no valid recipients")?;
                        continue;
                    }
                    let content = std::mem::take(&mut self.tx.bdat);
                    self.finish(content, true)?;
                }
                "RSET" => {
                    self.tx = Transaction::default();
                    self.reply("250 2.0.0 Ok")?;
                }
                "NOOP" => self.reply("250 2.0.0 Ok")?,
                "QUIT" => {
                    self.reply("221 2.0.0 Bye")?;
                    return Ok(());
                }
                _ => self.reply("500 5.5.2 command not recognised")?,
            }
        }
        Ok(())
    }

    /// Answers the end of data and records the message when the answer is 2xx.
    fn finish(&mut self, content: Vec<u8>, bdat: bool) -> io::Result<()> {
        let answer = lock(&self.shared.script).data.clone();
        let tx = std::mem::take(&mut self.tx);
        if answer.starts_with('2') {
            let message = Message {
                mail_from: tx.mail_from.unwrap_or_default(),
                mail_params: tx.mail_params,
                rcpts: tx.rcpts,
                content,
                tls: self.tls,
                client_cn: self.client_cn.clone(),
                connection: self.index,
                bdat,
                at: Instant::now(),
            };
            // Recorded before the reply is written: once the relay can see the 2xx, the
            // message is in the record.
            lock(&self.shared.messages).push(message);
        }
        self.reply(&answer)
    }

    /// Runs the handshake; `false` when it failed (the connection is then dropped).
    fn start_tls(&mut self) -> io::Result<bool> {
        let Stream::Plain(mut tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Ok(false);
        };
        let config = self.shared.tls.clone().expect("TLS configured");
        let mut conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        let deadline = Instant::now() + READ_TIMEOUT;
        while conn.is_handshaking() {
            if Instant::now() > deadline || self.shared.stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            if let Err(e) = conn.complete_io(&mut tcp) {
                let text = e.to_string();
                self.record(|r| r.tls_error = Some(text));
                // Let the alert reach the client.
                let _ = conn.write_tls(&mut tcp);
                return Ok(false);
            }
        }
        let cn = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| subject_cn(cert.as_ref()));
        self.client_cn = cn.clone();
        self.tls = true;
        self.record(|r| {
            r.tls_established = true;
            r.client_cn = cn;
        });
        self.stream = Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)));
        Ok(true)
    }
}

/// `MAIL FROM:<a> PARAMS` / `RCPT TO:<a> PARAMS` → (`a`, `PARAMS`).
fn path_and_params(line: &str) -> (String, String) {
    let Some(open) = line.find('<') else {
        return (String::new(), String::new());
    };
    let rest = &line[open + 1..];
    let close = rest.find('>').unwrap_or(rest.len());
    let params = rest.get(close + 1..).unwrap_or_default().trim().to_string();
    (rest[..close].to_string(), params)
}

/// The subject CN of a DER certificate.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok().map(str::to_string))
}

/// The relay configuration of the delivery tests: [`BASE_CONFIG`](super::common::BASE_CONFIG)'s
/// server, client rule and queue (`retry = ["1s"]`), followed by `upstreams` (TOML
/// `[[upstream]]` blocks).
pub fn relay_config(base: &str, upstreams: &str) -> String {
    format!("{base}\n{upstreams}\n")
}

/// A plaintext `[[upstream]]` block (tls = "none") for the fake upstream on `port`.
pub fn plain_upstream(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n{extra}\n"
    )
}

/// A `[[upstream]]` block with `tls = "required"` for a fake upstream on `port` whose
/// certificate names `mx.test`, trusting `ca_file` and presenting `cert`/`key`.
pub fn tls_upstream(
    name: &str,
    port: u16,
    ca_file: &Path,
    cert: &Path,
    key: &Path,
    extra: &str,
) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"required\"\n\
         server_name = \"mx.test\"\nca_file = \"{ca}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"\n{extra}\n",
        ca = ca_file.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// The certificates of a delivery test over TLS, in a fresh directory the relay is then started
/// in: a test CA (`pki`, `test-ca.pem`), the upstream's server certificate for `mx.test`
/// (`server`: `mx.pem`, `mx.key`) and the relay's client certificate for `relay.contoso.com`
/// (`client`: `relay-client.pem`, `relay-client.key`).
pub struct TlsDelivery {
    /// The directory, kept alive by the relay started in it.
    pub dir: Arc<tempfile::TempDir>,
    /// The test CA; more certificates can be issued from it.
    pub pki: TestPki,
    /// The upstream's server certificate and key.
    pub server: (PathBuf, PathBuf),
    /// The relay's client certificate and key.
    pub client: (PathBuf, PathBuf),
}

impl TlsDelivery {
    /// Creates the CA and both certificates.
    pub fn new() -> TlsDelivery {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let pki = TestPki::new(dir.path(), "test");
        let server = pki.leaf("mx", &["mx.test"]);
        let client = pki.leaf("relay-client", &["relay.contoso.com"]);
        TlsDelivery {
            dir,
            pki,
            server,
            client,
        }
    }

    /// A fake upstream offering STARTTLS with the `mx.test` certificate.
    pub fn fake(&self) -> Builder {
        FakeUpstream::builder().tls(&self.server.0, &self.server.1)
    }

    /// A `tls = "required"` `[[upstream]]` block (see [`tls_upstream`]) for `port`, trusting the
    /// test CA and presenting the relay's client certificate.
    pub fn upstream(&self, name: &str, port: u16, extra: &str) -> String {
        let (cert, key) = &self.client;
        tls_upstream(name, port, &self.pki.ca_file, cert, key, extra)
    }

    /// Starts the relay in this directory with `base` (e.g.
    /// [`BASE_CONFIG`](super::common::BASE_CONFIG)) and `upstreams`.
    pub fn relay(&self, base: &str, upstreams: &str) -> Relay {
        Relay::start_in(self.dir.clone(), &relay_config(base, upstreams))
    }
}

/// Waits (at most 30 s) until `attempts` of the relay's connections to `fake` have ended (the
/// first try and its retries), then asserts that the relay still holds exactly one message,
/// its first recipient deferred, and that no message reached `fake`. Returns the envelope and
/// that recipient's last reply, for the test to check the reason.
pub fn assert_deferred_unsent(
    relay: &Relay,
    fake: &FakeUpstream,
    attempts: usize,
) -> (spool::Envelope, String) {
    super::common::wait_until_for(
        &format!("{attempts} connection attempts"),
        Duration::from_secs(30),
        || fake.connections().iter().filter(|r| r.closed).count() >= attempts,
    );
    let mut queued = relay.queued();
    assert_eq!(queued.len(), 1, "the message stays queued");
    let (envelope, _) = queued.remove(0);
    let recipient = &envelope.recipients[0];
    let last = recipient.last_reply.clone().unwrap_or_default();
    println!("deferred with {last:?}");
    assert_eq!(
        recipient.state,
        spool::RecipientState::Deferred,
        "{envelope:?}"
    );
    assert_eq!(fake.message_count(), 0);
    (envelope, last)
}
