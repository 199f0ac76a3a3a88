//! Shared helpers for the integration tests: start the real `exorelay` binary on a loopback
//! port with a temporary spool, talk SMTP to it, read its spool, and skip (or, in CI, fail)
//! when an interop peer is missing. Every wait is bounded.
#![allow(dead_code)] // each test binary uses a different subset of these helpers
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running relay, killed when dropped; its log is printed if the test failed.
pub struct Relay {
    child: Option<Child>,
    /// Where the relay listens (IPv4 loopback).
    pub addr: SocketAddr,
    /// All listening addresses, in configuration order.
    pub addrs: Vec<SocketAddr>,
    /// The spool directory.
    pub spool: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    log: Arc<Mutex<String>>,
    /// Keeps the temporary directory alive.
    pub dir: Arc<tempfile::TempDir>,
}

/// The `[server]` section and client rules most tests use; `{LISTEN}` and `{SPOOL}` are filled.
pub const BASE_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
hostname = "relay.test"
max_message_size = "1MiB"
max_recipients = 5

[[client]]
name = "loopback"
networks = ["127.0.0.0/8", "::1"]

[queue]
dir = "spool"
retry = ["1s"]
"#;

impl Relay {
    /// Starts the relay with [`BASE_CONFIG`].
    pub fn start() -> Relay {
        Relay::start_with(BASE_CONFIG)
    }

    /// Starts the relay with `config` (paths in it are relative to a fresh temp directory).
    pub fn start_with(config: &str) -> Relay {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Relay::start_in(dir, config)
    }

    /// Starts the relay with [`BASE_CONFIG`] plus STARTTLS, offering a certificate for `names`
    /// (`relay.pem`/`relay.key`) from a new test CA (`test-ca.pem`), which is returned with it.
    pub fn start_with_tls(names: &[&str]) -> (Relay, TestPki) {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let pki = TestPki::new(dir.path(), "test");
        pki.leaf("relay", names);
        let config = BASE_CONFIG.replace(
            "max_recipients = 5",
            "max_recipients = 5\ntls = { cert = \"relay.pem\", key = \"relay.key\" }",
        );
        (Relay::start_in(dir, &config), pki)
    }

    /// Starts the relay in an existing directory (used to restart on the same spool).
    pub fn start_in(dir: Arc<tempfile::TempDir>, config: &str) -> Relay {
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, config).unwrap();
        let (mut child, log, rx) = spawn_exorelay(
            Command::new(env!("CARGO_BIN_EXE_exorelay"))
                .arg("serve")
                .arg("--config")
                .arg(&config_path),
            "listening on ",
        );
        let wanted = config
            .lines()
            .find(|l| l.trim_start().starts_with("listen"))
            .map_or(1, |l| (l.matches('"').count() / 2).max(1));
        let mut addrs = Vec::new();
        let deadline = Instant::now() + WAIT;
        while addrs.len() < wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(addr) => addrs.push(addr.parse().unwrap()),
                Err(_) => {
                    let _ = child.kill();
                    panic!("exorelay did not start listening:\n{}", log.lock().unwrap());
                }
            }
        }
        Relay {
            child: Some(child),
            addr: addrs[0],
            addrs,
            spool: dir.path().join("spool"),
            config: config_path,
            log,
            dir,
        }
    }

    /// The relay's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        wait_until(&format!("log line {needle:?}"), || {
            self.log().contains(needle)
        });
    }

    /// Kills the relay with SIGKILL and waits for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the relay with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("relay running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("relay did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects a test client.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The messages in the spool's queue, with their content.
    pub fn queued(&self) -> Vec<(spool::Envelope, Vec<u8>)> {
        queued_messages(&self.spool)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- exorelay log ----\n{}", self.log());
        }
    }
}

/// Spawns a daemon (`exorelay serve`, `exorelay exosim`) with no input, output discarded and
/// its standard error collected into a shared log by a thread, which also sends what follows
/// `marker` on each line containing it (trimmed: a listening address) to the returned channel.
fn spawn_exorelay(
    command: &mut Command,
    marker: &'static str,
) -> (Child, Arc<Mutex<String>>, mpsc::Receiver<String>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start exorelay");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr piped");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.split(marker).nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (child, log, rx)
}

