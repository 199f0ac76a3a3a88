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

    /// Starts the relay in an existing directory (used to restart on the same spool).
    pub fn start_in(dir: Arc<tempfile::TempDir>, config: &str) -> Relay {
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_exorelay"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start exorelay");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let wanted = config
            .lines()
            .find(|l| l.trim_start().starts_with("listen"))
            .map_or(1, |l| l.matches(':').count().max(1));
        let mut addrs = Vec::new();
        let deadline = Instant::now() + WAIT;
        while addrs.len() < wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(addr) => addrs.push(addr.parse().unwrap()),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "exorelay did not start listening:\n{}",
                        log.lock().unwrap()
                    );
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
        wait_until(&format!("log line {needle:?}"), || self.log().contains(needle));
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

/// The messages in a spool's queue (not held ones), oldest first, with content.
pub fn queued_messages(spool_dir: &Path) -> Vec<(spool::Envelope, Vec<u8>)> {
    let reader = spool::SpoolReader::open(spool_dir).unwrap();
    reader
        .list()
        .unwrap()
        .into_iter()
        .filter(|entry| !entry.held)
        .map(|entry| {
            let envelope = entry.envelope.expect("readable envelope");
            let content = std::fs::read(reader.content_path(envelope.id)).unwrap();
            (envelope, content)
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
            assert!(n > 0, "connection closed while waiting for a reply; got so far: {all:?}");
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
        matches!(self.reader.read_to_end(&mut rest), Ok(_))
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
