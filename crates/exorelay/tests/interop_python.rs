//! Interop with python's `smtplib`, the way a PowerShell or cron script sends: EHLO, optionally
//! STARTTLS verified against the test CA, then `sendmail` with a bytes message to several
//! recipients, more than one message per session. Each must be in the spool byte-exact after
//! the relay's `Received:` header, with the envelope the script gave.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::process::Command;
use std::time::Instant;

use common::{Expected, Relay};

/// The client: argv is host, port, mode (`plain` or `starttls`), CA file, then one
/// `FROM|TO,TO|OPTION,OPTION|FILE` job per message, all sent in one session.
const CLIENT: &str = r#"
import smtplib, ssl, sys
host, port, mode, cafile = sys.argv[1:5]
s = smtplib.SMTP(host, int(port), local_hostname="client.test", timeout=30)
code, ehlo = s.ehlo()
print("EHLO", code, ehlo.decode().replace("\n", " | "))
if mode == "starttls":
    assert s.has_extn("starttls"), "STARTTLS not advertised"
    ctx = ssl.create_default_context(cafile=cafile)
    code, reply = s.starttls(context=ctx)
    print("STARTTLS", code, reply.decode(), s.sock.version(), "verified:", ctx.verify_mode == ssl.CERT_REQUIRED)
    code, ehlo = s.ehlo()
    assert not s.has_extn("starttls"), "STARTTLS offered again inside TLS"
for job in sys.argv[5:]:
    sender, rcpts, options, path = job.split("|")
    msg = open(path, "rb").read()
    opts = [o for o in options.split(",") if o]
    refused = s.sendmail(sender, rcpts.split(","), msg, mail_options=opts)
    print("SENT", path, "refused:", refused)
code, reply = s.quit()
print("QUIT", code)
"#;

/// One message for the client to send.
struct Job {
    from: &'static str,
    to: Vec<&'static str>,
    options: &'static str,
    message_id: String,
    data: Vec<u8>,
}

/// A message id no other test run uses.
fn unique_id(tag: &str) -> String {
    format!("<smtplib-{tag}-{}@script.test>", common::run_id())
}

/// A message as a script builds it: CRLF line ends, a dot line, an optional 8-bit body.
fn message(message_id: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Nightly Job <job@contoso.com>\r\n\
         To: ops@example.net\r\n\
         Subject: nightly report\r\n\
         Date: Sat, 28 Nov 2026 06:16:49 +0000\r\n\
         Message-ID: {message_id}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         {body}\r\n\
         .hidden dot line\r\n\
         -- \r\n\
         sent by smtplib\r\n"
    )
    .into_bytes()
}

/// Runs the client for `jobs` and checks each message is spooled exactly, with its envelope.
fn send_and_check(relay: &Relay, mode: &str, ca_file: &str, jobs: &[Job]) {
    let mut args = vec![
        relay.addr.ip().to_string(),
        relay.addr.port().to_string(),
        mode.to_string(),
        ca_file.to_string(),
    ];
    for (i, job) in jobs.iter().enumerate() {
        let path = relay.dir.path().join(format!("smtplib-{i}.eml"));
        std::fs::write(&path, &job.data).unwrap();
        args.push(format!(
            "{}|{}|{}|{}",
            job.from,
            job.to.join(","),
            job.options,
            path.display()
        ));
    }
    let started = Instant::now();
    let transcript = common::run_client(
        relay,
        "smtplib client",
        Command::new("python3").arg("-c").arg(CLIENT).args(&args),
    );
    println!(
        "smtplib {mode}: {} messages in {:?}\n{transcript}",
        jobs.len(),
        started.elapsed()
    );
    assert_eq!(
        transcript.matches("refused: {}").count(),
        jobs.len(),
        "{transcript}"
    );

    let queued = relay.queued();
    assert_eq!(queued.len(), jobs.len(), "messages in the spool");
    for job in jobs {
        let (envelope, content) = Expected {
            message_id: &job.message_id,
            from: job.from,
            to: &job.to,
            in_order: true,
            helo: "client.test",
            tls: mode == "starttls",
        }
        .find_in(&queued);
        let body = if job.options.contains("BODY=8BITMIME") {
            Some("8BITMIME")
        } else {
            None
        };
        assert_eq!(envelope.params.body.as_deref(), body, "BODY= parameter");
        let client_bytes = common::after_relay_received(content, envelope, "relay.test");
        common::assert_same_bytes("smtplib", &job.data, client_bytes);
        println!(
            "{}: queued as {}, from <{}> to {:?}, tls={}, {} bytes byte-exact",
            job.message_id,
            envelope.id,
            job.from,
            job.to,
            envelope.tls,
            job.data.len()
        );
    }
}

#[test]
fn smtplib_sends_two_messages_to_several_recipients_in_one_session() {
    if !common::have_tool("python3") {
        return;
    }
    let relay = Relay::start();
    let first = unique_id("plain");
    let second = unique_id("8bit");
    let jobs = [
        Job {
            from: "job@contoso.com",
            to: vec!["ops@example.net", "backup@example.net", "audit@example.org"],
            options: "",
            data: message(&first, "All 42 backups completed."),
            message_id: first,
        },
        Job {
            from: "job@contoso.com",
            to: vec!["ops@example.net"],
            options: "BODY=8BITMIME",
            data: message(&second, "Grüße aus Köln: Sicherung erfolgreich, déjà vu."),
            message_id: second,
        },
    ];
    send_and_check(&relay, "plain", "", &jobs);
}

#[test]
fn smtplib_starttls_verifies_the_relay_against_the_test_ca() {
    if !common::have_tool("python3") {
        return;
    }
    // The script connects to 127.0.0.1 and checks the name, as a script would by default.
    let (relay, pki) = Relay::start_with_tls(&["relay.test", "127.0.0.1"]);
    let id = unique_id("tls");
    let jobs = [Job {
        from: "job@contoso.com",
        to: vec!["ops@example.net", "security@example.org"],
        options: "",
        data: message(&id, "Sent over STARTTLS."),
        message_id: id,
    }];
    send_and_check(
        &relay,
        "starttls",
        &pki.ca_file.display().to_string(),
        &jobs,
    );
}