/// A running `exorelay exosim` (the simulated Exchange Online), killed when dropped; its log is
/// printed if the test failed.
pub struct Exosim {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its `--store` directory: one subdirectory per tenant with the accepted messages.
    pub store: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Exosim {
    /// Runs `exorelay exosim --listen 127.0.0.1:0 --store STORE ARGS…` and waits (at most
    /// [`WAIT`]) for its `exosim listening on ADDR` line.
    pub fn start<I>(store: PathBuf, args: I) -> Exosim
    where
        I: IntoIterator,
        I::Item: AsRef<std::ffi::OsStr>,
    {
        let (mut child, log, rx) = spawn_exorelay(
            Command::new(env!("CARGO_BIN_EXE_exorelay"))
                .args(["exosim", "--listen", "127.0.0.1:0", "--store"])
                .arg(&store)
                .args(args),
            "exosim listening on ",
        );
        let Ok(addr) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            panic!("exosim did not start:\n{}", log.lock().unwrap());
        };
        Exosim {
            child,
            addr: addr.parse().unwrap(),
            store,
            log,
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Exosim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- exosim log ----\n{}", self.log());
        }
    }
}

/// The messages in a spool's queue (not held ones), oldest first, with content. With the
/// relay running, a message delivered between the listing and the read of its content is no
/// longer queued and is left out.
pub fn queued_messages(spool_dir: &Path) -> Vec<(spool::Envelope, Vec<u8>)> {
    let reader = spool::SpoolReader::open(spool_dir).unwrap();
    reader
        .list()
        .unwrap()
        .into_iter()
        .filter(|entry| !entry.held)
        .filter_map(|entry| {
            let envelope = entry.envelope.expect("readable envelope");
            match reader.read_content(envelope.id) {
                Ok(content) => Some((envelope, content)),
                Err(spool::Error::NotFound { .. }) => None,
                Err(e) => panic!("{}: {e}", envelope.id),
            }
        })
        .collect()
}

/// Polls `condition` every 20 ms for at most [`WAIT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal, strict SMTP client for driving the relay byte by byte.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects to `addr`; the greeting is left unread.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one (possibly multi-line) reply and returns it as text, lines joined by `\n`.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "connection closed while waiting for a reply; got so far: {all:?}"
            );
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let last = line.as_bytes().get(3) == Some(&b' ');
            all.push_str(line.trim_end());
            if last {
                return all;
            }
            all.push('\n');
        }
    }

    /// Sends `line` plus CRLF and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends `line`, asserting the reply starts with `expected`.
    pub fn expect(&mut self, line: &str, expected: &str) -> String {
        let reply = self.cmd(line);
        assert!(
            reply.starts_with(expected),
            "{line:?}: expected {expected:?}, got {reply:?}"
        );
        reply
    }

    /// Reads the greeting, asserting its start.
    pub fn greeting(&mut self, expected: &str) -> String {
        let reply = self.reply();
        assert!(reply.starts_with(expected), "greeting {reply:?}");
        reply
    }

    /// Whether the server closed the connection (reads to EOF, bounded by the read timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

/// Whether an interop tool is installed. Missing: skip with a printed reason, unless
/// `EXORELAY_REQUIRE_INTEROP=1` (set by `.ci/run`), where a missing tool fails the test.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("EXORELAY_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "{tool} is required (EXORELAY_REQUIRE_INTEROP=1) but not installed"
        );
        eprintln!("SKIPPED: {tool} is not installed (install it or run .ci/run)");
    }
    found
}

/// A test certificate authority and certificates signed by it, written as PEM files.
pub struct TestPki {
    /// The CA certificate (PEM file).
    pub ca_file: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
}

