//! End to end with a real peer: swaks → exorelay → a private Postfix instance acting as the
//! smart host, started by the test with its own configuration directory on a loopback port and
//! configured like Exchange Online's certificate connector: STARTTLS mandatory
//! (`smtpd_tls_security_level = encrypt`), a client certificate required and verified against
//! the test CA (`smtpd_tls_req_ccert = yes`), mail for example.net stored in a Maildir.
//! The message must arrive and Postfix's log must show the client certificate's subject CN.
//! Then a relay presenting a certificate from another CA must get nowhere: the message stays
//! deferred with a 4.7.x reason in its envelope, and nothing reaches Postfix in plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;
mod upstream;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{PrivatePostfix, Relay, TestPki};
use spool::RecipientState;
use upstream::TlsDelivery;

const LIMIT: Duration = Duration::from_secs(60);

/// The messages in the Postfix instance's Maildir.
fn maildir(postfix: &PrivatePostfix) -> Vec<String> {
    let mut found = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(dir) = std::fs::read_dir(postfix.root.join("mail/inbox").join(sub)) else {
            continue;
        };
        for entry in dir.filter_map(Result::ok) {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                found.push(text);
            }
        }
    }
    found
}

/// Sends one message to the relay with swaks, returning swaks' transcript.
fn swaks(relay: &Relay, from: &str, to: &str, message_id: &str, subject: &str) -> String {
    let file = relay.dir.path().join(format!("{subject}.eml"));
    let data = common::small_message(from, to, message_id, subject);
    let server = relay.addr.to_string();
    let output = common::swaks(&server, "app.test", from, &[to], &data, &file)
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && transcript.contains("<-  250 2.0.0"),
        "swaks to the relay failed:\n{transcript}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    transcript
}

