//! Pre-flight per client, against the real binaries: a relay without a certificate in front of
//! a simulated EXO (`exorelay exosim`) that attributes the relay by its egress IP only, so a
//! foreign envelope sender would be refused with 5.7.64. `refuse` answers the client at RCPT
//! and spools nothing; `fix` rewrites the envelope sender (the original kept in a header) and
//! EXO takes the message as Originating; `warn` accepts, counts and delivers as sent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::ffi::OsString;
use std::process::Command;

use common::{Exosim, Relay, wait_until};

const TENANTS: &str = r#"
[tenant.contoso]
accepted_domains = ["contoso.com"]
connectors = [{ name = "Office IP", type = "OnPremises", sender_ip_addresses = ["198.51.100.10"] }]
"#;

/// Starts `exorelay exosim` with [`TENANTS`], seeing every client as the relay's egress IP
/// (`198.51.100.10`) and storing below `dir`.
fn start_exosim(dir: &std::path::Path) -> Exosim {
    let tenants = dir.join("tenants.toml");
    std::fs::write(&tenants, TENANTS).unwrap();
    let mut args = vec![OsString::from("--source-ip"), "198.51.100.10".into()];
    args.extend([OsString::from("--tenants"), tenants.into()]);
    Exosim::start(dir.join("exo-store"), args)
}

/// An exosim and a relay in front of it whose `[[client]]` rule ends with `client_extra`
/// (the temporary directory, which must outlive both, comes first).
fn relay_before_exosim(client_extra: &str) -> (tempfile::TempDir, Exosim, Relay) {
    let dir = tempfile::tempdir().unwrap();
    let exo = start_exosim(dir.path());
    let relay = Relay::start_with(&relay_config(exo.addr.port(), client_extra));
    (dir, exo, relay)
}

fn relay_config(exo_port: u16, client_extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
hostname = "relay.test"

[[client]]
name = "scripts"
networks = ["127.0.0.0/8"]
{client_extra}

[[upstream]]
name = "exo"
host = "127.0.0.1"
port = {exo_port}
tls = "none"
egress_ip = "198.51.100.10"

[queue]
dir = "spool"
retry = ["1s"]
{TENANTS}
"#
    )
}

/// A sender whose domain no tenant accepts: EXO would refuse it by the egress IP alone.
const FOREIGN: &str = "cron@app01.example.org";

/// Sends a report from `from` to `ops@example.net`; returns the replies to RCPT and to the end
/// of data (empty when RCPT was refused and the session quit there).
fn send(relay: &Relay, from: &str, message_id: &str) -> (String, String) {
    let to = "ops@example.net";
    let mut c = relay.client();
    c.greeting("220");
    c.expect("EHLO app01.lan", "250");
    c.expect(&format!("MAIL FROM:<{from}>"), "250");
    let rcpt = c.cmd(&format!("RCPT TO:<{to}>"));
    if !rcpt.starts_with("250") {
        c.expect("QUIT", "221");
        return (rcpt, String::new());
    }
    c.expect("DATA", "354");
    c.send(format!("From: <{from}>\r\nSubject: report\r\nMessage-ID: {message_id}\r\n\r\nnightly report\r\n.\r\n").as_bytes());
    let data = c.reply();
    c.expect("QUIT", "221");
    (rcpt, data)
}

/// The stored messages of the simulated tenant, as text.
fn exo_messages(exo: &Exosim) -> Vec<String> {
    let dir = exo.store.join("contoso");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect()
}

#[test]
fn refuse_answers_at_rcpt_and_spools_nothing() {
    let (_dir, exo, relay) = relay_before_exosim("on_attribution_failure = \"refuse\"");
    let (rcpt, _) = send(&relay, FOREIGN, "<r1@test>");
    println!("refused at RCPT: {rcpt}");
    assert!(
        rcpt.starts_with("550-5.7.64") || rcpt.starts_with("550 5.7.64"),
        "{rcpt}"
    );
    assert!(rcpt.contains("Exchange Online would refuse"), "{rcpt}");
    assert!(
        rcpt.contains("example.org"),
        "the advice names the sender domain: {rcpt}"
    );
    assert!(relay.queued().is_empty(), "nothing spooled");
    // A sender in an accepted domain passes and reaches EXO as Originating.
    let (rcpt, data) = send(&relay, "cron@contoso.com", "<r2@test>");
    assert!(
        rcpt.starts_with("250") && data.starts_with("250"),
        "{rcpt} / {data}"
    );
    wait_until("delivery to exosim", || exo_messages(&exo).len() == 1);
    assert!(exo_messages(&exo)[0].contains("MessageDirectionality: Originating"));
}

#[test]
fn fix_rewrites_the_envelope_sender_and_keeps_the_original() {
    let (_dir, exo, relay) = relay_before_exosim(
        "on_attribution_failure = \"fix\"\nenvelope_from = \"{local}@contoso.com\"",
    );
    let (rcpt, data) = send(&relay, FOREIGN, "<f1@test>");
    assert!(
        rcpt.starts_with("250") && data.starts_with("250"),
        "{rcpt} / {data}"
    );
    wait_until("delivery to exosim", || exo_messages(&exo).len() == 1);
    let stored = &exo_messages(&exo)[0];
    println!("{}", stored.lines().take(8).collect::<Vec<_>>().join("\n"));
    assert!(
        stored.contains("X-MS-Exchange-Organization-MessageDirectionality: Originating"),
        "{stored}"
    );
    assert!(
        stored.contains("Return-Path: <cron@contoso.com>"),
        "rewritten envelope sender: {stored}"
    );
    assert!(
        stored.contains("X-Exorelay-Original-Sender: <cron@app01.example.org>"),
        "{stored}"
    );
    assert!(stored.contains("Message-ID: <f1@test>"));
}

#[test]
fn warn_delivers_as_sent_and_counts() {
    let (_dir, exo, relay) = relay_before_exosim("on_attribution_failure = \"warn\"");
    let (rcpt, data) = send(&relay, FOREIGN, "<w1@test>");
    assert!(
        rcpt.starts_with("250") && data.starts_with("250"),
        "{rcpt} / {data}"
    );
    relay.wait_for_log("pre-flight: EXO will refuse");
    let metrics = Command::new(env!("CARGO_BIN_EXE_exorelay"))
        .args(["queue", "metrics", "--spool"])
        .arg(&relay.spool)
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("exorelay_preflight_warned_total 1"),
        "{metrics}"
    );
    // Delivered as sent: EXO refuses it, and the relay holds it with the explanation.
    relay.wait_for_log("held:");
    assert!(relay.log().contains("5.7.64"), "{}", relay.log());
    assert!(exo_messages(&exo).is_empty());
}