impl TestPki {
    /// A new CA named `name`, with files in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestPki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem()).unwrap();
        TestPki {
            ca_file,
            issuer: rcgen::Issuer::new(params, key),
            dir: dir.to_path_buf(),
        }
    }

    /// A leaf certificate for `names` (first is the CN), returned as (cert file, key file).
    pub fn leaf(&self, file_stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.join(format!("{file_stem}.pem"));
        let key_file = self.dir.join(format!("{file_stem}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

/// The client's bytes of a spooled message: `content` minus the relay's own `Received:` header,
/// which must be the first header, folded over exactly three CRLF-ended lines
/// (`Received: from …`, `\tby HOSTNAME (exorelay) with …`, `\tid QUEUEID; DATE`).
pub fn after_relay_received<'a>(
    content: &'a [u8],
    envelope: &spool::Envelope,
    hostname: &str,
) -> &'a [u8] {
    let mut rest = content;
    let mut lines = Vec::new();
    for _ in 0..3 {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("no CRLF-ended Received: header in {content:?}"));
        lines.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = &rest[end + 2..];
    }
    let id_line = format!("\tid {};", envelope.id);
    let by_line = format!("\tby {hostname} (exorelay) with ");
    assert!(
        lines[0].starts_with("Received: from ")
            && lines[1].starts_with(&by_line)
            && lines[2].starts_with(&id_line),
        "the relay's Received: header is not the expected three lines: {lines:#?}"
    );
    assert!(
        !rest.starts_with(b" ") && !rest.starts_with(b"\t"),
        "the relay's Received: header has more than three lines"
    );
    rest
}

/// A loopback TCP port that was free a moment ago (bound to `127.0.0.1:0`, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Like [`have_tool`] for a check that is not a command: `ok` false skips with `reason`
/// printed, or fails under `EXORELAY_REQUIRE_INTEROP=1`.
pub fn have_requirement(ok: bool, reason: &str) -> bool {
    if !ok {
        assert!(
            std::env::var("EXORELAY_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "required (EXORELAY_REQUIRE_INTEROP=1) but missing: {reason}"
        );
        eprintln!("SKIPPED: {reason}");
    }
    ok
}

/// Whether `command` runs and exits successfully (its output discarded).
fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether swaks can do STARTTLS: swaks itself plus perl's Net::SSLeay (a Debian
/// *recommends* of swaks, so `--no-install-recommends` leaves it out: `libnet-ssleay-perl`).
pub fn have_swaks_tls() -> bool {
    if !have_tool("swaks") {
        return false;
    }
    let ssleay = succeeds(Command::new("perl").args(["-MNet::SSLeay", "-e", "1"]));
    have_requirement(
        ssleay,
        "swaks --tls needs perl's Net::SSLeay (apt-get install libnet-ssleay-perl)",
    )
}

/// Whether a private Postfix instance can be started: `postfix` installed, running as root
/// (its master must start as root) and the `postfix` user the Debian package creates.
pub fn have_postfix() -> bool {
    if !have_tool("postfix") {
        return false;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !have_requirement(root, "a private Postfix instance must be started as root") {
        return false;
    }
    let user = succeeds(Command::new("id").arg("postfix"));
    have_requirement(
        user,
        "the postfix user does not exist (install the postfix package)",
    )
}

/// The queued messages whose content carries the header `Message-ID: <message_id>` (matched
/// case-insensitively on the field name, exactly on the id).
pub fn with_message_id<'a>(
    queued: &'a [(spool::Envelope, Vec<u8>)],
    message_id: &str,
) -> Vec<&'a (spool::Envelope, Vec<u8>)> {
    const FIELD: &[u8] = b"message-id: ";
    let needle = format!("{message_id}\r\n").into_bytes();
    let len = FIELD.len() + needle.len();
    queued
        .iter()
        .filter(|(_, content)| {
            content.windows(len).any(|w| {
                w[..FIELD.len()].eq_ignore_ascii_case(FIELD) && w[FIELD.len()..] == needle[..]
            })
        })
        .collect()
}

// ---- Delivery tests (issue 3): process, queue CLI, SMTP sending and private Postfix helpers ----

