//! Interop with Postfix as an on-premises MTA that relays through exorelay: the test starts a
//! private Postfix instance (its own configuration, queue and log directories, an smtpd on a
//! free loopback port, `relayhost` pointing at the relay, STARTTLS when offered) and stops it
//! when done. Messages submitted to Postfix must arrive in exorelay's spool with the envelope
//! they were submitted with and the content intact below the two trace headers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Relay, TestPki};

/// Postfix's host name: its EHLO to the relay and its `Received:` header.
const POSTFIX_HOSTNAME: &str = "postfix.test";

/// The service table: an smtpd on `{SMTPD}` plus the services a relaying Postfix uses. Nothing
/// is chrooted, so the instance needs no files outside its directory.
const MASTER_CF: &str = "\
{SMTPD} inet n - n - - smtpd
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
proxywrite unix - - n -     1 proxymap
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
local     unix  - n n -     - local
virtual   unix  - n n -     - virtual
lmtp      unix  - - n -     - lmtp
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
";

/// A private Postfix instance, stopped when dropped (its log is printed if the test failed).
struct Postfix {
    config_dir: PathBuf,
    /// Where its smtpd listens.
    smtpd: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Postfix {
    /// Configures and starts an instance relaying everything to `relay`.
    fn start(relay: &Relay) -> Postfix {
        let dir = tempfile::tempdir().unwrap();
        // Postfix's unprivileged processes must be able to reach their queue below this.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path();
        let config_dir = root.join("etc");
        let data_dir = root.join("data");
        for d in [&config_dir, &root.join("queue"), &data_dir] {
            std::fs::create_dir(d).unwrap();
        }
        run(Command::new("chown").arg("postfix").arg(&data_dir));
        let log = root.join("maillog");
        let smtpd = format!("127.0.0.1:{}", common::free_port());
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             maillog_file = {log}\n\
             maillog_file_prefixes = {root}\n\
             import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = {POSTFIX_HOSTNAME}\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             relayhost = [{relay_ip}]:{relay_port}\n\
             alias_maps =\n\
             alias_database =\n\
             smtp_tls_security_level = may\n\
             smtp_tls_loglevel = 1\n",
            queue = root.join("queue").display(),
            data = data_dir.display(),
            log = log.display(),
            root = root.display(),
            relay_ip = relay.addr.ip(),
            relay_port = relay.addr.port(),
        );
        std::fs::write(config_dir.join("main.cf"), main_cf).unwrap();
        std::fs::write(
            config_dir.join("master.cf"),
            MASTER_CF.replace("{SMTPD}", &smtpd),
        )
        .unwrap();
        let postfix = Postfix {
            config_dir,
            smtpd,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        postfix.command("check");
        postfix.command("start");
        let smtpd = postfix.smtpd.clone();
        common::wait_until("Postfix's smtpd to listen", || {
            std::net::TcpStream::connect(&smtpd).is_ok()
        });
        println!("postfix started on {smtpd} in {:?}", started.elapsed());
        postfix
    }

    /// Runs `postfix -c DIR ARG`, asserting success.
    fn command(&self, arg: &str) {
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

impl Drop for Postfix {
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

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {output:?}");
    output
}

/// Hands `data` (CRLF, ending in CRLF) to Postfix's smtpd with swaks.
fn submit(postfix: &Postfix, file: &Path, from: &str, to: &[&str], data: &[u8]) {
    let mut with_end = data.to_vec();
    with_end.extend_from_slice(b".\r\n");
    std::fs::write(file, with_end).unwrap();
    let output = Command::new("swaks")
        .args([
            "--server",
            &postfix.smtpd,
            "--helo",
            "app.test",
            "--from",
            from,
        ])
        .args(["--to", &to.join(",")])
        .arg("--data")
        .arg(format!("@{}", file.display()))
        .args(["--timeout", "30"])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && transcript.contains("<-  250 2.0.0 Ok: queued"),
        "submission to Postfix failed:\n{transcript}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn message(message_id: &str, n: usize) -> Vec<u8> {
    format!(
        "From: Legacy App <app@contoso.com>\r\n\
         To: customer{n}@example.net\r\n\
         Subject: invoice {n}\r\n\
         Date: Sat, 28 Nov 2026 06:16:49 +0000\r\n\
         Message-ID: {message_id}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Invoice {n} is attached in spirit.\r\n\
         .leading dot survives two hops\r\n\
         \r\n\
         {long}\r\n\
         end\r\n",
        long = "abcdefghij".repeat(70),
    )
    .into_bytes()
}

/// Strips the first header (with its continuation lines) of `content`, returning it and the rest.
fn split_first_header(content: &[u8]) -> (String, &[u8]) {
    let mut end = 0;
    loop {
        let line_end = content[end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("CRLF-ended header")
            + end
            + 2;
        end = line_end;
        if !matches!(content.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    (
        String::from_utf8_lossy(&content[..end]).into_owned(),
        &content[end..],
    )
}

#[test]
fn postfix_relays_through_exorelay_intact() {
    if !common::have_postfix() || !common::have_tool("swaks") {
        return;
    }
    let started = Instant::now();
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path(), "test");
    pki.leaf("relay", &["relay.test"]);
    let config = common::BASE_CONFIG.replace(
        "max_recipients = 5",
        "max_recipients = 5\ntls = { cert = \"relay.pem\", key = \"relay.key\" }",
    );
    let relay = Relay::start_in(dir, &config);
    let postfix = Postfix::start(&relay);

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let sent: Vec<(String, &str, Vec<&str>)> = vec![
        (
            format!("<postfix-1-{nanos}@app.test>"),
            "app@contoso.com",
            vec!["customer1@example.net"],
        ),
        (
            format!("<postfix-2-{nanos}@app.test>"),
            "billing@contoso.com",
            vec!["customer2@example.net", "archive@example.org"],
        ),
        (
            format!("<postfix-3-{nanos}@app.test>"),
            "app@contoso.com",
            vec!["customer3@example.net"],
        ),
    ];
    let mut data = Vec::new();
    for (n, (id, from, to)) in sent.iter().enumerate() {
        let bytes = message(id, n + 1);
        let file = relay.dir.path().join(format!("postfix-{n}.eml"));
        submit(&postfix, &file, from, to, &bytes);
        data.push(bytes);
    }
    common::wait_until(
        "Postfix to relay every message into exorelay's spool",
        || relay.queued().len() >= sent.len(),
    );
    let queued = relay.queued();
    assert_eq!(queued.len(), sent.len(), "messages in exorelay's spool");
    for ((id, from, to), data) in sent.iter().zip(&data) {
        let found = common::with_message_id(&queued, id);
        assert_eq!(found.len(), 1, "{id} in the spool {} times", found.len());
        let (envelope, content) = found[0];
        assert_eq!(envelope.mail_from, *from);
        let mut recipients: Vec<&str> = envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        let mut expected = to.clone();
        recipients.sort_unstable();
        expected.sort_unstable();
        assert_eq!(recipients, expected, "{id}: recipients");
        assert_eq!(envelope.helo, POSTFIX_HOSTNAME);
        assert!(
            envelope.tls,
            "{id}: Postfix (smtp_tls_security_level = may) should have used STARTTLS"
        );
        // Below our Received: comes Postfix's own, then the submitted message unchanged.
        let after_ours = common::after_relay_received(content, envelope, "relay.test");
        let (theirs, rest) = split_first_header(after_ours);
        assert!(
            theirs.starts_with("Received: from ")
                && theirs.contains(&format!("by {POSTFIX_HOSTNAME} (Postfix)")),
            "{id}: expected Postfix's Received: header, got {theirs:?}"
        );
        assert!(
            rest == data.as_slice(),
            "{id}: content changed on the way:\n--- submitted ---\n{}\n--- spooled ---\n{}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(rest)
        );
        println!(
            "{id}: queued as {}, from <{from}> to {to:?}, tls={}, {} bytes intact below both Received: headers",
            envelope.id,
            envelope.tls,
            data.len()
        );
    }
    let sent_lines = postfix.log().matches("status=sent").count();
    println!(
        "postfix logged {sent_lines} status=sent deliveries; whole test {:?}",
        started.elapsed()
    );
}