#[test]
fn swaks_to_exorelay_to_postfix_requiring_a_client_certificate() {
    if !common::have_postfix() || !common::have_tool("swaks") {
        return;
    }
    let started = Instant::now();
    let tls = TlsDelivery::new();
    let pki = &tls.pki;
    let (mx_cert, mx_key) = &tls.server;
    // Postfix 3.7 names the client certificate's subject (`subject_CN=…`) in its log from
    // `smtpd_tls_loglevel = 2` on; level 1 logs only "Trusted TLS connection established".
    let main_cf = format!(
        "mydestination =\n\
         smtpd_relay_restrictions = permit_mynetworks, reject\n\
         virtual_mailbox_domains = example.net\n\
         virtual_mailbox_base = {{ROOT}}/mail\n\
         virtual_mailbox_maps = static:inbox/\n\
         virtual_minimum_uid = 1\n\
         virtual_uid_maps = static:{uid}\n\
         virtual_gid_maps = static:{gid}\n\
         smtpd_tls_security_level = encrypt\n\
         smtpd_tls_ask_ccert = yes\n\
         smtpd_tls_req_ccert = yes\n\
         smtpd_tls_CAfile = {ca}\n\
         smtpd_tls_cert_file = {mx_cert}\n\
         smtpd_tls_key_file = {mx_key}\n\
         smtpd_tls_loglevel = 2\n\
         smtpd_tls_received_header = yes\n",
        uid = id("-u"),
        gid = id("-g"),
        ca = pki.ca_file.display(),
        mx_cert = mx_cert.display(),
        mx_key = mx_key.display(),
    );
    let postfix = PrivatePostfix::start("mx.test", &main_cf, |root| {
        std::fs::create_dir(root.join("mail")).unwrap();
        let chown = Command::new("chown")
            .arg("postfix:postfix")
            .arg(root.join("mail"))
            .status();
        assert!(chown.unwrap().success());
    });
    println!(
        "postfix listening on {} after {:?}",
        postfix.smtpd,
        started.elapsed()
    );

    let relay = tls.relay(
        common::BASE_CONFIG,
        &tls.upstream("postfix", postfix.port(), ""),
    );
    let nanos = common::run_id();
    let good_id = format!("<e2e-good-{nanos}@app.test>");
    swaks(
        &relay,
        "app@contoso.com",
        "customer@example.net",
        &good_id,
        "good",
    );
    common::wait_until_for("the message in Postfix's Maildir", LIMIT, || {
        maildir(&postfix).iter().any(|m| m.contains(&good_id))
    });
    let arrived = started.elapsed();
    let stored = maildir(&postfix)
        .into_iter()
        .find(|m| m.contains(&good_id))
        .unwrap();
    let log = postfix.log();
    let cn_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("smtpd") && l.contains("relay.contoso.com"))
        .collect();
    println!(
        "postfix log lines naming the client certificate:\n  {}",
        cn_lines.join("\n  ")
    );
    assert!(
        log.contains("subject_CN=relay.contoso.com") || log.contains("CN=relay.contoso.com"),
        "Postfix's log does not show the client certificate's subject:\n{log}"
    );
    assert!(log.contains("Trusted TLS connection established"), "{log}");
    let received = stored
        .lines()
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        stored.contains("Client CN \"relay.contoso.com\"") && stored.contains("verified OK"),
        "Postfix's Received: header should name the verified client certificate:\n{received}"
    );
    assert!(stored.contains("by relay.test (exorelay)"), "{received}");
    common::wait_until("the relay's queue to empty", || relay.queued().is_empty());
    println!("delivered to Postfix's Maildir at {arrived:?}");

    // A certificate from another CA: refused by Postfix after the handshake; deferred, never
    // sent in plaintext.
    let rogue_dir = Arc::new(tempfile::tempdir().unwrap());
    let rogue = TestPki::new(rogue_dir.path(), "rogue");
    let (rogue_cert, rogue_key) = rogue.leaf("rogue-client", &["relay.contoso.com"]);
    let rogue_relay = Relay::start_in(
        rogue_dir,
        &upstream::relay_config(
            common::BASE_CONFIG,
            &upstream::tls_upstream(
                "postfix",
                postfix.port(),
                &pki.ca_file,
                &rogue_cert,
                &rogue_key,
                "",
            ),
        ),
    );
    let bad_id = format!("<e2e-rogue-{nanos}@app.test>");
    let transcript = swaks(
        &rogue_relay,
        "app@contoso.com",
        "customer@example.net",
        &bad_id,
        "rogue",
    );
    let queue_id = transcript
        .lines()
        .rfind(|l| l.contains("<-  250 2.0.0"))
        .map(common::queue_id_of)
        .unwrap();
    common::wait_until_for("the rogue message to be deferred", LIMIT, || {
        rogue_relay.queued().iter().any(|(e, _)| {
            e.recipients[0].state == RecipientState::Deferred
                && e.recipients[0].last_reply.is_some()
        })
    });
    let (envelope, _) = rogue_relay.queued().remove(0);
    assert_eq!(envelope.id.to_string(), queue_id);
    let reason = envelope.recipients[0].last_reply.clone().unwrap();
    let show = common::exorelay_cli(&[
        "queue",
        "show",
        &queue_id,
        "--spool",
        &rogue_relay.spool.display().to_string(),
    ]);
    let shown = String::from_utf8_lossy(&show.stdout);
    println!("rogue certificate: deferred with {reason:?}\nexorelay queue show:\n{shown}");
    assert!(shown.contains("state = \"deferred\""), "{shown}");
    assert!(
        reason.starts_with("4") && reason.contains(" 4.7."),
        "not a TLS/4.7.x reason: {reason}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !maildir(&postfix).iter().any(|m| m.contains(&bad_id)),
        "delivered with an untrusted client certificate"
    );
    let log = postfix.log();
    assert!(
        !log.contains("Must issue a STARTTLS command first"),
        "the relay spoke in plaintext:\n{log}"
    );
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not trusted") || l.contains("certificate verification failed"))
        .collect();
    println!("postfix on the rogue client:\n  {}", refusals.join("\n  "));
    assert!(
        !refusals.is_empty(),
        "Postfix did not log the untrusted certificate:\n{log}"
    );
    println!("whole test {:?}", started.elapsed());
}

/// `id -u postfix` / `id -g postfix`.
fn id(flag: &str) -> String {
    let out = Command::new("id").args([flag, "postfix"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