impl Relay {
    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// `VmRSS` of process `pid` in KiB, from `/proc/PID/status`.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `exorelay ARGS…` (the CLI, e.g. `queue show ID --spool DIR`) and returns its output.
pub fn exorelay_cli(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_exorelay"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run exorelay");
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("exorelay {args:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every message in a spool, queued and held, as `(envelope, held)`; unreadable ones skipped.
pub fn spool_entries(spool_dir: &Path) -> Vec<(spool::Envelope, bool)> {
    let Ok(reader) = spool::SpoolReader::open(spool_dir) else {
        return Vec::new();
    };
    reader
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| entry.envelope.ok().map(|e| (e, entry.held)))
        .collect()
}

/// Polls `condition` every 20 ms for at most `limit`.
pub fn wait_until_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `data` (CRLF lines) dot-stuffed and ended with `.CRLF`, ready to send after `354`.
pub fn dot_stuffed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 8);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A small message with the given `Message-ID` (with angle brackets) and subject.
pub fn small_message(from: &str, to: &str, message_id: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: Sat, 28 Nov 2026 06:16:49 +0000\r\n\
         Message-ID: {message_id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\
         \r\nHello from the delivery tests.\r\n.a line starting with a dot\r\nbye\r\n"
    )
    .into_bytes()
}

impl Client {
    /// Connects, reads the greeting and says EHLO.
    pub fn session(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.greeting("220 ");
        c.expect("EHLO client.test", "250");
        c
    }

    /// MAIL FROM:<`from`>, RCPT TO:<…> for each of `to`, DATA: asserts the 250s and the 354,
    /// so the message can be sent next.
    pub fn begin_data(&mut self, from: &str, to: &[&str]) {
        self.expect(&format!("MAIL FROM:<{from}>"), "250");
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), "250");
        }
        self.expect("DATA", "354");
    }

    /// One transaction: MAIL, RCPTs, DATA with `data` (dot-stuffed here); each step must
    /// succeed. Returns the reply to the end of data, which must be 250; the queue id is its
    /// last word.
    pub fn mail(&mut self, from: &str, to: &[&str], data: &[u8]) -> String {
        self.begin_data(from, to);
        self.send(&dot_stuffed(data));
        let reply = self.reply();
        assert!(reply.starts_with("250 "), "end of data: {reply}");
        reply
    }
}

/// The queue id in a `250 2.0.0 Ok: queued as ID` reply (its last word).
pub fn queue_id_of(reply: &str) -> String {
    reply
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// The service table of a private Postfix instance: an smtpd on `{SMTPD}` plus the services a
/// receiving or relaying Postfix uses. Nothing is chrooted, so the instance needs no files
/// outside its directory.
pub const POSTFIX_MASTER_CF: &str = include_str!("../../../../bench/postfix-master.cf");

/// The basics of a private Postfix instance's `main.cf` (its directories, log, loopback IPv4);
/// `{ROOT}` is the instance's directory.
pub const POSTFIX_MAIN_CF: &str = include_str!("../../../../bench/postfix-main.cf");

/// A private Postfix instance in a temporary directory (own `main.cf`, queue, data directory
/// and `maillog_file`), stopped when dropped; its log is printed if the test failed.
pub struct PrivatePostfix {
    /// `-c` directory.
    pub config_dir: PathBuf,
    /// Where its smtpd listens (`127.0.0.1:PORT`).
    pub smtpd: String,
    /// Its `maillog_file`.
    pub log_file: PathBuf,
    /// The instance's root directory (world-readable, so Postfix's processes can reach it).
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivatePostfix {
    /// Configures and starts an instance whose `main.cf` is the basics (queue, data directory,
    /// log file, loopback IPv4, `myhostname`) followed by `extra_main_cf`, in which `{ROOT}`
    /// is replaced by the instance's directory. `prepare` runs on that directory before start.
    /// The extra lines make it a receiver (e.g. `smtpd_tls_req_ccert = yes` and a Maildir, as
    /// in `delivery_postfix`) or a sender (e.g. `relayhost = [IP]:PORT` with
    /// `smtp_tls_security_level = may`, as in `interop_postfix`).
    pub fn start(
        myhostname: &str,
        extra_main_cf: &str,
        prepare: impl FnOnce(&Path),
    ) -> PrivatePostfix {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().to_path_buf();
        let config_dir = root.join("etc");
        let data_dir = root.join("data");
        for d in [&config_dir, &root.join("queue"), &data_dir] {
            std::fs::create_dir(d).unwrap();
        }
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(&data_dir)
            .status()
            .unwrap();
        assert!(chown.success(), "chown postfix {}", data_dir.display());
        let log_file = root.join("maillog");
        let smtpd = format!("127.0.0.1:{}", free_port());
        let main_cf = format!("{POSTFIX_MAIN_CF}myhostname = {myhostname}\n{extra_main_cf}\n")
            .replace("{ROOT}", &root.display().to_string());
        std::fs::write(config_dir.join("main.cf"), main_cf).unwrap();
        std::fs::write(
            config_dir.join("master.cf"),
            POSTFIX_MASTER_CF.replace("{SMTPD}", &smtpd),
        )
        .unwrap();
        prepare(&root);
        let postfix = PrivatePostfix {
            config_dir,
            smtpd,
            log_file,
            root,
            _dir: dir,
        };
        postfix.command("check");
        postfix.command("start");
        let smtpd = postfix.smtpd.clone();
        wait_until("Postfix's smtpd to listen", || {
            TcpStream::connect(&smtpd).is_ok()
        });
        postfix
    }

    /// The smtpd port.
    pub fn port(&self) -> u16 {
        self.smtpd.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Runs `postfix -c DIR ARG`, asserting success.
    pub fn command(&self, arg: &str) {
        let output = Command::new("postfix")
            .arg("-c")
            .arg(&self.config_dir)
            .arg(arg)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "postfix {arg} failed ({}): {}{}\n---- maillog ----\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// The instance's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn running(&self) -> bool {
        Command::new("postfix")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- postfix maillog ----\n{}", self.log());
        }
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("stop")
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.running() {
            let _ = Command::new("postfix")
                .arg("-c")
                .arg(&self.config_dir)
                .arg("abort")
                .output();
        }
    }
}

// ---- Interop tests: clients run as processes, and what they sent checked in the spool ----

/// `PID-NANOS`: a tag no other test run uses, for Message-IDs and the like.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Runs an interop client (`what` names it in failures) to completion and returns its standard
/// output followed by its standard error; fails the test, with `relay`'s log, unless the client
/// exited successfully.
pub fn run_client(relay: &Relay, what: &str, command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{transcript}\n---- relay log ----\n{}",
        output.status,
        relay.log()
    );
    transcript
}

/// A `swaks` command that sends `data` (CRLF lines; the `.` line is appended here, so swaks adds
/// nothing) through `file` to `server` (`HOST:PORT`), saying `helo`, from `from` to `to`, with a
/// 30 s timeout. The caller adds its own options and runs it.
pub fn swaks(
    server: &str,
    helo: &str,
    from: &str,
    to: &[&str],
    data: &[u8],
    file: &Path,
) -> Command {
    let mut with_end = data.to_vec();
    with_end.extend_from_slice(b".\r\n");
    std::fs::write(file, with_end).unwrap();
    let mut command = Command::new("swaks");
    command
        .args(["--server", server, "--helo", helo, "--from", from])
        .args(["--to", &to.join(",")])
        .arg("--data")
        .arg(format!("@{}", file.display()))
        .args(["--timeout", "30"]);
    command
}

/// Asserts that `spooled` is byte for byte what the client (`who`) sent, showing both if not.
pub fn assert_same_bytes(who: &str, sent: &[u8], spooled: &[u8]) {
    assert!(
        spooled == sent,
        "spooled content differs from what {who} sent:\n--- sent ---\n{}\n--- spooled ---\n{}",
        String::from_utf8_lossy(sent),
        String::from_utf8_lossy(spooled)
    );
}

/// The envelope a test expects in the spool for one message it had sent, found by Message-ID.
pub struct Expected<'a> {
    /// The `Message-ID` header's value, with angle brackets.
    pub message_id: &'a str,
    /// The reverse-path, without angle brackets.
    pub from: &'a str,
    /// The recipients.
    pub to: &'a [&'a str],
    /// Whether the spool must list the recipients in `to`'s order (an MTA in between may
    /// reorder them).
    pub in_order: bool,
    /// The EHLO name the relay must have recorded.
    pub helo: &'a str,
    /// Whether the message must have come over TLS.
    pub tls: bool,
}

impl Expected<'_> {
    /// Asserts `queued` holds exactly one message with this Message-ID and that its envelope is
    /// the one expected; returns that message's envelope and content.
    pub fn find_in<'q>(
        &self,
        queued: &'q [(spool::Envelope, Vec<u8>)],
    ) -> (&'q spool::Envelope, &'q [u8]) {
        let id = self.message_id;
        let found = with_message_id(queued, id);
        assert_eq!(
            found.len(),
            1,
            "{id} in the spool {} times (of {} messages)",
            found.len(),
            queued.len()
        );
        let (envelope, content) = found[0];
        assert_eq!(envelope.mail_from, self.from, "{id}: sender");
        let mut recipients: Vec<&str> = envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        let mut expected = self.to.to_vec();
        if !self.in_order {
            recipients.sort_unstable();
            expected.sort_unstable();
        }
        assert_eq!(recipients, expected, "{id}: recipients");
        assert_eq!(envelope.helo, self.helo, "{id}: helo");
        assert_eq!(envelope.tls, self.tls, "{id}: tls flag");
        (envelope, content)
    }
}

// ---- Crash tests: load clients that survive the relay being killed under them ----

/// What a load client knows about one message it tried to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// 250 to the end of data (the reply): the relay promised the message.
    Acked(String),
    /// Any other reply to the end of data, or a failure before the end of data was written:
    /// the relay does not have the message.
    NotAccepted(String),
    /// The end of data was (or may have been) written, but no reply was read: the relay may or
    /// may not have the message.
    InFlight(String),
}

/// A bare SMTP client over a std socket that returns errors instead of panicking, so that a
/// load session can go on (or give up) when the relay is killed under it.
pub struct LoadClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl LoadClient {
    /// Connects with `timeout` on every read and write; the greeting is left unread.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<LoadClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(LoadClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    pub fn reply(&mut self) -> std::io::Result<String> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.trim_end().to_string());
            }
        }
    }

    /// Sends `line` and expects a reply starting with `code`.
    pub fn command(&mut self, line: &str, code: &str) -> std::io::Result<()> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        let reply = self.reply()?;
        if reply.starts_with(code) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("{line}: {reply}")))
        }
    }

    /// Sends `data` (CRLF lines) from `load@contoso.com` to `sink@example.net` and classifies
    /// the outcome; the flag says whether the session can go on.
    pub fn send(&mut self, data: &[u8]) -> (LoadOutcome, bool) {
        let before_end = (|| -> std::io::Result<()> {
            self.command("MAIL FROM:<load@contoso.com>", "250")?;
            self.command("RCPT TO:<sink@example.net>", "250")?;
            self.command("DATA", "354")?;
            let stuffed = dot_stuffed(data);
            self.writer.write_all(&stuffed[..stuffed.len() - 3])
        })();
        if let Err(e) = before_end {
            return (
                LoadOutcome::NotAccepted(format!("before end of data: {e}")),
                false,
            );
        }
        // From here on the relay may have the whole message.
        if let Err(e) = self.writer.write_all(b".\r\n") {
            return (
                LoadOutcome::InFlight(format!("writing end of data: {e}")),
                false,
            );
        }
        match self.reply() {
            Ok(reply) if reply.starts_with("250") => (LoadOutcome::Acked(reply), true),
            Ok(reply) => (LoadOutcome::NotAccepted(reply), false),
            Err(e) => (
                LoadOutcome::InFlight(format!("reading the reply: {e}")),
                false,
            ),
        }
    }
}
